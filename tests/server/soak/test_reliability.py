"""Reliability of the shipped generate workflow in one long server session (issue 4):
50 queued prompts complete, the server's resident memory stays flat between job 10 and job 50,
and no temporary or half-written file is left behind.

The workflow is ``tests/workflows/sesahand_generate.json`` (the API copy of the shipped one) with
the tiny random SD1.5 checkpoint and ControlNet of ``tools/tiny_sd15.py``, at 64 x 64 and two
steps, hand attention on all layers so that 50 jobs take about a minute on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sesahand.queue import Manifest, run_queue
from tools.comfy_server import comfy_command, running_server

pytestmark = [pytest.mark.comfyui, pytest.mark.soak]

REPO = Path(__file__).resolve().parents[3]
MAX_GROWTH_MB = 100


def resident_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def small_generate_prompt() -> dict:
    """The shipped generate workflow (API copy) at 64 x 64, two steps, with the tiny models."""
    prompt = json.loads((REPO / "tests" / "workflows" / "sesahand_generate.json").read_text())
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "tiny_sd15.safetensors"
        elif kind == "SesaHandLoadControlNet":
            inputs["control_net_name"] = "plain.safetensors"
        elif kind == "SesaHandRenderConditions":
            inputs.update(width=64, height=64)
        elif kind == "SesaHandHandAttentionSampler":
            inputs.update(steps=2, layers="all")  # the tiny UNet's decoder has no cross-attention
        elif kind == "SesaHandHandPose":
            inputs.update(mode="random", box_min=24, box_max=48)
    return prompt


@pytest.fixture(scope="module")
def session(comfyui, tiny_models, tmp_path_factory):
    """A server of its own with the tier's tiny models; yields (base URL, server process, state
    folder, TMPDIR). Not the tier's shared server: the test measures this process's memory from
    its first job and its own TMPDIR, which other tests' jobs would change."""
    root = tmp_path_factory.mktemp("reliability")
    tmp = root / "tmp"
    tmp.mkdir()
    command = comfy_command(root / "comfyui", {"checkpoints": tiny_models.checkpoints,
                                               "controlnet": tiny_models.controlnet,
                                               "sesahand": comfyui.cache_dir})
    with running_server(comfyui.path, command, root / "comfyui", env={"TMPDIR": str(tmp)}) as (base, proc):
        yield base, proc, root / "comfyui", tmp


def test_fifty_prompts_complete_with_flat_memory_and_no_leftovers(session, tmp_path):
    base, proc, state, tmp = session
    prompt = small_generate_prompt()
    out = tmp_path / "out"
    first = run_queue([base], prompt, count=10, seed=1000, vary=("seed", "pose"), out=out)
    assert first.ok, [r.error for r in first.results if r.status != "done"]
    after_10 = resident_mb(proc.pid)
    rest = run_queue([base], prompt, count=50, seed=1000, vary=("seed", "pose"), out=out)
    after_50 = resident_mb(proc.pid)
    assert rest.ok, [r.error for r in rest.results if r.status != "done"]
    latest = Manifest(out / "manifest.jsonl").latest()
    assert sorted(latest) == list(range(50)) and all(r["status"] == "done" for r in latest.values())
    assert after_50 - after_10 < MAX_GROWTH_MB, f"server RSS {after_10:.0f} MiB after job 10, {after_50:.0f} after 50"
    saved = sorted(p for p in (state / "output").rglob("*") if p.is_file())
    assert len([p for p in saved if p.suffix == ".png"]) >= 50
    leftovers = [p for p in saved if (p.name.startswith(".") and p.name != ".lock")  # the dataset's lock file
                 or ".tmp" in p.name or p.suffix == ".part"]
    assert not leftovers, leftovers
    assert not list(tmp.iterdir()), f"files left in the server's TMPDIR: {list(tmp.iterdir())}"
