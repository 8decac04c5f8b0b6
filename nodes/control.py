"""Control room nodes: load an SD1.5 ControlNet with SesaHand settings, apply it with
hierarchical structural fusion (SF). The ControlNet object is in ``control_model``."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..sesahand.attention import DEFAULT_ALPHA
from ..sesahand.control import ATTENTION_LAYERS, FusionSettings
from .control_model import SesaHandControlNet, controlnet_names, controlnet_path, load_controlnet

#: Fusion override choices of Apply Hand Control.
FUSION_CHOICES = ("from file", "off", "tokens", "gate")
#: AE bias reported when a file gives none (the paper's best, docs/method.md).
#: AE layers reported when a file gives none (the Hand Attention nodes' default).
DEFAULT_LAYERS = "decoder"
#: Largest SF attention chunk the Apply node accepts (float32: 1 GiB per buffer).
MAX_CHUNK_ELEMENTS = 1 << 28


class SesaHandLoadControlNet(io.ComfyNode):
    """Load an SD1.5 ControlNet (original or diffusers layout) and its SesaHand settings."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandLoadControlNet",
            display_name="SesaHand Load ControlNet",
            category="SesaHand/control",
            description="Loads an SD1.5 ControlNet from the controlnet or sesahand model folders. "
                        "SesaHand weights carry their structural-fusion settings, AE bias and "
                        "layers and condition style in the file; other ControlNets load with "
                        "fusion off. Link alpha and layers into the Hand Attention node so it "
                        "runs as the weights were trained.",
            inputs=[
                io.Combo.Input("control_net_name", options=controlnet_names(),
                               tooltip="An SD1.5 ControlNet file: any file of models/controlnet, "
                                       "or a ControlNet .safetensors in models/sesahand."),
            ],
            outputs=[
                io.ControlNet.Output("control_net", display_name="control_net",
                                     tooltip="For SesaHand Apply Hand Control (core Apply "
                                             "ControlNet takes it too, fusion as in the file)."),
                io.Float.Output("alpha", display_name="alpha",
                                tooltip="Hand attention bias the weights were trained with "
                                        f"(sesahand.alpha); {DEFAULT_ALPHA} when the file does "
                                        "not say."),
                io.String.Output("render_style", display_name="render_style",
                                 tooltip="Condition image the weights expect (mesh, depth, normal, "
                                         "pose or mask output of Render Conditions); empty when "
                                         "the file does not say."),
                io.Combo.Output("layers", display_name="layers", options=list(ATTENTION_LAYERS),
                                tooltip="Cross-attention layers that had the hand attention bias in "
                                        "training (sesahand.attention_layers); link it to the Hand "
                                        f"Attention node's layers. {DEFAULT_LAYERS} when the file "
                                        "does not say."),
            ],
        )

    @classmethod
    def validate_inputs(cls, control_net_name=None):
        if control_net_name is not None and control_net_name not in controlnet_names():
            return (f"control_net_name {control_net_name!r} is not in the controlnet or sesahand "
                    "model folders; choose a file from the list")
        return True

    @classmethod
    def fingerprint_inputs(cls, control_net_name=None):
        # Reload when the file changes on disk under the same name (validate_inputs reports a
        # missing file).
        try:
            return os.path.getmtime(controlnet_path(control_net_name))
        except ValueError:
            return ""

    @classmethod
    def execute(cls, control_net_name: str) -> io.NodeOutput:
        control = load_controlnet(controlnet_path(control_net_name), control_net_name)
        metadata = control.metadata
        return io.NodeOutput(control, DEFAULT_ALPHA if metadata.alpha is None else metadata.alpha,
                             metadata.render_style or "", metadata.attention_layers or DEFAULT_LAYERS)


def _fusion(control: SesaHandControlNet, choice: str, weight: float) -> FusionSettings:
    """The SF settings of ``choice``; an override keeps the file's hierarchy."""
    if choice == "from file":
        return control.fusion
    if choice == "off":
        return FusionSettings(control.fusion.fusion, 0.0, control.fusion.hierarchy)
    return FusionSettings(choice, weight, control.fusion.hierarchy)


