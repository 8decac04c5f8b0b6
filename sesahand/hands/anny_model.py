"""The open default hand: NAVER's Anny hand model driven by MANO-convention parameters.

Anny (``anny`` package, code Apache-2.0, MakeHuman/MPFB2 assets CC0) provides a hand-only
model ``Anny(rig='anny-hand.R', topology='hand.R')``: 1609 vertices, 3196 triangles, 21 bones,
metres. Building it from the package assets takes one to three minutes and a 564 MB scratch
cache, so it is built once and only its compact model data (about 4 MB,
``to_model_data().save_safetensors``) is kept in the SesaHand cache folder; reloading that
takes well under a second.

Retargeting MANO parameters (documented in README "Hand models"):

* Joint map (MANO joint -> Anny bone): index1..3 -> finger2-1..3, middle1..3 -> finger3-1..3,
  ring1..3 -> finger4-1..3, little1..3 -> finger5-1..3, thumb1..3 -> finger1-1..3. Anny's
  metacarpal bones stay at rest (MANO has no metacarpal joints).
* Frame conversion: MANO's pose rotations are expressed in MANO's rest frame, where the right
  hand's fingers point along -x, the back of the hand faces +y and the thumb lies towards +z
  (finger flexion is a positive rotation about +z). Anny's rest frame is found from its own
  skeleton (finger direction wrist -> middle MCP, lateral direction little MCP -> index MCP).
  ``R_align`` maps MANO's rest axes onto Anny's; every MANO joint rotation ``R_j`` becomes the
  Anny delta ``R_align R_j R_align^T`` in Anny's ``local-ref`` pose parameterisation, which,
  like MANO, composes world-axis rotations down each finger chain.
* Anny's rest hand is relaxed, MANO's zero pose is flat: each Anny finger bone gets a fixed
  "flattening" rotation ``F_c`` (removing its curl out of the palm plane), and the delta of
  bone c with parent p becomes ``F_p^T (R_align R_j R_align^T) F_c``, so zero ``hand_pose`` is
  a flat hand on both models.
* The posed Anny hand is brought back to MANO's rest frame with its wrist placed at MANO's
  mean-shape wrist joint, then ``global_orient`` rotates it about the wrist and ``transl`` is
  added, exactly as MANO does; the result is in the camera frame.
* Left hands are mirror images of right hands (x -> -x), posed with mirrored parameters.
* ``betas`` cannot be honoured: MANO's shape space has no counterpart in Anny's phenotype
  parameters. Non-zero betas are reported in ``HandMesh.notes`` and logged, never silently
  dropped. Joint rotations transfer; finger lengths and thumb rest pose are Anny's own, so
  the same parameters give a similar but not identical hand to MANO's.
* The 21 OpenPose keypoints are Anny bone heads (wrist, CMC/MCP/PIP/DIP, thumb MCP/IP) and
  one fingertip vertex per finger: the vertex of the last bone furthest along that bone.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from ..io import atomic_path, default_cache_dir
from .base import MIRROR, HandModel, mirror_params, mirror_rotmat, mirror_rotvec
from .types import HandMesh, HandParams

log = logging.getLogger(__name__)


def _rotvec_to_rotmat(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) radians -> rotation matrices (..., 3, 3) (roma)."""
    import roma

    return roma.rotvec_to_rotmat(rotvec)


#: Anny bone for each MANO joint, in ``hand_pose`` order (see ``types.MANO_JOINT_NAMES``).
MANO_TO_ANNY_BONES = (
    "finger2-1.R", "finger2-2.R", "finger2-3.R",  # index
    "finger3-1.R", "finger3-2.R", "finger3-3.R",  # middle
    "finger5-1.R", "finger5-2.R", "finger5-3.R",  # little
    "finger4-1.R", "finger4-2.R", "finger4-3.R",  # ring
    "finger1-1.R", "finger1-2.R", "finger1-3.R",  # thumb
)

#: Anny bone whose head gives each OpenPose keypoint; None marks fingertips (vertices).
OPENPOSE_FROM_ANNY = (
    "wrist.R",
    "finger1-1.R", "finger1-2.R", "finger1-3.R", None,
    "finger2-1.R", "finger2-2.R", "finger2-3.R", None,
    "finger3-1.R", "finger3-2.R", "finger3-3.R", None,
    "finger4-1.R", "finger4-2.R", "finger4-3.R", None,
    "finger5-1.R", "finger5-2.R", "finger5-3.R", None,
)

#: MANO rest axes of the right hand, as columns: finger direction, back-of-hand normal, thumb side.
MANO_REST_AXES = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).T

