"""The pinhole camera of one image (OpenCV convention), shared by hands, render and fit."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of one image, OpenCV convention (x right, y down, looks down +z).

    Attributes:
        K: (3, 3) float32 intrinsics in pixels ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``;
            pixel centres are at integer + 0.5 (a point at ``(cx, cy)`` projects to the
            principal point).
        width, height: image size in pixels; both multiples of 8 (SD1.5 latent grid).

    Raises:
        ValueError: size not a positive multiple of 8, K malformed or not finite.
    """

    K: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 8:
                raise ValueError(f"{name}: {v!r} is not a positive multiple of 8; Stable "
                                 "Diffusion needs sizes like 512 or 768")
        K = torch.as_tensor(self.K, dtype=torch.float32).detach().cpu()
        if K.shape != (3, 3) or not torch.isfinite(K).all():
            raise ValueError(f"K: expected a finite 3x3 matrix, got shape {tuple(K.shape)}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
        object.__setattr__(self, "K", K.clone())

    @classmethod
    def default(cls, width: int = 512, height: int = 512, fov_deg: float = 40.0) -> "Camera":
        """A centred camera with the given horizontal field of view (degrees)."""
        f = 0.5 * width / torch.tan(torch.deg2rad(torch.tensor(fov_deg / 2.0))).item()
        K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(K=K, width=width, height=height)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Project camera-frame points (..., 3) in metres to pixels (..., 2)."""
        K = self.K.to(points)
        uvw = points @ K.T
        return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-9)

    def to_dict(self) -> dict:
        return {"K": self.K.tolist(), "width": self.width, "height": self.height}
