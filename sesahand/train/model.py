"""The model SesaHand trains (docs/method.md, "Backbone and loss"): frozen SD1.5, a trainable
diffusers ``ControlNetModel`` with hierarchical structural fusion (SF, eq. SF-1..3) and the
hand-attention bias (AE, eq. AE-1) on the frozen UNet's cross-attention, and the noise-prediction loss
``L = E || eps - eps_theta(z_t, t, c_t, c_f) ||^2``.

SF and AE use the same math as the ComfyUI nodes (``sesahand.control.fusion``,
``sesahand.attention.bias``); here they are installed as diffusers attention processors and
forward pre-hooks, so diffusers' own forwards run unchanged around them:

* SF (:class:`FusedControlNet`): every self-attention (``attn1``) of the ControlNet's down and
  mid blocks is computed by :meth:`SelfAttentionMaps.attention` (maps reduced on the fly), and
  every control feature is refined by :func:`refine` right before its zero convolution
  (``controlnet_down_blocks[i]``, ``controlnet_mid_block``): the places the ComfyUI walker
  (``nodes/control_model.sf_forward``) uses, in the same order (12 + 1 for SD1.5).
* AE (:func:`install_hand_attention`): the UNet's cross-attention (``attn2``) of the decoder
  (``up_blocks``; ``"all"`` adds down and mid blocks) adds alpha to the logits of hand tokens.

Offline loading: a diffusers folder, or a single-file original-layout (LDM / ComfyUI)
checkpoint whose UNet configuration is read from its weight shapes; the other components use
the standard SD1.5 configurations and CLIP tokenizer shipped in ``sd15/`` (no hub access).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..attention.bias import biased_attention, check_alpha
from ..control.fusion import FusionSettings, SelfAttentionMaps, coarsest_grid, refine
from ..control.metadata import ATTENTION_LAYERS

log = logging.getLogger(__name__)

#: Standard SD1.5 component configurations and the CLIP tokenizer (diffusers folder layout).
SD15_DATA = Path(__file__).with_name("sd15")
#: Prefixes of the original (LDM) single-file layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
#: Text width of SD1.x (CLIP ViT-L/14).
SD15_CONTEXT_DIM = 768
#: Attention heads of every SD1.5 transformer (diffusers calls it ``attention_head_dim``).
SD15_HEADS = 8
#: Readable names of diffusers' checkpoint types, for refusals.
FAMILY_NAMES = {
    "v2": "an SD2.x", "inpainting_v2": "an SD2.x inpainting", "xl_base": "an SDXL",
    "xl_refiner": "an SDXL refiner", "xl_inpaint": "an SDXL inpainting",
    "playground-v2-5": "a Playground v2.5 (SDXL)", "upscale": "an SD x4 upscaler",
    "inpainting": "an SD1.x inpainting",
}
#: UNet layers that get the hand-attention bias.
HAND_LAYERS = ATTENTION_LAYERS


@dataclass
class SD15:
    """Frozen SD1.5 components (``requires_grad`` off, eval mode), on one device and dtype.

    Attributes:
        unet: ``diffusers.UNet2DConditionModel`` (cross-attention 768 wide).
        vae: ``diffusers.AutoencoderKL``, or ``AutoencoderTiny`` for a checkpoint that holds
            only a TAESD (ComfyUI's ``first_stage_model.taesd_*``; latents already scaled).
        text_encoder: ``transformers.CLIPTextModel`` (768 wide, 77 positions).
        tokenizer: ``transformers.CLIPTokenizer`` (77 tokens).
        noise_scheduler: ``diffusers.DDPMScheduler`` (the training noise schedule; its
            ``config.prediction_type`` is ``"epsilon"`` or ``"v_prediction"``).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any


# ----------------------------------------------------------------------------- loading SD1.5

def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def _family(sd: dict[str, torch.Tensor]) -> str:
    """What kind of checkpoint ``sd`` is, as "a/an <family>" (diffusers' detection, readable names)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type(sd)
    except Exception:  # diffusers' detection reads keys it expects; anything else is unknown
        kind = None
    if kind in FAMILY_NAMES:
        return FAMILY_NAMES[kind]
    return f"a {kind!r}" if kind else "an unrecognised"


def unet_config_from_checkpoint(sd: dict[str, torch.Tensor], name: str) -> dict:
    """The diffusers ``UNet2DConditionModel`` config of an original-layout SD1.x UNet.

    Read from the shapes of ``model.diffusion_model.*`` (levels, res blocks, widths, where the
    transformers are, their depth, conv or linear projections); the number of heads is SD1.5's
    (8). Works for any SD1.x-shaped UNet, e.g. tools/tiny_sd15.py's one-level test UNet.

    Raises:
        ValueError: no SD1.x UNet: another family (named), an inpainting UNet, or missing keys.
    """
    keys = [k[len(UNET_PREFIX):] for k in sd if k.startswith(UNET_PREFIX)]
    if "input_blocks.0.0.weight" not in keys:
        raise ValueError(f"{name}: {_family(sd)} checkpoint, not SD1.5 (no {UNET_PREFIX}input_blocks); "
                         "choose an SD1.5 checkpoint")

    def get(key):
        return sd[UNET_PREFIX + key]

    contexts = {get(k).shape[1] for k in keys if k.endswith("attn2.to_k.weight")}
    if contexts != {SD15_CONTEXT_DIM} or "label_emb.0.0.weight" in keys:
        raise ValueError(f"{name}: {_family(sd)} checkpoint (text width {sorted(contexts)}), not SD1.5; "
                         "SesaHand trains an SD1.5 ControlNet: choose an SD1.5 checkpoint")
    in_channels = get("input_blocks.0.0.weight").shape[1]
    if in_channels != 4:
        raise ValueError(f"{name}: {_family(sd)} checkpoint ({in_channels} input channels); "
                         "choose a plain (text-to-image) SD1.5 checkpoint")

    def blocks(prefix):
        return sorted({int(k.split(".")[1]) for k in keys if k.startswith(prefix + ".")})

    inputs = blocks("input_blocks")
    downsamplers = [i for i in inputs if f"input_blocks.{i}.0.op.weight" in keys]
    levels = len(downsamplers) + 1
    per_level = (len(inputs) - 1 - len(downsamplers)) // levels
    widths, down_types, up_types, depths = [], [], [], []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        widths.append(get(f"input_blocks.{first}.0.out_layers.3.weight").shape[0])
        attention = f"input_blocks.{first}.1.proj_in.weight" in keys
        down_types.append("CrossAttnDownBlock2D" if attention else "DownBlock2D")
        depths.append(len({k.split(".")[4] for k in keys
                           if k.startswith(f"input_blocks.{first}.1.transformer_blocks.")}) or 1)
        up_attention = f"output_blocks.{(levels - 1 - level) * (per_level + 1)}.1.proj_in.weight" in keys
        up_types.append("CrossAttnUpBlock2D" if up_attention else "UpBlock2D")
    proj = [k for k in keys if k.endswith("proj_in.weight")]
    return {
        "sample_size": 64, "in_channels": in_channels, "out_channels": get("out.2.weight").shape[0],
        "down_block_types": down_types, "up_block_types": up_types[::-1],
        "block_out_channels": widths, "layers_per_block": per_level,
        "cross_attention_dim": SD15_CONTEXT_DIM, "attention_head_dim": SD15_HEADS,
        "transformer_layers_per_block": depths,
        "use_linear_projection": bool(proj) and get(proj[0]).ndim == 2,
    }


def _taesd(sd: dict[str, torch.Tensor]):
    """diffusers ``AutoencoderTiny`` holding ComfyUI's ``first_stage_model.taesd_*`` weights.

    ComfyUI's decoder Sequential starts with its tanh clamp (no weights), which diffusers'
    DecoderTiny applies in its forward instead: decoder index i is diffusers layer i - 1.
    """
    from diffusers import AutoencoderTiny

    with torch.device("meta"):
        vae = AutoencoderTiny()
    state = {}
    for key, value in sd.items():
        match = re.match(rf"{re.escape(VAE_PREFIX)}taesd_(encoder|decoder)\.(\d+)\.(.+)", key)
        if match:
            part, index, rest = match.groups()
            index = int(index) - (part == "decoder")
            state[f"{part}.layers.{index}.{rest}"] = value
    _load_weights(vae, state, "TAESD VAE")
    if float(sd.get(VAE_PREFIX + "vae_scale", torch.tensor(1.0))) != 1.0 or \
            float(sd.get(VAE_PREFIX + "vae_shift", torch.tensor(0.0))) != 0.0:
        raise ValueError("the checkpoint's TAESD has a latent scale or shift (not SD1.5's TAESD)")
    return vae


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Put ``state`` into a module built on the meta device (every weight must be there, shaped right).

    Raises:
        ValueError: names the first missing, unexpected or mis-shaped weight.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shaped:
        first = (missing or unexpected or shaped)[0]
        raise ValueError(f"{what} weights do not fit an SD1.5 model ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(shaped)} mis-shaped; first {first!r}): the file is damaged or "
                         "not SD1.5")
    module.load_state_dict(state, assign=True)


def _load_single_file(path: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = _read_state_dict(path)
    config = unet_config_from_checkpoint(sd, path.name)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    _load_weights(unet, convert_ldm_unet_checkpoint(sd, unet.config), f"{path.name}: UNet")

    if any(k.startswith(VAE_PREFIX + "taesd_encoder.") for k in sd):
        vae = _taesd(sd)
    elif any(k.startswith(VAE_PREFIX + "encoder.") for k in sd):
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_DATA / "vae"))
        _load_weights(vae, convert_ldm_vae_checkpoint(sd, vae.config), f"{path.name}: VAE")
    else:
        raise ValueError(f"{path.name}: no VAE weights ({VAE_PREFIX}*); SesaHand needs a full SD1.5 "
                         "checkpoint (UNet, VAE and CLIP text encoder in one file)")

    text = {k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    if not text:
        raise ValueError(f"{path.name}: no CLIP text encoder ({CLIP_PREFIX}*); SesaHand needs a full "
                         "SD1.5 checkpoint")
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_DATA / "text_encoder"))
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers >= 5
        text = {k.removeprefix("text_model."): v for k, v in text.items()}
    missing, unexpected = text_encoder.load_state_dict(text, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or [k for k in unexpected if not k.endswith("position_ids")]:
        raise ValueError(f"{path.name}: the CLIP text encoder does not match SD1.5's "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return unet, vae, text_encoder, SD15_DATA


def _load_folder(path: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (path / "unet" / "config.json").is_file():
        raise ValueError(f"{path}: not a diffusers SD1.5 folder (no unet/config.json); give a diffusers "
                         "folder or a single-file .safetensors checkpoint")
    unet_config = UNet2DConditionModel.load_config(path / "unet")
    width = unet_config.get("cross_attention_dim")
    # SD1.x-type: one text encoder, no added embeddings (a reduced test model may be narrower)
    if not isinstance(width, int) or width == 1024 or unet_config.get("addition_embed_type") \
            or unet_config.get("class_embed_type"):
        family = "an SDXL" if unet_config.get("addition_embed_type") == "text_time" else \
            ("an SD2.x" if width == 1024 else "a non-SD1.5")
        raise ValueError(f"{path}: {family} model (cross_attention_dim {width}), not SD1.5; SesaHand "
                         "trains an SD1.5 ControlNet: choose an SD1.5 model")
    local = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **local)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **local)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **local)
    return unet, vae, text_encoder, path


def load_sd15(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> SD15:
    """Load SD1.5 from a diffusers folder or a single-file checkpoint, offline, frozen.

    Args:
        path: a diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``; loaded with ``from_pretrained(local_files_only=True)``),
            or one ``.safetensors`` / ``.ckpt`` file in the original layout
            (``model.diffusion_model.*``, ``first_stage_model.*``,
            ``cond_stage_model.transformer.*``; the UNet config is read from its shapes, the
            VAE and text-encoder configs, tokenizer and noise schedule are SD1.5's, shipped in
            ``sesahand/train/sd15``). A folder without ``tokenizer/`` or ``scheduler/`` uses the
            shipped ones too.
        dtype: weight dtype of all components (float32 to train in mixed precision).
        device: where the weights go.

    Returns:
        :class:`SD15`, every component in eval mode with ``requires_grad`` off.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not SD1.5 (SDXL, SD2.x and other families are named), or components are
            missing or do not match SD1.5's shapes.
    """
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SD1.5 model {path} does not exist; give a diffusers folder or a "
                                "single-file .safetensors checkpoint")
    unet, vae, text_encoder, rest = _load_folder(path) if path.is_dir() else _load_single_file(path)
    tokenizer_dir = rest / "tokenizer" if (rest / "tokenizer").is_dir() else SD15_DATA / "tokenizer"
    scheduler_root = rest if (rest / "scheduler").is_dir() else SD15_DATA
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(scheduler_root, subfolder="scheduler", local_files_only=True)
    for module in (unet, vae, text_encoder):
        module.to(device=device).eval().requires_grad_(False)
        if module.dtype != dtype:
            module.to(dtype=dtype)
    log.info("SD1.5 from %s: UNet levels %s, VAE %s, prediction %s", path.name,
             list(unet.config.block_out_channels), type(vae).__name__, scheduler.config.prediction_type)
    return SD15(unet, vae, text_encoder, tokenizer, scheduler)


# ----------------------------------------------------------------------------- the ControlNet

def build_controlnet(unet, init: str | Path | None = None):
    """A trainable ``diffusers.ControlNetModel`` shaped like ``unet``'s encoder.

    Args:
        unet: the SD1.5 ``UNet2DConditionModel`` (from :func:`load_sd15`).
        init: None: initialised from the UNet encoder (``ControlNetModel.from_unet``: encoder
            weights copied, zero convolutions zero). Else an existing SD1.5 ControlNet: a
            diffusers folder (``config.json`` + weights) or one ``.safetensors`` file in the
            original layout (``control_model.*`` or unprefixed ``input_blocks...``) or the
            diffusers layout (``controlnet_cond_embedding...``).

    Returns:
        ``ControlNetModel`` in float32, train mode, every parameter trainable, on the UNet's
        device.

    Raises:
        FileNotFoundError: ``init`` does not exist.
        ValueError: ``init`` is not a ControlNet, or its weights do not fit ``unet`` (another
            family or size; names the first mismatching key).
    """
    from diffusers import ControlNetModel

    from .export import original_to_diffusers

    controlnet = ControlNetModel.from_unet(unet)
    if controlnet.dtype != torch.float32:
        controlnet.to(dtype=torch.float32)
    if init is not None:
        init = Path(init).expanduser()
        if not init.exists():
            raise FileNotFoundError(f"ControlNet init {init} does not exist; give an SD1.5 ControlNet "
                                    "file or diffusers folder, or none to start from the UNet")
        if init.is_dir():
            loaded = ControlNetModel.from_pretrained(init, local_files_only=True)
            state = loaded.state_dict()
        else:
            state = original_to_diffusers(_read_state_dict(init), controlnet.config, init.name)
        expected = controlnet.state_dict()
        for key, value in expected.items():
            if key not in state:
                raise ValueError(f"ControlNet init {init.name}: lacks weight {key!r} for this SD1.5 UNet; "
                                 "choose an SD1.5 ControlNet")
            if state[key].shape != value.shape:
                raise ValueError(f"ControlNet init {init.name}: weight {key!r} is {tuple(state[key].shape)}, "
                                 f"this SD1.5 UNet needs {tuple(value.shape)} (a ControlNet of another "
                                 "model family or size); choose an SD1.5 ControlNet")
        controlnet.load_state_dict({k: state[k].float() for k in expected})
    return controlnet.to(unet.device).train().requires_grad_(True)


class _SFState:
    """What SF's processors and hooks share during one :class:`FusedControlNet` forward."""

    def __init__(self, settings: FusionSettings, levels: int, max_chunk_elements: int | None):
        self.settings = settings
        self.levels = levels
        self.max_chunk_elements = max_chunk_elements
        self.latent: tuple[int, int] | None = None
        self.maps: SelfAttentionMaps | None = None
        self.psi: torch.Tensor | None = None

    def new_maps(self) -> SelfAttentionMaps:
        common = coarsest_grid(self.latent, self.levels - 1)
        return SelfAttentionMaps(self.settings.fusion, common, self.max_chunk_elements, self.settings.hierarchy)


