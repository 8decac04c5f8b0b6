"""``sesahand.queue`` without a server: UI->API conversion, job variation, the manifest and its
resume logic, retries and failures through a fake transport, and the ``queue`` command."""

from __future__ import annotations

import itertools
import json
import threading

import pytest

import sesahand.queue as queue
from sesahand.cli import main
from sesahand.queue import (Manifest, PromptRejected, TransportError, WorkflowError, format_rejection,
                            history_outcome, prompt_digest, run_queue, to_api_prompt, ui_to_api,
                            vary_prompt)

# ``GET /object_info`` of a ComfyUI 0.3.64 server with this pack loaded, cut to the nodes used
# here (tooltips, descriptions and most combo choices left out).
OBJECT_INFO = {
    "SesaHandHandModel": {
        "input": {
            "required": {
                "model": ["COMBO", {"default": "anny (open)", "multiselect": False, "options": ["anny (open)", "mano"]}],
                "mano_file": ["COMBO", {"multiselect": False, "options": []}],
                "side": ["COMBO", {"default": "right", "multiselect": False, "options": ["right", "left"]}],
            },
        },
        "input_order": {"required": ["model", "mano_file", "side"]},
        "output": ["SESAHAND_HAND_MODEL"],
        "output_name": ["hand_model"],
    },
    "SesaHandHandPose": {
        "input": {
            "required": {
                "mode": ["COMBO", {"default": "preset", "multiselect": False, "options": ["preset", "random", "json"]}],
                "preset": ["COMBO", {"default": "open_palm", "multiselect": False, "options": ["open_palm", "fist"]}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True}],
                "num_hands": ["INT", {"default": 1, "min": 1, "max": 2}],
                "box_min": ["INT", {"default": 160, "min": 8, "max": 4096}],
                "box_max": ["INT", {"default": 320, "min": 8, "max": 4096}],
                "pose_json": ["STRING", {"default": "", "multiline": True}],
            },
        },
        "input_order": {"required": ["mode", "preset", "seed", "num_hands", "box_min", "box_max", "pose_json"]},
        "output": ["SESAHAND_POSE"],
        "output_name": ["pose"],
    },
    "SesaHandRenderConditions": {
        "input": {
            "required": {
                "hand_model": ["SESAHAND_HAND_MODEL", {}],
                "pose": ["SESAHAND_POSE", {}],
                "width": ["INT", {"default": 512, "min": 64, "max": 4096, "step": 8}],
                "height": ["INT", {"default": 512, "min": 64, "max": 4096, "step": 8}],
                "fov": ["FLOAT", {"default": 40.0, "min": 5.0, "max": 120.0, "step": 0.5}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 64}],
                "backend": ["COMBO", {"default": "auto", "multiselect": False, "options": ["auto", "moderngl", "nvdiffrast"]}],
            },
        },
        "input_order": {"required": ["hand_model", "pose", "width", "height", "fov", "batch_size", "backend"]},
        "output": ["IMAGE", "IMAGE", "IMAGE", "IMAGE", "MASK", "SESAHAND_HANDS"],
        "output_name": ["mesh", "depth", "normal", "pose", "mask", "hands"],
    },
    "SesaHandExportMesh": {
        "input": {
            "required": {
                "hands": ["SESAHAND_HANDS", {}],
                "filename_prefix": ["STRING", {"default": "sesahand/hands", "multiline": False}],
            },
        },
        "input_order": {"required": ["hands", "filename_prefix"]},
        "output": ["STRING"],
        "output_name": ["model_file"],
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {}],
                "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            },
        },
        "input_order": {"required": ["images", "filename_prefix"]},
        "output": [],
        "output_name": [],
    },
    "LoadImage": {
        "input": {
            "required": {
                "image": [[], {"image_upload": True}],
            },
        },
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
        "output_name": ["IMAGE", "MASK"],
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                "sampler_name": [["euler", "euler_cfg_pp"], {}],
                "scheduler": [["simple", "sgm_uniform"], {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            },
        },
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image", "denoise"]},
        "output": ["LATENT"],
        "output_name": ["LATENT"],
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "height": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            },
        },
        "input_order": {"required": ["width", "height", "batch_size"]},
        "output": ["LATENT"],
        "output_name": ["LATENT"],
    },
    "ImageInvert": {
        "input": {
            "required": {
                "image": ["IMAGE"],
            },
        },
        "input_order": {"required": ["image"]},
        "output": ["IMAGE"],
        "output_name": ["IMAGE"],
    },
}


