"""Semantics room nodes: behaviour-semantics prompts (docs/method.md, behaviour semantics).

Models come from the ``LLM`` model folder (``ComfyUI/models/LLM`` and the user's
``extra_model_paths.yaml`` entries): every folder holding a ``config.json`` (a transformers model
saved with ``save_pretrained``) is offered by its path relative to the LLM folder, and every
``.gguf`` file by its file name (extractor LLMs only). Nothing is downloaded.

The captioner's outputs are lists (one item per image of the batch): a node taking a plain
STRING (CLIP Text Encode, the Hand-Attention Sampler's ``prompt`` and ``hand_terms``) runs once
per item.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import comfy.model_management
import comfy.sd1_clip
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..sesahand.io import to_uint8
from ..sesahand.semantics import (FIELDS, Captioner, Extractor, SemanticsPipeline,
                                  compose_prompt)
from .batch import frame_indices
from .render import HandsType

logger = logging.getLogger(__name__)

#: Semantics models loaded by SesaHand Load Semantics Models (a ``SemanticsPipeline``).
SemanticsModelsType = io.Custom("SESAHAND_SEMANTICS_MODELS")

MODEL_FOLDER = "LLM"
DEVICES = ("auto", "cpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: Images captioned per pipeline call (the progress bar and interrupt checks step by it).
CHUNK = 8


def model_names(gguf: bool) -> list[str]:
    """Entries of the LLM folder: model folders (the folder of each ``config.json``, relative)
    and, with ``gguf``, ``.gguf`` files."""
    names = set()
    for name in folder_paths.get_filename_list(MODEL_FOLDER):
        folder, file = os.path.split(name)
        if file == "config.json" and folder:
            names.add(folder)
        elif gguf and file.lower().endswith(".gguf"):
            names.add(name)
    return sorted(names)


def model_path(name: str) -> str:
    """Full path of an entry of :func:`model_names`.

    Raises:
        ValueError: no such model in the LLM folder.
    """
    if name.lower().endswith(".gguf"):
        path = folder_paths.get_full_path(MODEL_FOLDER, name)
    else:
        config = folder_paths.get_full_path(MODEL_FOLDER, os.path.join(name, "config.json"))
        path = None if config is None else os.path.dirname(config)
    if path is None:
        raise ValueError(f"{name!r} is not in the {MODEL_FOLDER} model folder "
                         f"({', '.join(folder_paths.get_folder_paths(MODEL_FOLDER))}); put the "
                         "model folder (with config.json) or .gguf file there and refresh")
    return path


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))


def clip_token_count(text: str) -> int:
    """CLIP tokens of ``text`` (start and end included) with core's SD1 tokenizer files, so the
    prompt budget needs no open-clip-torch inside ComfyUI."""
    return len(_clip_tokenizer()(text)["input_ids"])


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    device = comfy.model_management.get_torch_device() if device == "auto" else torch.device(device)
    if dtype == "auto":
        if device.type == "cpu":
            return device, torch.float32
        return device, torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32
    return device, getattr(torch, dtype)


def tensor_to_images(image: torch.Tensor) -> list[Image.Image]:
    """PIL RGB images of an IMAGE batch ``[B, H, W, C]`` float 0..1 (C = 1, 3 or 4)."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image: expected an IMAGE batch [B, H, W, C] with C 1, 3 or 4, got "
                         f"shape {tuple(image.shape)}")
    pixels = to_uint8(image)
    images = []
    for frame in pixels:
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        images.append(Image.fromarray(np.ascontiguousarray(frame[..., :3]), mode="RGB"))
    return images


def hands_joints(hands, count: int) -> list[list[tuple[np.ndarray, str]]]:
    """Per image, ``(joints, side)`` of every rendered hand (joints (21, 3), camera frame,
    metres, OpenPose order); one frame of ``hands`` serves every image.

    Raises:
        ValueError: ``hands`` has neither 1 nor ``count`` frames.
    """
    joints = [[(np.asarray(label.joints3d, dtype=np.float32), label.side) for label in frame]
              for frame in hands.labels]
    return [joints[f] for f in frame_indices(len(joints), count, "hands")]


