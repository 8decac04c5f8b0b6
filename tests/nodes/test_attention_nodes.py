"""Hand attention (AE) nodes inside a real ComfyUI (in-process, CPU): a tiny random
SD1.5-shaped UNet, ComfyUI's SD1 tokenizer, and core's sampler.

What is checked: alpha = 0 reproduces the unpatched model exactly; the bias changes the
positive branch and leaves the negative branch bit-identical; the input MODEL is never
changed; existing attn2 replace patches are wrapped, not overwritten; bad inputs get messages
naming the input to change.
"""

from __future__ import annotations

import importlib
import math
import logging

import pytest
import torch

pytestmark = pytest.mark.comfyui


NODE_IDS = ("SesaHandHandAttention", "SesaHandHandAttentionSampler")
PROMPT = "a person sitting at a table, holding a cup with one hand, smiling"
TINY_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False, "image_size": 32,
    "use_checkpoint": False,
}


@pytest.fixture(scope="module")
def ae(comfyui):
    """The pack's ``nodes.attention_patch`` module as ComfyUI loaded it."""
    return importlib.import_module(comfyui.pack_module.__name__ + ".nodes.attention_patch")


@pytest.fixture(scope="module")
def tiny_model(comfyui):
    """A ModelPatcher around a random SD1.5-shaped UNet (32 channels, 2 levels, 1.6 M params):
    cross-attention in input blocks 1 and 3, the middle block and output blocks 0-3."""
    import comfy.supported_models

    return random_patcher(comfy.supported_models.SD15(dict(TINY_UNET)).get_model({}))


@pytest.fixture(scope="module")
def clip(comfyui):
    """A core CLIP object holding only ComfyUI's SD1 tokenizer (no text encoder weights)."""
    import comfy.sd
    import comfy.sd1_clip

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = comfy.sd1_clip.SD1Tokenizer()
    clip.tokenizer_options = {}
    return clip


def conditioning(seed: int, tokens: int = 77):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 768, generator=g), {}]]


def hand_inputs(**overrides) -> dict:
    inputs = {"prompt": PROMPT, "hand_terms": "", "alpha": 2.0, "layers": "decoder",
              "start_percent": 0.0, "end_percent": 1.0}
    inputs.update(overrides)
    return inputs


def sample(model, steps: int = 2, cfg: float = 3.0, latent_batch: int = 1):
    """Core common_ksampler on an 8x8 latent; returns the latent samples."""
    import nodes

    latent = {"samples": torch.zeros(latent_batch, 4, 8, 8)}
    out = nodes.common_ksampler(model, 7, steps, cfg, "euler", "normal", conditioning(1),
                                conditioning(2), latent)
    return out[0]["samples"]


def first_step_branches(model, run):
    """The first step's (positive, negative) denoised predictions, recorded after CFG while
    ``run(probe)`` samples a clone of ``model``."""
    recorded = []

    def record(args):
        recorded.append((args["cond_denoised"].clone(), args["uncond_denoised"].clone()))
        return args["denoised"]

    probe = model.clone()
    probe.set_model_sampler_post_cfg_function(record)
    run(probe)
    return recorded[0]


def branches(model, **kwargs):
    """The first step's (positive, negative) denoised predictions of :func:`sample`."""
    return first_step_branches(model, lambda probe: sample(probe, steps=1, **kwargs))


def options_snapshot(model) -> dict:
    """``model.model_options`` as nested plain values, objects by identity."""
    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x if isinstance(x, (int, float, str, bool, type(None))) else ("object", id(x))
    return walk(model.model_options)


