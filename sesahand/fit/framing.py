"""From the photo's pixel frame to an output image of another size: crop, letterbox or pad.

A framing is a similarity of the image plane, ``u' = s u + ox``, ``v' = s v + oy`` (one
scale, so the aspect is kept), applied alike to the photo's pixels, to its keypoints and to
the camera: ``K' = [[s, 0, ox], [0, s, oy], [0, 0, 1]] K``. 3D hand parameters do not change,
so the fitted hands render pixel-aligned over the framed photo at any output size.

Modes:

* ``crop``: scale so the output is covered, centre, cut what sticks out (nothing is added).
* ``letterbox``: scale so the whole photo fits, centre, fill the bands with black.
* ``pad``: scale 1, photo at the top-left corner, output = the photo's size rounded up to a
  multiple of 8 (the renderer's grid); maps are cut back to the photo's own size, so labels
  stay in the photo's own pixel frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

FRAMING_MODES = ("crop", "letterbox", "pad")


def round_up8(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return -(-int(n) // 8) * 8


@dataclass(frozen=True)
class Framing:
    """Photo pixels -> output pixels: ``u' = scale * u + offset``.

    Attributes:
        src_size: (W, H) of the photo. out_size: (w, h) of the output (multiples of 8).
        scale: the similarity's scale. offset: (ox, oy) in output pixels. mode: how it was made.
    """

    src_size: tuple[int, int]
    out_size: tuple[int, int]
    scale: float
    offset: tuple[float, float]
    mode: str

    @classmethod
    def make(cls, src_size: tuple[int, int], out_size: tuple[int, int] | None = None,
             mode: str = "crop") -> "Framing":
        """The framing of a ``src_size`` photo into ``out_size`` (ignored for ``pad``).

        Raises: ValueError for an unknown mode, or an out_size that is not positive multiples of 8.
        """
        if mode not in FRAMING_MODES:
            raise ValueError(f"framing: {mode!r} is unknown; choose one of {', '.join(FRAMING_MODES)}")
        W, H = (int(v) for v in src_size)
        if mode == "pad" or out_size is None:
            return cls((W, H), (round_up8(W), round_up8(H)), 1.0, (0.0, 0.0), "pad")
        w, h = (int(v) for v in out_size)
        if w <= 0 or h <= 0 or w % 8 or h % 8:
            raise ValueError(f"output size {w}x{h}: both sides must be positive multiples of 8")
        s = max(w / W, h / H) if mode == "crop" else min(w / W, h / H)
        return cls((W, H), (w, h), s, ((w - s * W) / 2.0, (h - s * H) / 2.0), mode)

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) float64: the similarity as a matrix acting on homogeneous pixels."""
        s, (ox, oy) = self.scale, self.offset
        return np.array([[s, 0.0, ox], [0.0, s, oy], [0.0, 0.0, 1.0]])

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """The camera ``K`` (3, 3) of the photo -> ``K'`` of the output (float64)."""
        return self.matrix @ np.asarray(K, dtype=np.float64)

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates (..., 2) -> output pixel coordinates."""
        return np.asarray(uv, dtype=np.float64) * self.scale + np.asarray(self.offset)

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """The photo (H, W, 3) uint8 framed into the output (h, w, 3) uint8 (bicubic; black fill).

        Uses the same continuous mapping as :meth:`points` (pixel centres at +0.5)."""
        image = Image.fromarray(np.ascontiguousarray(pixels))
        s, (ox, oy) = self.scale, self.offset
        if self.mode == "pad":
            canvas = Image.new("RGB", self.out_size)
            canvas.paste(image, (0, 0))
            return np.asarray(canvas)
        # Output pixel (x, y) samples the photo at ((x - ox) / s, (y - oy) / s).
        data = (1.0 / s, 0.0, -ox / s, 0.0, 1.0 / s, -oy / s)
        return np.asarray(image.transform(self.out_size, Image.Transform.AFFINE, data,
                                          resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))

    def visible_size(self) -> tuple[int, int]:
        """(w, h) of the output that shows the photo: the photo's own size for ``pad``."""
        return self.src_size if self.mode == "pad" else self.out_size

    def to_dict(self) -> dict:
        return {"mode": self.mode, "photo_size": list(self.src_size), "output_size": list(self.out_size),
                "scale": self.scale, "offset": list(self.offset)}
