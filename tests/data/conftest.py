"""Fixtures of the dataset tests: synthetic rendered hands (no rendering) and small images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sesahand.camera import Camera
from sesahand.hands.types import HandParams, HandScene
from sesahand.pipeline import RenderedHands
from sesahand.render import HandLabels

W, H = 64, 48


@pytest.fixture(scope="session")
def frame_size() -> tuple[int, int]:
    """(width, height) in pixels of the synthetic frames and images: (64, 48)."""
    return W, H


def make_hands(sides_per_frame=(("right",),), seed: int = 0, hidden: int | None = None) -> RenderedHands:
    """RenderedHands of one frame per entry of ``sides_per_frame``: random parameters, joints
    0.4-0.5 m in front of a W x H camera and their projections; hand number ``hidden`` of every
    frame has no visible pixel (box None)."""
    g = torch.Generator().manual_seed(seed)
    camera = Camera(K=torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]]), width=W, height=H)
    scenes, labels = [], []
    for sides in sides_per_frame:
        params, frame = [], []
        for k, side in enumerate(sides):
            p = HandParams.create(side, global_orient=torch.rand(3, generator=g), hand_pose=torch.rand(45, generator=g),
                                  betas=torch.rand(10, generator=g), transl=torch.rand(3, generator=g) * 0.1)
            joints = (torch.rand(21, 3, generator=g) - 0.5) * 0.1 + torch.tensor([0.0, 0.0, 0.45])
            uv = camera.project(joints)
            box = None if k == hidden else torch.cat([uv.min(0).values, uv.max(0).values + 1])
            params.append(p)
            frame.append(HandLabels(side=side, model="anny", joints3d=joints, joints2d=uv,
                                    visible=torch.rand(21, generator=g) > 0.3, box=box, notes=["synthetic"]))
        scenes.append(HandScene(hands=params, camera=camera))
        labels.append(frame)
    return RenderedHands(scenes=scenes, meshes=[[] for _ in scenes], labels=labels, model="anny")


def make_image(seed: int = 0, size=(H, W)) -> np.ndarray:
    """A uint8 (H, W, 3) noise image."""
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


@pytest.fixture
def hands_factory():
    """``make_hands(sides_per_frame=(("right",),), seed=0, hidden=None)`` (see conftest)."""
    return make_hands


@pytest.fixture
def image_factory():
    """``make_image(seed=0, size=(H, W))``: uint8 noise image."""
    return make_image


@pytest.fixture
def small_dataset(tmp_path):
    """A dataset of 3 samples: a right hand (with all four conditions), a left hand, and a
    right + left pair. Returns (root, RenderedHands, images)."""
    from sesahand.data import DatasetWriter

    hands = make_hands((("right",), ("left",), ("right", "left")), seed=1)
    images = [make_image(i) for i in range(3)]
    root = tmp_path / "ds"
    rng = np.random.default_rng(5)
    conditions = {"mesh": images[0][::-1].copy(), "depth": rng.random((H, W)).astype(np.float32),
                  "normal": torch.rand(H, W, 3), "mask": (rng.random((H, W)) > 0.5).astype(np.uint8) * 255}
    with DatasetWriter(root) as writer:
        writer.append(images[0], hands.frame_dict(0), conditions=conditions, prompt="a hand", seed=7,
                      semantics={"action": "wave"}, sampler={"steps": 4, "cfg": 7.0})
        writer.append(images[1], hands.frame_dict(1))
        writer.append(images[2], hands.frame_dict(2))
    return root, hands, images
