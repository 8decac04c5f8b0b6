"""Pose files are untrusted: errors name the field but never repeat a value; sizes are capped."""

from __future__ import annotations

import json

import pytest

from sesahand import limits
from sesahand.hands import PoseSpec

SECRET = "TOPSECRET-7f3a"
K = [[500, 0, 256], [0, 500, 256], [0, 0, 1]]


@pytest.mark.parametrize("document,field", [
    ({"frames": [{"hands": [{"side": SECRET}]}]}, "frames/0/hands/0/side"),
    ({"frames": [{"hands": [{"side": "right", "preset": SECRET}]}]}, "frames/0/hands/0/preset"),
    ({"frames": [{"hands": [{"side": "right", SECRET: 1}]}]}, "frames/0/hands/0"),
    ({SECRET: 1, "frames": [{"hands": []}]}, "(top level)"),
    ({"frames": [{"hands": [{"side": "right", "hand_pose": SECRET}]}]}, "frames/0/hands/0/hand_pose"),
    ({"frames": [{"hands": [{"side": "right", "transl": [SECRET, 0, 0]}]}]}, "frames/0/hands/0/transl/0"),
    ({"frames": [{"hands": [], "camera": {"K": SECRET, "width": 512, "height": 512}}]}, "frames/0/camera/K"),
    ({"frames": [{"hands": [], "camera": {"K": [[0, 0, 0], [0, 0, 0], [0, 0, 7777]], "width": 512,
                                          "height": 512}}]}, "frames/0/camera/K"),
    ({"version": SECRET, "frames": [{"hands": []}]}, "version"),
    ({"frames": SECRET}, "frames"),
])
def test_errors_name_the_field_and_never_repeat_values(document, field):
    with pytest.raises(ValueError) as err:
        PoseSpec.parse(json.dumps(document), what="pose_json")
    message = str(err.value)
    assert message.startswith("pose_json: ") and field in message
    assert SECRET not in message and "7777" not in message


def test_camera_sizes_are_held_to_the_node_maximum():
    for width, height in ((100000, 100000), (40000, 8), (limits.MAX_IMAGE_SIDE + 8, 512)):
        document = {"frames": [{"camera": {"K": K, "width": width, "height": height}, "hands": []}]}
        with pytest.raises(ValueError, match=f"camera/width: expected a number at most {limits.MAX_IMAGE_SIDE}"):
            PoseSpec.parse(json.dumps(document))
    ok = {"frames": [{"camera": {"K": K, "width": limits.MAX_IMAGE_SIDE, "height": 512}, "hands": []}]}
    assert PoseSpec.parse(json.dumps(ok)).frames[0][0].width == limits.MAX_IMAGE_SIDE


def test_frame_count_and_text_size_are_capped():
    too_many = {"frames": [{"hands": []}] * (limits.MAX_POSE_FRAMES + 1)}
    with pytest.raises(ValueError, match=f"at most {limits.MAX_POSE_FRAMES} entries"):
        PoseSpec.parse(json.dumps(too_many))
    huge = '{"frames": [{"hands": []}], "pad": "' + "x" * limits.MAX_POSE_FILE_BYTES + '"}'
    with pytest.raises(ValueError, match="more than the limit"):
        PoseSpec.parse(huge)
    with pytest.raises(ValueError, match="nested too deeply|malformed"):
        PoseSpec.parse("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="not UTF-8"):
        PoseSpec.parse(b'{"frames": "\xff"}')


def test_non_finite_box_is_refused_by_field():
    document = '{"frames": [{"hands": [{"side": "right", "box": {"center": [NaN, 1], "size": 50}}]}]}'
    with pytest.raises(ValueError, match="frames/0/hands/0/box: contains NaN"):
        PoseSpec.parse(document)
