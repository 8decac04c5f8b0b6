"""Workflows to prompts: reading a workflow file, converting a UI workflow to an API prompt
(:class:`UiGraph`, like the frontend's ``graphToPrompt``) and each job's varied prompt."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Collection

from ..comfy_graph import (MODE_BYPASS, MODE_MUTED, SEED_INPUTS, VIRTUAL_NODES, node_sort_key, widget_default,
                           widget_slots)

log = logging.getLogger(__name__)

#: What ``--vary`` may name.
VARY_CHOICES = ("seed", "pose")
POSE_NODE = "SesaHandHandPose"


class WorkflowError(ValueError):
    """A workflow file that cannot be turned into prompts (the message says why and what to do)."""


def load_workflow(path: str | Path) -> dict:
    """The JSON of a workflow file (UI or API format); :class:`WorkflowError` if not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"--workflow {path}: not valid JSON ({exc})") from None


def is_api_prompt(data) -> bool:
    """True for an API-format prompt: ``{node_id: {"class_type": str, "inputs": dict}}``."""
    return isinstance(data, dict) and bool(data) and all(
        isinstance(node, dict) and isinstance(node.get("class_type"), str)
        and isinstance(node.get("inputs"), dict) for node in data.values())


def to_api_prompt(workflow: dict, object_info: Callable[[], dict]) -> dict:
    """The API prompt of ``workflow``: a copy if it is one already, else :func:`ui_to_api` with
    ``object_info()`` (called only then). Raises :class:`WorkflowError` for anything else."""
    if is_api_prompt(workflow):
        return copy.deepcopy(workflow)
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        return ui_to_api(workflow, object_info())
    raise WorkflowError("the workflow is neither a ComfyUI UI workflow (with 'nodes' and 'links') "
                        "nor an API prompt ({node_id: {'class_type', 'inputs'}})")


def _valid_connection(a, b) -> bool:
    """LiteGraph's ``isValidConnection``: '*' or '' match anything, comma lists intersect."""
    a = "" if a in ("*", None) else str(a)
    b = "" if b in ("*", None) else str(b)
    if not a or not b or a == b:
        return True
    a_set, b_set = set(a.lower().split(",")), set(b.lower().split(","))
    return bool(a_set & b_set)