def attn2_patches(model) -> dict:
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def test_schemas_follow_the_pack_conventions(comfyui):
    for node_id in NODE_IDS:
        info = comfyui.node(node_id).GET_NODE_INFO_V1()
        assert info["category"] == "SesaHand/attention"
        assert info["display_name"].startswith("SesaHand ")
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, (_, options) in inputs.items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert "mask" in info["input"]["optional"]
    sampler = comfyui.node("SesaHandHandAttentionSampler").GET_NODE_INFO_V1()["input"]["required"]
    core = comfyui.node("KSampler").INPUT_TYPES()["required"]
    assert set(core) <= set(sampler)  # the inputs of core KSampler, plus the hand inputs


def test_cross_attention_keys_are_read_from_the_model(ae, tiny_model):
    assert ae.cross_attention_keys(tiny_model, "decoder") == [("output", i, 0) for i in range(4)]
    assert ae.cross_attention_keys(tiny_model, "all") == [
        ("input", 1, 0), ("input", 3, 0), ("middle", 0, 0)] + [("output", i, 0) for i in range(4)]


def test_hand_tokens_with_comfyuis_tokenizer(ae, clip):
    prompt = "a person (raising:1.1) his (hand:1.3), " + "a busy street with people " * 15 + \
             "thumbs-up and a (fist)"
    chunks = clip.tokenize(prompt, return_word_ids=True)["l"]
    assert len(chunks) == 2
    found = ae.hand_tokens(clip, prompt, "busy street")
    flat = [entry for chunk in chunks for entry in chunk]
    vocab = clip.tokenizer.clip_l.inv_vocab
    picked = [(vocab[flat[p][0]], round(flat[p][1], 2)) for p in found.positions]
    assert picked[:2] == [("raising</w>", 1.1), ("hand</w>", 1.3)]
    assert picked[-2:] == [("thumbs</w>", 1.0), ("fist</w>", 1.1)]
    assert found.positions[-1] > 77  # in the second chunk
    assert picked.count(("busy</w>", 1.0)) == 15 and picked.count(("street</w>", 1.0)) == 15
    assert found.num_keys == 2 * 77


def test_alpha_zero_reproduces_the_unpatched_model_exactly(comfyui, tiny_model, clip):
    reference = sample(tiny_model)
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs(alpha=0.0, layers="all"))[0]
    assert attn2_patches(patched)  # the patches are there, and do nothing
    assert torch.equal(sample(patched), reference)
    latent = comfyui.node("SesaHandHandAttentionSampler").execute(
        model=tiny_model, seed=7, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal",
        positive=conditioning(1), negative=conditioning(2),
        latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0, clip=clip,
        **hand_inputs(alpha=0.0))[0]
    assert torch.equal(latent["samples"], reference)


@pytest.mark.parametrize("layers", ["decoder", "all"])
def test_bias_changes_the_positive_branch_only(comfyui, tiny_model, clip, layers):
    plain_pos, plain_neg = branches(tiny_model, latent_batch=2)
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs(layers=layers))[0]
    pos, neg = branches(patched, latent_batch=2)
    assert torch.equal(neg, plain_neg)
    assert not torch.allclose(pos, plain_pos, atol=1e-4)
    assert torch.isfinite(pos).all()


def test_the_sampler_node_biases_like_the_patch_node(comfyui, tiny_model, clip):
    inputs = dict(seed=7, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal",
                  positive=conditioning(1), negative=conditioning(2),
                  latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
    latent = comfyui.node("SesaHandHandAttentionSampler").execute(
        model=tiny_model, clip=clip, **inputs, **hand_inputs())[0]["samples"]
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs())[0]
    assert torch.equal(latent, sample(patched))
    assert not torch.equal(latent, sample(tiny_model))


def test_the_input_model_is_never_changed(comfyui, tiny_model, clip):
    before = options_snapshot(tiny_model)
    weights = {k: v.clone() for k, v in tiny_model.model.state_dict().items()}
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs(layers="all"))[0]
    sample(patched)
    comfyui.node("SesaHandHandAttentionSampler").execute(
        model=tiny_model, seed=1, steps=1, cfg=3.0, sampler_name="euler", scheduler="normal",
        positive=conditioning(1), negative=conditioning(2),
        latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0, clip=clip, **hand_inputs())
    assert patched is not tiny_model and len(attn2_patches(patched)) == 7
    assert attn2_patches(tiny_model) == {}
    assert options_snapshot(tiny_model) == before
    after = tiny_model.model.state_dict()
    assert all(torch.equal(after[k], w) for k, w in weights.items())


