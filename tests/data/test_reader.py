"""HandDataset: tensors and JSON fields of each sample."""

from __future__ import annotations

import math

import pytest
import torch

from sesahand.data import HandDataset



def test_samples_carry_image_and_label_tensors(small_dataset, frame_size):
    root, hands, images = small_dataset
    dataset = HandDataset(root)
    assert len(dataset) == 3
    pair = dataset[2]
    assert pair["image"].shape == (3, frame_size[1], frame_size[0]) and pair["image"].dtype == torch.float32
    assert torch.allclose(pair["image"], torch.from_numpy(images[2]).permute(2, 0, 1) / 255.0)
    assert pair["K"].shape == (3, 3) and torch.equal(pair["K"], hands.scenes[2].camera.K)
    labels = hands.labels[2]
    assert torch.equal(pair["joints3d"], torch.stack([lab.joints3d for lab in labels]))
    assert torch.equal(pair["joints2d"], torch.stack([lab.joints2d for lab in labels]))
    assert pair["visible"].dtype == torch.bool
    assert torch.equal(pair["visible"], torch.stack([lab.visible for lab in labels]))
    assert torch.equal(pair["boxes"], torch.stack([lab.box for lab in labels]))
    params = hands.scenes[2].hands
    for name, size in (("global_orient", 3), ("hand_pose", 45), ("betas", 10), ("transl", 3)):
        assert pair[name].shape == (2, size)
        assert torch.equal(pair[name], torch.stack([getattr(p, name) for p in params]))
    assert pair["is_right"].tolist() == [True, False]
    assert dataset[0]["record"]["prompt"] == "a hand"


def test_hidden_hand_box_is_nan_and_transform_applies(tmp_path, hands_factory, image_factory, frame_size):
    from sesahand.data import DatasetWriter

    hands = hands_factory((("right", "left"),), hidden=1)
    with DatasetWriter(tmp_path) as writer:
        writer.append(image_factory(), hands.frame_dict(0))
    dataset = HandDataset(tmp_path, transform=lambda s: {**s, "image": s["image"][:, :8]})
    sample = dataset[0]
    assert sample["image"].shape == (3, 8, frame_size[0])
    assert not math.isnan(sample["boxes"][0, 0]) and torch.isnan(sample["boxes"][1]).all()


def test_corrupt_labels_name_their_line(small_dataset):
    root, _, _ = small_dataset
    with open(root / "labels.jsonl", "a") as f:
        f.write("garbage\n")
    with pytest.raises(ValueError, match="line 4"):
        HandDataset(root)