#: MANO's mean-shape right-hand wrist joint in its rest frame (metres): the point
#: ``global_orient`` rotates about when ``transl`` is zero.
MANO_MEAN_WRIST = torch.tensor([0.09566994, 0.00638343, 0.0061863])

ANNY_RIG = "anny-hand.R"
ANNY_TOPOLOGY = "hand.R"


def _import_anny():
    """Import ``anny`` with NVIDIA warp's start-up messages below warnings (warp prints them
    to stdout; warnings and errors still show)."""
    import warp

    warp.config.log_level = max(warp.config.log_level, warp.LOG_WARNING)
    import anny

    return anny


def anny_cache_file(cache_dir: str | Path | None = None) -> Path:
    """Path of the compact Anny hand data for the installed ``anny`` version."""
    anny = _import_anny()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"anny-{anny.__version__}-{ANNY_RIG}.safetensors"


def build_anny_cache(path: Path, rig: str = ANNY_RIG, topology: str = ANNY_TOPOLOGY,
                     what: str = "hand", duration: str = "1-3 minutes") -> None:
    """Build an Anny model (default: the hand) from the package assets and save its compact
    data to ``path``.

    The package's large scratch cache goes to a temporary folder that is removed afterwards;
    ``path`` is written atomically (temporary file, then rename), so an interrupted build
    leaves nothing behind. The hand takes one to three minutes on 2 CPU cores.

    Args:
        rig, topology: Anny's rig and topology names (the full body: see ``hands.arm``).
        what, duration: for the log lines (``"hand"``, ``"1-3 minutes"``).
    """
    _import_anny()
    from anny import Anny
    from anny import paths as anny_paths

    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the Anny %s model once (%s); it will be cached in %s", what, duration, path)
    start = time.perf_counter()
    previous = anny_paths.get_anny_cache_path()
    with tempfile.TemporaryDirectory(prefix="anny-build-") as scratch:
        anny_paths.set_anny_cache_path(scratch)
        try:
            data = Anny(rig=rig, topology=topology).to_model_data()
        finally:
            anny_paths.set_anny_cache_path(previous)
    with atomic_path(path) as tmp:
        data.save_safetensors(str(tmp))
    log.info("Anny %s model built in %.0f s", what, time.perf_counter() - start)


