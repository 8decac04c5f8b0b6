"""Data room node: save generated images with their hand labels as dataset samples."""

from __future__ import annotations

import json
import os
import re
from pathlib import PurePosixPath, PureWindowsPath

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..sesahand.data import DatasetWriter, to_uint8_image
from ..sesahand.eval import alignment as eval_alignment
from ..sesahand.pipeline import RenderedHands
from ..sesahand.safe_paths import make_write_dir
from . import alignment as alignment_node
from .batch import frame_indices
from .render import HandsType

UNKNOWN = "(unknown)"


def dataset_dir_problem(name: str) -> str | None:
    """Why ``name`` is not a folder inside ComfyUI's output folder, or None when it is."""
    if not isinstance(name, str) or not name.strip():
        return "dataset is empty; give a folder name inside the output folder, e.g. sesahand_dataset"
    if "\0" in name:
        return "dataset: the name contains a NUL character; give a plain folder name, e.g. sesahand_dataset"
    if len(name) > 255:
        return f"dataset: the name is {len(name)} characters long; give at most 255"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        return f"dataset {name!r} is an absolute path; give a folder name inside the output folder"
    if ".." in re.split(r"[\\/]", name):
        return f"dataset {name!r} contains '..'; give a folder name inside the output folder"
    output = os.path.realpath(folder_paths.get_output_directory())
    target = os.path.realpath(os.path.join(output, name))
    if target == output or os.path.commonpath([output, target]) != output:
        return f"dataset {name!r} resolves outside the output folder ({target}); give a plain subfolder name"
    return None


def _json_object(text: str, name: str) -> dict | None:
    """The JSON object in ``text`` (None when blank); ValueError naming the input otherwise."""
    if not text or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "give a JSON object or leave it empty") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object {{...}}, got {type(value).__name__}")
    return value


def _model_path(folder: str, name: str) -> str | None:
    if name == UNKNOWN:
        return None
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise ValueError(f"{folder} file {name!r} not found; pick one from the list or {UNKNOWN}")
    return path


def _alignment_detector(threshold: float):
    """The Alignment Check node's detector (same model search, kept for the process)."""
    try:
        return alignment_node.cached_detector("")
    except (ImportError, RuntimeError, FileNotFoundError) as exc:
        raise RuntimeError(f"alignment_threshold {threshold} needs the MediaPipe hand landmarker, which is not "
                           f"available: {exc}. Install the alignment extra (see the README), or set "
                           "alignment_threshold to 0 to save without the check.") from exc


