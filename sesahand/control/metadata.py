"""SesaHand settings stored in a ControlNet's safetensors header.

Keys (all values are strings, as safetensors metadata requires):

* ``sesahand.fusion``: ``"tokens"`` or ``"gate"``, the SF reading the weights were trained with.
* ``sesahand.w``: SF blend weight in [0, 1] (1 for weights trained with SF).
* ``sesahand.hierarchy``: ``"balanced"`` or ``"sum"``, how SF combines its resolutions
  (``sesahand.control.fusion``).
* ``sesahand.alpha``: the hand attention bias (eq. AE-1) used in training, >= 0.
* ``sesahand.attention_layers``: the UNet cross-attention layers that had the bias in
  training, one of :data:`ATTENTION_LAYERS`.
* ``sesahand.render_style``: the condition image the weights expect, one of
  :data:`RENDER_STYLES` (the outputs of the SesaHand Render Conditions node).

A file without them is a plain ControlNet: SF off (w = 0). ``sesahand.fusion`` without
``sesahand.w`` means w = 1; SesaHand keys without ``sesahand.hierarchy`` mean ``"sum"`` (files
written before the option existed were trained with the plain sum). ``sesahand.config_hash``
(the training config's sha256) is informative only; unknown ``sesahand.*`` keys are ignored.
Every key that changes inference is here, so a file runs in ComfyUI as it was trained.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .fusion import FusionSettings

PREFIX = "sesahand."
RENDER_STYLES = ("mesh", "depth", "normal", "pose", "mask")
#: Cross-attention layers with the AE bias: the UNet decoder's, or every one.
ATTENTION_LAYERS = ("decoder", "all")


@dataclass(frozen=True)
class ControlMetadata:
    """SesaHand settings of a ControlNet file.

    ``fusion``: SF settings (w = 0 without metadata); ``alpha``, ``attention_layers`` and
    ``render_style`` are None when the file does not give them; ``from_file`` tells whether
    any SesaHand key was found.
    """

    fusion: FusionSettings = FusionSettings()
    alpha: float | None = None
    render_style: str | None = None
    from_file: bool = False
    attention_layers: str | None = None

    def header(self) -> dict[str, str]:
        """The safetensors metadata entries for these settings (for ``save_file(metadata=)``)."""
        out = {PREFIX + "fusion": self.fusion.fusion, PREFIX + "w": repr(float(self.fusion.w)),
               PREFIX + "hierarchy": self.fusion.hierarchy}
        if self.alpha is not None:
            out[PREFIX + "alpha"] = repr(float(self.alpha))
        if self.attention_layers is not None:
            out[PREFIX + "attention_layers"] = self.attention_layers
        if self.render_style is not None:
            out[PREFIX + "render_style"] = self.render_style
        return out


def _number(metadata: Mapping[str, str], key: str, source: str) -> float | None:
    if PREFIX + key not in metadata:
        return None
    text = metadata[PREFIX + key]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{source}: metadata {PREFIX + key} = {text!r} is not a finite number")
    return value


def parse_control_metadata(metadata: Mapping[str, str] | None, source: str = "ControlNet") -> ControlMetadata:
    """SesaHand settings from a safetensors header's metadata dict (None: no metadata).

    ``source`` names the file in error messages. Unknown ``sesahand.*`` keys are ignored.

    Raises:
        ValueError: a SesaHand value is malformed (names the key, the value and what is allowed).
    """
    metadata = metadata or {}
    if not any(key.startswith(PREFIX) for key in metadata):
        return ControlMetadata()
    fusion = metadata.get(PREFIX + "fusion", "tokens")
    w = _number(metadata, "w", source)
    if w is None:
        w = 1.0 if PREFIX + "fusion" in metadata else 0.0
    try:
        settings = FusionSettings(fusion, w, metadata.get(PREFIX + "hierarchy", "sum"))
    except ValueError as exc:
        raise ValueError(f"{source}: metadata {PREFIX}fusion / {PREFIX}w / {PREFIX}hierarchy: {exc}") from None
    alpha = _number(metadata, "alpha", source)
    if alpha is not None and alpha < 0:
        raise ValueError(f"{source}: metadata {PREFIX}alpha = {alpha} must be >= 0")
    layers = metadata.get(PREFIX + "attention_layers")
    if layers is not None and layers not in ATTENTION_LAYERS:
        raise ValueError(f"{source}: metadata {PREFIX}attention_layers = {layers!r} is unknown; "
                         f"expected one of {list(ATTENTION_LAYERS)}")
    style = metadata.get(PREFIX + "render_style")
    if style is not None and style not in RENDER_STYLES:
        raise ValueError(f"{source}: metadata {PREFIX}render_style = {style!r} is unknown; "
                         f"expected one of {list(RENDER_STYLES)}")
    return ControlMetadata(settings, alpha, style, True, layers)


def read_control_metadata(path: str | os.PathLike) -> ControlMetadata:
    """SesaHand settings from the header of a ``.safetensors`` / ``.sft`` file (no tensor is read).

    Other formats carry no metadata: the plain settings are returned.

    Raises:
        ValueError: as :func:`parse_control_metadata`, or the header cannot be read.
    """
    path = os.fspath(path)
    if not path.lower().endswith((".safetensors", ".sft")):
        return ControlMetadata()
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{os.path.basename(path)}: cannot read the safetensors header ({exc})") from None
    return parse_control_metadata(metadata, os.path.basename(path))
