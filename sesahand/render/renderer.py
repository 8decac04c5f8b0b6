"""Render hand meshes into condition maps and labels (the mesh condition of the method)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence

import torch

from ..hands.types import Camera, HandMesh
from .conditions import Conditions, HandLabels
from .maps import draw_hand_poses, hand_depth_image
from .projection import NEAR_M
from .scene import check_frames, prepare_frame

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "moderngl", "nvdiffrast")

#: How far (metres) each joint, in OpenPose order, may lie behind the surface of its own hand
#: seen at its pixel and still count as visible. Joints sit inside the mesh, so even an
#: unoccluded joint is behind that surface by up to about the local half-thickness of the hand
#: (measured on the open hand model, flat, palm or back towards the camera, tilted up to
#: 0.4 rad: wrist 27 mm, thumb CMC 24, MCPs 18-24, PIPs 16-17, DIPs 10-16, tips 8-11). A
#: finger of the same hand lying in front adds at least its own thickness (about 15 mm), which
#: these values leave out; another hand in front of a joint always hides it.
JOINT_DEPTH_TOLERANCE_M = (
    0.030,                          # wrist
    0.030, 0.020, 0.015, 0.012,     # thumb CMC, MCP, IP, tip
    0.025, 0.020, 0.017, 0.012,     # index MCP, PIP, DIP, tip
    0.025, 0.020, 0.017, 0.012,     # middle
    0.025, 0.020, 0.017, 0.012,     # ring
    0.025, 0.020, 0.017, 0.012,     # little
)


def _nvdiffrast_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("nvdiffrast") is not None


def _make_backend(name: str):
    if name == "moderngl":
        from .backend_gl import GLBackend

        return GLBackend()
    from .backend_nvdiffrast import NvdiffrastBackend

    return NvdiffrastBackend()


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"nvdiffrast"`` when CUDA and nvdiffrast are present, else
    ``"moderngl"``; other names are checked and returned.

    Raises:
        ValueError: unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "nvdiffrast" if _nvdiffrast_available() else "moderngl"
    return backend


def joint_visibility(joints: torch.Tensor, joints2d: torch.Tensor, depth: torch.Tensor,
                     hand: torch.Tensor, index: int) -> torch.Tensor:
    """Which joints of hand ``index`` are visible in a rendered frame.

    Args:
        joints: (21, 3) float32 camera-frame joints in metres, OpenPose order.
        joints2d: (21, 2) float32 their projections, pixels (centres at +0.5).
        depth: (H, W) float32 rendered depth of the frame (all hands), 0 = background.
        hand: (H, W) uint8 rendered hand index + 1 of the frame, 0 = background.
        index: the hand's position in the frame's list.

    Returns:
        (21,) bool CPU tensor. A joint is visible when it is in front of the near plane,
        projects inside the image, and at its pixel (``floor`` of its projection) there is
        background, or its own hand's surface at most ``JOINT_DEPTH_TOLERANCE_M`` in front of
        it, or another hand's surface that is not in front of it.
    """
    height, width = depth.shape
    joints, joints2d = joints.cpu(), joints2d.cpu()
    inside = (joints[:, 2] > NEAR_M) & (joints2d[:, 0] >= 0) & (joints2d[:, 0] < width) \
        & (joints2d[:, 1] >= 0) & (joints2d[:, 1] < height)
    px = joints2d[:, 0].floor().long().clamp(0, width - 1).to(depth.device)
    py = joints2d[:, 1].floor().long().clamp(0, height - 1).to(depth.device)
    surface, owner = depth[py, px].cpu(), hand[py, px].cpu().long()
    behind = joints[:, 2] - surface
    own = behind <= torch.tensor(JOINT_DEPTH_TOLERANCE_M)
    other = behind <= 0
    unoccluded = torch.where(owner == 0, True, torch.where(owner == index + 1, own, other))
    return inside & unoccluded


def _box(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
    """Box (x0, y0, x1, y1), max exclusive, from a mask's occupied rows (H,) and cols (W,)."""
    rows, cols = torch.nonzero(rows).flatten(), torch.nonzero(cols).flatten()
    if rows.numel() == 0:
        return None
    return torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()