class SesaHandSaveDatasetSample(io.ComfyNode):
    """Append each image of the batch, with its hands' labels, to a dataset in the output folder."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandSaveDatasetSample",
            display_name="SesaHand Save Dataset Sample",
            category="SesaHand/data",
            description="Saves every image with the labels of its frame of the hands (MANO "
                        "parameters, 3D/2D joints, visibility, boxes, camera K), the prompt, "
                        "semantics, seed, sampler settings and model hashes into "
                        "output/<dataset>/ (images/, conditions/, labels.jsonl). Writes are "
                        "atomic; numbering continues an existing dataset. With an alignment "
                        "threshold, images whose MediaPipe alignment score is lower are not "
                        "saved and the reason is shown.",
            inputs=[
                io.Image.Input("images", tooltip="Generated images; image i gets frame i of the hands."),
                HandsType.Input("hands", tooltip="Rendered hands from SesaHand Render Conditions "
                                                 "(one frame per image, or one frame for all)."),
                io.String.Input("dataset", default="sesahand_dataset",
                                tooltip="Dataset folder inside ComfyUI's output folder; '..' and "
                                        "absolute paths are refused."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="Prompt of the generation (recorded as given)."),
                io.String.Input("semantics", default="", multiline=True, optional=True,
                                tooltip="Behaviour semantics JSON object (from SesaHand Behaviour "
                                        "Captioner); empty for none."),
                io.Int.Input("seed", default=-1, min=-1, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             control_after_generate=False,
                             tooltip="Sampler seed to record; -1 = unknown."),
                io.String.Input("sampler_settings", default="", multiline=True, optional=True,
                                tooltip='Sampler settings as a JSON object, e.g. {"sampler_name": '
                                        '"euler", "scheduler": "normal", "steps": 20, "cfg": 7}; '
                                        "empty for unknown."),
                io.Combo.Input("ckpt_name", options=[UNKNOWN, *folder_paths.get_filename_list("checkpoints")],
                               default=UNKNOWN, optional=True,
                               tooltip="Checkpoint that made the images; its SHA-256 is recorded "
                                       "(computed once per file version)."),
                io.Combo.Input("controlnet_name", options=[UNKNOWN, *folder_paths.get_filename_list("controlnet")],
                               default=UNKNOWN, optional=True,
                               tooltip="ControlNet used; its SHA-256 is recorded."),
                io.Image.Input("mesh", optional=True, tooltip="Shaded mesh condition, saved with each sample."),
                io.Image.Input("depth", optional=True, tooltip="Depth condition, saved grey."),
                io.Image.Input("normal", optional=True, tooltip="Normal condition, saved with each sample."),
                io.Mask.Input("mask", optional=True, tooltip="Hand mask, saved grey."),
                io.Float.Input("alignment_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="0 = off. Otherwise run the alignment check (needs MediaPipe) "
                                       "and skip images whose score is below this value."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, dataset=None, semantics=None, sampler_settings=None):
        # Linked values arrive as None here and are checked again at run time.
        if dataset is not None:
            problem = dataset_dir_problem(dataset)
            if problem:
                return problem
        try:
            _json_object(semantics, "semantics")
            _json_object(sampler_settings, "sampler_settings")
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, images: torch.Tensor, hands: RenderedHands, dataset: str, prompt: str = "",
                semantics: str = "", seed: int = -1, sampler_settings: str = "", ckpt_name: str = UNKNOWN,
                controlnet_name: str = UNKNOWN, mesh: torch.Tensor | None = None,
                depth: torch.Tensor | None = None, normal: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, alignment_threshold: float = 0.0) -> io.NodeOutput:
        problem = dataset_dir_problem(dataset)
        if problem:
            raise ValueError(problem)
        semantics_obj = _json_object(semantics, "semantics")
        sampler_obj = _json_object(sampler_settings, "sampler_settings")
        checkpoint = _model_path("checkpoints", ckpt_name)
        controlnet = _model_path("controlnet", controlnet_name)
        count = images.shape[0]
        hand_frames = frame_indices(len(hands.scenes), count, "hands")
        conditions = {n: (c, frame_indices(c.shape[0], count, n))
                      for n, c in {"mesh": mesh, "depth": depth, "normal": normal, "mask": mask}.items()
                      if c is not None}
        frames = [(i, f, {n: c[index[i]] for n, (c, index) in conditions.items()})
                  for i, f in enumerate(hand_frames)]

        alignments, skipped = {}, []
        if alignment_threshold > 0:
            detector = _alignment_detector(alignment_threshold)
            for i, f, _ in frames:
                result = eval_alignment.check_alignment(to_uint8_image(images[i], "images"), hands.labels[f],
                                                        detector=detector)
                alignments[i] = result.to_dict()
                if result.score < alignment_threshold:
                    skipped.append(f"image {i} not saved: alignment score {result.score:.2f} < "
                                   f"{alignment_threshold:.2f} ({result.reason})")

        # Created without following links: a linked dataset, images/ or conditions/ folder is
        # refused rather than written through (sesahand.safe_paths).
        root = make_write_dir(dataset, inside=folder_paths.get_output_directory(), what="dataset")
        bar = comfy.utils.ProgressBar(count)
        saved = []
        with DatasetWriter(root) as writer:
            for i, f, conds in frames:
                if i not in alignments or alignments[i]["score"] >= alignment_threshold:
                    saved.append(writer.append(
                        images[i], hands.frame_dict(f), conditions=conds, prompt=prompt or None,
                        semantics=semantics_obj, seed=None if seed < 0 else seed, sampler=sampler_obj,
                        checkpoint=checkpoint, controlnets=[controlnet] if controlnet else [],
                        alignment=alignments.get(i)))
                bar.update(1)
        text = (f"saved {len(saved)} of {count} image(s) to {dataset}"
                + (f" as sample(s) {', '.join(map(str, saved))}" if saved else ""))
        return io.NodeOutput(ui=ui.PreviewText("\n".join([text, *skipped])))


#: Node classes this module adds to the extension.
NODES: list = [SesaHandSaveDatasetSample]
