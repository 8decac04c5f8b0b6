"""Node ``execute`` / ``validate_inputs`` of the pack as loaded by a real ComfyUI (in-process, CPU).

Chain under test: Hand Model -> Hand Pose -> Render Conditions -> Export Mesh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui

NODE_IDS = ("SesaHandHandModel", "SesaHandHandPose", "SesaHandRenderConditions", "SesaHandExportMesh")
W, H = 128, 96  # not square, so a swapped width and height would show


def pose_inputs(**overrides) -> dict:
    inputs = {"mode": "preset", "preset": "fist", "seed": 0, "num_hands": 1, "box_min": 40,
              "box_max": 64, "pose_json": ""}
    inputs.update(overrides)
    return inputs


def render_inputs(**overrides) -> dict:
    inputs = {"width": W, "height": H, "fov": 40.0, "batch_size": 1, "backend": "auto"}
    inputs.update(overrides)
    return inputs


@pytest.fixture(scope="module")
def anny(comfyui):
    """The Hand Model node's output for the open hand, right side by default."""
    return comfyui.node("SesaHandHandModel").execute(model="anny (open)", mano_file="", side="right")[0]


@pytest.fixture(scope="module")
def rendered(comfyui, anny):
    """Render Conditions on two random hands, batch of 2; also records the progress bar."""
    import comfy.utils

    pose = comfyui.node("SesaHandHandPose").execute(**pose_inputs(mode="random", seed=3, num_hands=2))[0]
    calls = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        out = comfyui.node("SesaHandRenderConditions").execute(
            hand_model=anny, pose=pose, **render_inputs(batch_size=2))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return out, calls


def test_schemas_follow_the_pack_conventions(comfyui):
    for node_id in NODE_IDS:
        info = comfyui.node(node_id).GET_NODE_INFO_V1()
        assert info["category"].startswith("SesaHand/"), node_id
        assert info["display_name"].startswith("SesaHand "), node_id
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, (_, options) in inputs.items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_hand_model_is_loaded_once_and_carries_its_side(comfyui, anny):
    node = comfyui.node("SesaHandHandModel")
    left = node.execute(model="anny (open)", mano_file="", side="left")[0]
    assert anny.model.name == "anny" and anny.side == "right"
    assert left.side == "left"
    assert left.model is anny.model  # module-level cache, keyed by (model, path)


def test_hand_model_asks_for_mano_files(comfyui):
    node = comfyui.node("SesaHandHandModel")
    spec = node.GET_NODE_INFO_V1()["input"]["optional"]["mano_file"][1]
    assert spec["options"][0] == "none" and spec["default"] == "none"  # a choice, also with no file
    for nothing in ("", "none"):
        message = node.validate_inputs(model="mano", mano_file=nothing)
        assert isinstance(message, str) and "MANO_RIGHT.pkl" in message
        assert node.validate_inputs(model="anny (open)", mano_file=nothing) is True
    with pytest.raises(ValueError, match="MANO_RIGHT.pkl"):
        node.execute(model="mano", mano_file="none", side="right")
    assert isinstance(node.validate_inputs(model="mano", mano_file="nope.pkl"), str)
    assert node.validate_inputs(model="anny (open)", mano_file="") is True
    with pytest.raises(ValueError, match="MANO_RIGHT.pkl"):
        node.execute(model="mano", mano_file="", side="right")


def test_mano_files_in_the_model_folder_are_offered_and_loaded(comfyui, tmp_path, mano_pair):
    pytest.importorskip("smplx")
    mano_pair(comfyui.mano_dir)

    node = comfyui.node("SesaHandHandModel")
    options = node.GET_NODE_INFO_V1()["input"]["optional"]["mano_file"][1]["options"]
    assert {"MANO_RIGHT.pkl", "MANO_LEFT.pkl"} <= set(options)
    assert node.validate_inputs(model="mano", mano_file="MANO_RIGHT.pkl") is True
    mano = node.execute(model="mano", mano_file="MANO_RIGHT.pkl", side="left")[0]
    assert mano.model.name == "mano"

    pose = comfyui.node("SesaHandHandPose").execute(**pose_inputs())[0]
    out = comfyui.node("SesaHandRenderConditions").execute(hand_model=mano, pose=pose, **render_inputs())
    hands = out[5]
    assert [m.side for m in hands.meshes[0]] == ["left"]  # the model's side, from MANO_LEFT
    assert hands.meshes[0][0].vertices.shape == (778, 3)
    assert out[4].sum() > 0