class _Value:
    """A literal value resolved through a link (from a PrimitiveNode)."""

    def __init__(self, value):
        self.value = value


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow (frontend format 0.4 or 1) to an API prompt, like the frontend's
    ``graphToPrompt`` (ComfyUI frontend 1.27, shipped with ComfyUI 0.3.64).

    * Widget inputs come from ``widgets_values`` in the frontend's widget order
      (:func:`sesahand.comfy_graph.widget_slots`): the node's inputs from ``object_info[class]``
      (``input_order``: required, then optional; an input listed in both is optional) whose
      type is a widget type and not ``forceInput``. The extra values the frontend stores after
      an INT with ``control_after_generate`` (or named seed / noise_seed), two after a combo with
      ``control_after_generate``, and one for an upload button at the end, are skipped. Missing
      values take the input's default (as a fresh widget would); surplus values at the end
      (frontend-only widgets of extensions) are ignored and logged. List values are sent as
      ``{"__value__": list}``. ``widgets_values`` given as a dict is read by input name.
    * Links become ``[origin node id, output slot]``. Reroute nodes are followed; a
      PrimitiveNode gives its value. Muted nodes (mode 2) are dropped, with every input linked
      to them; bypassed nodes (mode 4) are dropped and their outputs pass through to the first
      input of a matching type (the same slot preferred, then the same type, then a compatible
      one). Slots are counted in the saved ``inputs`` list, which holds no unlinked widget
      inputs.
    * Refused with :class:`WorkflowError`: active subgraph or group nodes (unpack them, or export
      the API format from the UI), node types the server does not list (a missing custom node
      pack), links that do not exist or loop, a workflow with no active node.

    Args:
        workflow: the parsed UI workflow JSON (``nodes``, ``links``...).
        object_info: the server's ``GET /object_info`` reply.
    Returns:
        ``{node_id (str): {"class_type", "inputs", "_meta": {"title"}}}``.
    """
    return UiGraph(workflow, object_info).to_api()


class UiGraph:
    """A UI workflow's nodes and links against a server's ``/object_info``, read the way the
    frontend's ``graphToPrompt`` reads them (see :func:`ui_to_api`).

    Args:
        workflow: the parsed UI workflow JSON (``nodes``, ``links``...).
        object_info: the server's ``GET /object_info`` reply.
    Raises:
        WorkflowError: subgraph or group nodes, or node types the server does not list.
    """

    def __init__(self, workflow: dict, object_info: dict):
        self.object_info = object_info
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links: dict[int, tuple] = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                self.links[link["id"]] = (link["origin_id"], link["origin_slot"])
            else:
                self.links[link[0]] = (link[1], link[2])
        subgraphs = {s.get("id"): s.get("name", "") for s in
                     (workflow.get("definitions") or {}).get("subgraphs") or []}
        for node in self.nodes.values():
            self._check_type(node, subgraphs)

    @staticmethod
    def describe(node: dict) -> str:
        return f"node {node['id']} ({node.get('type')})"

    def _check_type(self, node: dict, subgraphs: dict) -> None:
        kind = node.get("type")
        if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or kind in self.object_info or kind in VIRTUAL_NODES:
            return
        if kind in subgraphs:
            raise WorkflowError(
                f"node {node['id']} is a subgraph ({subgraphs[kind]!r}), which this converter cannot "
                "expand: unpack it in the UI (right-click > Unpack Subgraph) or save the workflow "
                "with Workflow > Export (API) and pass that file")
        if str(kind).startswith(("workflow>", "workflow/")):
            raise WorkflowError(
                f"node {node['id']} is a group node ({kind!r}), which this converter cannot expand: "
                "convert it to nodes in the UI or save the workflow with Workflow > Export (API)")
        raise WorkflowError(
            f"{self.describe(node)}: the server has no such node type; install the custom node pack "
            "that provides it (or remove the node) and restart ComfyUI")

    def resolve_input(self, node: dict, index: int, want_type, seen: set):
        """What input ``index`` of ``node`` is linked to: ``[node id, output slot]`` (dropped
        by :meth:`to_api` when that node is not in the prompt), a :class:`_Value`, or None."""
        inp = node["inputs"][index]
        link_id = inp.get("link")
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"{self.describe(node)}: input {inp.get('name')!r} uses link {link_id}, "
                                "which the workflow does not list")
        origin_id, origin_slot = self.links[link_id]
        if origin_id not in self.nodes:
            raise WorkflowError(f"{self.describe(node)}: input {inp.get('name')!r} is linked to node "
                                f"{origin_id}, which the workflow does not have")
        return self.resolve_output(self.nodes[origin_id], origin_slot,
                                   inp.get("type") if want_type is None else want_type, seen)

    def resolve_output(self, node: dict, slot: int, want_type, seen: set):
        """What output ``slot`` of ``node`` stands for, following bypassed and virtual nodes."""
        key = (node["id"], slot)
        if key in seen:
            raise WorkflowError(f"the links loop through output {slot} of {self.describe(node)}")
        seen.add(key)
        inputs = node.get("inputs") or []
        if node.get("mode") == MODE_BYPASS:
            index = self.bypass_input(node, slot, want_type)
            return None if index is None else self.resolve_input(node, index, want_type, seen)
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return _Value(values[0]) if values else None
        if node.get("type") in VIRTUAL_NODES:
            return self.resolve_input(node, slot, want_type, seen) if slot < len(inputs) else None
        return [str(node["id"]), slot]

    @staticmethod
    def bypass_input(node: dict, slot: int, want_type) -> int | None:
        """The input a bypassed node passes to its output ``slot``: the same slot if the types
        match, else the first input of type ``want_type``, else the first compatible one."""
        inputs = node.get("inputs") or []
        if not inputs:
            return None
        if want_type in ("*", "", None):
            return slot if slot < len(inputs) else 0
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs) and _valid_connection(inputs[slot].get("type"), out_type) \
                and _valid_connection(inputs[slot].get("type"), want_type):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want_type:
                return i
        for i, inp in enumerate(inputs):
            if _valid_connection(inp.get("type"), out_type) and _valid_connection(inp.get("type"), want_type):
                return i
        return None

    def widget_inputs(self, node: dict, info: dict) -> dict:
        """The widget inputs of ``node`` (``info``: its ``/object_info`` entry) by name."""
        values = node.get("widgets_values")
        slots = widget_slots(info)
        if isinstance(values, dict):
            pairs = [(name, spec, values[name]) if name in values else (name, spec, widget_default(spec))
                     for name, spec in slots if name is not None]
        else:
            values = list(values or [])
            if values and len(values) != len(slots):
                legacy = widget_slots(info, legacy=True)
                if len(legacy) == len(values):
                    slots = legacy
                elif len(values) > len(slots):
                    log.info("%s: %d widget values for %d widgets; ignoring the last %d (widgets "
                             "of frontend extensions)", self.describe(node), len(values), len(slots),
                             len(values) - len(slots))
                else:
                    log.warning("%s: %d widget values for %d widgets; the rest take their defaults",
                                self.describe(node), len(values), len(slots))
            pairs = [(name, spec, values[i] if i < len(values) else widget_default(spec))
                     for i, (name, spec) in enumerate(slots) if name is not None]
        return {name: {"__value__": value} if isinstance(value, list) else value
                for name, spec, value in pairs if value is not None}

    def to_api(self) -> dict:
        """The API prompt (see :func:`ui_to_api`)."""
        prompt: dict[str, dict] = {}
        for node_id in sorted(self.nodes, key=node_sort_key):
            node = self.nodes[node_id]
            kind = node.get("type")
            if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or kind in VIRTUAL_NODES:
                continue
            info = self.object_info[kind]
            inputs = self.widget_inputs(node, info)
            for index, inp in enumerate(node.get("inputs") or []):
                resolved = self.resolve_input(node, index, None, set())
                if isinstance(resolved, _Value):
                    value = resolved.value
                    inputs[inp["name"]] = {"__value__": value} if isinstance(value, list) else value
                elif resolved is not None:
                    inputs[inp["name"]] = resolved
            prompt[str(node_id)] = {"class_type": kind, "inputs": inputs,
                                    "_meta": {"title": node.get("title") or info.get("display_name") or kind}}
        for node in prompt.values():
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                    del node["inputs"][name]
        if not prompt:
            raise WorkflowError("the workflow has no active node (all muted or bypassed)")
        return prompt


def vary_prompt(prompt: dict, index: int, seed: int, vary: Collection[str]) -> tuple[dict, dict[str, int]]:
    """Job ``index``'s copy of ``prompt`` and the values it changed (``{"node.input": value}``).

    * ``"seed"``: every integer input named ``seed`` or ``noise_seed`` (a value, not a link) of
      every node, SesaHand Hand Pose included, becomes ``seed + index``.
    * ``"pose"``: the SesaHand Hand Pose nodes in ``random`` mode, in node-id order ``k = 0..n-1``,
      get seed ``seed + index * n + k``: a different pose per job and per node (with one such
      node, ``seed + index``). Applied after ``"seed"``.

    Raises :class:`WorkflowError` when a requested kind finds nothing to change.
    """
    out = copy.deepcopy(prompt)
    varied: dict[str, int] = {}
    node_ids = sorted(out, key=node_sort_key)
    if "seed" in vary:
        for node_id in node_ids:
            inputs = out[node_id]["inputs"]
            for name in SEED_INPUTS:
                if isinstance(inputs.get(name), int) and not isinstance(inputs[name], bool):
                    inputs[name] = varied[f"{node_id}.{name}"] = seed + index
        if not varied:
            raise WorkflowError("--vary seed: the workflow has no integer input named seed or "
                                "noise_seed with a value (linked seeds are not changed)")
    if "pose" in vary:
        poses = [node_id for node_id in node_ids if out[node_id]["class_type"] == POSE_NODE
                 and out[node_id]["inputs"].get("mode") == "random"
                 and isinstance(out[node_id]["inputs"].get("seed"), int)]
        if not poses:
            raise WorkflowError("--vary pose: the workflow has no SesaHand Hand Pose node in random "
                                "mode with a seed value; set its mode to random")
        for k, node_id in enumerate(poses):
            out[node_id]["inputs"]["seed"] = varied[f"{node_id}.seed"] = seed + index * len(poses) + k
    return out, varied


def prompt_digest(prompt: dict) -> str:
    """SHA-256 (hex) of the prompt's canonical JSON: tells a resumed job from a different one."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()
