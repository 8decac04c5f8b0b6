"""The shipped workflow files without a server: UI files are consistent graphs (format 0.4),
the API copies hold the same nodes and links, thumbnails open, and the batch workflow varies
under ``--vary pose,seed``. (Against a real server: tests/server/test_workflows.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sesahand.queue import POSE_NODE, VIRTUAL_NODES, is_api_prompt, vary_prompt

REPO = Path(__file__).resolve().parents[1]
NAMES = ("sesahand_generate", "sesahand_random_batch", "sesahand_with_handrefiner_depth", "sesahand_from_photo",
         "sesahand_sdxl_union", "sesahand_sd15_depth_openpose")


def load(folder: str, name: str) -> dict:
    return json.loads((REPO / folder / f"{name}.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_a_consistent_graph(name):
    ui = load("workflows", name)
    assert ui["version"] == 0.4
    nodes = {node["id"]: node for node in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] == max(nodes)
    link_ids = [link[0] for link in ui["links"]]
    assert len(set(link_ids)) == len(link_ids) and ui["last_link_id"] == max(link_ids)
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        target_input = nodes[target]["inputs"][target_slot]
        assert target_input["link"] == link_id and target_input["type"] == kind
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    linked = {inp["link"] for node in nodes.values() for inp in node["inputs"] if inp["link"] is not None}
    assert linked == set(link_ids)
    for node in nodes.values():
        assert {"pos", "size", "flags", "order", "mode", "properties"} <= set(node)
        assert node["mode"] == 0 or (node["mode"] == 4 and name == "sesahand_from_photo")  # its captioner group
    assert sorted(node["order"] for node in nodes.values()) == list(range(len(nodes)))
    notes = [node["widgets_values"][0] for node in nodes.values() if node["type"] == "Note"]
    assert any("models/checkpoints" in text for text in notes), "no Note says where the model files go"


@pytest.mark.parametrize("name", NAMES)
def test_api_copy_has_the_ui_nodes_and_links(name):
    ui, api = load("workflows", name), load("tests/workflows", name)
    assert is_api_prompt(api)
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] not in VIRTUAL_NODES}
    bypassed = {node_id for node_id, node in nodes.items() if node["mode"] == 4}
    assert set(api) == set(nodes) - bypassed
    for node_id, node in nodes.items():
        assert node_id in bypassed or api[node_id]["class_type"] == node["type"]
    for _, origin, origin_slot, target, target_slot, _ in ui["links"]:
        if str(target) in bypassed:
            continue
        name_ = nodes[str(target)]["inputs"][target_slot]["name"]
        assert api[str(target)]["inputs"][name_] == [str(origin), origin_slot]


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail_opens(name):
    with Image.open(REPO / "workflows" / f"{name}.jpg") as image:
        assert image.format == "JPEG" and image.width == 512 and image.height >= 256
        assert image.convert("L").getextrema()[1] > 100  # not blank


def test_batch_workflow_varies_pose_and_seed():
    api = load("tests/workflows", "sesahand_random_batch")
    first, varied = vary_prompt(api, 0, 100, ("seed", "pose"))
    second, _ = vary_prompt(api, 1, 100, ("seed", "pose"))
    poses = [k for k, node in api.items() if node["class_type"] == POSE_NODE]
    assert len(poses) == 1 and api[poses[0]]["inputs"]["mode"] == "random"
    assert f"{poses[0]}.seed" in varied
    for key in varied:
        node_id, input_name = key.split(".")
        assert first[node_id]["inputs"][input_name] != second[node_id]["inputs"][input_name]
    # The dataset node records the seed the sampler used.
    seeds = {api[key.split(".")[0]]["class_type"]: value for key, value in varied.items()}
    assert seeds["SesaHandSaveDatasetSample"] == seeds["SesaHandHandAttentionSampler"]
