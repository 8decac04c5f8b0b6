"""Export a trained ControlNet: one safetensors file in the original ControlNet key layout
(``control_model.*``, what core ComfyUI's ControlNetLoader and SesaHand Load ControlNet read)
with SesaHand's settings in its header, or a diffusers folder.

The key names of the two layouts are ``sesahand.control.layout``'s (shared with SesaHand Load
ControlNet).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..control import layout
from ..control.fusion import FusionSettings
from ..control.metadata import PREFIX, ControlMetadata, parse_control_metadata

#: Keys ``export_controlnet``'s metadata must give.
METADATA_KEYS = ("fusion", "w", "hierarchy", "alpha", "attention_layers", "render_style", "config_hash")


def diffusers_to_original(controlnet) -> dict[str, torch.Tensor]:
    """The weights of a diffusers ``ControlNetModel`` under original-layout names (no prefix),
    detached, contiguous, on the CPU, in the model's dtype.

    Raises:
        ValueError: a weight has no original name (names it; not an SD1.5-type ControlNet).
    """
    state = controlnet.state_dict()
    names = layout.original_names(state)
    for key in state:
        if key not in names:
            raise ValueError(f"ControlNet weight {key!r} has no place in the original ControlNet layout "
                             "(not an SD1.5-type ControlNet)")
    return {names[k]: v.detach().to("cpu").contiguous() for k, v in state.items()}


def original_to_diffusers(sd: dict[str, torch.Tensor], config, name: str) -> dict[str, torch.Tensor]:
    """A ControlNet state dict in the diffusers layout, from either layout.

    Args:
        sd: original layout (``control_model.*`` or unprefixed) or diffusers layout.
        config: the diffusers ``ControlNetModel`` config it is for (names the blocks).
        name: the file's name, for messages.

    Raises:
        ValueError: ``sd`` is no ControlNet in either layout (names its first key).
    """
    kind = layout.layout(sd)
    if kind == "diffusers":
        return dict(sd)
    if kind is None:
        raise ValueError(f"ControlNet init {name}: not a ControlNet in the original or diffusers layout "
                         f"(first key {next(iter(sd), 'none')!r}); choose an SD1.5 ControlNet")
    from diffusers import ControlNetModel

    with torch.device("meta"):
        keys = list(ControlNetModel.from_config(config).state_dict())
    return layout.original_to_diffusers(layout.unprefixed(sd), keys)


def _header(metadata: dict) -> dict[str, str]:
    missing = [key for key in METADATA_KEYS if key not in metadata]
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if missing or unknown:
        raise ValueError(f"export metadata needs exactly the keys {list(METADATA_KEYS)}; "
                         f"missing {missing}, unknown {unknown}")
    try:
        settings = FusionSettings(metadata["fusion"], float(metadata["w"]), metadata["hierarchy"])
        header = ControlMetadata(settings, float(metadata["alpha"]), metadata["render_style"], True,
                                 metadata["attention_layers"]).header()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"export metadata: {exc}") from None
    parse_control_metadata(header, "export metadata")  # the loader's checks (alpha, layers, render_style)
    if not isinstance(metadata["config_hash"], str) or not metadata["config_hash"]:
        raise ValueError(f"export metadata config_hash must be a non-empty string, got {metadata['config_hash']!r}")
    header[PREFIX + "config_hash"] = metadata["config_hash"]
    return header


def export_controlnet(controlnet, path: str | Path, metadata: dict) -> Path:
    """Write one safetensors file in the original ``control_model.*`` layout with sesahand.* metadata.

    Args:
        controlnet: an SD1.5-type diffusers ``ControlNetModel`` (``FusedControlNet.controlnet``).
        path: the ``.safetensors`` file to write; written to a temporary file in the same
            folder and moved into place, so an existing file stays whole if writing fails.
        metadata: ``{"fusion": "tokens" | "gate", "w": float in [0, 1], "hierarchy": "balanced" |
            "sum", "alpha": float >= 0, "attention_layers": "decoder" | "all", "render_style":
            one of sesahand.control.metadata.RENDER_STYLES, "config_hash": str}``: every setting
            that changes inference; written as the header keys ``sesahand.<key>`` (read back by
            ``sesahand.control.read_control_metadata`` and SesaHand Load ControlNet).

    Returns:
        ``path``. Tensors keep the model's dtype.

    Raises:
        ValueError: bad metadata (names the key), a weight without an original name, or a
            path that does not end in ``.safetensors``.
        OSError: the file cannot be written (nothing is left behind).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"export path {path} must end in .safetensors")
    header = _header(metadata)
    tensors = {layout.CONTROL_PREFIX + k: v for k, v in diffusers_to_original(controlnet).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_diffusers(controlnet, folder: str | Path) -> Path:
    """Write a diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    Written to a temporary sibling folder, then moved into place (an existing folder of that
    name is replaced only after the new one is complete). ``ControlNetModel.from_pretrained``
    and :func:`sesahand.train.model.build_controlnet` read it back.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    old = folder.with_name(folder.name + ".old")
    try:
        controlnet.save_pretrained(tmp, safe_serialization=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