def ui_node(node_id, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    """A node as the frontend saves it: ``inputs`` are (name, type, link id or None, is widget)."""
    node = {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
            "mode": mode, "properties": {},
            "inputs": [{"name": n, "type": t, "link": link, **({"widget": {"name": n}} if w else {})}
                       for n, t, link, w in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs], **extra}
    if widgets is not None:
        node["widgets_values"] = widgets
    return node


def hand_workflow() -> dict:
    """Hand Model -> Hand Pose (random) -> Reroute -> Render Conditions (width from a
    PrimitiveNode) -> bypassed Image Invert -> Save Image, + Export Mesh, a muted Image Invert
    feeding a second Save Image, and a Note."""
    nodes = [
        ui_node(1, "SesaHandHandModel", ["anny (open)", "", "left"],
                outputs=[("hand_model", "SESAHAND_HAND_MODEL", [1])]),
        ui_node(2, "SesaHandHandPose", ["random", "fist", 7, "randomize", 2, 40, 64, ""],
                outputs=[("pose", "SESAHAND_POSE", [2])]),
        ui_node(10, "Reroute", inputs=[("", "*", 2, False)], outputs=[("", "SESAHAND_POSE", [3])]),
        ui_node(11, "PrimitiveNode", [128, "fixed"], outputs=[("INT", "INT", [4])]),
        ui_node(3, "SesaHandRenderConditions", [512, 96, 40, 2, "auto"],
                inputs=[("hand_model", "SESAHAND_HAND_MODEL", 1, False), ("pose", "SESAHAND_POSE", 3, False),
                        ("width", "INT", 4, True)],
                outputs=[("mesh", "IMAGE", [5]), ("depth", "IMAGE", [8]), ("normal", "IMAGE", []),
                         ("pose", "IMAGE", []), ("mask", "MASK", []), ("hands", "SESAHAND_HANDS", [7])]),
        ui_node(4, "ImageInvert", inputs=[("image", "IMAGE", 5, False)], outputs=[("IMAGE", "IMAGE", [6])],
                mode=4),
        ui_node(5, "SaveImage", ["hands/img"], inputs=[("images", "IMAGE", 6, False)]),
        ui_node(6, "SesaHandExportMesh", ["hands/mesh"], inputs=[("hands", "SESAHAND_HANDS", 7, False)],
                outputs=[("model_file", "STRING", [])]),
        ui_node(7, "ImageInvert", inputs=[("image", "IMAGE", 8, False)], outputs=[("IMAGE", "IMAGE", [9])],
                mode=2),
        ui_node(8, "SaveImage", ["muted/img"], inputs=[("images", "IMAGE", 9, False)]),
        ui_node(12, "Note", ["remember the seeds"]),
    ]
    links = [[1, 1, 0, 3, 0, "SESAHAND_HAND_MODEL"], [2, 2, 0, 10, 0, "SESAHAND_POSE"],
             [3, 10, 0, 3, 1, "SESAHAND_POSE"], [4, 11, 0, 3, 2, "INT"], [5, 3, 0, 4, 0, "IMAGE"],
             [6, 4, 0, 5, 0, "IMAGE"], [7, 3, 5, 6, 0, "SESAHAND_HANDS"], [8, 3, 1, 7, 0, "IMAGE"],
             [9, 7, 0, 8, 0, "IMAGE"]]
    return {"last_node_id": 12, "last_link_id": 9, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def inputs_of(prompt: dict) -> dict:
    return {node_id: (node["class_type"], node["inputs"]) for node_id, node in prompt.items()}


def test_ui_to_api_converts_widgets_links_reroutes_primitives_bypass_and_mute():
    prompt = ui_to_api(hand_workflow(), OBJECT_INFO)
    assert inputs_of(prompt) == {
        "1": ("SesaHandHandModel", {"model": "anny (open)", "mano_file": "", "side": "left"}),
        # the "randomize" after the seed is the frontend's control widget, not an input
        "2": ("SesaHandHandPose", {"mode": "random", "preset": "fist", "seed": 7, "num_hands": 2,
                                   "box_min": 40, "box_max": 64, "pose_json": ""}),
        # width comes from the PrimitiveNode, the pose through the Reroute
        "3": ("SesaHandRenderConditions", {"hand_model": ["1", 0], "pose": ["2", 0], "width": 128,
                                           "height": 96, "fov": 40, "batch_size": 2, "backend": "auto"}),
        # the bypassed Image Invert passes node 3's image through
        "5": ("SaveImage", {"images": ["3", 0], "filename_prefix": "hands/img"}),
        "6": ("SesaHandExportMesh", {"hands": ["3", 5], "filename_prefix": "hands/mesh"}),
        # linked to a muted node: the link is dropped, as the frontend does
        "8": ("SaveImage", {"filename_prefix": "muted/img"}),
    }
    assert prompt["3"]["_meta"]["title"] == "SesaHandRenderConditions"


def test_ui_to_api_widget_value_layout():
    info = {**OBJECT_INFO,
            # a combo with control_after_generate stores a control value and a filter string
            "ComboControl": {"input": {"required": {"choice": [["a", "b"], {"control_after_generate": True}],
                                                    "n": ["INT", {"default": 3}]}},
                             "output": ["INT"]},
            # before frontend 1.16 a forceInput input left a dummy value in widgets_values
            "Forced": {"input": {"required": {"a": ["INT", {"forceInput": True}], "b": ["STRING", {}]},
                                 "optional": {"c": ["FLOAT", {"default": 0.5}]}},
                       "input_order": {"required": ["a", "b"], "optional": ["c"]}, "output": []},
            "ListWidget": {"input": {"required": {"points": ["STRING", {}]}}, "output": []}}
    workflow = {"nodes": [
        ui_node(1, "KSampler", [5, "fixed", 20, 7.5, "euler", "simple", 1.0]),
        ui_node(2, "LoadImage", ["hand.png", "image"], outputs=[("IMAGE", "IMAGE", []), ("MASK", "MASK", [])]),
        ui_node(3, "ComboControl", ["b", "increment", "", 4]),
        ui_node(4, "Forced", [0, "text", 0.25]),
        ui_node(5, "SaveImage"),  # no widgets_values: the defaults
        ui_node(6, "ListWidget", [[1, 2]]),
        ui_node(7, "EmptyLatentImage", {"height": 64, "width": 32}),  # values keyed by name
    ], "links": []}
    prompt = ui_to_api(workflow, info)
    assert inputs_of(prompt) == {
        "1": ("KSampler", {"seed": 5, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                           "scheduler": "simple", "denoise": 1.0}),
        "2": ("LoadImage", {"image": "hand.png"}),
        "3": ("ComboControl", {"choice": "b", "n": 4}),
        "4": ("Forced", {"b": "text", "c": 0.25}),
        "5": ("SaveImage", {"filename_prefix": "ComfyUI"}),
        "6": ("ListWidget", {"points": {"__value__": [1, 2]}}),
        "7": ("EmptyLatentImage", {"width": 32, "height": 64, "batch_size": 1}),
    }


def test_ui_to_api_bypass_matches_the_input_type_not_only_the_slot():
    # Bypassed KSampler: its LATENT output 0 passes through its latent_image input (slot 3), not
    # through slot 0 (MODEL).
    workflow = {"nodes": [
        ui_node(1, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [1])]),
        ui_node(2, "KSampler", [1, "fixed", 20, 8.0, "euler", "simple", 1.0], mode=4,
                inputs=[("model", "MODEL", None, False), ("positive", "CONDITIONING", None, False),
                        ("negative", "CONDITIONING", None, False), ("latent_image", "LATENT", 1, False)],
                outputs=[("LATENT", "LATENT", [2])]),
        ui_node(3, "KSampler", [2, "fixed", 20, 8.0, "euler", "simple", 1.0],
                inputs=[("latent_image", "LATENT", 2, False)]),
        ui_node(4, "SesaHandRenderConditions", [128, 128, 40.0, 1, "auto"], mode=4,
                inputs=[("hand_model", "SESAHAND_HAND_MODEL", None, False)],
                outputs=[("mesh", "IMAGE", [3])]),
        ui_node(5, "SaveImage", ["x"], inputs=[("images", "IMAGE", 3, False)]),
    ], "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 3, "type": "LATENT"},
                 {"id": 2, "origin_id": 2, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "LATENT"},
                 {"id": 3, "origin_id": 4, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "IMAGE"}]}
    prompt = ui_to_api(workflow, OBJECT_INFO)
    assert prompt["3"]["inputs"]["latent_image"] == ["1", 0]
    assert "images" not in prompt["5"]["inputs"]  # no IMAGE input to pass through: left unlinked
    assert set(prompt) == {"1", "3", "5"}


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update(definitions={"subgraphs": [{"id": "a1b2", "name": "Hands"}]})
     or w["nodes"].append(ui_node(20, "a1b2")), "subgraph ('Hands')"),
    (lambda w: w["nodes"].append(ui_node(20, "workflow>MyGroup")), "group node"),
    (lambda w: w["nodes"].append(ui_node(20, "SomePackNode")), "install the custom node pack"),
    (lambda w: w["nodes"][4]["inputs"][0].update(link=99), "link 99, which the workflow does not list"),
    (lambda w: [n.update(mode=2) for n in w["nodes"]], "no active node"),
])
def test_ui_to_api_refuses_what_it_cannot_convert(change, message):
    workflow = hand_workflow()
    change(workflow)
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ui_to_api(workflow, OBJECT_INFO)


