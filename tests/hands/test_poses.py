"""Pose sources: presets, pose files (JSON, FreiHAND), the random sampler and box placement."""

import json

import jsonschema
import pytest
import torch

from sesahand.hands import PRESET_NAMES, PoseSpec
from sesahand.hands.poses import load_presets, pose_schema, place_hand, preset_hand_pose
from sesahand.camera import Camera
from sesahand.hands.types import HandParams

REQUIRED = {"open_palm", "fist", "point", "pinch", "ok", "peace", "thumbs_up", "claw",
            "cylinder_grasp", "sphere_grasp", "flat_grasp", "relaxed"}


def box_of(mesh, camera):
    uv = camera.project(mesh.vertices)
    lo, hi = uv.min(0).values, uv.max(0).values
    return (lo + hi) / 2, (hi - lo).max()


def test_presets_cover_the_named_set_and_differ():
    assert REQUIRED <= set(PRESET_NAMES) and len(PRESET_NAMES) >= 12
    poses = torch.stack([preset_hand_pose(n) for n in PRESET_NAMES])
    assert torch.isfinite(poses).all()
    assert torch.cdist(poses, poses).fill_diagonal_(1.0).min() > 0.05, "no two presets coincide"


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of.*fist"):
        PoseSpec.preset("jazz_hands")


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(pose_schema())


def test_place_hand_hits_the_requested_box(anny_model):
    cam = Camera.default(640, 480)
    p = HandParams.create(hand_pose=preset_hand_pose("fist"), global_orient=torch.tensor([0.3, 2.0, 0.1]))
    placed = place_hand(anny_model, p, cam, (200.0, 300.0), 150.0)
    centre, size = box_of(anny_model([placed])[0], cam)
    assert torch.allclose(centre, torch.tensor([200.0, 300.0]), atol=1.0)
    assert size.item() == pytest.approx(150.0, abs=1.0)


def test_preset_scene_is_centred_palm_to_camera(anny_model):
    cam = Camera.default(512, 512)
    scene, = PoseSpec.preset("open_palm").resolve(anny_model, cam)
    mesh = anny_model(scene.hands)[0]
    centre, size = box_of(mesh, cam)
    assert torch.allclose(centre, torch.tensor([256.0, 256.0]), atol=1.0)
    j = mesh.joints
    assert j[12, 1] < j[0, 1] - 0.1, "fingers point up (-y) in the image"
    assert j[4, 0] > j[20, 0], "right hand seen palm-on: thumb to the image right of the little finger"
    palm_normal = torch.linalg.cross(j[5] - j[0], j[17] - j[0])  # index x little, right hand: palm side
    assert palm_normal[2] < 0, "palm faces the camera"


def test_left_preset_is_mirrored(anny_model):
    cam = Camera.default(512, 512)
    r = anny_model(PoseSpec.preset("point", "right").resolve(anny_model, cam)[0].hands)[0]
    l = anny_model(PoseSpec.preset("point", "left").resolve(anny_model, cam)[0].hands)[0]
    assert l.side == "left"
    assert torch.allclose(l.joints * torch.tensor([-1.0, 1.0, 1.0]), r.joints, atol=1e-4)


def test_random_is_seeded_and_frame_stable(anny_model):
    cam = Camera.default(512, 512)
    a = PoseSpec.random(7, num_hands=2).resolve(anny_model, cam, 3)
    b = PoseSpec.random(7, num_hands=2).resolve(anny_model, cam, 5)
    c = PoseSpec.random(8, num_hands=2).resolve(anny_model, cam, 1)
    for x, y in zip(a, b[:3]):
        for hx, hy in zip(x.hands, y.hands):
            assert torch.equal(hx.hand_pose, hy.hand_pose) and torch.equal(hx.transl, hy.transl)
    assert not torch.equal(a[0].hands[0].hand_pose, c[0].hands[0].hand_pose)
    assert not torch.equal(a[0].hands[0].hand_pose, a[1].hands[0].hand_pose)
    assert [h.side for h in a[0].hands] == ["right", "left"]