def test_the_patch_routes_every_chunk(ae):
    """Positive chunks (0 in cond_or_uncond) get eq. AE-1's bias, tiled over a conditioning
    that the sampler repeated to a longer length; the others core's attention, bit for bit."""
    from comfy.ldm.modules.attention import optimized_attention

    tokens = ae.HandTokens(positions=(3, 8), words=("holding", "hand"), num_keys=77)
    patch = ae.HandAttentionPatch(tokens, 2.0, sigma_start=10.0, sigma_end=1.0, mask=None)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 16, 32, generator=g)  # 3 chunks of 2: positive, negative, positive
    k, v = (torch.randn(6, 154, 32, generator=g) for _ in range(2))
    options = {"n_heads": 4, "cond_or_uncond": [0, 1, 0], "sigmas": torch.tensor([5.0, 5.0])}
    out = patch(q, k, v, options)
    assert torch.equal(out[2:4], optimized_attention(q[2:4], k[2:4], v[2:4], 4))
    bias = torch.zeros(154)
    bias[[3, 8, 80, 85]] = 2.0
    for rows in (slice(0, 2), slice(4, 6)):
        expected = ae.biased_attention(q[rows], k[rows], v[rows], 4, bias)
        torch.testing.assert_close(out[rows], expected)
    assert not torch.allclose(out[:2], optimized_attention(q[:2], k[:2], v[:2], 4), atol=1e-3)
    outside = patch(q, k, v, {**options, "sigmas": torch.tensor([0.5, 0.5])})
    assert torch.equal(outside, optimized_attention(q, k, v, 4))


class AddedTerm:
    """A stand-in for IPAdapter's attn2 replace patch: text attention plus an added term."""

    calls = 0

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        type(self).calls += 1
        return optimized_attention(q, k, v, extra_options["n_heads"]) + 0.05 * q.tanh()


def test_existing_replace_patches_are_wrapped(comfyui, ae, tiny_model, clip):
    other = tiny_model.clone()
    other.set_model_attn2_replace(AddedTerm(), "output", 0, 0)
    other.set_model_attn2_replace(AddedTerm(), "output", 1)  # a whole-block key
    before = options_snapshot(other)
    node = comfyui.node("SesaHandHandAttention")

    patched = node.execute(model=other, clip=clip, **hand_inputs())[0]
    patches = attn2_patches(patched)
    assert all(isinstance(p, ae.HandAttentionPatch) for key, p in patches.items() if len(key) == 3)
    assert isinstance(patches[("output", 0, 0)].previous, AddedTerm)
    assert isinstance(patches[("output", 1, 0)].previous, AddedTerm)
    assert patches[("output", 2, 0)].previous is None
    assert options_snapshot(other) == before  # still only the AddedTerm patches

    AddedTerm.calls = 0
    other_pos, other_neg = branches(other, latent_batch=2)
    assert AddedTerm.calls > 0
    pos, neg = branches(patched, latent_batch=2)
    assert torch.equal(neg, other_neg)
    assert not torch.allclose(pos, other_pos, atol=1e-4)
    off = node.execute(model=other, clip=clip, **hand_inputs(alpha=0.0))[0]
    assert torch.equal(sample(off), sample(other))

    # A second hand-attention node replaces the first one's patches instead of stacking.
    again = node.execute(model=patched, clip=clip, **hand_inputs(alpha=1.0))[0]
    assert isinstance(attn2_patches(again)[("output", 0, 0)].previous, AddedTerm)
    assert attn2_patches(again)[("output", 2, 0)].previous is None