def test_ui_to_api_ignores_muted_unknown_nodes():
    workflow = hand_workflow()
    workflow["nodes"].append(ui_node(20, "SomePackNode", mode=2))
    assert "20" not in ui_to_api(workflow, OBJECT_INFO)


def pose_node(mode: str) -> dict:
    return {"class_type": "SesaHandHandPose", "inputs": {"mode": mode, "preset": "fist", "seed": 0, "num_hands": 1,
                                                         "box_min": 40, "box_max": 64, "pose_json": ""}}


def api_prompt() -> dict:
    return {
        "1": {"class_type": "SesaHandHandModel", "inputs": {"model": "anny (open)", "mano_file": "", "side": "right"}},
        "2": pose_node("random"),
        "10": pose_node("random"),
        "4": pose_node("preset"),
        "5": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 4}},
        "6": {"class_type": "KSampler", "inputs": {"seed": ["9", 0], "steps": 4}},
        "3": {"class_type": "SesaHandRenderConditions",
              "inputs": {"hand_model": ["1", 0], "pose": ["2", 0], "width": 128, "height": 96, "fov": 40.0,
                         "batch_size": 1, "backend": "auto"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "q/img"}},
    }


def test_to_api_prompt_keeps_an_api_prompt_and_does_not_ask_the_server():
    prompt = api_prompt()

    def no_server():
        raise AssertionError("object_info must not be fetched for an API prompt")

    assert to_api_prompt(prompt, no_server) == prompt
    with pytest.raises(WorkflowError, match="neither"):
        to_api_prompt({"hello": 1}, no_server)


