"""Attention room nodes: hand structure attention enhancement (AE, eq. AE-1).

The bias goes in as ComfyUI attn2 replace patches on a clone of the model, one per chosen
cross-attention layer (keys enumerated from the loaded UNet). A patch biases the positive
branch only (``cond_or_uncond == 0``) inside the sigma range; every other call runs the
layer's own attention unchanged (the replace patch it wraps, or core's attention function), so
the negative branch and alpha = 0 reproduce the unpatched model exactly.

The prompt's hand tokens come from the prompt text (core CONDITIONING carries no text):
the nodes tokenize ``prompt`` with ``clip`` the way CLIP Text Encode does.
"""

from __future__ import annotations

import logging
import re

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler), not this package
import torch
from comfy_api.latest import io

from ..sesahand.attention import (ALPHA_RANGE, DEFAULT_ALPHA, HandTokens, biased_attention,
                                  check_alpha, find_hand_tokens, hand_query_weights, parse_terms)

logger = logging.getLogger(__name__)

#: ``layers`` choices: the decoder's (output blocks') cross-attention layers, or every one.
LAYERS = ("decoder", "all")
#: Text encoders whose tokens are CLIP BPE in 77-token chunks, in order of preference.
CLIP_NAMES = ("l", "g", "h")

_UNET_TRANSFORMER = re.compile(
    r"(?:(?P<block>input_blocks|output_blocks)\.(?P<number>\d+)\.\d+"
    r"|middle_block\.\d+)\.transformer_blocks\.(?P<index>\d+)")