def test_sigma_range(comfyui, tiny_model, clip):
    node = comfyui.node("SesaHandHandAttention")
    late = node.execute(model=tiny_model, clip=clip, **hand_inputs(start_percent=0.5))[0]
    assert torch.equal(branches(late)[0], branches(tiny_model)[0])  # first step: sigma_max
    early = node.execute(model=tiny_model, clip=clip, **hand_inputs(end_percent=0.5))[0]
    assert not torch.allclose(branches(early)[0], branches(tiny_model)[0], atol=1e-4)


def test_hand_mask_restricts_the_bias_to_hand_pixels(comfyui, tiny_model, clip):
    node = comfyui.node("SesaHandHandAttention")
    full = node.execute(model=tiny_model, clip=clip, **hand_inputs(), mask=torch.ones(1, 64, 64))[0]
    unmasked = node.execute(model=tiny_model, clip=clip, **hand_inputs())[0]
    assert torch.equal(branches(full)[0], branches(unmasked)[0])

    left = torch.zeros(2, 64, 64)
    left[:, :, :32] = 1.0
    half = node.execute(model=tiny_model, clip=clip, **hand_inputs(), mask=left)[0]
    plain = branches(tiny_model, latent_batch=2)[0]
    masked = branches(half, latent_batch=2)[0]
    assert not torch.allclose(masked, plain, atol=1e-4)
    assert not torch.allclose(masked, branches(unmasked, latent_batch=2)[0], atol=1e-4)

    three = node.execute(model=tiny_model, clip=clip, **hand_inputs(),
                         mask=torch.ones(3, 64, 64))[0]
    with pytest.raises(ValueError, match="3 masks for a batch of 2 latents"):
        sample(three, latent_batch=2)
    with pytest.raises(ValueError, match="mask is empty"):
        node.execute(model=tiny_model, clip=clip, **hand_inputs(), mask=torch.zeros(1, 64, 64))


def test_prompt_without_hand_words_skips_the_bias_with_a_warning(comfyui, tiny_model, clip, caplog):
    with caplog.at_level(logging.WARNING):
        out = comfyui.node("SesaHandHandAttention").execute(
            model=tiny_model, clip=clip, **hand_inputs(prompt="a red car in the rain",
                                                       hand_terms="bicycle"))[0]
    assert out is tiny_model
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no hand words" in messages and "hand_terms" in messages and "'bicycle'" in messages


@pytest.mark.parametrize("field, value, message", [
    ("alpha", 10.5, "alpha must be a number from 0 to 10"),
    ("alpha", -1.0, "alpha must be a number from 0 to 10"),
    ("prompt", "  ", "prompt is empty"),
    ("start_percent", 0.9, "start_percent (0.9) is after end_percent (0.5)"),
    ("end_percent", 1.5, "end_percent must be from 0 to 1"),
])
def test_bad_inputs_name_the_input(comfyui, tiny_model, clip, field, value, message):
    inputs = hand_inputs(**{field: value})
    if field == "start_percent":
        inputs["end_percent"] = 0.5
    for node_id in NODE_IDS:
        node = comfyui.node(node_id)
        checked = {k: inputs[k] for k in ("alpha", "start_percent", "end_percent", "prompt")}
        assert message in node.validate_inputs(**checked)
    with pytest.raises(ValueError) as err:
        comfyui.node("SesaHandHandAttention").execute(model=tiny_model, clip=clip, **inputs)
    assert message in str(err.value)
    assert comfyui.node(NODE_IDS[0]).validate_inputs(alpha=2.0, start_percent=0.0,
                                                     end_percent=1.0, prompt=PROMPT) is True


