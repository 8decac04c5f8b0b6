"""Arms in the conditions: Anny's forearm / arm placed on posed hands, rendered in every map,
with its own mask and labels."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest
import torch
from scipy import ndimage

from sesahand.camera import Camera
from sesahand.hands import PoseSpec
from sesahand.hands.arm import ARM_KINDS, check_arm
from sesahand.render import render_conditions
from sesahand.render.maps import OPENPOSE_ARM_LIMB_COLORS, OPENPOSE_BODY_LIMB_ALPHA


@pytest.fixture(scope="module")
def arm_model():
    """Anny's arms, from the shared SesaHand cache (the body is built once, minutes, if absent)."""
    from sesahand.hands.arm import load_arm_model

    return load_arm_model()


@pytest.fixture(scope="module")
def scene(anny_model):
    camera = Camera.default(512, 512, 40.0)
    return PoseSpec.preset("open_palm", side="right").resolve(anny_model, camera, 1)[0]


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return math.degrees(math.acos(float((a @ b) / (a.norm() * b.norm()))))


@pytest.mark.parametrize("kind", ["forearm", "arm"])
def test_arm_starts_at_the_wrist_and_continues_the_hand(anny_model, arm_model, scene, kind):
    hand, = anny_model(scene.hands)
    arm, = arm_model.attach([hand], kind)
    assert arm.joints.shape == ((2, 3) if kind == "forearm" else (3, 3))
    assert torch.equal(arm.joints[0], hand.joints[0])
    forearm = arm.joints[1] - arm.joints[0]
    assert 0.18 < forearm.norm() < 0.32  # an adult forearm, metres
    palm = hand.joints[9] - hand.joints[0]
    assert angle(forearm, -palm) < 35  # the wrist keeps about Anny's rest angle
    assert arm.faces.max() < arm.vertices.shape[0] and arm.vertices.dtype == torch.float32
    if kind == "arm":
        upper = arm.joints[2] - arm.joints[1]
        assert 0.2 < upper.norm() < 0.4
        assert angle(forearm, upper) == pytest.approx(90, abs=3)  # the rule's default flexion
        assert upper[2] > 0 and upper[1] > 0  # towards the bottom of the image, away


def test_elbow_flexion_and_scale(anny_model, arm_model, scene):
    hand, = anny_model(scene.hands)
    arm, = arm_model.attach([hand], "arm", elbow_flexion=[math.radians(45)])
    assert angle(arm.joints[1] - arm.joints[0], arm.joints[2] - arm.joints[1]) == \
        pytest.approx(45, abs=3)
    # A bigger hand (a MANO hand of another size): the arm is scaled to its palm.
    wrist = hand.joints[0]
    big = type(hand)(vertices=(hand.vertices - wrist) * 1.2 + wrist, faces=hand.faces,
                     joints=(hand.joints - wrist) * 1.2 + wrist, side="right", model="mano",
                     params=hand.params)
    small_arm, = arm_model.attach([hand], "forearm")
    big_arm, = arm_model.attach([big], "forearm")
    ratio = (big_arm.joints[1] - wrist).norm() / (small_arm.joints[1] - wrist).norm()
    assert float(ratio) == pytest.approx(1.2, rel=1e-3)
    with pytest.raises(ValueError, match="elbow_flexion must be from 0"):
        arm_model.attach([hand], "arm", elbow_flexion=[4.0])


def test_left_arms_are_on_the_left_hand(anny_model, arm_model):
    camera = Camera.default(512, 512, 40.0)
    scene = PoseSpec.preset("open_palm", side="left").resolve(anny_model, camera, 1)[0]
    hand, = anny_model(scene.hands)
    arm, = arm_model.attach([hand], "forearm")
    assert arm.side == "left"
    assert angle(arm.joints[1] - arm.joints[0], hand.joints[0] - hand.joints[9]) < 35


def test_the_arm_renders_in_every_map_and_joins_the_hand_at_the_wrist(anny_model, arm_model,
                                                                      scene):
    hands = anny_model(scene.hands)
    plain = render_conditions([hands], [scene.camera], backend="moderngl")
    arms = arm_model.attach(hands, "arm")
    cond = render_conditions([hands], [scene.camera], backend="moderngl", arms=[arms])
    arm_px = cond.arm_masks[0][0].numpy()
    hand_px = cond.masks[0][0].numpy()
    assert arm_px.sum() > 500 and not (arm_px & hand_px).any()
    assert torch.equal(cond.arm_mask[0] > 0, cond.arm_masks[0][0])
    # every map shows the arm: mesh, normal, depth and the depth image
    for image in (cond.mesh[0], cond.normal[0]):
        assert (image[torch.from_numpy(arm_px)].sum(-1) > 0).all()
    assert (cond.depth[0][torch.from_numpy(arm_px)] > 0).all()
    assert (cond.depth_image[0][torch.from_numpy(arm_px)] >= 0.2 - 1e-6).all()
    # hand and arm share one depth range (no step at the wrist): one affine map of metric depth
    both = torch.from_numpy(arm_px | hand_px)
    z, shade = cond.depth[0][both].double(), cond.depth_image[0][both].double()
    expected = 1.0 - 0.8 * (z - z.min()) / (z.max() - z.min())
    assert torch.allclose(shade, expected, atol=1e-5)
    # the arm mask joins the hand mask at the wrist
    touching = ndimage.binary_dilation(hand_px, iterations=2) & arm_px
    assert touching.sum() > 10
    wrist = cond.labels[0][0].joints2d[0].numpy()
    ys, xs = np.nonzero(touching)
    assert np.hypot(xs + 0.5 - wrist[0], ys + 0.5 - wrist[1]).min() < 40
    # the hand's labels and mask are those of the hand alone (the arm is behind the wrist)
    hand_labels, plain_labels = cond.labels[0][0], plain.labels[0][0]
    assert torch.equal(hand_labels.joints2d, plain_labels.joints2d)
    assert torch.equal(hand_labels.visible, plain_labels.visible)
    assert np.mean(hand_px != plain.masks[0][0].numpy()) < 0.002
    assert plain.labels[0][0].arm is None and plain.arm_masks[0].shape[0] == 0


