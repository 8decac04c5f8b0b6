import pytest
import torch

from sesahand.hands import PoseSpec
from sesahand.camera import Camera
from sesahand.pipeline import render_scenes


def test_batch_render_reports_progress_per_frame_and_keeps_order(anny_model):
    cam = Camera.default(128, 128)
    scenes = PoseSpec.random(1, num_hands=2).resolve(anny_model, cam, 3)
    calls = []
    cond, hands = render_scenes(anny_model, scenes, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert cond.mesh.shape == (3, 128, 128, 3) and len(cond.masks) == 3 and cond.masks[0].shape[0] == 2
    single, _ = render_scenes(anny_model, scenes[2:])
    assert torch.equal(cond.mask[2], single.mask[0]), "frame 2 of the batch is frame 2 alone"
    record = hands.frame_dict(1)
    assert record["hand_model"] == "anny" and len(record["hands"]) == 2
    assert record["hands"][0]["hand_pose"] == scenes[1].hands[0].hand_pose.tolist()


def test_scenes_of_different_sizes_are_refused(anny_model):
    a = PoseSpec.preset("fist").resolve(anny_model, Camera.default(128, 128))
    b = PoseSpec.preset("fist").resolve(anny_model, Camera.default(256, 128))
    with pytest.raises(ValueError, match="different image sizes"):
        render_scenes(anny_model, a + b)


def test_open_hand_joints_project_inside_its_mask(anny_model):
    from sesahand.hands import PRESET_NAMES

    cam = Camera.default(256, 256)
    scenes = [PoseSpec.preset(name).resolve(anny_model, cam)[0] for name in PRESET_NAMES]
    cond, hands = render_scenes(anny_model, scenes)
    for b, (labels,) in enumerate(hands.labels):
        uv = labels.joints2d.floor().long()
        # fingertips are surface vertices, on the silhouette's edge: allow one pixel
        grown = torch.nn.functional.max_pool2d(cond.masks[b][:1].float()[None], 3, 1, 1)[0, 0]
        inside = grown[uv[:, 1], uv[:, 0]] > 0
        assert inside.all(), (PRESET_NAMES[b], torch.nonzero(~inside).flatten().tolist())
        if PRESET_NAMES[b] in ("open_palm", "spread"):
            assert labels.visible.all(), "an open hand seen palm-on shows all 21 joints"
