"""Proof with the real detector: MediaPipe on skin-shaded renders of the open hand model.

Stated bound. The labels' 21 joints are the open hand model's keypoints (joint centres inside
the mesh, fingertips picked from vertices); MediaPipe was trained on human annotations of
photographs (wrist at the crease, thumb CMC, tips at the skin). The two definitions differ by a
few millimetres per joint on an 18 cm hand: on these renders the median normalised error per
image was 0.02-0.05 of the hand box (largest at the wrist and thumb base). The test asserts
every view is detected with a median normalised error <= 0.08 (MAX_MEDIAN_ERROR) and
PCK@0.2 >= 0.9, and a median over views <= 0.05; a label shifted by 0.3 of the box must show
an error near 0.3 and fail.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from sesahand.eval import Thresholds, check_alignment, draw_overlay

MAX_MEDIAN_ERROR = 0.08
MAX_POOLED_MEDIAN = 0.05


def test_every_view_is_detected_within_the_stated_bound(renders, detector):
    medians = []
    for r in renders:
        result = check_alignment(r.image, r.labels, detector)
        hand = result.hands[0]
        assert hand.detected, f"{r.view}: {result.reason}"
        assert hand.median_error <= MAX_MEDIAN_ERROR, f"{r.view}: median error {hand.median_error}"
        assert hand.pck["0.2"] >= 0.9, f"{r.view}: {hand.pck}"
        assert hand.side_match, f"{r.view}: detected as {hand.detected_side}"
        assert result.passed and result.score == hand.pck["0.1"], r.view
        json.dumps(result.to_dict(), allow_nan=False)
        medians.append(hand.median_error)
    assert float(np.median(medians)) <= MAX_POOLED_MEDIAN


def _shift(labels, dx: float, dy: float = 0.0):
    return [replace(lab, joints2d=lab.joints2d + torch.tensor([dx, dy]),
                    box=lab.box + torch.tensor([dx, dy, dx, dy])) for lab in labels]


def test_a_shifted_label_gives_a_large_error_and_fails(renders, detector):
    r = renders[0]
    box = r.labels[0].box
    size = float(max(box[2] - box[0], box[3] - box[1]))
    result = check_alignment(r.image, _shift(r.labels, 0.3 * size), detector)
    hand = result.hands[0]
    assert hand.detected  # within the match gate, so it is scored, not dropped
    assert 0.2 <= hand.median_error <= 0.4
    assert hand.pck["0.1"] < 0.3 and not result.passed and "PCK@0.1" in result.reason
    # Far away (0.9 box right and down, mean error > MATCH_GATE): the hand counts as not detected.
    far = check_alignment(r.image, _shift(r.labels, 0.9 * size, 0.9 * size), detector)
    assert not far.hands[0].detected and far.score == 0.0 and far.extra_detections == 1
    assert not far.passed and "not detected" in far.reason


def test_handedness_follows_the_subject_not_the_viewer(renders, detector):
    """A mirrored right hand is a left hand: the detector must say so (the legacy MediaPipe API
    would report the opposite), and the check then matches mirrored labels of side 'left'."""
    r = renders[0]
    assert r.view[0] == "right"
    width = r.image.shape[1]
    mirrored = np.ascontiguousarray(r.image[:, ::-1])
    lab = r.labels[0]
    flipped = replace(lab, side="left",
                      joints2d=torch.stack([width - lab.joints2d[:, 0], lab.joints2d[:, 1]], 1),
                      box=torch.tensor([width - lab.box[2], lab.box[1], width - lab.box[0], lab.box[3]]))
    (detection,) = detector.detect(mirrored)
    assert detection.side == "left"
    assert check_alignment(mirrored, [flipped], detector).passed
    wrong_side = check_alignment(mirrored, [replace(flipped, side="right")], detector)
    assert not wrong_side.passed and wrong_side.hands[0].side_match is False
    assert check_alignment(mirrored, [replace(flipped, side="right")], detector,
                           Thresholds(require_side=False)).passed


def test_an_image_without_a_hand_is_scored_not_raised(renders, detector):
    blank = np.full((512, 512, 3), 200, np.uint8)
    result = check_alignment(blank, renders[0].labels, detector)
    assert result.num_detections == 0 and result.score == 0.0 and not result.passed
    assert result.hands[0].checked and not result.hands[0].detected
    assert result.hands[0].pck == {"0.05": 0.0, "0.1": 0.0, "0.2": 0.0}
    json.dumps(result.to_dict(), allow_nan=False)


def test_overlay_draws_both_skeletons(renders, detector):
    from sesahand.eval.alignment import DETECTED_COLOR, LABEL_COLOR

    r = renders[0]
    result = check_alignment(r.image, r.labels, detector)
    overlay = draw_overlay(r.image, r.labels, result)
    assert overlay.shape == r.image.shape and overlay.dtype == np.uint8
    for colour, points in ((LABEL_COLOR, r.labels[0].joints2d.numpy()),
                           (DETECTED_COLOR, np.array(result.hands[0].detected_joints2d))):
        x, y = points[12].round().astype(int)  # middle fingertip: a disc is drawn there
        patch = overlay[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
        assert (patch == colour).all(1).any(), colour


@pytest.fixture
def checked_dataset(tmp_path, renders):
    """A two-sample dataset (sesahand.data format) of renders: the second image is blank."""
    from sesahand.data import DatasetWriter

    root = tmp_path / "ds"
    with DatasetWriter(root) as writer:
        for image in (renders[0].image, np.full_like(renders[0].image, 200)):
            writer.append(image, renders[0].frame)
    return root


def test_qa_cli_scores_and_stores_every_sample(checked_dataset, task_file, capsys):
    from sesahand.cli import main
    from sesahand.data import read_labels

    assert main(["qa", str(checked_dataset), "--task", task_file]) == 0
    table = capsys.readouterr().out
    assert "detection rate" in table and "0.500" in table  # one of two hands detected
    first, second = read_labels(checked_dataset)
    assert first["alignment"]["passed"] and first["alignment"]["hands"][0]["detected"]
    assert second["alignment"]["score"] == 0.0 and not second["alignment"]["hands"][0]["detected"]
