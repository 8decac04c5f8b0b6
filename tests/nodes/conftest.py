"""Fixtures of the node tests (the pack's nodes inside an in-process ComfyUI, CPU). The
ComfyUI fixtures themselves (``comfyui``, ``tiny_models``, ...) are in tests/plugins/comfyui.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def sd15_shape() -> dict:
    """A small SD1.5-layout ControlNet (cldm keyword arguments): SD1.5's levels, blocks and
    transformer placement at 32 channels, for ``tools/tiny_sd15.py``'s ``controlnet_module``."""
    return {"model_channels": 32, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2] * 4,
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1}


@pytest.fixture(scope="session")
def sd15_model(comfyui):
    """``sd15_model()``: a new stand-in for what samplers pass to ``ControlBase.pre_run``, an
    SD1.5 model config and its sampling (``model_config``, ``model_sampling``)."""

    def make() -> SimpleNamespace:
        import comfy.model_base
        import comfy.supported_models

        config = comfy.supported_models.SD15({"context_dim": 768, "model_channels": 320,
                                              "use_linear_in_transformer": False, "adm_in_channels": None,
                                              "use_temporal_attention": False})
        sampling = comfy.model_base.model_sampling(config, comfy.model_base.ModelType.EPS)
        return SimpleNamespace(model_config=config, model_sampling=sampling)

    return make
