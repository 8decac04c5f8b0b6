"""SesaHand's ControlNet inside ComfyUI: loading SD1.5 ControlNets, the structural-fusion (SF)
forward over core's cldm blocks, and the ``ControlBase`` that samplers call.

The math is ``sesahand.control.fusion``; this module only routes core's blocks through it.
Core's cldm ``ControlNet.forward`` passes no ``transformer_options`` to its blocks, so
:func:`sf_forward` walks the blocks itself and gives each one an ``attn1`` replace patch (the
mechanism core's ``BasicTransformerBlock`` offers) that computes the self-attention with
:meth:`SelfAttentionMaps.attention`.
"""

from __future__ import annotations

import functools
import logging
import os

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import comfy.utils
import folder_paths
import torch
import torch.nn.functional as F
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from ..sesahand.control import (ControlMetadata, FusionSettings, SelfAttentionMaps, chunk_memory_bytes,
                                coarsest_grid, default_chunk_elements, layout, read_control_metadata, refine)

log = logging.getLogger(__name__)

def sf_forward(cldm: comfy.cldm.cldm.ControlNet, x: torch.Tensor, hint: torch.Tensor,
               timesteps: torch.Tensor, context: torch.Tensor, settings: FusionSettings,
               max_chunk_elements: int | None = None) -> dict[str, list[torch.Tensor]]:
    """Core's cldm ControlNet forward with structural fusion (eq. SF-1..3).

    Args:
        cldm: an SD1.5 ``comfy.cldm.cldm.ControlNet`` (no union or class embedding).
        x: (B, 4, h, w) model input latent; hint: (B, 3, 8h, 8w) condition image;
        timesteps: (B,) model timesteps; context: (B, T, 768) text tokens; all in the
            control model's dtype and device.
        settings: SF reading, blend weight and hierarchy.
        max_chunk_elements: attention chunk size (see ``SelfAttentionMaps``); None: chosen for
            x's device (``default_chunk_elements``).

    Returns:
        ``{"middle": [1 tensor], "output": [one per input block]}`` like core's forward:
        zero-convolution outputs of the refined control features, input-block order.
    """
    common = coarsest_grid(tuple(x.shape[-2:]), len(cldm.channel_mult) - 1)
    maps = SelfAttentionMaps(settings.fusion, common, max_chunk_elements, settings.hierarchy)

    def attn1(q, k, v, extra_options):
        grid = tuple(extra_options["activations_shape"][-2:])
        return maps.attention(q, k, v, extra_options["n_heads"], grid)

    def options(block):
        return {"block": block, "patches_replace": {"attn1": {block: attn1}}}

    emb = cldm.time_embed(timestep_embedding(timesteps, cldm.model_channels).to(x.dtype))
    features = []
    h = x
    for index, module in enumerate(cldm.input_blocks):
        h = module(h, emb, context, transformer_options=options(("input", index)))
        if index == 0:
            h = h + cldm.input_hint_block(hint, emb, context)
        features.append(h)
    features.append(cldm.middle_block(h, emb, context, transformer_options=options(("middle", 0))))
    del h
    psi = maps.structure()

    zero_convs = [*cldm.zero_convs, cldm.middle_block_out]
    residuals = []
    for index, zero_conv in enumerate(zero_convs):
        feature, features[index] = features[index], None
        middle = index == len(zero_convs) - 1
        residuals.append(zero_conv(refine(feature, psi, settings, middle), emb, context))
    return {"middle": residuals[-1:], "output": residuals[:-1]}


def context_dim(cldm: torch.nn.Module) -> int:
    """Width of the text tokens the control model's cross-attention takes (768 for SD1.5)."""
    for name, module in cldm.named_modules():
        if name.endswith("attn2.to_k"):
            return module.in_features
    raise ValueError("the control model has no cross-attention")


def _batch_like(t: torch.Tensor, x: torch.Tensor, batched_number: int) -> torch.Tensor:
    """``t`` repeated to x's batch of ``batched_number`` chunks (cond, uncond), as core does."""
    if t.shape[0] == x.shape[0]:
        return t
    return comfy.controlnet.broadcast_image_to(t, x.shape[0], batched_number)


