"""The hand-pose editor's server side (nodes/editor.py) in a real ComfyUI (in-process, CPU):
state <-> pose JSON conversions, request checking, and the node. The browser side is tested
in tests/browser."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def editor(comfyui):
    return sys.modules[comfyui.pack_module.__name__ + ".nodes.editor"]


@pytest.fixture(scope="module")
def hands_module(comfyui):
    return sys.modules[comfyui.pack_module.__name__ + ".sesahand.hands"]


def test_state_round_trips_through_pose_json(editor):
    state = editor.default_state()
    state["hands"].append(copy.deepcopy(state["hands"][0]) | {"side": "left", "orient": [30.0, -20.0, 15.0]})
    state["hands"][0]["angles"] = editor.preset_angles("ok")
    state["hands"][0]["angles"]["index"]["spread"] = 10.0
    state["hands"][0]["orient"] = [-40.0, 10.0, 5.0]
    state, clamped = editor.check_state(state)
    assert clamped == []
    pose = editor.state_to_pose(state)
    back, notes, clamped = editor.parse_pose_text(json.dumps(pose))
    assert notes == [] and clamped == []
    for h0, h1 in zip(state["hands"], back["hands"]):
        assert h1["side"] == h0["side"] and h1["box"] == h0["box"]
        assert h1["orient"] == pytest.approx(h0["orient"], abs=1e-6)
        for finger, joints in h0["angles"].items():
            assert h1["angles"][finger] == pytest.approx(joints, abs=1e-4), finger
    assert back["camera"] == pytest.approx(state["camera"])


def test_out_of_limit_angles_are_clamped_and_named(editor):
    state = editor.default_state()
    state["hands"][0]["angles"]["index"]["pip"] = 150.0
    checked, clamped = editor.check_state(state)
    assert checked["hands"][0]["angles"]["index"]["pip"] == 110.0
    assert len(clamped) == 1 and "index pip: 150.0 -> 110.0" in clamped[0]
    # The same through pose JSON: a hand_pose bending a joint past its limit.
    pose = editor.state_to_pose(editor.check_state(editor.default_state())[0])
    hand_pose = torch.tensor(pose["frames"][0]["hands"][0]["hand_pose"])
    hand_pose[(3 + 1) * 3 + 2] = 2.5  # middle PIP (MANO joint 4) about +z: 143 degrees
    pose["frames"][0]["hands"][0]["hand_pose"] = hand_pose.tolist()
    state, notes, clamped = editor.parse_pose_text(json.dumps(pose))
    assert state["hands"][0]["angles"]["middle"]["pip"] == 110.0
    assert notes == [] and len(clamped) == 1 and "middle pip" in clamped[0]


def test_a_pose_written_at_its_limits_reads_back_without_clamping(editor):
    state = editor.default_state()
    state["hands"][0]["angles"] = editor.preset_angles("fist")
    state["hands"][0]["angles"]["middle"].update(pip=110.0, mcp=-15.0)
    state["hands"][0]["angles"]["thumb"].update(abduct=70.0, cross=-30.0)
    pose = editor.state_to_pose(editor.check_state(state)[0])
    back, notes, clamped = editor.parse_pose_text(json.dumps(pose))
    assert clamped == [] and notes == []
    assert back["hands"][0]["angles"]["middle"] == {"mcp": -15.0, "pip": 110.0, "dip": 65.0, "spread": 0.0}
    assert back["hands"][0]["angles"]["thumb"]["abduct"] == 70.0


def test_presets_and_transl_hands_become_editable_states(editor, comfyui):
    model = editor.editor_model("anny (open)", "")
    text = json.dumps({"frames": [{"hands": [
        {"side": "left", "preset": "fist", "transl": [0.02, 0.0, 0.6]}]}]})
    state, notes, clamped = editor.parse_pose_text(text, model)
    hand = state["hands"][0]
    assert hand["side"] == "left" and hand["angles"] == editor.preset_angles("fist")
    assert any("transl" in n for n in notes) and any("no camera" in n for n in notes) and clamped == []
    # The box is where the transl put the hand: placing the hand by it gives the same image box.
    import base64

    import numpy as np
    out = editor.resolve_request({"model": "anny (open)", "state": state})
    verts = torch.from_numpy(np.frombuffer(base64.b64decode(out["hands"][0]["vertices"]), "<f4").reshape(-1, 3).copy())
    uv = editor.camera_of(state["camera"]).project(verts.double())
    lo, hi = uv.min(0).values, uv.max(0).values
    assert ((lo + hi) / 2).tolist() == pytest.approx(hand["box"]["center"], abs=0.5)
    assert float((hi - lo).max()) == pytest.approx(hand["box"]["size"], abs=0.5)


@pytest.mark.parametrize("text, words", [
    ('{"frames": [', "malformed"),
    ('{"frames": [{"hands": [{"side": "middle"}]}]}', "side"),
    ("/etc/passwd", "JSON text itself"),
    ('{"frames": [{"hands": [{"side": "right", "mano61": [0]}]}]}', "mano61"),
])
def test_bad_pose_json_is_refused_with_a_reason(editor, text, words):
    with pytest.raises(editor.EditorInputError, match=words):
        editor.parse_pose_text(text)


@pytest.mark.parametrize("mutate, words", [
    (lambda s: s["camera"].update(width=100), "width 100 is not a multiple of 8"),
    (lambda s: s["camera"].update(width=8192), "width 8192 is outside"),
    (lambda s: s["hands"][0].update(side="both"), "side"),
    (lambda s: s["hands"][0]["angles"]["index"].update(mcp="90"), "finite number"),
    (lambda s: s["hands"][0]["angles"].update(toe={}), "unknown"),
    (lambda s: s["hands"].extend([s["hands"][0]] * 2), "1 to 2"),
    (lambda s: s["hands"][0]["box"].update(size=float("nan")), "finite"),
])
def test_malformed_states_are_refused(editor, mutate, words):
    state = editor.default_state()
    mutate(state)
    with pytest.raises(editor.EditorInputError, match=words):
        editor.check_state(state)


def test_resolve_poses_exactly_what_render_conditions_renders(editor, comfyui):
    state = editor.default_state()
    state["hands"][0]["angles"]["index"]["mcp"] = 60.0
    out = editor.resolve_request({"model": "anny (open)", "mano_file": "", "state": state})
    # The node fed with the returned JSON renders the same vertices.
    spec = comfyui.node("SesaHandHandPoseEditor").execute(pose_json=json.dumps(out["pose"]))[0]
    anny = comfyui.node("SesaHandHandModel").execute(model="anny (open)", mano_file="", side="left")[0]
    scenes = anny.resolve(spec, editor.camera_of({"width": 64, "height": 64, "fov": 20.0}), 1)
    assert scenes[0].camera.width == 512  # the pose's camera wins
    mesh = anny.model(scenes[0].hands)[0]
    import base64

    import numpy as np
    verts = np.frombuffer(base64.b64decode(out["hands"][0]["vertices"]), "<f4").reshape(-1, 3)
    assert np.array_equal(verts, mesh.vertices.numpy())


def test_requests_name_models_from_the_lists_only(editor):
    for model, mano in (("../../etc", ""), ("mano", "../../secret.pkl"), ("mano", "")):
        with pytest.raises(editor.EditorInputError):
            editor.editor_model(model, mano)
    with pytest.raises(editor.EditorInputError, match="unknown"):
        editor.resolve_request({"model": "anny (open)", "state": editor.default_state(), "path": "/x"})


def test_editor_node_schema_follows_the_pack_conventions(comfyui):
    info = comfyui.node("SesaHandHandPoseEditor").GET_NODE_INFO_V1()
    assert info["category"] == "SesaHand/hands" and info["display_name"] == "SesaHand Hand Pose Editor"
    assert info["input"]["required"]["pose_json"][1]["tooltip"]
    assert info["output"] == ["SESAHAND_POSE"]


def test_editor_node_refuses_paths_and_takes_an_empty_value(comfyui, editor):
    node = comfyui.node("SesaHandHandPoseEditor")
    assert "not a path" in node.validate_inputs(pose_json="poses/hand.json")
    assert node.validate_inputs(pose_json="") is True
    assert node.execute(pose_json="")[0].kind == "json"


def test_mano_hands_of_both_sides_are_posed_and_served(comfyui, editor, mano_pair):
    pytest.importorskip("smplx")
    mano_pair(comfyui.mano_dir)
    state = editor.default_state()
    state["hands"].append(copy.deepcopy(state["hands"][0]) | {"side": "left"})
    out = editor.resolve_request({"model": "mano", "mano_file": "MANO_RIGHT.pkl", "state": state})
    import base64

    assert [h["side"] for h in out["hands"]] == ["right", "left"]
    assert all(len(base64.b64decode(h["vertices"])) == 778 * 3 * 4 for h in out["hands"])
    for side in ("right", "left"):
        mesh = editor.mesh_request({"model": "mano", "mano_file": "MANO_RIGHT.pkl", "side": side})
        assert mesh["model"] == "mano" and mesh["num_faces"] == 1538
