"""Does a generated image show the hands its labels say? Keypoint alignment check.

The check runs a hand keypoint detector (:class:`~.detector.HandKeypointDetector`, MediaPipe)
on the image and compares the 21 detected keypoints of each hand with the conditioning
joints projected by the camera's ``K`` (``HandLabels.joints2d``).

Definitions (all per conditioning hand):

* Hand size ``s``: ``max(w, h)`` of the hand's label box (its visible pixels in the render),
  in pixels.
* Joints compared: those whose labelled 2D position lies inside the image (occluded joints
  count: the detector predicts every joint and the label gives where it is).
* Keypoint error ``e_j``: Euclidean pixel distance between detected and labelled joint ``j``;
  normalised error ``e_j / s``. Mean and median are over the joints compared.
* PCK@a: share of the joints compared with ``e_j <= a * s``, for a = 0.05, 0.1, 0.2.
* Matching: detections are assigned to conditioning hands one-to-one by the Hungarian method
  (``scipy.optimize.linear_sum_assignment``) on the mean normalised error, plus
  ``SIDE_TIE_BREAK`` when the detected side differs; a pair whose mean normalised error
  exceeds ``MATCH_GATE`` (one hand size) is not a match, so that hand counts as not detected.
* A hand passes when it is detected, its PCK@0.1 >= ``Thresholds.min_pck`` and, with
  ``Thresholds.require_side``, the detected side equals the label's.
* Image score: the mean PCK@0.1 over the checked hands (0 for a hand not detected), in 0..1.
  The image passes when every checked hand passes. Hands without a label box (nothing
  visible) are not checked; an image with no checked hand scores 0 and fails.

An image in which the detector finds no hand is a result (score 0, not detected), not an
error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..render.conditions import HandLabels
from ..render.maps import draw_hand_skeleton
from .detector import DetectedHand, HandKeypointDetector

#: PCK thresholds, as fractions of the hand size.
PCK_LEVELS = (0.05, 0.1, 0.2)

#: Largest mean normalised error of a detection that can still be matched to a hand.
MATCH_GATE = 1.0

#: Cost added to a detection/hand pair whose sides differ (breaks near ties only).
SIDE_TIE_BREAK = 0.05

#: Name of the detector recorded in the results.
DETECTOR_NAME = "mediapipe-hand-landmarker"


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail rule of one hand.

    Attributes:
        min_pck: least PCK@0.1 (share of joints within 10 % of the hand size), 0..1.
        require_side: the detected side must equal the labelled side.

    Raises: ValueError if ``min_pck`` is outside 0..1.
    """

    min_pck: float = 0.7
    require_side: bool = True

    def __post_init__(self):
        if not 0.0 <= self.min_pck <= 1.0:
            raise ValueError(f"min_pck: {self.min_pck} is outside 0..1")


@dataclass
class HandAlignment:
    """Alignment of one conditioning hand (see the module docstring for the definitions).

    Attributes:
        index: position of the hand in the labels.
        side: labelled side.
        checked: False when the hand has no visible pixel or no joint inside the image.
        detected: a detection was matched to it.
        passed: it meets the thresholds.
        reason: why it failed (empty when it passed).
        detected_side, side_score, side_match: side reported by the detector, its
            probability, and whether it equals ``side`` (None when not detected).
        hand_size_px: ``max(w, h)`` of the label box, pixels (None if not checked).
        joints_compared: number of joints compared.
        mean_error_px, median_error_px: keypoint error in pixels (None if not detected).
        mean_error, median_error: keypoint error divided by the hand size.
        pck: ``{"0.05": x, "0.1": x, "0.2": x}`` shares in 0..1 (0 when not detected).
        detected_joints2d: (21, 2) pixel keypoints of the matched detection, as lists.
    """

    index: int
    side: str
    checked: bool
    detected: bool = False
    passed: bool = False
    reason: str = ""
    detected_side: str | None = None
    side_score: float | None = None
    side_match: bool | None = None
    hand_size_px: float | None = None
    joints_compared: int = 0
    mean_error_px: float | None = None
    median_error_px: float | None = None
    mean_error: float | None = None
    median_error: float | None = None
    pck: dict[str, float] = field(default_factory=dict)
    detected_joints2d: list[list[float]] | None = None


@dataclass
class AlignmentResult:
    """Alignment of one image.

    Attributes:
        score: mean PCK@0.1 over the checked hands, 0..1 (0 when none is detected or none is
            checked).
        passed: every checked hand passed (False when no hand is checked).
        reason: one line: why it failed, or a short summary when it passed.
        hands: one :class:`HandAlignment` per conditioning hand, in label order.
        num_detections: hands the detector found.
        extra_detections: detections matched to no conditioning hand.
        thresholds: the rule applied.
    """

    score: float
    passed: bool
    reason: str
    hands: list[HandAlignment]
    num_detections: int
    extra_detections: int
    thresholds: Thresholds

    def to_dict(self) -> dict:
        """JSON-ready dict (the ``alignment`` field of a dataset record): the attributes above,
        plus ``detector`` and ``pck_levels``; no NaN (missing values are None)."""
        return {
            "detector": DETECTOR_NAME,
            "score": self.score,
            "passed": self.passed,
            "reason": self.reason,
            "num_detections": self.num_detections,
            "extra_detections": self.extra_detections,
            "thresholds": asdict(self.thresholds),
            "pck_levels": list(PCK_LEVELS),
            "hands": [asdict(h) for h in self.hands],
        }


