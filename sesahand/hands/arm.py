"""Arms for the conditions: the forearm (or the whole arm, to the shoulder) of NAVER's Anny
full-body model, attached to a posed hand at its wrist.

The open hand is cut from Anny at the wrist, so a rendered hand floats. ``ArmModel`` builds
Anny's full body once (like the hand, from the package assets; only the compact model data is
cached, ``anny-<version>-body.safetensors``) and, for every posed :class:`HandMesh`, cuts the
arm of the same side out of the posed body and places it on the hand.

The rule that places the arm (documented in README "Arms"):

1. The palm frame of the posed hand (wrist joint; wrist -> middle MCP; index MCP -> little
   MCP, orthonormalised as ``anny_model._rest_frame``) is matched to the palm frame of the
   body's hand of the same side. The wrist keeps the body's rest angle: the forearm continues
   the hand as in Anny's rest pose, so its direction follows ``global_orient`` (and the
   fingers' articulation does not move it).
2. The elbow flexes by ``elbow_flexion`` (radians, default :data:`DEFAULT_ELBOW_FLEXION`, 90
   degrees) in the plane of the forearm and the camera's "down and away" direction
   ``(0, 0.6, 0.8)`` (OpenCV frame): the upper arm goes from the elbow towards the bottom of
   the image and away from the camera, where a body holding the hand up before the camera
   has its shoulder. The body's elbow bone gets the smallest rotation that gives this angle.
   A pose file may give the elbow flexion per hand (``"elbow_flexion"``, radians, 0 to
   0.9 pi; :attr:`HandScene.elbow_flexion`).
3. The arm is scaled by the ratio of the hand's palm length (wrist to middle MCP) to the
   body's, and placed with its wrist on the hand's wrist joint. With the open hand the ratio
   is about 1; with MANO hands the arm is Anny's, scaled to the MANO hand's palm (MANO has no
   arm of its own).

``forearm`` keeps the vertices skinned mostly to the lower-arm bones, ``arm`` adds the
upper-arm bones (to the shoulder joint). Arm joints, in the camera frame: wrist (the hand's
wrist joint), elbow (head of ``lowerarm01``) and, for ``arm``, shoulder (head of
``upperarm01``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..io import default_cache_dir
from .anny_model import _import_anny, _rest_frame, build_anny_cache
from .types import HandMesh

log = logging.getLogger(__name__)

#: ``arm`` option values: no arm (the hand alone), the forearm, the arm to the shoulder.
ARM_KINDS = ("none", "forearm", "arm")
#: Elbow flexion of the placement rule (radians): 0 is a straight arm.
DEFAULT_ELBOW_FLEXION = math.pi / 2
#: Camera-frame direction (OpenCV: y down, z forward) the upper arm bends towards.
UPPER_ARM_TOWARDS = (0.0, 0.6, 0.8)

ANNY_BODY_RIG = "anny"
ANNY_BODY_TOPOLOGY = "anny"
_SIDE_SUFFIX = {"right": ".R", "left": ".L"}
_FOREARM_BONES = ("lowerarm01", "lowerarm02")
_UPPER_ARM_BONES = ("upperarm01", "upperarm02")
#: Joint names of an arm's ``joints``, in order (``forearm`` has the first two).
ARM_JOINT_NAMES = ("wrist", "elbow", "shoulder")


@dataclass
class ArmMesh:
    """A posed arm attached to one hand, camera frame, metres.

    Attributes:
        vertices: (V, 3) float32.
        faces: (F, 3) int64, counter-clockwise seen from outside.
        joints: (2, 3) for ``forearm`` (wrist, elbow) or (3, 3) for ``arm`` (wrist, elbow,
            shoulder), float32.
        side: the hand's side.
        kind: ``"forearm"`` or ``"arm"``.
        elbow_flexion: the flexion used, radians.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    joints: torch.Tensor
    side: str
    kind: str
    elbow_flexion: float


def check_arm(arm: str) -> str:
    """``arm`` if it is one of :data:`ARM_KINDS`.

    Raises:
        ValueError: naming the choices.
    """
    if arm not in ARM_KINDS:
        raise ValueError(f"arm must be one of {', '.join(ARM_KINDS)}, got {arm!r}")
    return arm


def anny_body_cache_file(cache_dir: str | Path | None = None) -> Path:
    """Path of the compact Anny body data for the installed ``anny`` version."""
    anny = _import_anny()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"anny-{anny.__version__}-body.safetensors"


