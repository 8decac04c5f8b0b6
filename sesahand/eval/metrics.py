"""3D hand reconstruction metrics, as the FreiHAND benchmark evaluation defines them.

Source: the evaluation script of the FreiHAND dataset (Zimmermann et al., ICCV 2019),
``eval.py`` in https://github.com/lmb-freiburg/freihand. Implemented here from its
definitions (no code copied):

* MPJPE / MPVPE: mean Euclidean distance between predicted and ground-truth keypoints /
  vertices in the camera frame, no alignment (FreiHAND's "mean_kp3d_avg"), over all
  samples and points. Reported in millimetres (inputs are metres).
* PA-MPJPE / PA-MPVPE: the same after aligning each predicted sample to its ground truth
  with a similarity transform (FreiHAND's ``align_w_scale``): both point sets are centred on
  their mean and divided by their Frobenius norm, the orthogonal matrix ``R`` of the
  orthogonal Procrustes problem (SVD of ``gt^T pred``; FreiHAND does not exclude reflections,
  neither does this) and the scale ``s`` (sum of the singular values) map the prediction
  onto the ground truth, which is then scaled back by the ground truth's norm and moved to its
  centroid. Vertices are aligned with their own transform when prediction and ground truth
  have the same vertex count; otherwise MPVPE is not defined and vertices are moved by the
  keypoints' transform (FreiHAND's rule for non-MANO meshes).
* F@d (d = 5 mm, 15 mm): per sample, precision = share of ground-truth vertices whose
  nearest predicted vertex is closer than d, recall = share of predicted vertices whose
  nearest ground-truth vertex is closer than d (strictly), F = 2PR / (P + R) (0 when both
  are 0); averaged over samples. Given on the raw vertices (``f5``, ``f15``) and on the aligned
  ones (``pa_f5``, ``pa_f15``, FreiHAND's "F_aligned").

File format of ``python -m sesahand metrics PRED.json GT.json`` (units: metres, camera frame,
keypoints in OpenPose/FreiHAND order): either an object ``{"xyz": [N x 21 x 3],
"verts": [N x V x 3]}`` (``verts`` optional), FreiHAND's prediction layout
``[xyz_list, verts_list]``, or a bare list of N x 21 x 3 keypoints (FreiHAND's
``*_xyz.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: F-score distance thresholds in metres (5 mm and 15 mm, as FreiHAND).
F_THRESHOLDS = (0.005, 0.015)

NUM_JOINTS = 21


@dataclass(frozen=True)
class Similarity:
    """A similarity transform estimated by :func:`procrustes`: ``x -> s * (x - t_src) @ R.T + t_dst``.

    Attributes: ``R`` (3, 3) orthogonal; ``scale`` float; ``t_src``, ``t_dst`` (3,) metres.
    """

    R: np.ndarray
    scale: float
    t_src: np.ndarray
    t_dst: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (P, 3) points; returns (P, 3) float64."""
        return self.scale * (np.asarray(points, dtype=np.float64) - self.t_src) @ self.R.T + self.t_dst


def procrustes(gt: np.ndarray, pred: np.ndarray) -> Similarity:
    """Similarity transform aligning ``pred`` onto ``gt`` in the least-squares sense (FreiHAND).

    Args:
        gt, pred: (P, 3) corresponding points (metres).

    Returns: the transform; ``procrustes(gt, pred).apply(pred)`` is the aligned prediction
    (FreiHAND's ``align_w_scale(gt, pred)``). A 1e-8 is added to both Frobenius norms, as
    FreiHAND does, so a degenerate set (all points equal) does not divide by zero.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    mu_gt, mu_pred = gt.mean(0), pred.mean(0)
    a, b = gt - mu_gt, pred - mu_pred
    norm_a = np.linalg.norm(a) + 1e-8
    norm_b = np.linalg.norm(b) + 1e-8
    a, b = a / norm_a, b / norm_b
    # R minimises ||a R - b||: R = U V^T from the SVD of a^T b; b R^T then best matches a.
    u, sv, vt = np.linalg.svd(a.T @ b)
    return Similarity(R=u @ vt, scale=float(sv.sum()) * norm_a / norm_b, t_src=mu_pred, t_dst=mu_gt)


def align_by(sim: Similarity, points: np.ndarray) -> np.ndarray:
    """Move (P, 3) ``points`` (vertices) with the keypoints' transform ``sim``, as FreiHAND's
    ``align_by_trafo`` does: rotate and scale about their own centroid, then shift by the
    keypoints' centroid offset. One deliberate difference: FreiHAND's version scales by
    ``s * |gt|`` without dividing by the prediction's keypoint norm, which changes the size of
    the vertices by that norm (about 4x for a hand in metres); here the full scale of ``sim``
    is used, so aligned vertices keep the keypoints' scale."""
    points = np.asarray(points, dtype=np.float64)
    centred = points - points.mean(0)
    return sim.scale * centred @ sim.R.T + sim.t_dst + (points.mean(0) - sim.t_src)


