"""Fixtures of the fitting tests: the real test photos (``photos``, ``expected_sides``,
``missed_by_detector``), the real MediaPipe detector, one fit of every photo with the open hand
(shared by the tests of a session). ``task_file`` is in ``tests/conftest.py``.

Needs ``mediapipe>=0.10.30`` and ``$SESAHAND_HAND_LANDMARKER`` (``make test-models``); the
tests skip, saying which is missing, without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"

#: The subject's hands in each photo, judged by eye (tests/data/photos/SOURCES.md), in no order.
EXPECTED_SIDES = {
    "open_palm_left.jpg": ["left"],
    "open_palm_right.jpg": ["right"],
    "rock_right.jpg": ["right"],
    "thumb_down_right.jpg": ["right"],
    "point_left.jpg": ["left"],
    "two_hands_thumb_down.jpg": ["left", "right"],
    "two_hands_back.jpg": ["left", "left"],
    "raised_hand_cut.jpg": ["left"],
    "pinch_right.jpg": ["right"],
    "holding_flute_right.jpg": ["right"],  # fingers on the keys of a flute, thumb hidden
    "no_hand.jpg": [],
}

#: Photos whose hands (judged by eye, as above) MediaPipe does not find: the fit must report
#: "no hand" for them, never a hand that is not there.
MISSED_BY_DETECTOR = {
    "holding_trumpet.jpg": ["left", "right"],  # both hands on a trumpet, partly hidden by it
}


@pytest.fixture(scope="session")
def photos() -> Path:
    """The folder of real test photos (``tests/data/photos``, sources in its SOURCES.md)."""
    return PHOTOS


@pytest.fixture(scope="session")
def expected_sides() -> dict[str, list[str]]:
    """:data:`EXPECTED_SIDES`: photo name -> the subject's hands, judged by eye."""
    return EXPECTED_SIDES


@pytest.fixture(scope="session")
def missed_by_detector() -> dict[str, list[str]]:
    """:data:`MISSED_BY_DETECTOR`: photo name -> hands (judged by eye) MediaPipe does not find."""
    return MISSED_BY_DETECTOR


@dataclass
class PhotoFit:
    name: str
    pixels: np.ndarray
    K: np.ndarray
    fits: list


@pytest.fixture(scope="session")
def detector(task_file):
    """One MediaPipe detector (up to 4 hands) for the session."""
    from sesahand.eval import HandKeypointDetector
    from sesahand.fit import MAX_HANDS

    with HandKeypointDetector(task_file, num_hands=MAX_HANDS) as det:
        yield det


@pytest.fixture(scope="session")
def photo_fits(anny_model, detector) -> dict[str, PhotoFit]:
    """Every test photo fitted with the open hand and the default options."""
    from sesahand.fit import fit_hands, load_photo, photo_intrinsics

    out = {}
    for name in [*EXPECTED_SIDES, *MISSED_BY_DETECTOR]:
        photo = load_photo(PHOTOS / name)
        fits = fit_hands(photo.pixels, anny_model, detector)
        out[name] = PhotoFit(name, photo.pixels, photo_intrinsics(photo.width, photo.height), fits)
    return out