def test_vary_seed_sets_every_seed_value_and_pose_gives_each_random_pose_its_own_seed():
    prompt = api_prompt()
    varied_prompt, varied = vary_prompt(prompt, 3, 100, ("seed",))
    assert varied == {"2.seed": 103, "4.seed": 103, "5.seed": 103, "10.seed": 103}
    assert varied_prompt["6"]["inputs"]["seed"] == ["9", 0]  # a linked seed is left alone
    assert prompt["5"]["inputs"]["seed"] == 3  # the input prompt is not changed

    seeds = set()
    for index in range(4):
        varied_prompt, varied = vary_prompt(prompt, index, 100, ("pose",))
        assert set(varied) == {"2.seed", "10.seed"}  # random mode only; samplers untouched
        assert varied_prompt["5"]["inputs"]["seed"] == 3 and varied_prompt["4"]["inputs"]["seed"] == 0
        seeds.update(varied.values())
    assert seeds == set(range(100, 108))  # distinct per job and per node

    _, varied = vary_prompt(prompt, 2, 100, ("seed", "pose"))
    assert varied == {"2.seed": 104, "10.seed": 105, "4.seed": 102, "5.seed": 102}

    with pytest.raises(WorkflowError, match="no integer input named seed"):
        vary_prompt({"1": {"class_type": "SaveImage", "inputs": {}}}, 0, 0, ("seed",))
    preset_only = {k: v for k, v in prompt.items() if k not in ("2", "10")}
    with pytest.raises(WorkflowError, match="random mode"):
        vary_prompt(preset_only, 0, 0, ("pose",))