def test_prompt_must_be_the_encoded_text(comfyui, tiny_model, clip):
    long_prompt = PROMPT + ", " + "a busy street with people " * 15  # two chunks
    with pytest.raises(ValueError, match="prompt tokenizes to 154 tokens but the positive "
                                         "conditioning has 77"):
        comfyui.node("SesaHandHandAttentionSampler").execute(
            model=tiny_model, seed=1, steps=1, cfg=3.0, sampler_name="euler", scheduler="normal",
            positive=conditioning(1), negative=conditioning(2),
            latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0, clip=clip,
            **hand_inputs(prompt=long_prompt))
    # The model-patch node can only see the key length while sampling.
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs(prompt=long_prompt))[0]
    with pytest.raises(ValueError, match="same text that was encoded"):
        sample(patched)


# --- issue 13 item 6: the paper's word preset, and warnings instead of silence

def test_paper_preset_biases_only_the_papers_words(comfyui, ae, clip):
    prompt = "a fist and a thumb, fingers holding a cup in one hand, palm up"
    wide = ae.hand_tokens(clip, prompt, "")
    paper = ae.hand_tokens(clip, prompt, "", preset="paper")
    assert wide.words == ("fist", "thumb", "fingers", "holding", "hand", "palm")
    assert paper.words == ("fingers", "holding", "hand")
    info = comfyui.node("SesaHandHandAttention").GET_NODE_INFO_V1()["input"]["optional"]
    assert info["hand_words"][1]["options"] == ["default", "paper"]
    assert "must be one of default, paper" in comfyui.node("SesaHandHandAttention").validate_inputs(
        hand_words="nltk")


def test_a_patch_without_cond_or_uncond_warns_and_leaves_attention_alone(ae, caplog):
    from comfy.ldm.modules.attention import optimized_attention

    tokens = ae.HandTokens(positions=(3, 8), words=("holding", "hand"), num_keys=77)
    patch = ae.HandAttentionPatch(tokens, 2.0, sigma_start=10.0, sigma_end=1.0, mask=None)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 16, 32, generator=g)
    k, v = (torch.randn(2, 77, 32, generator=g) for _ in range(2))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out = patch(q, k, v, {"n_heads": 4, "sigmas": torch.tensor([5.0])})
    assert torch.equal(out, optimized_attention(q, k, v, 4))
    warnings = [r.getMessage() for r in caplog.records if "cond_or_uncond" in r.getMessage()]
    assert len(warnings) == 1 and "bias is skipped" in warnings[0]  # once per patch


def test_several_positive_conditionings_warn(comfyui, tiny_model, clip, caplog):
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs())[0]
    import nodes

    combined = conditioning(1) + conditioning(3)  # ConditioningCombine: two positive prompts
    with caplog.at_level(logging.WARNING):
        nodes.common_ksampler(patched, 7, 1, 3.0, "euler", "normal", combined, conditioning(2),
                              {"samples": torch.zeros(1, 4, 8, 8)})
    assert any("2 different conditionings" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sample(patched)
    assert not any("different conditionings" in r.getMessage() for r in caplog.records)


def test_a_later_patch_that_overwrites_the_bias_warns(comfyui, tiny_model, clip, caplog):
    patched = comfyui.node("SesaHandHandAttention").execute(
        model=tiny_model, clip=clip, **hand_inputs())[0]
    with caplog.at_level(logging.WARNING):
        sample(patched)
    assert not any("replaced its patch" in r.getMessage() for r in caplog.records)
    later = patched.clone()
    later.set_model_attn2_replace(AddedTerm(), "output", 2, 0)  # e.g. IPAdapter applied after
    with caplog.at_level(logging.WARNING):
        sample(later)
    messages = [r.getMessage() for r in caplog.records if "replaced its patch" in r.getMessage()]
    assert messages and "1 of 4 cross-attention layers" in messages[0]
    assert "('output', 2, 0)" in messages[0] and "apply SesaHand Hand Attention last" in messages[0]


# --- issue 15: families beyond SD1.5, on tiny models built from ComfyUI's own classes

def random_patcher(model, seed: int = 0):
    import comfy.model_patcher

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        # Buffers made with torch.empty (MMDiT's pos_embed) would hold whatever memory held.
        for b in model.diffusion_model.buffers():
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def family_conditioning(seed: int, tokens: int, width: int, pooled: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, width, generator=g),
             {"pooled_output": torch.randn(1, pooled, generator=g)}]]


