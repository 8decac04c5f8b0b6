"""The pack inside a real ComfyUI process: startup check, /object_info, and a /prompt run."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tools.comfy_server import comfy_command

pytestmark = pytest.mark.comfyui

NODE_IDS = ("SesaHandHandModel", "SesaHandHandPose", "SesaHandRenderConditions", "SesaHandExportMesh")


def test_quick_test_for_ci_loads_the_pack(comfyui, tmp_path):
    # Its own process, not the tier's shared server: the check is ComfyUI's own start-and-exit run.
    command = comfy_command(tmp_path, {"sesahand": comfyui.cache_dir}) + ["--quick-test-for-ci"]
    run = subprocess.run(command, cwd=comfyui.path,
                         capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    pack_lines = [line for line in log.splitlines()
                  if line.rstrip().endswith("custom_nodes/comfyui-sesahand")]
    assert pack_lines, "the pack is missing from ComfyUI's import times:\n" + log[-4000:]
    assert not any("IMPORT FAILED" in line for line in pack_lines), log[-4000:]


def graph(width: int = 128, height: int = 96) -> dict:
    """API-format prompt: Hand Model -> Hand Pose -> Render Conditions -> Export Mesh -> Preview3D."""
    return {
        "1": {"class_type": "SesaHandHandModel",
              "inputs": {"model": "anny (open)", "mano_file": "", "side": "left"}},
        "2": {"class_type": "SesaHandHandPose",
              "inputs": {"mode": "random", "preset": "open", "seed": 7, "num_hands": 2,
                         "box_min": 40, "box_max": 64, "pose_json": ""}},
        "3": {"class_type": "SesaHandRenderConditions",
              "inputs": {"hand_model": ["1", 0], "pose": ["2", 0], "width": width, "height": height,
                         "fov": 40.0, "batch_size": 2, "backend": "auto"}},
        "4": {"class_type": "SesaHandExportMesh",
              "inputs": {"hands": ["3", 5], "filename_prefix": "sesahand/served"}},
        "5": {"class_type": "Preview3D", "inputs": {"model_file": ["4", 0]}},
    }


def test_server_lists_nodes_validates_and_runs(server):
    base, output_dir, request = server.url, server.output, server.request
    status, info = request(base + "/object_info")
    assert status == 200
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["category"].startswith("SesaHand/")
    for spec in info["SesaHandRenderConditions"]["input"]["required"].values():
        assert spec[1].get("tooltip"), spec

    status, body = request(base + "/prompt", {"prompt": graph(width=100)})
    assert status == 400
    assert "multiple of 8" in json.dumps(body["node_errors"])

    wrong_link = graph()
    wrong_link["4"]["inputs"]["hands"] = ["3", 0]  # an IMAGE into SESAHAND_HANDS
    status, body = request(base + "/prompt", {"prompt": wrong_link})
    assert status == 400 and "4" in body["node_errors"]

    status, body = request(base + "/prompt", {"prompt": graph()})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 240
    while True:
        _, history = request(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        assert time.monotonic() < deadline, "the prompt did not finish in 240 s"
        time.sleep(0.5)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-4000:]
    model_file = entry["outputs"]["5"]["result"][0]
    assert model_file.endswith(".glb")
    assert (output_dir / model_file).stat().st_size > 0
    saved = entry["outputs"]["4"]["3d"]
    assert len(saved) == 2  # one file per frame of the batch