def test_manifest_appends_whole_lines_and_cuts_off_a_cut_one(tmp_path):
    manifest = Manifest(tmp_path / "out" / "manifest.jsonl")
    assert manifest.latest() == {}
    manifest.append({"job": 0, "status": "submitted"})
    manifest.append({"job": 0, "status": "done", "outputs": ["a.png"]})
    manifest.append({"job": 1, "status": "submitted"})
    with open(manifest.path, "ab") as f:
        f.write(b'{"job": 1, "status": "do')  # the process died in the middle of a write
    latest = Manifest(manifest.path).latest()  # a reader skips the cut line
    assert latest[0]["status"] == "done" and latest[0]["outputs"] == ["a.png"]
    assert latest[1]["status"] == "submitted"
    Manifest(manifest.path).append({"job": 1, "status": "done"})  # the next run's first append
    lines = manifest.path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["time"] for line in lines)
    assert manifest.latest()[1]["status"] == "done"


def test_format_rejection_and_history_outcome_read_the_server_replies():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                              "details": "mano_file: 'MANO_RIGHT.pkl' not in []",
                                              "extra_info": {}}],
                                  "dependent_outputs": ["4"], "class_type": "SesaHandHandModel"}}}
    assert format_rejection(body) == ("node 1 (SesaHandHandModel): Value not in list: "
                                      "mano_file: 'MANO_RIGHT.pkl' not in []")
    assert format_rejection({"error": {"message": "Prompt has no outputs", "details": ""},
                             "node_errors": {}}) == "Prompt has no outputs"
    interrupted = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {}], ["execution_interrupted", {"node_id": "3", "node_type": "SesaHandRenderConditions"}]]}}
    assert history_outcome(interrupted) == ("interrupted", "interrupted in node 3 (SesaHandRenderConditions)")
    failed = {"status": {"status_str": "error", "completed": False, "messages": [["execution_error", {
        "node_id": "3", "node_type": "SesaHandRenderConditions", "exception_type": "RuntimeError",
        "exception_message": "nvdiffrast backend: needs a CUDA device\n"}]]}}
    assert history_outcome(failed) == ("error", "node 3 (SesaHandRenderConditions): RuntimeError: "
                                                "nvdiffrast backend: needs a CUDA device")
    success = {"status": {"status_str": "success", "completed": True, "messages": []}}
    assert history_outcome(success) == ("success", None)


class FakeServer:
    """In-memory stand-in for a ComfyUI server. ``plan(prompt)`` says how a submitted prompt
    ends: "ok", "error" (execution error), "interrupt", "reject" (HTTP 400) or "down"."""

    def __init__(self, plan=lambda prompt: "ok"):
        self.plan = plan
        self.history: dict[str, dict] = {}
        self.queued: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.submitted: list[str] = []
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def finish(self, prompt_id: str, prompt: dict, outcome: str) -> None:
        self.queued.discard(prompt_id)
        if outcome == "ok":
            name = f"img_{next(self.counter):05d}_.png"
            self.files[name] = json.dumps(prompt, sort_keys=True).encode()
            self.history[prompt_id] = {
                "status": {"status_str": "success", "completed": True, "messages": []},
                "outputs": {"7": {"images": [{"filename": name, "subfolder": "q", "type": "output"},
                                             {"filename": "preview.png", "subfolder": "", "type": "temp"}]}}}
        else:
            event = ("execution_interrupted", {"node_id": "3", "node_type": "X"}) if outcome == "interrupt" else \
                ("execution_error", {"node_id": "3", "node_type": "X", "exception_type": "RuntimeError",
                                     "exception_message": "out of memory"})
            self.history[prompt_id] = {"status": {"status_str": "error", "completed": False,
                                                  "messages": [list(event)]}, "outputs": {}}


SERVERS: dict[str, FakeServer] = {}


