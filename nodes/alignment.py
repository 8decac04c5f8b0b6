"""Alignment node: does the generated image show the conditioning hands? (MediaPipe keypoints)"""

from __future__ import annotations

import atexit
import json
import os

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..sesahand import limits
from ..sesahand.eval import SETUP_HINT, TASK_ENV, TASK_NAME, HandKeypointDetector, Thresholds, check_alignment, draw_overlay
from ..sesahand.io import to_float, to_uint8
from ..sesahand.pipeline import RenderedHands
from ..sesahand.safe_paths import resolve_input_file
from .batch import frame_indices
from .render import HandsType

#: The ``task_file`` input of every node that detects hands: its search order, in words
#: (:func:`task_path`).
TASK_FILE_TOOLTIP = (f"Name of a {TASK_NAME} file in models/sesahand (paths outside the sesahand model "
                     f"folders are refused); empty: ${TASK_ENV}, then models/sesahand/{TASK_NAME}.")

_DETECTORS: dict[tuple[str, float, int], HandKeypointDetector] = {}


def task_path(task_file: str) -> str:
    """The .task to use: the input (a file in the ``sesahand`` model folders, by the rule of
    :mod:`sesahand.safe_paths`), else $SESAHAND_HAND_LANDMARKER (the administrator's), else
    models/sesahand/hand_landmarker.task."""
    folders = folder_paths.get_folder_paths("sesahand")
    if task_file.strip():
        return str(resolve_input_file(task_file, folders, what="task_file", max_bytes=limits.MAX_TASK_FILE_BYTES))
    if os.environ.get(TASK_ENV):
        return os.environ[TASK_ENV]
    for folder in folders:
        candidate = os.path.join(folder, TASK_NAME)
        if os.path.isfile(candidate):
            return str(resolve_input_file(TASK_NAME, [folder], what=TASK_NAME,
                                          max_bytes=limits.MAX_TASK_FILE_BYTES))
    raise FileNotFoundError(f"no hand landmarker model: put {TASK_NAME} in {folders[0]}, set {TASK_ENV}, "
                            f"or give task_file; {SETUP_HINT}")


def task_file_problem(task_file: str | None) -> str | None:
    """Why a ``task_file`` widget value is refused (outside the model folders, not a regular
    file, too large), or None; for ``validate_inputs`` (a linked value arrives as None)."""
    if task_file is not None and task_file.strip():
        try:
            task_path(task_file)
        except ValueError as exc:
            return str(exc)
    return None


@atexit.register
def _close_detectors() -> None:
    """Close the kept detectors before the interpreter tears MediaPipe down (else its
    ``__del__`` fails noisily at exit)."""
    while _DETECTORS:
        _DETECTORS.popitem()[1].close()


def cached_detector(task_file: str, num_hands: int = 2) -> HandKeypointDetector:
    """One detector per model file (and modification time) and hand count, kept for the process."""
    path = os.path.realpath(task_path(task_file))
    key = (path, os.path.getmtime(path) if os.path.exists(path) else 0.0, num_hands)
    if key not in _DETECTORS:
        _DETECTORS[key] = HandKeypointDetector(path, num_hands=num_hands)
    return _DETECTORS[key]


class SesaHandAlignmentCheck(io.ComfyNode):
    """Check generated images against the hands they were conditioned on (keypoint agreement)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandAlignmentCheck",
            display_name="SesaHand Alignment Check",
            category="SesaHand/eval",
            description="Detects hand keypoints in each image with MediaPipe's hand landmarker and "
                        "compares them with the conditioning joints: per-hand error in pixels and "
                        "in hand-box units, PCK at 0.05/0.1/0.2 of the box, detected side, and "
                        "pass/fail. score is the mean PCK@0.1 over the hands and images (0 when "
                        "no hand is found). Needs mediapipe>=0.10.30 and a hand_landmarker.task "
                        "file in models/sesahand (see the README).",
            inputs=[
                io.Image.Input("images", tooltip="Generated images (same size as the rendered conditions)."),
                HandsType.Input("hands", tooltip="The hands the images were conditioned on, from "
                                                 "SesaHand Render Conditions (one frame, or one per image)."),
                io.Float.Input("min_pck", default=0.7, min=0.0, max=1.0, step=0.05,
                               tooltip="A hand passes when at least this share of its keypoints lies "
                                       "within 10% of its box size of the label."),
                io.Boolean.Input("require_side", default=True,
                                 tooltip="A hand also needs the detected side (left/right) to match."),
                io.String.Input("task_file", default="", tooltip=TASK_FILE_TOOLTIP),
            ],
            outputs=[
                io.String.Output("scores", display_name="scores",
                                 tooltip="JSON list, one alignment result per image."),
                io.Float.Output("score", display_name="score",
                                tooltip="Mean score over the images, 0..1."),
                io.Image.Output("overlay", display_name="overlay",
                                tooltip="Images with labelled (green) and detected (magenta) keypoints, "
                                        "hand boxes and the score."),
            ],
        )

    @classmethod
    def validate_inputs(cls, min_pck=None, task_file=None):
        if min_pck is not None and (isinstance(min_pck, bool) or not isinstance(min_pck, (int, float))
                                    or not 0.0 <= min_pck <= 1.0):
            return f"min_pck {str(min_pck)[:40]!r} is not a number in 0..1"
        return task_file_problem(task_file) or True

    @classmethod
    def execute(cls, images: torch.Tensor, hands: RenderedHands, min_pck: float, require_side: bool,
                task_file: str) -> io.NodeOutput:
        batch = images.shape[0]
        frames = frame_indices(len(hands.labels), batch, "hands")
        height, width = images.shape[1:3]
        for scene in hands.scenes:
            if (scene.camera.width, scene.camera.height) != (width, height):
                raise ValueError(f"images are {width}x{height} but the hands were rendered at "
                                 f"{scene.camera.width}x{scene.camera.height}; check the images the "
                                 "hands were rendered for (no resize or crop in between)")
        detector = cached_detector(task_file)
        thresholds = Thresholds(min_pck=min_pck, require_side=require_side)
        pixels = to_uint8(images[..., :3])
        results, overlays = [], []
        for i in range(batch):
            labels = hands.labels[frames[i]]
            result = check_alignment(pixels[i], labels, detector, thresholds)
            results.append(result.to_dict())
            overlays.append(draw_overlay(pixels[i], labels, result))
        overlay = to_float(np.stack(overlays))
        score = float(np.mean([r["score"] for r in results]))
        return io.NodeOutput(json.dumps(results), score, overlay)


#: Node classes this module adds to the extension.
NODES = [SesaHandAlignmentCheck]
