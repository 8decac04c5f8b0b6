"""Export a trained ControlNet: one safetensors file in the original ControlNet key layout
(``control_model.*``, what core ComfyUI's ControlNetLoader and SesaHand Load ControlNet read)
with SesaHand's settings in its header, or a diffusers folder.

The key names of the two layouts are this module's glue (:func:`original_key`): the original
(LDM ``cldm``) ControlNet numbers its encoder as ``input_blocks.{n}`` (n = 0 the input conv,
then per level its res blocks ``.0`` with transformers ``.1``, then its downsampler
``.0.op``), the middle block as ``middle_block.{0,1,2}``, the zero convolutions as
``zero_convs.{n}.0`` and ``middle_block_out.0``, the condition encoder as
``input_hint_block.{0, 2, 4, ...}`` (SiLU in between); diffusers names the same modules
``conv_in``, ``down_blocks.{i}.resnets/attentions/downsamplers``, ``mid_block``,
``controlnet_down_blocks``, ``controlnet_mid_block`` and ``controlnet_cond_embedding``.
Transformer internals are named alike; res-block internals differ (``norm1`` = ``in_layers.0``
...). The mapping is checked against ComfyUI's and diffusers' own converters in the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..control.fusion import FusionSettings
from ..control.metadata import PREFIX, ControlMetadata, parse_control_metadata

#: Key prefix of a ControlNet in its original single-file layout.
CONTROL_PREFIX = "control_model."
#: A key only the original layout has, and one only the diffusers layout has.
ORIGINAL_MARKER = "zero_convs.0.0.weight"
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
#: Keys ``export_controlnet``'s metadata must give.
METADATA_KEYS = ("fusion", "w", "hierarchy", "alpha", "attention_layers", "render_style", "config_hash")

#: diffusers res-block parts -> original ``ResBlock`` parts.
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{RESNET_PARTS[part]}.{tail}"  # KeyError for an unknown part


def original_key(key: str, layers_per_block: int, embedding_blocks: int) -> str:
    """The original-layout name (no prefix) of a diffusers ``ControlNetModel`` weight.

    Args:
        key: a diffusers state-dict key, e.g. ``down_blocks.1.attentions.0.proj_in.weight``.
        layers_per_block: res blocks per level (2 for SD1.5).
        embedding_blocks: ``len(controlnet_cond_embedding.blocks)`` (6 for SD1.5).

    Raises:
        KeyError: a key outside an SD1.5-type ControlNet (class or addition embeddings ...).
    """
    step = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "controlnet_mid_block": "middle_block_out.0",
             "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * embedding_blocks + 2}"}
    if module in fixed:
        return f"{fixed[module]}.{leaf}"
    rules = (
        (r"controlnet_down_blocks\.(\d+)\.(.+)", lambda m: f"zero_convs.{m[1]}.0.{m[2]}"),
        (r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)",
         lambda m: f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda m: f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.0.{_resnet(m[3])}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda m: f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
         lambda m: f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda m: f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
    )
    for pattern, name in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return name(match)
    raise KeyError(key)


def original_names(keys, config) -> dict[str, str]:
    """{diffusers key: original key (no prefix)} for the keys of a ControlNetModel with ``config``.

    Raises:
        ValueError: a key has no original name (not an SD1.5-type ControlNet).
    """
    embedding_blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    names = {}
    for key in keys:
        try:
            names[key] = original_key(key, config["layers_per_block"], embedding_blocks)
        except KeyError:
            raise ValueError(f"ControlNet weight {key!r} has no place in the original ControlNet layout "
                             "(not an SD1.5-type ControlNet)") from None
    return names


def diffusers_to_original(controlnet) -> dict[str, torch.Tensor]:
    """The weights of a diffusers ``ControlNetModel`` under original-layout names (no prefix),
    detached, contiguous, on the CPU, in the model's dtype."""
    state = controlnet.state_dict()
    names = original_names(state, controlnet.config)
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
    if DIFFUSERS_MARKER in sd:
        return dict(sd)
    if CONTROL_PREFIX + ORIGINAL_MARKER in sd:
        sd = {k[len(CONTROL_PREFIX):]: v for k, v in sd.items() if k.startswith(CONTROL_PREFIX)}
    if ORIGINAL_MARKER not in sd:
        raise ValueError(f"ControlNet init {name}: not a ControlNet in the original or diffusers layout "
                         f"(first key {next(iter(sd), 'none')!r}); choose an SD1.5 ControlNet")
    from diffusers import ControlNetModel

    with torch.device("meta"):
        keys = list(ControlNetModel.from_config(config).state_dict())
    return {key: sd[original] for key, original in original_names(keys, config).items() if original in sd}


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
    tensors = {CONTROL_PREFIX + k: v for k, v in diffusers_to_original(controlnet).items()}
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