def family_branches(model, cond, uncond, channels: int, cfg: float = 3.0):
    """The first step's (positive, negative) denoised predictions on an 8x8 latent."""
    import nodes

    return first_step_branches(model, lambda probe: nodes.common_ksampler(
        probe, 7, 1, cfg, "euler", "simple", cond, uncond, {"samples": torch.zeros(2, channels, 8, 8)}))


def family_sample(model, cond, uncond, channels: int):
    import nodes

    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    return nodes.common_ksampler(model, 7, 2, 3.0, "euler", "simple", cond, uncond,
                                 latent)[0]["samples"]


def tokenizer_clip(tokenizer, **encoders):
    """A core CLIP object with a core tokenizer only; ``encoders`` stand for the loaded text
    encoders (SD3: clip_l, clip_g, t5xxl)."""
    import types

    import comfy.sd

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = tokenizer
    clip.tokenizer_options = {}
    if encoders:
        clip.cond_stage_model = types.SimpleNamespace(**encoders)
    return clip


TINY_SDXL = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "channel_mult": [1, 2], "transformer_depth": [0, 2], "transformer_depth_output": [0, 0, 2, 2],
    "transformer_depth_middle": 2, "context_dim": 2048, "use_linear_in_transformer": True,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": 2816,
    "num_head_channels": 16, "use_temporal_attention": False, "use_temporal_resblock": False,
    "image_size": 32, "use_checkpoint": False, "num_classes": "sequential",
}
TINY_FLUX = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2,
    "qkv_bias": True, "guidance_embed": True,
}
TINY_SD35 = {  # SD3.5-style: MMDiT-X image self-attention in block 0
    "in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2,
    "depth": 2, "adm_in_channels": 2048, "pos_embed_max_size": 16, "num_patches": 256,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": 4096, "out_features": 128}},
    "x_block_self_attn_layers": [0], "qk_norm": "rms",
}


@pytest.fixture(scope="module")
def families(comfyui):
    """Tiny random models of each family with the tokenizer and conditioning shapes of their
    real counterparts: ``{name: (model, clip, text tokens, text width, pooled, channels)}``."""
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    sd3_tokenizer = comfy.text_encoders.sd3_clip.SD3Tokenizer()
    return {
        "SDXL": (random_patcher(comfy.supported_models.SDXL(dict(TINY_SDXL)).get_model({})),
                 tokenizer_clip(comfy.sdxl_clip.SDXLTokenizer()), 77, 2048, 1280, 4),
        "Flux": (random_patcher(comfy.supported_models.Flux(dict(TINY_FLUX)).get_model({})),
                 tokenizer_clip(comfy.text_encoders.flux.FluxTokenizer()), 256, 4096, 768, 16),
        "SD3": (random_patcher(comfy.supported_models.SD3(dict(TINY_SD35)).get_model({})),
                tokenizer_clip(sd3_tokenizer, clip_l=True, clip_g=True, t5xxl=True),
                154, 4096, 2048, 16),
    }


FAMILY_PROMPT = "a woman holding a cup with her hand, smiling"


