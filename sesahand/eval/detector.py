"""Hand keypoint detector for the alignment check: MediaPipe's Tasks-API ``HandLandmarker``.

Dependency route: ``mediapipe>=0.10.30`` (the optional extra ``qa``; 1.2.2 verified here) runs
with numpy 2 but ships no model files. Its ``HandLandmarker`` needs a ``hand_landmarker.task``
file, which is a zip holding ``hand_detector.tflite`` (the palm detector) and
``hand_landmarks_detector.tflite`` (the 21-landmark model). Those two models ship, as
``palm_detection_full.tflite`` and ``hand_landmark_full.tflite``, inside the
``mediapipe==0.10.21`` wheel (Apache-2.0), which is downloaded, never installed (it pins
numpy<2)::

    pip download --no-deps mediapipe==0.10.21 -d wheels/
    python -m sesahand qa-model --source wheels/mediapipe-0.10.21-*.whl --out hand_landmarker.task

Handedness: the legacy ``mp.solutions.hands`` API (mediapipe <= 0.10.21) assumes a mirrored
(selfie) image and reports the opposite hand on an ordinary photo. The Tasks API of the
mediapipe versions this extra allows reports the subject's own hand ("Right" for a right
hand), checked on renders of right and left hands and on mirrored renders in
``tests/eval``. The detector maps MediaPipe's labels to ``"right"`` / ``"left"`` with that
convention.

Keypoint order: MediaPipe's 21 hand landmarks are wrist, thumb CMC/MCP/IP/tip, then index,
middle, ring and little finger MCP/PIP/DIP/tip: the OpenPose / FreiHAND order of the pack,
so no re-indexing is needed.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_path

log = logging.getLogger(__name__)

#: File name of the MediaPipe hand landmarker model (looked for in ComfyUI's ``models/sesahand``).
TASK_NAME = "hand_landmarker.task"

#: Environment variable naming the ``hand_landmarker.task`` file.
TASK_ENV = "SESAHAND_HAND_LANDMARKER"

#: The ``--task`` option's help of every command that detects hands.
TASK_HELP = f"{TASK_NAME} (default: ${TASK_ENV}; build one with qa-model)"

#: Members of the mediapipe 0.10.21 wheel -> names inside a ``.task`` file.
TASK_MEMBERS = {
    "mediapipe/modules/palm_detection/palm_detection_full.tflite": "hand_detector.tflite",
    "mediapipe/modules/hand_landmark/hand_landmark_full.tflite": "hand_landmarks_detector.tflite",
}

#: How to get a model file (the end of every "no model" error, library and nodes).
SETUP_HINT = ("build one with: pip download --no-deps mediapipe==0.10.21 -d wheels/ && "
              "python -m sesahand qa-model --source wheels/mediapipe-0.10.21-<tag>.whl "
              f"--out {TASK_NAME}; then pass its path or set "
              f"{TASK_ENV}=/path/to/{TASK_NAME} (in a clone of the pack, `make test-models` "
              f"builds .venv/models/{TASK_NAME}; in ComfyUI put it in models/sesahand)")


def build_hand_landmarker_task(source: str | Path, out: str | Path) -> Path:
    """Build a MediaPipe ``hand_landmarker.task`` file from the mediapipe 0.10.21 models.

    Args:
        source: the downloaded ``mediapipe-0.10.21-*.whl`` (a zip), or a folder holding the
            unpacked wheel (or just ``palm_detection_full.tflite`` and
            ``hand_landmark_full.tflite`` anywhere below it).
        out: the ``.task`` file to write (atomically; parent folders are created).

    Returns: ``out`` as a Path. The file is an uncompressed zip with ``hand_detector.tflite``
    and ``hand_landmarks_detector.tflite``, as the Tasks API expects.

    Raises:
        FileNotFoundError: ``source`` does not exist or lacks one of the two models.
        ValueError: ``source`` is a file but not a zip (wheel).
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"source {source}: not found; download the wheel with "
                                "pip download --no-deps mediapipe==0.10.21")
    models: dict[str, bytes] = {}
    if source.is_dir():
        for member, name in TASK_MEMBERS.items():
            found = sorted(source.rglob(Path(member).name))
            if not found:
                raise FileNotFoundError(f"source {source}: no {Path(member).name} below it; give the "
                                        "mediapipe 0.10.21 wheel or its unpacked folder")
            models[name] = found[0].read_bytes()
    else:
        if not zipfile.is_zipfile(source):
            raise ValueError(f"source {source}: not a wheel (zip) file; give the mediapipe 0.10.21 "
                             ".whl or its unpacked folder")
        with zipfile.ZipFile(source) as wheel:
            names = set(wheel.namelist())
            for member, name in TASK_MEMBERS.items():
                if member not in names:
                    raise FileNotFoundError(f"source {source}: the wheel has no {member}; use the "
                                            "mediapipe==0.10.21 wheel (newer ones ship no models)")
                models[name] = wheel.read(member)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as task:
        for name, data in models.items():
            task.writestr(name, data)
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def find_task_path(task_path: str | Path | None = None) -> Path:
    """The ``hand_landmarker.task`` to use: ``task_path``, else ``$SESAHAND_HAND_LANDMARKER``.

    Raises:
        FileNotFoundError: neither is given, or the file does not exist (the message says how
            to build one).
    """
    given = task_path if task_path not in (None, "") else os.environ.get(TASK_ENV) or None
    if given is None:
        raise FileNotFoundError(f"no hand landmarker model: give a .task file or set {TASK_ENV}; "
                                + SETUP_HINT)
    path = Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"hand landmarker model {path}: file not found; " + SETUP_HINT)
    return path