def test_openpose_map_gains_the_body_limbs(anny_model, arm_model, scene):
    hands = anny_model(scene.hands)
    cond = render_conditions([hands], [scene.camera], backend="moderngl",
                             arms=[arm_model.attach(hands, "forearm")])
    pose = (cond.pose[0].numpy() * 255).round().astype(int)
    forearm = np.array([round(c * OPENPOSE_BODY_LIMB_ALPHA)
                        for c in OPENPOSE_ARM_LIMB_COLORS["right"][0]])
    limb = np.all(np.abs(pose - forearm) <= 1, axis=-1)
    assert limb.sum() > 50
    ys, xs = np.nonzero(limb)
    wrist = cond.labels[0][0].joints2d[0].numpy()
    assert ys.max() > wrist[1] + 40  # below the wrist, towards the elbow


def test_labels_carry_the_arm_and_fit_the_dataset_schema(anny_model, arm_model, scene):
    from importlib.resources import files

    from sesahand.pipeline import render_scenes

    conditions, rendered = render_scenes(anny_model, [scene], backend="moderngl", arm="arm")
    hand = rendered.frame_dict(0)["hands"][0]
    arm = hand["arm"]
    assert arm["kind"] == "arm" and arm["joint_names"] == ["wrist", "elbow", "shoulder"]
    assert arm["visible"][0] and len(arm["joints2d"]) == 3 and arm["box"] is not None
    schema = json.loads(files("sesahand.data").joinpath("labels.schema.json").read_text())
    hand_schema = {**schema["$defs"]["hand"], "$defs": schema["$defs"]}
    jsonschema.validate(hand, hand_schema)
    no_arm = render_scenes(anny_model, [scene], backend="moderngl")[1].frame_dict(0)["hands"][0]
    assert "arm" not in no_arm
    jsonschema.validate(no_arm, hand_schema)


def test_an_arm_leaving_the_frame_is_clipped(anny_model, arm_model):
    camera = Camera.default(256, 256, 40.0)
    spec = PoseSpec.from_json(json.dumps({"version": 1, "frames": [{"hands": [
        {"side": "right", "preset": "open_palm", "box": {"center": [128, 200], "size": 100}}]}]}))
    scene = spec.resolve(anny_model, camera, 1)[0]
    hands = anny_model(scene.hands)
    cond = render_conditions([hands], [scene.camera], backend="moderngl",
                             arms=[arm_model.attach(hands, "arm")])
    arm = cond.labels[0][0].arm
    assert arm.box is not None and arm.box[3] == 256  # clipped at the bottom edge
    assert not arm.visible[1:].any()  # elbow and shoulder are outside the image
    assert arm.joints2d[1, 1] > 256


def test_arm_option_is_checked():
    assert ARM_KINDS == ("none", "forearm", "arm")
    assert check_arm("forearm") == "forearm"
    with pytest.raises(ValueError, match="arm must be one of none, forearm, arm"):
        check_arm("shoulder")


def test_a_pose_file_gives_the_elbow_flexion(anny_model, arm_model):
    from sesahand.pipeline import render_scenes

    spec = PoseSpec.from_json(json.dumps({"version": 1, "frames": [{"hands": [
        {"side": "right", "preset": "fist", "box": {"center": [256, 200], "size": 160},
         "elbow_flexion": 0.5}]}]}))
    scene = spec.resolve(anny_model, Camera.default(512, 512, 40.0), 1)[0]
    assert scene.elbow_flexion == [0.5]
    _, rendered = render_scenes(anny_model, [scene], backend="moderngl", arm="arm")
    assert rendered.frame_dict(0)["hands"][0]["arm"]["elbow_flexion"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="elbow_flexion"):
        PoseSpec.from_json(json.dumps({"version": 1, "frames": [{"hands": [
            {"side": "right", "preset": "fist", "elbow_flexion": 3.5}]}]}))