class FakeClient:
    """The :class:`sesahand.queue.ComfyClient` interface on a :class:`FakeServer`."""

    def __init__(self, url):
        self.url = queue.normalize_url(url)
        self.server = SERVERS[self.url]

    def object_info(self):
        return OBJECT_INFO

    def submit(self, prompt, prompt_id):
        outcome = self.server.plan(prompt)
        if outcome == "down":
            raise TransportError(f"{self.url}: cannot connect", unreachable=True)
        if outcome == "reject":
            raise PromptRejected("node 3 (SesaHandRenderConditions): Custom validation failed for node: "
                                 "width - width 100 is not a multiple of 8")
        with self.server.lock:
            self.server.submitted.append(prompt_id)
            self.server.finish(prompt_id, prompt, outcome)

    def history(self, prompt_id):
        return self.server.history.get(prompt_id)

    def queued(self):
        return set(self.server.queued)

    def wait(self, prompt_id, on_progress=None):
        if prompt_id in self.server.queued:  # a prompt an earlier run left in the queue ends now
            self.server.finish(prompt_id, {"resumed": prompt_id}, "ok")
        if prompt_id not in self.server.history:
            raise TransportError(f"{self.url}: prompt {prompt_id} is neither queued nor in the history")
        return self.server.history[prompt_id]

    def view(self, item):
        return self.server.files[item["filename"]]

    def close(self):
        pass


@pytest.fixture
def fake_servers():
    SERVERS.clear()
    yield SERVERS
    SERVERS.clear()


def job_index(prompt: dict) -> int:
    return prompt["2"]["inputs"]["seed"]  # with --seed 0 --vary pose and one random pose node


def one_pose_prompt() -> dict:
    prompt = api_prompt()
    del prompt["10"]
    return prompt


def run(out, count, servers=("http://a:1",), **kwargs):
    kwargs.setdefault("vary", ("pose",))
    return run_queue(list(servers), one_pose_prompt(), count=count, out=out, client_factory=FakeClient, **kwargs)


def test_run_queue_downloads_outputs_and_records_every_job(tmp_path, fake_servers):
    fake_servers["http://a:1"] = server = FakeServer()
    report = run(tmp_path, 3)
    assert report.ok and report.submitted == 3
    assert [r.status for r in report.results] == ["done"] * 3
    for result in report.results:
        assert result.varied == {"2.seed": result.index} and result.attempts == 1
        assert len(result.outputs) == 1  # the saved image; the temp preview is not fetched
        saved = json.loads((tmp_path / result.outputs[0]).read_bytes())
        assert saved["2"]["inputs"]["seed"] == result.index  # job i's file came from job i's prompt
        assert result.outputs[0].startswith(f"job_{result.index:05d}/q/")
    records = Manifest(tmp_path / "manifest.jsonl").records()
    assert sorted(r["job"] for r in records if r["status"] == "done") == [0, 1, 2]
    assert sorted(r["prompt_id"] for r in records if r["status"] == "submitted") == sorted(server.submitted)


def test_run_queue_resumes_an_interrupted_run_without_duplicates(tmp_path, fake_servers):
    fake_servers["http://a:1"] = server = FakeServer()
    assert run(tmp_path, 2).submitted == 2
    # Simulate a run killed after posting jobs 2, 3 and 4: job 2 has finished on the server since,
    # job 3 is still in its queue, job 4's POST never arrived.
    manifest = Manifest(tmp_path / "manifest.jsonl")
    for index, prompt_id in ((2, "p-finished"), (3, "p-queued"), (4, "p-lost")):
        prompt, varied = vary_prompt(one_pose_prompt(), index, 0, ("pose",))
        manifest.append({"job": index, "status": "submitted", "attempt": 1, "server": "http://a:1",
                         "prompt_id": prompt_id, "varied": varied, "prompt_sha": prompt_digest(prompt)})
        if index == 2:
            server.finish(prompt_id, prompt, "ok")
        elif index == 3:
            server.queued.add(prompt_id)
    lines_before = len(manifest.records())

    report = run(tmp_path, 5)
    assert report.ok and report.submitted == 1  # only job 4 was posted again
    assert len(server.submitted) == 3
    by_index = {r.index: r for r in report.results}
    assert by_index[2].prompt_id == "p-finished" and by_index[3].prompt_id == "p-queued"
    assert by_index[0].attempts == 0 and by_index[4].attempts == 1
    for result in report.results:
        assert (tmp_path / result.outputs[0]).is_file()
    assert len(manifest.records()) == lines_before + 4  # jobs 2, 3 "done"; job 4 "submitted", "done"

    lines = manifest.path.read_text()
    again = run(tmp_path, 5)
    assert again.ok and again.submitted == 0 and manifest.path.read_text() == lines