def test_hand_pose_modes(comfyui):
    node = comfyui.node("SesaHandHandPose")
    preset = node.execute(**pose_inputs(preset="point"))[0]
    assert (preset.kind, preset.preset_name) == ("preset", "point")
    random = node.execute(**pose_inputs(mode="random", seed=11, num_hands=2, box_min=30, box_max=50))[0]
    assert (random.kind, random.seed, random.num_hands, random.box_px) == ("random", 11, 2, (30.0, 50.0))
    text = json.dumps({"frames": [{"hands": [{"side": "left", "preset": "ok"}]},
                                  {"hands": [{"side": "right", "preset": "fist"}]}]})
    assert node.validate_inputs(mode="json", pose_json=text) is True
    from_text = node.execute(**pose_inputs(mode="json", pose_json=text))[0]
    assert from_text.kind == "json" and len(from_text.frames) == 2


def test_hand_pose_json_file_in_the_input_folder(comfyui, anny):
    node = comfyui.node("SesaHandHandPose")
    pose_file = Path(comfyui.folder_paths.get_input_directory()) / "poses" / "two.json"
    pose_file.parent.mkdir(exist_ok=True)
    pose_file.write_text(json.dumps({"frames": [{"hands": [
        {"side": "right", "preset": "fist", "box": {"center": [40, 48], "size": 40}},
        {"side": "left", "preset": "open_palm", "box": {"center": [88, 48], "size": 40}}]}]}))
    inputs = pose_inputs(mode="json", pose_json="poses/two.json")
    assert node.validate_inputs(mode="json", pose_json="poses/two.json") is True
    spec = node.execute(**inputs)[0]
    # Pose files name their sides: the model's default side does not change them.
    scenes = anny.resolve(spec, comfyui.pack_module.sesahand.hands.types.Camera.default(W, H), 1)
    assert [h.side for h in scenes[0].hands] == ["right", "left"]

    before = node.fingerprint_inputs(**inputs)
    os.utime(pose_file, (1_000_000_000, 1_000_000_000))
    assert node.fingerprint_inputs(**inputs) != before  # an edited file re-runs the node


@pytest.mark.parametrize("text,expected", [
    ('{"frames": [', "line 1"),
    ('{"frames": [{"hands": [{"side": "middle"}]}]}', "frames/0/hands/0/side"),
    ("no/such/pose.json", "no such file in"),
    ("../../outside.json", "is not a file inside the allowed folders"),
])
def test_hand_pose_rejects_bad_json_before_running(comfyui, text, expected):
    node = comfyui.node("SesaHandHandPose")
    message = node.validate_inputs(mode="json", pose_json=text)
    assert isinstance(message, str) and expected in message
    with pytest.raises(ValueError, match=expected.split("/")[0]):
        node.execute(**pose_inputs(mode="json", pose_json=text))


def test_hand_pose_rejects_inverted_box_sizes(comfyui):
    node = comfyui.node("SesaHandHandPose")
    assert "box_min" in node.validate_inputs(mode="random", box_min=300, box_max=100)
    assert node.validate_inputs(mode="preset", box_min=300, box_max=100) is True  # unused there


def test_render_conditions_outputs(rendered):
    out, _ = rendered
    mesh, depth, normal, pose, mask, hands, arm_mask = out.args
    assert arm_mask.shape == (2, H, W) and not arm_mask.any()  # arm "none"
    for image in (mesh, depth, normal, pose):
        assert image.shape == (2, H, W, 3) and image.dtype == torch.float32
        assert image.device.type == "cpu" and 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (2, H, W) and mask.dtype == torch.float32
    covered = mask > 0
    assert covered.flatten(1).any(1).all(), "a frame has an empty hand mask"
    assert torch.equal(depth[..., 0], depth[..., 1]) and torch.equal(depth[..., 0], depth[..., 2])
    assert torch.equal(depth[..., 0] > 0, covered)  # hand depth exactly on the hand pixels
    assert not (mesh.amax(-1) > 0)[~covered].any()  # no shaded pixel outside the mask
    assert pose.amax(-1).flatten(1).amax(1).min() > 0  # keypoints drawn in every frame


