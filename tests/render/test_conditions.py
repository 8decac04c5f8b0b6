"""Writing one frame's condition maps as PNGs."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from sesahand.render import save_conditions


@pytest.fixture
def two_frames(gl_renderer, camera64, ellipsoid):
    hands = [ellipsoid((-0.02, 0.0, 0.5)), ellipsoid((0.03, 0.0, 0.6), side="left")]
    return gl_renderer.render([[], hands], [camera64, camera64])


def test_save_conditions_writes_the_five_pngs(two_frames, tmp_path):
    paths = save_conditions(two_frames, 1, tmp_path / "frame1")
    umask = os.umask(0)
    os.umask(umask)
    assert set(paths) == {"mesh", "depth", "normal", "pose", "mask"}
    assert sorted(p.name for p in (tmp_path / "frame1").iterdir()) == [
        "depth.png", "mask.png", "mesh.png", "normal.png", "pose.png"]
    modes = {"mesh": "RGB", "normal": "RGB", "pose": "RGB", "depth": "L", "mask": "L"}
    for name, path in paths.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == modes[name] and im.size == (64, 64)
    mask = np.asarray(Image.open(paths["mask"]))
    expected = (two_frames.mask[1].numpy() * 255).astype(np.uint8)
    assert np.array_equal(mask, expected) and set(np.unique(mask)) == {0, 255}
    depth = np.asarray(Image.open(paths["depth"]))
    assert depth.max() == 255 and depth[mask == 0].max() == 0
    assert depth[mask > 0].min() == round(0.2 * 255)
    mesh = np.asarray(Image.open(paths["mesh"]))
    assert np.abs(mesh / 255.0 - two_frames.mesh[1].numpy()).max() <= 0.5 / 255 + 1e-6


def test_save_conditions_writes_nothing_when_a_file_fails(two_frames, tmp_path, monkeypatch):
    save_conditions(two_frames, 1, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = Image.Image.save
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_conditions(two_frames, 0, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_save_conditions_replaces_files_and_refuses_missing_frames(two_frames, tmp_path):
    save_conditions(two_frames, 1, tmp_path)
    save_conditions(two_frames, 0, tmp_path)
    assert not np.asarray(Image.open(tmp_path / "mask.png")).any()
    with pytest.raises(IndexError, match="frame 2"):
        save_conditions(two_frames, 2, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "depth.png", "mask.png", "mesh.png", "normal.png", "pose.png"]
