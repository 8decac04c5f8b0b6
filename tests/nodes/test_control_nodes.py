"""SesaHand ControlNet in a real ComfyUI (in-process, CPU): loader, structural-fusion forward,
ControlBase lifecycle, Apply node, sampling. The /prompt run through the server is in
tests/server/test_control_workflow.py.

Models are tiny random-weight SD1.5-format files built once per session (``tools/tiny_sd15.py``).
"""

from __future__ import annotations

import copy
import importlib
import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfyui

NODE_IDS = ("SesaHandLoadControlNet", "SesaHandApplyHandControl")
#: A small SD1.5-shaped ControlNet: 4 levels, 2 res blocks each, transformers on the first 3.
@pytest.fixture(scope="module")
def tiny(tiny_models, hand_controlnet):
    """The tier's tiny SD1.5 files (checkpoints / controlnet / sesahand folders known to ComfyUI
    and to the shared server) with the shared SesaHand ControlNet ``hand_cn.safetensors``, plus
    this module's own: one lacking a weight, an SD2.x-shaped one and a Flux-shaped one."""
    builder, cn = tiny_models.builder, tiny_models.controlnet
    builder.build_controlnet(cn / "missing.safetensors",
                             drop=("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",))
    save_file({"control_model." + k: v for k, v in builder.random_weights(
        builder.controlnet_module(context_dim=1024, use_linear_in_transformer=True).state_dict(),
        "", 0, torch.float16).items()}, str(cn / "sd2.safetensors"))
    flux_keys = ("controlnet_blocks.0.weight", "controlnet_x_embedder.weight")
    save_file({k: torch.zeros(2, 2) for k in flux_keys}, str(cn / "flux.safetensors"))
    return tiny_models


@pytest.fixture(scope="module")
def cm(comfyui):
    """The pack's ``nodes.control_model`` module as ComfyUI loaded it."""
    return importlib.import_module(comfyui.pack_module.__name__ + ".nodes.control_model")


@pytest.fixture(scope="module")
def small_cldm(tiny, sd15_shape):
    """The small SD1.5-shaped cldm ControlNet (float32, CPU) with random weights."""
    cldm = tiny.builder.controlnet_module(device="cpu", **sd15_shape)
    cldm.load_state_dict(tiny.builder.random_weights(cldm.state_dict(), "", 5))
    return cldm.eval()


