"""Batch queueing on running ComfyUI servers: ``python -m sesahand queue``.

ComfyUI stays the engine; this module only prepares and distributes prompts:

1. **Workflow**: an API-format prompt is used as is; a UI workflow (what the browser saves)
   is converted the way the frontend's ``graphToPrompt`` does it, using the server's
   ``/object_info`` (see :func:`ui_to_api`).
2. **Jobs**: job ``i`` (0-based) is the prompt with the values of ``vary`` changed (see
   :func:`vary_prompt`); the same command always gives the same prompts.
3. **Servers**: one worker thread per server URL takes the next job, posts it to ``/prompt``
   (with its own ``prompt_id``), follows the websocket ``/ws`` for progress and the end,
   reads the result from ``/history/{prompt_id}`` and downloads the saved files through
   ``/view`` into ``out/job_NNNNN/``. Each server runs one job of the batch at a time.
4. **Manifest**: every state change of a job is one JSON line appended to
   ``out/manifest.jsonl`` (:class:`Manifest`), so a stopped run resumes without duplicates.
5. **Failures**: a prompt the server rejects (HTTP 400: validation, e.g. a missing model file
   or a bad widget value) fails at once with the node's message. So does a prompt accepted
   with HTTP 200 but with ``node_errors`` (ComfyUI then runs only the outputs that passed
   validation): it is taken off the server's queue (or interrupted) and fails with the
   nodes' messages. A job is done only when ``/history`` reports ``status_str`` ``success``
   and ``completed``. Execution errors and
   transport errors are retried up to ``retries`` more times, on any server; a job stopped by
   ``POST /interrupt`` ends as ``interrupted`` (not retried in this run) and the server goes on
   with the next job. A server that cannot be reached gets no more jobs in this run.

Nothing here imports ComfyUI; HTTP is ``requests``, the websocket ``websocket-client``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Collection, Iterator, Sequence

import requests
import websocket
from tqdm import tqdm

from .io import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://127.0.0.1:8188"
#: What ``--vary`` may name.
VARY_CHOICES = ("seed", "pose")
#: INT inputs that ``--vary seed`` sets, and that the frontend gives a ``control_after_generate``
#: widget when the node does not say otherwise.
SEED_INPUTS = ("seed", "noise_seed")
POSE_NODE = "SesaHandHandPose"
MANIFEST_NAME = "manifest.jsonl"

# LiteGraph node modes: 2 = never (muted), 4 = bypass. Both are left out of the prompt.
MODE_MUTED = 2
MODE_BYPASS = 4
#: Frontend-only nodes (``isVirtualNode``): never sent to the server.
VIRTUAL_NODES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
#: Input types the frontend draws as widgets (its ``ComfyWidgets`` table, frontend 1.27);
#: inputs of other types are sockets only and have no entry in ``widgets_values``.
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "FILEUPLOAD",
    "COLOR", "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON",
    "TEXTAREA",
})
_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """A workflow file that cannot be turned into prompts (the message says why and what to do)."""


class PromptRejected(Exception):
    """The server refused a prompt (HTTP 400: validation failed), or accepted it with
    ``node_errors`` (some outputs failed validation); the message is :func:`format_rejection`'s.
    Never retried."""


class TransportError(RuntimeError):
    """A request to a server failed (connection, timeout, unexpected reply).

    ``unreachable`` is True when the connection failed (refused, reset, unknown host): that
    server gets no more jobs in the run.
    """

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


# --------------------------------------------------------------------------- workflows

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


def _input_kind(spec) -> str:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, list) else str(kind)


def _input_options(spec) -> dict:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def _widget_slots(info: dict, legacy: bool = False) -> list[tuple[str | None, object]]:
    """One ``(input name, input spec)`` per ``widgets_values`` entry, as the frontend lays them
    out; the name is None for values that are not server inputs (``control_after_generate``,
    the combo control's filter, the upload button). ``legacy`` counts ``forceInput`` inputs too,
    as frontends before 1.16 saved a dummy value for them (their names are then None).
    """
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    required = dict(inputs.get("required") or {})
    optional = {k: v for k, v in (inputs.get("optional") or {}).items() if k not in required}
    upload = next((name for name, spec in required.items() if _input_kind(spec) == "COMBO"
                   and any(_input_options(spec).get(o) is True for o in _UPLOAD_OPTIONS)), None)
    names = list(required) + list(optional)
    if order:
        ordered = [n for n in order.get("required", []) if n in required]
        ordered += [n for n in order.get("optional", []) if n in optional]
        names = ordered + [n for n in names if n not in ordered]
    slots: list[tuple[str | None, object]] = []
    for name in names:
        spec = required.get(name, optional.get(name))
        kind, options = _input_kind(spec), _input_options(spec)
        if kind not in WIDGET_TYPES or (options.get("forceInput") and not legacy):
            continue
        slots.append((None if options.get("forceInput") else name, spec))
        control = options.get("control_after_generate")
        if kind == "INT" and (control if control is not None else name in SEED_INPUTS):
            slots.append((None, None))
        elif kind == "COMBO" and control:
            slots += [(None, None), (None, None)]  # control mode and its filter list
    if upload is not None:
        slots.append((None, None))  # the "choose file to upload" button, added by the frontend
    return slots


def _widget_default(spec):
    """The value a fresh frontend widget of ``spec`` starts with (None: unknown)."""
    kind, options = _input_kind(spec), _input_options(spec)
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


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

    * Widget inputs come from ``widgets_values`` in the frontend's widget order: the node's
      inputs from ``object_info[class]`` (``input_order``: required, then optional) whose type is
      a widget type and not ``forceInput``. The extra values the frontend stores after an INT
      with ``control_after_generate`` (or named seed / noise_seed), two after a combo with
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
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links: dict[int, tuple] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    subgraphs = {s.get("id"): s.get("name", "") for s in
                 (workflow.get("definitions") or {}).get("subgraphs") or []}

    def describe(node) -> str:
        return f"node {node['id']} ({node.get('type')})"

    for node in nodes.values():
        kind = node.get("type")
        if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or kind in object_info or kind in VIRTUAL_NODES:
            continue
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
            f"{describe(node)}: the server has no such node type; install the custom node pack "
            "that provides it (or remove the node) and restart ComfyUI")

    def resolve_input(node, index: int, want_type, seen: set):
        inp = node["inputs"][index]
        link_id = inp.get("link")
        if link_id is None:
            return None
        if link_id not in links:
            raise WorkflowError(f"{describe(node)}: input {inp.get('name')!r} uses link {link_id}, "
                                "which the workflow does not list")
        origin_id, origin_slot = links[link_id]
        if origin_id not in nodes:
            raise WorkflowError(f"{describe(node)}: input {inp.get('name')!r} is linked to node "
                                f"{origin_id}, which the workflow does not have")
        return resolve_output(nodes[origin_id], origin_slot,
                              inp.get("type") if want_type is None else want_type, seen)

    def resolve_output(node, slot: int, want_type, seen: set):
        key = (node["id"], slot)
        if key in seen:
            raise WorkflowError(f"the links loop through output {slot} of {describe(node)}")
        seen.add(key)
        inputs = node.get("inputs") or []
        if node.get("mode") == MODE_BYPASS:
            index = bypass_input(node, slot, want_type)
            return None if index is None else resolve_input(node, index, want_type, seen)
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return _Value(values[0]) if values else None
        if node.get("type") in VIRTUAL_NODES:
            return resolve_input(node, slot, want_type, seen) if slot < len(inputs) else None
        return [str(node["id"]), slot]

    def bypass_input(node, slot: int, want_type) -> int | None:
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

    def widget_inputs(node, info) -> dict:
        values = node.get("widgets_values")
        slots = _widget_slots(info)
        if isinstance(values, dict):
            pairs = [(name, spec, values[name]) if name in values else (name, spec, _widget_default(spec))
                     for name, spec in slots if name is not None]
        else:
            values = list(values or [])
            if values and len(values) != len(slots):
                legacy = _widget_slots(info, legacy=True)
                if len(legacy) == len(values):
                    slots = legacy
                elif len(values) > len(slots):
                    log.info("%s: %d widget values for %d widgets; ignoring the last %d (widgets "
                                "of frontend extensions)", describe(node), len(values), len(slots),
                                len(values) - len(slots))
                else:
                    log.warning("%s: %d widget values for %d widgets; the rest take their defaults",
                                describe(node), len(values), len(slots))
            pairs = [(name, spec, values[i] if i < len(values) else _widget_default(spec))
                     for i, (name, spec) in enumerate(slots) if name is not None]
        return {name: {"__value__": value} if isinstance(value, list) else value
                for name, spec, value in pairs if value is not None}

    prompt: dict[str, dict] = {}
    for node_id in sorted(nodes, key=_node_order):
        node = nodes[node_id]
        kind = node.get("type")
        if node.get("mode") in (MODE_MUTED, MODE_BYPASS) or kind in VIRTUAL_NODES:
            continue
        info = object_info[kind]
        inputs = widget_inputs(node, info)
        for index, inp in enumerate(node.get("inputs") or []):
            resolved = resolve_input(node, index, None, set())
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


def _node_order(node_id) -> tuple:
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


# --------------------------------------------------------------------------- jobs

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
    node_ids = sorted(out, key=_node_order)
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


class Manifest:
    """The job log of one output folder: a JSONL file, one line per job state change.

    Each line is a JSON object with ``job`` (index), ``status`` and ``time`` (UTC ISO 8601), plus,
    where they apply: ``attempt``, ``server``, ``prompt_id``, ``varied`` (``{"node.input":
    value}``), ``prompt_sha`` (:func:`prompt_digest`), ``outputs`` (paths relative to the
    folder), ``error``. Statuses: ``submitted`` (written before the POST), ``retrying`` (an
    attempt failed, another follows), ``done``, ``failed``, ``interrupted``. A job's state is its
    last line.

    A line is appended with one ``write`` on an ``O_APPEND`` descriptor, then fsynced: lines are
    never interleaved. A line cut by a crash is skipped by readers and cut off the file before
    the next append. One run at a time may append to a manifest.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._repaired = False

    def append(self, record: dict) -> None:
        """Append ``record`` (JSON-serialisable) as one line, with ``time`` added."""
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._repaired:
                self._cut_fragment()
                self._repaired = True
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write to {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _cut_fragment(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: cutting off an incomplete last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)

    def records(self) -> list[dict]:
        """Every complete line, in order (an incomplete last line is skipped)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        out = []
        for number, line in enumerate(data[:data.rfind(b"\n") + 1].splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON, skipped", self.path, number)
        return out

    def latest(self) -> dict[int, dict]:
        """The last record of each job, by job index."""
        return {record["job"]: record for record in self.records() if isinstance(record.get("job"), int)}


# --------------------------------------------------------------------------- server

def normalize_url(url: str) -> str:
    """``http[s]://host:port`` without a trailing slash; ``host:port`` gets ``http://``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--server {url!r}: expected an http:// or https:// URL, e.g. {DEFAULT_SERVER}")
    return url


def format_rejection(body: dict) -> str:
    """One line per node error of a ``POST /prompt`` reply's ``node_errors`` (HTTP 400, or
    HTTP 200 with some outputs invalid): ``node 3 (SesaHandRenderConditions): <message>: <details>``."""
    parts = []
    for node_id, entry in sorted((body.get("node_errors") or {}).items(), key=lambda kv: _node_order(kv[0])):
        for error in entry.get("errors") or []:
            details = error.get("details")
            parts.append(f"node {node_id} ({entry.get('class_type')}): {error.get('message')}"
                         + (f": {details}" if details else ""))
    if not parts:
        error = body.get("error")
        if isinstance(error, dict):
            parts.append(error.get("message", "rejected") + (f": {error['details']}" if error.get("details") else ""))
        else:
            parts.append(str(error or body))
    return "; ".join(parts)


def history_outcome(entry: dict) -> tuple[str, str | None]:
    """``("success" | "interrupted" | "error", message)`` of a ``/history`` entry.

    Success needs the entry's ``status`` to say so (``status_str == "success"`` and
    ``completed``); an entry without a status, or with any other, is an error."""
    status = entry.get("status")
    if not isinstance(status, dict):
        return "error", "the server's history has no status for this prompt"
    for message in status.get("messages") or []:
        if not (isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        event, data = message
        if event == "execution_interrupted":
            return "interrupted", f"interrupted in node {data.get('node_id')} ({data.get('node_type')})"
        if event == "execution_error":
            return "error", (f"node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_type')}: {str(data.get('exception_message')).strip()}")
    if status.get("status_str") == "success" and status.get("completed") is True:
        return "success", None
    return "error", (f"the server reports status {status.get('status_str')!r} (completed: "
                     f"{status.get('completed')!r}) without a message")


def output_files(entry: dict) -> Iterator[dict]:
    """The saved files (``{"filename", "subfolder", "type": "output"}``) listed in a
    ``/history`` entry's outputs, node by node; temporary previews are skipped."""
    for node_id in sorted(entry.get("outputs") or {}, key=_node_order):
        for items in entry["outputs"][node_id].values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and item.get("type", "output") == "output":
                    yield item


class ComfyClient:
    """One ComfyUI server over HTTP (``requests``) and its websocket (``websocket-client``).

    Args:
        url: the server's base URL (see :func:`normalize_url`).
        timeout: seconds to wait for an HTTP reply.
        poll_s: seconds of websocket silence after which :meth:`wait` asks ``/history`` again
            (also its polling period when the websocket cannot be opened).
    All methods raise :class:`TransportError` when the server cannot be reached or answers
    unexpectedly.
    """

    def __init__(self, url: str, timeout: float = 60.0, poll_s: float = 5.0):
        self.url = normalize_url(url)
        self.timeout = timeout
        self.poll_s = poll_s
        self.client_id = uuid.uuid4().hex
        self._session = requests.Session()
        self._ws: websocket.WebSocket | None = None

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            return self._session.request(method, self.url + path, timeout=(10, self.timeout), **kwargs)
        except requests.ConnectionError as exc:
            raise TransportError(f"{self.url}: cannot connect ({exc})", unreachable=True) from None
        except requests.RequestException as exc:
            raise TransportError(f"{self.url}{path}: {exc}") from None

    def _json(self, method: str, path: str, **kwargs):
        reply = self._request(method, path, **kwargs)
        if reply.status_code != 200:
            raise TransportError(f"{self.url}{path}: HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            return reply.json()
        except ValueError:
            raise TransportError(f"{self.url}{path}: the reply is not JSON") from None

    def object_info(self) -> dict:
        """``GET /object_info``: every node type's inputs and outputs."""
        return self._json("GET", "/object_info")

    def submit(self, prompt: dict, prompt_id: str) -> None:
        """``POST /prompt`` with our ``prompt_id`` and client id (the websocket is opened first:
        the server sends a prompt's events only to a socket open while it runs).
        Raises :class:`PromptRejected` on HTTP 400 (validation failed), and on HTTP 200 with
        ``node_errors`` (some outputs failed validation; ComfyUI queued the rest), after taking
        the prompt off the queue (or interrupting it if it already runs)."""
        self._connect_ws()
        reply = self._request("POST", "/prompt",
                              json={"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id})
        if reply.status_code == 400:
            try:
                body = reply.json()
            except ValueError:
                body = {"error": reply.text[:300]}
            raise PromptRejected(format_rejection(body))
        if reply.status_code != 200:
            raise TransportError(f"{self.url}/prompt: HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            body = reply.json()
        except ValueError:
            raise TransportError(f"{self.url}/prompt: the reply is not JSON") from None
        if isinstance(body, dict) and body.get("node_errors"):
            self.cancel(prompt_id)
            raise PromptRejected(format_rejection(body))

    def cancel(self, prompt_id: str) -> None:
        """Take ``prompt_id`` off the queue, or interrupt it if it runs (best effort: a failure
        is only logged)."""
        try:
            self._request("POST", "/queue", json={"delete": [prompt_id]})
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        except TransportError as exc:
            log.warning("%s: could not cancel prompt %s (%s)", self.url, prompt_id, exc)

    def history(self, prompt_id: str) -> dict | None:
        """``GET /history/{prompt_id}``: the finished prompt's entry, None while it is not finished."""
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id)

    def queued(self) -> set[str]:
        """Prompt ids running or pending (``GET /queue``)."""
        queue = self._json("GET", "/queue")
        return {item[1] for item in (queue.get("queue_running") or []) + (queue.get("queue_pending") or [])}

    def view(self, item: dict) -> bytes:
        """The bytes of an output file (``GET /view``), ``item`` as listed by the history."""
        params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                  "type": item.get("type", "output")}
        reply = self._request("GET", "/view", params=params)
        if reply.status_code != 200:
            raise TransportError(f"{self.url}/view {params}: HTTP {reply.status_code}")
        return reply.content

    def wait(self, prompt_id: str,
             on_progress: Callable[[str | None, int | None, int | None], None] | None = None) -> dict:
        """Block until ``prompt_id`` has finished; returns its ``/history`` entry.

        Follows the websocket (``executing``/``progress`` events go to ``on_progress(node, value,
        max)``; ``executing`` with node None ends the prompt) and asks ``/history`` at the start,
        at the end event and after ``poll_s`` silent seconds, so lost events only cost time.
        A prompt neither queued nor in the history (the server restarted) raises
        :class:`TransportError`.
        """
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if prompt_id not in self.queued():
                entry = self.history(prompt_id)  # it may have finished between the two requests
                if entry is not None:
                    return entry
                raise TransportError(f"{self.url}: prompt {prompt_id} is neither queued nor in the "
                                     "history (was the server restarted?)")
            self._follow_events(prompt_id, on_progress)

    def _connect_ws(self) -> websocket.WebSocket | None:
        if self._ws is None:
            ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
            try:
                self._ws = websocket.create_connection(ws_url, timeout=self.poll_s)
            except (websocket.WebSocketException, OSError) as exc:
                log.debug("%s: no websocket (%s); polling /history instead", self.url, exc)
        return self._ws

    def _follow_events(self, prompt_id: str, on_progress) -> None:
        ws = self._connect_ws()
        if ws is None:
            time.sleep(self.poll_s)
            return
        while True:
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                return
            except (websocket.WebSocketException, OSError):
                self._close_ws()
                return
            if not isinstance(message, str):
                continue  # binary preview images
            try:
                event = json.loads(message)
            except ValueError:
                continue
            data = event.get("data") if isinstance(event, dict) else None
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            if event.get("type") == "executing" and data.get("node") is None:
                return
            if on_progress is not None and event.get("type") in ("executing", "progress"):
                on_progress(data.get("node"), data.get("value"), data.get("max"))

    def _close_ws(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except (websocket.WebSocketException, OSError):
                pass
            self._ws = None

    def close(self) -> None:
        """Close the websocket and the HTTP session."""
        self._close_ws()
        self._session.close()


# --------------------------------------------------------------------------- runs

@dataclass
class JobResult:
    """A job's state at the end of a run.

    ``status``: ``done``, ``failed`` or ``interrupted``; ``outputs``: downloaded files, relative
    to the output folder; ``attempts``: submissions in this run (0 for jobs done before).
    """

    index: int
    status: str
    server: str | None
    prompt_id: str | None
    attempts: int
    varied: dict[str, int]
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class QueueReport:
    """What :func:`run_queue` did: one result per job (by index) and how many prompts the
    servers accepted into their queues in this run."""

    results: list[JobResult]
    submitted: int

    @property
    def ok(self) -> bool:
        """True when every job is done."""
        return all(r.status == "done" for r in self.results)


@dataclass
class _Job:
    index: int
    prompt: dict
    varied: dict[str, int]
    prompt_sha: str
    attempts: int = 0
    server: str | None = None
    prompt_id: str | None = None
    follow: bool = False  # already queued on ``server`` by an earlier run: wait, do not submit


class _Run:
    """Shared state of one :func:`run_queue` call (jobs, manifest, progress bar)."""

    def __init__(self, clients: dict[str, ComfyClient], manifest: Manifest, out: Path, retries: int, bar: tqdm):
        self.clients = clients
        self.manifest = manifest
        self.out = out
        self.retries = retries
        self.bar = bar
        self.cond = threading.Condition()
        self.pending: deque[_Job] = deque()
        self.follow: dict[str, deque[_Job]] = {url: deque() for url in clients}
        self.in_flight = 0
        self.results: dict[int, JobResult] = {}
        self.submitted = 0
        self.stop = threading.Event()
        self.status: dict[str, str] = {}
        self.last_error: dict[str, str] = {}
        self.crash: Exception | None = None

    def record(self, job: _Job, status: str, **fields) -> None:
        record = {"job": job.index, "status": status, "attempt": job.attempts, "server": job.server,
                  "prompt_id": job.prompt_id, "varied": job.varied, "prompt_sha": job.prompt_sha}
        record.update({k: v for k, v in fields.items() if v is not None})
        self.manifest.append(record)

    def finish(self, job: _Job, status: str, outputs: list[str] | None = None, error: str | None = None) -> None:
        self.record(job, status, outputs=outputs, error=error)
        with self.cond:
            self.results[job.index] = JobResult(job.index, status, job.server, job.prompt_id, job.attempts,
                                                job.varied, outputs or [], error)
            self.bar.update(1)
        if status == "done" and not outputs:
            log.warning("job %d done on %s but it produced no output files", job.index, job.server)
        elif status == "done":
            log.debug("job %d done on %s: %d files", job.index, job.server, len(outputs))
        else:
            log.error("job %d %s on %s: %s", job.index, status, job.server, error)

    def retry_or_fail(self, job: _Job, error: str) -> None:
        if job.attempts > self.retries:
            self.finish(job, "failed", error=f"{error} (after {job.attempts} attempts)")
            return
        log.warning("job %d, attempt %d on %s failed: %s; retrying", job.index, job.attempts, job.server, error)
        self.record(job, "retrying", error=error)
        with self.cond:
            self.pending.append(job)
            self.cond.notify_all()

    def take(self, url: str) -> _Job | None:
        """The next job for the worker of ``url``; None when no job is left for it."""
        with self.cond:
            while not self.stop.is_set():
                source = self.follow[url] or self.pending
                if source:
                    self.in_flight += 1
                    return source.popleft()
                if self.in_flight == 0 and not any(self.follow.values()):
                    return None
                self.cond.wait(0.5)
            return None

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def download(self, client: ComfyClient, job: _Job, entry: dict) -> list[str]:
        """Fetch every saved file of ``entry`` into ``out/job_NNNNN/<subfolder>/<filename>``."""
        saved = []
        for item in output_files(entry):
            relative = PurePosixPath(item.get("subfolder") or "", item["filename"])
            if relative.is_absolute() or ".." in relative.parts:
                raise TransportError(f"{client.url}: refusing the output path {str(relative)!r}")
            path = Path(f"job_{job.index:05d}", *relative.parts)
            atomic_write_bytes(self.out / path, client.view(item))
            saved.append(path.as_posix())
        return saved

    def show_progress(self, url: str, text: str) -> None:
        with self.cond:
            self.status[url] = text
            self.bar.set_postfix_str(" | ".join(f"{u.split('://')[-1]} {t}" for u, t in self.status.items()),
                                     refresh=False)

    def process(self, client: ComfyClient, job: _Job) -> None:
        """Run one job on ``client``'s server to its next state."""
        if job.follow:
            job.follow = False
        else:
            job.attempts += 1
            job.server, job.prompt_id = client.url, str(uuid.uuid4())
            self.record(job, "submitted")
            try:
                client.submit(job.prompt, job.prompt_id)
            except PromptRejected as exc:
                self.finish(job, "failed", error=f"rejected by the server (validation failed): {exc}")
                return
            with self.cond:
                self.submitted += 1
        self.show_progress(client.url, f"job {job.index}")

        def on_progress(node, value, maximum):
            step = f" {value}/{maximum}" if value is not None else ""
            self.show_progress(client.url, f"job {job.index} node {node}{step}")

        entry = client.wait(job.prompt_id, on_progress)
        outcome, error = history_outcome(entry)
        if outcome == "success":
            self.finish(job, "done", outputs=self.download(client, job, entry))
        elif outcome == "interrupted":
            self.finish(job, "interrupted", error=error)
        else:
            self.retry_or_fail(job, error)

    def work(self, url: str) -> None:
        """Worker thread of one server: process jobs until none is left or the server is gone.
        An unexpected exception stops the whole run; :func:`run_queue` raises it again."""
        client = self.clients[url]
        while (job := self.take(url)) is not None:
            try:
                self.process(client, job)
            except TransportError as exc:
                self.last_error[url] = str(exc)
                self.retry_or_fail(job, str(exc))
                if exc.unreachable:
                    log.error("%s is unreachable; it gets no more jobs in this run", url)
                    with self.cond:
                        self.pending.extend(self.follow.pop(url))
                        self.in_flight -= 1
                        self.cond.notify_all()
                    return
            except Exception as exc:  # a bug or a local error (disk full): stop everything
                if not self.stop.is_set():
                    self.crash = exc
                    self.stop.set()
            self.release()

    def resume(self, job: _Job, record: dict, factory: Callable[[str], ComfyClient]) -> None:
        """A job the manifest says was submitted: collect it, follow it, or queue it again."""
        url, prompt_id = record.get("server"), record.get("prompt_id")
        if not url or not prompt_id:
            self.pending.append(job)
            return
        client = self.clients.get(url) or factory(url)
        try:
            entry = client.history(prompt_id)
            if entry is not None:
                job.server, job.prompt_id = url, prompt_id
                outcome, error = history_outcome(entry)
                if outcome == "success":
                    self.finish(job, "done", outputs=self.download(client, job, entry))
                    return
                log.info("job %d: its earlier prompt ended (%s); submitting it again", job.index, error)
            elif prompt_id in client.queued():
                if url in self.clients:
                    job.server, job.prompt_id, job.follow = url, prompt_id, True
                    self.follow[url].append(job)
                    return
                log.warning("job %d is still queued on %s, which is not among --server; submitting "
                            "it again", job.index, url)
        except TransportError as exc:
            log.warning("job %d: cannot check its earlier prompt on %s (%s); submitting it again",
                        job.index, url, exc)
        finally:
            if url not in self.clients:
                client.close()
        self.pending.append(job)


def run_queue(servers: Sequence[str], workflow: dict, *, count: int, out: str | Path, seed: int = 0,
              vary: Collection[str] = ("seed",), retries: int = 2,
              client_factory: Callable[[str], ComfyClient] | None = None) -> QueueReport:
    """Run ``count`` jobs of ``workflow`` on the ComfyUI ``servers`` (see the module docstring).

    Args:
        servers: base URLs of running ComfyUI servers (duplicates are merged).
        workflow: a UI workflow or API prompt (parsed JSON); a UI workflow is converted with the
            ``/object_info`` of the first server that answers.
        count: number of jobs (indices ``0..count-1``).
        out: output folder: ``manifest.jsonl`` and ``job_NNNNN/`` with each job's files.
        seed, vary: see :func:`vary_prompt`.
        retries: extra attempts of a job after an execution or transport error (not after a
            rejection or an interrupt).
        client_factory: builds the client of a URL; default :class:`ComfyClient`.
    Returns:
        A :class:`QueueReport`. Jobs done in an earlier run with the same prompts are not run
        again; jobs left ``submitted`` are looked up on their server (history, then queue) first.
    Raises:
        ValueError / :class:`WorkflowError`: bad arguments, a workflow that cannot be converted,
        or an output folder whose manifest holds other prompts for the same job indices.
        :class:`TransportError`: a UI workflow and no server answers ``/object_info``.
    """
    if count < 1:
        raise ValueError(f"--count {count}: must be at least 1")
    if retries < 0:
        raise ValueError(f"--retries {retries}: must be 0 or more")
    unknown = set(vary) - set(VARY_CHOICES)
    if unknown:
        raise ValueError(f"--vary {','.join(sorted(unknown))}: choose from {', '.join(VARY_CHOICES)}")
    urls = list(dict.fromkeys(normalize_url(u) for u in servers))
    if not urls:
        raise ValueError("no --server given")
    out = Path(out)
    client_factory = client_factory or ComfyClient
    clients = {url: client_factory(url) for url in urls}
    try:
        prompt = to_api_prompt(workflow, lambda: _first_object_info(clients))
        jobs = []
        for index in range(count):
            job_prompt, varied = vary_prompt(prompt, index, seed, vary)
            jobs.append(_Job(index, job_prompt, varied, prompt_digest(job_prompt)))
        manifest = Manifest(out / MANIFEST_NAME)
        latest = manifest.latest()
        for job in jobs:
            record = latest.get(job.index)
            if record is not None and record.get("prompt_sha") != job.prompt_sha:
                raise WorkflowError(
                    f"{manifest.path} records job {job.index} with a different prompt (another "
                    "workflow, --seed or --vary): use a new --out folder for this run")
        with tqdm(total=count, unit="job", desc="queue", dynamic_ncols=True) as bar:
            run = _Run(clients, manifest, out, retries, bar)
            for job in jobs:
                record = latest.get(job.index)
                if record is None or record["status"] in ("retrying", "failed", "interrupted"):
                    run.pending.append(job)
                elif record["status"] == "done":
                    run.results[job.index] = JobResult(job.index, "done", record.get("server"),
                                                       record.get("prompt_id"), 0, job.varied,
                                                       record.get("outputs") or [])
                    bar.update(1)
                else:
                    run.resume(job, record, client_factory)
            log.info("%d jobs: %d done before, %d to run on %d server(s)", count, len(run.results),
                     count - len(run.results), len(urls))
            threads = [threading.Thread(target=run.work, args=(url,), name=f"queue {url}", daemon=True)
                       for url in urls]
            for thread in threads:
                thread.start()
            try:
                while any(thread.is_alive() for thread in threads):
                    for thread in threads:
                        thread.join(0.2)
            finally:
                run.stop.set()
            if run.crash is not None:
                raise run.crash
            for job in list(run.pending) + [j for q in run.follow.values() for j in q]:
                reasons = "; ".join(run.last_error.values()) or "no server left"
                run.finish(job, "failed", error=f"no reachable server ({reasons})")
    finally:
        for client in clients.values():
            client.close()
    results = [run.results[i] for i in range(count)]
    return QueueReport(results, run.submitted)


def _first_object_info(clients: dict[str, ComfyClient]) -> dict:
    errors = []
    for client in clients.values():
        try:
            return client.object_info()
        except TransportError as exc:
            errors.append(str(exc))
    raise TransportError("cannot convert the UI workflow: no server answered /object_info ("
                         + "; ".join(errors) + ")")


def format_summary(report: QueueReport, width: int = 160) -> str:
    """A plain-text table: jobs per server and status, then each job not done with its error
    (cut to ``width`` characters; the manifest has the whole message)."""
    statuses = ("done", "failed", "interrupted")
    servers = sorted({r.server or "-" for r in report.results})
    counts = {(s, st): 0 for s in servers for st in statuses}
    for r in report.results:
        counts[(r.server or "-", r.status)] += 1
    name_w = max(len("server"), *(len(s) for s in servers))
    lines = [f"{'server':<{name_w}}  " + "  ".join(f"{st:>11}" for st in statuses)]
    for s in servers:
        lines.append(f"{s:<{name_w}}  " + "  ".join(f"{counts[(s, st)]:>11}" for st in statuses))
    bad = [r for r in report.results if r.status != "done"]
    lines.append(f"{len(report.results)} jobs: {len(report.results) - len(bad)} done, "
                 f"{sum(r.status == 'failed' for r in bad)} failed, "
                 f"{sum(r.status == 'interrupted' for r in bad)} interrupted; "
                 f"{report.submitted} prompts queued on the servers in this run")
    empty = [r.index for r in report.results if r.status == "done" and not r.outputs]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
        lines.append(f"{len(empty)} done job(s) produced no output files (the workflow saves nothing, "
                     f"or only previews): job(s) {shown}")
    if bad:
        lines.append(f"{'job':>5}  {'status':<11}  {'tries':>5}  error")
        for r in bad:
            lines.append(f"{r.index:>5}  {r.status:<11}  {r.attempts:>5}  {(r.error or '')[:width]}")
    return "\n".join(lines)
