"""SesaHand ControlNet on the shared headless server: Load Checkpoint -> SesaHand nodes ->
KSampler -> VAE Decode -> Save Image with the tiny random SD1.5 files; the control, its
structural fusion and the hand-attention sampler each change the image. In-process checks:
tests/nodes/test_control_nodes.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfyui


def write_condition_png(folder: Path) -> str:
    image = np.zeros((64, 64, 3), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 30) ** 2 + (xx - 35) ** 2 < 15 ** 2] = (255, 200, 150)  # a bright disc
    image[20:50, 10:15] = (80, 160, 255)
    Image.fromarray(image).save(folder / "condition.png")
    return "condition.png"


def workflow(seed: int, strength: float, fusion: str, prefix: str, hand_attention: bool = False) -> dict:
    """With ``hand_attention`` the KSampler is the SesaHand Hand-Attention Sampler (alpha 2,
    all layers: the tiny UNet has no cross-attention in its decoder)."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a person waving a hand"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "condition.png"}},
        "5": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "plain.safetensors"}},
        "6": {"class_type": "ControlNetApplyAdvanced",
              "inputs": {"positive": ["2", 0], "negative": ["3", 0], "control_net": ["5", 0], "image": ["4", 0],
                         "strength": 0.5, "start_percent": 0.0, "end_percent": 1.0}},
        "7": {"class_type": "SesaHandLoadControlNet", "inputs": {"control_net_name": "hand_cn.safetensors"}},
        "8": {"class_type": "SesaHandApplyHandControl",
              "inputs": {"positive": ["6", 0], "negative": ["6", 1], "control_net": ["7", 0], "image": ["4", 0],
                         "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "fusion": fusion,
                         "fusion_weight": 1.0}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler",
               "inputs": {"model": ["1", 0], "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["9", 0],
                          "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                          "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": prefix}},
    }
    if hand_attention:
        graph["10"] = {"class_type": "SesaHandHandAttentionSampler",
                       "inputs": {**graph["10"]["inputs"], "clip": ["1", 1], "prompt": "a person waving a hand",
                                  "hand_terms": "", "alpha": 2.0, "layers": "all", "start_percent": 0.0,
                                  "end_percent": 1.0}}
    return graph


def test_server_runs_a_workflow_where_the_control_changes_the_image(hand_controlnet, server):
    # The shared server runs with --use-pytorch-cross-attention; its log is read from here on.
    write_condition_png(server.input)
    log_start = server.log.stat().st_size
    base = server.url

    def run(strength, fusion, prefix, hand_attention=False):
        prompt = workflow(11, strength, fusion, prefix, hand_attention)
        status, body = server.request(base + "/prompt", {"prompt": prompt})
        assert status == 200, body
        entry = server.wait_for_prompt(base, body["prompt_id"], timeout=120)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-4000:]
        saved = entry["outputs"]["12"]["images"][0]
        path = server.output / saved["subfolder"] / saved["filename"]
        return np.asarray(Image.open(path), dtype=np.float32) / 255

    sf = run(1.0, "from file", "sf")
    no_sesahand = run(0.0, "from file", "none")
    sf_off = run(1.0, "off", "off")
    sf_ae = run(1.0, "from file", "sf_ae", hand_attention=True)  # both SesaHand components
    with open(server.log, "rb") as log:
        log.seek(log_start)
        server_log = log.read().decode(errors="replace")
    assert "could not be applied" not in server_log  # a mis-sized control only logs this
    for image in (sf, no_sesahand, sf_off, sf_ae):
        assert image.shape == (64, 64, 3) and image.std() > 0.02  # not a constant (NaN) image
    assert np.abs(sf_ae - sf).mean() > 0.002  # the hand-attention bias changed the image too
    assert np.abs(sf - no_sesahand).mean() > 0.01  # the SesaHand control changed the image
    assert np.abs(sf - sf_off).mean() > 0.002  # and so did its structural fusion