@pytest.mark.parametrize("name", ["SDXL", "Flux", "SD3"])
def test_alpha_zero_is_the_unpatched_model_and_the_negative_branch_is_untouched(
        comfyui, families, name):
    model, clip, tokens, width, pooled, channels = families[name]
    cond, uncond = (family_conditioning(s, tokens, width, pooled) for s in (1, 2))
    node = comfyui.node("SesaHandHandAttention")
    inputs = hand_inputs(prompt=FAMILY_PROMPT, layers="all")
    reference = family_sample(model, cond, uncond, channels)
    off = node.execute(model=model, clip=clip, **{**inputs, "alpha": 0.0})[0]
    assert off is not model and torch.equal(family_sample(off, cond, uncond, channels), reference)

    plain_pos, plain_neg = family_branches(model, cond, uncond, channels)
    patched = node.execute(model=model, clip=clip, **inputs)[0]
    pos, neg = family_branches(patched, cond, uncond, channels)
    assert torch.equal(neg, plain_neg)
    assert not torch.allclose(pos, plain_pos, atol=1e-5) and torch.isfinite(pos).all()


def test_sdxl_clip_l_and_clip_g_share_positions(ae, families):
    _, clip, *_ = families["SDXL"]
    prompt = "(waving:1.2) " + "a crowded market with stalls " * 16 + "and a raised hand"
    tokens = clip.tokenize(prompt, return_word_ids=True)
    assert len(tokens["l"]) == len(tokens["g"]) == 2
    for chunk_l, chunk_g in zip(tokens["l"], tokens["g"]):
        words_l = [(t, w) for t, _, w in chunk_l if w]
        assert words_l == [(t, w) for t, _, w in chunk_g if w]  # g pads with 0, l with the end
    found = ae.hand_tokens(clip, prompt, "")
    assert found.words == ("waving", "hand") and found.num_keys == 154
    assert found.positions[0] == 1 and found.positions[1] > 77
    refiner = tokenizer_clip(type(clip.tokenizer.clip_g)())  # the refiner: CLIP-G only
    refiner.tokenizer.clip_g = refiner.tokenizer
    import comfy.sd1_clip
    import comfy.sdxl_clip

    refiner.tokenizer = comfy.sd1_clip.SD1Tokenizer(clip_name="g",
                                                   tokenizer=comfy.sdxl_clip.SDXLClipGTokenizer)
    assert ae.hand_tokens(refiner, prompt, "").positions == found.positions


def test_sdxl_decoder_keys_include_every_transformer_of_a_block(ae, families):
    model = families["SDXL"][0]
    assert ae.model_family(model) == "unet"
    keys = ae.cross_attention_keys(model, "decoder")
    assert keys == [("output", n, i) for n in (0, 1) for i in (0, 1)]
    assert ("middle", 0, 1) in ae.cross_attention_keys(model, "all")


def test_flux_positions_are_t5_positions(ae, families):
    model, clip, *_ = families["Flux"]
    assert ae.model_family(model) == "flux"
    found = ae.hand_tokens(clip, FAMILY_PROMPT + ", (fingers:1.3) spread", "", family="flux")
    chunk = clip.tokenize(FAMILY_PROMPT + ", (fingers:1.3) spread", return_word_ids=True)["t5xxl"]
    assert len(chunk) == 1 and found.num_keys == len(chunk[0]) == 256
    vocab = clip.tokenizer.t5xxl.inv_vocab
    pieces = [vocab[chunk[0][p][0]] for p in found.positions]
    assert "".join(pieces).replace("\u2581", " ").split() == ["holding", "hand", "smiling",
                                                                  "fingers"]
    assert chunk[0][found.positions[-1]][1] == pytest.approx(1.3)


def test_sd3_positions_follow_the_clip_then_t5_layout(ae, families):
    _, clip, *_ = families["SD3"]
    found = ae.hand_tokens(clip, FAMILY_PROMPT, "", family="sd3")
    tokens = clip.tokenize(FAMILY_PROMPT, return_word_ids=True)
    clip_part = [p for p in found.positions if p < 77]
    t5_part = [p - 77 for p in found.positions if p >= 77]
    assert found.num_keys == 77 + len(tokens["t5xxl"][0]) == 154
    assert clip_part == [3, 8, 10]  # <start> a woman holding a cup with her hand , smiling
    vocab = clip.tokenizer.t5xxl.inv_vocab
    assert [vocab[tokens["t5xxl"][0][p][0]] for p in t5_part] == ["\u2581holding", "\u2581hand",
                                                                     "\u2581smiling"]
    t5_only = tokenizer_clip(clip.tokenizer, clip_l=None, clip_g=None, t5xxl=True)
    assert ae.hand_tokens(t5_only, FAMILY_PROMPT, "", family="sd3").positions == tuple(t5_part)
    clip_only = tokenizer_clip(clip.tokenizer, clip_l=True, clip_g=True, t5xxl=None)
    assert ae.hand_tokens(clip_only, FAMILY_PROMPT, "", family="sd3").positions == (3, 8, 10)