def nearest_distances(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each of the (P, 3) ``src`` points, the distance to the nearest of the (Q, 3) ``dst``
    points; (P,) float64 (scipy's KD-tree)."""
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(dst, dtype=np.float64)).query(np.asarray(src, dtype=np.float64))[0]


def f_score(gt: np.ndarray, pred: np.ndarray, threshold: float) -> float:
    """FreiHAND F-score of one sample at ``threshold`` metres (see the module docstring).

    Args: gt (P, 3), pred (Q, 3) point sets in metres (counts may differ).
    Returns: F in 0..1.
    """
    precision = float((nearest_distances(gt, pred) < threshold).mean())
    recall = float((nearest_distances(pred, gt) < threshold).mean())
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def evaluate(pred_xyz, gt_xyz, pred_verts=None, gt_verts=None) -> dict:
    """FreiHAND metrics of a set of predictions.

    Args:
        pred_xyz, gt_xyz: (N, 21, 3) keypoints in metres, camera frame.
        pred_verts, gt_verts: optional (N, V, 3) / (N, V', 3) mesh vertices in metres; the mesh
            metrics need both.

    Returns: ``{"num_samples", "mpjpe_mm", "pa_mpjpe_mm"}``, plus with vertices
    ``"mpvpe_mm", "pa_mpvpe_mm"`` (None when V != V') and ``"f5", "f15", "pa_f5", "pa_f15"``.

    Raises: ValueError for mismatched or malformed arrays (naming which).
    """
    pred_xyz = _points("pred xyz", pred_xyz, NUM_JOINTS)
    gt_xyz = _points("gt xyz", gt_xyz, NUM_JOINTS)
    if len(pred_xyz) != len(gt_xyz):
        raise ValueError(f"pred has {len(pred_xyz)} samples, gt has {len(gt_xyz)}; give one "
                         "prediction per ground-truth sample, in the same order")
    sims = [procrustes(g, p) for g, p in zip(gt_xyz, pred_xyz)]
    aligned = np.stack([s.apply(p) for s, p in zip(sims, pred_xyz)])
    out = {
        "num_samples": len(gt_xyz),
        "mpjpe_mm": 1000.0 * float(np.linalg.norm(pred_xyz - gt_xyz, axis=-1).mean()),
        "pa_mpjpe_mm": 1000.0 * float(np.linalg.norm(aligned - gt_xyz, axis=-1).mean()),
    }
    if pred_verts is None or gt_verts is None:
        return out
    pred_verts = _points("pred verts", pred_verts, None)
    gt_verts = _points("gt verts", gt_verts, None)
    if len(pred_verts) != len(gt_xyz) or len(gt_verts) != len(gt_xyz):
        raise ValueError(f"verts: pred has {len(pred_verts)} samples and gt {len(gt_verts)}, but "
                         f"there are {len(gt_xyz)} keypoint samples; give verts for every sample")
    same_topology = pred_verts.shape[1] == gt_verts.shape[1]
    if same_topology:
        verts_aligned = np.stack([procrustes(g, p).apply(p) for g, p in zip(gt_verts, pred_verts)])
        out["mpvpe_mm"] = 1000.0 * float(np.linalg.norm(pred_verts - gt_verts, axis=-1).mean())
        out["pa_mpvpe_mm"] = 1000.0 * float(np.linalg.norm(verts_aligned - gt_verts, axis=-1).mean())
    else:
        log.info("pred has %d vertices per sample, gt %d: no MPVPE; vertices aligned by the "
                 "keypoints' transform for the F-scores", pred_verts.shape[1], gt_verts.shape[1])
        verts_aligned = np.stack([align_by(s, p) for s, p in zip(sims, pred_verts)])
        out["mpvpe_mm"] = out["pa_mpvpe_mm"] = None
    for t in F_THRESHOLDS:
        name = f"f{round(t * 1000)}"
        out[name] = float(np.mean([f_score(g, p, t) for g, p in zip(gt_verts, pred_verts)]))
        out["pa_" + name] = float(np.mean([f_score(g, p, t) for g, p in zip(gt_verts, verts_aligned)]))
    return out


def _points(name: str, value, count: int | None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not a regular N x {count or 'V'} x 3 array of numbers (ragged "
                         "lists or non-numbers)") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or (count is not None and arr.shape[1] != count) or not len(arr):
        raise ValueError(f"{name}: expected shape (N, {count or 'V'}, 3) with N >= 1, got {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: no points per sample")
    if not np.isfinite(arr).all():
        sample = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"{name}: NaN or infinite value in sample {sample}")
    return arr


def load_points_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read keypoints and optional vertices from a JSON file (formats in the module docstring).

    Returns: ``(xyz (N, 21, 3), verts (N, V, 3) or None)`` float64, metres.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (with line and column) or not one of the accepted layouts.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"xyz", "verts"}
        if "xyz" not in data or unknown:
            raise ValueError(f"{path}: an object needs the key 'xyz' (and optionally 'verts'), got keys "
                             f"{sorted(data)}")
        xyz, verts = data["xyz"], data.get("verts")
    elif isinstance(data, list) and len(data) == 2 and _depth(data) == 4:
        xyz, verts = data  # FreiHAND pred.json: [xyz_list, verts_list]
    elif isinstance(data, list) and _depth(data) == 3:
        xyz, verts = data, None
    else:
        raise ValueError(f"{path}: expected {{\"xyz\": N x 21 x 3, \"verts\": N x V x 3}}, "
                         "[xyz_list, verts_list] or a list of N x 21 x 3 keypoints")
    xyz = _points(f"{path}: xyz", xyz, NUM_JOINTS)
    return xyz, None if verts is None else _points(f"{path}: verts", verts, None)


def _depth(value) -> int:
    """Nesting depth of lists along the first elements (a number has depth 0)."""
    depth = 0
    while isinstance(value, list):
        if not value:
            return depth + 1
        value, depth = value[0], depth + 1
    return depth
