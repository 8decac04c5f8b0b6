"""The workflows that need no SesaHand weights, run on the tier's shared server with its tiny
models in place of the named files: ``sesahand_sd15_depth_openpose`` runs end to end with the
tiny random SD1.5 checkpoint and two tiny ControlNets named like the files it expects (smaller
image, two steps). ``sesahand_sdxl_union`` has no tiny SDXL model in this tier: the server's
validation of it is in ``test_workflows.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tools import build_workflows as builder

pytestmark = pytest.mark.comfyui


def test_sd15_depth_openpose_runs_with_tiny_models(server):
    prompt = json.loads((builder.API_DIR / "sesahand_sd15_depth_openpose.json").read_text())
    specs = builder.WORKFLOWS["sesahand_sd15_depth_openpose"]
    ids = {key: str(value) for key, value in builder.node_ids(specs).items()}
    prompt[ids["render"]]["inputs"].update(width=64, height=64)
    prompt[ids["sampler"]]["inputs"].update(steps=2, layers="all")  # tiny UNet: no decoder attn
    status, body = server.request(server.url + "/prompt", {"prompt": prompt})
    assert status == 200, body
    entry = server.wait_for_prompt(server.url, body["prompt_id"], timeout=600)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", \
        [(e.get("node_type"), e.get("exception_message"), e.get("traceback", [])[-3:]) for e in errors]
    saved = entry["outputs"][ids["save"]]["images"][0]
    image = np.asarray(Image.open(server.output / saved["subfolder"] / saved["filename"]))
    assert image.shape == (64, 64, 3) and image.std() > 2  # not a constant (NaN) image
    labels = (server.output / "sesahand_sd15_depth_openpose" / "labels.jsonl").read_text()
    record = json.loads(labels.splitlines()[0])
    assert record["hands"][0]["side"] == "right" and len(record["hands"][0]["joints2d"]) == 21