def make_controls(cm, cldm):
    """(SesaHand ControlNet, core ControlNet) over the same cldm module."""
    import comfy.controlnet
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(cldm, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    core = comfy.controlnet.ControlNet(cldm, load_device=torch.device("cpu"))
    return cm.SesaHandControlNet(patcher, None), core


@pytest.fixture(scope="module")
def run_control(sd15_model):
    """``run_control(control, x, hint_size=None, seed=0, batched_number=2)``: pre_run +
    get_control at sigma 5 with random context; returns the merged control dict."""

    def run(control, x, hint_size=None, seed=0, batched_number=2):
        g = torch.Generator().manual_seed(seed)
        model = sd15_model()
        control.pre_run(model, model.model_sampling.percent_to_sigma)
        cond = {"c_crossattn": torch.randn(x.shape[0], 77, 768, generator=g)}
        try:
            with torch.no_grad():
                return control.get_control(x, torch.full((x.shape[0],), 5.0), cond, batched_number, {})
        finally:
            control.cleanup()

    return run


def with_hint(control, size=(128, 128), strength=1.0, percent=(0.0, 1.0), seed=1):
    g = torch.Generator().manual_seed(seed)
    return control.copy().set_cond_hint(torch.rand(1, 3, *size, generator=g), strength, percent)


def latent(size=16, batch=2, seed=2):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def flat(control):
    return control["output"] + control["middle"]


def test_schemas_follow_the_pack_conventions(comfyui, tiny):
    for node_id in NODE_IDS:
        info = comfyui.node(node_id).GET_NODE_INFO_V1()
        assert info["category"] == "SesaHand/control" and info["display_name"].startswith("SesaHand ")
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, (_, options) in inputs.items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_loader_lists_controlnets_of_both_folders(comfyui, tiny, cm):
    names = cm.controlnet_names()
    assert {"plain.safetensors", "hand_cn.safetensors"} <= set(names)
    assert not [n for n in names if n.startswith("anny-")]  # other sesahand-folder files are not offered
    node = comfyui.node("SesaHandLoadControlNet")
    assert node.validate_inputs(control_net_name="hand_cn.safetensors") is True
    assert "choose a file from the list" in node.validate_inputs(control_net_name="nope.safetensors")


def test_loader_reads_sesahand_metadata(comfyui, tiny, cm):
    node = comfyui.node("SesaHandLoadControlNet")
    control, alpha, style, layers = node.execute(control_net_name="hand_cn.safetensors")
    assert isinstance(control, cm.SesaHandControlNet)
    assert (control.fusion.fusion, control.fusion.w, alpha, style) == ("tokens", 1.0, 2.5, "mesh")
    assert control.fusion.hierarchy == "sum" and layers == "decoder"  # a file without these keys
    plain, alpha, style, layers = node.execute(control_net_name="plain.safetensors")
    assert plain.fusion == cm.FusionSettings("tokens", 0.0) and (alpha, style, layers) == (2.0, "", "decoder")
    assert len(plain.control_model.input_blocks) == 2  # the tiny one-level shape


def test_diffusers_layout_gives_the_diffusers_residuals(comfyui, tiny, cm):
    pytest.importorskip("diffusers")
    path = tiny.controlnet / "diffusers.safetensors"
    model = tiny.builder.build_diffusers_controlnet(path)
    control = comfyui.node("SesaHandLoadControlNet").execute(control_net_name=path.name)[0]
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    context, t = torch.randn(2, 77, 768, generator=g), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        ours = control.control_model(x=x, hint=hint, timesteps=t, context=context)
        down, mid = model(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    assert len(ours["output"]) == len(down) == 2
    for a, b in zip(flat(ours), [*down, mid]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, message", [
    ("missing.safetensors", "lacks weight 'input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight'"),
    ("sd2.safetensors", "is an SD20 ControlNet, not SD1.5"),
    ("flux.safetensors", "is a Flux \\(InstantX\\) ControlNet, not an SD1.5 ControlNet"),
])
def test_loader_refuses_bad_files_naming_the_input(comfyui, tiny, name, message):
    with pytest.raises(ValueError, match=message) as info:
        comfyui.node("SesaHandLoadControlNet").execute(control_net_name=name)
    assert f"control_net_name {name!r}" in str(info.value)


def test_w0_reproduces_core_residuals_exactly(cm, small_cldm, run_control):
    ours, core = make_controls(cm, small_cldm)
    x = latent()
    mine, reference = flat(run_control(with_hint(ours), x)), flat(run_control(with_hint(core), x))
    assert len(mine) == 13
    assert all(torch.equal(a, b) for a, b in zip(mine, reference))


def test_residuals_have_sd15_count_and_shapes(cm, small_cldm, monkeypatch, run_control):
    recorded = []

    class Recording(cm.SelfAttentionMaps):
        def structure(self):
            recorded.append(self.layers)
            return super().structure()

    monkeypatch.setattr(cm, "SelfAttentionMaps", Recording)
    ours, _ = make_controls(cm, small_cldm)
    ours.fusion = cm.FusionSettings("gate", 1.0)
    out = run_control(with_hint(ours), latent(size=32))
    shapes = [tuple(r.shape) for r in out["output"]]
    # SD1.5's pattern at 1/10 width: 320 x3 | 320, 640 x2 | 640, 1280 x2 | 1280 x3 (64, 32, 16, 8)
    assert shapes == ([(2, 32, 32, 32)] * 3 + [(2, 32, 16, 16)] + [(2, 64, 16, 16)] * 2
                      + [(2, 64, 8, 8)] + [(2, 128, 8, 8)] * 2 + [(2, 128, 4, 4)] * 3)
    assert [tuple(r.shape) for r in out["middle"]] == [(2, 128, 4, 4)]
    # self-attention maps at every token grid: 2 layers at 32, 16, 8; the middle block at 4
    assert recorded == [{(32, 32): 2, (16, 16): 2, (8, 8): 2, (4, 4): 1}]


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_fusion_refines_the_right_residuals_linearly_in_w(cm, small_cldm, fusion, run_control):
    ours, _ = make_controls(cm, small_cldm)
    x = latent()
    plain = flat(run_control(with_hint(ours), x))
    results = {}
    for w in (1e-30, 0.5, 1.0):  # 1e-30: the SF path with (practically) no refinement
        ours.fusion = cm.FusionSettings(fusion, w)
        results[w] = flat(run_control(with_hint(ours), x))
    for a, b in zip(results[1e-30], plain):  # the walker reproduces core's forward
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    changed = [not torch.allclose(a, b, atol=1e-4) for a, b in zip(results[1.0], plain)]
    assert changed == ([False] * 12 + [True] if fusion == "tokens" else [True] * 13)
    for half, zero, one in zip(results[0.5], results[1e-30], results[1.0]):  # the zero convs are affine
        torch.testing.assert_close(half, (zero + one) / 2, rtol=1e-4, atol=1e-5)


def test_apply_node_sets_the_chunk_and_keeps_the_file_s_hierarchy(comfyui, cm, small_cldm, run_control):
    ours, _ = make_controls(cm, small_cldm)
    ours.fusion = cm.FusionSettings("tokens", 1.0, "sum")
    apply = comfyui.node("SesaHandApplyHandControl")
    cond = [[torch.zeros(1, 77, 768), {}]]
    inputs = dict(positive=cond, negative=cond, control_net=ours, image=torch.rand(1, 128, 128, 3), strength=1.0,
                  start_percent=0.0, end_percent=1.0, fusion="gate", fusion_weight=0.5)
    x = latent()
    results = {}
    for chunk in (0, 4096):
        control = apply.execute(**inputs, attention_chunk=chunk)[0][0][1]["control"]
        assert control.fusion == cm.FusionSettings("gate", 0.5, "sum") and control.chunk_elements == (chunk or None)
        assert control.copy().chunk_elements == control.chunk_elements
        results[chunk] = flat(run_control(control, x))
    for a, b in zip(results[0], results[4096]):  # the chunk size never changes the result (but rounding)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    with pytest.raises(ValueError, match="attention_chunk must be an integer from 0"):
        apply.execute(**inputs, attention_chunk=-1)


def test_lifecycle_copy_models_memory_cleanup(cm, small_cldm, run_control):
    ours, core = make_controls(cm, small_cldm)
    ours.fusion = cm.FusionSettings("gate", 1.0)
    c = with_hint(ours).set_previous_controlnet(with_hint(core))
    assert isinstance(c, cm.SesaHandControlNet) and c.fusion == ours.fusion
    assert c.control_model_wrapped is ours.control_model_wrapped  # copies share the model
    assert c.get_models() == [core.control_model_wrapped, ours.control_model_wrapped]
    assert c.inference_memory_requirements(torch.float32) > 0
    c.fusion = cm.FusionSettings("gate", 0.0)
    assert c.inference_memory_requirements(torch.float32) == 0
    run_control(c, latent())
    assert c.cond_hint is None and c.model_sampling_current is None and c.timestep_range is None
    assert c.previous_controlnet.cond_hint is None


def test_stacks_with_core_apply_controlnet_both_ways(comfyui, cm, small_cldm, run_control):
    import nodes as comfy_nodes

    ours, core = make_controls(cm, small_cldm)
    ours.fusion = cm.FusionSettings("tokens", 1.0)
    g = torch.Generator().manual_seed(4)
    image = torch.rand(1, 128, 128, 3, generator=g)
    cond = [[torch.randn(1, 77, 768, generator=g), {}]]
    apply = comfyui.node("SesaHandApplyHandControl")
    x = latent()

    def sesahand(pos, neg, strength):
        return apply.execute(positive=pos, negative=neg, control_net=ours, image=image, strength=strength,
                             start_percent=0.0, end_percent=1.0, fusion="from file", fusion_weight=1.0)

    def core_apply(pos, neg, strength):
        return comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, core, image, strength,
                                                                      0.0, 1.0)

    alone_ours = flat(run_control(sesahand(cond, cond, 0.7)[0][0][1]["control"], x))
    alone_core = flat(run_control(core_apply(cond, cond, 0.4)[0][0][1]["control"], x))
    for first, second in ((core_apply, sesahand), (sesahand, core_apply)):
        positive, negative = second(*first(cond, cond, 0.4 if first is core_apply else 0.7),
                                    0.7 if second is sesahand else 0.4)
        top = positive[0][1]["control"]
        assert negative[0][1]["control"] is top and top.previous_controlnet is not None
        assert cond[0][1] == {}  # the input conditioning is not changed
        for a, b, c in zip(flat(run_control(top, x)), alone_ours, alone_core):
            torch.testing.assert_close(a, b + c, rtol=1e-5, atol=1e-6)