def test_joint_override_biases_image_queries_on_hand_keys(ae):
    """The override of one Flux-layout call: text first, then the image; heads-first layout."""
    from comfy.ldm.modules.attention import attention_pytorch

    tokens = ae.HandTokens(positions=(1, 3), words=("holding", "hand"), num_keys=5)
    owner = ae.JointHandAttention(tokens, 2.0, 10.0, 0.0, None, "flux")
    call = ae._JointCall(owner, positive=[0], chunks=2, registers=0, text=5, grid=(2, 3),
                         previous=None)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 11, 8, generator=g) for _ in range(3))  # 2 chunks of 2
    out = call(attention_pytorch, q, k, v, 2, skip_reshape=True, transformer_options={})
    plain = attention_pytorch(q, k, v, 2, skip_reshape=True)
    # the negative chunk: the layer's own function on its rows
    assert torch.equal(out[2:], attention_pytorch(q[2:], k[2:], v[2:], 2, skip_reshape=True))
    logits = q[:2] @ k[:2].transpose(-1, -2) / math.sqrt(8)
    logits[:, :, 5:, [1, 3]] += 2.0
    expected = (logits.softmax(-1) @ v[:2]).transpose(1, 2).reshape(2, 11, 16)
    torch.testing.assert_close(out[:2], expected)
    text_rows = plain[:2].reshape(2, 11, 2, 8)[:, :5]
    torch.testing.assert_close(out[:2].reshape(2, 11, 2, 8)[:, :5], text_rows)
    # Not this call's joint sequence (SD3.5's image self-attention): the layer's own attention.
    q6, k6, v6 = (t[:, :, 5:] for t in (q, k, v))
    assert torch.equal(call(attention_pytorch, q6, k6, v6, 2, skip_reshape=True),
                       attention_pytorch(q6, k6, v6, 2, skip_reshape=True))


def test_dit_models_need_all_layers_and_the_encoded_prompt(comfyui, families):
    model, clip, tokens, width, pooled, channels = families["Flux"]
    node = comfyui.node("SesaHandHandAttention")
    with pytest.raises(ValueError, match="Flux is a DiT model: it has no decoder layers; set "
                                         "layers to 'all'"):
        node.execute(model=model, clip=clip, **hand_inputs(prompt=FAMILY_PROMPT))
    long_prompt = FAMILY_PROMPT + " in a garden" * 80
    patched = node.execute(model=model, clip=clip,
                           **hand_inputs(prompt=long_prompt, layers="all"))[0]
    cond, uncond = (family_conditioning(s, tokens, width, pooled) for s in (1, 2))
    with pytest.raises(ValueError, match="but the positive conditioning has 256"):
        family_sample(patched, cond, uncond, channels)


def test_unsupported_families_are_named(comfyui, ae, clip):
    import types

    class WAN21_T2V:  # noqa: N801 - ComfyUI's configuration class name
        pass

    video = types.SimpleNamespace(model=types.SimpleNamespace(model_config=WAN21_T2V()),
                                  get_model_object=lambda name: torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not support WAN21_T2V models .Linear.: it works "
                                         "on SD1.x, SD2.x, SDXL"):
        comfyui.node("SesaHandHandAttention").execute(model=video, clip=clip, **hand_inputs())