def build_anny_body_cache(path: Path) -> None:
    """Build Anny's full body and save its compact data to ``path`` (as
    :func:`build_anny_cache`). Slow: minutes on 2 CPU cores (measured: 632 s wall, 101 s CPU,
    on a loaded machine), once."""
    build_anny_cache(path, ANNY_BODY_RIG, ANNY_BODY_TOPOLOGY, what="body", duration="several minutes")


def _rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation (3, 3) taking unit vector ``a`` to unit vector ``b``."""
    import roma

    axis = torch.linalg.cross(a, b)
    angle = torch.atan2(axis.norm(), (a * b).sum())
    if axis.norm() < 1e-9:
        if (a * b).sum() > 0:
            return torch.eye(3, dtype=a.dtype)
        other = torch.tensor([1.0, 0.0, 0.0], dtype=a.dtype)
        if torch.linalg.cross(a, other).norm() < 1e-6:
            other = torch.tensor([0.0, 1.0, 0.0], dtype=a.dtype)
        axis = torch.linalg.cross(a, other)
    return roma.rotvec_to_rotmat(axis / axis.norm() * angle)


def _palm_frame(wrist, middle, index, little) -> torch.Tensor:
    return _rest_frame(middle - wrist, index - little)


class ArmModel:
    """Anny's arms, posed and attached to hands by the rule of the module docstring.

    Args:
        cache_dir: folder of the compact body data (built there on first use; see
            :func:`default_cache_dir`).
        device: torch device of the forward pass.
    """

    def __init__(self, cache_dir: str | Path | None = None, device: str | torch.device = "cpu"):
        path = anny_body_cache_file(cache_dir)
        from anny import Anny
        from anny.models.model_data import ModelData

        if not path.exists():
            build_anny_body_cache(path)
        try:
            data = ModelData.load_safetensors(str(path))
        except Exception as exc:
            raise RuntimeError(f"the Anny body cache {path} is unreadable ({exc}); delete it "
                               "and it will be rebuilt") from exc
        self.device = torch.device(device)
        self._model = Anny.from_model_data(
            data, bone_orientation="cached", pose_parameterization="local-ref",
            root_identity_orientation=False).to(self.device)
        self._dtype = self._model.template_vertices.dtype
        self._bones = {name: i for i, name in enumerate(self._model.bone_labels)}
        weights = self._model.vertex_bone_weights
        self._dominant = self._model.vertex_bone_indices.gather(
            1, weights.argmax(1, keepdim=True))[:, 0].cpu()
        self._faces = self._model.faces.to(torch.int64).cpu()
        self._parts: dict = {}

    def _bone(self, name: str, side: str) -> int:
        return self._bones[name + _SIDE_SUFFIX[side]]

    def _part(self, kind: str, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertex indices, faces re-indexed onto them) of one arm region."""
        key = (kind, side)
        if key not in self._parts:
            names = _FOREARM_BONES + (_UPPER_ARM_BONES if kind == "arm" else ())
            bones = torch.tensor([self._bone(n, side) for n in names if n + _SIDE_SUFFIX[side]
                                  in self._bones])
            keep = torch.isin(self._dominant, bones)
            faces = self._faces[keep[self._faces].all(dim=1)]
            used = torch.unique(faces)
            remap = torch.full((keep.numel(),), -1, dtype=torch.int64)
            remap[used] = torch.arange(used.numel())
            self._parts[key] = (used, remap[faces])
        return self._parts[key]

    def attach(self, hands: Sequence[HandMesh], kind: str,
               elbow_flexion: Sequence[float | None] | None = None) -> list[ArmMesh]:
        """One arm per hand.

        Args:
            hands: posed hands (camera frame, metres; OpenPose joints), any hand model.
            kind: ``"forearm"`` or ``"arm"``.
            elbow_flexion: per hand, radians in [0, pi * 0.9], or None for the default.

        Raises:
            ValueError: an unknown ``kind``, a flexion outside its range, or a count mismatch.
        """
        if check_arm(kind) == "none":
            raise ValueError("attach: kind 'none' attaches no arm")
        hands = list(hands)
        flex = list(elbow_flexion) if elbow_flexion is not None else [None] * len(hands)
        if len(flex) != len(hands):
            raise ValueError(f"elbow_flexion: {len(flex)} values for {len(hands)} hands")
        return [self._attach(hand, kind, DEFAULT_ELBOW_FLEXION if f is None else float(f))
                for hand, f in zip(hands, flex)]

    def _attach(self, hand: HandMesh, kind: str, flexion: float) -> ArmMesh:
        if not 0.0 <= flexion <= math.pi * 0.9:
            raise ValueError(f"elbow_flexion must be from 0 to {math.pi * 0.9:.2f} radians "
                             f"(0 = straight arm), got {flexion}")
        side, dt, dev = hand.side, self._dtype, self.device
        n_bones = len(self._bones)
        identity = torch.eye(4, dtype=dt, device=dev).expand(1, n_bones, 4, 4)
        with torch.no_grad():
            rest = self._model(pose_parameters=identity)
        heads = rest["bone_poses"][0, :, :3, 3].cpu().double()
        suffix = _SIDE_SUFFIX[side]

        def head(name: str) -> torch.Tensor:
            return heads[self._bones[name + suffix]]

        joints = hand.joints.detach().cpu().double()
        cam_frame = _palm_frame(joints[0], joints[9], joints[5], joints[17])
        body_frame = _palm_frame(head("wrist"), head("finger3-1"), head("finger2-1"),
                                 head("finger5-1"))
        M = cam_frame @ body_frame.T  # body rest frame -> camera, straight elbow
        forearm_dir = head("lowerarm01") - head("wrist")  # wrist -> elbow
        upper_dir = head("upperarm01") - head("lowerarm01")  # elbow -> shoulder
        f = M @ (forearm_dir / forearm_dir.norm())
        towards = torch.tensor(UPPER_ARM_TOWARDS, dtype=f.dtype)
        p = towards - (towards @ f) * f
        if p.norm() < 1e-6:
            p = torch.linalg.cross(f, torch.tensor([1.0, 0.0, 0.0], dtype=f.dtype))
        p = p / p.norm()
        # Anny's rest elbow is bent (about 42 degrees); the rotation below sets the angle
        # between forearm and upper arm to ``flexion`` whatever the rest bend.
        angle = flexion
        u = math.cos(angle) * f + math.sin(angle) * p
        w = M.T @ u
        R = _rotation_between(w, upper_dir / upper_dir.norm())  # elbow delta, body rest axes
        deltas = torch.eye(4, dtype=dt, device=dev).repeat(1, n_bones, 1, 1)
        refs = self._model.reference_bone_orientations
        U0 = (refs[0] if refs is not None else rest["rest_bone_poses"][0, 0, :3, :3]).to(dt)
        deltas[0, self._bone("lowerarm01", side), :3, :3] = U0 @ R.to(dev, dt) @ U0.T
        with torch.no_grad():
            posed = self._model(pose_parameters=deltas)
        bones = posed["bone_poses"][0, :, :3, 3].cpu().double()
        vertices = posed["vertices"][0].cpu().double()
        b = self._bones
        wrist_b = bones[b["wrist" + suffix]]
        body_posed = _palm_frame(wrist_b, bones[b["finger3-1" + suffix]],
                                 bones[b["finger2-1" + suffix]], bones[b["finger5-1" + suffix]])
        T = cam_frame @ body_posed.T
        scale = (joints[9] - joints[0]).norm() / (head("finger3-1") - head("wrist")).norm()

        def place(x: torch.Tensor) -> torch.Tensor:
            return (scale * (x - wrist_b) @ T.T + joints[0]).float()

        used, faces = self._part(kind, side)
        names = ("wrist", "lowerarm01", "upperarm01")[:2 if kind == "forearm" else 3]
        arm_joints = place(torch.stack([bones[b[n + suffix]] for n in names]))
        arm_joints[0] = hand.joints[0].detach().cpu().float()
        return ArmMesh(vertices=place(vertices[used]).contiguous(), faces=faces, joints=arm_joints,
                       side=side, kind=kind, elbow_flexion=angle)


_LOADED: dict[tuple[str, str], ArmModel] = {}


def load_arm_model(cache_dir: str | Path | None = None, device: str = "cpu") -> ArmModel:
    """The :class:`ArmModel` of ``cache_dir``, loaded once per process (building the body
    cache on first use)."""
    key = (str(Path(cache_dir) if cache_dir is not None else default_cache_dir()), str(device))
    if key not in _LOADED:
        _LOADED[key] = ArmModel(cache_dir, device)
    return _LOADED[key]