@dataclass
class _Target:
    side: str
    joints2d: np.ndarray  # (21, 2)
    box: np.ndarray | None  # (4,)


def _target(hand, index: int) -> _Target:
    if isinstance(hand, HandLabels):
        side, joints, box = hand.side, hand.joints2d, hand.box
    elif isinstance(hand, Mapping):
        missing = [k for k in ("side", "joints2d", "box") if k not in hand]
        if missing:
            raise ValueError(f"hands[{index}]: missing {', '.join(missing)}; a hand needs side, "
                             "joints2d (21 x 2 pixels) and box (x0, y0, x1, y1 or null)")
        side, joints, box = hand["side"], hand["joints2d"], hand["box"]
    else:
        raise ValueError(f"hands[{index}]: expected HandLabels or a dict, got {type(hand).__name__}")
    joints = np.asarray(joints, dtype=np.float64)
    if joints.shape != (21, 2) or not np.isfinite(joints).all():
        raise ValueError(f"hands[{index}].joints2d: expected 21 x 2 finite pixel coordinates, got "
                         f"shape {joints.shape}")
    if side not in ("right", "left"):
        raise ValueError(f"hands[{index}].side: expected 'right' or 'left', got {side!r}")
    if box is not None:
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ValueError(f"hands[{index}].box: expected x0, y0, x1, y1 or null, got {box.tolist()}")
    return _Target(side=side, joints2d=joints, box=box)


def _as_rgb8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 RGB array, got shape {image.shape} "
                         f"dtype {image.dtype}")
    return image


def _round(x: float) -> float:
    return float(round(x, 6))


def check_alignment(image: np.ndarray, hands: Sequence[HandLabels | Mapping],
                    detector: HandKeypointDetector | None = None,
                    thresholds: Thresholds = Thresholds()) -> AlignmentResult:
    """Score how well ``image`` shows the conditioning ``hands``.

    Args:
        image: (H, W, 3) uint8 RGB, the generated image, same pixel grid as the labels.
        hands: the conditioning hands of this image: :class:`HandLabels`, or dicts with
            ``side``, ``joints2d`` (21 x 2 px, OpenPose order) and ``box`` (x0, y0, x1, y1
            px or None), as in a dataset record.
        detector: a detector to reuse across images; default: a new one from
            ``$SESAHAND_HAND_LANDMARKER``, closed afterwards.
        thresholds: the pass/fail rule.

    Returns: an :class:`AlignmentResult` (definitions in the module docstring).

    Raises:
        ValueError: malformed image or hand labels (the message names the field).
        FileNotFoundError / RuntimeError: no detector given and none can be made.
    """
    image = _as_rgb8(image)
    for i, h in enumerate(hands):  # bad labels fail before the detector runs
        _target(h, i)
    if detector is None:
        with HandKeypointDetector() as own:
            detections = own.detect(image)
    else:
        detections = detector.detect(image)
    return score_detections(image.shape[1], image.shape[0], hands, detections, thresholds)


