"""The nodes' batch rule (``nodes/batch.py``): one frame for every image, or one per image."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def batch(load_local):
    return load_local("nodes/batch.py")


def test_one_frame_serves_every_image_and_n_frames_pair_up(batch):
    assert batch.frame_indices(1, 3, "hands") == [0, 0, 0]
    assert batch.frame_indices(3, 3, "hands") == [0, 1, 2]
    assert batch.frame_indices(1, 1, "hands") == [0]


@pytest.mark.parametrize("frames, count", [(2, 3), (3, 2), (0, 2)])
def test_other_frame_counts_are_refused_naming_the_input(batch, frames, count):
    with pytest.raises(ValueError, match=f"mesh: {frames} frames for {count} images; give one frame per image"):
        batch.frame_indices(frames, count, "mesh")
