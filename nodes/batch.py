"""The batch rule of the nodes that pair a batch of images with per-frame inputs (rendered
hands, condition maps): one frame for every image, or one frame per image."""

from __future__ import annotations


def frame_indices(frames: int, count: int, name: str) -> list[int]:
    """For each of ``count`` images, the index of its frame in an input of ``frames`` frames:
    frame i for image i when there is one frame per image, else frame 0 for every image.

    Raises:
        ValueError: ``frames`` is neither 1 nor ``count`` (the message names the input ``name``).
    """
    if frames not in (1, count):
        raise ValueError(f"{name}: {frames} frames for {count} images; give one frame per image "
                         f"(Render Conditions' batch_size {count}) or one frame for all")
    return list(range(count)) if frames > 1 else [0] * count
