"""SesaHand's hand attention (AE, eq. AE-1) inside ComfyUI models: which model family a MODEL
is, where the prompt's hand tokens sit in its text keys, and the patches that add the bias.

The math is ``sesahand.attention`` (token selection, :func:`biased_attention`,
:func:`joint_key_bias`); this module routes core's attention through it. ``nodes/attention.py``
is the UI.

Families (:func:`model_family`; the error for any other model names it):

* ``unet`` (SD1.x, SD2.x, SDXL, SDXL refiner): cross-attention, queries = image tokens, keys =
  the conditioning's text tokens (CLIP chunks of 77). An attn2 replace patch per chosen layer
  (:class:`HandAttentionPatch`). SDXL encodes the prompt with CLIP-L and CLIP-G and
  concatenates their outputs along the channels, so one token position serves both: they
  share CLIP's BPE vocabulary and chunking (checked per prompt, :func:`hand_tokens`); the
  pooled CLIP-G vector (``y``) is not attention and is not biased. The refiner has CLIP-G
  only.
* ``flux`` (Flux.1 dev/schnell, Flux inpaint/Kontext): joint attention over
  ``[text (T5 tokens), image (+ reference latents)]`` in every double- and single-stream
  block; keys = T5 positions (CLIP-L gives only the pooled vector).
* ``sd3`` (SD3, SD3.5): joint attention over ``[registers, text, image]``, text = the CLIP-L/G
  chunks (77 each, L and G concatenated along the channels) followed by the T5 tokens (each
  part only when that encoder is loaded); SD3.5's extra image self-attention
  (``x_block_self_attn``) has no text and is left alone.

For the DiT families the bias is added through ComfyUI's attention override
(``transformer_options["optimized_attention_override"]``), installed per model call by an
``apply_model`` wrapper (:class:`JointHandAttention`) that knows the text and image lengths of
that call: ``B[q, k] = alpha`` for image queries ``q`` and hand-token keys ``k``; text queries
and all other keys get 0. DiT models have no encoder/decoder split: ``layers`` must be
``all`` (every joint-attention layer).

Everywhere: the positive branch only (``cond_or_uncond == 0``), inside the sigma range; the
negative branch and alpha = 0 run the model's own attention unchanged.
"""

from __future__ import annotations

import logging
import math
import re

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
import torch.nn.functional as F
from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..sesahand.attention import (HandTokens, biased_attention, find_hand_tokens,
                                  hand_query_weights, join_hand_tokens, joint_key_bias,
                                  parse_terms)

logger = logging.getLogger(__name__)

#: ``layers`` choices: the decoder's (output blocks') cross-attention layers, or every one.
LAYERS = ("decoder", "all")
#: Families the bias supports, with the models they cover (for messages and docs).
FAMILIES = {
    "unet": "SD1.x, SD2.x, SDXL and the SDXL refiner",
    "flux": "Flux.1 (dev, schnell, inpaint, Kontext)",
    "sd3": "SD3 and SD3.5",
}
#: Text encoders whose tokens are CLIP BPE in 77-token chunks, in order of preference.
CLIP_NAMES = ("l", "g", "h")
#: Key of the pack's wrapper and callback on a ModelPatcher.
PATCH_KEY = "sesahand_hand_attention"

_UNET_TRANSFORMER = re.compile(
    r"(?:(?P<block>input_blocks|output_blocks)\.(?P<number>\d+)\.\d+"
    r"|middle_block\.\d+)\.transformer_blocks\.(?P<index>\d+)")