class _SFSelfAttention:
    """diffusers attention processor: a ControlNet self-attention through SelfAttentionMaps.

    ``level``: the block's level (0 = finest; the mid block is the last), which gives the token
    grid from the latent size. Outside a fused forward (``state.maps`` None, e.g. a
    gradient-checkpointing recomputation) the same computation runs on throw-away maps.
    """

    def __init__(self, state: _SFState, level: int, original):
        self.state = state
        self.level = level
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        state = self.state
        if not state.settings.active or state.latent is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3 \
                or attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
            raise ValueError("structural fusion supports SD1.5 self-attention only (no mask, norms or "
                             "context on attn1)")
        grid = coarsest_grid(state.latent, self.level)
        maps = state.maps if state.maps is not None else state.new_maps()
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out = attn.to_out[1](attn.to_out[0](maps.attention(q, k, v, attn.heads, grid)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class _ForwardHooks:
    """Forward pre-/post-hooks of the ControlNet itself: start the maps of one forward, end them."""

    def __init__(self, state: _SFState):
        self.state = state

    def start(self, module, args, kwargs):
        state = self.state
        sample = args[0] if args else kwargs["sample"]
        state.latent = tuple(sample.shape[-2:])  # kept after the forward for recomputations
        state.maps = state.new_maps() if state.settings.active else None
        state.psi = None

    def end(self, module, args, output):
        self.state.maps = self.state.psi = None


class _RefineHook:
    """Forward pre-hook of a zero convolution: its input f_c becomes f_c' (eq. SF-2)."""

    def __init__(self, state: _SFState, middle: bool):
        self.state = state
        self.middle = middle

    def __call__(self, module, args):
        state = self.state
        if state.maps is None:
            return None
        if state.psi is None:  # the zero convolutions run after the mid block: all maps are in
            state.psi = state.maps.structure()
        return (refine(args[0], state.psi, state.settings, self.middle),)


class FusedControlNet(torch.nn.Module):
    """A diffusers ``ControlNetModel`` with hierarchical structural fusion (eq. SF-1..3).

    The ControlNet's own self-attention maps (all down blocks and the mid block, token grids
    64/32/16/8 at 512 x 512) give psi' (eq. SF-1), which refines every control feature before
    its zero convolution (eq. SF-2, blended by ``fusion.w``; ``"tokens"`` changes the mid
    block's, ``"gate"`` all 13), then the zero convolution (eq. SF-3's Z). Same functions and
    places as the ComfyUI walker ``nodes/control_model.sf_forward``, so weights trained here
    behave the same there. SF has no parameters: ``parameters()`` are the ControlNet's.

    Args:
        controlnet: an SD1.5-shaped ``diffusers.ControlNetModel`` (from :func:`build_controlnet`).
            It is patched in place: its down/mid ``attn1`` processors are replaced (they fall
            back to the originals while SF is off) and hooks are put on it and its zero
            convolutions, so calling ``controlnet`` itself (e.g. from a diffusers
            ``StableDiffusionControlNetPipeline`` for validation images) applies SF too. Do not
            call its ``set_attn_processor`` afterwards (that removes SF's processors).
        fusion: SF reading, blend weight and hierarchy; ``w = 0`` runs the plain ControlNet forward.
        max_chunk_elements: attention chunk size of :class:`SelfAttentionMaps` (None: chosen per
            device, ``sesahand.control.default_chunk_elements``); results do not depend on it.

    Works with ``controlnet.enable_gradient_checkpointing()`` (recomputed attention takes the
    same path, on the grid of the latest forward) and under autocast (SF's logits and softmax
    stay float32). Memory under autograd: SF keeps no attention map for backward (each query
    chunk is recomputed), so its cost over the plain ControlNet is q, k, v copies and one
    (B, G, G) aggregate per chunk per layer (``sesahand.control.fusion``).
    """

    def __init__(self, controlnet, fusion: FusionSettings, max_chunk_elements: int | None = None):
        super().__init__()
        self.controlnet = controlnet
        levels = len(controlnet.down_blocks)
        self._state = _SFState(fusion, levels, max_chunk_elements)
        for name, module in controlnet.named_modules():
            match = re.match(r"(down_blocks\.(\d+)|mid_block)\..*\.attn1$", name)
            if match:
                level = int(match.group(2)) if match.group(2) is not None else levels - 1
                module.set_processor(_SFSelfAttention(self._state, level, module.processor))
        hooks = _ForwardHooks(self._state)
        controlnet.register_forward_pre_hook(hooks.start, with_kwargs=True)
        controlnet.register_forward_hook(hooks.end, always_call=True)
        for conv in controlnet.controlnet_down_blocks:
            conv.register_forward_pre_hook(_RefineHook(self._state, middle=False))
        controlnet.controlnet_mid_block.register_forward_pre_hook(_RefineHook(self._state, middle=True))

    @property
    def fusion(self) -> FusionSettings:
        """The SF settings (assignable)."""
        return self._state.settings

    @fusion.setter
    def fusion(self, settings: FusionSettings) -> None:
        self._state.settings = settings

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The ControlNet residuals with SF.

        Args:
            sample: (B, 4, h, w) noisy latent; timestep: (B,) or scalar DDPM timesteps;
            encoder_hidden_states: (B, C * 77, 768) text tokens; controlnet_cond: (B, 3, 8h, 8w)
            condition image in [0, 1].

        Returns:
            (down_block_res_samples: list of 12 (SD1.5) tensors, mid_block_res_sample), the
            inputs of the UNet's ``down_block_additional_residuals`` /
            ``mid_block_additional_residual``. With ``fusion.w == 0`` exactly
            ``ControlNetModel.forward``'s.
        """
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=controlnet_cond, return_dict=False)
        return list(down), mid


# ----------------------------------------------------------------------------- hand attention

class _HandCrossAttention:
    """diffusers attention processor: cross-attention with alpha on hand-token logits (eq. AE-1)."""

    def __init__(self, handle: HandAttention, original):
        self.handle = handle
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        mask = self.handle.token_mask
        if mask is None or self.handle.alpha == 0 or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None or hidden_states.ndim != 3 or attn.spatial_norm is not None \
                or attn.group_norm is not None or attn.norm_cross or attn.norm_q is not None:
            raise ValueError("the hand-attention bias supports SD1.5 cross-attention only (no mask or norms)")
        if mask.shape[-1] != encoder_hidden_states.shape[1]:
            raise ValueError(f"hand token mask {tuple(mask.shape)} does not fit "
                             f"{encoder_hidden_states.shape[1]} text tokens")
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        bias = mask.to(device=q.device, dtype=q.dtype) * self.handle.alpha
        out = attn.to_out[1](attn.to_out[0](biased_attention(q, k, v, attn.heads, bias)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class HandAttention:
    """The hand-attention bias installed on a UNet (from :func:`install_hand_attention`).

    Attributes:
        alpha: the bias (eq. AE-1); 0 leaves the UNet plain.
        token_mask: (B or 1, C * 77) bool of hand tokens (the set I), or None (no bias).
        layers: names of the patched ``attn2`` modules.
    """

    def __init__(self, unet, alpha: float, layers: str):
        self.alpha = check_alpha(alpha)
        self.token_mask: torch.Tensor | None = None
        self._originals = {}
        for name, module in unet.named_modules():
            if name.endswith("attn2") and (layers == "all" or name.startswith("up_blocks.")):
                self._originals[name] = (module, module.processor)
                module.set_processor(_HandCrossAttention(self, module.processor))
        self.layers = tuple(self._originals)

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """The hand tokens of the next forwards: (B, C * 77) bool (row b: prompt b's hand tokens,
        e.g. ``sesahand.attention.find_hand_tokens(...).positions``), or None for no bias.

        Raises:
            ValueError: not a 2-D boolean tensor.
        """
        if mask is not None and (mask.dtype != torch.bool or mask.ndim != 2):
            raise ValueError(f"hand_token_mask must be a (B, C * 77) bool tensor, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        self.token_mask = mask

    def remove(self) -> None:
        """Put the UNet's original processors back."""
        for module, processor in self._originals.values():
            module.set_processor(processor)
        self._originals.clear()
        self.layers = ()


def install_hand_attention(unet, alpha: float, layers: str = "decoder") -> HandAttention:
    """Add ``alpha`` to the logits of hand tokens in the UNet's cross-attention (eq. AE-1).

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD1.5).
        alpha: bias in [0, 10] (the paper's best: 2.0); 0 leaves the UNet's output unchanged.
        layers: ``"decoder"`` (the method's choice, docs/method.md: every ``attn2`` of
            ``up_blocks``) or ``"all"``.

    Returns:
        :class:`HandAttention`; the bias acts once a token mask is set
        (:meth:`HandAttention.set_token_mask`), until :meth:`HandAttention.remove`.

    Raises:
        ValueError: alpha out of range or an unknown ``layers``.
    """
    if layers not in HAND_LAYERS:
        raise ValueError(f"layers {layers!r} is unknown; choose one of {list(HAND_LAYERS)}")
    handle = HandAttention(unet, alpha, layers)
    if not handle.layers:
        log.warning("hand attention: the UNet has no cross-attention in its %s layers; AE does nothing",
                    layers)
    return handle


# ----------------------------------------------------------------------------- the loss

def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def encode_latents(vae, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled SD latents z_0 of images in [-1, 1]: (B, 3, H, W) -> (B, 4, H/8, W/8), no gradient.

    AutoencoderKL: a sample of the posterior times ``scaling_factor``; AutoencoderTiny: its
    latents (already scaled, ``scaling_factor`` 1).
    """
    with torch.no_grad():
        out = vae.encode(pixel_values.to(vae.dtype))
        if hasattr(out, "latent_dist"):
            latents = out.latent_dist.sample(generator=generator)
        else:
            latents = out.latents
        return latents * vae.config.scaling_factor


def encode_text(sd: SD15, input_ids: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP text tokens of prompts with ComfyUI's token weights, without gradient.

    Every chunk of 77 tokens is encoded on its own and the chunks are concatenated along the
    tokens, as ComfyUI's CLIP Text Encode does for long prompts.

    Args:
        sd: from :func:`load_sd15`.
        input_ids: (B, C * 77) long, C chunks (``sesahand.train.prompts.tokenize_prompt``).
        token_weights: (B, C * 77) float or None (all 1). Where a weight is not 1 the token's
            encoding becomes ``(z - z_empty) * weight + z_empty``, z_empty the encoding of the
            empty prompt at that position of its chunk: what ComfyUI's CLIP Text Encode does
            with ``(word:1.3)`` (``comfy.sd1_clip.ClipTokenWeightEncoder``).

    Returns:
        (B, C * 77, 768) in the text encoder's dtype, on its device.

    Raises:
        ValueError: ``input_ids`` is not (B, C * 77), or the weights' shape differs.
    """
    from .prompts import MAX_TOKENS

    if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[1] % MAX_TOKENS:
        raise ValueError(f"input_ids must be (B, C * {MAX_TOKENS}) token ids, got {tuple(input_ids.shape)}")
    if token_weights is not None and token_weights.shape != input_ids.shape:
        raise ValueError(f"token_weights {tuple(token_weights.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    device = sd.text_encoder.device
    b, length = input_ids.shape
    with torch.no_grad():
        text = sd.text_encoder(input_ids.reshape(-1, MAX_TOKENS).to(device))[0]
        text = text.reshape(b, length, text.shape[-1])
        if token_weights is None or bool((token_weights == 1).all()):
            return text
        empty_ids = [sd.tokenizer.bos_token_id] + [sd.tokenizer.eos_token_id] * (MAX_TOKENS - 1)
        empty = sd.text_encoder(torch.tensor([empty_ids], device=device))[0].repeat(1, length // MAX_TOKENS, 1)
        weights = token_weights.to(device=device, dtype=text.dtype)[..., None]
        return (text - empty) * weights + empty


def training_loss(sd: SD15, controlnet: FusedControlNet, batch: dict, hand_attention: HandAttention | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise-prediction loss of one batch (docs/method.md, "Backbone and loss").

    VAE-encodes the images (scaled latents), draws noise and timesteps uniformly in
    [0, num_train_timesteps), noises the latents with ``sd.noise_scheduler``, runs the
    ControlNet (SF as configured) and the frozen UNet with its residuals (AE on the hand
    tokens when ``hand_attention`` is given), and returns the MSE to the noise (or to the
    velocity for a ``"v_prediction"`` scheduler), in float32. The VAE and text encoder run
    without gradient, the UNet's weights are frozen: gradients reach only the ControlNet.

    Args:
        sd: from :func:`load_sd15`.
        controlnet: the trainable :class:`FusedControlNet`.
        batch: ``pixel_values`` (B, 3, H, W) float in [-1, 1]; ``conditioning`` (B, 3, H, W)
            float in [0, 1]; ``input_ids`` (B, C * 77) long; optional ``token_weights``
            (B, C * 77) float (:func:`encode_text`); ``hand_token_mask`` (B, C * 77) bool (used when
            ``hand_attention`` is given). H and W multiples of 8.
        hand_attention: from :func:`install_hand_attention` on ``sd.unet``, or None (no AE).
        generator: randomness of noise, timesteps and the VAE posterior sample (any device);
            None uses the global RNG.

    Returns:
        0-d float32 loss.

    Raises:
        ValueError: a batch entry is missing or has the wrong shape.
    """
    pixels, cond, ids = (batch.get(key) for key in ("pixel_values", "conditioning", "input_ids"))
    if pixels is None or cond is None or ids is None:
        raise ValueError(f"batch needs pixel_values, conditioning and input_ids; got {sorted(batch)}")
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-1] % 8 or pixels.shape[-2] % 8:
        raise ValueError(f"batch pixel_values must be (B, 3, H, W) with H, W multiples of 8, got "
                         f"{tuple(pixels.shape)}")
    if cond.shape != pixels.shape or ids.ndim != 2 or ids.shape[0] != pixels.shape[0]:
        raise ValueError(f"batch conditioning {tuple(cond.shape)} must match pixel_values "
                         f"{tuple(pixels.shape)} and input_ids {tuple(ids.shape)} be (B, C * 77)")
    device, dtype = sd.unet.device, sd.unet.dtype
    latents = encode_latents(sd.vae, pixels.to(device), generator).to(dtype)
    text = encode_text(sd, ids, batch.get("token_weights")).to(device=device, dtype=dtype)
    noise = _randn(latents.shape, latents, generator)
    scheduler = sd.noise_scheduler
    t_device = generator.device if generator is not None else device
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=t_device).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)

    control_dtype = next(controlnet.parameters()).dtype  # also through a DDP wrapper
    down, mid = controlnet(noisy.to(control_dtype), timesteps, text.to(control_dtype),
                           cond.to(device=device, dtype=control_dtype))
    if hand_attention is not None:
        mask = batch.get("hand_token_mask")
        if mask is None:
            raise ValueError("batch needs hand_token_mask (B, C * 77) bool when hand attention is on")
        hand_attention.set_token_mask(mask.to(device))
    prediction = sd.unet(noisy, timesteps, encoder_hidden_states=text,
                         down_block_additional_residuals=[r.to(dtype) for r in down],
                         mid_block_additional_residual=mid.to(dtype), return_dict=False)[0]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"noise scheduler prediction_type {kind!r} is not supported (epsilon or v_prediction)")
    return F.mse_loss(prediction.float(), target.float())
