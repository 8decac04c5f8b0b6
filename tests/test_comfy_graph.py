"""The frontend's input and widget rules (``sesahand.comfy_graph``) and their users: the queue's
UI -> API conversion and the workflow builder lay a node out the same way, the frontend's way,
also for an input listed as both required and optional (where the two used to differ)."""

from __future__ import annotations

import copy

from sesahand.comfy_graph import NodeInput, node_inputs, widget_default, widget_slots
from sesahand.queue import ui_to_api
from tools import build_workflows as builder

# ``strength`` is listed as required (FLOAT) and as optional (INT with a control widget). The
# frontend (1.27, ``transformNodeDefV1ToV2`` + ``getOrderedInputSpecs``) keeps the optional
# entry, so ``strength`` is an optional INT with a control value, placed among the optional inputs.
BOTH = {
    "input": {
        "required": {
            "image": ["IMAGE", {}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 100}],
            "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}],
        },
        "optional": {
            "note": ["STRING", {"default": ""}],
            "strength": ["INT", {"default": 3, "min": 0, "max": 10, "control_after_generate": True}],
        },
    },
    "input_order": {"required": ["image", "steps", "strength"], "optional": ["note", "strength"]},
    "output": ["IMAGE"],
    "output_name": ["IMAGE"],
}


def test_an_input_both_required_and_optional_takes_the_optional_spec_and_place():
    inputs = node_inputs(BOTH)
    assert [(i.name, i.type, i.optional) for i in inputs] == [
        ("image", "IMAGE", False), ("steps", "INT", False), ("note", "STRING", True), ("strength", "INT", True)]
    strength = inputs[-1]
    assert strength.spec == BOTH["input"]["optional"]["strength"] and strength.control_values == 1
    assert [name for name, _ in widget_slots(BOTH)] == ["steps", "note", "strength", None]
    # Without input_order the frontend keeps the table position (that of the required entry).
    unordered = {k: v for k, v in BOTH.items() if k != "input_order"}
    assert [(i.name, i.optional) for i in node_inputs(unordered)] == [
        ("image", False), ("steps", False), ("strength", True), ("note", True)]
    assert [name for name, _ in widget_slots(unordered)] == ["steps", "strength", None, "note"]


def test_queue_and_builder_agree_on_that_node():
    info = {"Both": BOTH}
    spec = builder.Spec("both", "Both", 0, values={"steps": 5, "note": "hi", "strength": 7},
                        controls={"strength": "fixed"})
    ui = builder.build_ui([spec], info)
    (node,) = ui["nodes"]
    assert node["widgets_values"] == [5, "hi", 7, "fixed"]
    assert node["inputs"] == [{"name": "image", "type": "IMAGE", "link": None}]
    assert ui_to_api(ui, info)["1"]["inputs"] == {"steps": 5, "note": "hi", "strength": 7}
    # A value the builder did not write takes the optional spec's default in both.
    del node["widgets_values"][1:]
    assert ui_to_api(ui, info)["1"]["inputs"] == {"steps": 5, "note": "", "strength": 3}


def test_control_values_and_defaults():
    def control(kind, name="x", **options):
        return NodeInput(name, kind, [kind, options], False).control_values

    assert control("INT", "seed") == 1 and control("INT", "noise_seed") == 1
    assert control("INT", "seed", control_after_generate=False) == 0
    assert control("INT", control_after_generate=True) == 1 and control("INT") == 0
    assert control("COMBO", control_after_generate=True) == 2 and control("COMBO") == 0
    assert control("FLOAT", control_after_generate=True) == 0
    assert widget_default([["a", "b"], {}]) == "a"
    assert widget_default(["COMBO", {"options": ["x"]}]) == "x"
    assert widget_default(["INT", {"default": 4}]) == 4 and widget_default(["BOOLEAN"]) is False
    forced = copy.deepcopy(BOTH)
    forced["input"]["required"]["steps"][1]["forceInput"] = True
    assert [name for name, _ in widget_slots(forced)] == ["note", "strength", None]
    assert [name for name, _ in widget_slots(forced, legacy=True)] == [None, "note", "strength", None]
