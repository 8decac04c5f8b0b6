"""Training side against a real ComfyUI (CPU): the tiny single-file SD1.5 checkpoint loads for
training with the same UNet and VAE as ComfyUI's, a ControlNet built and exported by
sesahand.train loads in SesaHand Load ControlNet (every inference setting from its header) and
changes a sampling run, the diffusers SF forward (training) equals what ComfyUI computes from
the exported file (load_controlnet + get_control, float32 and under bf16 autocast), and
training's hand-token mask sits at the positions the Hand Attention node biases.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.comfyui

METADATA = {"fusion": "tokens", "w": 1.0, "hierarchy": "balanced", "alpha": 1.5, "attention_layers": "all",
            "render_style": "depth", "config_hash": "0123abcd"}


def randomise(module, seed, scale=1.0, only=None):
    """Seeded random weights (std ``scale`` / sqrt(fan-in)) for ``only`` (a list of submodules) or all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in only if only is not None else [module]:
            for p in part.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)


@pytest.fixture(scope="module")
def trained(comfyui, tiny_models, tmp_path_factory):
    """The tiny SD1.5 checkpoint in a checkpoints folder, loaded for training, and an exported
    SesaHand ControlNet of its UNet (random zero convolutions, as after training)."""
    pytest.importorskip("diffusers")
    from sesahand.train import export, model

    root = tmp_path_factory.mktemp("train_export")
    folders = {name: root / name for name in ("checkpoints", "controlnet")}
    for name, folder in folders.items():
        folder.mkdir()
        comfyui.folder_paths.add_model_folder_path(name, str(folder))
    checkpoint = folders["checkpoints"] / "tiny_train_sd15.safetensors"
    os.link(tiny_models.checkpoint, checkpoint)  # the tier's tiny SD1.5 checkpoint
    sd = model.load_sd15(checkpoint)
    controlnet = model.build_controlnet(sd.unet)
    randomise(controlnet, 7, only=[*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block])
    path = export.export_controlnet(controlnet, folders["controlnet"] / "trained_hand.safetensors", METADATA)
    return SimpleNamespace(sd=sd, controlnet=controlnet, path=path, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def cm(comfyui):
    import importlib

    return importlib.import_module(comfyui.pack_module.__name__ + ".nodes.control_model")


def test_single_file_checkpoint_loads_with_comfyui_s_unet_and_vae(comfyui, trained):
    import nodes as comfy_nodes

    sd = trained.sd
    assert list(sd.unet.config.block_out_channels) == [320] and type(sd.vae).__name__ == "AutoencoderTiny"
    assert list(sd.unet.config.up_block_types) == ["UpBlock2D"]  # the tiny UNet's decoder has no transformer
    model, _, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(trained.checkpoint.name)
    unet = model.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, context, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g), torch.tensor([5, 800])
    with torch.no_grad():
        theirs = unet(x, t, context).float()
        ours = sd.unet(x, t, context).sample
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
        image = torch.rand(1, 64, 64, 3, generator=g)
        ours = sd.vae.encode(image.movedim(-1, 1) * 2 - 1).latents * sd.vae.config.scaling_factor
    torch.testing.assert_close(ours, vae.encode(image).float(), rtol=1e-3, atol=1e-3)


def test_exported_controlnet_loads_with_sf_on_and_changes_sampling(comfyui, trained):
    import nodes as comfy_nodes

    model, clip, _ = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(trained.checkpoint.name)
    control, alpha, style, layers = comfyui.node("SesaHandLoadControlNet").execute(control_net_name=trained.path.name)
    assert (control.fusion.fusion, control.fusion.w, control.fusion.hierarchy) == ("tokens", 1.0, "balanced")
    assert (alpha, style, layers) == (1.5, "depth", "all")
    encode = comfy_nodes.CLIPTextEncode()
    positive, negative = encode.encode(clip, "a hand")[0], encode.encode(clip, "")[0]
    image = torch.zeros(1, 64, 64, 3)
    image[:, 16:48, 24:40] = 1.0
    apply = comfyui.node("SesaHandApplyHandControl")

    def controlled(fusion):
        return apply.execute(positive=positive, negative=negative, control_net=control, image=image, strength=1.0,
                             start_percent=0.0, end_percent=1.0, fusion=fusion, fusion_weight=1.0)

    def sample(pos, neg):
        empty = {"samples": torch.zeros(1, 4, 8, 8)}
        return comfy_nodes.common_ksampler(model, 3, 2, 4.0, "euler", "normal", pos, neg, empty)[0]["samples"]

    with_sf, sf_off, without = sample(*controlled("from file")), sample(*controlled("off")), sample(positive, negative)
    assert torch.isfinite(with_sf).all()
    assert not torch.allclose(with_sf, without, atol=1e-3)  # the trained control acts
    assert not torch.allclose(with_sf, sf_off, atol=1e-4)  # and its structural fusion too