class SesaHandControlNet(comfy.controlnet.ControlBase):
    """An SD1.5 cldm ControlNet with structural fusion, for ComfyUI's samplers.

    Behaves like core's ``ControlNet`` (same hint resizing, timestep range, strength, stacking
    through ``previous_controlnet``); with ``fusion.w == 0`` it calls core's forward, so the
    residuals are exactly core's. Adds SF (``fusion``) and an optional ``mask`` (B, H, W) in
    [0, 1] that scales every residual where the control acts (resized like the hint, then
    area-averaged to each residual's grid), and ``chunk_elements``: SF's attention chunk size
    (None: chosen per device by ``default_chunk_elements``; results do not depend on it).

    Args:
        patcher: ``ModelPatcher`` of the cldm ControlNet (shared by copies).
        manual_cast_dtype: ComfyUI's compute dtype for the weights, or None.
        metadata: the file's SesaHand settings; ``fusion`` starts as ``metadata.fusion``.
    """

    def __init__(self, patcher: comfy.model_patcher.ModelPatcher, manual_cast_dtype: torch.dtype | None,
                 metadata: ControlMetadata = ControlMetadata()):
        super().__init__()
        self.control_model_wrapped = patcher
        self.control_model = patcher.model
        self.manual_cast_dtype = manual_cast_dtype
        self.metadata = metadata
        self.fusion = metadata.fusion
        self.chunk_elements: int | None = None
        self.mask = None
        self.cond_mask = None
        self.model_sampling_current = None
        self.context_dim = context_dim(self.control_model)

    def copy(self) -> SesaHandControlNet:
        c = SesaHandControlNet(self.control_model_wrapped, self.manual_cast_dtype, self.metadata)
        self.copy_to(c)
        return c

    def copy_to(self, c):
        super().copy_to(c)
        c.fusion = self.fusion
        c.chunk_elements = self.chunk_elements
        c.mask = self.mask

    def get_models(self):
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function):
        if not isinstance(model.model_config, comfy.supported_models.SD15):
            raise ValueError(
                f"SesaHand Apply Hand Control: the sampled model is {type(model.model_config).__name__}, "
                "but control_net is an SD1.5 ControlNet; load an SD1.5 checkpoint (Load Checkpoint: "
                "ckpt_name) or use a ControlNet made for that model with core Apply ControlNet")
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def cleanup(self):
        self.model_sampling_current = None
        self.cond_mask = None
        super().cleanup()

    def _chunk(self, device) -> int:
        return self.chunk_elements or default_chunk_elements(device, fused=True)  # inference only

    def inference_memory_requirements(self, dtype):
        # SF's attention keeps a few float32 chunks of logits alive at once.
        extra = chunk_memory_bytes(self._chunk(self.control_model_wrapped.load_device)) if self.fusion.active else 0
        return extra + super().inference_memory_requirements(dtype)

    def _prepare_hint(self, x: torch.Tensor, dtype: torch.dtype) -> None:
        """Resize the condition image (and mask) to the latent's pixel size, as core does."""
        height, width = x.shape[-2] * self.compression_ratio, x.shape[-1] * self.compression_ratio
        if self.cond_hint is not None and tuple(self.cond_hint.shape[-2:]) == (height, width):
            return
        src_h, src_w = self.cond_hint_original.shape[-2:]
        if abs(src_w * height - src_h * width) > max(src_h, height):  # aspect ratios differ
            log.warning("SesaHand Apply Hand Control: image is %dx%d but the latent is %dx%d pixels; "
                        "it is resized and centre-cropped, so the hands no longer line up with their "
                        "labels: render the condition at the latent's size (SesaHand Render "
                        "Conditions: width, height)", src_w, src_h, width, height)
        self.cond_hint = comfy.utils.common_upscale(
            self.cond_hint_original, width, height, self.upscale_algorithm, "center").to(x.device, dtype)
        if self.mask is not None:
            self.cond_mask = comfy.utils.common_upscale(
                self.mask[:, None].float(), width, height, "bilinear", "center").to(x.device, dtype)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number,
                                                                transformer_options)
        if self.timestep_range is not None and \
                (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev

        dtype = self.manual_cast_dtype or self.control_model.dtype
        self._prepare_hint(x_noisy, dtype)
        hint = _batch_like(self.cond_hint, x_noisy, batched_number)
        context = comfy.model_management.cast_to_device(
            cond.get("crossattn_controlnet", cond["c_crossattn"]), x_noisy.device, dtype)
        timestep = self.model_sampling_current.timestep(t).to(dtype)
        x = self.model_sampling_current.calculate_input(t, x_noisy).to(dtype)

        if self.fusion.active:
            control = sf_forward(self.control_model, x, hint, timestep, context, self.fusion,
                                 self._chunk(x.device))
        else:
            control = self.control_model(x=x, hint=hint, timesteps=timestep, context=context)
        if self.cond_mask is not None:
            mask = _batch_like(self.cond_mask, x_noisy, batched_number)
            control = {key: [r * F.interpolate(mask, size=r.shape[-2:], mode="area") for r in residuals]
                       for key, residuals in control.items()}
        return self.control_merge(control, control_prev, output_dtype=None)


def original_layout(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The ControlNet weights of ``sd`` in the original cldm key layout, without prefix.

    Raises:
        ValueError: the file is no UNet ControlNet (naming the family found) or a
            difference ControlNet; the message names the ``control_net_name`` input.
    """
    if "difference" in sd:
        raise ValueError(f"control_net_name {name!r} is a difference ControlNet, which needs its base "
                         "model: use core DiffControlNetLoader, or choose a full ControlNet")
    kind = layout.layout(sd)
    if kind == "original":
        return layout.unprefixed(sd)
    if kind == "diffusers":
        return layout.diffusers_to_original(sd)
    raise ValueError(f"control_net_name {name!r} is {layout.other_family(sd)}, not an SD1.5 ControlNet; "
                     "choose an SD1.5 ControlNet")


def check_sd15(sd: dict[str, torch.Tensor], name: str) -> dict:
    """The cldm constructor arguments of an SD1.5 ControlNet (original layout, no prefix).

    Raises:
        ValueError: the weights are for another model family (named), or weights are missing
            (names the first missing key); the message names the ``control_net_name`` input.
    """
    try:
        model_config = comfy.model_detection.model_config_from_unet(sd, "")
        hint_channels = sd["input_hint_block.0.weight"].shape[1]
    except KeyError as exc:  # a weight that model detection reads is missing
        raise ValueError(f"control_net_name {name!r} lacks weight {exc.args[0]!r}: the file is "
                         "incomplete or damaged; download it again or choose another") from None
    if not isinstance(model_config, comfy.supported_models.SD15):
        if model_config is None:
            unet = comfy.model_detection.detect_unet_config(sd, "") or {}
            family = (f"an unrecognised UNet ControlNet (model_channels {unet.get('model_channels')}, "
                      f"context_dim {unet.get('context_dim')})")
        else:
            family = f"an {type(model_config).__name__} ControlNet"
        raise ValueError(f"control_net_name {name!r} is {family}, not SD1.5; SesaHand needs an SD1.5 "
                         "ControlNet (use core Apply ControlNet for other models)")
    config = dict(model_config.unet_config)
    config.pop("out_channels", None)
    config["hint_channels"] = hint_channels
    with torch.device("meta"):
        expected = comfy.cldm.cldm.ControlNet(**config, operations=comfy.ops.disable_weight_init).state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"control_net_name {name!r} lacks weight {missing[0]!r} ({len(missing)} missing): "
                         "the file is incomplete or damaged; download it again or choose another")
    return config


def load_controlnet(path: str, name: str) -> SesaHandControlNet:
    """Load an SD1.5 ControlNet file (original or diffusers layout) with its SesaHand settings.

    ``name`` is the file's name in the node combo (for messages). Weights, dtype and device
    are ComfyUI's choice (core ``load_controlnet_state_dict``); without SesaHand metadata SF
    is off.

    Raises:
        ValueError: see :func:`original_layout`, :func:`check_sd15`, and bad metadata.
    """
    metadata = read_control_metadata(path)
    sd = original_layout(comfy.utils.load_torch_file(path, safe_load=True), name)
    check_sd15(sd, name)
    core = comfy.controlnet.load_controlnet_state_dict(sd)
    log.info("SesaHand ControlNet %s: fusion %s, w %g, hierarchy %s", name, metadata.fusion.fusion,
             metadata.fusion.w, metadata.fusion.hierarchy)
    return SesaHandControlNet(core.control_model_wrapped, core.manual_cast_dtype, metadata)


@functools.lru_cache(maxsize=256)
def _holds_controlnet(path: str, mtime: float) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # not a readable safetensors file: not offered
        return False
    return layout.layout(keys) is not None


def controlnet_names() -> list[str]:
    """Files offered by SesaHand Load ControlNet: every file of the ``controlnet`` folder, then
    the ControlNet safetensors files of the ``sesahand`` folder (it also holds other caches)."""
    names = list(folder_paths.get_filename_list("controlnet"))
    for name in folder_paths.get_filename_list("sesahand"):
        path = folder_paths.get_full_path("sesahand", name)
        if name not in names and name.lower().endswith((".safetensors", ".sft")) \
                and _holds_controlnet(path, os.path.getmtime(path)):
            names.append(name)
    return names


def controlnet_path(name: str) -> str:
    """Full path of a combo entry (the ``controlnet`` folder first); ValueError if absent."""
    path = folder_paths.get_full_path("controlnet", name) or folder_paths.get_full_path("sesahand", name)
    if path is None:
        raise ValueError(f"control_net_name {name!r} is not in the controlnet or sesahand model folders; "
                         "choose a file from the list (refresh after adding files)")
    return path
