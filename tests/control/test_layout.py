"""ControlNet key layouts (sesahand.control.layout): one mapping for the loader's diffusers ->
original conversion and for training's export/init, exact both ways, and what a file holds.
The full SD1.5 key set is checked against diffusers' converter in tests/train/test_export.py."""

from __future__ import annotations

import pytest
import torch

from sesahand.control import layout

#: A tiny diffusers ControlNet's keys: 2 levels of 2 res blocks (transformers and a
#: downsampler on the first), a middle block, 2 condition-encoder blocks.
DIFFUSERS_KEYS = [
    "conv_in.weight", "time_embedding.linear_1.weight", "time_embedding.linear_2.bias",
    "controlnet_cond_embedding.conv_in.weight", "controlnet_cond_embedding.blocks.0.weight",
    "controlnet_cond_embedding.blocks.1.bias", "controlnet_cond_embedding.conv_out.weight",
    "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.1.conv2.bias",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.downsamplers.0.conv.weight", "down_blocks.1.resnets.0.conv_shortcut.weight",
    "down_blocks.1.resnets.1.time_emb_proj.weight", "mid_block.resnets.0.norm2.weight",
    "mid_block.attentions.0.proj_out.bias", "mid_block.resnets.1.conv1.weight",
    *[f"controlnet_down_blocks.{i}.weight" for i in range(6)], "controlnet_mid_block.bias",
]
EXPECTED = {
    "conv_in.weight": "input_blocks.0.0.weight",
    "controlnet_cond_embedding.conv_out.weight": "input_hint_block.6.weight",
    "controlnet_cond_embedding.blocks.1.bias": "input_hint_block.4.bias",
    "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight":
        "input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
    "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
    "mid_block.resnets.1.conv1.weight": "middle_block.2.in_layers.2.weight",
    "controlnet_down_blocks.5.weight": "zero_convs.5.0.weight",
    "controlnet_mid_block.bias": "middle_block_out.0.bias",
}


def tiny_diffusers():
    return {key: torch.full((1,), float(i)) for i, key in enumerate(DIFFUSERS_KEYS)}


def test_names_are_the_original_layout():
    names = layout.original_names(DIFFUSERS_KEYS)
    assert names.keys() == set(DIFFUSERS_KEYS) and len(set(names.values())) == len(DIFFUSERS_KEYS)
    assert {k: names[k] for k in EXPECTED} == EXPECTED


def test_loader_conversion_and_export_map_are_one_mapping():
    """Original -> diffusers (training's init reading an exported file) -> original (the
    loader's conversion of a diffusers file) gives back every tensor under its name."""
    diffusers = tiny_diffusers()
    original = layout.diffusers_to_original(diffusers)
    prefixed = {layout.CONTROL_PREFIX + k: v for k, v in original.items()}
    assert layout.layout(prefixed) == layout.layout(original) == "original"
    back = layout.original_to_diffusers(layout.unprefixed(prefixed), DIFFUSERS_KEYS)
    assert back.keys() == diffusers.keys() and all(back[k] is diffusers[k] for k in back)
    again = layout.diffusers_to_original(back)
    assert again.keys() == original.keys() and all(again[k] is original[k] for k in again)


def test_unknown_diffusers_keys_are_left_out(caplog):
    sd = {**tiny_diffusers(), "task_embedding": torch.zeros(1)}
    assert "task_embedding" not in layout.original_names(sd)
    assert len(layout.diffusers_to_original(sd)) == len(DIFFUSERS_KEYS)
    assert "1 keys not used, first task_embedding" in caplog.text
    with pytest.raises(KeyError):
        layout.original_key("down_blocks.0.resnets.0.bogus.weight", 2, 2)


def test_other_files_are_named():
    assert layout.layout(tiny_diffusers()) == "diffusers"
    flux = {"controlnet_x_embedder.weight": torch.zeros(1)}
    assert layout.layout(flux) is None
    assert layout.other_family(flux) == "a Flux (InstantX) ControlNet"
    assert layout.other_family({"secret.key": torch.zeros(1)}) == "not a ControlNet (first key: 'secret.key')"