def _rest_frame(finger: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns (finger, back, thumb side) from a finger and a lateral direction."""
    f = finger / finger.norm()
    t = lateral - (lateral @ f) * f
    t = t / t.norm()
    b = torch.linalg.cross(f, t)
    return torch.stack([f, b, t], dim=1)


class AnnyHandModel(HandModel):
    """The open hand model (no licence needed), posed with MANO-convention parameters.

    Args:
        cache_dir: folder holding the compact model data (see :func:`default_cache_dir`);
            the model is built there on first use.
        device: torch device for the forward pass.

    ``forward`` returns float32 meshes in the camera frame (metres); see the module docstring
    for the retargeting and its limits.
    """

    name = "anny"

    def __init__(self, cache_dir: str | Path | None = None, device: str | torch.device = "cpu"):
        path = anny_cache_file(cache_dir)  # imports anny quietly
        from anny import Anny
        from anny.models.model_data import ModelData

        if not path.exists():
            build_anny_cache(path)
        try:
            data = ModelData.load_safetensors(str(path))
        except Exception as exc:  # corrupt cache: say which file to delete
            raise RuntimeError(f"the Anny hand cache {path} is unreadable ({exc}); delete it "
                               "and it will be rebuilt") from exc
        self.device = torch.device(device)
        self._model = Anny.from_model_data(
            data, bone_orientation="cached", pose_parameterization="local-ref",
            root_identity_orientation=False,
        ).to(self.device)
        self._dtype = self._model.template_vertices.dtype
        labels = list(self._model.bone_labels)
        self._bone_index = {name: i for i, name in enumerate(labels)}
        self._pose_bones = torch.tensor([self._bone_index[b] for b in MANO_TO_ANNY_BONES])

        identity = torch.eye(4, dtype=self._dtype, device=self.device).expand(1, len(labels), 4, 4)
        with torch.no_grad():
            rest = self._model(pose_parameters=identity)
        heads = rest["bone_poses"][0, :, :3, 3]
        vertices = rest["vertices"][0]
        self._tips = self._fingertip_vertices(vertices, heads)
        idx = self._bone_index
        wrist = heads[idx["wrist.R"]]
        axes = _rest_frame(heads[idx["finger3-1.R"]] - wrist,
                           heads[idx["finger2-1.R"]] - heads[idx["finger5-1.R"]])
        #: Rotation taking MANO rest-frame vectors to Anny rest-frame vectors.
        self.R_align = axes @ MANO_REST_AXES.to(axes)
        self._wrist = wrist
        # With identity deltas Anny outputs the hand in its root's reference frame, while
        # 'local-ref' deltas are read in world axes: conjugating by the root's reference
        # orientation U0 makes a delta act as the same rotation in the output frame.
        refs = self._model.reference_bone_orientations
        self._U0 = (refs[0] if refs is not None else rest["rest_bone_poses"][0, 0, :3, :3]).to(self._dtype)
        self._flatten = self._flattening(heads, vertices, axes[:, 1])
        # _deltas' constant factors: bone c's delta is U0 F_p^T R_align R_c R_align^T F_c U0^T.
        F = self._flatten.to(self.device, self._dtype)
        F_parent = torch.cat([torch.eye(3, dtype=self._dtype, device=self.device)[None], F[:-1]])
        F_parent[::3] = torch.eye(3, dtype=self._dtype, device=self.device)  # each finger's first bone
        R = self.R_align.to(self._dtype)
        self._delta_left = self._U0 @ F_parent.transpose(1, 2) @ R  # (15, 3, 3)
        self._delta_right = R.T @ F @ self._U0.T  # (15, 3, 3)
        self._identity_deltas = torch.eye(4, dtype=self._dtype, device=self.device).expand(
            1, len(labels), 4, 4)
        # For keypoints(): the rest skeleton and the fingertip vertices' skinning data.
        self._rest_bone_poses = rest["rest_bone_poses"].detach()
        self._tip_rest = rest["rest_vertices"][0, self._tips].detach()
        self._tip_weights = self._model.vertex_bone_weights[self._tips].to(self._dtype)
        self._tip_bones = self._model.vertex_bone_indices[self._tips].to(torch.int64)
        # OpenPose order as rows of [bone heads; the 5 fingertips] (keypoints()).
        tips = iter(range(len(labels), len(labels) + 5))
        self._openpose_rows = torch.tensor([self._bone_index[b] if b else next(tips) for b in OPENPOSE_FROM_ANNY])
        self._faces = self._model.faces.to(torch.int64).cpu()
        self._faces_left = self._faces[:, [0, 2, 1]].contiguous()

    def _fingertip_vertices(self, vertices: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """One vertex per finger (thumb..little): furthest along the last bone, among its vertices."""
        weights = self._model.vertex_bone_weights
        dominant = self._model.vertex_bone_indices.gather(1, weights.argmax(1, keepdim=True))[:, 0]
        tips = []
        for finger in range(1, 6):
            last = self._bone_index[f"finger{finger}-3.R"]
            prev = self._bone_index[f"finger{finger}-2.R"]
            direction = heads[last] - heads[prev]
            candidates = torch.nonzero(dominant == last).flatten()
            reach = (vertices[candidates] - heads[last]) @ direction
            tips.append(candidates[reach.argmax()])
        return torch.stack(tips).cpu()

    def _flattening(self, heads: torch.Tensor, vertices: torch.Tensor, back: torch.Tensor):
        """Global rotations (15, 3, 3) that straighten Anny's curled rest fingers into MANO's flat hand.

        Anny's rest hand is relaxed (fingers and thumb curl towards the palm) while MANO's
        zero pose is flat. Each finger bone's rest direction (head to next head, or to the
        fingertip vertex) is rotated by the smallest rotation that removes its component
        along the back-of-hand normal, keeping its splay within the palm plane.
        """
        import roma

        idx = self._bone_index
        tips = dict(zip(range(1, 6), self._tips.tolist()))
        rotations = []
        for bone in MANO_TO_ANNY_BONES:
            finger, segment = int(bone[6]), int(bone[8])
            start = heads[idx[bone]]
            end = (vertices[tips[finger]] if segment == 3
                   else heads[idx[f"finger{finger}-{segment + 1}.R"]])
            d = (end - start) / (end - start).norm()
            flat = d - (d @ back) * back
            flat = flat / flat.norm()
            axis = torch.linalg.cross(d, flat)
            angle = torch.atan2(axis.norm(), d @ flat)
            rotations.append(roma.rotvec_to_rotmat(axis / axis.norm().clamp_min(1e-12) * angle))
        return torch.stack(rotations)

    def faces(self, side: str) -> torch.Tensor:
        return self._faces if side == "right" else self._faces_left

    def forward(self, params: Sequence[HandParams]) -> list[HandMesh]:
        params = list(params)
        if not params:
            return []
        right = [p if p.side == "right" else mirror_params(p) for p in params]
        vertices, joints = self._pose_right(right)
        meshes = []
        for i, p in enumerate(params):
            v, j = vertices[i], joints[i]
            if p.side == "left":
                v, j = v @ MIRROR.T, j @ MIRROR.T
            notes = []
            if p.betas.abs().max() > 0:
                notes.append("betas not honoured: the open Anny hand has no MANO shape space; "
                             "its mean hand was used (load MANO for shaped hands)")
                log.warning("%s hand: %s", p.side, notes[-1])
            meshes.append(HandMesh(vertices=v.contiguous(), faces=self.faces(p.side), joints=j.contiguous(),
                                   side=p.side, model=self.name, params=p, notes=notes))
        return meshes

    def keypoints(self, side: str, global_orient: torch.Tensor, hand_pose: torch.Tensor,
                  betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """Differentiable joints (N, 21, 3) float32, camera frame (see :meth:`HandModel.keypoints`).

        Only the skeleton (forward kinematics) and the five fingertip vertices are posed,
        with the same kinematics and linear blend skinning as :meth:`forward`; ``betas`` are
        ignored (the open hand has no MANO shape space). ``hand_pose`` may be (N, 15, 3, 3)
        rotation matrices: they go straight into the kinematics (no axis-angle round trip).
        """
        dt, dev = self._dtype, self.device
        go, hp, tr = (x.to(dev, dt) for x in (global_orient, hand_pose, transl))
        n = go.shape[0]
        rot = hp if hp.ndim == 4 else _rotvec_to_rotmat(hp.reshape(n, 15, 3))
        if side == "left":  # a left hand is the mirror image of the mirrored right hand
            go, rot = mirror_rotvec(go), mirror_rotmat(rot)
            tr = tr * torch.tensor([-1.0, 1.0, 1.0], dtype=dt, device=dev)
        transforms, bone_poses = self._model.get_bone_transforms(self._deltas(rot), self._rest_bone_poses)
        heads = bone_poses[:, :, :3, 3]
        T = transforms[:, self._tip_bones]  # (N, 5, k, 4, 4)
        posed = (T[..., :3, :3] @ self._tip_rest[None, :, None, :, None])[..., 0] + T[..., :3, 3]
        tips = (posed * self._tip_weights[None, :, :, None]).sum(2)  # (N, 5, 3)
        keypoints = torch.cat([heads, tips], dim=1)[:, self._openpose_rows]  # (N, 21, 3)
        joints = self._to_camera(keypoints, go, tr).float()
        return joints @ MIRROR.T if side == "left" else joints

    def _deltas(self, rot: torch.Tensor) -> torch.Tensor:
        """Anny local-ref pose deltas (N, bones, 4, 4) for right-hand MANO joint rotations
        ``rot`` (N, 15, 3, 3) in MANO's rest frame.

        Per bone c with parent p in the same finger chain: D_c = F_p^T (R R_c R^T) F_c, so the
        bone's world rotation is (R_1 ... R_c) F_c: MANO's chain applied to the flattened hand
        (conjugated by U0, ``__init__``); the constant factors are precomputed.
        """
        deltas = self._identity_deltas.expand(rot.shape[0], -1, -1, -1).clone()
        deltas[:, self._pose_bones, :3, :3] = self._delta_left @ rot @ self._delta_right
        return deltas

    def _to_camera(self, x: torch.Tensor, global_orient: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """Anny rest-frame points (N, P, 3) -> camera frame: into MANO's rest frame with the wrist
        at MANO's, then MANO's global rotation about it and ``transl``."""
        import roma

        dt = x.dtype
        go = roma.rotvec_to_rotmat(global_orient.to(dt))
        wrist = MANO_MEAN_WRIST.to(x.device, dt)
        mano = (x - self._wrist) @ self.R_align.to(dt)
        return (mano @ go.transpose(1, 2)) + (wrist + transl.to(dt))[:, None]

    def _pose_right(self, params: list[HandParams]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-hand vertices (N, V, 3) and OpenPose joints (N, 21, 3), float32, camera frame."""
        dt, dev = self._dtype, self.device
        hand_pose = torch.stack([p.hand_pose for p in params]).to(dev, dt)
        with torch.no_grad():
            out = self._model(pose_parameters=self._deltas(_rotvec_to_rotmat(hand_pose.reshape(-1, 15, 3))))
        heads = out["bone_poses"][:, :, :3, 3]
        keypoints = []
        tip = iter(self._tips.tolist())
        for bone in OPENPOSE_FROM_ANNY:
            keypoints.append(heads[:, self._bone_index[bone]] if bone else out["vertices"][:, next(tip)])
        joints = torch.stack(keypoints, dim=1)
        go = torch.stack([p.global_orient for p in params]).to(dev, dt)
        transl = torch.stack([p.transl for p in params]).to(dev, dt)
        return self._to_camera(out["vertices"], go, transl).float(), self._to_camera(joints, go, transl).float()