def test_run_queue_refuses_an_output_folder_of_another_run(tmp_path, fake_servers):
    fake_servers["http://a:1"] = FakeServer()
    run(tmp_path, 2)
    with pytest.raises(WorkflowError, match="different prompt"):
        run(tmp_path, 2, seed=50)


def test_execution_errors_are_retried_a_bounded_number_of_times(tmp_path, fake_servers):
    fake_servers["http://a:1"] = server = FakeServer(lambda prompt: "error" if job_index(prompt) == 1 else "ok")
    report = run(tmp_path, 3, retries=2)
    failed = report.results[1]
    assert failed.status == "failed" and failed.attempts == 3
    assert "node 3 (X): RuntimeError: out of memory" in failed.error and "after 3 attempts" in failed.error
    assert [r.status for r in report.results] == ["done", "failed", "done"]
    assert not report.ok and len(server.submitted) == 5
    statuses = [r["status"] for r in Manifest(tmp_path / "manifest.jsonl").records() if r["job"] == 1]
    assert statuses == ["submitted", "retrying", "submitted", "retrying", "submitted", "failed"]

    report = run(tmp_path / "no-retries", 3, retries=0)
    assert report.results[1].attempts == 1 and report.results[1].status == "failed"


def test_rejected_and_interrupted_jobs_are_not_retried(tmp_path, fake_servers):
    outcomes = {0: "reject", 1: "interrupt", 2: "ok"}
    fake_servers["http://a:1"] = FakeServer(lambda prompt: outcomes[job_index(prompt)])
    report = run(tmp_path, 3, retries=5)
    rejected, interrupted, done = report.results
    assert (rejected.status, rejected.attempts) == ("failed", 1)
    assert "not a multiple of 8" in rejected.error and rejected.error.startswith("rejected by the server")
    assert (interrupted.status, interrupted.attempts) == ("interrupted", 1)
    assert done.status == "done"


def test_jobs_spread_over_servers_and_avoid_an_unreachable_one(tmp_path, fake_servers):
    fake_servers["http://a:1"] = a = FakeServer()
    fake_servers["http://b:2"] = b = FakeServer()
    report = run(tmp_path / "both", 6, servers=("http://a:1", "b:2"))
    assert report.ok and len(a.submitted) + len(b.submitted) == 6
    assert {r.server for r in report.results} <= {"http://a:1", "http://b:2"}

    fake_servers["http://a:1"] = FakeServer(lambda prompt: "down")
    fake_servers["http://b:2"] = b = FakeServer()
    report = run(tmp_path / "one-down", 4, servers=("http://a:1", "http://b:2"))
    assert report.ok and len(b.submitted) == 4
    assert all(r.server == "http://b:2" for r in report.results)

    fake_servers["http://b:2"] = FakeServer(lambda prompt: "down")
    report = run(tmp_path / "all-down", 3, servers=("http://a:1", "http://b:2"), retries=5)
    assert [r.status for r in report.results] == ["failed"] * 3
    assert all("cannot connect" in r.error for r in report.results)


def test_queue_command_exit_status_and_summary(tmp_path, fake_servers, monkeypatch, capsys):
    monkeypatch.setattr(queue, "ComfyClient", FakeClient)
    fake_servers["http://127.0.0.1:8188"] = FakeServer(lambda prompt: "reject" if job_index(prompt) == 1 else "ok")
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(hand_workflow()))  # UI format: converted with the fake /object_info
    args = ["queue", "--workflow", str(workflow), "--count", "3", "--vary", "pose", "--out", str(tmp_path / "out")]
    assert main(args) == 1
    summary = capsys.readouterr().out
    assert "3 jobs: 2 done, 1 failed, 0 interrupted; 2 prompts queued" in summary
    assert "not a multiple of 8" in summary and "http://127.0.0.1:8188" in summary

    with pytest.raises(SystemExit):
        main(["queue", "--workflow", str(workflow), "--vary", "seed,nope"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["queue", "--workflow", str(bad)]) == 2
