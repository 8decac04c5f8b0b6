"""Backend-neutral inputs and outputs of rasterisation, input checking, and the recycled
arrays the maps are made in."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..camera import Camera
from ..hands.types import HAND_COLORS, SIDES, HandMesh
from .maps import ARM_COLOR, vertex_normals
from .projection import covered_rect, gl_projection

#: The hand index is stored in an 8-bit target (0 = background).
MAX_HANDS_PER_FRAME = 255


@dataclass
class FrameGeometry:
    """The hands of one frame, ready to rasterise (all tensors on the backend's device).

    Attributes:
        projection: (4, 4) float32 OpenCV-camera-to-clip matrix (``gl_projection``), CPU.
        vertices: per hand (V, 3) float32 metres, camera frame.
        normals: per hand (V, 3) float32 outward unit vertex normals.
        faces: per hand (F, 3) int64.
        colors: per hand (3,) float32 base colour (``HAND_COLORS`` of its side).
        rects: per hand ``(x0, y0, x1, y1)`` pixel bounds, max exclusive, outside which its
            triangles cover no pixel (``projection.covered_rect``).
    """

    projection: torch.Tensor
    vertices: list[torch.Tensor]
    normals: list[torch.Tensor]
    faces: list[torch.Tensor]
    colors: list[torch.Tensor]
    rects: list[tuple[int, int, int, int]]

    @property
    def num_hands(self) -> int:
        return len(self.vertices)


@dataclass
class GBuffer:
    """What a backend returns for B frames of H x W pixels, on its device.

    Attributes:
        mesh: (B, H, W, 3) float32 shaded colour (``maps.shade``), 0 on background.
        normal: (B, H, W, 3) float32 NormalBAE colour, 0 on background.
        depth: (B, H, W) float32 camera z in metres of the nearest surface, 0 on background.
        hand: (B, H, W) uint8, ``i + 1`` where hand ``i`` of the frame is nearest, else 0.
    """

    mesh: torch.Tensor
    normal: torch.Tensor
    depth: torch.Tensor
    hand: torch.Tensor


def check_frames(meshes, cameras) -> tuple[list[list[HandMesh]], list[Camera], int, int]:
    """Validate the renderer's inputs; return them as lists, and the common width, height.

    Raises:
        ValueError: no frame, counts differ, a camera is not a ``Camera``, cameras differ in
            size, a mesh is not a ``HandMesh`` or has malformed fields.
    """
    meshes, cameras = list(meshes), list(cameras)
    if not cameras:
        raise ValueError("cameras: no frame given; pass one Camera per frame")
    if len(meshes) != len(cameras):
        raise ValueError(f"meshes/cameras: {len(meshes)} mesh list(s) for {len(cameras)} "
                         "camera(s); give one list of hands (possibly empty) per camera")
    for b, cam in enumerate(cameras):
        if not isinstance(cam, Camera):
            raise ValueError(f"cameras[{b}]: expected a Camera, got {type(cam).__name__}")
    width, height = cameras[0].width, cameras[0].height
    for b, cam in enumerate(cameras):
        if (cam.width, cam.height) != (width, height):
            raise ValueError(f"cameras[{b}]: size {cam.width}x{cam.height} differs from "
                             f"cameras[0] ({width}x{height}); a batch needs one image size, "
                             "render different sizes in separate calls")
    frames = []
    for b, hands in enumerate(meshes):
        if isinstance(hands, HandMesh):
            raise ValueError(f"meshes[{b}]: expected a list of HandMesh for the frame, got a "
                             "single HandMesh; wrap it in a list")
        hands = list(hands)
        frames.append(hands)
        if len(hands) > MAX_HANDS_PER_FRAME:
            raise ValueError(f"meshes[{b}]: {len(hands)} hands; at most "
                             f"{MAX_HANDS_PER_FRAME} per frame")
        for i, mesh in enumerate(hands):
            _check_mesh(f"meshes[{b}][{i}]", mesh)
    return frames, cameras, width, height


def _check_mesh(where: str, mesh) -> None:
    if not isinstance(mesh, HandMesh):
        raise ValueError(f"{where}: expected a HandMesh, got {type(mesh).__name__}")
    if mesh.side not in SIDES:
        raise ValueError(f"{where}.side: expected 'right' or 'left', got {mesh.side!r}")
    for name, rows in (("vertices", None), ("joints", 21)):
        t = getattr(mesh, name)
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[1] != 3 \
                or (rows is not None and t.shape[0] != rows) or t.shape[0] == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            want = "(V, 3) with V > 0" if rows is None else f"({rows}, 3)"
            raise ValueError(f"{where}.{name}: expected a tensor of shape {want}, got {shape}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{where}.{name}: holds NaN or infinite values")
    faces = mesh.faces
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3 \
            or faces.shape[0] == 0 or faces.dtype.is_floating_point or faces.dtype == torch.bool:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ValueError(f"{where}.faces: expected an integer tensor of shape (F, 3) with F > 0, "
                         f"got {shape}")
    if int(faces.min()) < 0 or int(faces.max()) >= mesh.vertices.shape[0]:
        raise ValueError(f"{where}.faces: indices must lie in 0..{mesh.vertices.shape[0] - 1}")


def prepare_frame(hands, camera: Camera, device: torch.device, arms=()) -> FrameGeometry:
    """Move one frame's (checked) meshes to ``device`` with vertex normals, colours and
    covered pixel bounds; ``arms`` (``sesahand.hands.arm.ArmMesh``) follow the hands, in
    :data:`maps.ARM_COLOR`."""
    projection = gl_projection(camera)
    geometry = FrameGeometry(projection=projection, vertices=[], normals=[], faces=[],
                             colors=[], rects=[])
    for mesh in [*hands, *arms]:
        verts = mesh.vertices.detach().to(device=device, dtype=torch.float32)
        faces = mesh.faces.detach().to(device=device, dtype=torch.int64)
        geometry.vertices.append(verts)
        geometry.faces.append(faces)
        geometry.normals.append(vertex_normals(verts, faces))
        color = HAND_COLORS[mesh.side] if isinstance(mesh, HandMesh) else ARM_COLOR
        geometry.colors.append(torch.tensor(color, device=device))
        geometry.rects.append(covered_rect(verts.cpu().numpy(), projection.numpy(),
                                           camera.width, camera.height))
    return geometry


#: Where a map array was written: (index along its first axis, x0, y0, x1, y1), max exclusive.
Region = tuple[int, int, int, int, int]


class ZeroArrays:
    """Zero-filled numpy arrays for the maps, recycled once nothing refers to them.

    The maps are mostly black and one call's are freed before the next when frames are
    rendered in a loop, so rather than allocating and zeroing whole images every call (or
    faulting in fresh pages, which is slower still on virtual machines), an array comes
    back here when the last tensor using it is freed, with the regions that were written,
    and only those are zeroed before it is used again. At most ``KEEP`` free arrays are kept
    per shape and dtype (two maps of a call share one: mesh and normal, depth image and
    mask); ``clear`` drops them. Thread-safe.
    """

    KEEP = 2

    def __init__(self):
        self._lock = threading.Lock()
        self._free: dict[tuple, list[tuple[np.ndarray, list[Region]]]] = {}

    def zeros(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous zero array of ``shape`` and numpy ``dtype``, owned by the caller
        until handed out with :meth:`tensor` (or dropped)."""
        with self._lock:
            free = self._free.get((shape, np.dtype(dtype)))
            array, written = free.pop() if free else (None, ())
        if array is None:
            return np.zeros(shape, dtype=dtype)
        for i, x0, y0, x1, y1 in written:
            array[i, y0:y1, x0:x1] = 0
        return array

    def tensor(self, array: np.ndarray, written: list[Region]) -> torch.Tensor:
        """A CPU tensor on ``array`` (from :meth:`zeros`); when it and every tensor or array
        derived from it are freed, ``array`` returns here, to be zeroed over ``written`` (all
        the regions that hold non-zero values) and reused."""
        view = array.view()
        release = weakref.finalize(view, self._release, array, written)
        release.atexit = False
        return torch.from_numpy(view)

    def clear(self) -> None:
        """Drop the free arrays."""
        with self._lock:
            self._free.clear()

    def _release(self, array: np.ndarray, written: list[Region]) -> None:
        with self._lock:
            free = self._free.setdefault((array.shape, array.dtype), [])
            if len(free) < self.KEEP:
                free.append((array, written))
