"""The hand-pose editor's HTTP routes on a real headless ComfyUI server: untrusted requests
are checked and capped, the vendored three.js is served from a fixed list, and only the
editor's own script is loaded as a frontend extension."""

from __future__ import annotations

import base64
import json

import pytest
import requests

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def base(server):
    """The base URL of the tier's shared headless ComfyUI."""
    return server.url


@pytest.fixture(scope="module")
def default_state(base):
    return requests.get(base + "/api/sesahand/editor/info", timeout=30).json()["default_state"]


def test_info_gives_the_anatomical_limits(base, comfyui):
    import sys

    anatomy = sys.modules[comfyui.pack_module.__name__ + ".sesahand.hands.anatomy"]
    info = requests.get(base + "/api/sesahand/editor/info", timeout=30).json()
    assert info["limits"]["index"]["pip"] == list(anatomy.LIMITS["pip"])
    assert info["limits"]["thumb"]["abduct"] == list(anatomy.LIMITS["thumb_abduct"])
    assert "fist" in info["presets"] and info["models"] == ["anny (open)", "mano"]


def test_resolve_returns_pose_json_and_the_posed_mesh(base, default_state):
    reply = requests.post(base + "/api/sesahand/editor/resolve",
                          json={"model": "anny (open)", "mano_file": "", "state": default_state}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    vertices = base64.b64decode(body["hands"][0]["vertices"])
    faces = requests.get(base + "/api/sesahand/editor/mesh",
                         params={"model": "anny (open)", "side": "right"}, timeout=30).json()
    assert len(vertices) % 12 == 0 and faces["num_faces"] > 1000
    assert len(body["hands"][0]["joints"]) == 21
    assert body["pose"]["frames"][0]["camera"] == body["camera"]


@pytest.mark.parametrize("data, words", [
    (b"not json", "not JSON"),
    (b"{" + b" " * (64 * 1024) + b"}", "over 65536 bytes"),
    (json.dumps({"model": "anny (open)"}).encode(), "missing field(s) ['state']"),
    (json.dumps({"model": "/etc/passwd", "state": {}}).encode(), "model"),
])
def test_bad_requests_get_400_with_a_reason(base, data, words):
    reply = requests.post(base + "/api/sesahand/editor/resolve", data=data,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 400
    assert words in reply.json()["error"]


def test_parse_refuses_paths_and_names_schema_errors(base):
    for text, words in (("/etc/passwd", "JSON text itself"),
                        ('{"frames": []}', "frames")):
        reply = requests.post(base + "/api/sesahand/editor/parse",
                              json={"model": "anny (open)", "pose_json": text}, timeout=30)
        assert reply.status_code == 400 and words in reply.json()["error"]
        assert "root:" not in reply.text  # nothing of any file is echoed


def test_mesh_route_checks_the_side(base):
    reply = requests.get(base + "/api/sesahand/editor/mesh", params={"model": "anny (open)", "side": "up"}, timeout=30)
    assert reply.status_code == 400 and "side" in reply.json()["error"]


def test_vendored_three_is_served_from_a_fixed_list_only(base):
    reply = requests.get(base + "/sesahand/vendor/three/three.module.js", timeout=30)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/javascript")
    assert "Three.js Authors" in reply.text[:200]
    for name in ("VERSION", "..%2F..%2F__init__.py", "%2e%2e%2fNOTICE"):
        assert requests.get(base + "/sesahand/vendor/three/" + name, timeout=30).status_code == 404


def test_only_the_editor_script_is_a_frontend_extension(base):
    extensions = requests.get(base + "/api/extensions", timeout=30).json()
    ours = [e for e in extensions if "sesahand" in e]
    assert ours == ["/extensions/comfyui-sesahand/hand_pose_editor.js"]