def family_name(model) -> str:
    """The model's ComfyUI configuration name (``SD15``, ``SDXL``, ``Flux``, ``WAN21_T2V`` ...)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else type(model).__name__


def model_family(model) -> str:
    """The AE family of a MODEL: ``unet``, ``flux`` or ``sd3`` (see the module docstring).

    Raises:
        ValueError: any other model, naming its ComfyUI configuration and the families there are.
    """
    diffusion = model.get_model_object("diffusion_model")
    if isinstance(diffusion, UNetModel):
        return "unet"
    if isinstance(diffusion, Flux):
        return "flux"
    if isinstance(diffusion, MMDiT):
        return "sd3"
    supported = "; ".join(FAMILIES.values())
    raise ValueError(f"hand attention does not support {family_name(model)} models "
                     f"({type(diffusion).__name__}): it works on {supported}")


def cross_attention_keys(model, layers: str) -> list[tuple[str, int, int]]:
    """The attn2 patch keys ``(block, number, transformer index)`` of ``model``'s UNet, read
    from its modules (SD1.5: ("input", 1, 0) ... ("middle", 0, 0) ... ("output", 11, 0); SDXL
    up to transformer index 9).

    Raises:
        ValueError: no UNet cross-attention layers (naming the model), or none in the decoder
            with ``layers="decoder"`` (naming ``layers``).
    """
    unet = model.get_model_object("diffusion_model")
    keys = []
    for name, module in unet.named_modules():
        match = _UNET_TRANSFORMER.fullmatch(name)
        if match is None or getattr(module, "attn2", None) is None:
            continue
        if match["block"] is None:
            keys.append(("middle", 0, int(match["index"])))
        else:
            block = "input" if match["block"] == "input_blocks" else "output"
            keys.append((block, int(match["number"]), int(match["index"])))
    if not keys:
        raise ValueError(f"{family_name(model)} model has no UNet cross-attention layers: hand "
                         f"attention works on {'; '.join(FAMILIES.values())}")
    if layers == "decoder":
        keys = [key for key in keys if key[0] == "output"]
        if not keys:
            raise ValueError("model has no cross-attention layers in its decoder: set layers to "
                             "'all'")
    return keys


def _clip_layout(chunks) -> list:
    """Where the words of a CLIP tokenisation sit (embedding vectors by position only)."""
    return [(c, i, int(t) if isinstance(t, int) else "vector", w)
            for c, chunk in enumerate(chunks) for i, (t, _, w) in enumerate(chunk) if w != 0]


def _clip_hand_tokens(clip, tokens: dict, terms, preset: str) -> HandTokens:
    names = [name for name in CLIP_NAMES if name in tokens]
    vocab = getattr(getattr(clip.tokenizer, f"clip_{names[0]}", None), "inv_vocab", None) \
        if names else None
    if vocab is None:
        raise ValueError(f"clip has no CLIP BPE tokenizer (its tokens: {sorted(tokens)}): connect "
                         "the CLIP of the same checkpoint as the model")
    first = tokens[names[0]]
    for other in names[1:]:  # SDXL: CLIP-L and CLIP-G must give the same positions
        if len(tokens[other]) != len(first) or _clip_layout(tokens[other]) != _clip_layout(first):
            raise ValueError(f"CLIP-{names[0].upper()} and CLIP-{other.upper()} tokenized the "
                             "prompt to different positions (an embedding missing for one of "
                             "them?): hand attention needs one position per token for both")
    return find_hand_tokens(first, vocab, terms, preset=preset)


def _t5_hand_tokens(clip, tokens: dict, terms, preset: str, family: str) -> HandTokens:
    vocab = getattr(getattr(clip.tokenizer, "t5xxl", None), "inv_vocab", None)
    if "t5xxl" not in tokens or vocab is None:
        raise ValueError(f"clip has no T5 tokenizer (its tokens: {sorted(tokens)}): a {family} "
                         "model needs the CLIP loaded for it (DualCLIPLoader / TripleCLIPLoader "
                         f"type {family}, or the checkpoint's own)")
    return find_hand_tokens(tokens["t5xxl"], vocab, terms, preset=preset, style="sentencepiece")


def hand_tokens(clip, prompt: str, hand_terms: str, family: str = "unet",
                preset: str = "default") -> HandTokens:
    """Tokenize ``prompt`` with ``clip`` (as CLIP Text Encode does) and select its hand tokens,
    in the key layout of ``family``'s conditioning (see the module docstring).

    Raises:
        ValueError: a CLIP without the tokenizer the family needs (naming ``clip``), CLIP-L and
            CLIP-G disagreeing, or an unknown ``preset``.
    """
    tokens = clip.tokenize(prompt, return_word_ids=True)
    terms = parse_terms(hand_terms)
    if family == "unet":
        found = _clip_hand_tokens(clip, tokens, terms, preset)
    elif family == "flux":
        found = _t5_hand_tokens(clip, tokens, terms, preset, family)
    else:  # sd3: [CLIP-L/G chunks][T5 tokens], each when that encoder is loaded
        encoders = getattr(clip, "cond_stage_model", None)
        loaded = {name: encoders is None or getattr(encoders, name, None) is not None
                  for name in ("clip_l", "clip_g", "t5xxl")}
        parts = []
        if loaded["clip_l"] or loaded["clip_g"]:
            parts.append(_clip_hand_tokens(clip, tokens, terms, preset))
        if loaded["t5xxl"]:
            parts.append(_t5_hand_tokens(clip, tokens, terms, preset, family))
        found = join_hand_tokens(parts)
    for term in found.unmatched_terms:
        logger.warning("SesaHand hand attention: hand_terms entry %r is not in prompt; "
                       "it is ignored", term)
    if found.positions:
        logger.info("SesaHand hand attention: bias on %d tokens of %s", len(found.positions),
                    ", ".join(found.words))
    else:
        logger.warning("SesaHand hand attention: prompt has no hand words (hand, fingers, palm, "
                       "gerunds such as holding ...), so the bias is skipped; add the words to "
                       "bias to hand_terms")
    return found


class _Bias:
    """What every patch shares: the token selection, alpha, sigma range, hand mask, caches,
    and warnings given once per patch."""

    def __init__(self, tokens: HandTokens, alpha: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None):
        self.tokens = tokens
        self.alpha = alpha
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.mask = mask
        self._cache: dict = {}
        self._warned: set = set()

    def warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("SesaHand hand attention: " + message, *args)

    def positive_chunks(self, options) -> list[int]:
        """Indices of the positive chunks of the batch, [] (with a warning) when the caller
        does not say which chunk is which, or when the bias is off at this step."""
        if self.alpha == 0:
            return []
        sigmas = options.get("sigmas")
        if sigmas is not None and not self.sigma_end <= float(sigmas.max()) <= self.sigma_start:
            return []
        if "cond_or_uncond" not in options:
            self.warn_once("cond_or_uncond", "the model was called without cond_or_uncond (a "
                           "node or sampler that calls the model directly), so the positive "
                           "prompt cannot be told from the negative one: the bias is skipped in "
                           "these calls")
            return []
        chunks = options["cond_or_uncond"]
        positive = [i for i, c in enumerate(chunks) if c == 0]
        uuids = options.get("uuids")
        if uuids is not None and len({uuids[i] for i in positive}) > 1:
            self.warn_once("several", "the positive batch holds %d different conditionings "
                           "(regional or combined conditioning): every one gets the bias of "
                           "prompt's hand tokens, which fits only the ones encoded from prompt",
                           len({uuids[i] for i in positive}))
        return positive

    def query_weight(self, height: int, width: int, per_chunk: int, chunks: int, device):
        """``(1 or chunks * per_chunk, height * width)`` hand-mask weights, or None."""
        if self.mask is None:
            return None
        key = ("weights", height, width, device)
        if key not in self._cache:
            self._cache[key] = hand_query_weights(self.mask, height, width).to(device)
        weight = self._cache[key]
        if weight.shape[0] == 1:
            return weight
        if weight.shape[0] != per_chunk:
            raise ValueError(f"mask has {weight.shape[0]} masks for a batch of {per_chunk} "
                             "latents: connect one mask, or one per latent image")
        return weight.repeat(chunks, 1)


def _spans(batch: int, chunks: int) -> list[slice]:
    per_chunk = batch // chunks
    return [slice(i * per_chunk, (i + 1) * per_chunk) for i in range(chunks)]


def _take(t: torch.Tensor, chosen: list[slice]) -> torch.Tensor:
    return t[chosen[0]] if len(chosen) == 1 else torch.cat([t[s] for s in chosen])


def _scatter(batch_shape, parts: list[tuple[list[slice], torch.Tensor]]) -> torch.Tensor:
    """One tensor of ``batch_shape`` from row groups computed apart."""
    first = parts[0][1]
    out = first.new_empty(batch_shape)
    for spans, values in parts:
        at = 0
        for s in spans:
            n = s.stop - s.start
            out[s] = values[at:at + n]
            at += n
    return out


class HandAttentionPatch(_Bias):
    """attn2 replace patch adding eq. AE-1's bias on the positive branch (``unet`` family).

    Called by core's transformer block as ``patch(q, k, v, extra_options)`` with projected
    ``q (B, Nq, heads*d)``, ``k, v (B, Nk, heads*d)``, where the batch is
    ``len(extra_options["cond_or_uncond"])`` chunks of equal size; returns the attention output
    ``(B, Nq, heads*d)`` before the output projection.

    Rows of positive chunks with the step's sigma in ``[sigma_end, sigma_start]`` get
    ``biased_attention``; all other rows the layer's own attention: ``previous`` (a replace
    patch that was on this key before, e.g. IPAdapter's) or core's ``optimized_attention``.
    With a previous patch the positive rows get ``previous + biased - plain``: exact for patches
    that add terms to the text attention (IPAdapter, InstantID); the previous patch always sees
    the whole batch.
    """

    def __init__(self, tokens: HandTokens, alpha: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None, previous=None):
        super().__init__(tokens, alpha, sigma_start, sigma_end, mask)
        self.previous = previous

    def _plain(self, q, k, v, extra_options):
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options)

    def _key_bias(self, num_keys: int, device, dtype) -> torch.Tensor:
        key = ("bias", num_keys, device, dtype)
        if key not in self._cache:
            self._cache[key] = self.tokens.key_bias(self.alpha, num_keys, device=device,
                                                    dtype=dtype)
        return self._cache[key]

    def _query_weight(self, extra_options, num_queries: int, per_chunk: int, chunks: int, device):
        if self.mask is None:
            return None
        _, _, height, width = extra_options["activations_shape"]
        if height * width != num_queries:
            raise ValueError(f"attention queries ({num_queries}) are not the {height}x{width} "
                             "layer grid; disconnect mask for this model")
        return self.query_weight(height, width, per_chunk, chunks, device)

    def __call__(self, q, k, v, extra_options):
        positive = self.positive_chunks(extra_options)
        if not positive:
            return self.previous(q, k, v, extra_options) if self.previous else \
                self._plain(q, k, v, extra_options)

        chunks = extra_options["cond_or_uncond"]
        spans = _spans(q.shape[0], len(chunks))
        per_chunk = q.shape[0] // len(chunks)
        biased_spans = [spans[i] for i in positive]
        plain_spans = [spans[i] for i in range(len(chunks)) if i not in positive]

        qp, kp, vp = (_take(t, biased_spans) for t in (q, k, v))
        precision = comfy_attention.get_attn_precision(extra_options.get("attn_precision"), q.dtype)
        compute = q.dtype if precision is None else precision
        biased = biased_attention(
            qp.to(compute), kp.to(compute), vp.to(compute), extra_options["n_heads"],
            self._key_bias(k.shape[1], q.device, compute),
            self._query_weight(extra_options, q.shape[1], per_chunk, len(positive), q.device),
        ).to(q.dtype)

        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
            delta = (biased - self._plain(qp, kp, vp, extra_options)).to(out.dtype)
            for j, s in enumerate(biased_spans):
                out[s] += delta[j * per_chunk:(j + 1) * per_chunk]
            return out
        if not plain_spans:
            return biased
        plain = self._plain(*(_take(t, plain_spans) for t in (q, k, v)), extra_options)
        return _scatter((q.shape[0],) + biased.shape[1:],
                        [(biased_spans, biased), (plain_spans, plain)])


class JointHandAttention(_Bias):
    """``apply_model`` wrapper for the DiT families (``flux``, ``sd3``): per model call, an
    attention override that adds eq. AE-1's bias to the logits of the image queries on the
    hand-token text keys of the joint attention.

    The wrapper reads the call's text length (``c_crossattn``, plus the model's register
    tokens) and image token count (the latent's patch grid), checks the text against the
    prompt, and installs :meth:`attention` as ``transformer_options["optimized_attention_override"]``
    for that call, wrapping an override that was there. Calls of an attention function whose
    keys are not ``registers + text + image (+ more)`` (SD3.5's image self-attention) and the
    negative rows run the layer's own attention function unchanged.
    """

    def __init__(self, tokens: HandTokens, alpha: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None, family: str):
        super().__init__(tokens, alpha, sigma_start, sigma_end, mask)
        self.family = family

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        positive = self.positive_chunks(transformer_options)
        if not positive or c_crossattn is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        diffusion = executor.class_obj.diffusion_model
        text = c_crossattn.shape[1]
        if text != self.tokens.num_keys:
            raise ValueError(f"prompt tokenizes to {self.tokens.num_keys} text tokens but the "
                             f"positive conditioning has {text}: prompt must be the text encoded "
                             "into positive, with the same CLIP")
        registers = getattr(diffusion, "register_length", 0) if self.family == "sd3" else 0
        patch = diffusion.patch_size
        grid = (math.ceil(x.shape[-2] / patch), math.ceil(x.shape[-1] / patch))
        options = dict(transformer_options)
        options["optimized_attention_override"] = _JointCall(
            self, positive, len(transformer_options["cond_or_uncond"]), registers, text, grid,
            transformer_options.get("optimized_attention_override"))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def joint_bias(self, num_tokens: int, registers: int, grid: tuple[int, int], rows: int,
                   chunks: int, device, dtype) -> torch.Tensor:
        """The additive mask ``(1 or rows, 1, N, N)`` of one call layout (cached)."""
        key = ("joint", num_tokens, registers, grid, rows, device, dtype)
        if key not in self._cache:
            weight = self.query_weight(grid[0], grid[1], rows // chunks, chunks, device)
            self._cache[key] = joint_key_bias(
                self.tokens.key_bias(self.alpha, device=device, dtype=dtype), num_tokens,
                text_start=registers, image_start=registers + self.tokens.num_keys,
                image_tokens=grid[0] * grid[1], query_weight=weight).to(dtype)
        return self._cache[key]


class _JointCall:
    """The attention override of one model call (see :class:`JointHandAttention`).

    Called by core's ``wrap_attn`` as ``override(func, q, k, v, heads, ..., mask=...,
    skip_reshape=..., transformer_options=...)``: ``q, k, v`` are ``(B, heads, N, d)`` with
    ``skip_reshape`` (Flux) and ``(B, N, heads*d)`` without (SD3); returns ``func``'s layout.
    """

    def __init__(self, owner: JointHandAttention, positive: list[int], chunks: int,
                 registers: int, text: int, grid: tuple[int, int], previous):
        self.owner = owner
        self.positive = positive
        self.chunks = chunks
        self.registers = registers
        self.text = text
        self.grid = grid
        self.previous = previous

    def _plain(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, q, k, v, *args, **kwargs):
        skip_reshape = kwargs.get("skip_reshape", False)
        tokens = k.shape[2] if skip_reshape else k.shape[1]
        joint = self.registers + self.text + self.grid[0] * self.grid[1]
        if tokens < joint or q.shape != k.shape:  # not the joint attention of this call
            return self._plain(func, q, k, v, *args, **kwargs)
        heads = args[0] if args else kwargs["heads"]
        batch = q.shape[0]
        spans = _spans(batch, self.chunks)
        biased_spans = [spans[i] for i in self.positive]
        plain_spans = [s for i, s in enumerate(spans) if i not in self.positive]

        qp, kp, vp = (_take(t, biased_spans) for t in (q, k, v))
        if not skip_reshape:
            qp, kp, vp = (t.reshape(t.shape[0], tokens, heads, -1).transpose(1, 2)
                          for t in (qp, kp, vp))
        bias = self.owner.joint_bias(tokens, self.registers, self.grid, qp.shape[0],
                                     len(self.positive), q.device, qp.dtype)
        mask = kwargs.get("mask")
        if mask is not None:  # the model's own mask (Flux attention masks) comes first
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=qp.dtype, device=mask.device).masked_fill(
                    ~mask, -torch.inf)
            mask = mask.reshape((-1, 1) + mask.shape[-2:]) if mask.ndim != 4 else mask
            bias = mask.to(qp.dtype) + bias
        biased = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=bias)
        if not kwargs.get("skip_output_reshape", False):
            biased = biased.transpose(1, 2).reshape(biased.shape[0], tokens, -1)
        if not plain_spans:
            return biased
        plain = self._plain(func, *(_take(t, plain_spans) for t in (q, k, v)), *args, **kwargs)
        return _scatter((batch,) + biased.shape[1:],
                        [(biased_spans, biased), (plain_spans, plain.to(biased.dtype))])


class _OverwriteCheck:
    """ON_PRE_RUN callback: warns when a node applied after hand attention replaced its attn2
    patches (the bias is then gone from those layers)."""

    def __init__(self, keys: list[tuple[str, int, int]]):
        self.keys = keys

    def __call__(self, patcher) -> None:
        attn2 = patcher.model_options.get("transformer_options", {}).get(
            "patches_replace", {}).get("attn2", {})
        lost = [key for key in self.keys if not isinstance(attn2.get(key), HandAttentionPatch)]
        if lost:
            logger.warning(
                "SesaHand hand attention: a node applied after SesaHand Hand Attention replaced "
                "its patch on %d of %d cross-attention layers (%s), which lose the bias: apply "
                "SesaHand Hand Attention last (after IPAdapter and other attention nodes)",
                len(lost), len(self.keys), ", ".join(map(str, lost[:4])))


def patch_model(model, tokens: HandTokens, alpha: float, layers: str, start_percent: float,
                end_percent: float, mask: torch.Tensor | None, family: str | None = None):
    """A clone of ``model`` with the hand-attention bias; ``model`` itself is not changed.

    ``unet``: :class:`HandAttentionPatch` on the chosen cross-attention layers; a replace patch
    already on a layer (for the same key, or for its block) is wrapped, except an earlier
    hand-attention patch, which this one replaces. ``flux`` / ``sd3``: the
    :class:`JointHandAttention` wrapper (replacing an earlier one) on every joint attention.

    Raises:
        ValueError: an unsupported model (naming it), ``layers="decoder"`` on a DiT model or
            on a UNet without decoder cross-attention.
    """
    family = family or model_family(model)
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    sigma_start = sampling.percent_to_sigma(start_percent)
    sigma_end = sampling.percent_to_sigma(end_percent)
    if family != "unet":
        if layers != "all":
            raise ValueError(f"{family_name(model)} is a DiT model: it has no decoder layers; "
                             "set layers to 'all' (every joint-attention layer)")
        wrapper_type = comfy.patcher_extension.WrappersMP.APPLY_MODEL
        patched.remove_wrappers_with_key(wrapper_type, PATCH_KEY)
        patched.add_wrapper_with_key(wrapper_type, PATCH_KEY, JointHandAttention(
            tokens, alpha, sigma_start, sigma_end, mask, family))
        return patched
    keys = cross_attention_keys(model, layers)
    replace = patched.model_options["transformer_options"].get("patches_replace", {})
    existing = replace.get("attn2", {})
    for key in keys:
        previous = existing.get(key, existing.get(key[:2]))
        if isinstance(previous, HandAttentionPatch):
            previous = previous.previous
        patch = HandAttentionPatch(tokens, alpha, sigma_start, sigma_end, mask, previous)
        patched.set_model_attn2_replace(patch, *key)
    pre_run = comfy.patcher_extension.CallbacksMP.ON_PRE_RUN
    patched.remove_callbacks_with_key(pre_run, PATCH_KEY)
    patched.add_callback_with_key(pre_run, PATCH_KEY, _OverwriteCheck(keys))
    return patched
