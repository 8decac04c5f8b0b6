"""Fit the hand model to the hands MediaPipe finds in a photo (method: docs/fitting.md).

For each detected hand (21 keypoints in pixels, 21 world landmarks in metres, handedness)
the fit finds MANO-convention parameters of the chosen hand model (the open Anny hand or
MANO) in the photo's pinhole camera ``K`` by minimising, batched over the hands with torch's
L-BFGS (strong Wolfe line search):

    E = E_2d + w_3d E_3d + w_pose E_pose (+ w_pca E_pca + w_betas E_betas with MANO)

* ``E_2d``: mean squared distance between the projected model joints and the detected
  keypoints, divided by the squared hand size ``s`` (the larger side of the detected
  keypoints' box), so it reads in hand-size units whatever the resolution.
* ``E_3d`` (scale-free): mean ``1 - cos`` between the 20 bone directions of the model and of
  MediaPipe's world landmarks. The world landmarks have image-aligned axes; they are first
  turned so their z axis lies along the camera ray through the hand (perspective).
* Joint limits: the articulation is the 20 anatomical angles of
  :mod:`sesahand.hands.anatomy` (MCP/PIP/DIP flexion and MCP spread per finger; thumb CMC
  abduction and cross, MCP and IP), each mapped into its range of ``anatomy.LIMITS`` by a
  sigmoid, so limits hold exactly; the joint rotations follow from
  :func:`~sesahand.hands.anatomy.angles_to_rotmats` and go to the model's ``keypoints`` as
  matrices (no axis-angle round trip per step); ``hand_pose`` is their axis-angle.
* ``E_pose``: small-angle prior, mean squared angle (radians).
* MANO only: ``E_pca``, MANO's PCA pose prior (mean squared PCA coefficient of
  ``hand_pose - hands_mean`` divided by the spread of MANO's training poses), and
  ``E_betas``, the mean squared shape coefficient; betas are fitted.

The wrist is parameterised by its pixel and log depth; ``transl`` follows (MANO: the wrist
joint is ``J_wrist(betas) + transl``). Initialisation: global rotation from a Kabsch fit of
the flat model's palm joints to the world landmarks; depth from the ratio of the model's
projected size to the detected size. Two stages: rigid (rotation, wrist, depth), then all.
Everything runs in float64 on the CPU with fixed iteration counts, so a given photo gives the
same result every time.

Handedness: the MediaPipe Tasks hand landmarker used here reports the subject's own hand on
an ordinary (non-mirrored) photo (``sesahand.eval.detector``); ``tests/fit`` checks it on
real photos whose sides were judged by eye, and that the other side fits worse in 3D.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..eval.detector import DetectedHand, HandKeypointDetector
from ..hands.anatomy import ANGLE_NAMES, angle_limits, angles_to_rotmats
from ..hands.base import HandModel, mirror_rotmat
from ..hands.types import NUM_BETAS, HandParams
from ..render.maps import OPENPOSE_HAND_EDGES
from .photo import as_rgb8, photo_intrinsics

log = logging.getLogger(__name__)

#: Which detected hands to fit.
HAND_CHOICES = ("all", "largest", "left", "right")
#: Most hands detected per photo.
MAX_HANDS = 4
#: PCK thresholds (fractions of the hand size) reported per hand.
PCK_LEVELS = (0.05, 0.1, 0.2)

#: The 20 bones (parent, child) of the OpenPose hand, for the 3D direction term.
BONES = tuple(OPENPOSE_HAND_EDGES)
#: Palm joints used for the initial rotation (wrist, thumb CMC, index/middle/ring/little MCP).
PALM_JOINTS = (0, 1, 5, 9, 13, 17)


@dataclass(frozen=True)
class FitOptions:
    """Weights, iterations and the rules that mark a fit as bad.

    Attributes:
        w_3d: weight of the bone-direction term (unitless, against E_2d in hand-size units)
            in the last stage.
        w_3d_start: its weight in the first two stages (a stronger 3D term steers the pose
            into the right basin; the last stage then favours the 2D keypoints).
        w_pose: weight of the small-angle prior (per squared radian).
        w_pca: weight of MANO's PCA prior (MANO only).
        w_betas: weight of the shape prior (MANO only).
        rigid_iterations, full_iterations, refine_iterations: L-BFGS iterations of the three
            stages (rigid; all with ``w_3d_start``; all with ``w_3d``).
        max_error: largest mean 2D error, in hand sizes, of a kept hand.
        min_pck: least PCK@0.1 of a kept hand.
        min_hand_px: smallest hand size (larger side of the keypoint box, pixels) kept.
        border_px: keypoints closer than this to the border (or outside it) mark a hand as cut.
        min_score: least handedness score (the detector's per-hand score) of a kept hand.
    """

    w_3d: float = 0.02
    w_3d_start: float = 0.1
    w_pose: float = 1e-4
    w_pca: float = 1e-4
    w_betas: float = 1e-3
    rigid_iterations: int = 10
    full_iterations: int = 20
    refine_iterations: int = 20
    max_error: float = 0.06
    min_pck: float = 0.9
    min_hand_px: float = 40.0
    border_px: float = 2.0
    min_score: float = 0.5

    def __post_init__(self):
        for name in ("w_3d", "w_3d_start", "w_pose", "w_pca", "w_betas", "max_error", "min_hand_px", "border_px"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        for name in ("min_pck", "min_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)!r} is outside 0..1")
        for name in ("rigid_iterations", "full_iterations", "refine_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
                raise ValueError(f"{name}: expected an integer 0..1000, got {value!r}")


@dataclass
class FittedHand:
    """One detected hand and the hand model fitted to it, in the photo's own pixel frame.

    Attributes:
        params: MANO-convention parameters (camera frame of ``K``, metres, radians).
        side: ``"right"`` / ``"left"`` (the subject's hand, from the detector).
        score: the detector's handedness probability (0.5..1).
        K: (3, 3) float64 intrinsics of the photo at its own size (pixels).
        image_size: (W, H) of the photo.
        model: hand model name.
        joints3d: (21, 3) float64 fitted joints, camera frame, metres, OpenPose order.
        joints2d: (21, 2) float64 fitted joints projected by ``K``, pixels.
        detected2d: (21, 2) float64 detected keypoints, pixels.
        detected_world: (21, 3) MediaPipe world landmarks (metres).
        box: (x0, y0, x1, y1) of the detected keypoints, pixels. hand_size_px: its larger side.
        mean_error_px, median_error_px: 2D residual (fitted vs detected), pixels.
        mean_error: ``mean_error_px / hand_size_px``.
        pck: share of joints within a * hand size, for a in :data:`PCK_LEVELS` (keys "0.05"...).
        bone_angle_deg: mean angle between fitted and world-landmark bone directions, degrees.
        problems: why the fit is not kept (empty when it is): residual, cut by the border,
            tiny, low score.
        angles: the 20 fitted anatomical angles (degrees, right-hand convention), by name.
    """

    params: HandParams
    side: str
    score: float
    K: np.ndarray
    image_size: tuple[int, int]
    model: str
    joints3d: np.ndarray
    joints2d: np.ndarray
    detected2d: np.ndarray
    detected_world: np.ndarray
    box: tuple[float, float, float, float]
    hand_size_px: float
    mean_error_px: float
    median_error_px: float
    mean_error: float
    pck: dict[str, float]
    bone_angle_deg: float
    problems: list[str] = field(default_factory=list)
    angles: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The fit passed every rule of :class:`FitOptions` (it is kept)."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready summary: parameters, camera, joints, residuals and verdict."""
        return {
            **self.params.to_dict(),
            "model": self.model,
            "score": round(self.score, 6),
            "K": self.K.tolist(),
            "image_size": list(self.image_size),
            "joints3d": np.round(self.joints3d, 6).tolist(),
            "joints2d": np.round(self.joints2d, 3).tolist(),
            "detected_joints2d": np.round(self.detected2d, 3).tolist(),
            "box": [round(v, 3) for v in self.box],
            "hand_size_px": round(self.hand_size_px, 3),
            "mean_error_px": round(self.mean_error_px, 4),
            "median_error_px": round(self.median_error_px, 4),
            "mean_error": round(self.mean_error, 6),
            "pck": self.pck,
            "bone_angle_deg": round(self.bone_angle_deg, 3),
            "kept": self.ok,
            "problems": list(self.problems),
            "angles_deg": {k: round(v, 3) for k, v in self.angles.items()},
        }


def select_hands(detections: Sequence[DetectedHand], which: str) -> list[DetectedHand]:
    """The detections to fit: all, the largest (by keypoint box), or those of one side.

    Raises: ValueError for an unknown choice.
    """
    if which not in HAND_CHOICES:
        raise ValueError(f"hands: {which!r} is unknown; choose one of {', '.join(HAND_CHOICES)}")
    hands = list(detections)
    if which == "largest":
        return [max(hands, key=lambda d: float(np.ptp(d.joints2d, axis=0).max()))] if hands else []
    if which in ("left", "right"):
        return [d for d in hands if d.side == which]
    return hands


def _kabsch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Rotation R (3, 3) minimising ||R (src - mean) - (dst - mean)||, src/dst (P, 3)."""
    a, b = src - src.mean(0), dst - dst.mean(0)
    u, _, vt = torch.linalg.svd(a.T @ b)
    d = torch.sign(torch.det(vt.T @ u.T))
    return vt.T @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=src.dtype)) @ u.T


def _ray_rotation(K: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Rotation (3, 3) taking the z axis onto the camera ray through ``pixel``."""
    ray = torch.linalg.solve(K, torch.cat([pixel, pixel.new_ones(1)]))
    ray = ray / ray.norm()
    z = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype)
    axis = torch.linalg.cross(z, ray)
    s, c = axis.norm(), ray @ z
    if s < 1e-12:
        return torch.eye(3, dtype=K.dtype)
    import roma

    return roma.rotvec_to_rotmat(axis / s * torch.atan2(s, c))


class _Problem:
    """The batched objective of one side's hands (all tensors float64)."""

    def __init__(self, model: HandModel, side: str, K: torch.Tensor, det2d: torch.Tensor,
                 world: torch.Tensor, sizes: torch.Tensor, options: FitOptions):
        self.model, self.side, self.K, self.options = model, side, K, options
        self.det2d, self.world, self.sizes = det2d, world, sizes
        self.K_inv = torch.linalg.inv(K)
        self.n = det2d.shape[0]
        self.lo, self.hi = (t.double() for t in angle_limits())
        parents, children = zip(*BONES)
        self.parents, self.children = list(parents), list(children)
        w = world[:, self.children] - world[:, self.parents]
        self.world_dirs = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        self.mano = getattr(model, "name", "") == "mano"
        if self.mano:
            components, mean, spread = model.pca_prior(side)
            self.mean = mean.double()
            self.unmix = torch.linalg.pinv(components.double())
            self.spread = spread.double().clamp_min(1e-3)

    def angles(self, raw: torch.Tensor) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(raw)

    def rotmats(self, raw: torch.Tensor) -> torch.Tensor:
        """The 15 joint rotations (N, 15, 3, 3) of this side for the raw angles."""
        rot = angles_to_rotmats(self.angles(raw))
        return mirror_rotmat(rot) if self.side == "left" else rot

    def hand_pose(self, raw: torch.Tensor) -> torch.Tensor:
        import roma

        return roma.rotmat_to_rotvec(self.rotmats(raw)).flatten(-2)

    def rest_oriented(self, raw, betas) -> torch.Tensor:
        """The articulated joints (N, 21, 3) with zero ``global_orient`` and ``transl``."""
        zeros = raw.new_zeros(self.n, 3)
        return self.model.keypoints(self.side, zeros, self.rotmats(raw), betas, zeros).double()

    def joints(self, rot, raw, wrist, log_depth, betas, rest: torch.Tensor | None = None):
        """Camera-frame joints (N, 21, 3) and the transl that places them. ``wrist`` (N, 2) is
        the wrist's offset from the detected wrist in hand sizes (well scaled for L-BFGS).

        ``global_orient`` turns the hand about its wrist joint (MANO's convention, which both
        hand models follow), so it is applied here to :meth:`rest_oriented`'s joints; ``rest``
        passes those when the articulation is held fixed (the rigid stage)."""
        import roma

        rest = self.rest_oriented(raw, betas) if rest is None else rest
        wrist_px = self.det2d[:, 0] + wrist * self.sizes[:, None]
        depth = torch.exp(log_depth)[:, None]
        ray = torch.cat([wrist_px, wrist_px.new_ones(self.n, 1)], dim=1) @ self.K_inv.T
        wrist_cam = ray * depth
        turned = (rest - rest[:, :1]) @ roma.rotvec_to_rotmat(rot).transpose(1, 2)
        return turned + wrist_cam[:, None], wrist_cam - rest[:, 0]

    def project(self, joints: torch.Tensor) -> torch.Tensor:
        uvw = joints @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-6)

    def energy(self, rot, raw, wrist, log_depth, betas, w_3d: float,
               rest: torch.Tensor | None = None) -> torch.Tensor:
        o = self.options
        joints, _ = self.joints(rot, raw, wrist, log_depth, betas, rest)
        e2d = (((self.project(joints) - self.det2d) / self.sizes[:, None, None]) ** 2).sum(-1).mean(-1)
        bones = joints[:, self.children] - joints[:, self.parents]
        dirs = bones / bones.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        e3d = (1.0 - (dirs * self.world_dirs).sum(-1)).mean(-1)
        angles = torch.deg2rad(self.angles(raw))
        energy = e2d + w_3d * e3d + o.w_pose * (angles ** 2).mean(-1)
        if self.mano:
            pose = self.hand_pose(raw)
            coeffs = (pose - self.mean) @ self.unmix
            energy = energy + o.w_pca * ((coeffs / self.spread) ** 2).mean(-1) \
                + o.w_betas * (betas ** 2).mean(-1)
        return energy.sum()


