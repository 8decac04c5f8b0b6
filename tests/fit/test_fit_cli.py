"""``python -m sesahand fit`` on real photos: per-photo folders, labels as ``render`` writes
them, resume, failures reported per photo; and the MANO path with synthetic MANO files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sesahand.cli import main


@pytest.fixture()
def photo_dir(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("two_hands_thumb_down.jpg", "no_hand.jpg", "raised_hand_cut.jpg"):
        shutil.copy(photos / name, folder / name)
    return folder


def test_fit_command_writes_resumes_and_reports(photo_dir, tmp_path, task_file, capsys, photos):
    out = tmp_path / "out"
    (photo_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["fit", str(photo_dir), "--out", str(out), "--task", task_file]) == 1  # broken.png failed
    table = capsys.readouterr().out
    assert "broken.png: " in table and "corrupt" in table
    assert "hands found 3, hands kept 2" in table
    assert not (out / "broken").exists() and not list(out.glob(".*partial"))

    folder = out / "two_hands_thumb_down"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["photo.png", "pose.json", "labels.json", "mesh.png", "depth.png", "normal.png", "pose.png", "mask.png",
         "overlay.png"])
    labels = json.loads((folder / "labels.json").read_text())
    w, h = Image.open(photos / "two_hands_thumb_down.jpg").size
    assert (labels["camera"]["width"], labels["camera"]["height"]) == (w, h)
    assert Image.open(folder / "mesh.png").size == (w, h) and Image.open(folder / "overlay.png").size == (w, h)
    assert sorted(hand["side"] for hand in labels["hands"]) == ["left", "right"]
    for hand in labels["hands"]:
        assert len(hand["hand_pose"]) == 45 and len(hand["joints2d"]) == 21 and len(hand["joints3d"]) == 21
        fitted = next(f for f in labels["fit"] if f["side"] == hand["side"])
        assert np.abs(np.array(hand["joints2d"]) - np.array(fitted["joints2d"])).max() < 0.05
    cut = json.loads((out / "raised_hand_cut" / "labels.json").read_text())
    assert cut["hands"] == [] and cut["fit"][0]["kept"] is False
    assert json.loads((out / "no_hand" / "labels.json").read_text())["fit"] == []
    assert json.loads((out / "no_hand" / "pose.json").read_text())["frames"][0]["hands"] == []

    before = (folder / "labels.json").stat().st_mtime_ns
    (photo_dir / "broken.png").unlink()
    assert main(["fit", str(photo_dir), "--out", str(out), "--task", task_file]) == 0
    assert "resumed" in capsys.readouterr().out
    assert (folder / "labels.json").stat().st_mtime_ns == before


def test_fit_command_at_a_given_size(photo_dir, tmp_path, task_file):
    out = tmp_path / "sized"
    assert main(["fit", str(photo_dir), "--out", str(out), "--size", "256x192", "--framing", "letterbox",
                 "--task", task_file]) == 0
    labels = json.loads((out / "two_hands_thumb_down" / "labels.json").read_text())
    assert (labels["camera"]["width"], labels["camera"]["height"]) == (256, 192)
    assert labels["photo"]["framing"]["mode"] == "letterbox"
    assert Image.open(out / "two_hands_thumb_down" / "photo.png").size == (256, 192)
    from sesahand.hands import PoseSpec

    spec = PoseSpec.from_json(out / "two_hands_thumb_down" / "pose.json")
    assert spec.frames[0][0].width == 256


def test_fit_with_mano(tmp_path, task_file, mano_pair, photos):
    """The MANO path end to end with synthetic MANO files (a blob, not a hand: only that it runs,
    fits betas, both sides, and that the pose file renders with MANO)."""
    pytest.importorskip("smplx")
    from sesahand.eval import HandKeypointDetector
    from sesahand.fit import fit_hands, load_photo
    from sesahand.fit.output import pose_document, pose_frame, pose_spec, render_fit
    from sesahand.fit import Framing, photo_intrinsics
    from sesahand.hands import load_hand_model

    mano = load_hand_model("mano", mano_path=mano_pair(tmp_path / "mano"))
    photo = load_photo(photos / "two_hands_thumb_down.jpg")
    with HandKeypointDetector(task_file, num_hands=4) as detector:
        fits = fit_hands(photo.pixels, mano, detector)
    assert sorted(f.side for f in fits) == ["left", "right"]
    assert all(f.model == "mano" and np.isfinite(f.mean_error) for f in fits)
    assert any(float(f.params.betas.abs().max()) > 0 for f in fits)
    K = photo_intrinsics(photo.width, photo.height)
    framing = Framing.make((photo.width, photo.height), (256, 256), "crop")
    cond, rendered, labels = render_fit(mano, fits, K, framing, include_rejected=True)
    assert labels["hand_model"] == "mano" and len(labels["hands"]) == 2
    spec = pose_spec(pose_document([pose_frame([f for f in fits], K, framing)]))
    assert len(spec.frames) == 1
