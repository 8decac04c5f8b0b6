"""The hand-pose editor in a real ComfyUI page (Debian Chromium + Playwright): open it, pose a
finger with the pointer, undo/redo, bad input, save and reload the workflow, queue it, and
compare the server's rendered mask with the editor's own projection.

The tests share one page and run in file order (each step builds on the pose of the last).
Screenshots are written to the ``shots`` folder (see conftest.py).
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.comfyui

# Hand Model -> Hand Pose Editor -> Render Conditions -> mask -> MaskToImage -> SaveImage
BUILD_GRAPH = """() => {
  app.graph.clear();
  const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n); return n; };
  const model = add('SesaHandHandModel', [20, 40]);
  const editor = add('SesaHandHandPoseEditor', [360, 40]);
  const render = add('SesaHandRenderConditions', [1160, 40]);
  const toImage = add('MaskToImage', [1160, 500]);
  const save = add('SaveImage', [1160, 640]);
  const slot = (n, name, out) => (out ? n.outputs : n.inputs).findIndex((s) => s.name === name);
  model.connect(0, render, slot(render, 'hand_model'));
  editor.connect(0, render, slot(render, 'pose'));
  render.connect(slot(render, 'mask', true), toImage, 0);
  toImage.connect(0, save, 0);
  save.widgets.find((w) => w.name === 'filename_prefix').value = 'editor_mask';
  app.canvas.ds.offset = [0, 0];
  app.canvas.ds.scale = 1;
  app.canvas.setDirty(true, true);
  return editor.id;
}"""

EDITOR = "app.graph._nodes.find((n) => n.type === 'SesaHandHandPoseEditor')"
IDLE = f"""() => {{ const n = {EDITOR}; const e = n && n.sesahandEditor;
  return !!(e && e.ready && e.state && !e.inFlight && !e.pending && e.meshes.length > 0); }}"""
STATE = f"() => {EDITOR}.sesahandEditor.state"
TEXT = f"() => {EDITOR}.widgets.find((w) => w.name === 'pose_json').value"
STATUS = f"() => {EDITOR}.sesahandEditor.status.textContent"


def wait_idle(page, settle_ms: int = 600):
    page.wait_for_timeout(settle_ms)  # debounced text edits start after 400 ms
    page.wait_for_function(IDLE, timeout=60_000)


@pytest.fixture(scope="module")
def page(comfy_server, chromium):  # the server first (see conftest.py)
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(f"{e} {e.stack}"))
    page.goto(comfy_server, wait_until="domcontentloaded")
    page.wait_for_function("() => window.app && app.graph && window.LiteGraph "
                           "&& LiteGraph.registered_node_types['SesaHandHandPoseEditor']", timeout=120_000)
    page.evaluate(BUILD_GRAPH)
    wait_idle(page)
    page.base_url = comfy_server
    page.js_errors = errors
    yield page
    page.close()


def angles(page, finger="index"):
    return page.evaluate(STATE)["hands"][0]["angles"][finger]


def test_editor_opens_with_the_pack_hand_mesh(page, shots):
    state = page.evaluate(STATE)
    assert [h["side"] for h in state["hands"]] == ["right"]
    mesh = page.evaluate(f"() => {{ const m = {EDITOR}.sesahandEditor.meshes[0]; "
                         "return [m.vertices.length, m.mesh.geometry.index.count]; }")
    assert mesh[0] > 1000 * 3 and mesh[1] > 1000 * 3  # the open hand: 1609 vertices, 3196 faces
    document = json.loads(page.evaluate(TEXT))
    assert document["frames"][0]["camera"]["width"] == 512
    assert len(document["frames"][0]["hands"][0]["hand_pose"]) == 45
    # the Hand Model's mano_file shows a choice with an empty models/mano folder (not "undefined")
    assert page.evaluate("() => app.graph._nodes.find((n) => n.type === 'SesaHandHandModel')"
                         ".widgets.find((w) => w.name === 'mano_file').value") == "none"
    page.screenshot(path=str(shots / "editor_open.png"))


def test_pointer_drag_bends_a_finger_and_undo_redo(page, shots):
    before_text = page.evaluate(TEXT)
    assert angles(page)["pip"] == 0.0
    x, y = page.evaluate(f"() => {{ const p = {EDITOR}.sesahandEditor.jointClientPosition(0, 6); return [p.x, p.y]; }}")
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x, y + 8 * k)
    page.mouse.up()
    wait_idle(page)
    pip = angles(page)["pip"]
    assert 30.0 <= pip <= 110.0, "dragging the index PIP down by 80 px bends it (0.5 degrees per px)"
    assert page.evaluate(f"() => {EDITOR}.sesahandEditor.joint.label") == "index PIP"
    text = page.evaluate(TEXT)
    assert text != before_text
    hand_pose = json.loads(text)["frames"][0]["hands"][0]["hand_pose"]
    assert hand_pose[5] == pytest.approx(np.radians(pip), abs=1e-4)  # index2 about +z (MANO)
    page.screenshot(path=str(shots / "editor_finger_posed.png"))

    assert page.evaluate("() => document.activeElement.classList.contains('keys')"), \
        "after a drag in the view the editor keeps the keyboard"
    page.keyboard.press("Control+z")
    wait_idle(page)
    assert angles(page)["pip"] == 0.0 and page.evaluate(TEXT) != text
    page.keyboard.press("Control+Shift+z")
    wait_idle(page)
    assert angles(page)["pip"] == pip and page.evaluate(TEXT) == text

    page.keyboard.press("c")  # camera view: the exact output image with its box
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "editor_camera_view.png"))
    # Framing with the pointer: dragging in the camera view moves the hand's image box.
    box = page.locator(".sesahand-editor .view canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    scale = page.evaluate(f"() => {EDITOR}.sesahandEditor.imageRect().scale")
    page.mouse.move(cx, cy)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(cx + 10 * k, cy)
    page.mouse.up()
    wait_idle(page)
    moved = page.evaluate(STATE)["hands"][0]["box"]["center"]
    assert moved[0] == pytest.approx(256 + 50 / scale, abs=0.5) and moved[1] == pytest.approx(256)
    assert json.loads(page.evaluate(TEXT))["frames"][0]["hands"][0]["box"]["center"] == moved
    page.keyboard.press("Control+z")
    wait_idle(page)
    assert page.evaluate(TEXT) == text
    page.keyboard.press("h")
    page.wait_for_timeout(200)
    assert page.is_visible(".sesahand-editor .help")
    page.screenshot(path=str(shots / "editor_help.png"))
    page.keyboard.press("Escape")
    page.keyboard.press("c")
    assert not page.is_visible(".sesahand-editor .help")


def test_bad_json_shows_the_error_and_keeps_the_pose(page):
    good_text, good_state = page.evaluate(TEXT), page.evaluate(STATE)
    textarea = page.locator("textarea.comfy-multiline-input")
    textarea.fill(good_text[:-5])  # truncated: not JSON
    wait_idle(page)
    assert "Invalid pose JSON" in page.evaluate(STATUS) and "malformed" in page.evaluate(STATUS)
    assert page.evaluate(STATE) == good_state
    textarea.fill(json.dumps({"frames": [{"hands": [{"side": "right", "hand_pose": [0] * 44}]}]}))
    wait_idle(page)
    assert "hand_pose" in page.evaluate(STATUS) and page.evaluate(STATE) == good_state

    # Out-of-limit angles are clamped, shown, and written back so the node renders them.
    document = json.loads(good_text)
    document["frames"][0]["hands"][0]["hand_pose"][4 * 3 + 2] = 2.5  # middle PIP: 143 degrees
    textarea.fill(json.dumps(document))
    wait_idle(page)
    assert angles(page, "middle")["pip"] == 110.0
    assert "clamped" in page.evaluate(STATUS) and "middle pip" in page.evaluate(STATUS)
    written = json.loads(page.evaluate(TEXT))["frames"][0]["hands"][0]["hand_pose"]
    assert written[4 * 3 + 2] == pytest.approx(np.radians(110.0), abs=1e-4)


def test_workflow_round_trip_keeps_the_pose_json(page, tmp_path):
    text, state = page.evaluate(TEXT), page.evaluate(STATE)
    # Saved as ComfyUI saves it: the serialised graph as JSON text.
    (tmp_path / "workflow.json").write_text(page.evaluate("() => JSON.stringify(app.graph.serialize())"))
    workflow = json.loads((tmp_path / "workflow.json").read_text())
    editor_node = next(n for n in workflow["nodes"] if n["type"] == "SesaHandHandPoseEditor")
    assert editor_node["widgets_values"] == [text]  # the editor itself stores nothing else

    page.reload(wait_until="domcontentloaded")
    page.wait_for_function("() => window.app && app.graph && window.LiteGraph "
                           "&& LiteGraph.registered_node_types['SesaHandHandPoseEditor']", timeout=120_000)
    page.evaluate("(text) => app.loadGraphData(JSON.parse(text))", (tmp_path / "workflow.json").read_text())
    wait_idle(page)
    assert page.evaluate(TEXT) == text
    reloaded = page.evaluate(STATE)
    for finger, joints in state["hands"][0]["angles"].items():
        assert reloaded["hands"][0]["angles"][finger] == pytest.approx(joints, abs=1e-3)
    assert reloaded["hands"][0]["box"]["center"] == pytest.approx(state["hands"][0]["box"]["center"])
    assert reloaded["hands"][0]["box"]["size"] == pytest.approx(state["hands"][0]["box"]["size"])
    assert reloaded["camera"] == pytest.approx(state["camera"])


def _history_with_image(base: str, prompt_id: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = requests.get(f"{base}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(1)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")


def test_queued_render_matches_the_editor_projection(page, shots):
    text = page.evaluate(TEXT)
    # The server is shared with tests/server: its history may hold their prompts already.
    before = set(requests.get(page.base_url + "/history", timeout=30).json())
    result = page.evaluate("async () => { const r = await app.queuePrompt(0, 1); return r; }")

    def new_prompts() -> list[str]:
        return [p for p in requests.get(page.base_url + "/history", timeout=30).json() if p not in before]

    queued = new_prompts()
    deadline = time.monotonic() + 60
    while not queued and time.monotonic() < deadline:  # queuePrompt returns before the server has it
        time.sleep(0.5)
        queued = new_prompts()
    prompt_id = queued[0] if queued else None
    assert prompt_id, f"nothing was queued ({result})"
    entry = _history_with_image(page.base_url, prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    graph = entry["prompt"][2]
    editor_inputs = next(n["inputs"] for n in graph.values() if n["class_type"] == "SesaHandHandPoseEditor")
    assert editor_inputs["pose_json"] == text  # the node ran on the workflow's pose JSON
    image = next(img for out in entry["outputs"].values() for img in out.get("images", []))
    png = requests.get(page.base_url + "/view", params=image, timeout=30).content
    server = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 127

    projected = page.evaluate(f"() => {EDITOR}.sesahandEditor.projectMask()")
    editor = np.array([[c == "1" for c in row] for row in projected["rows"]])
    assert editor.shape == server.shape == (512, 512)
    Image.fromarray(np.stack([server, editor, np.zeros_like(editor)], -1).astype(np.uint8) * 255).save(
        shots / "mask_server_red_editor_green.png")
    iou = (server & editor).sum() / (server | editor).sum()
    print(f"mask IoU server vs editor projection: {iou:.4f} ({server.sum()} / {editor.sum()} px)")
    assert server.sum() > 5000, "the rendered mask holds the hand"
    assert iou >= 0.98, f"IoU of the server's mask and the editor's projection is {iou:.4f}"


def test_two_hands_mirror_and_reset(page, shots):
    page.click(".sesahand-editor button:has-text('Both')")
    wait_idle(page)
    state = page.evaluate(STATE)
    assert [h["side"] for h in state["hands"]] == ["right", "left"]
    hands = json.loads(page.evaluate(TEXT))["frames"][0]["hands"]
    assert [h["side"] for h in hands] == ["right", "left"]
    assert hands[0]["box"]["center"][0] < 256 < hands[1]["box"]["center"][0]
    page.evaluate(f"() => {EDITOR}.sesahandEditor.frame()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "editor_two_hands.png"))
    page.keyboard.press("m")  # the right hand's pose onto the left hand, mirrored
    wait_idle(page)
    state = page.evaluate(STATE)
    assert state["hands"][1]["angles"] == state["hands"][0]["angles"]
    assert state["hands"][1]["box"]["center"][0] == pytest.approx(512 - state["hands"][0]["box"]["center"][0])
    page.select_option(".sesahand-editor select", "fist")  # the selected (right) hand
    wait_idle(page)
    state = page.evaluate(STATE)
    assert state["hands"][0]["angles"]["index"] == {"mcp": 85.0, "pip": 100.0, "dip": 65.0, "spread": 0.0}
    page.keyboard.press("r")
    wait_idle(page)
    assert all(h["angles"]["index"]["pip"] == 0.0 for h in page.evaluate(STATE)["hands"])
    page.click(".sesahand-editor button:has-text('Right')")
    wait_idle(page)
    assert [h["side"] for h in page.evaluate(STATE)["hands"]] == ["right"]


def test_older_workflows_still_load(page):
    workflow = json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))
    node = next(n for n in workflow["nodes"] if n["type"] == "SesaHandHandPoseEditor")
    old_text = json.dumps({"frames": [{"hands": [{"side": "left", "preset": "fist"}]}]})
    node["widgets_values"] = [old_text]  # a hand-written pose: preset, no camera, no box
    page.evaluate("(text) => app.loadGraphData(JSON.parse(text))", json.dumps(workflow))
    wait_idle(page)
    state = page.evaluate(STATE)
    assert state["hands"][0]["side"] == "left" and state["hands"][0]["angles"]["index"]["pip"] == 100.0
    assert page.evaluate(TEXT) == old_text and "no camera" in page.evaluate(STATUS)
    node["widgets_values"] = []  # saved before the editor wrote anything
    page.evaluate("(text) => app.loadGraphData(JSON.parse(text))", json.dumps(workflow))
    wait_idle(page)
    assert json.loads(page.evaluate(TEXT))["frames"][0]["hands"][0]["side"] == "right"
    assert not [e for e in page.js_errors if "sesahand" in e.lower() or "hand_pose_editor" in e]
    assert not page.is_visible("text=Invalid workflow"), "ComfyUI refused a workflow the test loaded"
