"""Training side against a real ComfyUI (CPU): the tiny single-file SD1.5 checkpoint loads for
training with the same UNet and VAE as ComfyUI's, a ControlNet built and exported by
sesahand.train loads in SesaHand Load ControlNet (SF on from its header) and changes a sampling
run, and the diffusers SF forward (training) equals the ComfyUI cldm SF walker (inference).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.comfyui

METADATA = {"fusion": "tokens", "w": 1.0, "alpha": 1.5, "render_style": "depth", "config_hash": "0123abcd"}


def randomise(module, seed, scale=1.0, only=None):
    """Seeded random weights (std ``scale`` / sqrt(fan-in)) for ``only`` (a list of submodules) or all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in only if only is not None else [module]:
            for p in part.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)


@pytest.fixture(scope="module")
def trained(comfyui, load_local, tmp_path_factory):
    """The tiny SD1.5 checkpoint in a checkpoints folder, loaded for training, and an exported
    SesaHand ControlNet of its UNet (random zero convolutions, as after training)."""
    pytest.importorskip("diffusers")
    from sesahand.train import export, model

    builder = load_local("tools/tiny_sd15.py")
    root = tmp_path_factory.mktemp("train_export")
    folders = {name: root / name for name in ("checkpoints", "controlnet")}
    for name, folder in folders.items():
        folder.mkdir()
        comfyui.folder_paths.add_model_folder_path(name, str(folder))
    checkpoint = builder.build_checkpoint(folders["checkpoints"] / "tiny_train_sd15.safetensors")
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
    control, alpha, style = comfyui.node("SesaHandLoadControlNet").execute(control_net_name=trained.path.name)
    assert (control.fusion.fusion, control.fusion.w, alpha, style) == ("tokens", 1.0, 1.5, "depth")
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
    from sesahand.train import export

    ours = export.diffusers_to_original(trained.controlnet)
    theirs = cm.diffusers_to_original(trained.controlnet.state_dict())
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


#: tests/comfyui/test_control_nodes.py's small SD1.5-shaped cldm ControlNet (4 levels, 2 res
#: blocks each, transformers on the first 3, 8 heads) and the same shape in diffusers.
SD15_SHAPE = {"model_channels": 32, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2] * 4,
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1}
DIFFUSERS_SHAPE = {"block_out_channels": (32, 64, 128, 128), "cross_attention_dim": 768,
                   "attention_head_dim": 8, "norm_num_groups": 32}


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_training_sf_forward_equals_the_comfyui_walker(cm, load_local, tmp_path, fusion):
    """FusedControlNet residuals (training) == nodes/control_model.sf_forward (inference) on the
    cldm module holding the exported weights (loaded strictly: the layout is complete)."""
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    from sesahand.control import FusionSettings
    from sesahand.train import export, model

    controlnet = ControlNetModel(**DIFFUSERS_SHAPE)
    randomise(controlnet, 11)
    path = export.export_controlnet(controlnet, tmp_path / "small.safetensors", {**METADATA, "fusion": fusion})
    cldm = load_local("tools/tiny_sd15.py").controlnet_module(device="cpu", **SD15_SHAPE)
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
