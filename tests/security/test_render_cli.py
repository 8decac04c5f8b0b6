"""``python -m sesahand render``: exit 2 with a message for every bad request, all-or-nothing
output, and every frame of a pose file rendered."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sesahand import cli
from sesahand.cli import RENDER_FILES, main


def exit_status(args, capsys) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, what it said on stderr and in the log)."""
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's refusals
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--size", "100000x100000"], "width 100000 is outside 8..4096"),
    (["--size", "40000x8"], "width 40000 is outside 8..4096"),
    (["--size", "512x40000"], "height 40000 is outside 8..4096"),
    (["--fov", "0"], "--fov '0': 0.0 is not a field of view between 5 and 120"),
    (["--fov", "nan"], "--fov 'nan'"),
    (["--fov", "x"], "--fov 'x': expected a number of degrees"),
])
def test_bad_sizes_and_fov_exit_2_naming_the_option(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    status, err = exit_status(["render", *args, "--out", str(out)], capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_a_huge_camera_in_a_pose_file_exits_2(tmp_path, caplog):
    pose = tmp_path / "big.json"
    pose.write_text(json.dumps({"frames": [{"camera": {"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                                       "width": 100000, "height": 100000}, "hands": []}]}))
    assert main(["render", "--pose", str(pose), "--out", str(tmp_path / "o")]) == 2
    assert "frames/0/camera/width: expected a number at most 4096" in caplog.text
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_or_unwritable_exits_2(tmp_path, caplog):
    existing = tmp_path / "afile"
    existing.write_text("keep me")
    assert main(["render", "--size", "64x64", "--out", str(existing)]) == 2
    assert "exists and is not a folder" in caplog.text and existing.read_text() == "keep me"

    if os.geteuid() != 0:
        parent = tmp_path / "readonly"
        parent.mkdir()
        parent.chmod(0o555)
        target = parent / "out"
    else:  # root writes anywhere it may; /proc refuses new folders even to root
        target = Path("/proc/sesahand-render-test")
    try:
        assert main(["render", "--size", "64x64", "--out", str(target)]) == 2
    finally:
        if os.geteuid() != 0:
            parent.chmod(0o755)
    assert f"--out {target}: cannot write in {target.parent}" in caplog.text
    assert not target.exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    assert main(["render", "--size", "64x64", "--out", str(foreign)]) == 2
    assert "holds other files (thesis.tex)" in caplog.text
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_a_failure_while_writing_leaves_nothing(tmp_path, caplog, monkeypatch, anny_model):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)  # depth.npy is written after the PNG maps
    out = tmp_path / "out"
    assert main(["render", "--size", "64x64", "--out", str(out)]) == 2
    assert "No space left on device" in caplog.text
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no maps, no temporary folder


def test_a_render_replaces_an_earlier_one_whole(tmp_path, anny_model):
    out = tmp_path / "out"
    assert main(["render", "--pose", "fist", "--size", "64x64", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(RENDER_FILES)
    assert main(["render", "--pose", "open_palm", "--size", "64x64", "--out", str(out)]) == 0
    assert json.loads((out / "labels.json").read_text())["request"]["pose"] == "open_palm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_every_frame_of_a_pose_file_is_rendered(tmp_path, anny_model):
    K = [[60, 0, 32], [0, 60, 32], [0, 0, 1]]
    presets = ["fist", "open_palm", "point"]
    frames = [{"camera": {"K": K, "width": 64, "height": 64},
               "hands": [{"side": "right", "preset": p, "box": {"center": [32, 32], "size": 40}}]}
              for p in presets]
    pose = tmp_path / "three.json"
    pose.write_text(json.dumps({"frames": frames}))
    out = tmp_path / "out"
    assert main(["render", "--pose", str(pose), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000", "frame_00001", "frame_00002"]
    poses = []
    for i in range(3):
        folder = out / f"frame_{i:05d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(RENDER_FILES)
        labels = json.loads((folder / "labels.json").read_text())
        assert labels["request"]["frame"] == i
        poses.append(labels["hands"][0]["hand_pose"])
    assert poses[0] != poses[1] != poses[2]  # each frame is its own, not frame 0 repeated


def test_running_out_of_memory_exits_2(monkeypatch, tmp_path, caplog):
    def out_of_memory(args):
        raise MemoryError

    monkeypatch.setattr(cli, "cmd_render", out_of_memory)
    assert main(["render", "--out", str(tmp_path / "o")]) == 2
    assert "out of memory" in caplog.text
