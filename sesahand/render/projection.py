"""OpenCV pinhole intrinsics to an OpenGL clip-space projection, shared by both backends."""

from __future__ import annotations

import numpy as np
import torch

from ..camera import Camera

#: Near and far clipping planes in metres (camera z). Fixed rather than fitted to the scene so
#: that every frame of a batch is rasterised with the same depth precision; hand geometry closer
#: than 1 cm to the camera or farther than 100 m is clipped.
NEAR_M = 0.01
FAR_M = 100.0


def gl_projection(camera: Camera, near: float = NEAR_M, far: float = FAR_M) -> torch.Tensor:
    """The 4x4 matrix taking OpenCV camera-frame points to OpenGL clip space for ``camera``.

    A point (x, y, z) in metres (camera frame: x right, y down, z forward) with pixel
    coordinates (u, v) = project(K, point) lands at normalised device coordinates
    ``x_ndc = 2 u / W - 1`` and ``y_ndc = 2 v / H - 1``, so with OpenGL's pixel centres at
    ndc ``2 (i + 0.5) / W - 1`` the rasteriser samples OpenCV pixel i at u = i + 0.5, the
    convention of :class:`Camera`. ``y_ndc`` grows downwards, so the rows a rasteriser stores
    first (OpenGL ``glReadPixels`` and nvdiffrast both start at ndc y = -1) are the top image
    rows: buffers need no vertical flip. The flip reverses triangle winding, which does not
    matter because culling is off. Depth: z = near maps to ndc -1 and z = far to +1 (standard
    OpenGL perspective depth); the skew ``K[0, 1]`` is honoured.

    Args:
        camera: intrinsics ``K`` (pixels) and image size.
        near, far: clipping planes in metres, ``0 < near < far``.

    Returns:
        (4, 4) float32 CPU tensor ``P`` with ``clip = P @ [x, y, z, 1]``.
    """
    if not 0.0 < near < far:
        raise ValueError(f"near/far: need 0 < near < far, got near={near}, far={far}")
    (fx, s, cx), (_, fy, cy) = camera.K[:2].double().tolist()
    w, h = float(camera.width), float(camera.height)
    return torch.tensor([
        [2.0 * fx / w, 2.0 * s / w, 2.0 * cx / w - 1.0, 0.0],
        [0.0, 2.0 * fy / h, 2.0 * cy / h - 1.0, 0.0],
        [0.0, 0.0, (far + near) / (far - near), -2.0 * far * near / (far - near)],
        [0.0, 0.0, 1.0, 0.0],
    ], dtype=torch.float32)


def covered_rect(vertices: np.ndarray, projection: np.ndarray, width: int,
                 height: int) -> tuple[int, int, int, int]:
    """Pixel bounds that hold every pixel a rasteriser can cover with triangles on these
    vertices, so that work on a hand's pixels can be limited to them.

    Args:
        vertices: (V, 3) float32 camera-frame points in metres.
        projection: (4, 4) float32 ``gl_projection`` matrix of the frame.
        width, height: image size in pixels.

    Returns:
        ``(x0, y0, x1, y1)``, max exclusive, clipped to the image (empty when the vertices
        project outside it): the projected bounding box of the vertices widened by one
        pixel, or the whole image when a vertex is not in front of the near plane (clipping
        can then put fragments anywhere). Rows count from the top, as the framebuffer's and
        the maps' do.
    """
    z = vertices[:, 2]
    if not z.min() > NEAR_M:
        return (0, 0, width, height)
    ndc = (projection[:2, :3] @ vertices.T) / z  # (2, V); the w of clip space is z
    size = np.array([width, height], dtype=np.float64)
    lo = np.clip(np.floor((ndc.min(axis=1) + 1.0) * 0.5 * size) - 1, 0, size)
    hi = np.clip(np.ceil((ndc.max(axis=1) + 1.0) * 0.5 * size) + 1, lo, size)
    (x0, y0), (x1, y1) = lo.astype(int).tolist(), hi.astype(int).tolist()
    return (x0, y0, x1, y1)