def test_export_names_match_comfyui_s_diffusers_conversion(cm, trained):
    """The export's names are what Load ControlNet makes of the diffusers state dict, and
    core's own ``unet_to_diffusers`` names every UNet-encoder weight alike."""
    import comfy.utils

    from sesahand.control import layout
    from sesahand.train import export

    state = trained.controlnet.state_dict()
    ours = export.diffusers_to_original(trained.controlnet)
    loaded = cm.original_layout(state, "diffusers.safetensors")
    assert ours.keys() == loaded.keys() and all(torch.equal(ours[k], loaded[k]) for k in ours)
    config = trained.controlnet.config
    levels, per_level = len(config.block_out_channels), config.layers_per_block
    depth = config.transformer_layers_per_block
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    core = comfy.utils.unet_to_diffusers({
        "num_res_blocks": [per_level] * levels, "channel_mult": [1] * levels,
        "transformer_depth": [d if "CrossAttn" in kind else 0
                              for d, kind in zip(depth, config.down_block_types) for _ in range(per_level)],
        "transformer_depth_output": [0] * (levels * (per_level + 1)), "transformer_depth_middle": 1})
    unet_keys = [k for k in state if not k.startswith(("controlnet_", "add_embedding", "class_embedding"))]
    names = layout.original_names(state)
    assert unet_keys and all(core[k] == names[k] for k in unet_keys)


