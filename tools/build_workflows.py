"""Build the shipped workflows from a real ComfyUI's ``/object_info``.

Writes, for each workflow NAME of :data:`WORKFLOWS`:

* ``workflows/NAME.json``: the UI (graph) workflow, format version 0.4, as the ComfyUI
  frontend 1.27 (shipped with ComfyUI 0.3.64) would save it;
* ``workflows/NAME.jpg``: its thumbnail for ComfyUI's template browser: the condition maps the
  workflow previews, rendered by the library for the workflow's own pose (not a generated
  picture);
* ``tests/workflows/NAME.json``: the API-format copy, converted by
  :func:`sesahand.queue.ui_to_api` with the same ``/object_info``.

Usage (from the repository root)::

    python tools/build_workflows.py                 # starts a headless ComfyUI with the pack
    python tools/build_workflows.py --server URL    # or asks a running one

Each workflow is a small description (:class:`Spec`): node type, title, widget values, control
modes and links **by input and output name**. Everything positional (the inputs list, the order
of ``widgets_values``, the extra ``control_after_generate`` values, link slots) is derived from
``/object_info`` with the frontend's rules (:mod:`sesahand.comfy_graph`, shared with the queue):

* a node's ``inputs`` list holds first the inputs that are sockets only (types without a widget,
  or ``forceInput``), then the widget inputs (``"widget": {"name"}``), each group in
  ``input_order`` (required, then optional; optional inputs get ``shape`` 7); as when the
  frontend saves a workflow, widget inputs without a link are left out and link slots count
  in the list saved;
* ``widgets_values`` has one value per widget input in that order; an INT input with
  ``control_after_generate`` (or, when the flag is absent, named ``seed`` / ``noise_seed``) is
  followed by its control mode, a COMBO input with the flag by its mode and filter text;
* links carry the input's type; ``order`` is LiteGraph's execution order (Kahn's algorithm over
  the nodes in list order).

Values are checked against the input specs (combo options, min/max); the model-file inputs of
:data:`MODEL_INPUTS` take the file names users put in place, which the build server need not
have (ComfyUI checks combo values only when a prompt is queued). Nodes are laid out left to
right in the columns the specs give, stacked top-down.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from sesahand.attention import DEFAULT_ALPHA
from sesahand.io import atomic_write_bytes, to_uint8
from sesahand.comfy_graph import CONTROL_MODES, VIRTUAL_NODES, NodeInput, combo_choices, input_options, input_spec
from sesahand.comfy_graph import node_inputs as frontend_inputs
from sesahand.queue import ui_to_api

log = logging.getLogger("build_workflows")

WORKFLOW_DIR = REPO / "workflows"
API_DIR = REPO / "tests" / "workflows"
#: Model-file combo inputs -> the ComfyUI model folder their files live in. Their values are the
#: names users give their files; they are not checked against the build server's lists.
MODEL_INPUTS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "mano_file": "mano",
                "vlm": "LLM", "llm": "LLM"}
#: File combo inputs whose files live in ComfyUI's input folder (Load Image's ``image``).
INPUT_FILES = ("image",)
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # LiteGraph's yellow, as the frontend gives Note nodes

# Layout (pixels). LiteGraph draws the title bar above a node's position.
TITLE_H, SLOT_H, WIDGET_H = 30, 20, 20
MULTILINE_H = 80
COLUMN_GAP, ROW_GAP = 50, 30
NODE_W, NOTE_W = 320, 400
THUMB_TILE = 256


@dataclass(frozen=True)
class Spec:
    """One node of a workflow description.

    Attributes:
        key: the node's name inside the description (links refer to it).
        type: the node type (``/object_info`` key, or ``Note``).
        column: layout column, 0 = leftmost.
        title: shown title; None keeps the node's display name.
        values: widget values by input name (inputs left out take their ``default``).
        controls: ``control_after_generate`` mode by input name (default ``randomize``, as the
            frontend).
        links: input name -> ``"node_key.output_name"``.
        size: (width, height) instead of the computed one.
        text: the text of a ``Note``.
        mode: LiteGraph node mode: 0 always, 4 bypassed (left out of the prompt).
        group: title of the group box drawn around the nodes that name it.
    """

    key: str
    type: str
    column: int
    title: str | None = None
    values: Mapping[str, object] = field(default_factory=dict)
    controls: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    text: str = ""
    mode: int = 0
    group: str | None = None


# --------------------------------------------------------------------------- the workflows

POSITIVE = ("a close-up photo of a human hand, open palm facing the camera, five fingers, "
            "natural skin texture, detailed fingers and nails, soft daylight, sharp focus")
POSITIVE_RANDOM = ("a close-up photo of a human hand, natural skin texture, detailed fingers and "
                   "nails, soft daylight, sharp focus")
NEGATIVE = ("deformed hand, extra fingers, missing fingers, fused fingers, bad anatomy, blurry, "
            "lowres, cartoon, drawing, watermark, text")
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SESAHAND_CONTROLNET = "sesahand_controlnet.safetensors"
HANDREFINER_CONTROLNET = "control_sd15_inpaint_depth_hand_fp16.safetensors"
QUEUE_COMMAND = ("python -m sesahand queue --server http://127.0.0.1:8188 --workflow "
                 "workflows/sesahand_random_batch.json --count 100 --seed 0 --vary pose,seed "
                 "--out runs/hands")

MANO_LINE = ("models/mano (optional): MANO_RIGHT.pkl / MANO_LEFT.pkl from https://mano.is.tue.mpg.de "
             "(free registration, non-commercial licence), for Hand Model 'mano'. The open hand "
             "'anny (open)' needs no file: it is built once (1-3 minutes) and cached in "
             "models/sesahand.")
SESAHAND_NOTE = (
    "Model files (put them in ComfyUI/models/..., then press R to refresh the lists)\n\n"
    f"- models/checkpoints: a Stable Diffusion 1.5 checkpoint, e.g. {CHECKPOINT} (Load Checkpoint).\n"
    f"- models/controlnet or models/sesahand: SesaHand ControlNet weights (named {SESAHAND_CONTROLNET} "
    "here: choose your file) or any SD1.5 ControlNet (SesaHand Load ControlNet). SesaHand weights take "
    "the mesh map; with another ControlNet, connect the Render Conditions output it was trained on "
    "(depth, normal, pose) to Apply Hand Control's image.\n"
    f"- {MANO_LINE}"
)
DATASET_LINE = ("SesaHand Save Dataset Sample adds each image with its hand labels and condition "
                "maps to output/<dataset>/. Its seed -1 records 'unknown': the queue command's "
                "--vary seed sets it to the sampler's seed of each job.")
SESAHAND_HOWTO = (
    "How it works\n\n"
    "The Prompt node feeds both the positive CLIP Text Encode and the sampler's prompt input: "
    "hand attention biases the hand words of exactly that text. Its alpha and layers come from "
    "SesaHand Load ControlNet: the settings the weights were trained with (disconnect them to "
    "set your own; alpha 0 turns it off). The latent follows the rendered size and batch (Get Image Size); change width, height and "
    "batch_size on SesaHand Render Conditions. The previews show the condition maps.\n\n"
    f"{DATASET_LINE}"
)
RANDOM_HOWTO = (
    "Random hands, many runs\n\n"
    "Hand Pose is in random mode and both seeds are set to randomize after each run. To queue "
    "many jobs from a script, each with its own pose and noise seed:\n\n"
    f"{QUEUE_COMMAND}\n\n"
    "The prompt node feeds the positive CLIP Text Encode and the sampler's hand attention.\n\n"
    f"{DATASET_LINE}"
)
HANDREFINER_NOTE = (
    "Model files (put them in ComfyUI/models/..., then press R to refresh the lists)\n\n"
    f"- models/checkpoints: a Stable Diffusion 1.5 checkpoint, e.g. {CHECKPOINT}.\n"
    f"- models/controlnet: HandRefiner's hand-depth ControlNet {HANDREFINER_CONTROLNET} "
    "(https://huggingface.co/hr16/ControlNet-HandRefiner-pruned). No SesaHand weights are "
    "needed: SesaHand only renders the hand depth map it expects (near bright, background "
    "black). Its authors advise a control strength of 0.4-0.8.\n"
    f"- {MANO_LINE}"
)


def _rendered_hand(note: str, pose_values: dict, seed_control: str, previews: tuple[str, ...],
                   checkpoint: str = CHECKPOINT, size: int = 512) -> list[Spec]:
    """The nodes every workflow starts with: the model note, Load Checkpoint (``checkpoint``),
    the open hand, its pose, Render Conditions (``size`` x ``size``), a latent of the render's
    size (read from the first preview's map) and previews of ``previews``."""
    return [
        Spec("note_models", "Note", 0, title="Model files", text=note),
        Spec("checkpoint", "CheckpointLoaderSimple", 0, values={"ckpt_name": checkpoint}),
        Spec("hand_model", "SesaHandHandModel", 0,
             values={"model": "anny (open)", "mano_file": "none", "side": "right"}),
        Spec("pose", "SesaHandHandPose", 0, values=pose_values, controls={"seed": seed_control}),
        Spec("render", "SesaHandRenderConditions", 1,
             values={"width": size, "height": size, "fov": 40.0, "batch_size": 1, "backend": "auto"},
             links={"hand_model": "hand_model.hand_model", "pose": "pose.pose"}),
        Spec("size", "GetImageSize", 1, links={"image": f"render.{previews[0]}"}),
        Spec("latent", "EmptyLatentImage", 1,
             links={"width": "size.width", "height": "size.height", "batch_size": "size.batch_size"}),
        *[Spec(f"preview_{name}", "PreviewImage", 2, title=f"Preview {name}", size=(260, 280),
               links={"images": f"render.{name}"}) for name in previews],
    ]


def _sesahand_workflow(random_pose: bool) -> list[Spec]:
    seed_control = "randomize" if random_pose else "fixed"
    pose_values = {"mode": "random", "seed": 0} if random_pose else {"mode": "preset", "preset": "open_palm"}
    return [
        *_rendered_hand(SESAHAND_NOTE, {**pose_values, "pose_json": ""}, seed_control,
                        previews=("mesh", "depth", "normal", "pose")),
        Spec("prompt", "PrimitiveStringMultiline", 3, title="Prompt",
             values={"value": POSITIVE_RANDOM if random_pose else POSITIVE}),
        Spec("positive", "CLIPTextEncode", 3, title="Positive prompt", values={"text": ""},
             links={"clip": "checkpoint.CLIP", "text": "prompt.STRING"}),
        Spec("negative", "CLIPTextEncode", 3, title="Negative prompt", values={"text": NEGATIVE},
             links={"clip": "checkpoint.CLIP"}),
        Spec("controlnet", "SesaHandLoadControlNet", 3, values={"control_net_name": SESAHAND_CONTROLNET}),
        Spec("apply", "SesaHandApplyHandControl", 4,
             values={"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "fusion": "from file",
                     "fusion_weight": 1.0},
             links={"positive": "positive.CONDITIONING", "negative": "negative.CONDITIONING",
                    "control_net": "controlnet.control_net", "image": "render.mesh"}),
        Spec("sampler", "SesaHandHandAttentionSampler", 4,
             values={"seed": 0 if random_pose else 42, "steps": 25, "cfg": 7.0,
                     "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0, "hand_terms": "",
                     "alpha": DEFAULT_ALPHA, "layers": "decoder", "start_percent": 0.0, "end_percent": 1.0},
             controls={"seed": seed_control},
             links={"model": "checkpoint.MODEL", "positive": "apply.positive", "negative": "apply.negative",
                    "latent_image": "latent.LATENT", "clip": "checkpoint.CLIP", "prompt": "prompt.STRING",
                    "alpha": "controlnet.alpha", "layers": "controlnet.layers"}),
        Spec("decode", "VAEDecode", 5, links={"samples": "sampler.LATENT", "vae": "checkpoint.VAE"}),
        Spec("save", "SaveImage", 5, size=(400, 440),
             values={"filename_prefix": "sesahand/random" if random_pose else "sesahand/hand"},
             links={"images": "decode.IMAGE"}),
        Spec("dataset", "SesaHandSaveDatasetSample", 5,
             values={"dataset": "sesahand_random" if random_pose else "sesahand_dataset", "prompt": "",
                     "semantics": "", "seed": -1, "sampler_settings": "", "alignment_threshold": 0.0},
             links={"images": "decode.IMAGE", "hands": "render.hands", "prompt": "prompt.STRING",
                    "mesh": "render.mesh", "depth": "render.depth", "normal": "render.normal",
                    "mask": "render.mask"}),
        Spec("note_howto", "Note", 5, title="How it works",
             text=RANDOM_HOWTO if random_pose else SESAHAND_HOWTO),
    ]


def _handrefiner_workflow() -> list[Spec]:
    return [
        *_rendered_hand(HANDREFINER_NOTE, {"mode": "preset", "preset": "open_palm", "pose_json": ""}, "fixed",
                        previews=("depth", "mesh")),
        Spec("positive", "CLIPTextEncode", 3, title="Positive prompt", values={"text": POSITIVE},
             links={"clip": "checkpoint.CLIP"}),
        Spec("negative", "CLIPTextEncode", 3, title="Negative prompt", values={"text": NEGATIVE},
             links={"clip": "checkpoint.CLIP"}),
        Spec("controlnet", "ControlNetLoader", 3, values={"control_net_name": HANDREFINER_CONTROLNET}),
        Spec("apply", "ControlNetApplyAdvanced", 4,
             values={"strength": 0.7, "start_percent": 0.0, "end_percent": 1.0},
             links={"positive": "positive.CONDITIONING", "negative": "negative.CONDITIONING",
                    "control_net": "controlnet.CONTROL_NET", "image": "render.depth"}),
        Spec("sampler", "KSampler", 4,
             values={"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                     "denoise": 1.0},
             controls={"seed": "fixed"},
             links={"model": "checkpoint.MODEL", "positive": "apply.positive", "negative": "apply.negative",
                    "latent_image": "latent.LATENT"}),
        Spec("decode", "VAEDecode", 5, links={"samples": "sampler.LATENT", "vae": "checkpoint.VAE"}),
        Spec("save", "SaveImage", 5, size=(400, 440), values={"filename_prefix": "sesahand/handrefiner_depth"},
             links={"images": "decode.IMAGE"}),
    ]


PHOTO_FILE = "sesahand_photo.jpg"
#: The shipped real photo the demo copies into ComfyUI's input folder as PHOTO_FILE.
DEMO_PHOTO = REPO / "tests" / "data" / "photos" / "two_hands_back.jpg"
CAPTION_GROUP = "Behaviour captioner (optional: needs a VLM and an LLM in models/LLM)"
PHOTO_NOTE = (
    "Files (put them in ComfyUI/..., then press R to refresh the lists)\n\n"
    f"- input: your photo (here {PHOTO_FILE}); or upload one in Load Image.\n"
    "- models/sesahand: hand_landmarker.task, MediaPipe's hand landmarker (python -m sesahand "
    "qa-model builds it from the mediapipe 0.10.21 wheel; see the README), for Hand Pose from Image.\n"
    f"- models/checkpoints: a Stable Diffusion 1.5 checkpoint, e.g. {CHECKPOINT}.\n"
    f"- models/controlnet or models/sesahand: SesaHand ControlNet weights ({SESAHAND_CONTROLNET} here).\n"
    f"- {MANO_LINE}"
)
PHOTO_HOWTO = (
    "From a photo\n\n"
    "SesaHand Hand Pose from Image finds the hands in the photo (MediaPipe) and fits the hand model "
    "to each; its overlay shows detected keypoints (magenta), fitted joints (green) and the mesh "
    "outline (red: a hand left out, with the reason in the node's text). Render Conditions draws "
    "the fitted hands pixel-aligned with the photo framed to width x height (letterbox here).\n\n"
    "The captioner group is bypassed: to describe the photo, put a VLM and an LLM in models/LLM, "
    "select the group, press Ctrl+B, and connect Behaviour Captioner's prompt to the Prompt's two "
    "consumers.\n\n"
    f"{DATASET_LINE}"
)
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_UNION_CONTROLNET = "controlnet-union-sdxl-1.0-promax.safetensors"
SD15_DEPTH_CONTROLNET = "control_v11f1p_sd15_depth_fp16.safetensors"
SD15_OPENPOSE_CONTROLNET = "control_v11p_sd15_openpose_fp16.safetensors"
SDXL_UNION_NOTE = (
    "Model files (put them in ComfyUI/models/..., then press R to refresh the lists)\n\n"
    f"- models/checkpoints: an SDXL base checkpoint, e.g. {SDXL_CHECKPOINT} "
    "(https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0).\n"
    f"- models/controlnet: an SDXL union ControlNet, e.g. xinsir's controlnet-union-sdxl-1.0 "
    f"(https://huggingface.co/xinsir/controlnet-union-sdxl-1.0, file "
    f"diffusion_pytorch_model_promax.safetensors saved as {SDXL_UNION_CONTROLNET}). The same "
    "file is used twice: Set Union ControlNet Type picks depth for the rendered hand depth map "
    "and openpose for the OpenPose hand map. No SesaHand weights are needed.\n"
    f"- {MANO_LINE}"
)
SD15_STACK_NOTE = (
    "Model files (put them in ComfyUI/models/..., then press R to refresh the lists)\n\n"
    f"- models/checkpoints: a Stable Diffusion 1.5 checkpoint, e.g. {CHECKPOINT}.\n"
    f"- models/controlnet: ControlNet 1.1 depth and openpose, e.g. {SD15_DEPTH_CONTROLNET} and "
    f"{SD15_OPENPOSE_CONTROLNET} (https://huggingface.co/comfyanonymous/"
    "ControlNet-v1-1_fp16_safetensors; originals: lllyasviel/ControlNet-v1-1). No SesaHand "
    "weights are needed.\n"
    f"- {MANO_LINE}"
)
PUBLIC_HOWTO = (
    "How it works\n\n"
    "SesaHand renders the hand's depth and OpenPose maps; two ControlNet applications stack "
    "them on the prompt (core nodes). The Prompt node feeds the positive CLIP Text Encode and "
    "the Hand-Attention Sampler, which adds alpha to the attention of the prompt's hand words "
    "(0 turns it off).\n\n"
    f"{DATASET_LINE}"
)


def _photo_workflow() -> list[Spec]:
    """Load Image -> (captioner, bypassed) -> Hand Pose from Image -> Render Conditions -> the
    generate workflow's ControlNet, sampler and savers."""
    base = {s.key: s for s in _sesahand_workflow(random_pose=False)}
    return [
        replace(base["note_models"], title="Files", text=PHOTO_NOTE),
        base["checkpoint"],
        Spec("photo", "LoadImage", 0, title="Photo", values={"image": PHOTO_FILE}),
        base["hand_model"],
        Spec("photo_pose", "SesaHandHandPoseFromImage", 1,
             values={"hands": "all", "min_score": 0.5, "fov": 50.0, "width": 512, "height": 512,
                     "framing": "letterbox", "task_file": ""},
             links={"image": "photo.IMAGE", "hand_model": "hand_model.hand_model"}),
        replace(base["render"], column=1, links={"hand_model": "hand_model.hand_model", "pose": "photo_pose.pose"}),
        base["size"], base["latent"],
        Spec("preview_overlay", "PreviewImage", 2, title="Preview fit overlay", size=(260, 280),
             links={"images": "photo_pose.overlay"}),
        base["preview_mesh"], base["preview_depth"],
        Spec("semantics_models", "SesaHandLoadSemanticsModels", 2, mode=4, group=CAPTION_GROUP,
             values={"vlm": "Qwen2-VL-2B-Instruct", "llm": "Qwen2.5-1.5B-Instruct"}),
        Spec("captioner", "SesaHandBehaviourCaptioner", 2, mode=4, group=CAPTION_GROUP,
             links={"models": "semantics_models.models", "image": "photo.IMAGE", "hands": "render.hands"}),
        replace(base["prompt"], values={"value": POSITIVE_RANDOM}),
        *(base[k] for k in ("positive", "negative", "controlnet", "apply", "sampler", "decode")),
        replace(base["save"], values={"filename_prefix": "sesahand/from_photo"}),
        replace(base["dataset"], values={**base["dataset"].values, "dataset": "sesahand_from_photo"}),
        replace(base["note_howto"], title="How it works", text=PHOTO_HOWTO),
    ]


def _public_controlnet_workflow(sdxl: bool) -> list[Spec]:
    """SDXL + a union ControlNet (depth and openpose modes), or SD1.5 + depth and openpose
    ControlNets stacked; hand attention in the sampler; saved with labels."""
    if sdxl:
        loaders = [
            Spec("controlnet", "ControlNetLoader", 3, values={"control_net_name": SDXL_UNION_CONTROLNET}),
            Spec("type_depth", "SetUnionControlNetType", 3, title="Union type: depth",
                 values={"type": "depth"}, links={"control_net": "controlnet.CONTROL_NET"}),
            Spec("type_pose", "SetUnionControlNetType", 3, title="Union type: openpose",
                 values={"type": "openpose"}, links={"control_net": "controlnet.CONTROL_NET"}),
        ]
        depth_net, pose_net = "type_depth.CONTROL_NET", "type_pose.CONTROL_NET"
    else:
        loaders = [
            Spec("controlnet", "ControlNetLoader", 3, title="Depth ControlNet",
                 values={"control_net_name": SD15_DEPTH_CONTROLNET}),
            Spec("controlnet_pose", "ControlNetLoader", 3, title="OpenPose ControlNet",
                 values={"control_net_name": SD15_OPENPOSE_CONTROLNET}),
        ]
        depth_net, pose_net = "controlnet.CONTROL_NET", "controlnet_pose.CONTROL_NET"
    prefix = "sesahand/sdxl_union" if sdxl else "sesahand/sd15_depth_openpose"
    return [
        *_rendered_hand(SDXL_UNION_NOTE if sdxl else SD15_STACK_NOTE,
                        {"mode": "preset", "preset": "open_palm", "pose_json": ""}, "fixed",
                        previews=("depth", "pose"), checkpoint=SDXL_CHECKPOINT if sdxl else CHECKPOINT,
                        size=1024 if sdxl else 512),
        Spec("prompt", "PrimitiveStringMultiline", 3, title="Prompt", values={"value": POSITIVE}),
        Spec("positive", "CLIPTextEncode", 3, title="Positive prompt", values={"text": ""},
             links={"clip": "checkpoint.CLIP", "text": "prompt.STRING"}),
        Spec("negative", "CLIPTextEncode", 3, title="Negative prompt", values={"text": NEGATIVE},
             links={"clip": "checkpoint.CLIP"}),
        *loaders,
        Spec("apply_depth", "ControlNetApplyAdvanced", 4, title="Apply depth",
             values={"strength": 0.6, "start_percent": 0.0, "end_percent": 0.8},
             links={"positive": "positive.CONDITIONING", "negative": "negative.CONDITIONING",
                    "control_net": depth_net, "image": "render.depth"}),
        Spec("apply_pose", "ControlNetApplyAdvanced", 4, title="Apply OpenPose hand",
             values={"strength": 0.6, "start_percent": 0.0, "end_percent": 0.8},
             links={"positive": "apply_depth.positive", "negative": "apply_depth.negative",
                    "control_net": pose_net, "image": "render.pose"}),
        Spec("sampler", "SesaHandHandAttentionSampler", 4,
             values={"seed": 42, "steps": 30 if sdxl else 25, "cfg": 6.0 if sdxl else 7.0,
                     "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0, "hand_terms": "",
                     "alpha": DEFAULT_ALPHA, "layers": "decoder", "start_percent": 0.0, "end_percent": 1.0},
             controls={"seed": "fixed"},
             links={"model": "checkpoint.MODEL", "positive": "apply_pose.positive",
                    "negative": "apply_pose.negative", "latent_image": "latent.LATENT",
                    "clip": "checkpoint.CLIP", "prompt": "prompt.STRING"}),
        Spec("decode", "VAEDecode", 5, links={"samples": "sampler.LATENT", "vae": "checkpoint.VAE"}),
        Spec("save", "SaveImage", 5, size=(400, 440), values={"filename_prefix": prefix},
             links={"images": "decode.IMAGE"}),
        Spec("dataset", "SesaHandSaveDatasetSample", 5,
             values={"dataset": "sesahand_sdxl_union" if sdxl else "sesahand_sd15_depth_openpose",
                     "prompt": "", "semantics": "", "seed": -1, "sampler_settings": "",
                     "alignment_threshold": 0.0},
             links={"images": "decode.IMAGE", "hands": "render.hands", "prompt": "prompt.STRING",
                    "depth": "render.depth", "mask": "render.mask"}),
        Spec("note_howto", "Note", 5, title="How it works", text=PUBLIC_HOWTO),
    ]


#: Workflow name -> its description.
WORKFLOWS: dict[str, list[Spec]] = {
    "sesahand_generate": _sesahand_workflow(random_pose=False),
    "sesahand_random_batch": _sesahand_workflow(random_pose=True),
    "sesahand_with_handrefiner_depth": _handrefiner_workflow(),
    "sesahand_from_photo": _photo_workflow(),
    "sesahand_sdxl_union": _public_controlnet_workflow(sdxl=True),
    "sesahand_sd15_depth_openpose": _public_controlnet_workflow(sdxl=False),
}


# --------------------------------------------------------------------------- frontend rules

def node_inputs(node_type: str, info: dict) -> list[NodeInput]:
    """The ``inputs`` list the frontend builds for a node of ``info`` (an ``/object_info`` entry):
    socket-only inputs, then widget inputs, each in the frontend's order
    (:func:`sesahand.comfy_graph.node_inputs`).

    Raises:
        ValueError: an input whose widget this builder does not model (uploads, multi-select,
            remote combos, custom ``widgetType``).
    """
    slots = frontend_inputs(info)
    for slot in slots:
        if any(slot.options.get(k) for k in ("video_upload", "animated_image_upload",
                                             "multiselect", "multi_select", "remote", "widgetType")):
            raise ValueError(f"{node_type}.{slot.name}: this builder does not model its widget "
                             f"({sorted(slot.options)}); use another node")
    return [s for s in slots if not s.widget] + [s for s in slots if s.widget]


def _check_value(where: str, slot: NodeInput, value) -> None:
    options = input_options(slot.spec)
    if slot.type == "COMBO":
        if slot.name not in MODEL_INPUTS and slot.name not in INPUT_FILES \
                and value not in combo_choices(slot.spec):
            raise ValueError(f"{where}: {value!r} is not one of {combo_choices(slot.spec)}")
        return
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}.get(slot.type)
    if expected is None:
        raise ValueError(f"{where}: this builder does not write {slot.type} widgets")
    if not isinstance(value, expected) or (slot.type != "BOOLEAN" and isinstance(value, bool)):
        raise ValueError(f"{where}: expected a {slot.type} value, got {value!r}")
    if slot.type in ("INT", "FLOAT"):
        low, high = options.get("min", -math.inf), options.get("max", math.inf)
        if not low <= value <= high:
            raise ValueError(f"{where}: {value} is outside {low}..{high}")


def _widget_values(spec: Spec, slots: list[NodeInput]) -> list:
    values = []
    for slot in slots:
        if not slot.widget:
            continue
        where = f"{spec.key} ({spec.type}) input {slot.name!r}"
        if slot.name in spec.values:
            value = spec.values[slot.name]
        elif "default" in input_options(slot.spec):
            value = input_options(slot.spec)["default"]
        else:
            raise ValueError(f"{where} has no default: give its value")
        _check_value(where, slot, value)
        values.append(value)
        if slot.control_values:
            mode = spec.controls.get(slot.name, "randomize")
            if mode not in CONTROL_MODES:
                raise ValueError(f"{where}: control mode {mode!r} is not one of {CONTROL_MODES}")
            values.append(mode)
            if slot.type == "COMBO":
                values.append("")  # the control's filter text
        elif slot.name in spec.controls:
            raise ValueError(f"{where} has no control_after_generate widget")
    if any(s.widget and s.options.get("image_upload") for s in slots):
        values.append("image")  # the frontend's "choose file to upload" button, saved last
    return values


def _node_size(spec: Spec, slots: list[NodeInput], outputs: int) -> list[int]:
    """LiteGraph's computeSize, simplified: slot rows, then one row per widget
    (multiline text boxes taller)."""
    if spec.size is not None:
        return list(spec.size)
    if spec.type == "Note":
        lines = sum(max(1, math.ceil(len(line) / 52)) for line in spec.text.splitlines())
        return [NOTE_W, 20 + 16 * lines]
    rows = max(1, outputs, sum(not s.widget for s in slots))
    widgets = [s for s in slots if s.widget]
    height = rows * SLOT_H
    if widgets:
        height += 8 + sum(4 + (MULTILINE_H if input_options(s.spec).get("multiline") else WIDGET_H) +
                          (WIDGET_H + 4 if s.control_values else 0) for s in widgets)
    return [NODE_W, height]


def _execution_order(node_list: list[int], links: list[list]) -> dict[int, int]:
    """LiteGraph's ``computeExecutionOrder``: Kahn's algorithm starting from the unlinked nodes in
    list order, following each node's links by output slot; returns node id -> position.
    ``links``: ``[id, origin, origin slot, target, target slot, type]``."""
    remaining = {i: sum(1 for link in links if link[3] == i) for i in node_list}
    queue = [i for i in node_list if remaining[i] == 0]
    order: list[int] = []
    while queue:
        node = queue.pop(0)
        order.append(node)
        for link in sorted((link for link in links if link[1] == node), key=lambda link: (link[2], link[0])):
            remaining[link[3]] -= 1
            if remaining[link[3]] == 0:
                queue.append(link[3])
    if len(order) != len(node_list):
        raise ValueError("the workflow's links form a loop")
    return {node: position for position, node in enumerate(order)}


def node_ids(specs: list[Spec]) -> dict[str, int]:
    """Node key -> node id: 1.. in spec order for server nodes (the API prompt's ids), then the
    frontend-only ``Note`` nodes. Raises ValueError on duplicate keys."""
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate node keys in {keys}")
    numbered = [s for s in specs if s.type not in VIRTUAL_NODES] + [s for s in specs if s.type in VIRTUAL_NODES]
    return {s.key: i for i, s in enumerate(numbered, 1)}


def build_ui(specs: list[Spec], object_info: dict) -> dict:
    """The UI workflow (format 0.4) of ``specs``, node ids from :func:`node_ids`, nodes listed
    in spec order.

    Raises:
        ValueError: a spec names a node type, input, output or value the server does not offer.
    """
    ids = node_ids(specs)
    layouts: dict[str, tuple[list[NodeInput], list[tuple[str, str]]]] = {}
    for spec in specs:
        if spec.type in VIRTUAL_NODES:
            layouts[spec.key] = ([], [])
            continue
        if spec.type not in object_info:
            raise ValueError(f"{spec.key}: the server has no node type {spec.type!r}")
        info = object_info[spec.type]
        slots = node_inputs(spec.type, info)
        names = {s.name for s in slots}
        for name in (*spec.values, *spec.controls, *spec.links):
            if name not in names:
                raise ValueError(f"{spec.key}: {spec.type} has no input {name!r}; it has {sorted(names)}")
        outputs = list(zip(info.get("output_name") or [], info.get("output") or []))
        layouts[spec.key] = (slots, [(n, "COMBO" if isinstance(t, list) else t) for n, t in outputs])

    links: list[list] = []
    input_links: dict[tuple[str, str], int] = {}
    output_links: dict[tuple[str, int], list[int]] = {}
    saved_inputs: dict[str, list[NodeInput]] = {}
    for spec in specs:
        # The frontend saves no entry for a widget input without a link (compressWidgetInputSlots).
        saved_inputs[spec.key] = [s for s in layouts[spec.key][0] if not s.widget or s.name in spec.links]
        for index, slot in enumerate(saved_inputs[spec.key]):
            if slot.name not in spec.links:
                continue
            source_key, _, output_name = spec.links[slot.name].partition(".")
            if source_key not in layouts:
                raise ValueError(f"{spec.key}.{slot.name}: no node {source_key!r}")
            outputs = layouts[source_key][1]
            slot_index = next((i for i, (n, _) in enumerate(outputs) if n == output_name), None)
            if slot_index is None:
                raise ValueError(f"{spec.key}.{slot.name}: {source_key} has no output {output_name!r}; "
                                 f"it has {[n for n, _ in outputs]}")
            if outputs[slot_index][1] != slot.type:
                raise ValueError(f"{spec.key}.{slot.name}: {slot.type} input linked to the "
                                 f"{outputs[slot_index][1]} output {spec.links[slot.name]}")
            link_id = len(links) + 1
            links.append([link_id, ids[source_key], slot_index, ids[spec.key], index, slot.type])
            input_links[(spec.key, slot.name)] = link_id
            output_links.setdefault((source_key, slot_index), []).append(link_id)

    order = _execution_order([ids[s.key] for s in specs], links)
    sizes = {}
    for spec in specs:
        slots, outputs = layouts[spec.key]
        sizes[spec.key] = _node_size(spec, slots, len(outputs))
    column_x, x = {}, 0
    for column in sorted({s.column for s in specs}):
        column_x[column] = x
        x += max(sizes[s.key][0] for s in specs if s.column == column) + COLUMN_GAP
    column_y = {column: TITLE_H for column in column_x}

    nodes = []
    for spec in specs:
        slots, outputs = layouts[spec.key]
        size = sizes[spec.key]
        pos = [column_x[spec.column], column_y[spec.column]]
        column_y[spec.column] += size[1] + TITLE_H + ROW_GAP
        node: dict = {"id": ids[spec.key], "type": spec.type, "pos": pos, "size": size, "flags": {},
                      "order": order[ids[spec.key]], "mode": spec.mode}
        node["inputs"] = [{"name": s.name, "type": s.type, **({"shape": 7} if s.optional else {}),
                           **({"widget": {"name": s.name}} if s.widget else {}),
                           "link": input_links.get((spec.key, s.name))} for s in saved_inputs[spec.key]]
        node["outputs"] = [{"name": n, "type": t, "links": output_links.get((spec.key, i), [])}
                           for i, (n, t) in enumerate(outputs)]
        if spec.title is not None:
            node["title"] = spec.title
        if spec.type in VIRTUAL_NODES:
            node["properties"] = {}
            node["widgets_values"] = [spec.text]
            node["color"], node["bgcolor"] = NOTE_COLOR, NOTE_BGCOLOR
        else:
            node["properties"] = {"Node name for S&R": spec.type}
            values = _widget_values(spec, slots)
            if values:
                node["widgets_values"] = values
        nodes.append(node)
    groups = []
    for title in dict.fromkeys(s.group for s in specs if s.group):
        members = [n for s, n in zip(specs, nodes) if s.group == title]
        x0 = min(n["pos"][0] for n in members) - 10
        y0 = min(n["pos"][1] for n in members) - TITLE_H - 40
        x1 = max(n["pos"][0] + n["size"][0] for n in members) + 10
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + 10
        groups.append({"id": len(groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                       "color": "#3f789e", "font_size": 24, "flags": {}})
    return {"last_node_id": len(specs), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": {}, "version": 0.4}


def to_json(data: dict) -> bytes:
    """The bytes written for a workflow file: 2-space indented JSON and a final newline."""
    return (json.dumps(data, indent=2) + "\n").encode()


def write_workflows(object_info: dict, root: Path = REPO) -> list[Path]:
    """Write every workflow's UI file (``root/workflows``) and API copy (``root/tests/workflows``);
    returns the paths written."""
    written = []
    for name, specs in WORKFLOWS.items():
        ui = build_ui(specs, object_info)
        api = ui_to_api(ui, object_info)
        for folder, data in ((root / "workflows", ui), (root / "tests" / "workflows", api)):
            written.append(atomic_write_bytes(folder / f"{name}.json", to_json(data)))
    return written


# --------------------------------------------------------------------------- thumbnails

def _spec_value(spec: Spec, name: str, object_info: dict):
    if name in spec.values:
        return spec.values[name]
    return input_options(input_spec(object_info[spec.type], name)).get("default")


def write_thumbnail(name: str, object_info: dict, path: Path) -> Path:
    """Render the condition maps the workflow ``name`` previews, for its own Hand Pose and Render
    Conditions values, with the open hand, and save them tiled two per row under a caption as a
    JPEG ``path`` (512 px wide)."""
    from sesahand.camera import Camera
    from sesahand.hands import PoseSpec, load_hand_model
    from sesahand.hands.anny_model import default_cache_dir
    from sesahand.pipeline import render_scenes

    specs = {s.key: s for s in WORKFLOWS[name]}
    if "photo_pose" in specs:
        return _photo_thumbnail(name, specs, object_info, path)
    pose, render = specs["pose"], specs["render"]

    def value(spec: Spec, key: str):
        return _spec_value(spec, key, object_info)

    side = value(specs["hand_model"], "side")
    if value(pose, "mode") == "random":
        pose_spec = PoseSpec.random(value(pose, "seed"), num_hands=value(pose, "num_hands"),
                                    box_px=(value(pose, "box_min"), value(pose, "box_max")), side=side)
        described = f"random pose, seed {value(pose, 'seed')}"
    else:
        pose_spec = PoseSpec.preset(value(pose, "preset"), side=side)
        described = f"preset {value(pose, 'preset')}"
    model = load_hand_model("anny", cache_dir=default_cache_dir())
    camera = Camera.default(value(render, "width"), value(render, "height"), value(render, "fov"))
    conditions, _ = render_scenes(model, pose_spec.resolve(model, camera, 1), backend="moderngl")
    maps = {"mesh": conditions.mesh, "depth": conditions.depth_image, "normal": conditions.normal,
            "pose": conditions.pose}
    shown = [s.links["images"].split(".")[1] for s in WORKFLOWS[name] if s.type == "PreviewImage"]

    return _contact_sheet(name, f"condition maps of its hand pose ({described}), rendered by SesaHand; no result",
                          {key: maps[key][0] for key in shown}, path)


def _contact_sheet(name: str, caption: str, tiles: dict, path: Path) -> Path:
    """A JPEG of ``tiles`` (label -> image: uint8 array or float 0..1 tensor, (H, W) or (H, W, 3))
    two to a row under the workflow's name and ``caption``, written atomically to ``path``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    caption_h = 56
    rows = math.ceil(len(tiles) / 2)
    sheet = Image.new("RGB", (2 * THUMB_TILE, caption_h + rows * THUMB_TILE), "black")
    draw = ImageDraw.Draw(sheet)
    small = ImageFont.load_default(size=13)
    draw.text((10, 6), name, fill="white", font=ImageFont.load_default(size=18))
    draw.text((10, 32), caption, fill=(190, 190, 190), font=small)
    for i, (key, array) in enumerate(tiles.items()):
        array = to_uint8(array)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        tile = Image.fromarray(array).resize((THUMB_TILE, THUMB_TILE), Image.LANCZOS)
        x, y = (i % 2) * THUMB_TILE, caption_h + (i // 2) * THUMB_TILE
        sheet.paste(tile, (x, y))
        draw.text((x + 8, y + 6), key, fill="white", font=small)
    with tempfile.NamedTemporaryFile(suffix=".jpg") as tmp:
        sheet.save(tmp.name, quality=88)
        return atomic_write_bytes(path, Path(tmp.name).read_bytes())


def _photo_thumbnail(name: str, specs: dict, object_info: dict, path: Path) -> Path:
    """The photo workflow's thumbnail: the shipped demo photo framed as the workflow frames it,
    the fit overlay, and the mesh and depth maps of the fitted hands (needs the MediaPipe hand
    landmarker: ``$SESAHAND_HAND_LANDMARKER``)."""
    from sesahand.eval.detector import HandKeypointDetector
    from sesahand.fit import MAX_HANDS, Framing, fit_hands, load_photo, photo_intrinsics
    from sesahand.fit.output import overlay_for, render_fit
    from sesahand.hands import load_hand_model
    from sesahand.hands.anny_model import default_cache_dir

    fit = specs["photo_pose"]

    def value(key: str):
        return _spec_value(fit, key, object_info)

    photo = load_photo(DEMO_PHOTO)
    model = load_hand_model("anny", cache_dir=default_cache_dir())
    with HandKeypointDetector(num_hands=MAX_HANDS) as detector:
        fits = fit_hands(photo.pixels, model, detector, hands=value("hands"), fov_deg=value("fov"))
    K = photo_intrinsics(photo.width, photo.height, fov_deg=value("fov"))
    framing = Framing.make((photo.width, photo.height), (value("width"), value("height")), value("framing"))
    cond, _, _ = render_fit(model, fits, K, framing, backend="moderngl")
    tiles = {"photo": framing.image(photo.pixels), "fit overlay": overlay_for(model, photo.pixels, fits, K, framing),
             "mesh": cond.mesh[0], "depth": cond.depth_image[0]}
    return _contact_sheet(name, f"a real photo ({DEMO_PHOTO.name}), its fit and condition maps; no result",
                          tiles, path)


# --------------------------------------------------------------------------- main

def fetch_object_info(server: str | None, comfyui: Path) -> dict:
    """``/object_info`` of ``server``, or of a headless ComfyUI from ``comfyui`` started with this
    pack (and stopped again)."""
    import requests

    if server:
        reply = requests.get(server.rstrip("/") + "/object_info", timeout=60)
        reply.raise_for_status()
        return reply.json()
    from sesahand.hands.anny_model import default_cache_dir
    from tools.comfy_server import comfy_command, running_server

    if not (comfyui / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {comfyui}: give --comfyui DIR or --server URL")
    with tempfile.TemporaryDirectory(prefix="sesahand-build-") as work:
        root = Path(work)
        log.info("starting ComfyUI from %s", comfyui)
        with running_server(comfyui, comfy_command(root, {"sesahand": default_cache_dir()}), root) as (base, _):
            reply = requests.get(base + "/object_info", timeout=60)
            reply.raise_for_status()
            return reply.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="a running ComfyUI with this pack (default: start one)")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH") or "~/ComfyUI",
                        help="ComfyUI folder to start when no --server is given (default: $COMFYUI_PATH, "
                             "else ~/ComfyUI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        object_info = fetch_object_info(args.server, Path(args.comfyui).expanduser())
        written = write_workflows(object_info)
        for name in WORKFLOWS:
            written.append(write_thumbnail(name, object_info, WORKFLOW_DIR / f"{name}.jpg"))
    except (ValueError, RuntimeError, OSError) as exc:
        log.error("build_workflows: %s", exc)
        return 2
    for path in written:
        log.info("wrote %s", path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
