"""SesaHand Alignment Check as loaded by a real ComfyUI (in-process, CPU).

Chain: Hand Model -> Hand Pose (open_palm) -> Render Conditions -> the mesh image shaded to
skin on a light background -> Alignment Check. The real-detector parts need mediapipe and
``$SESAHAND_HAND_LANDMARKER`` and skip without them.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfyui

NODE_ID = "SesaHandAlignmentCheck"
SKIN = torch.tensor([0.87, 0.67, 0.55])
BACKGROUND = torch.tensor([0.85, 0.88, 0.92])


@pytest.fixture(scope="module")
def rendered(comfyui):
    """Two frames of an open right palm at 256 x 256: (mesh, mask, hands)."""
    model = comfyui.node("SesaHandHandModel").execute(model="anny (open)", mano_file="", side="right")[0]
    pose = comfyui.node("SesaHandHandPose").execute(mode="preset", preset="open_palm", seed=0, num_hands=1,
                                                    box_min=40, box_max=64, pose_json="")[0]
    out = comfyui.node("SesaHandRenderConditions").execute(hand_model=model, pose=pose, width=256, height=256,
                                                           fov=40.0, batch_size=2, backend="auto")
    return out[0], out[4], out[5]


def skin(mesh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mesh image (light blue for a right hand) as a skin-coloured hand on a light background."""
    shade = mesh.amax(-1, keepdim=True) / 1.0  # the right hand's base colour has a largest channel of 1
    m = mask[..., None]
    return m * shade * SKIN + (1 - m) * BACKGROUND


def test_schema_follows_the_pack_conventions(comfyui):
    info = comfyui.node(NODE_ID).GET_NODE_INFO_V1()
    assert info["category"] == "SesaHand/eval" and info["display_name"] == "SesaHand Alignment Check"
    for name, (_, options) in info["input"]["required"].items():
        assert options.get("tooltip"), name
    assert info["output"] == ["STRING", "FLOAT", "IMAGE"]
    assert isinstance(comfyui.node(NODE_ID).validate_inputs(min_pck=1.5), str)
    assert comfyui.node(NODE_ID).validate_inputs(min_pck=0.5) is True


def test_scores_a_rendered_hand_and_draws_the_overlay(comfyui, rendered, task_file, tmp_path, monkeypatch):
    # task_file names a file in the sesahand model folders (paths elsewhere are refused)
    shutil.copy(task_file, tmp_path / "landmarker.task")
    monkeypatch.setattr(comfyui.folder_paths, "get_folder_paths", lambda name: [str(tmp_path)])
    task_file = "landmarker.task"
    assert comfyui.node(NODE_ID).validate_inputs(task_file=task_file) is True
    assert "not a file inside" in comfyui.node(NODE_ID).validate_inputs(task_file=os.environ["SESAHAND_HAND_LANDMARKER"])
    mesh, mask, hands = rendered
    images = skin(mesh, mask)
    scores, score, overlay = comfyui.node(NODE_ID).execute(images=images, hands=hands, min_pck=0.7,
                                                           require_side=True, task_file=task_file)
    results = json.loads(scores)
    assert len(results) == 2 and all(r["passed"] and r["hands"][0]["detected"] for r in results)
    assert 0.7 <= score <= 1.0 and score == pytest.approx(np.mean([r["score"] for r in results]))
    assert overlay.shape == images.shape and overlay.dtype == torch.float32
    assert not torch.equal(overlay, images)  # keypoints and boxes were drawn

    # A blank image: scored as not detected, no error.
    blank = BACKGROUND.expand(2, 256, 256, 3).clone()
    scores, score, _ = comfyui.node(NODE_ID).execute(images=blank, hands=hands, min_pck=0.7,
                                                     require_side=True, task_file=task_file)
    result = json.loads(scores)[0]
    assert score == 0.0 and not result["passed"] and "not detected" in result["reason"]


def test_task_file_is_found_in_the_sesahand_model_folder(comfyui, rendered, task_file, tmp_path, monkeypatch):
    shutil.copy(task_file, tmp_path / "hand_landmarker.task")
    monkeypatch.delenv("SESAHAND_HAND_LANDMARKER")
    monkeypatch.setattr(comfyui.folder_paths, "get_folder_paths", lambda name: [str(tmp_path)])
    mesh, mask, hands = rendered
    _, score, _ = comfyui.node(NODE_ID).execute(images=skin(mesh, mask), hands=hands, min_pck=0.7,
                                                require_side=True, task_file="")
    assert score > 0.7


def test_bad_inputs_give_clear_errors(comfyui, rendered, tmp_path, monkeypatch):
    hands = rendered[2]
    node = comfyui.node(NODE_ID)
    with pytest.raises(ValueError, match="2 frames for 3 images"):
        node.execute(images=torch.zeros(3, 256, 256, 3), hands=hands, min_pck=0.7, require_side=True,
                     task_file="")
    monkeypatch.delenv("SESAHAND_HAND_LANDMARKER", raising=False)
    monkeypatch.setattr(comfyui.folder_paths, "get_folder_paths", lambda name: [str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="qa-model"):
        node.execute(images=torch.zeros(2, 256, 256, 3), hands=hands, min_pck=0.7, require_side=True,
                     task_file="")
    with pytest.raises(ValueError, match="rendered at 256x256"):
        node.execute(images=torch.zeros(2, 128, 256, 3), hands=hands, min_pck=0.7, require_side=True,
                     task_file=str(tmp_path / "whatever.task"))