class SesaHandLoadSemanticsModels(io.ComfyNode):
    """Load the captioner VLM and the extractor LLM from the LLM model folder."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandLoadSemanticsModels",
            display_name="SesaHand Load Semantics Models",
            category="SesaHand/semantics",
            description="Loads a local vision-language model (the captioner) and a local "
                        "instruction LLM (the extractor) from models/LLM, for SesaHand Behaviour "
                        "Captioner. Any transformers model folder works (LLaVA, Qwen2-VL, "
                        "SmolVLM, Florence-2, BLIP; LLMs also as .gguf). Needs "
                        "pip install transformers accelerate gguf.",
            inputs=[
                io.Combo.Input("vlm", options=model_names(gguf=False),
                               tooltip="Captioner: a vision-language model folder in models/LLM "
                                       "(config.json, weights, processor and tokenizer files)."),
                io.Combo.Input("llm", options=model_names(gguf=True),
                               tooltip="Extractor: an instruction LLM folder or .gguf file in "
                                       "models/LLM (the VLM's folder works too, loaded again as "
                                       "a text model)."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (the GPU when there is one); cpu."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weights' dtype; auto: float16 where ComfyUI uses it, "
                                       "float32 on the CPU."),
            ],
            outputs=[SemanticsModelsType.Output(
                "models", display_name="models",
                tooltip="Captioner + extractor, for SesaHand Behaviour Captioner.")],
        )

    @classmethod
    def validate_inputs(cls, vlm=None, llm=None):
        for label, name, gguf in (("vlm", vlm, False), ("llm", llm, True)):
            if name is not None and name not in model_names(gguf):
                return (f"{label} {name!r} is not in the {MODEL_FOLDER} model folder; choose an "
                        "entry from the list (refresh after adding models)")
        return True

    @classmethod
    def execute(cls, vlm: str, llm: str, device: str, dtype: str) -> io.NodeOutput:
        torch_device, torch_dtype = _device_dtype(device, dtype)
        captioner = Captioner.load(model_path(vlm), device=torch_device, dtype=torch_dtype)
        extractor = Extractor.load(model_path(llm), device=torch_device, dtype=torch_dtype)
        return io.NodeOutput(SemanticsPipeline(captioner, extractor, count_tokens=clip_token_count))


class SesaHandBehaviourCaptioner(io.ComfyNode):
    """Caption an image batch into behaviour-semantics prompts and hand terms."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandBehaviourCaptioner",
            display_name="SesaHand Behaviour Captioner",
            category="SesaHand/semantics",
            description="SesaHand's behaviour semantics: the VLM captions each image, the LLM "
                        "extracts pose, action, hand action and environment (rule-based when it "
                        "gives no valid JSON), and a template composes a short human-centric "
                        "prompt. With hands connected, the hand action is checked against the "
                        "conditioning hand pose. Outputs are lists, one item per image.",
            inputs=[
                SemanticsModelsType.Input("models", tooltip="From SesaHand Load Semantics Models."),
                io.Image.Input("image", tooltip="Reference image(s) to describe."),
                HandsType.Input("hands", optional=True,
                                tooltip="Optional conditioning hands (SesaHand Render Conditions' "
                                        "hands): the hand action then follows their pose. One "
                                        "frame per image, or one for all."),
            ],
            outputs=[
                io.String.Output("prompt", display_name="prompt", is_output_list=True,
                                 tooltip="Composed prompt per image (fits CLIP's 77 tokens)."),
                io.String.Output("semantics", display_name="semantics", is_output_list=True,
                                 tooltip="The four fields per image as JSON."),
                io.String.Output("caption", display_name="caption", is_output_list=True,
                                 tooltip="The VLM's raw caption per image."),
                io.String.Output("hand_terms", display_name="hand_terms", is_output_list=True,
                                 tooltip="Hand terms per image, comma-separated: connect to the "
                                         "Hand-Attention Sampler's hand_terms."),
            ],
        )

    @classmethod
    def execute(cls, models: SemanticsPipeline, image: torch.Tensor, hands=None) -> io.NodeOutput:
        images = tensor_to_images(image)
        joints = None if hands is None else hands_joints(hands, len(images))
        bar = comfy.utils.ProgressBar(len(images))
        results = []
        for start in range(0, len(images), CHUNK):
            comfy.model_management.throw_exception_if_processing_interrupted()
            chunk = images[start:start + CHUNK]
            results.extend(models.run(chunk, None if joints is None else joints[start:start + CHUNK]))
            bar.update(len(chunk))
        return io.NodeOutput([r.prompt for r in results],
                             [json.dumps(r.semantics, ensure_ascii=False) for r in results],
                             [r.caption for r in results],
                             [", ".join(r.hand_terms) for r in results])


class SesaHandComposePrompt(io.ComfyNode):
    """Compose a prompt from hand-edited behaviour fields."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandComposePrompt",
            display_name="SesaHand Compose Prompt",
            category="SesaHand/semantics",
            description="Composes SesaHand's behaviour-semantics prompt from the four fields, "
                        "written or edited by hand (copy them from the captioner's semantics "
                        "output). Empty fields are left out; the environment becomes a place and "
                        "objects stay only where a hand touches them.",
            inputs=[
                io.String.Input("pose", default="sitting", tooltip="Body pose, e.g. 'sitting'."),
                io.String.Input("action", default="smiling",
                                tooltip="What the person does, e.g. 'smiling'."),
                io.String.Input("hand_action", default="holding a cup with one hand",
                                tooltip="What the hands do, e.g. 'holding a donut with one hand'."),
                io.String.Input("environment", default="",
                                tooltip="The place, e.g. 'in a kitchen'; objects and furniture "
                                        "listed here are dropped."),
            ],
            outputs=[
                io.String.Output("prompt", display_name="prompt", tooltip="The composed prompt."),
                io.String.Output("hand_terms", display_name="hand_terms",
                                 tooltip="Hand terms, comma-separated: connect to the "
                                         "Hand-Attention Sampler's hand_terms."),
            ],
        )

    @classmethod
    def execute(cls, pose: str, action: str, hand_action: str, environment: str) -> io.NodeOutput:
        fields = dict(zip(FIELDS, (pose, action, hand_action, environment)))
        composed = compose_prompt(fields, count_tokens=clip_token_count)
        return io.NodeOutput(composed.prompt, ", ".join(composed.hand_terms))


#: Node classes this module adds to the extension.
NODES = [SesaHandLoadSemanticsModels, SesaHandBehaviourCaptioner, SesaHandComposePrompt]