def cross_attention_keys(model, layers: str) -> list[tuple[str, int, int]]:
    """The attn2 patch keys ``(block, number, transformer index)`` of ``model``'s UNet, read
    from its modules (SD1.5: ("input", 1, 0) ... ("middle", 0, 0) ... ("output", 11, 0)).

    Raises:
        ValueError: no UNet cross-attention layers (naming ``model``), or none in the decoder
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
        raise ValueError("model has no UNet cross-attention layers: hand attention works on UNet "
                         "models (SD1.x, SD2.x, SDXL); connect one to model")
    if layers == "decoder":
        keys = [key for key in keys if key[0] == "output"]
        if not keys:
            raise ValueError("model has no cross-attention layers in its decoder: set layers to "
                             "'all'")
    return keys


def hand_tokens(clip, prompt: str, hand_terms: str) -> HandTokens:
    """Tokenize ``prompt`` with ``clip`` (as CLIP Text Encode does) and select its hand tokens.

    Raises:
        ValueError: a text encoder without CLIP BPE tokens (naming ``clip``).
    """
    tokens = clip.tokenize(prompt, return_word_ids=True)
    name = next((n for n in CLIP_NAMES if n in tokens), None)
    tokenizer = getattr(clip.tokenizer, f"clip_{name}", None)
    vocab = getattr(tokenizer, "inv_vocab", None)
    if vocab is None:
        raise ValueError(f"clip has no CLIP BPE tokenizer (its tokens: {sorted(tokens)}): hand "
                         "attention needs the CLIP of an SD1.x, SD2.x or SDXL checkpoint")
    found = find_hand_tokens(tokens[name], vocab, parse_terms(hand_terms))
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


class HandAttentionPatch:
    """attn2 replace patch adding eq. AE-1's bias on the positive branch.

    Called by core's transformer block as ``patch(q, k, v, extra_options)`` with projected
    ``q (B, Nq, heads*d)``, ``k, v (B, Nk, heads*d)``, where the batch is
    ``len(extra_options["cond_or_uncond"])`` chunks of equal size; returns the attention output
    ``(B, Nq, heads*d)`` before the output projection.

    Rows of positive chunks (0 in ``cond_or_uncond``) with the step's sigma in
    ``[sigma_end, sigma_start]`` get ``biased_attention``; all other rows the layer's own
    attention: ``previous`` (a replace patch that was on this key before, e.g. IPAdapter's) or
    core's ``optimized_attention``. With a previous patch the positive rows get
    ``previous + biased - plain``: exact for patches that add terms to the text attention
    (IPAdapter, InstantID); the previous patch always sees the whole batch.
    """

    def __init__(self, tokens: HandTokens, alpha: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None, previous=None):
        self.tokens = tokens
        self.alpha = alpha
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.mask = mask
        self.previous = previous
        self._bias: dict = {}
        self._weights: dict = {}

    def _plain(self, q, k, v, extra_options):
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options)

    def _active(self, sigmas) -> bool:
        if self.alpha == 0:
            return False
        if sigmas is None:
            return True
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def _key_bias(self, num_keys: int, device, dtype) -> torch.Tensor:
        key = (num_keys, device, dtype)
        if key not in self._bias:
            self._bias[key] = self.tokens.key_bias(self.alpha, num_keys, device=device, dtype=dtype)
        return self._bias[key]

    def _query_weight(self, extra_options, num_queries: int, per_chunk: int, chunks: int, device):
        if self.mask is None:
            return None
        _, _, height, width = extra_options["activations_shape"]
        if height * width != num_queries:
            raise ValueError(f"attention queries ({num_queries}) are not the {height}x{width} "
                             "layer grid; disconnect mask for this model")
        key = (height, width, device)
        if key not in self._weights:
            self._weights[key] = hand_query_weights(self.mask, height, width).to(device)
        weight = self._weights[key]
        if weight.shape[0] == 1:
            return weight
        if weight.shape[0] != per_chunk:
            raise ValueError(f"mask has {weight.shape[0]} masks for a batch of {per_chunk} "
                             "latents: connect one mask, or one per latent image")
        return weight.repeat(chunks, 1)

    def __call__(self, q, k, v, extra_options):
        chunks = extra_options.get("cond_or_uncond", [])
        positive = [i for i, c in enumerate(chunks) if c == 0]
        if not positive or not self._active(extra_options.get("sigmas")):
            return self.previous(q, k, v, extra_options) if self.previous else \
                self._plain(q, k, v, extra_options)

        per_chunk = q.shape[0] // len(chunks)
        spans = [slice(i * per_chunk, (i + 1) * per_chunk) for i in range(len(chunks))]
        biased_spans = [spans[i] for i in positive]
        plain_spans = [spans[i] for i in range(len(chunks)) if i not in positive]

        def take(t, chosen):
            return t[chosen[0]] if len(chosen) == 1 else torch.cat([t[s] for s in chosen])

        qp, kp, vp = (take(t, biased_spans) for t in (q, k, v))
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
        plain = self._plain(*(take(t, plain_spans) for t in (q, k, v)), extra_options)
        out = biased.new_empty((q.shape[0],) + biased.shape[1:])
        for j, s in enumerate(biased_spans):
            out[s] = biased[j * per_chunk:(j + 1) * per_chunk]
        for j, s in enumerate(plain_spans):
            out[s] = plain[j * per_chunk:(j + 1) * per_chunk]
        return out


def patch_model(model, tokens: HandTokens, alpha: float, layers: str, start_percent: float,
                end_percent: float, mask: torch.Tensor | None):
    """A clone of ``model`` with :class:`HandAttentionPatch` on the chosen cross-attention
    layers; ``model`` itself is not changed. A replace patch already on a layer (for the same
    key, or for its block) is wrapped, except an earlier hand-attention patch, which this one
    replaces."""
    keys = cross_attention_keys(model, layers)
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    sigma_start = sampling.percent_to_sigma(start_percent)
    sigma_end = sampling.percent_to_sigma(end_percent)
    replace = patched.model_options["transformer_options"].get("patches_replace", {})
    existing = replace.get("attn2", {})
    for key in keys:
        previous = existing.get(key, existing.get(key[:2]))
        if isinstance(previous, HandAttentionPatch):
            previous = previous.previous
        patch = HandAttentionPatch(tokens, alpha, sigma_start, sigma_end, mask, previous)
        patched.set_model_attn2_replace(patch, *key)
    return patched


def _problem(alpha=None, start_percent=None, end_percent=None, prompt=None, mask=None):
    """The first problem with these inputs as a message naming the input, or None (inputs
    that are None are not checked: linked inputs are unknown before execution)."""
    if alpha is not None:
        try:
            check_alpha(alpha)
        except ValueError as err:
            return str(err)
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if value is not None and not 0.0 <= value <= 1.0:
            return f"{name} must be from 0 to 1 (a fraction of the sampling), got {value}"
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        return (f"start_percent ({start_percent}) is after end_percent ({end_percent}): the bias "
                "applies from start_percent to end_percent of the sampling")
    if prompt is not None and not prompt.strip():
        return ("prompt is empty: give the positive prompt text (the same text the positive "
                "CLIP Text Encode encodes, e.g. from one shared String node)")
    if mask is not None and float(mask.max()) <= 0:
        return "mask is empty (no hand pixels): connect the hand mask, or disconnect mask"
    return None


def _hand_inputs() -> list:
    """Inputs shared by both nodes."""
    return [
        io.Clip.Input("clip", tooltip="The CLIP that encoded the positive prompt (from Load "
                                      "Checkpoint); used to find the hand tokens' positions."),
        io.String.Input("prompt", multiline=True, default="",
                        tooltip="The positive prompt text, exactly as encoded into the positive "
                                "conditioning (wire one String node into both)."),
        io.String.Input("hand_terms", default="",
                        tooltip="Extra words or phrases to bias, comma-separated (e.g. the "
                                "caption's hand action: 'holding a donut'). Hand words (hand, "
                                "fingers, palm, fist ...) and gerunds are always included."),
        io.Float.Input("alpha", default=DEFAULT_ALPHA, min=ALPHA_RANGE[0], max=ALPHA_RANGE[1],
                       step=0.1, tooltip="Bias added to the attention logits of hand tokens "
                                         "(eq. AE-1). 2.0 is the paper's best; 0 turns it off."),
        io.Combo.Input("layers", options=list(LAYERS), default="decoder",
                       tooltip="decoder: the UNet decoder's cross-attention layers (the paper's "
                               "choice); all: every cross-attention layer."),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling at which the bias starts "
                               "(0 = first step)."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling at which the bias ends (1 = last step)."),
        io.Mask.Input("mask", optional=True,
                      tooltip="Optional hand mask (e.g. SesaHand Render Conditions' mask): the "
                              "bias then applies only to image positions on the hands (beyond "
                              "the paper). Leave unconnected for the paper's method."),
    ]


def _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent, end_percent, mask):
    """``(patched clone or model, hand tokens)``; the model unchanged when nothing is biased."""
    problem = _problem(alpha, start_percent, end_percent, prompt, mask)
    if problem:
        raise ValueError(problem)
    tokens = hand_tokens(clip, prompt, hand_terms)
    if not tokens.positions:
        return model, tokens
    patched = patch_model(model, tokens, float(alpha), layers, start_percent, end_percent, mask)
    return patched, tokens


class SesaHandHandAttention(io.ComfyNode):
    """Patch a model with SesaHand's hand attention bias (for SamplerCustomAdvanced and others)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandAttention",
            display_name="SesaHand Hand Attention",
            category="SesaHand/attention",
            description="SesaHand's hand structure attention enhancement: adds alpha to the "
                        "cross-attention logits of the prompt's hand tokens (hand words, "
                        "gerunds, hand_terms), on the positive prompt only. Sample the patched "
                        "model with the positive conditioning of the same prompt.",
            inputs=[io.Model.Input("model", tooltip="The model to patch (it is not changed).")]
                   + _hand_inputs(),
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="A patched copy of the model.")],
        )

    @classmethod
    def validate_inputs(cls, alpha=None, start_percent=None, end_percent=None, prompt=None):
        return _problem(alpha, start_percent, end_percent, prompt) or True

    @classmethod
    def execute(cls, model, clip, prompt, hand_terms, alpha, layers, start_percent, end_percent,
                mask=None) -> io.NodeOutput:
        patched, _ = _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent,
                              end_percent, mask)
        return io.NodeOutput(patched)