def _lbfgs(params: list[torch.Tensor], closure_energy: Callable[[], torch.Tensor], iterations: int) -> None:
    if iterations <= 0:
        return
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                  tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        energy = closure_energy()
        energy.backward()
        return energy

    optimizer.step(closure)


def _initial_rotations(model: HandModel, side: str, problem: _Problem, world: torch.Tensor,
                       init_raw: torch.Tensor) -> torch.Tensor:
    """Global orientations (N, 3): Kabsch of the model's palm joints onto the (ray-turned) world
    landmarks."""
    import roma

    n = world.shape[0]
    zeros = torch.zeros(n, 3, dtype=torch.float64)
    rest = model.keypoints(side, zeros, problem.hand_pose(init_raw), torch.zeros(n, NUM_BETAS, dtype=torch.float64),
                           zeros).double()
    rotations = []
    for i in range(n):
        R = _kabsch(rest[i, list(PALM_JOINTS)], world[i, list(PALM_JOINTS)])
        rotations.append(roma.rotmat_to_rotvec(R))
    return torch.stack(rotations)


def _initial_angles(world: torch.Tensor) -> torch.Tensor:
    """Starting angles (N, 20) in degrees from world landmarks (N, 21, 3): each long finger's
    MCP, PIP and DIP flexion is the angle between consecutive bones (metacarpal = wrist ->
    MCP); spread 0; the thumb slightly flexed (abduct 20, cross 20, MCP 10, IP 10)."""
    def angle(a, b):
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-9)
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    n = world.shape[0]
    out = torch.zeros(n, 20, dtype=world.dtype)
    for k, base in enumerate((5, 9, 13, 17)):  # index, middle, ring, little MCP
        chain = [world[:, 0]] + [world[:, base + i] for i in range(4)]
        bones = [chain[i + 1] - chain[i] for i in range(4)]
        for j in range(3):  # MCP, PIP, DIP
            out[:, 4 * k + j] = angle(bones[j], bones[j + 1])
    out[:, 16:] = torch.tensor([20.0, 20.0, 10.0, 10.0], dtype=world.dtype)
    return out


