"""The training loop on CPU with the tiny config: loss falls, exact resume, full disk, CLI errors.

Loss bound: the mean noise-prediction loss on the 4 toy samples (no augmentation), over 8 fixed
noise/timestep draws (generator seeds 0-7, the same draws for both), of the ControlNet exported
after 30 steps is below 0.8 x that of the untrained ControlNet (zero convolutions: the plain
UNet). Measured: 0.63-0.69 for training seeds 0-3.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from sesahand.train.config import AugmentConfig, OptimConfig
from sesahand.train.data import MODEL_KEYS
from sesahand.train.loop import list_checkpoints, make_optimizer, train


@pytest.fixture(scope="module")
def full_run(tiny_config, tmp_path_factory):
    """The uninterrupted 30-step run (checkpoints at 15 and 30)."""
    config = tiny_config(tmp_path_factory.mktemp("full") / "run")
    return config, train(config)


def mean_loss(config, inits) -> list[float]:
    """Mean loss over the unaugmented toy set and 8 fixed draws, for each ControlNet init."""
    from sesahand.control.fusion import FusionSettings
    from sesahand.train.data import build_dataset, collate
    from sesahand.train.model import (
        FusedControlNet,
        build_controlnet,
        install_hand_attention,
        load_sd15,
        training_loss,
    )

    sd = load_sd15(config.model.sd15)
    attention = install_hand_attention(sd.unet, config.model.alpha)
    data = dataclasses.replace(config.data, augment=AugmentConfig(hflip=0.0, crop_scale=[1.0, 1.0]))
    ds = build_dataset(data, config.model.render_style, sd.tokenizer, 0, data.cache_dir, progress=False)
    batch = collate([ds[i] for i in range(len(ds))])
    batch = {k: batch[k] for k in MODEL_KEYS}
    out = []
    for init in inits:
        fused = FusedControlNet(build_controlnet(sd.unet, init), FusionSettings(config.model.fusion, config.model.w))
        with torch.no_grad():
            out.append(sum(float(training_loss(sd, fused, batch, attention, torch.Generator().manual_seed(s)))
                           for s in range(8)) / 8)
    return out


def test_loss_falls_and_export_carries_metadata(full_run):
    from sesahand.control import read_control_metadata

    config, result = full_run
    assert result.global_step == 30 and len(result.losses) == 30
    before, after = mean_loss(config, [None, result.export_path])
    assert after < 0.8 * before, (before, after)
    meta = read_control_metadata(result.export_path)
    assert (meta.fusion.fusion, meta.fusion.w, meta.alpha, meta.render_style) == ("tokens", 1.0, 2.0, "mesh")
    m = config.model  # every inference setting of the config is in the file
    assert (meta.fusion.hierarchy, meta.attention_layers) == (m.hierarchy, m.attention_layers) == ("balanced", "all")
    with safe_open(str(result.export_path), "pt") as f:
        from sesahand.train.config import config_hash

        assert f.metadata()["sesahand.config_hash"] == config_hash(config)
        assert all(k.startswith("control_model.") for k in f.keys())  # noqa: SIM118 (safe_open has no __iter__)


def test_resume_from_step_15_ends_with_the_same_weights(full_run, tiny_config, tmp_path):
    _, result = full_run
    checkpoints = list_checkpoints(result.output_dir)
    assert [p.name for p in checkpoints] == ["checkpoint-15", "checkpoint-30"]
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == 15 and state["micro_batches"] == 30
    resumed = train(tiny_config(tmp_path / "resumed"), resume=str(checkpoints[0]))
    assert resumed.global_step == 30 and len(resumed.losses) == 15
    assert resumed.losses == pytest.approx(result.losses[15:], abs=1e-5)
    a, b = load_file(str(result.export_path)), load_file(str(resumed.export_path))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    assert any(float(a[k].abs().max()) > 0 for k in a if "zero_convs" in k)  # training moved the zero convs


def test_full_disk_at_checkpoint_keeps_the_previous_one(tiny_config, tmp_path, monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "run"
    config = tiny_config(out, train={"max_steps": 3}, checkpointing={"every_n_steps": 1, "keep_last": 2},
                         validation={"every_n_steps": 2}, logging={"tensorboard": True, "every_n_steps": 1})
    real_save = Accelerator.save_state
    calls = []

    def save_state(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 3:
            real_save(self, output_dir, **kwargs)  # most of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(RuntimeError, match="checkpoint at step 3 .*the disk is full.*checkpoint-2 is intact"):
        train(config)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    result = train(config, resume="latest")
    assert result.global_step == 3 and len(result.losses) == 1
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]  # keep_last 2
    assert result.export_path.is_file()
    assert (out / "validation" / "step-00000002" / "open_palm_seed0.png").is_file()
    assert (out / "validation" / "condition_open_palm.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_cli_refuses_sdxl_and_missing_checkpoint(tiny_config, tmp_path, caplog):
    from sesahand.cli import main

    sdxl = tmp_path / "sdxl"
    (sdxl / "unet").mkdir(parents=True)
    (sdxl / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}))
    config = tiny_config(tmp_path / "run")
    data = config.to_dict()
    data["model"]["sd15"] = str(sdxl)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--config", str(path)]) == 2
    assert "SDXL" in caplog.text and "SD1.5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--config", str(path), "--resume", "latest"]) == 2
    assert "no checkpoint" in caplog.text


def test_8bit_adam_needs_bitsandbytes():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="adamw8bit needs bitsandbytes"):
            make_optimizer(OptimConfig(optimizer="adamw8bit"), [torch.nn.Parameter(torch.zeros(2))])
    else:
        pytest.skip("bitsandbytes is installed")
