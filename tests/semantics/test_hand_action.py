"""Pose-aware hand action: finger flexion and gesture names on the built-in presets as the
open hand model poses them, and conflicts between a caption's hand action and the pose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sesahand.hands import PRESET_NAMES, PoseSpec
from sesahand.camera import Camera
from sesahand.semantics.hand_action import (GESTURE_PHRASES, describe_hand, describe_hands,
                                            finger_flexion, reconcile_hand_action,
                                            text_expectations)

#: The gesture each preset's name implies.
EXPECTED = {
    "open_palm": "open palm", "relaxed": "relaxed hand", "fist": "fist", "point": "pointing",
    "pinch": "pinch", "ok": "OK sign", "peace": "peace sign", "thumbs_up": "thumbs up",
    "claw": "claw", "cylinder_grasp": "power grasp", "sphere_grasp": "spherical grasp",
    "flat_grasp": "flat grasp", "spread": "spread fingers", "call_me": "call-me sign",
    "rock": "rock sign",
}


@pytest.fixture(scope="module")
def preset_joints(anny_model):
    """(side, preset) -> (21, 3) joints of the open hand model, camera frame, metres."""
    camera = Camera.default(512, 512)
    out = {}
    for side in ("right", "left"):
        for name in PRESET_NAMES:
            scene, = PoseSpec.preset(name, side).resolve(anny_model, camera)
            out[side, name] = anny_model(scene.hands)[0].joints
    return out


def test_every_preset_has_an_expected_gesture():
    assert set(EXPECTED) == set(PRESET_NAMES)
    assert set(EXPECTED.values()) <= set(GESTURE_PHRASES)


@pytest.mark.parametrize("side", ["right", "left"])
def test_presets_are_described_by_the_gesture_their_name_implies(preset_joints, side):
    for name, gesture in EXPECTED.items():
        d = describe_hand(preset_joints[side, name], side)
        assert d.gesture == gesture, f"{side} {name}: {d.gesture} ({d.states})"
        assert gesture.split()[0].lower() in d.phrase.lower()
        assert f"the {side} hand" in d.phrase


def test_finger_states_follow_the_preset_angles(preset_joints):
    point = describe_hand(preset_joints["right", "point"], "right").states
    assert point["index"] == "extended"
    assert all(point[f] == "curled" for f in ("middle", "ring", "little"))
    flat = describe_hand(preset_joints["right", "open_palm"], "right").states
    assert set(flat.values()) == {"extended"}
    fist = finger_flexion(preset_joints["right", "fist"])
    assert all(sum(fist[f]) > 200 for f in ("index", "middle", "ring", "little")), \
        "preset fist: MCP 85 + PIP 100 + DIP 65 degrees"


def test_description_does_not_depend_on_position_or_units_type(preset_joints):
    joints = preset_joints["right", "peace"]
    moved = joints + torch.tensor([0.3, -0.2, 1.5])
    assert describe_hand(moved.numpy().tolist(), "right").gesture == "peace sign"
    assert describe_hand(joints.double(), "").phrase == "making a peace sign with one hand"


def test_unnamed_pose_lists_the_finger_states(preset_joints):
    # the open palm with the fist's thumb: four fingers out, the thumb folded
    joints = preset_joints["right", "open_palm"].clone()
    joints[1:5] = preset_joints["right", "fist"][1:5]
    d = describe_hand(joints, "right")
    assert d.gesture is None
    assert d.phrase == ("holding the right hand with the index, middle, ring and little "
                        "fingers extended and the thumb flexed")


@pytest.mark.parametrize("joints, match", [
    (np.zeros((20, 3)), "shape"),
    (np.full((21, 3), np.nan), "NaN"),
    (np.zeros((21, 3)), "not a hand"),
    ("hand", "array"),
])
def test_bad_joints_are_rejected(joints, match):
    with pytest.raises(ValueError, match=match):
        describe_hand(joints)


def test_bad_side_is_rejected(preset_joints):
    with pytest.raises(ValueError, match="side"):
        describe_hand(preset_joints["right", "fist"], "middle")


@pytest.mark.parametrize("text, expected", [
    ("waving at the camera", ["an open hand"]),
    ("showing an open hand", ["an open hand"]),
    ("clenched fist raised", ["a fist"]),
    ("pointing at the screen", ["pointing"]),
    ("giving a thumbs up", ["a thumbs up"]),
    ("holding a cup and waving", ["an open hand", "a grip"]),
    ("resting on the knee", []),
])
def test_text_expectations(text, expected):
    assert text_expectations(text) == expected


def test_waving_text_over_a_fist_mesh_is_a_conflict(preset_joints):
    fist = describe_hand(preset_joints["right", "fist"], "right")
    check = reconcile_hand_action("waving with an open hand", [fist])
    assert check.source == "pose" and check.phrase == "making a fist with the right hand"
    assert len(check.conflicts) == 1
    assert "waving" in check.conflicts[0] and "fist" in check.conflicts[0]


def test_compatible_text_is_kept(preset_joints):
    grasp = describe_hand(preset_joints["right", "cylinder_grasp"], "right")
    palm = describe_hand(preset_joints["left", "open_palm"], "left")
    check = reconcile_hand_action("holding a bottle", [grasp])
    assert (check.phrase, check.source, check.conflicts) == ("holding a bottle", "text", [])
    # two hands: holding (right grasp) and waving (left open palm) are both met
    check = reconcile_hand_action("holding a bottle and waving", [grasp, palm])
    assert check.source == "text" and check.conflicts == []


def test_holding_over_an_open_palm_is_a_conflict_and_both_hands_are_described(preset_joints):
    palm = describe_hand(preset_joints["right", "open_palm"], "right")
    spread = describe_hand(preset_joints["left", "spread"], "left")
    check = reconcile_hand_action("holding a phone", [palm, spread])
    assert check.source == "pose" and len(check.conflicts) == 1
    assert check.phrase == describe_hands([palm, spread])
    assert "right hand" in check.phrase and "left hand" in check.phrase


def test_empty_text_takes_the_pose_and_no_hands_keep_the_text(preset_joints):
    point = describe_hand(preset_joints["right", "point"], "right")
    check = reconcile_hand_action("", [point])
    assert (check.source, check.conflicts) == ("pose", [])
    assert check.phrase == point.phrase
    check = reconcile_hand_action("waving", [])
    assert (check.phrase, check.source) == ("waving", "text")