def test_random_boxes_respect_size_and_halves(anny_model):
    cam = Camera.default(512, 512)
    for scene in PoseSpec.random(3, num_hands=2, box_px=(120, 180)).resolve(anny_model, cam, 4):
        right, left = anny_model(scene.hands)
        (cr, sr), (cl, sl) = box_of(right, cam), box_of(left, cam)
        assert 119 <= sr <= 181 and 119 <= sl <= 181
        assert cr[0] < 256 < cl[0], "right hand in the left half, left hand in the right half"


def test_random_articulation_stays_within_limits():
    from sesahand.hands.anatomy import LIMITS, sample_angles

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        a = sample_angles(g)
        for finger in ("index", "middle", "ring", "little"):
            f = getattr(a, finger)
            for key in ("mcp", "pip", "dip", "spread"):
                lo, hi = LIMITS[key]
                assert lo <= getattr(f, key) <= hi


def test_json_frames_cameras_and_boxes(anny_model):
    doc = {"version": 1, "frames": [
        {"camera": {"K": [[500, 0, 160], [0, 500, 120], [0, 0, 1]], "width": 320, "height": 240},
         "hands": [{"side": "right", "preset": "fist", "box": {"center": [100, 120], "size": 90}},
                   {"side": "left", "hand_pose": [0.1] * 45, "transl": [0.1, 0.0, 0.5], "betas": [0] * 10}]},
        {"camera": {"K": [[500, 0, 160], [0, 500, 120], [0, 0, 1]], "width": 320, "height": 240}, "hands": []},
    ]}
    spec = PoseSpec.from_json(json.dumps(doc))
    scenes = spec.resolve(anny_model, Camera.default(512, 512))
    assert len(scenes) == 2 and scenes[0].camera.width == 320 and scenes[1].hands == []
    centre, size = box_of(anny_model(scenes[0].hands[:1])[0], scenes[0].camera)
    assert torch.allclose(centre, torch.tensor([100.0, 120.0]), atol=1.0)
    assert torch.equal(scenes[0].hands[1].transl, torch.tensor([0.1, 0.0, 0.5]))


@pytest.mark.parametrize("text,match", [
    ('{"frames": [', "malformed at line 1"),
    ('{"frames": []}', "frames"),
    ('{"frames": [{"hands": [{"side": "up"}]}]}', "frames/0/hands/0/side"),
    ('{"frames": [{"hands": [{"side": "right", "hand_pose": [0, 1]}]}]}', "hand_pose"),
    ('{"frames": [{"hands": [{"side": "right", "transl": [0, 0, 1], "box": {"center": [1, 1], "size": 5}}]}]}',
     "frames/0/hands/0"),
    ('{"frames": [{"camera": {"K": [[1,0,0],[0,1,0],[0,0,1]], "width": 500, "height": 512}, "hands": []}]}',
     "width"),
    ('{"frames": [{"hands": [{"side": "right", "preset": "jazz"}]}]}', "unknown preset"),
    ('{"frames": [{"hands": [{"side": "right", "hand_pose": [1e999]}]}]}', "hand_pose"),
])
def test_malformed_pose_json_names_the_field(text, match):
    with pytest.raises(ValueError, match=match):
        PoseSpec.from_json(text)


def test_missing_pose_file_is_explained(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        PoseSpec.from_json(str(tmp_path / "nope.json"))


def test_freihand_and_pca_need_mano(anny_model):
    spec = PoseSpec.from_freihand([[[0.0] * 61]], [[[500, 0, 112], [0, 500, 112], [0, 0, 1]]])
    with pytest.raises(ValueError, match="needs the MANO hand model"):
        spec.resolve(anny_model, Camera.default(224, 224))
    with pytest.raises(ValueError, match="one K per sample"):
        PoseSpec.from_freihand([[0.0] * 61] * 2, [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]])


def test_presets_respect_anatomical_limits():
    assert len(load_presets()) == len(PRESET_NAMES)  # parsing validates every angle against LIMITS
