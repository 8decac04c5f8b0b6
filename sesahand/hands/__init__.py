"""Hand models (open Anny hand by default, MANO when the user has it) and pose sources."""

from __future__ import annotations

from pathlib import Path

from .base import HandModel
from .poses import PRESET_NAMES, PoseSpec
from .types import Camera, HandMesh, HandParams, HandScene  # Camera: re-export of sesahand.camera (train uses it)

HAND_MODELS = ("anny", "mano")


def load_hand_model(name: str = "anny", *, mano_path: str | Path | None = None,
                    cache_dir: str | Path | None = None, device: str = "cpu") -> HandModel:
    """Load a hand model by name.

    Args:
        name: ``"anny"`` (open default, no licence needed) or ``"mano"``.
        mano_path: for MANO, a folder holding ``MANO_RIGHT``/``MANO_LEFT`` ``.pkl``/``.npz``
            files, or one such file.
        cache_dir: for Anny, the folder of its compact cache (default: ``$SESAHAND_CACHE_DIR``
            or the user cache dir; ComfyUI passes ``models/sesahand``).
        device: torch device of the forward pass.

    Raises:
        ValueError: unknown name, or MANO without ``mano_path``.
    """
    if name == "anny":
        from .anny_model import AnnyHandModel

        return AnnyHandModel(cache_dir=cache_dir, device=device)
    if name == "mano":
        if mano_path is None:
            raise ValueError("the MANO hand model needs mano_path: a folder with MANO_RIGHT.pkl / "
                             "MANO_LEFT.pkl (from https://mano.is.tue.mpg.de, after registering)")
        from .mano import ManoHandModel

        return ManoHandModel(Path(mano_path), device=device)
    raise ValueError(f"unknown hand model {name!r}; choose one of {HAND_MODELS}")


__all__ = ["HAND_MODELS", "PRESET_NAMES", "Camera", "HandMesh", "HandModel", "HandParams",
           "HandScene", "PoseSpec", "load_hand_model"]
