"""Matching and scoring of the alignment check with synthetic detections (no detector needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sesahand.eval import DetectedHand, Thresholds, check_alignment, draw_overlay, score_detections
from sesahand.render.conditions import HandLabels

W = H = 200


def hand(side="right", x0=20.0, y0=40.0, size=100.0) -> HandLabels:
    """A hand whose 21 joints lie on a 3 x 7 grid inside a size x size box at (x0, y0)."""
    gx, gy = np.meshgrid(np.linspace(0.2, 0.8, 3), np.linspace(0.1, 0.9, 7))
    joints = np.stack([x0 + size * gx.ravel(), y0 + size * gy.ravel()], 1)
    return HandLabels(side=side, model="test", joints3d=torch.zeros(21, 3),
                      joints2d=torch.tensor(joints, dtype=torch.float32), visible=torch.ones(21, dtype=torch.bool),
                      box=torch.tensor([x0, y0, x0 + size, y0 + size]))


def detection(labels: HandLabels, offsets=None, side=None, score=0.9) -> DetectedHand:
    joints = labels.joints2d.numpy().astype(np.float64)
    if offsets is not None:
        joints = joints + offsets
    return DetectedHand(joints2d=joints.astype(np.float32), side=side or labels.side, side_score=score)


def test_perfect_detection_scores_one():
    h = hand()
    result = score_detections(W, H, [h], [detection(h)])
    (a,) = result.hands
    assert result.passed and result.score == 1.0 and a.detected and a.side_match
    assert a.mean_error == 0.0 and a.pck == {"0.05": 1.0, "0.1": 1.0, "0.2": 1.0}
    assert a.hand_size_px == 100.0 and a.joints_compared == 21 and a.side_score == pytest.approx(0.9)


def test_errors_and_pck_follow_the_definitions():
    h = hand(size=100.0)
    offsets = np.zeros((21, 2))
    offsets[:7, 0] = 3.0  # 7 joints 3 px off (0.03 of the box)
    offsets[7:14, 1] = 8.0  # 7 joints 8 px off (0.08)
    offsets[14:, 0] = 15.0  # 7 joints 15 px off (0.15)
    (a,) = score_detections(W, H, [h], [detection(h, offsets)]).hands
    assert a.mean_error_px == pytest.approx((3 + 8 + 15) / 3, abs=1e-4)
    assert a.median_error_px == pytest.approx(8.0, abs=1e-4)
    assert a.median_error == pytest.approx(0.08, abs=1e-6)
    assert a.pck == pytest.approx({"0.05": 1 / 3, "0.1": 2 / 3, "0.2": 1.0}, abs=1e-6)
    # PCK@0.1 = 2/3 is below the default 0.7 but above 0.6
    assert not a.passed and "PCK@0.1 0.67 < 0.70" in a.reason
    assert score_detections(W, H, [h], [detection(h, offsets)], Thresholds(min_pck=0.6)).passed


def test_detections_are_matched_one_to_one_regardless_of_order():
    right, left = hand("right", x0=0.0, size=90.0), hand("left", x0=105.0, size=90.0)
    dets = [detection(left, np.full((21, 2), 2.0)), detection(right, np.full((21, 2), 1.0))]
    result = score_detections(W, H, [right, left], dets)
    assert [h.detected_side for h in result.hands] == ["right", "left"]
    assert result.hands[0].mean_error_px == pytest.approx(np.sqrt(2), abs=1e-4)
    assert result.hands[1].mean_error_px == pytest.approx(2 * np.sqrt(2), abs=1e-4)
    assert result.passed and result.extra_detections == 0 and result.num_detections == 2


def test_side_breaks_a_tie_between_equally_close_detections():
    h = hand("right")
    offsets = np.zeros((21, 2))
    offsets[:, 0] = 2.0
    wrong, right = detection(h, offsets, side="left"), detection(h, -offsets, side="right")
    result = score_detections(W, H, [h], [wrong, right])
    assert result.hands[0].detected_side == "right" and result.extra_detections == 1


def test_wrong_side_fails_only_when_required():
    h = hand("right")
    det = detection(h, side="left")
    failed = score_detections(W, H, [h], [det])
    assert not failed.passed and failed.hands[0].side_match is False and "detected as left" in failed.reason
    assert failed.score == 1.0  # the keypoints are right; only the side is wrong
    assert score_detections(W, H, [h], [det], Thresholds(require_side=False)).passed


def test_a_detection_beyond_the_match_gate_is_not_a_match():
    h = hand(size=50.0)
    result = score_detections(W, H, [h], [detection(h, np.full((21, 2), 60.0))])  # 1.7 boxes away
    assert not result.hands[0].detected and result.extra_detections == 1
    assert result.score == 0.0 and not result.passed and "not detected" in result.reason


def test_no_detection_is_a_result_not_an_error():
    result = score_detections(W, H, [hand(), hand("left", x0=100.0)], [])
    assert result.score == 0.0 and not result.passed and result.num_detections == 0
    assert all(h.checked and not h.detected and h.mean_error is None for h in result.hands)
    json.dumps(result.to_dict(), allow_nan=False)


def test_joints_outside_the_image_and_invisible_hands_are_left_out():
    h = hand(x0=140.0, size=100.0)  # the right column of joints (x = 220) is outside the 200 px image
    offsets = np.zeros((21, 2))
    offsets[2::3, 0] = 50.0  # error only on those outside joints
    (a,) = score_detections(W, H, [h], [detection(h, offsets)]).hands
    assert a.joints_compared == 14 and a.mean_error == 0.0
    hidden = hand()
    hidden.box = None
    result = score_detections(W, H, [hidden, h], [detection(h)])
    assert not result.hands[0].checked and result.hands[1].detected and result.passed
    only_hidden = score_detections(W, H, [hidden], [])
    assert not only_hidden.passed and only_hidden.score == 0.0 and "nothing to check" in only_hidden.reason


def test_record_dicts_are_accepted_and_results_are_json():
    h = hand()
    record_hand = {"side": "right", "joints2d": h.joints2d.tolist(), "box": h.box.tolist(), "visible": [True] * 21}
    result = score_detections(W, H, [record_hand], [detection(h)])
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["passed"] and data["detector"] == "mediapipe-hand-landmarker"
    assert data["pck_levels"] == [0.05, 0.1, 0.2] and data["thresholds"] == {"min_pck": 0.7, "require_side": True}
    assert len(data["hands"][0]["detected_joints2d"]) == 21


class _FakeDetector:
    def __init__(self, hands):
        self.hands, self.calls = hands, 0

    def detect(self, image):
        self.calls += 1
        return self.hands


@pytest.mark.parametrize("bad, field", [
    ({"side": "right", "box": None}, "joints2d"),
    ({"side": "up", "joints2d": [[0, 0]] * 21, "box": None}, "side"),
    ({"side": "right", "joints2d": [[0, 0]] * 20, "box": None}, "joints2d"),
    ({"side": "right", "joints2d": [[0, 0]] * 21, "box": [0, 0, 1]}, "box"),
])
def test_bad_labels_are_refused_before_detection(bad, field):
    det = _FakeDetector([])
    with pytest.raises(ValueError, match=field):
        check_alignment(np.zeros((H, W, 3), np.uint8), [bad], det)
    assert det.calls == 0


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        check_alignment(np.zeros((H, W, 3), np.float32), [hand()], _FakeDetector([]))
    with pytest.raises(ValueError, match="H, W, 3"):
        check_alignment(np.zeros((H, W), np.uint8), [hand()], _FakeDetector([]))


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="min_pck"):
        Thresholds(min_pck=1.5)


def test_overlay_marks_label_detection_and_box():
    from sesahand.eval.alignment import BOX_COLOR, DETECTED_COLOR, LABEL_COLOR

    h = hand()
    offsets = np.zeros((21, 2))
    offsets[:, 1] = 6.0
    image = np.full((H, W, 3), 128, np.uint8)
    result = check_alignment(image, [h], _FakeDetector([detection(h, offsets)]))
    overlay = draw_overlay(image, [h], result)
    assert overlay.shape == image.shape and (image == 128).all()  # input untouched
    x, y = h.joints2d[0].round().int().tolist()
    assert (overlay[y, x] == LABEL_COLOR).all() and (overlay[y + 6, x] == DETECTED_COLOR).all()
    x0, y0, _, _ = h.box.int().tolist()
    assert (overlay[y0 + 30, x0] == BOX_COLOR).all()
    assert (overlay[1:13, :60].min(-1) > 200).any()  # the score line's white text on black
