"""``python -m sesahand render`` round trip and its bad-input behaviour."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sesahand.cli import main

REPO = Path(__file__).resolve().parents[1]
FILES = ("mesh.png", "depth.png", "normal.png", "pose.png", "mask.png", "depth.npy", "labels.json")


def test_render_round_trip(tmp_path, anny_model):
    out = tmp_path / "out"
    assert main(["render", "--pose", "random", "--seed", "4", "--num-hands", "2", "--size", "320x256",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["camera"]["width"] == 320 and labels["camera"]["height"] == 256
    assert labels["request"]["seed"] == 4 and labels["hand_model"] == "anny"
    assert [h["side"] for h in labels["hands"]] == ["right", "left"]
    mask = np.asarray(Image.open(out / "mask.png"))
    depth = np.load(out / "depth.npy")
    assert mask.shape == depth.shape == (256, 320)
    assert ((depth > 0) == (mask > 0)).all()
    K = torch.tensor(labels["camera"]["K"])
    for hand in labels["hands"]:
        # the labels re-project: joints2d is K applied to joints3d, and hand parameters round-trip
        j3 = torch.tensor(hand["joints3d"])
        uv = (j3 @ K.T)[:, :2] / (j3 @ K.T)[:, 2:]
        assert torch.allclose(uv, torch.tensor(hand["joints2d"]), atol=1e-3)
        assert len(hand["hand_pose"]) == 45 and len(hand["visible"]) == 21
        x0, y0, x1, y1 = hand["box"]
        assert mask[int(y0):int(y1), int(x0):int(x1)].any()
    # the same request reproduces the same labels
    again = tmp_path / "again"
    main(["render", "--pose", "random", "--seed", "4", "--num-hands", "2", "--size", "320x256", "--out", str(again)])
    assert json.loads((again / "labels.json").read_text())["hands"] == labels["hands"]


@pytest.mark.parametrize("args,message", [
    (["--pose", "jazz_hands"], "not a preset"),
    (["--pose", "missing.json"], "cannot read"),
    (["--pose", "{\"frames\": 1}"], "pose JSON: frames: expected array"),
    (["--hand-model", "mano"], "mano_path"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, caplog, args, message, anny_model):
    out = tmp_path / "out"
    assert main(["render", *args, "--out", str(out)]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_size_must_be_a_multiple_of_8(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sesahand", "render", "--size", "500x512", "--out",
                           str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "not a multiple of 8" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_render_with_arms(tmp_path, anny_model):
    out = tmp_path / "arms"
    assert main(["render", "--pose", "open_palm", "--size", "256x256", "--arm", "arm",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + ("arm_mask.png",))
    labels = json.loads((out / "labels.json").read_text())
    assert labels["request"]["arm"] == "arm"
    arm = labels["hands"][0]["arm"]
    assert arm["kind"] == "arm" and len(arm["joints3d"]) == 3 and arm["visible"][0]
    arm_mask = np.asarray(Image.open(out / "arm_mask.png"))
    mask = np.asarray(Image.open(out / "mask.png"))
    assert arm_mask.any() and not (arm_mask & mask).any()
    depth = np.load(out / "depth.npy")
    assert ((depth > 0) == ((mask > 0) | (arm_mask > 0))).all()  # the arm is in the depth too
