"""Fit node: hand poses from photographs (MediaPipe keypoints + hand model fit)."""

from __future__ import annotations

import copy

import comfy.model_management
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..sesahand.fit import DEFAULT_FOV_DEG, HAND_CHOICES, MAX_HANDS, FitOptions, Framing, fit_hands, photo_intrinsics
from ..sesahand.fit.output import overlay_for, pose_document, pose_frame, pose_spec
from ..sesahand.fit.photo import check_photo_size
from ..sesahand.io import to_float, to_uint8
from ..sesahand.limits import MAX_FOV_DEG, MAX_IMAGE_SIDE, MIN_FOV_DEG, check_fov
from .alignment import TASK_FILE_TOOLTIP, cached_detector, task_file_problem
from .hands import HandModelChoice, HandModelType, PoseType
from .render import size_error

MAX_SIZE = MAX_IMAGE_SIDE

_FIT_MODELS: dict[int, tuple[object, object]] = {}


def fit_model(model):
    """A copy of ``model`` usable with gradients: ComfyUI loads and runs everything under
    ``torch.inference_mode``, whose tensors autograd cannot use; the copy is made outside it,
    once per loaded model."""
    entry = _FIT_MODELS.get(id(model))
    if entry is None or entry[0] is not model:
        with torch.inference_mode(False):
            entry = _FIT_MODELS[id(model)] = (model, copy.deepcopy(model))
    return entry[1]


class SesaHandHandPoseFromImage(io.ComfyNode):
    """Fit the hand model to every hand MediaPipe finds in each image: one pose frame per image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandPoseFromImage",
            display_name="SesaHand Hand Pose from Image",
            category="SesaHand/hands",
            description="Detects the hands in each photo (MediaPipe hand landmarker, up to 4) and fits "
                        "the hand model to each: MANO parameters and a camera for the photo, so SesaHand "
                        "Render Conditions draws the hands pixel-aligned over the photo framed to "
                        "width x height. Hands that fit badly, are cut by the border, tiny or below "
                        "min_score are left out and listed. An image without a hand gives an empty "
                        "frame. Needs mediapipe>=0.10.30 and hand_landmarker.task in models/sesahand.",
            inputs=[
                io.Image.Input("image", tooltip="Photos (a batch: one pose frame per image)."),
                HandModelType.Input("hand_model", tooltip="Hand model to fit (its side is not used: "
                                                          "each hand's side comes from the photo)."),
                io.Combo.Input("hands", options=list(HAND_CHOICES), default="all",
                               tooltip="Which detected hands to fit: all, the largest, or only left / "
                                       "right hands (the subject's own side)."),
                io.Float.Input("min_score", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Least detector score (handedness probability) of a kept hand."),
                io.Float.Input("fov", default=DEFAULT_FOV_DEG, min=MIN_FOV_DEG, max=MAX_FOV_DEG, step=0.5,
                               tooltip="Field of view across the photo's longer side, degrees (images "
                                       "here carry no EXIF focal length)."),
                io.Int.Input("width", default=512, min=64, max=MAX_SIZE, step=8,
                             tooltip="Output width (multiple of 8): the size Render Conditions draws at."),
                io.Int.Input("height", default=512, min=64, max=MAX_SIZE, step=8,
                             tooltip="Output height (multiple of 8)."),
                io.Combo.Input("framing", options=["crop", "letterbox"], default="crop",
                               tooltip="crop: scale to cover the output and cut the overhang; letterbox: "
                                       "scale to fit and add black bands. The camera is adjusted either "
                                       "way, so the aspect is kept."),
                io.String.Input("task_file", default="", tooltip=TASK_FILE_TOOLTIP),
            ],
            outputs=[
                PoseType.Output("pose", display_name="pose",
                                tooltip="One frame per image: its camera and the kept hands."),
                io.Image.Output("overlay", display_name="overlay",
                                tooltip="Each photo framed to width x height with the fitted mesh outline "
                                        "(red: left out), detected keypoints (magenta) and fitted joints "
                                        "(green)."),
                io.Image.Output("framed_image", display_name="framed_image",
                                tooltip="Each photo framed to width x height, pixel-aligned with the pose."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, min_score=None, fov=None, hands=None, task_file=None):
        error = size_error(width, height)
        if error:
            return error
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not 0.0 <= min_score <= 1.0):
            return f"min_score {str(min_score)[:40]!r} is not a number in 0..1"
        if fov is not None:
            try:
                check_fov(fov, "fov")
            except ValueError as exc:
                return str(exc)
        if hands is not None and hands not in HAND_CHOICES:
            return f"hands {str(hands)[:40]!r} is unknown; choose one of {list(HAND_CHOICES)}"
        return task_file_problem(task_file) or True

    @classmethod
    def execute(cls, image: torch.Tensor, hand_model: HandModelChoice, hands: str, min_score: float, fov: float,
                width: int, height: int, framing: str, task_file: str) -> io.NodeOutput:
        batch, photo_h, photo_w = image.shape[:3]
        check_photo_size(photo_w, photo_h, "image")
        detector = cached_detector(task_file, num_hands=MAX_HANDS)
        model = fit_model(hand_model.model)
        options = FitOptions(min_score=min_score)
        frame = Framing.make((photo_w, photo_h), (width, height), framing)
        K = photo_intrinsics(photo_w, photo_h, fov_deg=fov)
        bar = comfy.utils.ProgressBar(batch)
        frames, overlays, framed, lines = [], [], [], []
        for i in range(batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pixels = to_uint8(image[i, ..., :3])
            fits = fit_hands(pixels, model, detector, hands=hands, fov_deg=fov, options=options)
            frames.append(pose_frame(fits, K, frame))
            overlays.append(overlay_for(model, pixels, fits, K, frame, title=f"image {i}"))
            framed.append(frame.image(pixels))
            if not fits:
                lines.append(f"image {i}: no hand found (empty frame)")
            for k, f in enumerate(fits):
                verdict = "kept" if f.ok else "left out: " + "; ".join(f.problems)
                lines.append(f"image {i} hand {k} ({f.side}, score {f.score:.2f}): error {f.mean_error:.3f} "
                             f"of the hand size ({f.mean_error_px:.1f} px), PCK@0.1 {f.pck['0.1']:.2f}, {verdict}")
            bar.update_absolute(i + 1, batch)
        spec = pose_spec(pose_document(frames))

        return io.NodeOutput(spec, to_float(np.stack(overlays)), to_float(np.stack(framed)),
                             ui=ui.PreviewText("\n".join(lines)))


#: Node classes this module adds to the extension.
NODES = [SesaHandHandPoseFromImage]