def score_detections(width: int, height: int, hands: Sequence[HandLabels | Mapping],
                     detections: Sequence[DetectedHand], thresholds: Thresholds = Thresholds()
                     ) -> AlignmentResult:
    """The scoring half of :func:`check_alignment`, for detections already made.

    Args:
        width, height: image size in pixels.
        hands: conditioning hands (as for :func:`check_alignment`).
        detections: the detector's hands on that image.
        thresholds: the pass/fail rule.
    """
    from scipy.optimize import linear_sum_assignment

    targets = [_target(h, i) for i, h in enumerate(hands)]
    results: list[HandAlignment] = []
    checked: list[int] = []
    masks: list[np.ndarray] = []
    sizes: list[float] = []
    for i, t in enumerate(targets):
        inside = ((t.joints2d[:, 0] >= 0) & (t.joints2d[:, 0] < width)
                  & (t.joints2d[:, 1] >= 0) & (t.joints2d[:, 1] < height))
        size = None if t.box is None else float(max(t.box[2] - t.box[0], t.box[3] - t.box[1]))
        ok = size is not None and size > 0 and inside.any()
        results.append(HandAlignment(index=i, side=t.side, checked=bool(ok),
                                     hand_size_px=_round(size) if ok else None,
                                     joints_compared=int(inside.sum()) if ok else 0))
        if ok:
            checked.append(i)
            masks.append(inside)
            sizes.append(size)
        else:
            results[-1].reason = "not checked: no visible pixel or no joint inside the image"

    errors = np.full((len(checked), len(detections)), np.inf)
    cost = np.full_like(errors, 1e6)
    for r, (i, mask, size) in enumerate(zip(checked, masks, sizes)):
        for c, d in enumerate(detections):
            err = np.linalg.norm(d.joints2d[mask] - targets[i].joints2d[mask], axis=1) / size
            errors[r, c] = err.mean()
            if errors[r, c] <= MATCH_GATE:
                cost[r, c] = errors[r, c] + (SIDE_TIE_BREAK if d.side != targets[i].side else 0.0)
    matched: dict[int, int] = {}
    if errors.size:
        for r, c in zip(*linear_sum_assignment(cost)):
            if errors[r, c] <= MATCH_GATE:
                matched[r] = c

    failures = []
    for r, (i, mask, size) in enumerate(zip(checked, masks, sizes)):
        h = results[i]
        h.pck = {str(a): 0.0 for a in PCK_LEVELS}
        if r not in matched:
            h.reason = "not detected"
            failures.append(f"hand {i} ({h.side}): not detected")
            continue
        d = detections[matched[r]]
        err_px = np.linalg.norm(d.joints2d[mask] - targets[i].joints2d[mask], axis=1)
        h.detected = True
        h.detected_side, h.side_score = d.side, _round(d.side_score)
        h.side_match = d.side == h.side
        h.mean_error_px, h.median_error_px = _round(err_px.mean()), _round(np.median(err_px))
        h.mean_error, h.median_error = _round(err_px.mean() / size), _round(np.median(err_px) / size)
        h.pck = {str(a): _round(float((err_px <= a * size).mean())) for a in PCK_LEVELS}
        h.detected_joints2d = np.round(d.joints2d.astype(np.float64), 3).tolist()
        problems = []
        if h.pck["0.1"] < thresholds.min_pck:
            problems.append(f"PCK@0.1 {h.pck['0.1']:.2f} < {thresholds.min_pck:.2f}")
        if thresholds.require_side and not h.side_match:
            problems.append(f"detected as {d.side}")
        h.passed = not problems
        h.reason = "; ".join(problems)
        if problems:
            failures.append(f"hand {i} ({h.side}): {h.reason}")

    if checked:
        score = _round(sum(results[i].pck["0.1"] for i in checked) / len(checked))
    else:
        score = 0.0
        failures.append("no conditioning hand is visible in the frame; nothing to check")
    passed = not failures
    if passed:
        reason = (f"{len(checked)} hand(s) detected and aligned: PCK@0.1 "
                  + ", ".join(f"{results[i].pck['0.1']:.2f}" for i in checked))
    else:
        reason = "; ".join(failures)
    return AlignmentResult(score=score, passed=passed, reason=reason, hands=results,
                           num_detections=len(detections),
                           extra_detections=len(detections) - len(matched), thresholds=thresholds)


#: Overlay colours (RGB): labelled (conditioning) keypoints, detected keypoints, box.
LABEL_COLOR = (0, 200, 0)
DETECTED_COLOR = (230, 0, 200)
BOX_COLOR = (255, 200, 0)


def draw_overlay(image: np.ndarray, hands: Sequence[HandLabels | Mapping],
                 result: AlignmentResult) -> np.ndarray:
    """Picture of a check: the image with labelled keypoints (green), detected keypoints
    (magenta), each checked hand's label box (yellow) and the score / pass line.

    Args:
        image: (H, W, 3) uint8 RGB, the checked image.
        hands: the conditioning hands given to :func:`check_alignment`.
        result: its result.

    Returns: (H, W, 3) uint8 RGB, a new array.
    """
    image = _as_rgb8(image)
    targets = [_target(h, i) for i, h in enumerate(hands)]
    canvas = Image.fromarray(image.copy(), "RGB")
    draw = ImageDraw.Draw(canvas)
    radius = max(2, round(min(image.shape[:2]) / 160))

    for t, h in zip(targets, result.hands):
        if t.box is not None and h.checked:
            draw.rectangle(t.box.tolist(), outline=BOX_COLOR, width=max(1, radius // 2))
            draw.text((t.box[0] + 2, t.box[1] + 2), f"{h.index} {h.side}", fill=BOX_COLOR)
        draw_hand_skeleton(draw, t.joints2d.tolist(), LABEL_COLOR, radius)
        if h.detected_joints2d is not None:
            draw_hand_skeleton(draw, h.detected_joints2d, DETECTED_COLOR, radius)
    verdict = "PASS" if result.passed else "FAIL"
    draw.rectangle([0, 0, image.shape[1], 14], fill=(0, 0, 0))
    draw.text((3, 2), f"{verdict} score {result.score:.2f}  detected {result.num_detections}  "
                      "green=label magenta=detected", fill=(255, 255, 255))
    return np.asarray(canvas)
