"""SesaHand settings in a ControlNet's safetensors header."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sesahand.control import ControlMetadata, FusionSettings, parse_control_metadata, read_control_metadata


def test_without_metadata_sf_is_off():
    for metadata in (None, {}, {"format": "pt"}):
        parsed = parse_control_metadata(metadata)
        assert parsed == ControlMetadata() and not parsed.fusion.active and not parsed.from_file


@pytest.mark.parametrize("hierarchy, layers", [("balanced", "all"), ("sum", "decoder")])
def test_header_round_trip_through_a_file(tmp_path, hierarchy, layers):
    settings = ControlMetadata(FusionSettings("gate", 0.75, hierarchy), alpha=2.0, render_style="mesh",
                               from_file=True, attention_layers=layers)
    path = tmp_path / "cn.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt", **settings.header()})
    assert settings.header()["sesahand.attention_layers"] == layers
    assert settings.header()["sesahand.hierarchy"] == hierarchy
    assert read_control_metadata(path) == settings
    assert read_control_metadata(tmp_path / "cn.pth") == ControlMetadata()  # no header to read


def test_fusion_without_w_means_trained_with_sf():
    parsed = parse_control_metadata({"sesahand.fusion": "gate"})
    assert parsed.fusion == FusionSettings("gate", 1.0, "sum") and parsed.alpha is None
    assert parsed.attention_layers is None
    assert parse_control_metadata({"sesahand.alpha": "2"}).fusion == FusionSettings("tokens", 0.0, "sum")


def test_files_without_hierarchy_keep_the_plain_sum_and_plain_files_default_to_balanced():
    # SesaHand files written before sesahand.hierarchy existed were trained with the plain sum
    assert parse_control_metadata({"sesahand.fusion": "tokens", "sesahand.w": "1"}).fusion.hierarchy == "sum"
    assert parse_control_metadata(None).fusion.hierarchy == "balanced"


@pytest.mark.parametrize("metadata, message", [
    ({"sesahand.w": "abc"}, "sesahand.w = 'abc' is not a finite number"),
    ({"sesahand.w": "2"}, r"in \[0, 1\]"),
    ({"sesahand.fusion": "sum"}, "fusion 'sum' is unknown"),
    ({"sesahand.alpha": "-1"}, "alpha = -1.0 must be >= 0"),
    ({"sesahand.render_style": "photo"}, "render_style = 'photo' is unknown"),
    ({"sesahand.attention_layers": "encoder"}, "attention_layers = 'encoder' is unknown"),
    ({"sesahand.hierarchy": "mean"}, "hierarchy 'mean' is unknown"),
])
def test_bad_values_name_the_file_and_key(metadata, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_control_metadata(metadata, "hand_cn.safetensors")
    assert str(info.value).startswith("hand_cn.safetensors")


def test_unreadable_header(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="broken.safetensors: cannot read the safetensors header"):
        read_control_metadata(path)