@dataclass
class DetectedHand:
    """One hand found by the detector.

    Attributes:
        joints2d: (21, 2) float32 pixels, OpenPose order, same convention as the labels
            (x right, y down, origin at the image's top-left corner, pixel centres at +0.5).
        side: ``"right"`` or ``"left"``: the subject's hand.
        side_score: MediaPipe's handedness probability in 0.5..1 (the only per-hand score the
            Tasks API returns; the hand already passed the detector's detection and presence
            thresholds).
        world_joints: (21, 3) float32 metres or None: MediaPipe's world landmarks, the hand's
            metric 3D shape with the origin at its approximate geometric centre and axes
            along the image's (x right, y down, z away from the camera); its scale is
            MediaPipe's estimate, not a measurement.
    """

    joints2d: np.ndarray
    side: str
    side_score: float
    world_joints: np.ndarray | None = None


class HandKeypointDetector:
    """MediaPipe ``HandLandmarker`` (Tasks API, image mode, CPU) returning pixel keypoints.

    Args:
        task_path: the ``hand_landmarker.task`` file; default ``$SESAHAND_HAND_LANDMARKER``.
        num_hands: most hands reported per image.
        min_confidence: MediaPipe's ``min_hand_detection_confidence`` and
            ``min_hand_presence_confidence`` (0..1).

    Raises:
        FileNotFoundError: no model file (see :func:`find_task_path`).
        RuntimeError: mediapipe is not installed or too old for the Tasks API, or the file is
            not a valid hand landmarker model.
        ValueError: ``num_hands`` < 1 or ``min_confidence`` outside 0..1.

    Use as a context manager or call :meth:`close`; one instance is not meant for concurrent
    calls from several threads.
    """

    def __init__(self, task_path: str | Path | None = None, *, num_hands: int = 2,
                 min_confidence: float = 0.5):
        if num_hands < 1:
            raise ValueError(f"num_hands: {num_hands} must be at least 1")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence: {min_confidence} is outside 0..1")
        self.task_path = find_task_path(task_path)
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:
            raise RuntimeError(f"the alignment check needs mediapipe>=0.10.30 ({exc}); install it "
                               "with pip install 'mediapipe>=0.10.30' (the pack's 'qa' extra)") from None
        self._mp = mp
        options = vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.task_path)),
            running_mode=vision.RunningMode.IMAGE, num_hands=num_hands,
            min_hand_detection_confidence=min_confidence, min_hand_presence_confidence=min_confidence)
        try:
            self._landmarker = vision.HandLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(f"hand landmarker model {self.task_path}: MediaPipe cannot load it "
                               f"({exc}); " + SETUP_HINT) from None

    def detect(self, image: np.ndarray) -> list[DetectedHand]:
        """Find hands in one image.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns: the detected hands (possibly none), in MediaPipe's order.

        Raises: ValueError if ``image`` is not an (H, W, 3) uint8 array.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected an (H, W, 3) uint8 RGB array, got shape {image.shape} "
                             f"dtype {image.dtype}")
        height, width = image.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        result = self._landmarker.detect(mp_image)
        hands = []
        world = result.hand_world_landmarks or [None] * len(result.hand_landmarks)
        for handedness, landmarks, world_landmarks in zip(result.handedness, result.hand_landmarks, world):
            best = max(handedness, key=lambda c: c.score)
            joints = np.array([[lm.x * width, lm.y * height] for lm in landmarks], dtype=np.float32)
            world_joints = None if world_landmarks is None else \
                np.array([[lm.x, lm.y, lm.z] for lm in world_landmarks], dtype=np.float32)
            hands.append(DetectedHand(joints2d=joints, side=best.category_name.lower(),
                                      side_score=float(best.score), world_joints=world_joints))
        return hands

    def close(self) -> None:
        """Free MediaPipe's graph (idempotent)."""
        landmarker, self._landmarker = getattr(self, "_landmarker", None), None
        if landmarker is not None:
            landmarker.close()

    def __enter__(self) -> "HandKeypointDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
