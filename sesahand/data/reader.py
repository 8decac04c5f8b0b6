"""Read a dataset folder as a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..io import to_float
from .format import read_labels


class HandDataset(Dataset):
    """The samples of a dataset folder, in labels.jsonl order.

    ``dataset[i]`` is a dict:

    * ``image``: (3, H, W) float32 RGB in 0..1.
    * ``K``: (3, 3) float32 intrinsics, pixels.
    * ``joints3d``: (N, 21, 3) float32, metres, camera frame (OpenCV), OpenPose order; N = number
      of hands of the sample (may be 0).
    * ``joints2d``: (N, 21, 2) float32, pixels. ``visible``: (N, 21) bool.
    * ``boxes``: (N, 4) float32 ``x0, y0, x1, y1`` pixels; NaN for a hand with no visible pixel.
    * ``global_orient`` (N, 3), ``hand_pose`` (N, 45), ``betas`` (N, 10), ``transl`` (N, 3):
      float32 MANO-convention parameters (radians, metres).
    * ``is_right``: (N,) bool.
    * ``record``: the JSON record itself (prompt, semantics, seed, alignment...).

    Samples have different hand counts, so batch with ``batch_size=1`` or a collate function
    of your own.

    Args:
        root: dataset folder.
        transform: optional function applied to each sample dict before it is returned.

    Raises:
        FileNotFoundError: no labels.jsonl. ValueError: a corrupt line (with its number).
    """

    def __init__(self, root: str | Path, transform: Callable[[dict], dict] | None = None):
        self.root = Path(root)
        self.records = read_labels(self.root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        with Image.open(self.root / record["image"]) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        hands = record["hands"]

        def stack(name: str, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
            return torch.tensor([h[name] for h in hands], dtype=dtype).reshape(len(hands), *shape)

        sample = {
            "image": to_float(pixels).permute(2, 0, 1),
            "K": torch.tensor(record["K"], dtype=torch.float32),
            "joints3d": stack("joints3d", (21, 3)),
            "joints2d": stack("joints2d", (21, 2)),
            "visible": stack("visible", (21,), torch.bool),
            "boxes": torch.tensor([h["box"] if h["box"] is not None else [float("nan")] * 4 for h in hands],
                                  dtype=torch.float32).reshape(len(hands), 4),
            "global_orient": stack("global_orient", (3,)),
            "hand_pose": stack("hand_pose", (45,)),
            "betas": stack("betas", (10,)),
            "transl": stack("transl", (3,)),
            "is_right": torch.tensor([h["side"] == "right" for h in hands], dtype=torch.bool),
            "record": record,
        }
        return self.transform(sample) if self.transform is not None else sample