class SesaHandApplyHandControl(io.ComfyNode):
    """Attach a SesaHand ControlNet with structural fusion to positive and negative conditioning."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandApplyHandControl",
            display_name="SesaHand Apply Hand Control",
            category="SesaHand/control",
            description="Like core Apply ControlNet, plus SesaHand's hierarchical structural "
                        "fusion: the ControlNet's own self-attention maps refine its features so "
                        "hands and body stay consistent. Stacks with other ControlNets.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive prompt conditioning (SD1.5)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt conditioning (SD1.5)."),
                io.ControlNet.Input("control_net", tooltip="From SesaHand Load ControlNet."),
                io.Image.Input("image", tooltip="Condition image, e.g. a Render Conditions output, "
                                                "rendered at the latent's pixel size (other sizes "
                                                "are resized and centre-cropped, as core does)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Scale of the control residuals; 0 leaves the conditioning "
                                       "as it is."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control ends."),
                io.Combo.Input("fusion", options=list(FUSION_CHOICES), default="from file",
                               tooltip="Structural fusion. from file: the ControlNet file's "
                                       "settings (off for plain ControlNets). off: plain "
                                       "ControlNet. tokens / gate: that reading with "
                                       "fusion_weight (see the README)."),
                io.Float.Input("fusion_weight", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="With fusion tokens or gate: blend weight w, 1 = the "
                                       "paper's fusion, 0 = none."),
                io.Int.Input("attention_chunk", default=0, min=0, max=MAX_CHUNK_ELEMENTS,
                             step=1 << 18, optional=True,
                             tooltip="Structural fusion computes attention maps in chunks of this "
                                     "many logits. 0 = chosen for the device (CPU: 8M; GPU: by "
                                     "free memory). Changes speed and memory, never the image."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: where the control acts (1 full, 0 none), e.g. "
                                      "the hand mask of Render Conditions grown a little; "
                                      "resized like the image."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive",
                                       tooltip="Positive conditioning with the control."),
                io.Conditioning.Output("negative_out", display_name="negative",
                                       tooltip="Negative conditioning with the control."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, image: torch.Tensor, strength: float,
                start_percent: float, end_percent: float, fusion: str, fusion_weight: float,
                attention_chunk: int = 0, mask: torch.Tensor | None = None) -> io.NodeOutput:
        if not isinstance(control_net, SesaHandControlNet):
            raise ValueError(f"control_net: got a {type(control_net).__name__}; connect SesaHand Load "
                             "ControlNet (or use core Apply ControlNet for this one)")
        for name, conditioning in (("positive", positive), ("negative", negative)):
            for tokens, _ in conditioning:
                if tokens.shape[-1] != control_net.context_dim:
                    raise ValueError(
                        f"{name}: the prompt is encoded {tokens.shape[-1]} wide (an SDXL or other "
                        f"non-SD1.5 text encoder) but control_net is an SD1.5 ControlNet "
                        f"({control_net.context_dim} wide): load an SD1.5 checkpoint (Load "
                        "Checkpoint: ckpt_name) and encode the prompts with its CLIP")
        hint_channels = control_net.control_model.input_hint_block[0].in_channels
        if image.shape[-1] != hint_channels:
            raise ValueError(f"image has {image.shape[-1]} channels, the ControlNet takes "
                             f"{hint_channels}: connect an RGB image")
        if not isinstance(attention_chunk, int) or not 0 <= attention_chunk <= MAX_CHUNK_ELEMENTS:
            raise ValueError(f"attention_chunk must be an integer from 0 (automatic) to {MAX_CHUNK_ELEMENTS}, "
                             f"got {attention_chunk!r}")
        if strength == 0:
            return io.NodeOutput(positive, negative)
        settings = _fusion(control_net, fusion, fusion_weight)
        hint = image.movedim(-1, 1)
        if mask is not None and mask.ndim == 2:
            mask = mask[None]

        applied = {}
        out = []
        for conditioning in (positive, negative):
            entries = []
            for tokens, options in conditioning:
                d = options.copy()
                previous = d.get("control")
                if previous not in applied:
                    c = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent))
                    c.fusion = settings
                    c.chunk_elements = attention_chunk or None
                    c.mask = mask
                    applied[previous] = c.set_previous_controlnet(previous)
                d["control"] = applied[previous]
                d["control_apply_to_uncond"] = False
                entries.append([tokens, d])
            out.append(entries)
        return io.NodeOutput(out[0], out[1])
