"""Render hand meshes into condition maps and labels (the mesh condition of the method)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch

from ..camera import Camera
from ..hands.types import HandMesh
from .conditions import ArmLabels, Conditions, HandLabels
from .maps import draw_hand_poses, fill_depth_image, fill_hand_pixels
from .projection import NEAR_M
from .scene import MAX_HANDS_PER_FRAME, ZeroArrays, check_frames, prepare_frame

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


#: Arm joints (wrist, elbow, shoulder) lie inside the arm: up to this far (metres) behind the
#: arm's or its hand's own surface they count as visible.
ARM_JOINT_DEPTH_TOLERANCE_M = 0.06


def joint_visibility(joints: torch.Tensor, joints2d: torch.Tensor, depth: np.ndarray,
                     hand: np.ndarray, index: int, tolerance=JOINT_DEPTH_TOLERANCE_M,
                     own: tuple[int, ...] = ()) -> torch.Tensor:
    """Which joints of hand ``index`` are visible in a rendered frame.

    Args:
        joints: (21, 3) float32 camera-frame joints in metres, OpenPose order.
        joints2d: (21, 2) float32 their projections, pixels (centres at +0.5).
        depth: (H, W) float32 array, rendered depth of the frame (all hands), 0 = background.
        hand: (H, W) uint8 array, rendered hand index + 1 of the frame, 0 = background.
        index: the hand's position in the frame's list.

    Returns:
        (21,) bool CPU tensor. A joint is visible when it is in front of the near plane,
        projects inside the image, and at its pixel (``floor`` of its projection) there is
        background, or its own hand's surface at most ``JOINT_DEPTH_TOLERANCE_M`` in front of
        it, or another hand's surface that is not in front of it.
    """
    height, width = depth.shape
    z = joints[:, 2].cpu().numpy()
    u, v = joints2d.cpu().numpy().T
    inside = (z > NEAR_M) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    px = np.clip(np.floor(u), 0, width - 1).astype(np.intp)
    py = np.clip(np.floor(v), 0, height - 1).astype(np.intp)
    behind, owner = z - depth[py, px], hand[py, px]
    near = behind <= np.asarray(tolerance, dtype=np.float32)
    mine = np.isin(owner, [index + 1, *(i + 1 for i in own)])
    unoccluded = np.where(owner == 0, True, np.where(mine, near, behind <= 0))
    return torch.from_numpy(inside & unoccluded)


class Renderer:
    """Renders hand meshes into the condition maps of ``Conditions`` for a batch of frames.

    Args:
        backend: ``"auto"`` (nvdiffrast if ``torch.cuda.is_available()`` and nvdiffrast is
            importable, else moderngl), ``"moderngl"`` (headless EGL; Mesa llvmpipe renders on
            the CPU) or ``"nvdiffrast"`` (CUDA; output tensors stay on the GPU). Both give the
            same maps up to rasterisation ties on triangle edges and float rounding.

    The backend's context and buffers are created once and reused by every ``render`` call;
    release them with ``close()`` or use the renderer as a context manager. So is the memory
    of the CPU maps: once every tensor (and array) of a result is freed, a later call may
    reuse its arrays (``scene.ZeroArrays``); results still referenced are never touched.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: the backend cannot start (no EGL for moderngl: install Mesa's
            ``libegl1 libgl1-mesa-dri``; no CUDA or nvdiffrast for nvdiffrast).
    """

    def __init__(self, backend: str = "auto"):
        self.backend = resolve_backend(backend)
        self._impl = _make_backend(self.backend)
        self._arrays = ZeroArrays()

    def render(self, meshes: Sequence[Sequence[HandMesh]], cameras: Sequence[Camera],
               arms: Sequence[Sequence] | None = None) -> Conditions:
        """Render B frames.

        Args:
            meshes: per frame, a list of 0..255 ``HandMesh`` (vertices, faces and joints in
                that frame's camera frame, metres).
            cameras: per frame, its ``Camera``; all of the same width and height (multiples
                of 8, which ``Camera`` enforces).
            arms: optional, per frame one ``sesahand.hands.arm.ArmMesh`` per hand (the arm
                attached to it), drawn in every map; their masks and labels are
                ``Conditions.arm_masks`` / ``arm_mask`` and ``HandLabels.arm``.

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
        arms = [list(a) for a in arms] if arms is not None else [[] for _ in meshes]
        if len(arms) != len(meshes) or any(a and len(a) != len(h) for a, h in zip(arms, meshes)):
            raise ValueError("arms: give per frame one arm per hand (or no arms)")
        if any(len(h) + len(a) > MAX_HANDS_PER_FRAME for h, a in zip(meshes, arms)):
            raise ValueError(f"a frame has more than {MAX_HANDS_PER_FRAME} hands and arms")
        device = self._impl.device
        with torch.no_grad():
            frames = [prepare_frame(hands, cam, device, frame_arms)
                      for hands, cam, frame_arms in zip(meshes, cameras, arms)]
            gbuf = self._impl.rasterize(frames, width, height)
            # The maps derived from the G-buffer are made on the CPU, in numpy and only within
            # each hand's pixel bounds: these are small, scattered operations, and a torch op
            # on a CPU tensor above torch's grain size waits for a second thread, which can
            # take milliseconds on a busy machine. They then go to the backend's device.
            hand, depth = gbuf.hand.cpu().numpy(), gbuf.depth.cpu().numpy()
            batch, zeros = len(frames), self._arrays.zeros
            depth_image = zeros((batch, height, width), np.float32)
            mask = zeros((batch, height, width), np.float32)
            pose = zeros((batch, height, width, 3), np.float32)
            arm_mask = zeros((batch, height, width), np.float32)
            written, drawn_at, masks, labels, arm_masks = [], [], [], [], []
            for b, (hands, cam, frame, frame_arms) in enumerate(zip(meshes, cameras, frames, arms)):
                frame_masks = zeros((len(hands), height, width), np.bool_)
                own_arm = zeros((len(frame_arms), height, width), np.bool_)
                frame_labels = []
                for i, (mesh, rect) in enumerate(zip(hands, frame.rects)):
                    box = fill_hand_pixels(i, rect, hand[b], frame_masks[i], mask[b])
                    frame_labels.append(self._label(b, i, mesh, cam, box, depth[b], hand[b]))
                n = len(hands)
                for j, arm in enumerate(frame_arms):
                    box = fill_hand_pixels(n + j, frame.rects[n + j], hand[b], own_arm[j], arm_mask[b])
                    frame_labels[j].arm = self._arm_label(b, j, n, arm, cam, box, depth[b],
                                                          hand[b])
                for i in range(n):  # one depth range per hand and its arm: no step at the wrist
                    if i < len(frame_arms):
                        (hx0, hy0, hx1, hy1), (ax0, ay0, ax1, ay1) = frame.rects[i], frame.rects[n + i]
                        fill_depth_image(depth_image[b], depth[b], (frame_masks[i], own_arm[i]),
                                         (min(hx0, ax0), min(hy0, ay0), max(hx1, ax1), max(hy1, ay1)))
                    else:
                        fill_depth_image(depth_image[b], depth[b], (frame_masks[i],), frame.rects[i])
                labels.append(frame_labels)
                masks.append(self._tensor(frame_masks, [(i, *rect) for i, rect in
                                                        enumerate(frame.rects[:n])], device))
                arm_masks.append(self._tensor(own_arm, [(j, *rect) for j, rect in
                                                        enumerate(frame.rects[n:])], device))
                written += [(b, *rect) for rect in frame.rects]
                drawn = draw_hand_poses([lab.joints2d.numpy() for lab in frame_labels],
                                        [(lab.joints3d[:, 2] > NEAR_M).numpy()
                                         for lab in frame_labels], width, height,
                                        arms=[(lab.side, lab.arm.joints2d.numpy(),
                                               (lab.arm.joints3d[:, 2] > NEAR_M).numpy())
                                              for lab in frame_labels if lab.arm is not None])
                if drawn is not None:
                    crop, x0, y0 = drawn
                    x1, y1 = x0 + crop.shape[1], y0 + crop.shape[0]
                    np.divide(crop, 255.0, dtype=np.float32, out=pose[b, y0:y1, x0:x1])
                    drawn_at.append((b, x0, y0, x1, y1))
        return Conditions(mesh=gbuf.mesh, depth=gbuf.depth,
                          depth_image=self._tensor(depth_image, written, device),
                          normal=gbuf.normal, masks=masks,
                          mask=self._tensor(mask, written, device),
                          pose=self._tensor(pose, drawn_at, device), labels=labels,
                          arm_mask=self._tensor(arm_mask, written, device), arm_masks=arm_masks)

    def _tensor(self, array: np.ndarray, written: list, device: torch.device) -> torch.Tensor:
        return self._arrays.tensor(array, written).to(device)

    @staticmethod
    def _label(b: int, i: int, mesh: HandMesh, camera: Camera, box: torch.Tensor | None,
               depth: np.ndarray, hand: np.ndarray) -> HandLabels:
        joints = mesh.joints.detach().cpu().float().clone()
        joints2d = camera.project(joints)
        visible = joint_visibility(joints, joints2d, depth, hand, i)
        notes = list(mesh.notes)
        if box is None:
            msg = (f"frame {b}, hand {i} ({mesh.side}): no visible pixel; it lies outside "
                   "the image or behind another hand")
            logger.warning(msg)
            notes.append(msg)
        return HandLabels(side=mesh.side, model=mesh.model, joints3d=joints, joints2d=joints2d,
                          visible=visible, box=box, notes=notes)

    @staticmethod
    def _arm_label(b: int, j: int, hands: int, arm, camera: Camera, box: torch.Tensor | None,
                   depth: np.ndarray, hand: np.ndarray) -> ArmLabels:
        joints = arm.joints.detach().cpu().float().clone()
        joints2d = camera.project(joints)
        visible = joint_visibility(joints, joints2d, depth, hand, hands + j,
                                   ARM_JOINT_DEPTH_TOLERANCE_M, own=(j,))
        if box is None:
            logger.warning("frame %d, arm of hand %d: no visible pixel (outside the image or "
                           "hidden)", b, j)
        return ArmLabels(kind=arm.kind, joints3d=joints, joints2d=joints2d, visible=visible,
                         box=box, elbow_flexion=float(arm.elbow_flexion))

    def close(self) -> None:
        """Release the backend's context and buffers (idempotent)."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None
            self._arrays.clear()

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: dict[str, Renderer] = {}
_shared_lock = threading.Lock()


def render_conditions(meshes: Sequence[Sequence[HandMesh]], cameras: Sequence[Camera],
                      backend: str = "auto", arms: Sequence[Sequence] | None = None) -> Conditions:
    """``Renderer(backend).render(meshes, cameras, arms)`` with one renderer kept per backend
    for the life of the process (contexts are expensive to create). Same arguments, result and
    errors as :meth:`Renderer.render` and :class:`Renderer`."""
    name = resolve_backend(backend)
    with _shared_lock:
        renderer = _shared.get(name)
        if renderer is None:
            renderer = _shared[name] = Renderer(name)
    return renderer.render(meshes, cameras, arms)