def _turned_world(det: DetectedHand, K: torch.Tensor) -> torch.Tensor:
    world = torch.as_tensor(det.world_joints, dtype=torch.float64)
    centre = torch.as_tensor(det.joints2d, dtype=torch.float64).mean(0)
    return world @ _ray_rotation(K, centre).T


def _fit_side(model: HandModel, side: str, dets: list[DetectedHand], K: torch.Tensor,
              options: FitOptions) -> list[tuple[HandParams, np.ndarray, np.ndarray, dict[str, float]]]:
    n = len(dets)
    det2d = torch.as_tensor(np.stack([d.joints2d for d in dets]), dtype=torch.float64)
    world = torch.stack([_turned_world(d, K) for d in dets])
    sizes = (det2d.amax(1) - det2d.amin(1)).amax(-1).clamp_min(1.0)
    problem = _Problem(model, side, K, det2d, world, sizes, options)
    # Start from the finger flexion measured on the world landmarks (within the limits).
    lo, hi = problem.lo, problem.hi
    start = torch.minimum(torch.maximum(_initial_angles(world), lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
    init_raw = torch.logit((start - lo) / (hi - lo))
    rot = _initial_rotations(model, side, problem, world, init_raw)
    betas = torch.zeros(n, NUM_BETAS, dtype=torch.float64)
    wrist = torch.zeros(n, 2, dtype=torch.float64)
    # Depth: the model's joints at depth 1 m projected vs the detected keypoint spread.
    with torch.no_grad():
        at_1m, _ = problem.joints(rot, init_raw, wrist, torch.zeros(n, dtype=torch.float64), betas)
        px = problem.project(at_1m)
        spread_model = (px - px.mean(1, keepdim=True)).norm(dim=-1).mean(-1)
        spread_det = (det2d - det2d.mean(1, keepdim=True)).norm(dim=-1).mean(-1)
        log_depth = torch.log((spread_model / spread_det.clamp_min(1e-3)).clamp(0.02, 100.0))
    rot, raw, wrist, log_depth = (t.clone().requires_grad_(True) for t in (rot, init_raw, wrist, log_depth))
    fit_betas = problem.mano
    betas = betas.clone().requires_grad_(fit_betas)

    def energy(w_3d: float, rest: torch.Tensor | None = None):
        return lambda: problem.energy(rot, raw, wrist, log_depth, betas, w_3d, rest)

    everything = [rot, raw, wrist, log_depth] + ([betas] if fit_betas else [])
    with torch.no_grad():  # the rigid stage keeps the articulation: pose the hand once
        rest = problem.rest_oriented(raw, betas)
    _lbfgs([rot, wrist, log_depth], energy(options.w_3d_start, rest), options.rigid_iterations)
    _lbfgs(everything, energy(options.w_3d_start), options.full_iterations)
    _lbfgs(everything, energy(options.w_3d), options.refine_iterations)

    with torch.no_grad():
        joints, transl = problem.joints(rot, raw, wrist, log_depth, betas)
        pose = problem.hand_pose(raw)
        angles = problem.angles(raw)
    results = []
    for i in range(n):
        params = HandParams(global_orient=rot[i].detach(), hand_pose=pose[i], betas=betas[i].detach(),
                            transl=transl[i], side=side)
        named = {name: float(a) for name, a in zip(ANGLE_NAMES, angles[i])}
        results.append((params, joints[i].numpy(), problem.project(joints[i]).numpy(), named))
    return results


def _residuals(fitted2d: np.ndarray, det: DetectedHand, fitted3d: np.ndarray) -> dict:
    det2d = np.asarray(det.joints2d, dtype=np.float64)
    lo, hi = det2d.min(0), det2d.max(0)
    size = float(max(hi - lo))
    err = np.linalg.norm(fitted2d - det2d, axis=1)
    out = {"box": (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), "hand_size_px": size,
           "mean_error_px": float(err.mean()), "median_error_px": float(np.median(err)),
           "mean_error": float(err.mean() / max(size, 1e-9)),
           "pck": {str(a): float((err <= a * size).mean()) for a in PCK_LEVELS}}
    parents, children = (list(x) for x in zip(*BONES))
    a = fitted3d[children] - fitted3d[parents]
    b = np.asarray(det.world_joints, dtype=np.float64)
    b = b[children] - b[parents]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out["bone_angle_deg"] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())
    return out


def _problems(res: dict, det: DetectedHand, width: int, height: int, options: FitOptions) -> list[str]:
    problems = []
    if res["mean_error"] > options.max_error or res["pck"]["0.1"] < options.min_pck:
        problems.append(f"residual: mean error {res['mean_error']:.3f} of the hand size (max "
                        f"{options.max_error:.3f}), PCK@0.1 {res['pck']['0.1']:.2f} (min {options.min_pck:.2f})")
    j = np.asarray(det.joints2d)
    m = options.border_px
    if (j[:, 0] < m).any() or (j[:, 1] < m).any() or (j[:, 0] > width - m).any() or (j[:, 1] > height - m).any():
        problems.append("cut by the image border")
    if res["hand_size_px"] < options.min_hand_px:
        problems.append(f"tiny: {res['hand_size_px']:.0f} px (min {options.min_hand_px:.0f})")
    if det.side_score < options.min_score:
        problems.append(f"low score {det.side_score:.2f} (min {options.min_score:.2f})")
    return problems


def fit_detections(detections: Sequence[DetectedHand], model: HandModel, width: int, height: int,
                   K: np.ndarray, options: FitOptions = FitOptions()) -> list[FittedHand]:
    """Fit ``model`` to hands already detected in a ``width`` x ``height`` photo with camera ``K``.

    Returns one :class:`FittedHand` per detection, in order. The fit needs gradients: it
    enables them itself, but a model loaded under ``torch.inference_mode`` (as ComfyUI runs
    nodes) must first be copied outside it (``copy.deepcopy``; the node does).

    Raises: ValueError if a detection has no world landmarks (MediaPipe's Tasks API always
    gives them); FileNotFoundError for a MANO model lacking a side that was detected.
    """
    for i, d in enumerate(detections):
        if d.world_joints is None or np.asarray(d.world_joints).shape != (21, 3) \
                or not np.isfinite(d.world_joints).all():
            raise ValueError(f"detections[{i}]: no finite (21, 3) world landmarks; the fit needs "
                             "MediaPipe's hand_world_landmarks")
    fitted: list[FittedHand | None] = [None] * len(detections)
    for side in ("right", "left"):
        rows = [i for i, d in enumerate(detections) if d.side == side]
        if not rows:
            continue
        dets = [detections[i] for i in rows]
        with torch.inference_mode(False), torch.enable_grad():  # callers may run under no_grad
            results = _fit_side(model, side, dets, torch.as_tensor(np.asarray(K, dtype=np.float64)), options)
        for i, (params, j3, j2, angles) in zip(rows, results):
            det = detections[i]
            res = _residuals(j2, det, j3)
            fitted[i] = FittedHand(
                params=params, side=side, score=float(det.side_score), K=np.asarray(K, dtype=np.float64),
                image_size=(int(width), int(height)), model=model.name, joints3d=j3.astype(np.float64),
                joints2d=j2.astype(np.float64), detected2d=np.asarray(det.joints2d, dtype=np.float64),
                detected_world=np.asarray(det.world_joints, np.float64),
                box=res["box"], hand_size_px=res["hand_size_px"], mean_error_px=res["mean_error_px"],
                median_error_px=res["median_error_px"], mean_error=res["mean_error"], pck=res["pck"],
                bone_angle_deg=res["bone_angle_deg"], problems=_problems(res, det, width, height, options),
                angles=angles)
    return [f for f in fitted if f is not None]


def fit_hands(image, model: HandModel, detector: HandKeypointDetector, *, hands: str = "all",
              fov_deg: float | None = None, focal_35mm: float | None = None,
              options: FitOptions = FitOptions()) -> list[FittedHand]:
    """Detect every hand in a photo and fit the hand model to each.

    Args:
        image: (H, W, 3) uint8 RGB (or float 0..1) photo, upright (see
            :func:`~sesahand.fit.photo.load_photo` for EXIF rotation and colour modes).
        model: the hand model (``AnnyHandModel`` or ``ManoHandModel``).
        detector: a MediaPipe :class:`~sesahand.eval.HandKeypointDetector` (make it with
            ``num_hands`` up to :data:`MAX_HANDS`).
        hands: which detections to fit: ``all``, ``largest``, ``left`` or ``right``.
        fov_deg: field of view across the longer side when there is no EXIF focal length
            (default :data:`~sesahand.fit.photo.DEFAULT_FOV_DEG`).
        focal_35mm: EXIF 35 mm-equivalent focal length (mm), if known; wins over ``fov_deg``.
        options: weights, iterations and the bad-fit rules.

    Returns: one :class:`FittedHand` per fitted hand (empty when there is no hand), in the
    detector's order; check ``ok`` / ``problems`` before using a hand.

    Raises: ValueError for a malformed or oversized image or an unknown ``hands`` choice.
    """
    pixels = as_rgb8(image)
    height, width = pixels.shape[:2]
    if hands not in HAND_CHOICES:
        raise ValueError(f"hands: {hands!r} is unknown; choose one of {', '.join(HAND_CHOICES)}")
    K = photo_intrinsics(width, height, fov_deg=fov_deg, focal_35mm=focal_35mm)
    detections = select_hands(detector.detect(pixels), hands)
    if not detections:
        return []
    return fit_detections(detections, model, width, height, K, options)
