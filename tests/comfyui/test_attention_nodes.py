"""Hand attention (AE) nodes inside a real ComfyUI (in-process, CPU): a tiny random
SD1.5-shaped UNet, ComfyUI's SD1 tokenizer, and core's sampler.

What is checked: alpha = 0 reproduces the unpatched model exactly; the bias changes the
positive branch and leaves the negative branch bit-identical; the input MODEL is never
changed; existing attn2 replace patches are wrapped, not overwritten; bad inputs get messages
naming the input to change.
"""

from __future__ import annotations

import importlib
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

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
    import comfy.model_patcher
    import comfy.supported_models

    model = comfy.supported_models.SD15(dict(TINY_UNET)).get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


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


def branches(model, **kwargs):
    """The first step's (positive, negative) denoised predictions, recorded after CFG."""
    recorded = []

    def record(args):
        recorded.append((args["cond_denoised"].clone(), args["uncond_denoised"].clone()))
        return args["denoised"]

    probe = model.clone()
    probe.set_model_sampler_post_cfg_function(record)
    sample(probe, steps=1, **kwargs)
    return recorded[0]


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


# --- the real server: Load Checkpoint -> SesaHand attention nodes -> VAE Decode -> Save Image

def attention_workflow(seed: int, alpha: float, layers: str) -> dict:
    """One shared prompt text into CLIP Text Encode and both SesaHand nodes; three images:
    the Hand-Attention Sampler, Hand Attention + core KSampler, and plain core KSampler."""
    sampling = {"seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
                "scheduler": "normal", "denoise": 1.0}
    hand = {"clip": ["1", 1], "prompt": ["2", 0], "hand_terms": "a cup", "alpha": alpha,
            "layers": layers, "start_percent": 0.0, "end_percent": 1.0}
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": PROMPT + ", a cup"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "SesaHandHandAttentionSampler",
              "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                         "latent_image": ["5", 0], **sampling, **hand}},
        "7": {"class_type": "SesaHandHandAttention", "inputs": {"model": ["1", 0], **hand}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["7", 0], "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0],
                                                   **sampling}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0],
                                                   **sampling}},
    }
    for n, (latent, name) in enumerate(((["6", 0], "sampler"), (["8", 0], "patched"),
                                        (["9", 0], "plain"))):
        decode, save = str(10 + 2 * n), str(11 + 2 * n)
        graph[decode] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["1", 2]}}
        graph[save] = {"class_type": "SaveImage",
                       "inputs": {"images": [decode, 0], "filename_prefix": name}}
    return graph


@pytest.fixture(scope="module")
def checkpoints(comfyui, load_local, tmp_path_factory):
    """A folder holding the tiny random SD1.5 checkpoint (``tiny_sd15.safetensors``); its UNet
    has cross-attention in input block 1 and the middle block only."""
    folder = tmp_path_factory.mktemp("attention_checkpoints")
    load_local("tools/tiny_sd15.py").build_checkpoint(folder / "tiny_sd15.safetensors")
    return folder


def test_server_runs_the_attention_workflow(comfyui, load_local, checkpoints, tmp_path):
    served = load_local("tests/comfyui/test_server.py")
    args = served.comfy_args(comfyui, tmp_path, checkpoints=checkpoints)

    def run(graph) -> dict:
        status, body = served.request(base + "/prompt", {"prompt": graph})
        assert status == 200, body
        return served.wait_for_prompt(base, body["prompt_id"])

    with served.running_server(comfyui, args, tmp_path) as base:
        status, info = served.request(base + "/object_info")
        assert status == 200 and set(NODE_IDS) <= set(info)

        bad = attention_workflow(3, 12.0, "all")
        for node in ("9", "14", "15"):  # without the plain branch, no output is valid
            del bad[node]
        status, body = served.request(base + "/prompt", {"prompt": bad})
        assert status == 400 and {"6", "7"} <= set(body["node_errors"])
        assert "alpha must be a number from 0 to 10" in json.dumps(body["node_errors"])

        entry = run(attention_workflow(3, 2.0, "all"))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-4000:]
        images = {}
        for node, name in (("11", "sampler"), ("13", "patched"), ("15", "plain")):
            saved = entry["outputs"][node]["images"][0]
            path = tmp_path / "output" / saved["subfolder"] / saved["filename"]
            images[name] = np.asarray(Image.open(path), dtype=np.float32) / 255

        # This UNet has no cross-attention in its decoder.
        failed = run(attention_workflow(4, 2.0, "decoder"))
        assert failed["status"]["status_str"] == "error"
        assert "set layers to 'all'" in json.dumps(failed["status"]["messages"])
    for image in images.values():
        assert image.shape == (64, 64, 3) and image.std() > 0.02  # not a constant (NaN) image
    assert np.array_equal(images["sampler"], images["patched"])  # both nodes bias alike
    assert np.abs(images["sampler"] - images["plain"]).mean() > 0.002  # the bias changed the image
