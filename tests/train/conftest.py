"""Fixtures of the training tests (helper F's; all built in the test session, no downloads).

* ``tiny_sd15`` (session): a diffusers SD1.5-format folder with tiny random weights that
  ``sesahand.train.model.load_sd15`` loads: UNet2DConditionModel (block_out_channels (32, 64),
  cross-attention in both levels and the middle, cross_attention_dim 768 as SD1.5 requires),
  a one-layer CLIPTextModel (768 wide, the real CLIP vocabulary size), a 3-downsample
  AutoencoderKL with 8 channels, a DDPMScheduler; the tokenizer is the CLIP BPE tokenizer
  shipped in ``sesahand/train/sd15/tokenizer``. Images of 64 x 64 give 8 x 8 latents.
* ``toy_records`` (session): a ``records`` source folder of 4 samples at 64 x 64 made with the
  open hand model: ``sample_K.json`` (labels as ``python -m sesahand render`` writes them),
  ``sample_K.png`` (the shaded hand over a gradient background) and ``sample_K.txt`` (caption).
* ``tiny_config`` (session): ``make(output_dir, **sections)`` -> a validated TrainConfig from
  ``configs/tiny.yaml`` with the two folders above filled in; ``sections`` are dicts merged
  into the YAML's sections (``train={"max_steps": 2}``).
* ``one_thread`` (module, autouse): torch on one thread while a test module runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "tiny.yaml"
SIZE = 64


@pytest.fixture(scope="session")
def image_size() -> int:
    """Side in pixels of the toy records' square images and of the tiny SD1.5 models: 64."""
    return SIZE


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny_sd15")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=4, norm_num_groups=32,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=SIZE,
    ).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
        vocab_size=49408, max_position_embeddings=77, projection_dim=768,
    )).half().save_pretrained(root / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  num_train_timesteps=1000, clip_sample=False).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def toy_records(tmp_path_factory, anny_model) -> Path:
    from PIL import Image

    from sesahand.camera import Camera
    from sesahand.hands import PoseSpec
    from sesahand.pipeline import render_scenes

    root = tmp_path_factory.mktemp("toy_records")
    camera = Camera.default(SIZE, SIZE)
    captions = ["a person waving a hand", "a hand holding a cup", "pointing with one finger",
                "a hand resting on a table"]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    background = np.stack([0.5 + 0.3 * xx, 0.4 + 0.2 * yy, 0.3 + 0.0 * xx], axis=-1)
    for k in range(4):
        scenes = PoseSpec.random(k, box_px=(32, 48), side="right" if k % 2 == 0 else "left").resolve(
            anny_model, camera, 1)
        conditions, rendered = render_scenes(anny_model, scenes)
        mesh = conditions.mesh[0].numpy()
        mask = conditions.mask[0].numpy()[..., None]
        photo = mask * (0.2 + 0.8 * mesh[..., [1, 0, 2]]) + (1 - mask) * background
        Image.fromarray((photo * 255).round().astype(np.uint8)).save(root / f"sample_{k}.png")
        (root / f"sample_{k}.json").write_text(json.dumps(rendered.frame_dict(0)))
        (root / f"sample_{k}.txt").write_text(captions[k])
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_sd15, toy_records):
    from sesahand.train.config import config_from_dict

    def make(output_dir, **sections):
        data = yaml.safe_load(TINY_YAML.read_text())
        data["output_dir"] = str(output_dir)
        data["model"]["sd15"] = str(tiny_sd15)
        data["data"]["sources"] = [{"kind": "records", "path": str(toy_records)}]
        data["data"]["cache_dir"] = str(Path(output_dir).parent / "condition_cache")
        for name, values in sections.items():
            if isinstance(values, dict):
                data.setdefault(name, {}).update(values)
            else:
                data[name] = values
        return config_from_dict(data, TINY_YAML.parent)

    return make


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several threads on a shared 2-core machine
    spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
