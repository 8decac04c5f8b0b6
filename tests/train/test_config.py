"""Training config: YAML loading, unknown keys, types, defaults, hash."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from sesahand.train.config import (
    TrainConfig,
    config_from_dict,
    config_hash,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]


def minimal(**extra) -> dict:
    data = {"output_dir": "run", "model": {"sd15": "sd15"}, "data": {"sources": [{"kind": "records", "path": "x"}]}}
    for key, value in extra.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


def test_default_yaml_documents_the_defaults():
    config = load_config(REPO / "configs" / "default.yaml")
    defaults = TrainConfig()
    for section in ("train", "validation", "checkpointing", "logging"):
        assert getattr(config, section) == getattr(defaults, section), section
    for name in ("fusion", "w", "alpha", "attention_layers", "render_style", "controlnet_init", "hierarchy",
                 "attention_chunk"):
        assert getattr(config.model, name) == getattr(defaults.model, name), name
    for name in ("resolution", "hand_model", "mano_path", "cache_dir", "num_workers", "augment", "caption_dropout"):
        assert getattr(config.data, name) == getattr(defaults.data, name), name
    assert config.data.sources[0].caption_field == "prompt"
    assert config.train.lr == 1e-5 and config.train.optimizer == "adamw" and config.data.resolution == 512
    assert config.export_diffusers is False


def test_tiny_yaml_loads_and_paths_resolve_against_the_file():
    config = load_config(REPO / "configs" / "tiny.yaml")
    assert config.data.resolution == 64 and config.train.max_steps == 30
    assert Path(config.model.sd15) == (REPO / "models" / "tiny_sd15").resolve()
    assert Path(config.data.sources[0].path) == (REPO / "toy_records").resolve()


@pytest.mark.parametrize("data, section, wrong, valid", [
    (minimal(learning_rate=1), "top level", "learning_rate", "output_dir, model, data"),
    (minimal(model={"alfa": 2.0}), "'model'", "alfa", "sd15, controlnet_init, fusion, w, alpha"),
    (minimal(data={"augment": {"flip": 0.5}}), "'data.augment'", "flip", "hflip, crop_scale"),
    (minimal(data={"sources": [{"kind": "records", "path": "x", "caption": "a.txt"}]}), "'data.sources[0]'",
     "caption", "kind, path, captions, prompt, limit"),
    (minimal(train={"lr": 1e-5, "epochs": 3}), "'train'", "epochs", "lr, weight_decay"),
])
def test_unknown_keys_are_rejected_with_the_valid_keys(data, section, wrong, valid):
    with pytest.raises(ValueError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert repr(wrong) in message and section in message and valid in message


@pytest.mark.parametrize("data, field", [
    (minimal(train={"batch_size": "four"}), "train.batch_size"),
    (minimal(train={"batch_size": 2.5}), "train.batch_size"),
    (minimal(train={"ema": "yes"}), "train.ema"),
    (minimal(model={"w": 2.0}), "model.w"),
    (minimal(model={"render_style": "sketch"}), "model.render_style"),
    (minimal(data={"resolution": 500}), "data.resolution"),
    (minimal(data={"augment": {"crop_scale": [0.9, 0.5]}}), "data.augment.crop_scale"),
    (minimal(train={"mixed_precision": "fp8"}), "train.mixed_precision"),
    (minimal(data={"sources": [{"kind": "freihand", "path": "f"}]}), "data.sources[0]"),
    (minimal(data={"sources": []}), "data.sources"),
    (minimal(model={"sd15": ""}), "model.sd15"),
    (minimal(validation={"prompts": ["a", "b", "c"]}), "validation.prompts"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ValueError, match=re.escape(f"config {field}")):
        config_from_dict(data)


def test_yaml_numbers_without_dot_and_ints_for_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(train={"lr": "2e-5", "weight_decay": 0})))
    config = load_config(path)
    assert config.train.lr == 2e-5 and isinstance(config.train.weight_decay, float)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: run\nmodel: [sd15\n")
    with pytest.raises(ValueError, match="malformed YAML at line"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_is_canonical_and_tracks_changes():
    a = config_from_dict(minimal(train={"lr": 1e-5, "seed": 1}))
    b = config_from_dict(minimal(train={"seed": 1, "lr": 1e-5}))
    c = config_from_dict(minimal(train={"lr": 2e-5, "seed": 1}))
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 64
    assert dataclasses.asdict(a) == a.to_dict()
