"""Tiny random-weight SD1.5-format files for the real-ComfyUI tests and `make demo` (no downloads).

Needs ComfyUI importable (its folder on ``sys.path``); the diffusers
variant needs the ``diffusers`` package. Shapes follow COMFYUI.md, "Test checkpoints":

* :func:`build_checkpoint`: one file in the original SD1.5 layout that core
  CheckpointLoaderSimple loads as SD1.5: a one-level UNet (model_channels 320, context_dim 768,
  one res block with a transformer, a middle transformer), the full ViT-L CLIP text encoder and
  a TAESD under ``first_stage_model.taesd_*``.
* :func:`build_controlnet`: a matching ControlNet in the original ``control_model.*`` layout.
* :func:`build_diffusers_controlnet`: the same shape as a diffusers ``ControlNetModel`` file.

Weights are seeded random (normal, std 1/sqrt(fan-in); norms 1, biases 0). Zero convolutions
are random too, so the control visibly changes what the model makes. Files are written to a
temporary name and moved into place.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

#: ``comfy`` UNetModel / cldm ControlNet arguments of the tiny SD1.5 shape.
UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0], "context_dim": 768, "num_heads": 8,
    "num_head_channels": -1, "use_spatial_transformer": True, "use_linear_in_transformer": False,
    "legacy": False, "adm_in_channels": None,
}

#: diffusers ``ControlNetModel`` arguments of the same shape.
DIFFUSERS_CONFIG = {
    "in_channels": 4, "conditioning_channels": 3, "down_block_types": ["CrossAttnDownBlock2D"],
    "block_out_channels": [320], "layers_per_block": 1, "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
}


def random_weights(state: Mapping[str, torch.Tensor], prefix: str, seed: int,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random values shaped like every entry of ``state`` (a state dict, may be "meta")."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias" or name.endswith("vae_shift"):
            value = torch.zeros(t.shape)
        elif t.ndim <= 1:  # norm scales, vae_scale
            value = torch.ones(t.shape)
        else:
            value = torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel())
        out[prefix + name] = value.to(dtype)
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def unet_module(device: str = "meta") -> torch.nn.Module:
    """The tiny SD1.5 UNet as ComfyUI builds it (uninitialised on ``device``)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**UNET_CONFIG, out_channels=4, device=device, operations=comfy.ops.disable_weight_init)


def controlnet_module(device: str = "meta", **overrides) -> torch.nn.Module:
    """The matching cldm ControlNet (``overrides`` change UNET_CONFIG entries)."""
    import comfy.cldm.cldm
    import comfy.ops

    config = {**UNET_CONFIG, **overrides}
    return comfy.cldm.cldm.ControlNet(**config, hint_channels=3, device=device,
                                      operations=comfy.ops.disable_weight_init)


def build_checkpoint(path: str | os.PathLike, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write the tiny single-file SD1.5 checkpoint (about 265 MiB in float16) to ``path``."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    from comfy.taesd.taesd import TAESD

    with open(Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")) as f:
        clip_config = json.load(f)
    with torch.device("meta"):
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", comfy.ops.disable_weight_init)
        vae = TAESD()
    tensors = random_weights(unet_module().state_dict(), "model.diffusion_model.", seed, dtype)
    text = {k: v for k, v in clip.state_dict().items() if k.startswith("text_model.")}
    tensors.update(random_weights(text, "cond_stage_model.transformer.", seed + 1, dtype))
    tensors.update(random_weights(vae.state_dict(), "first_stage_model.", seed + 2, dtype))
    return _save(tensors, path)


def controlnet_weights(seed: int = 1, dtype: torch.dtype = torch.float16, **overrides) -> dict[str, torch.Tensor]:
    """Random weights of the tiny ControlNet, keys without the ``control_model.`` prefix."""
    return random_weights(controlnet_module(**overrides).state_dict(), "", seed, dtype)


def build_controlnet(path: str | os.PathLike, seed: int = 1, dtype: torch.dtype = torch.float16,
                     metadata: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Write the tiny ControlNet in the original layout (``control_model.*``) to ``path``.

    ``metadata``: safetensors header entries (e.g. SesaHand settings); ``drop``: keys (without
    the prefix) to leave out, for a file with missing weights.
    """
    tensors = {"control_model." + k: v for k, v in controlnet_weights(seed, dtype).items() if k not in drop}
    return _save(tensors, path, metadata)


def build_diffusers_controlnet(path: str | os.PathLike, seed: int = 2,
                               metadata: dict[str, str] | None = None):
    """Write the tiny ControlNet as a diffusers ``ControlNetModel`` state dict (float32).

    Returns the diffusers model holding the same weights (to compare forwards with).
    """
    from diffusers import ControlNetModel

    model = ControlNetModel(**DIFFUSERS_CONFIG).eval()
    model.load_state_dict(random_weights(model.state_dict(), "", seed))
    _save({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata)
    return model

