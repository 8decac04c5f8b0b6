"""FreiHAND-style export: files, skipped samples, and the MANO vector round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sesahand.cli import main
from sesahand.data import DatasetWriter, export_freihand
from sesahand.hands import PoseSpec



@pytest.fixture
def mixed_dataset(tmp_path, hands_factory, image_factory):
    """Samples: right, left, right + left, right (not visible), right."""
    hands = hands_factory((("right",), ("left",), ("right", "left"), ("right",), ("right",)), seed=3)
    hidden = hands_factory((("right",),), hidden=0)
    root = tmp_path / "ds"
    with DatasetWriter(root) as writer:
        for i in range(5):
            writer.append(image_factory(i), (hidden if i == 3 else hands).frame_dict(0 if i == 3 else i))
    return root, hands


def test_export_writes_one_right_hand_per_sample(mixed_dataset, tmp_path, capsys, frame_size):
    root, hands = mixed_dataset
    out = tmp_path / "frei"
    assert main(["dataset", "freihand", str(root), str(out)]) == 0
    assert "exported 2 sample(s)" in capsys.readouterr().out
    xyz = json.loads((out / "training_xyz.json").read_text())
    K = json.loads((out / "training_K.json").read_text())
    assert json.loads((out / "sesahand_index.json").read_text()) == [0, 4]
    assert np.array(xyz).shape == (2, 21, 3) and np.array(K).shape == (2, 3, 3)
    for n, index in enumerate((0, 4)):
        assert np.allclose(xyz[n], hands.labels[index][0].joints3d.numpy())
        assert np.allclose(K[n], hands.scenes[index].camera.K.numpy())
        with Image.open(out / "training" / "rgb" / f"{n:08d}.jpg") as picture:
            assert (picture.format, picture.size) == ("JPEG", frame_size)
    assert not (out / "training_mano.json").exists()
    report = export_freihand(root, tmp_path / "frei2")
    assert report.skipped == {"left hand": 1, "more than one hand": 1, "hand not visible": 1}
    with pytest.raises(ValueError, match="not empty"):
        export_freihand(root, out)


def test_mano_vectors_invert_from_freihand(mixed_dataset, tmp_path, mano_pair, frame_size):
    pytest.importorskip("smplx")
    from sesahand.hands import load_hand_model

    mano_pair(tmp_path)
    root, hands = mixed_dataset
    report = export_freihand(root, tmp_path / "frei", mano_path=tmp_path)
    assert report.mano_written and report.written == 2
    mano = json.loads((tmp_path / "frei" / "training_mano.json").read_text())
    K = json.loads((tmp_path / "frei" / "training_K.json").read_text())
    assert np.array(mano).shape == (2, 1, 61)
    model = load_hand_model("mano", mano_path=tmp_path)
    assert model.hands_mean("right").abs().sum() > 0  # the mean is really subtracted
    spec = PoseSpec.from_freihand(mano, K, size=frame_size[0])
    scenes = spec.resolve(model, hands.scenes[0].camera)
    for scene, index in zip(scenes, (0, 4)):
        original = hands.scenes[index].hands[0]
        (params,) = scene.hands
        for name in ("global_orient", "hand_pose", "betas", "transl"):
            assert torch.allclose(getattr(params, name), getattr(original, name), atol=1e-5), name
