"""Atomic file writes (a file appears whole or not at all: temporary file, then rename), the
cache folder, and the image pixel conversions: float 0..1 <-> uint8 0..255, and any PIL image mode -> 8-bit RGB."""

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


def default_cache_dir() -> Path:
    """Folder for SesaHand's caches (built model data, compiled kernels).

    ``$SESAHAND_CACHE_DIR`` when set, otherwise the user cache dir (``platformdirs``,
    e.g. ``~/.cache/sesahand`` on Linux). Inside ComfyUI the nodes pass ``models/sesahand``
    for model data.
    """
    env = os.environ.get("SESAHAND_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("sesahand"))


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


#: PIL modes with an alpha channel (also ``P`` with a ``transparency`` entry).
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def pil_to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode: the one rule for photos and captions.

    * Alpha (RGBA, LA, PA, premultiplied, P with ``transparency``): composited over white.
    * 16-bit integers (``I;16`` and its byte orders): 0..65535 -> 0..255, always (a dark 16-bit
      image stays dark).
    * 32-bit integers (``I``) and floats (``F``): floats at most 1 are read as 0..1; otherwise
      values at most 255 as 0..255, at most 65535 as 0..65535, larger ones scaled by their
      maximum. Grey results are repeated into R, G and B.
    * Anything else (L, P, 1, CMYK, YCbCr, ...): PIL's own conversion.

    Returns a new ``PIL.Image.Image`` in mode ``RGB``, same size.
    """
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")
