"""FreiHAND metrics against hand-computed cases, and the metrics CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sesahand.cli import main
from sesahand.eval.metrics import evaluate, f_score, load_points_file, procrustes

RNG = np.random.default_rng(7)


def hands(n=3, points=21) -> np.ndarray:
    """n random point sets about 5 cm across, 0.5 m in front of the camera (metres)."""
    return RNG.normal(scale=0.03, size=(n, points, 3)) + np.array([0.0, 0.0, 0.5])


def similar(points: np.ndarray, scale=1.3, shift=(0.02, -0.05, 0.1), seed=0) -> np.ndarray:
    R = Rotation.random(random_state=seed).as_matrix()
    return scale * points @ R.T + np.array(shift)


def test_a_known_offset_gives_that_error():
    gt = hands()
    pred = gt + np.array([0.003, 0.004, 0.0])  # 5 mm everywhere
    out = evaluate(pred, gt)
    assert out["mpjpe_mm"] == pytest.approx(5.0, abs=1e-9)
    assert out["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-5)  # a translation is aligned away


def test_a_similar_copy_has_zero_aligned_error_but_not_zero_error():
    gt = hands()
    pred = np.stack([similar(g, seed=i) for i, g in enumerate(gt)])
    verts = hands(points=50)
    pred_verts = np.stack([similar(v, seed=i) for i, v in enumerate(verts)])
    out = evaluate(pred, gt, pred_verts, verts)
    assert out["mpjpe_mm"] > 50 and out["mpvpe_mm"] > 50
    assert out["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["pa_mpvpe_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["pa_f5"] == out["pa_f15"] == 1.0
    assert out["f5"] == 0.0  # 10 cm away: no vertex within 5 mm


def test_procrustes_recovers_the_transform_and_allows_reflections_like_freihand():
    gt = hands(1)[0]
    sim = procrustes(gt, similar(gt, scale=0.5))
    assert sim.scale == pytest.approx(2.0, rel=1e-6)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    aligned = procrustes(gt, mirrored).apply(mirrored)
    assert np.abs(aligned - gt).max() < 1e-6  # FreiHAND's orthogonal Procrustes maps a mirror image too


def test_aligned_error_of_noise_is_hand_computable():
    # Two points symmetric about the centroid, prediction scaled: alignment removes the scale.
    gt = np.array([[[-0.01, 0, 0], [0.01, 0, 0]] + [[0, 0, 0]] * 19], dtype=np.float64)
    pred = gt * 3.0 + 0.2
    out = evaluate(pred, gt)
    assert out["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-4)
    # Unaligned: per point |2 p + 0.2 (1,1,1)|, averaged.
    expected = np.linalg.norm(2 * gt[0] + 0.2, axis=1).mean() * 1000
    assert out["mpjpe_mm"] == pytest.approx(expected, rel=1e-9)


def test_f_score_definition():
    gt = np.zeros((4, 3))
    gt[:, 0] = [0.0, 0.1, 0.2, 0.3]
    assert f_score(gt, gt, 0.005) == 1.0
    pred = gt.copy()
    pred[:2, 1] = 0.004  # two points 4 mm off, two 6 mm off
    pred[2:, 1] = 0.006
    # precision = recall = 2/4 -> F = 0.5 at 5 mm; all within 15 mm
    assert f_score(gt, pred, 0.005) == pytest.approx(0.5)
    assert f_score(gt, pred, 0.015) == 1.0
    # Precision and recall differ: one extra far prediction (recall 4/5), all gt matched.
    more = np.vstack([gt, [[5.0, 5.0, 5.0]]])
    assert f_score(gt, more, 0.005) == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert f_score(gt, gt + 1.0, 0.005) == 0.0
    # Distances exactly at the threshold do not count (strict <).
    assert f_score(gt, gt + np.array([0.0, 0.005, 0.0]), 0.005) == 0.0


def test_different_vertex_counts_use_the_keypoint_transform():
    gt, verts = hands(2), hands(2, points=30)
    pred, pred_verts = gt * 1.0, verts[:, :20] * 1.0  # a 20-vertex mesh, same place
    out = evaluate(pred, gt, pred_verts, verts)
    assert out["mpvpe_mm"] is None and out["pa_mpvpe_mm"] is None
    assert out["f15"] == out["pa_f15"]  # identity alignment keeps the vertices in place
    assert 0.0 < out["f5"] < 1.0  # the 20 of 30 gt vertices are matched, the others maybe not


def test_bad_arrays_are_refused_with_the_field_named():
    gt = hands(2)
    with pytest.raises(ValueError, match="pred has 1 samples, gt has 2"):
        evaluate(gt[:1], gt)
    with pytest.raises(ValueError, match=r"pred xyz: expected shape \(N, 21, 3\)"):
        evaluate(gt[:, :20], gt)
    bad = gt.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite value in sample 1"):
        evaluate(bad, gt)
    with pytest.raises(ValueError, match="verts"):
        evaluate(gt, gt, hands(1, 10), hands(2, 10))


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_file_layouts(tmp_path):
    xyz, verts = hands(2), hands(2, points=10)
    for data in ({"xyz": xyz.tolist(), "verts": verts.tolist()}, [xyz.tolist(), verts.tolist()]):
        got_xyz, got_verts = load_points_file(write(tmp_path / "a.json", data))
        assert np.allclose(got_xyz, xyz) and np.allclose(got_verts, verts)
    got_xyz, got_verts = load_points_file(write(tmp_path / "b.json", xyz.tolist()))
    assert np.allclose(got_xyz, xyz) and got_verts is None
    with pytest.raises(ValueError, match="line 1, column"):
        (tmp_path / "c.json").write_text('{"xyz": [')
        load_points_file(tmp_path / "c.json")
    with pytest.raises(ValueError, match="'xyz'"):
        load_points_file(write(tmp_path / "d.json", {"joints": []}))
    with pytest.raises(ValueError, match="expected"):
        load_points_file(write(tmp_path / "e.json", [1, 2, 3]))
    with pytest.raises(ValueError, match="ragged"):
        load_points_file(write(tmp_path / "f.json", {"xyz": [[[0, 0, 0]] * 21, [[0, 0]] * 21]}))


def test_metrics_cli(tmp_path, capsys):
    gt = hands(2)
    pred = gt + np.array([0.0, 0.0, 0.01])  # 10 mm
    code = main(["metrics", write(tmp_path / "p.json", {"xyz": pred.tolist()}),
                 write(tmp_path / "g.json", gt.tolist())])
    out = capsys.readouterr().out
    assert code == 0 and "MPJPE (mm)" in out and "10.000" in out and "MPVPE" not in out
    assert main(["metrics", str(tmp_path / "p.json"), str(tmp_path / "missing.json")]) == 2
    assert main(["metrics", write(tmp_path / "bad.json", {"xyz": [[1]]}), str(tmp_path / "g.json")]) == 2
