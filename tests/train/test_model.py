"""The trained model (sesahand.train.model): SD1.5 loading, the ControlNet with structural fusion
(SF), the hand-attention bias (AE) on the UNet, the training loss. Tiny random diffusers models
(32/64 channels, 32-wide text) keep it fast; ComfyUI parity is in tests/nodes/test_train_export.py.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from sesahand.control import FusionSettings  # noqa: E402
from sesahand.train import model as tm  # noqa: E402

WIDTH = 32  # text width of the tiny models


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=WIDTH,
        attention_head_dim=2, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def tiny_sd(seed=0) -> tm.SD15:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, layers_per_block=1)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, vocab_size=49408))
    tokenizer = CLIPTokenizer.from_pretrained(tm.SD15_DATA / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(tm.SD15_DATA, subfolder="scheduler")
    sd = tm.SD15(tiny_unet(seed), vae, text, tokenizer, scheduler)
    for module in (sd.unet, sd.vae, sd.text_encoder):
        module.eval().requires_grad_(False)
    return sd


def trained_controlnet(unet, seed=1) -> ControlNetModel:
    """A ControlNet from the UNet with random zero convolutions (as after training)."""
    controlnet = tm.build_controlnet(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return controlnet


def batch(sd, size=32, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = sd.tokenizer(["a person waving a hand", "holding a cup with fingers"], padding="max_length",
                       max_length=77, truncation=True, return_tensors="pt").input_ids
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, 5] = mask[1, [1, 6]] = True  # "hand"; "holding", "fingers"
    return {"pixel_values": torch.rand(2, 3, size, size, generator=g) * 2 - 1,
            "conditioning": torch.rand(2, 3, size, size, generator=g), "input_ids": ids, "hand_token_mask": mask}


def control_inputs(seed=3, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, size, size, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 77, WIDTH, generator=g), torch.rand(2, 3, 8 * size, 8 * size, generator=g))


def plain(controlnet, x, t, text, cond):
    down, mid = controlnet(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
    return [*down, mid]


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


def test_w0_is_the_plain_controlnet_exactly_and_tiny_w_the_same_math(sd):
    controlnet = trained_controlnet(sd.unet)
    fused = tm.FusedControlNet(controlnet, FusionSettings("tokens", 0.0))
    inputs = control_inputs()
    with torch.no_grad():
        reference = plain(controlnet, *inputs)
        down, mid = fused(*inputs)
        assert len(down) == 4 and all(torch.equal(a, b) for a, b in zip([*down, mid], reference))
        fused.fusion = FusionSettings("gate", 1e-30)  # the SF path (explicit attention), no refinement
        down, mid = fused(*inputs)
    for a, b in zip([*down, mid], reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_fusion_changes_the_right_residuals_from_every_self_attention(sd, fusion, monkeypatch):
    recorded = []

    class Recording(tm.SelfAttentionMaps):
        def structure(self):
            recorded.append(self.layers)
            return super().structure()

    monkeypatch.setattr(tm, "SelfAttentionMaps", Recording)
    controlnet = trained_controlnet(sd.unet)
    inputs = control_inputs()
    with torch.no_grad():
        reference = plain(controlnet, *inputs)
        fused = tm.FusedControlNet(controlnet, FusionSettings(fusion, 1.0))
        down, mid = fused(*inputs)
        direct = plain(controlnet, *inputs)  # the patched ControlNet called as diffusers pipelines do
    changed = [not torch.allclose(a, b, atol=1e-4) for a, b in zip([*down, mid], reference)]
    assert changed == ([False] * 4 + [True] if fusion == "tokens" else [True] * 5)
    assert all(torch.equal(a, b) for a, b in zip(direct, [*down, mid]))
    # one self-attention per res block: level 0 at 8x8, level 1 at 4x4, the mid block at 4x4 too
    assert recorded == [{(8, 8): 1, (4, 4): 2}] * 2
    assert [p for p in fused.parameters()] == [p for p in controlnet.parameters()]  # SF has no parameters


def test_hand_attention_alpha0_plain_bias_on_decoder_only_and_removable(sd):
    unet = tiny_unet()
    g = torch.Generator().manual_seed(4)
    x, t, text = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 900]), torch.randn(2, 77, WIDTH, generator=g)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[:, 4] = True
    with torch.no_grad():
        reference = unet(x, t, text).sample
        handle = tm.install_hand_attention(unet, 0.0)
        handle.set_token_mask(mask)
        assert torch.equal(unet(x, t, text).sample, reference)
        handle.alpha = 2.0
        biased = unet(x, t, text).sample
        handle.set_token_mask(None)
        assert torch.equal(unet(x, t, text).sample, reference)
        handle.set_token_mask(mask)
        handle.remove()
        assert torch.equal(unet(x, t, text).sample, reference)
    assert not torch.allclose(biased, reference, atol=1e-4)
    assert handle.layers == () and tm.install_hand_attention(unet, 2.0).layers == (
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2", "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.1.transformer_blocks.0.attn2")
    assert len(tm.install_hand_attention(tiny_unet(), 2.0, layers="all").layers) == 2 + 1 + 4


def test_hand_attention_bias_is_eq_ae1_on_the_hand_keys():
    """One patched attn2 against softmax(Q K^T / sqrt(d) + B) V written out."""
    unet = tiny_unet()
    attn = unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(5)
    hidden, text = torch.randn(2, 16, 32, generator=g), torch.randn(2, 77, WIDTH, generator=g)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, 3] = mask[1, [7, 8]] = True
    handle = tm.install_hand_attention(unet, 2.5)
    handle.set_token_mask(mask)
    with torch.no_grad():
        out = attn(hidden, encoder_hidden_states=text)
        q, k, v = attn.to_q(hidden), attn.to_k(text), attn.to_v(text)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        q, k, v = (z.view(2, -1, heads, d).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / d ** 0.5 + 2.5 * mask[:, None, None, :].float()
        expected = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 16, -1)
        expected = attn.to_out[0](expected)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_hand_attention_refuses_bad_input():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="alpha must be a number from 0 to 10"):
        tm.install_hand_attention(unet, 11.0)
    with pytest.raises(ValueError, match="layers 'encoder' is unknown.*'decoder', 'all'"):
        tm.install_hand_attention(unet, 2.0, layers="encoder")
    handle = tm.install_hand_attention(unet, 2.0)
    with pytest.raises(ValueError, match=r"hand_token_mask must be a \(B, C \* 77\) bool tensor"):
        handle.set_token_mask(torch.zeros(2, 77))


def loss_and_grads(sd, fused, data, hand, seed=6):
    fused.zero_grad(set_to_none=True)
    loss = tm.training_loss(sd, fused, data, hand, torch.Generator().manual_seed(seed))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in fused.named_parameters()}


def test_training_forward_uses_sf_and_ae_and_equals_plain_at_w0_alpha0():
    sd = tiny_sd()
    fused = tm.FusedControlNet(trained_controlnet(sd.unet), FusionSettings("tokens", 1.0))
    hand = tm.install_hand_attention(sd.unet, 2.0)
    data = batch(sd)

    def loss(fusion, alpha):
        fused.fusion, hand.alpha = fusion, alpha
        with torch.no_grad():
            return tm.training_loss(sd, fused, data, hand, torch.Generator().manual_seed(6))

    both = loss(FusionSettings("tokens", 1.0), 2.0)
    no_sf, no_ae = loss(FusionSettings("tokens", 0.0), 2.0), loss(FusionSettings("tokens", 1.0), 0.0)
    gate = loss(FusionSettings("gate", 1.0), 2.0)
    off = loss(FusionSettings("tokens", 0.0), 0.0)
    assert len({float(v) for v in (both, no_sf, no_ae, gate, off)}) == 5

    # w = 0 and alpha = 0: the plain ControlNet and UNet, the same noise and timesteps
    hand.remove()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        latents = sd.vae.encode(data["pixel_values"]).latent_dist.sample(generator=g) * sd.vae.config.scaling_factor
        text = sd.text_encoder(data["input_ids"])[0]
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        noisy = sd.noise_scheduler.add_noise(latents, noise, t)
        down, mid = fused.controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=data["conditioning"],
                                     return_dict=False)
        eps = sd.unet(noisy, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(off, torch.nn.functional.mse_loss(eps, noise))


def test_gradients_reach_only_the_controlnet_also_with_checkpointing():
    sd = tiny_sd()
    fused = tm.FusedControlNet(trained_controlnet(sd.unet), FusionSettings("gate", 1.0))
    hand = tm.install_hand_attention(sd.unet, 2.0)
    data = batch(sd)
    loss, grads = loss_and_grads(sd, fused, data, hand)
    assert torch.isfinite(loss)
    assert all(g is not None for g in grads.values()) and sum(bool(g.abs().sum()) for g in grads.values()) > 100
    for module in (sd.unet, sd.vae, sd.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    # gradient checkpointing recomputes the SF and AE attention on the same path
    fused.controlnet.enable_gradient_checkpointing()
    sd.unet.enable_gradient_checkpointing()
    try:
        loss2, grads2 = loss_and_grads(sd, fused, data, hand)
    finally:
        fused.controlnet.disable_gradient_checkpointing()
        sd.unet.disable_gradient_checkpointing()
    torch.testing.assert_close(loss2, loss)
    for name, g in grads.items():
        torch.testing.assert_close(grads2[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_v_prediction_targets_the_velocity(sd):
    fused = tm.FusedControlNet(trained_controlnet(sd.unet), FusionSettings("tokens", 0.0))
    v_sd = tm.SD15(sd.unet, sd.vae, sd.text_encoder, sd.tokenizer,
                   DDPMScheduler.from_config(sd.noise_scheduler.config, prediction_type="v_prediction"))
    data = batch(sd)
    with torch.no_grad():
        eps, v = (tm.training_loss(s, fused, data, None, torch.Generator().manual_seed(6)) for s in (sd, v_sd))
    assert torch.isfinite(v) and not torch.equal(eps, v)


def test_training_loss_refuses_bad_batches(sd):
    fused = tm.FusedControlNet(tm.build_controlnet(sd.unet), FusionSettings())
    good = batch(sd)
    with pytest.raises(ValueError, match="batch needs pixel_values, conditioning and input_ids"):
        tm.training_loss(sd, fused, {"pixel_values": good["pixel_values"]})
    with pytest.raises(ValueError, match="multiples of 8"):
        tm.training_loss(sd, fused, {**good, "pixel_values": torch.zeros(2, 3, 60, 64)})
    with pytest.raises(ValueError, match="conditioning .* must match pixel_values"):
        tm.training_loss(sd, fused, {**good, "conditioning": torch.zeros(2, 3, 16, 16)})
    hand = tm.install_hand_attention(sd.unet, 2.0)
    try:
        with pytest.raises(ValueError, match="needs hand_token_mask"):
            tm.training_loss(sd, fused, {k: v for k, v in good.items() if k != "hand_token_mask"}, hand)
    finally:
        hand.remove()


def test_build_controlnet_copies_the_unet_encoder(sd):
    controlnet = tm.build_controlnet(sd.unet)
    assert controlnet.training and all(p.requires_grad and p.dtype == torch.float32 for p in controlnet.parameters())
    assert torch.equal(controlnet.down_blocks[1].attentions[0].proj_in.weight,
                       sd.unet.down_blocks[1].attentions[0].proj_in.weight)
    assert all(not p.detach().any() for p in controlnet.controlnet_mid_block.parameters())


def test_load_sd15_from_a_diffusers_folder(sd, tmp_path):
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(sd, {"scheduler": "noise_scheduler"}.get(name, name)).save_pretrained(tmp_path / name)
    loaded = tm.load_sd15(tmp_path, dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16 and not loaded.unet.training
    assert all(not p.requires_grad for p in loaded.text_encoder.parameters())
    assert torch.equal(loaded.unet.conv_in.weight, sd.unet.conv_in.weight.half())
    assert loaded.noise_scheduler.config.prediction_type == "epsilon"
    assert loaded.tokenizer("a hand").input_ids == sd.tokenizer("a hand").input_ids


def test_load_sd15_refuses_other_families_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tm.load_sd15(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="not a diffusers SD1.5 folder"):
        tm.load_sd15(tmp_path)
    sdxl = {  # the keys diffusers' and our detection read, tiny shapes
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 2048),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 2816),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4),
    }
    save_file(sdxl, str(tmp_path / "xl.safetensors"))
    with pytest.raises(ValueError, match=r"xl.safetensors: an SDXL checkpoint \(text width \[2048\]\), not SD1.5"):
        tm.load_sd15(tmp_path / "xl.safetensors")
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(ValueError, match="flux.safetensors: a 'flux-.*' checkpoint, not SD1.5"):
        tm.load_sd15(tmp_path / "flux.safetensors")
    xl_folder = tmp_path / "xl"
    (xl_folder / "unet").mkdir(parents=True)
    (xl_folder / "unet" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}')
    with pytest.raises(ValueError, match="an SDXL model .*not SD1.5"):
        tm.load_sd15(xl_folder)