def test_mask_timestep_range_and_resized_hint(cm, small_cldm, caplog, run_control):
    ours, _ = make_controls(cm, small_cldm)
    x = latent()
    full = flat(run_control(with_hint(ours), x))
    masked = with_hint(ours)
    masked.mask = torch.zeros(1, 128, 128)
    masked.mask[:, :64] = 1.0  # the top half
    out = flat(run_control(masked, x))
    for a, b in zip(out, full):
        h = a.shape[-2]
        torch.testing.assert_close(a[..., : h // 2, :], b[..., : h // 2, :])
        assert a[..., h // 2:, :].abs().max() == 0
    late = with_hint(ours, percent=(0.9, 1.0))  # sigma 5 is early in sampling: no control yet
    assert run_control(late, x) is None
    with caplog.at_level(logging.WARNING):
        wide = flat(run_control(with_hint(ours, size=(96, 160)), x))
    assert "no longer line up" in caplog.text and "Render Conditions" in caplog.text
    assert [r.shape for r in wide] == [r.shape for r in full]


def test_refuses_sdxl_models_and_prompts_naming_the_input(comfyui, cm, small_cldm, sd15_model):
    import comfy.supported_models

    ours, core = make_controls(cm, small_cldm)
    sdxl = SimpleNamespace(model_config=comfy.supported_models.SDXL.__new__(comfy.supported_models.SDXL),
                           model_sampling=sd15_model().model_sampling)
    with pytest.raises(ValueError, match="sampled model is SDXL.*ckpt_name"):
        with_hint(ours).pre_run(sdxl, sdxl.model_sampling.percent_to_sigma)
    apply = comfyui.node("SesaHandApplyHandControl")
    inputs = dict(control_net=ours, image=torch.rand(1, 64, 64, 3), strength=1.0, start_percent=0.0,
                  end_percent=1.0, fusion="from file", fusion_weight=1.0)
    sdxl_cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    sd15_cond = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(ValueError, match="positive: the prompt is encoded 2048 wide.*ckpt_name"):
        apply.execute(positive=sdxl_cond, negative=sd15_cond, **inputs)
    with pytest.raises(ValueError, match="control_net: got a ControlNet; connect SesaHand Load ControlNet"):
        apply.execute(positive=sd15_cond, negative=sd15_cond, **{**inputs, "control_net": core})
    with pytest.raises(ValueError, match="image has 4 channels"):
        apply.execute(positive=sd15_cond, negative=sd15_cond, **{**inputs, "image": torch.rand(1, 8, 8, 4)})
    unchanged = apply.execute(positive=sd15_cond, negative=sd15_cond, **{**inputs, "strength": 0.0})
    assert unchanged[0] is sd15_cond and unchanged[1] is sd15_cond


def test_sampling_with_the_control_leaves_the_model_alone(comfyui, tiny):
    import nodes as comfy_nodes

    model, clip, _ = comfy_nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")
    weights = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    options, patches = copy.deepcopy(model.model_options), dict(model.patches)
    encode = comfy_nodes.CLIPTextEncode()
    positive, negative = encode.encode(clip, "a hand")[0], encode.encode(clip, "")[0]
    control = comfyui.node("SesaHandLoadControlNet").execute(control_net_name="hand_cn.safetensors")[0]
    image = torch.zeros(1, 64, 64, 3)
    image[:, 16:48, 24:40] = 1.0
    positive_c, negative_c = comfyui.node("SesaHandApplyHandControl").execute(
        positive=positive, negative=negative, control_net=control, image=image, strength=1.0,
        start_percent=0.0, end_percent=1.0, fusion="from file", fusion_weight=1.0)
    empty = {"samples": torch.zeros(1, 4, 8, 8)}

    def sample(pos, neg):
        return comfy_nodes.common_ksampler(model, 3, 2, 4.0, "euler", "normal", pos, neg, empty)[0]["samples"]

    with_control, without = sample(positive_c, negative_c), sample(positive, negative)
    assert torch.isfinite(with_control).all() and not torch.allclose(with_control, without)
    assert model.model_options == options and model.patches == patches
    assert all(torch.equal(v, weights[k]) for k, v in model.model.diffusion_model.state_dict().items())
