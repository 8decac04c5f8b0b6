"""Fixtures of the evaluation tests: the real MediaPipe detector and skin-shaded renders
(``task_file``, the detector's model file, is in ``tests/conftest.py``).

The real-detector tests need ``mediapipe>=0.10.30`` and a ``hand_landmarker.task`` named by
``$SESAHAND_HAND_LANDMARKER`` (built from the mediapipe 0.10.21 wheel with
``python -m sesahand qa-model``); without them they skip, saying which is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

#: Skin base colour and plain light background (RGB 0..1) of the test renders.
SKIN = np.array([0.87, 0.67, 0.55])
BACKGROUND = np.array([0.85, 0.88, 0.92])

#: Poses and views of the proof renders: (side, preset, rotation axis, degrees) applied to the
#: presentation orientation (palm to the camera, fingers up).
VIEWS = (
    ("right", "open_palm", "x", 0), ("left", "open_palm", "x", 0),
    ("right", "spread", "x", 30), ("left", "relaxed", "z", 40),
    ("right", "open_palm", "y", -35), ("left", "spread", "y", 35),
    ("right", "flat_grasp", "x", -30), ("right", "sphere_grasp", "x", 0),
)


@pytest.fixture(scope="session")
def detector(task_file):
    """One MediaPipe detector for the session."""
    from sesahand.eval import HandKeypointDetector

    with HandKeypointDetector(task_file) as det:
        yield det


def skin_image(mesh_rgb: np.ndarray, mask: np.ndarray, side: str) -> np.ndarray:
    """Turn the 'mesh' condition map (Lambert shading in the side's colour on black) into a
    skin-coloured hand on a light background: (H, W, 3) uint8 RGB.

    The shading factor of a pixel is its mesh colour over the side's base colour (taken on the
    largest channel, where that ratio is best resolved)."""
    from sesahand.hands.types import HAND_COLORS

    shade = mesh_rgb.max(-1, keepdims=True) / max(HAND_COLORS[side])
    m = mask[..., None]
    return ((m * shade * SKIN + (1 - m) * BACKGROUND) * 255).round().astype(np.uint8)


@dataclass
class Render:
    view: tuple
    image: np.ndarray  # (H, W, 3) uint8
    labels: list  # HandLabels of the frame
    frame: dict  # RenderedHands.frame_dict of the frame (what a dataset record is made from)


@pytest.fixture(scope="session")
def renders(anny_model) -> list[Render]:
    """The open hand model rendered at every ``VIEWS`` entry, 512 x 512, hand box 300 px."""
    from scipy.spatial.transform import Rotation

    from sesahand.camera import Camera
    from sesahand.hands import PoseSpec
    from sesahand.hands.poses import PRESENT_ORIENT
    from sesahand.pipeline import render_scenes

    present = Rotation.from_rotvec(PRESENT_ORIENT.numpy())
    frames = []
    for side, preset, axis, degrees in VIEWS:
        orient = Rotation.from_euler(axis, degrees, degrees=True) * present
        frames.append({"hands": [{"side": side, "preset": preset, "global_orient": orient.as_rotvec().tolist(),
                                  "box": {"center": [256, 256], "size": 300}}]})
    spec = PoseSpec.from_json(json.dumps({"frames": frames}))
    scenes = spec.resolve(anny_model, Camera.default(512, 512), len(frames))
    cond, rendered = render_scenes(anny_model, scenes)
    return [Render(view, skin_image(cond.mesh[i].numpy(), cond.mask[i].numpy(), view[0]), rendered.labels[i],
                   rendered.frame_dict(i))
            for i, view in enumerate(VIEWS)]
