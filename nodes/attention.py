"""Attention room nodes: hand structure attention enhancement (AE, eq. AE-1), the UI.

The patches, model families and token layouts are in ``nodes/attention_patch.py``; the math in
``sesahand.attention``. The prompt's hand tokens come from the prompt text (core CONDITIONING
carries no text): the nodes tokenize ``prompt`` with ``clip`` the way CLIP Text Encode does.

Node order: apply SesaHand Hand Attention after every other node that patches the model's
attention (IPAdapter, attention couple, PAG ...): on SD1.x/SDXL their attn2 patches are wrapped
when they come first, but a node that comes later and sets its own patch on the same layers
replaces the bias (a warning names the layers at sampling time).
"""

from __future__ import annotations

import logging

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler), not this package
from comfy_api.latest import io

from ..sesahand.attention import ALPHA_RANGE, DEFAULT_ALPHA, HAND_WORD_PRESETS, check_alpha
from .attention_patch import LAYERS, hand_tokens, model_family, patch_model

logger = logging.getLogger(__name__)


def _problem(alpha=None, start_percent=None, end_percent=None, prompt=None, mask=None,
             hand_words=None):
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
    if hand_words is not None and hand_words not in HAND_WORD_PRESETS:
        return f"hand_words must be one of {', '.join(HAND_WORD_PRESETS)}, got {hand_words!r}"
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
                               "choice); all: every cross-attention layer. Flux and SD3 have no "
                               "decoder: use all (every joint-attention layer)."),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling at which the bias starts "
                               "(0 = first step)."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling at which the bias ends (1 = last step)."),
        io.Combo.Input("hand_words", options=list(HAND_WORD_PRESETS), default="default",
                       optional=True,  # optional: API prompts saved before it keep validating
                       tooltip="default: hand nouns, the hand's parts and grip words (thumb, "
                               "palm, fist, grip ...) plus gerunds; paper: exactly the paper's "
                               "hand, hands, finger, fingers, gesture plus gerunds."),
        io.Mask.Input("mask", optional=True,
                      tooltip="Optional hand mask (e.g. SesaHand Render Conditions' mask): the "
                              "bias then applies only to image positions on the hands (beyond "
                              "the paper). Leave unconnected for the paper's method."),
    ]


def _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent, end_percent, mask,
             hand_words="default"):
    """``(patched clone or model, hand tokens)``; the model unchanged when nothing is biased."""
    problem = _problem(alpha, start_percent, end_percent, prompt, mask, hand_words)
    if problem:
        raise ValueError(problem)
    family = model_family(model)
    tokens = hand_tokens(clip, prompt, hand_terms, family, hand_words)
    if not tokens.positions:
        return model, tokens
    patched = patch_model(model, tokens, float(alpha), layers, start_percent, end_percent, mask,
                          family)
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
                        "attention logits of image positions on the prompt's hand tokens (hand "
                        "words, gerunds, hand_terms), on the positive prompt only; SD1.x, SD2.x, "
                        "SDXL, Flux, SD3. Sample the patched model with the positive "
                        "conditioning of the same prompt. Apply it after other attention "
                        "patches (IPAdapter ...).",
            inputs=[io.Model.Input("model", tooltip="The model to patch (it is not changed).")]
                   + _hand_inputs(),
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="A patched copy of the model.")],
        )

    @classmethod
    def validate_inputs(cls, alpha=None, start_percent=None, end_percent=None, prompt=None,
                        hand_words=None):
        return _problem(alpha, start_percent, end_percent, prompt, hand_words=hand_words) or True

    @classmethod
    def execute(cls, model, clip, prompt, hand_terms, alpha, layers, start_percent, end_percent,
                hand_words="default", mask=None) -> io.NodeOutput:
        patched, _ = _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent,
                              end_percent, mask, hand_words)
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
    def validate_inputs(cls, alpha=None, start_percent=None, end_percent=None, prompt=None,
                        hand_words=None):
        return _problem(alpha, start_percent, end_percent, prompt, hand_words=hand_words) or True

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, denoise, clip, prompt, hand_terms, alpha, layers, start_percent,
                end_percent, hand_words="default", mask=None) -> io.NodeOutput:
        patched, tokens = _patched(model, clip, prompt, hand_terms, alpha, layers, start_percent,
                                   end_percent, mask, hand_words)
        for cond, _ in positive:
            if cond.shape[1] != tokens.num_keys:
                raise ValueError(
                    f"prompt tokenizes to {tokens.num_keys} tokens but the positive conditioning "
                    f"has {cond.shape[1]}: prompt must be the text encoded into positive")
        if len(positive) > 1:
            logger.warning("SesaHand hand attention: positive holds %d conditionings (regional "
                           "or combined conditioning): every one gets the bias of prompt's hand "
                           "tokens, which fits only the ones encoded from prompt", len(positive))
        return io.NodeOutput(*comfy_nodes.common_ksampler(
            patched, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise))
