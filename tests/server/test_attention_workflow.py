"""The hand attention (AE) nodes on the shared headless server: a workflow with the tiny random
SD1.5 checkpoint (Load Checkpoint -> SesaHand attention nodes -> VAE Decode -> Save Image) is
validated, runs, and the bias changes the image. In-process checks: tests/nodes/test_attention_nodes.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.comfyui

NODE_IDS = ("SesaHandHandAttention", "SesaHandHandAttentionSampler")
PROMPT = "a person sitting at a table, holding a cup with one hand, smiling"


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


def test_server_runs_the_attention_workflow(server):
    """The tiny SD1.5 checkpoint's UNet has cross-attention in input block 1 and the middle
    block only."""
    base = server.url

    def run(graph) -> dict:
        status, body = server.request(base + "/prompt", {"prompt": graph})
        assert status == 200, body
        return server.wait_for_prompt(base, body["prompt_id"])

    status, info = server.request(base + "/object_info")
    assert status == 200 and set(NODE_IDS) <= set(info)

    bad = attention_workflow(3, 12.0, "all")
    for node in ("9", "14", "15"):  # without the plain branch, no output is valid
        del bad[node]
    status, body = server.request(base + "/prompt", {"prompt": bad})
    assert status == 400 and {"6", "7"} <= set(body["node_errors"])
    assert "alpha must be a number from 0 to 10" in json.dumps(body["node_errors"])

    entry = run(attention_workflow(3, 2.0, "all"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-4000:]
    images = {}
    for node, name in (("11", "sampler"), ("13", "patched"), ("15", "plain")):
        saved = entry["outputs"][node]["images"][0]
        path = server.output / saved["subfolder"] / saved["filename"]
        images[name] = np.asarray(Image.open(path), dtype=np.float32) / 255

    # This UNet has no cross-attention in its decoder.
    failed = run(attention_workflow(4, 2.0, "decoder"))
    assert failed["status"]["status_str"] == "error"
    assert "set layers to 'all'" in json.dumps(failed["status"]["messages"])
    for image in images.values():
        assert image.shape == (64, 64, 3) and image.std() > 0.02  # not a constant (NaN) image
    assert np.array_equal(images["sampler"], images["patched"])  # both nodes bias alike
    assert np.abs(images["sampler"] - images["plain"]).mean() > 0.002  # the bias changed the image
