"""SesaHand Hand Pose from Image in a real ComfyUI, on real photos (tests/data/photos)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfyui

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"


def pack(comfyui, name: str):
    return importlib.import_module(f"{comfyui.pack_module.__name__}.{name}")


@pytest.fixture(scope="module")
def task():
    pytest.importorskip("mediapipe")
    path = os.environ.get("SESAHAND_HAND_LANDMARKER")
    if not path or not os.path.isfile(path):
        pytest.skip("SESAHAND_HAND_LANDMARKER does not name a hand_landmarker.task (make test-models)")
    return ""  # an empty task_file: the node uses $SESAHAND_HAND_LANDMARKER (paths must be in models/sesahand)


def _batch(*names, size=(384, 384)):
    frames = [np.asarray(Image.open(PHOTOS / n).convert("RGB").resize(size, Image.Resampling.BICUBIC))
              for n in names]
    return torch.from_numpy(np.stack(frames)).to(torch.float32) / 255.0


def test_schema(comfyui):
    info = comfyui.node("SesaHandHandPoseFromImage").GET_NODE_INFO_V1()
    assert info["display_name"] == "SesaHand Hand Pose from Image" and info["category"] == "SesaHand/hands"
    assert info["output"] == ["SESAHAND_POSE", "IMAGE", "IMAGE"]
    assert info["input"]["required"]["hands"][1]["options"] == ["all", "largest", "left", "right"]


def test_pose_from_photos_renders_over_them(comfyui, task):
    hand_model = comfyui.node("SesaHandHandModel").execute(model="anny (open)", side="right").result[0]
    images = _batch("two_hands_thumb_down.jpg", "no_hand.jpg")
    out = comfyui.node("SesaHandHandPoseFromImage").execute(
        image=images, hand_model=hand_model, hands="all", min_score=0.5, fov=50.0, width=256, height=320,
        framing="crop", task_file=task)
    pose, overlay, framed = out.result
    assert overlay.shape == (2, 320, 256, 3) and framed.shape == (2, 320, 256, 3)
    assert [len(hands) for _, hands in pose.frames] == [2, 0]
    assert all((cam.width, cam.height) == (256, 320) for cam, _ in pose.frames)
    text = out.ui.as_dict()["text"][0]
    assert "image 1: no hand found (empty frame)" in text and text.count("kept") == 2

    render = comfyui.node("SesaHandRenderConditions").execute(
        hand_model=hand_model, pose=pose, width=512, height=512, fov=40.0, batch_size=2, backend="auto")
    mesh, mask, hands = render.result[0], render.result[4], render.result[5]
    assert mesh.shape == (2, 320, 256, 3)  # the pose's camera wins over width / height
    assert mask[0].sum() > 500 and mask[1].sum() == 0
    # The rendered hands sit on the hands of the framed photo: MediaPipe finds them there.
    detector = pack(comfyui, "nodes.alignment").cached_detector(task, num_hands=4)
    photo = (framed[0].numpy() * 255).round().astype(np.uint8)
    result = pack(comfyui, "sesahand.eval").check_alignment(photo, hands.labels[0], detector)
    assert result.passed, result.reason
    json.dumps(hands.frame_dict(0))


def test_works_under_inference_mode_as_comfyui_runs_it(comfyui, task):
    """ComfyUI loads the hand model and runs the node under torch.inference_mode."""
    with torch.inference_mode():
        hand_model = comfyui.node("SesaHandHandModel").execute(model="anny (open)", side="right").result[0]
        pose = comfyui.node("SesaHandHandPoseFromImage").execute(
            image=_batch("open_palm_left.jpg"), hand_model=hand_model, hands="all", min_score=0.5, fov=50.0,
            width=256, height=256, framing="crop", task_file=task).result[0]
    assert [h.side for h in pose.frames[0][1]] == ["left"]


def test_interrupt_is_honoured(comfyui, task):
    import comfy.model_management as mm

    hand_model = comfyui.node("SesaHandHandModel").execute(model="anny (open)", side="right").result[0]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfyui.node("SesaHandHandPoseFromImage").execute(
                image=_batch("open_palm_left.jpg"), hand_model=hand_model, hands="all", min_score=0.5,
                fov=50.0, width=256, height=256, framing="crop", task_file=task)
    finally:
        mm.interrupt_current_processing(False)


def test_bad_widget_values_are_refused(comfyui):
    node = comfyui.node("SesaHandHandPoseFromImage")
    assert "multiple of 8" in node.validate_inputs(width=250)
    assert "not a number in 0..1" in node.validate_inputs(min_score=2.0)
    assert "unknown" in node.validate_inputs(hands="both")
    assert node.validate_inputs(width=512, height=384, min_score=0.5, fov=50.0, hands="all") is True
    for value in ("abc", 512.5, True):
        assert "width" in node.validate_inputs(width=value) and "whole number" in node.validate_inputs(width=value)
    assert "multiple of 8" in node.validate_inputs(height=100)
    assert "fov" in node.validate_inputs(fov=500.0)
    assert "min_score" in node.validate_inputs(min_score="x")
    # a task_file outside the sesahand model folders is refused, whether or not it exists
    existing, missing = "/etc/passwd", "/no/such/file.task"
    assert node.validate_inputs(task_file=existing).replace(existing, "X") == \
        node.validate_inputs(task_file=missing).replace(missing, "X")
    assert "task_file" in node.validate_inputs(task_file=existing)
