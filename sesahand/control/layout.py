"""The two key layouts of a UNet ControlNet's weights, and what a file that is neither holds.

The one place that knows these names; SesaHand Load ControlNet (``nodes/control_model.py``,
diffusers -> original on load) and training (``sesahand.train.export``: original layout on
export, either layout as an init) both use it. No ComfyUI import.

The original (LDM ``cldm``) ControlNet, what core ComfyUI's ControlNetLoader reads, optionally
prefixed ``control_model.``, numbers its encoder as ``input_blocks.{n}`` (n = 0 the input conv,
then per level its res blocks ``.0`` with transformers ``.1``, then its downsampler ``.0.op``),
the middle block as ``middle_block.{0,1,2}``, the zero convolutions as ``zero_convs.{n}.0`` and
``middle_block_out.0``, the condition encoder as ``input_hint_block.{0, 2, 4, ...}`` (SiLU in
between), time and class embeddings as ``time_embed.{0,2}`` and ``label_emb.0.{0,2}``.
diffusers' ``ControlNetModel`` names the same modules ``conv_in``,
``down_blocks.{i}.resnets/attentions/downsamplers``, ``mid_block``, ``controlnet_down_blocks``,
``controlnet_mid_block``, ``controlnet_cond_embedding``, ``time_embedding`` and
``class_embedding``/``add_embedding``. Transformer internals are named alike; res-block
internals differ (``norm1`` = ``in_layers.0`` ...). The mapping is checked against diffusers'
converter (tests/train/test_export.py) and ComfyUI's ``unet_to_diffusers``
(tests/nodes/test_train_export.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

#: Key prefix of a ControlNet in its original single-file layout.
CONTROL_PREFIX = "control_model."
#: A key only the original layout has (unprefixed), and one only the diffusers layout has.
ORIGINAL_MARKER = "zero_convs.0.0.weight"
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"

#: Keys of other control model families, to name what a refused file is.
OTHER_FAMILIES = (
    ("lora_controlnet", "a Control-LoRA"),
    ("after_proj_list.18.bias", "a HunyuanDiT ControlNet"),
    ("controlnet_x_embedder.weight", "a Flux (InstantX) ControlNet"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "a Flux (XLabs) ControlNet"),
    ("controlnet_blocks.0.linear.weight", "a Flux (Mistoline) ControlNet"),
    ("pos_embed_input.proj.weight", "an SD3 ControlNet"),
    ("transformer_blocks.0.img_mlp.net.0.proj.weight", "a Qwen-Image ControlNet"),
    ("controlnet_blocks.0.weight", "a DiT ControlNet"),
)

#: diffusers res-block parts -> original ``ResBlock`` parts.
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def layout(keys: Iterable[str]) -> str | None:
    """``"original"`` (with or without the ``control_model.`` prefix), ``"diffusers"``, or None
    (no UNet ControlNet) for a state dict's keys (a dict, set or safetensors key list)."""
    keys = keys if isinstance(keys, (Mapping, set, frozenset)) else set(keys)
    if ORIGINAL_MARKER in keys or CONTROL_PREFIX + ORIGINAL_MARKER in keys:
        return "original"
    if DIFFUSERS_MARKER in keys:
        return "diffusers"
    return None


def other_family(sd: Mapping[str, object]) -> str:
    """What a state dict that is no UNet ControlNet holds, for an error message: e.g.
    ``"a Flux (InstantX) ControlNet"``, else ``"not a ControlNet (first key: '...')"`` (a key
    name only, never a value)."""
    for key, family in OTHER_FAMILIES:
        if key in sd:
            return family
    return f"not a ControlNet (first key: {next(iter(sd), 'none')!r})"


def unprefixed(sd: dict) -> dict:
    """An original-layout state dict without the ``control_model.`` prefix (other keys of a
    prefixed file dropped); an unprefixed one unchanged."""
    if CONTROL_PREFIX + ORIGINAL_MARKER in sd:
        return {k[len(CONTROL_PREFIX):]: v for k, v in sd.items() if k.startswith(CONTROL_PREFIX)}
    return sd


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
        KeyError: a key with no place in the original layout (e.g. a union ControlNet's task
            embedding, or a malformed key).
    """
    step = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "class_embedding.linear_1": "label_emb.0.0",
             "class_embedding.linear_2": "label_emb.0.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "controlnet_mid_block": "middle_block_out.0",
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


def _count(keys: Iterable[str], pattern: str) -> int:
    """1 + the largest ``n`` of keys matching ``pattern`` (a regex with one ``(\\d+)``), 0 if none."""
    found = [int(m[1]) for k in keys if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def original_names(keys: Iterable[str]) -> dict[str, str]:
    """{diffusers key: original key (no prefix)} for the diffusers ``ControlNetModel`` keys given.

    The block structure (res blocks per level, condition-encoder blocks) is read from the keys,
    so they must be a whole state dict's. Keys with no original name are left out (compare the
    lengths to find them).
    """
    keys = list(keys)
    layers_per_block = _count(keys, r"down_blocks\.0\.resnets\.(\d+)\.")
    embedding_blocks = _count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    names = {}
    for key in keys:
        try:
            names[key] = original_key(key, layers_per_block, embedding_blocks)
        except KeyError:
            pass
    return names


def diffusers_to_original(sd: Mapping[str, object]) -> dict:
    """A diffusers ``ControlNetModel`` state dict in the original layout (no prefix), the same
    tensors. Keys with no original name are logged and left out."""
    names = original_names(sd)
    leftover = [k for k in sd if k not in names]
    if leftover:
        log.warning("diffusers ControlNet: %d keys not used, first %s", len(leftover), leftover[0])
    return {names[k]: v for k, v in sd.items() if k in names}


def original_to_diffusers(sd: Mapping[str, object], keys: Iterable[str]) -> dict:
    """The weights of an original-layout state dict (no prefix) under the diffusers ``keys``
    (a whole ``ControlNetModel`` state dict's) that it holds, the same tensors."""
    return {key: sd[original] for key, original in original_names(keys).items() if original in sd}