def test_render_conditions_hands_carry_meshes_cameras_labels(rendered):
    out, calls = rendered
    hands = out[5]
    assert len(hands.scenes) == len(hands.meshes) == len(hands.labels) == 2
    for scene, meshes in zip(hands.scenes, hands.meshes):
        assert (scene.camera.width, scene.camera.height) == (W, H)
        assert sorted(m.side for m in meshes) == ["left", "right"]
    assert hands.frame_dict(0)["hand_model"] == "anny"
    json.dumps(hands.frame_dict(1))
    # different random hands per frame of the batch
    assert not torch.equal(hands.meshes[0][0].vertices, hands.meshes[1][0].vertices)
    assert calls and calls[-1] == (2, 2), calls


def test_render_conditions_uses_the_model_side_for_presets(comfyui, anny):
    left = comfyui.node("SesaHandHandModel").execute(model="anny (open)", mano_file="", side="left")[0]
    pose = comfyui.node("SesaHandHandPose").execute(**pose_inputs())[0]
    render = comfyui.node("SesaHandRenderConditions")
    sides = [render.execute(hand_model=m, pose=pose, **render_inputs())[5].meshes[0][0].side
             for m in (anny, left)]
    assert sides == ["right", "left"]


@pytest.mark.parametrize("inputs,expected", [
    ({"width": 100, "height": 96}, "multiple of 8"),
    ({"width": 128, "height": 8}, "height"),
    ({"width": 128, "height": 96, "batch_size": 0}, "batch_size"),
])
def test_render_conditions_validation(comfyui, inputs, expected):
    message = comfyui.node("SesaHandRenderConditions").validate_inputs(**inputs)
    assert isinstance(message, str) and expected in message


def test_render_conditions_validation_accepts_good_and_linked_values(comfyui):
    node = comfyui.node("SesaHandRenderConditions")
    assert node.validate_inputs(width=512, height=768, batch_size=4, fov=40.0) is True
    assert node.validate_inputs(width=None, height=None) is True  # linked: checked at run time


def test_export_mesh_writes_glb_for_preview3d(comfyui, rendered):
    import trimesh

    hands = rendered[0][5]
    node = comfyui.node("SesaHandExportMesh")
    out = node.execute(hands=hands, filename_prefix="sesahand/test")
    model_file = out[0]
    assert model_file == "sesahand/test_00001_.glb"
    saved = out.ui["3d"]
    assert [s["filename"] for s in saved] == ["test_00001_.glb", "test_00002_.glb"]
    assert all(s["subfolder"] == "sesahand" and s["type"] == "output" for s in saved)
    scene = trimesh.load(comfyui.output_dir / model_file, force="scene")
    assert sum(len(g.vertices) for g in scene.geometry.values()) == \
        sum(len(m.vertices) for m in hands.meshes[0])
    assert node.execute(hands=hands, filename_prefix="sesahand/test")[0] == "sesahand/test_00003_.glb"


def test_render_conditions_with_forearms(comfyui, anny):
    """arm=forearm: the arm in the maps and its own mask, arm joints in the labels (the Anny
    body is built into the shared cache on first use)."""
    pose = comfyui.node("SesaHandHandPose").execute(**pose_inputs())[0]
    node = comfyui.node("SesaHandRenderConditions")
    assert "arm 'shoulder' is unknown" in node.validate_inputs(arm="shoulder")
    mesh, _, _, pose_image, mask, hands, arm_mask = node.execute(
        hand_model=anny, pose=pose, **render_inputs(arm="forearm")).args
    plain = node.execute(hand_model=anny, pose=pose, **render_inputs()).args
    assert arm_mask.shape == mask.shape and arm_mask.sum() > 100
    assert not ((arm_mask > 0) & (mask > 0)).any()
    assert (mesh.amax(-1)[arm_mask > 0] > 0).all()
    assert not torch.equal(pose_image, plain[3])  # the forearm's OpenPose body limb
    arm = hands.frame_dict(0)["hands"][0]["arm"]
    assert arm["kind"] == "forearm" and arm["joint_names"] == ["wrist", "elbow"]
