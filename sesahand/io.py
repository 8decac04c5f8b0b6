"""Atomic file writes (a file appears whole or not at all: temporary file, then rename), and the
image pixel conversion float 0..1 <-> uint8 0..255."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. The parent
    folder is created if needed; the file gets the usual permissions (0666 minus the umask),
    not ``mkstemp``'s owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def to_uint8(pixels) -> np.ndarray:
    """Float pixels in 0..1 as uint8 0..255: the one float -> uint8 image conversion of the pack.

    Args:
        pixels: a float numpy array or torch tensor (any shape, e.g. a ComfyUI IMAGE batch
            (B, H, W, C) or one (H, W, C) frame; any device), values nominally in 0..1; a uint8
            array is returned as is.

    Returns: a uint8 numpy array of the same shape (on the CPU): ``round(clamp(x, 0, 1) * 255)``,
    rounding half to even. Values outside 0..1 are clamped first, never wrapped by the cast
    (1.2 -> 255, -0.1 -> 0). NaN is not checked here (callers that take untrusted arrays check
    it, e.g. :func:`sesahand.data.to_uint8_image`).
    """
    if hasattr(pixels, "detach"):  # torch tensor: convert where it lives, copy the bytes once
        import torch

        if pixels.dtype == torch.uint8:
            return pixels.detach().cpu().numpy()
        return pixels.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    array = np.asarray(pixels)
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_float(pixels: np.ndarray):
    """uint8 pixels 0..255 as a float32 torch tensor in 0..1 (the inverse of :func:`to_uint8`),
    same shape, on the CPU: e.g. (B, H, W, 3) uint8 -> a ComfyUI IMAGE batch."""
    import torch

    return torch.from_numpy(np.asarray(pixels, dtype=np.uint8).astype(np.float32)) / 255.0  # writable copy