class Renderer:
    """Renders hand meshes into the condition maps of ``Conditions`` for a batch of frames.

    Args:
        backend: ``"auto"`` (nvdiffrast if ``torch.cuda.is_available()`` and nvdiffrast is
            importable, else moderngl), ``"moderngl"`` (headless EGL; Mesa llvmpipe renders on
            the CPU) or ``"nvdiffrast"`` (CUDA; output tensors stay on the GPU). Both give the
            same maps up to rasterisation ties on triangle edges and float rounding.

    The backend's context and buffers are created once and reused by every ``render`` call;
    release them with ``close()`` or use the renderer as a context manager.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: the backend cannot start (no EGL for moderngl: install Mesa's
            ``libegl1 libgl1-mesa-dri``; no CUDA or nvdiffrast for nvdiffrast).
    """

    def __init__(self, backend: str = "auto"):
        self.backend = resolve_backend(backend)
        self._impl = _make_backend(self.backend)

    def render(self, meshes: Sequence[Sequence[HandMesh]], cameras: Sequence[Camera]) -> Conditions:
        """Render B frames.

        Args:
            meshes: per frame, a list of 0..255 ``HandMesh`` (vertices, faces and joints in
                that frame's camera frame, metres).
            cameras: per frame, its ``Camera``; all of the same width and height (multiples
                of 8, which ``Camera`` enforces).

        Returns:
            ``Conditions`` with every map, mask and label (see its docstring). A hand with no
            visible pixel (outside the image or hidden behind another hand) gets an empty
            mask, ``box=None``, its joints marked invisible, a note in its labels and a
            logged warning.

        Raises:
            ValueError: malformed input (see ``scene.check_frames``).
            RuntimeError: the renderer was closed.
        """
        if self._impl is None:
            raise RuntimeError("Renderer.render: this renderer was closed; create a new one")
        meshes, cameras, width, height = check_frames(meshes, cameras)
        device = self._impl.device
        with torch.no_grad():
            frames = [prepare_frame(hands, cam, device) for hands, cam in zip(meshes, cameras)]
            gbuf = self._impl.rasterize(frames, width, height)
            batch = len(frames)
            depth_image = hand_depth_image(gbuf.depth, gbuf.hand)
            pose = torch.zeros(batch, height, width, 3, device=device)
            masks, labels = [], []
            for b, (hands, cam) in enumerate(zip(meshes, cameras)):
                hand_ids = torch.arange(1, len(hands) + 1, device=device, dtype=torch.uint8)
                frame_masks = gbuf.hand[b][None] == hand_ids[:, None, None]
                masks.append(frame_masks)
                rows, cols = frame_masks.any(dim=2).cpu(), frame_masks.any(dim=1).cpu()
                frame_labels = [self._label(b, i, mesh, cam, rows[i], cols[i], gbuf.depth[b],
                                            gbuf.hand[b]) for i, mesh in enumerate(hands)]
                labels.append(frame_labels)
                drawn = draw_hand_poses([lab.joints2d.numpy() for lab in frame_labels],
                                        [(lab.joints3d[:, 2] > NEAR_M).numpy()
                                         for lab in frame_labels], width, height)
                if drawn is not None:
                    crop, x0, y0 = drawn
                    crop_t = torch.from_numpy(crop).to(device=device, dtype=torch.float32)
                    pose[b, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop_t / 255.0
        return Conditions(mesh=gbuf.mesh, depth=gbuf.depth, depth_image=depth_image,
                          normal=gbuf.normal, masks=masks, mask=(gbuf.hand > 0).float(),
                          pose=pose, labels=labels)

    @staticmethod
    def _label(b: int, i: int, mesh: HandMesh, camera: Camera, rows: torch.Tensor,
               cols: torch.Tensor, depth: torch.Tensor, hand: torch.Tensor) -> HandLabels:
        joints = mesh.joints.detach().cpu().float().clone()
        joints2d = camera.project(joints)
        visible = joint_visibility(joints, joints2d, depth, hand, i)
        box = _box(rows, cols)
        notes = list(mesh.notes)
        if box is None:
            msg = (f"frame {b}, hand {i} ({mesh.side}): no visible pixel; it lies outside "
                   "the image or behind another hand")
            logger.warning(msg)
            notes.append(msg)
        return HandLabels(side=mesh.side, model=mesh.model, joints3d=joints, joints2d=joints2d,
                          visible=visible, box=box, notes=notes)

    def close(self) -> None:
        """Release the backend's context and buffers (idempotent)."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: dict[str, Renderer] = {}
_shared_lock = threading.Lock()


def render_conditions(meshes: Sequence[Sequence[HandMesh]], cameras: Sequence[Camera],
                      backend: str = "auto") -> Conditions:
    """``Renderer(backend).render(meshes, cameras)`` with one renderer kept per backend for
    the life of the process (contexts are expensive to create). Same arguments, result and
    errors as :meth:`Renderer.render` and :class:`Renderer`."""
    name = resolve_backend(backend)
    with _shared_lock:
        renderer = _shared.get(name)
        if renderer is None:
            renderer = _shared[name] = Renderer(name)
    return renderer.render(meshes, cameras)