#: tests/nodes/test_control_nodes.py's small SD1.5-shaped cldm ControlNet (4 levels, 2 res
#: blocks each, transformers on the first 3, 8 heads) and the same shape in diffusers.
DIFFUSERS_SHAPE = {"block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 768,
                   "attention_head_dim": 8, "norm_num_groups": 32}


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_training_sf_forward_equals_the_comfyui_walker(cm, load_local, tmp_path, fusion, sd15_shape):
    """FusedControlNet residuals (training) == nodes/control_model.sf_forward (inference) on the
    cldm module holding the exported weights (loaded strictly: the layout is complete)."""
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    from sesahand.control import FusionSettings
    from sesahand.train import export, model

    controlnet = ControlNetModel(**DIFFUSERS_SHAPE)
    randomise(controlnet, 11)
    path = export.export_controlnet(controlnet, tmp_path / "small.safetensors", {**METADATA, "fusion": fusion})
    cldm = load_local("tools/tiny_sd15.py").controlnet_module(device="cpu", **sd15_shape)
    cldm.load_state_dict({k.removeprefix("control_model."): v for k, v in load_file(str(path)).items()})
    settings = FusionSettings(fusion, 1.0)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 768, generator=g)
    hint, t = torch.rand(2, 3, 128, 128, generator=g), torch.tensor([20.0, 600.0])
    with torch.no_grad():
        theirs = cm.sf_forward(cldm.eval(), x, hint, t, context, settings)
        down, mid = model.FusedControlNet(controlnet.eval(), settings)(x, t, context, hint)
    assert len(down) == len(theirs["output"]) == 12
    for a, b in zip([*down, mid], theirs["output"] + theirs["middle"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


#: SD1.5's ControlNet layout (4 levels, 2 res blocks, transformers on the first three and the
#: middle, 8 heads) at width 320 on every level: ComfyUI's SD1.5 detection needs model_channels 320.
PARITY_SHAPE = {"block_out_channels": (320, 320, 320, 320), "cross_attention_dim": 768, "attention_head_dim": 8,
                "norm_num_groups": 32}


@pytest.fixture(scope="module")
def parity(cm, tmp_path_factory):
    """fusion -> (FusedControlNet as training builds it, the SesaHand ControlNet ComfyUI loaded from
    the export of the same weights)."""
    import copy

    from diffusers import ControlNetModel

    from sesahand.train import export, model

    torch.manual_seed(0)
    controlnet = ControlNetModel(**PARITY_SHAPE)
    randomise(controlnet, 11)
    folder = tmp_path_factory.mktemp("parity")
    out = {}
    for fusion in ("tokens", "gate"):
        path = export.export_controlnet(controlnet, folder / f"{fusion}.safetensors", {**METADATA, "fusion": fusion})
        control = cm.load_controlnet(str(path), path.name)
        settings = control.fusion  # read back from the file
        fused = model.FusedControlNet(copy.deepcopy(controlnet).eval(),
                                      model.FusionSettings(settings.fusion, settings.w, settings.hierarchy))
        out[fusion] = (fused, control)
    return out


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_comfyui_loading_path_gives_the_training_residuals(cm, sd15_model, parity, fusion, autocast):
    """The exported file through ComfyUI's real path (load_controlnet, set_cond_hint, pre_run,
    get_control with a sampler's sigma) == FusedControlNet (training) on the same weights."""
    fused, control = parity[fusion]
    assert control.fusion == cm.FusionSettings(fusion, 1.0, "balanced") and control.metadata.attention_layers == "all"
    g = torch.Generator().manual_seed(3)
    hint, x_noisy = torch.rand(1, 3, 128, 128, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    context, sigma = torch.randn(2, 77, 768, generator=g), torch.full((2,), 5.0)
    sampled = sd15_model()
    running = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
    running.pre_run(sampled, sampled.model_sampling.percent_to_sigma)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        with torch.no_grad(), precision:
            theirs = running.get_control(x_noisy, sigma, {"c_crossattn": context}, 1, {})
    finally:
        running.cleanup()
    x = sampled.model_sampling.calculate_input(sigma, x_noisy)
    t = sampled.model_sampling.timestep(sigma)
    with torch.no_grad():
        with precision:
            down, mid = fused(x, t, context, hint.expand(2, -1, -1, -1))
        reference = fused(x, t, context, hint.expand(2, -1, -1, -1))  # float32
    ours, theirs = [*down, mid], theirs["output"] + theirs["middle"]
    assert len(ours) == len(theirs) == 13
    for a, b, r in zip(ours, theirs, [*reference[0], reference[1]]):
        scale = float(r.abs().max())
        if autocast:  # bf16 rounding differs between the two forwards: both stay near float32
            assert a.dtype == b.dtype == torch.bfloat16
            for out in (a, b):
                torch.testing.assert_close(out.float(), r, rtol=0.05, atol=0.03 * scale)
            torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.03 * scale)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


def test_a_file_trained_with_all_layers_runs_with_all_layers(comfyui, trained):
    """SesaHand Load ControlNet's layers output (from sesahand.attention_layers) into the Hand
    Attention node patches every cross-attention layer (the tiny UNet has none in its decoder)."""
    import nodes as comfy_nodes

    model, clip, _ = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(trained.checkpoint.name)
    _, alpha, _, layers = comfyui.node("SesaHandLoadControlNet").execute(control_net_name=trained.path.name)
    assert layers == "all"
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=model, clip=clip, prompt="a person waving a hand", hand_terms="", alpha=alpha, layers=layers,
        start_percent=0.0, end_percent=1.0)[0]
    keys = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert {key[0] for key in keys} == {"input", "middle"}
    assert all(patch.alpha == 1.5 for patch in keys.values())


@pytest.fixture(scope="module")
def clip(comfyui, trained):
    """ComfyUI's CLIP of the tiny checkpoint (SD1.5's tokenizer)."""
    import nodes as comfy_nodes

    return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(trained.checkpoint.name)[1]


LONG = ("a woman in a sunny kitchen with wooden shelves, jars of flour, copper pots, a window with green plants, "
        "a striped apron and a bowl of lemons on the counter, soft morning light, film grain, shallow depth of field, "
        "warm colours, detailed skin, is kneading dough with both hands while (smiling:1.2) at the camera")


@pytest.mark.parametrize("prompt, terms", [
    ("a person waving a hand", ""),
    ("a (hand:1.3) holding a cup, ((fingers)) spread", ""),
    ("Typing on a keyboard with both hands, (open palm:0.8)", "open palm"),
    ("\\(literal brackets\\) around a fist, gesture", ""),
    (LONG, "kneading dough"),
    ("(" + LONG + ":1.1)", ""),  # one large weighted segment cut across the chunk boundary
])
def test_training_hand_tokens_are_the_hand_attention_node_s_positions(comfyui, trained, clip, prompt, terms):
    """tokenize_prompt (training) == ComfyUI's tokens and the Hand Attention node's positions
    (weights, escapes, chunks, gerunds), every chunk; and training's text encoding == ComfyUI's
    CLIP Text Encode of the same checkpoint (each chunk on its own, token weights)."""
    from sesahand.attention import parse_terms
    from sesahand.train import model
    from sesahand.train.prompts import tokenize_prompt

    attention = importlib.import_module(comfyui.pack_module.__name__ + ".nodes.attention")
    chunks = clip.tokenize(prompt, return_word_ids=True)["l"]
    theirs = attention.hand_tokens(clip, prompt, terms)
    tokenizer = trained.sd.tokenizer
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    ids, weights, mask = tokenize_prompt(tokenizer, vocab, prompt, parse_terms(terms))
    tokens = [token for chunk in chunks for token in chunk]
    assert ids.tolist() == [int(t) for t, _, _ in tokens]
    assert weights.tolist() == pytest.approx([w for _, w, _ in tokens])
    assert mask.nonzero().flatten().tolist() == list(theirs.positions)
    assert mask.any()
    ours = model.encode_text(trained.sd, ids[None], weights[None])
    cond = clip.encode_from_tokens(clip.tokenize(prompt))
    assert ours.shape == cond.shape == (1, 77 * len(chunks), 768)
    torch.testing.assert_close(ours, cond, atol=2e-4, rtol=1e-4)
