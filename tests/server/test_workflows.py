"""The shipped workflows against a real ComfyUI with the pack loaded: node types, inputs and
widget counts exist in ``/object_info``, the API copies are the UI files converted, the files
are what ``tools/build_workflows.py`` builds from this server, the server accepts every prompt,
and the pack serves the workflows as templates."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests

from sesahand.comfy_graph import node_inputs, widget_slots
from sesahand.queue import ui_to_api
from tools import build_workflows as builder

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
NAMES = ("sesahand_generate", "sesahand_random_batch", "sesahand_with_handrefiner_depth", "sesahand_from_photo",
         "sesahand_sdxl_union", "sesahand_sd15_depth_openpose")


@pytest.fixture(scope="module")
def served(server):
    """(base URL, /object_info) of the tier's shared headless ComfyUI, whose model folders hold
    a file named like each of the workflows' model files (validation checks names only) and
    whose input folder holds the photo workflow's Load Image file."""
    info = requests.get(server.url + "/object_info", timeout=60)
    assert info.status_code == 200
    return server.url, info.json()


def load(folder: str, name: str) -> dict:
    return json.loads((REPO / folder / f"{name}.json").read_text())


def test_files_are_what_the_builder_makes_from_this_server(served, tmp_path):
    _, object_info = served
    builder.write_workflows(object_info, tmp_path)
    for name in NAMES:
        for folder in ("workflows", "tests/workflows"):
            assert (tmp_path / folder / f"{name}.json").read_bytes() == (REPO / folder / f"{name}.json").read_bytes(), \
                f"{folder}/{name}.json is stale: run python tools/build_workflows.py"


@pytest.mark.parametrize("name", NAMES)
def test_every_node_input_and_widget_exists_on_the_server(served, name):
    _, object_info = served
    for node in load("workflows", name)["nodes"]:
        if node["type"] == "Note":
            continue
        assert node["type"] in object_info, f"node {node['id']}: unknown type {node['type']}"
        info = object_info[node["type"]]
        inputs = {inp.name: inp for inp in node_inputs(info)}
        saved = {inp["name"]: inp for inp in node["inputs"]}
        assert set(saved) <= set(inputs), f"node {node['id']} ({node['type']}): unknown inputs {set(saved) - set(inputs)}"
        for inp in inputs.values():
            if inp.name in saved:
                entry = saved[inp.name]
                assert ("widget" in entry) == inp.widget and entry["type"] == inp.type, entry
                # As the frontend saves it: every socket, and the widget inputs with a link.
                assert not inp.widget or entry["link"] is not None, entry
            else:
                assert inp.widget, f"node {node['id']} ({node['type']}) lacks the input {inp.name!r}"
        # One value per widget, its control values, and Load Image's upload button.
        assert len(node.get("widgets_values", [])) == len(widget_slots(info)), f"node {node['id']} ({node['type']})"
        types = ["COMBO" if isinstance(t, list) else t for t in info["output"]]  # combo outputs, as the frontend
        assert [(o["name"], o["type"]) for o in node["outputs"]] == list(zip(info["output_name"], types))


@pytest.mark.parametrize("name", NAMES)
def test_api_copy_is_the_ui_workflow_converted(served, name):
    _, object_info = served
    api = load("tests/workflows", name)
    assert ui_to_api(load("workflows", name), object_info) == api
    # The builder's widget positions read back by name give the description's values and links.
    specs = builder.WORKFLOWS[name]
    ids = builder.node_ids(specs)
    for spec in specs:
        if spec.type == "Note" or spec.mode == 4:  # bypassed nodes are left out of the prompt
            continue
        inputs = api[str(ids[spec.key])]["inputs"]
        for input_name, value in spec.values.items():
            if input_name not in spec.links:
                assert inputs[input_name] == value, (spec.key, input_name)
        for input_name, source in spec.links.items():
            key, output = source.split(".")
            source_type = next(s.type for s in specs if s.key == key)
            assert inputs[input_name] == [str(ids[key]), object_info[source_type]["output_name"].index(output)]


def test_server_accepts_every_workflow(served):
    base, _ = served
    try:
        for name in NAMES:
            reply = requests.post(base + "/prompt", json={"prompt": load("tests/workflows", name),
                                                         "client_id": uuid.uuid4().hex}, timeout=60)
            assert reply.status_code == 200, f"{name}: {reply.text[:2000]}"
    finally:  # the model files are empty: do not run the prompts
        requests.post(base + "/queue", json={"clear": True}, timeout=30)
        requests.post(base + "/interrupt", timeout=30)


def test_the_pack_serves_the_workflows_as_templates(served):
    base, _ = served
    listed = requests.get(base + "/workflow_templates", timeout=30).json()
    assert sorted(listed.get("comfyui-sesahand", [])) == sorted(NAMES)
    for name in NAMES:
        for suffix in (".json", ".jpg"):
            reply = requests.get(f"{base}/api/workflow_templates/comfyui-sesahand/{name}{suffix}", timeout=30)
            assert reply.status_code == 200, f"{name}{suffix}"
