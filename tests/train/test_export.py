"""ControlNet export (sesahand.train.export): original key layout checked against diffusers' own
converter, exact round trips (our inverse, diffusers from_single_file, build_controlnet), the
SesaHand header, atomic writes. Loading in ComfyUI is in tests/nodes/test_train_export.py.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sesahand.control import layout, read_control_metadata  # noqa: E402
from sesahand.train import export as te  # noqa: E402
from sesahand.train import model as tm  # noqa: E402

METADATA = {"fusion": "gate", "w": 1.0, "hierarchy": "balanced", "alpha": 2.0, "attention_layers": "all",
            "render_style": "mesh", "config_hash": "abc123"}


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.fixture()
def controlnet(unet):
    """A ControlNet of the UNet with every weight random (no zero block hides a misplaced key)."""
    cn = tm.build_controlnet(unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cn.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return cn


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sd15_names_agree_with_diffusers_own_converter():
    """Every weight of a full SD1.5 ControlNet: our original name, read back by diffusers'
    original -> diffusers converter, gives the weight's diffusers name."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    with torch.device("meta"):
        sd15 = ControlNetModel()  # the defaults are SD1.5's
    keys = list(sd15.state_dict())
    names = layout.original_names(keys)
    assert len(set(names.values())) == len(keys) == 340
    converted = convert_controlnet_checkpoint({"control_model." + o: d for d, o in names.items()}, sd15.config)
    assert {k: v for k, v in converted.items() if v is not None} == {d: d for d in keys}
    assert names["controlnet_cond_embedding.conv_out.weight"] == "input_hint_block.14.weight"
    assert names["down_blocks.3.resnets.1.norm2.bias"] == "input_blocks.11.0.out_layers.0.bias"
    assert names["controlnet_down_blocks.11.weight"] == "zero_convs.11.0.weight"


def test_export_round_trips_exactly_with_the_header(controlnet, tmp_path):
    path = te.export_controlnet(controlnet, tmp_path / "hand.safetensors", METADATA)
    assert path == tmp_path / "hand.safetensors" and [p.name for p in tmp_path.iterdir()] == ["hand.safetensors"]
    stored = load_file(str(path))
    assert all(k.startswith("control_model.") for k in stored) and "control_model.zero_convs.0.0.weight" in stored
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["sesahand.config_hash"] == "abc123"
    settings = read_control_metadata(path)
    assert (settings.fusion.fusion, settings.fusion.w, settings.fusion.hierarchy) == ("gate", 1.0, "balanced")
    assert (settings.alpha, settings.attention_layers, settings.render_style) == (2.0, "all", "mesh")
    back = te.original_to_diffusers(stored, controlnet.config, path.name)
    assert states_equal(back, controlnet.state_dict())


def test_diffusers_from_single_file_reads_the_export(controlnet, tmp_path):
    """diffusers' own single-file loader (config from a saved folder, offline) gets the same weights."""
    path = te.export_controlnet(controlnet, tmp_path / "hand.safetensors", METADATA)
    folder = te.save_diffusers(controlnet, tmp_path / "diffusers")
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "ControlNetModel"
    loaded = ControlNetModel.from_single_file(str(path), config=str(folder), local_files_only=True)
    assert states_equal(loaded.state_dict(), controlnet.state_dict())


def test_build_controlnet_starts_from_each_layout(unet, controlnet, tmp_path):
    exported = te.export_controlnet(controlnet, tmp_path / "hand.safetensors", METADATA)
    folder = te.save_diffusers(controlnet, tmp_path / "diffusers")
    flat = tmp_path / "diffusers_layout.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(flat))
    bare = tmp_path / "unprefixed.safetensors"
    save_file(te.diffusers_to_original(controlnet), str(bare))
    for init in (exported, folder, flat, bare):
        assert states_equal(tm.build_controlnet(unet, init).state_dict(), controlnet.state_dict()), init.name


def test_build_controlnet_refuses_other_files(unet, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tm.build_controlnet(unet, tmp_path / "nope.safetensors")
    save_file({"double_blocks.0.weight": torch.zeros(2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(ValueError, match="not a ControlNet in the original or diffusers layout"):
        tm.build_controlnet(unet, tmp_path / "flux.safetensors")
    torch.manual_seed(0)
    wider = UNet2DConditionModel(sample_size=8, block_out_channels=(64, 64), layers_per_block=2,
                                 cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    te.export_controlnet(tm.build_controlnet(wider), tmp_path / "wide.safetensors", METADATA)
    with pytest.raises(ValueError, match=r"weight 'conv_in.weight' is \(64, 4, 3, 3\), this SD1.5 UNet needs "
                                         r"\(32, 4, 3, 3\)"):
        tm.build_controlnet(unet, tmp_path / "wide.safetensors")


@pytest.mark.parametrize("change, message", [
    ({"fusion": "matrix"}, "fusion 'matrix' is unknown"),
    ({"w": 2.0}, "w must be a number in \\[0, 1\\]"),
    ({"alpha": -1.0}, "sesahand.alpha = -1.0 must be >= 0"),
    ({"render_style": "sketch"}, "render_style = 'sketch' is unknown"),
    ({"attention_layers": "encoder"}, "attention_layers = 'encoder' is unknown"),
    ({"hierarchy": "mean"}, "hierarchy 'mean' is unknown"),
    ({"config_hash": ""}, "config_hash must be a non-empty string"),
    ({"extra": 1}, "unknown \\['extra'\\]"),
])
def test_bad_metadata_is_refused_and_nothing_is_written(controlnet, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        te.export_controlnet(controlnet, tmp_path / "hand.safetensors", {**METADATA, **change})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(controlnet, tmp_path, monkeypatch):
    path = te.export_controlnet(controlnet, tmp_path / "hand.safetensors", METADATA)
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        te.export_controlnet(controlnet, path, {**METADATA, "w": 0.5})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["hand.safetensors"]
    with pytest.raises(ValueError, match="must end in .safetensors"):
        te.export_controlnet(controlnet, tmp_path / "hand.ckpt", METADATA)


def test_save_diffusers_replaces_a_folder_whole(controlnet, tmp_path):
    folder = te.save_diffusers(controlnet, tmp_path / "cn")
    (folder / "stale.txt").write_text("old")
    te.save_diffusers(controlnet, tmp_path / "cn")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["cn"]