class SesaHandHandAttentionSampler(io.ComfyNode):
    """Core KSampler with SesaHand's hand attention bias on a patched copy of the model."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandAttentionSampler",
            display_name="SesaHand Hand-Attention Sampler",
            category="SesaHand/attention",
            description="KSampler with SesaHand's hand structure attention enhancement: the "
                        "cross-attention logits of the prompt's hand tokens get +alpha on the "
                        "positive prompt. prompt must be the text of the positive conditioning.",
            inputs=[
                io.Model.Input("model",
                               tooltip="The model used for denoising (it is not changed)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True, tooltip="The random seed of the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="Number of denoising steps."),
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="The sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The noise schedule."),
                io.Conditioning.Input("positive", tooltip="The positive conditioning: prompt "
                                                          "encoded by CLIP Text Encode."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning (never "
                                                          "biased)."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising (below 1 keeps the input's "
                                       "structure)."),
            ] + _hand_inputs(),
            outputs=[io.Latent.Output("latent", display_name="LATENT",
                                      tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, alpha=None, start_percent=None, end_percent=None, prompt=None):
        return _problem(alpha, start_percent, end_percent, prompt) or True

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, denoise, clip, prompt, hand_terms, alpha, layers, start_percent,
                end_percent, mask=None) -> io.NodeOutput:
        patched, tokens = _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent,
                                   end_percent, mask)
        for cond, _ in positive:
            if cond.shape[1] != tokens.num_keys:
                raise ValueError(
                    f"prompt tokenizes to {tokens.num_keys} tokens but the positive conditioning "
                    f"has {cond.shape[1]}: prompt must be the text encoded into positive")
        return io.NodeOutput(*comfy_nodes.common_ksampler(
            patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise))
