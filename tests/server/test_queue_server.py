"""``python -m sesahand queue`` against a real headless ComfyUI with this pack loaded.

The tier's shared server (about 15 s to start, once); the pack's nodes need no diffusion model, so
each job (one 128 x 96 frame) takes well under a second once the hand model is loaded.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from sesahand.cli import main
from sesahand.queue import Manifest, run_queue

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def server(server):
    """The base URL of the tier's shared headless ComfyUI."""
    return server.url


def node(node_id, kind, widgets, inputs=(), outputs=(), mode=0):
    """A UI-workflow node; ``inputs``/``outputs``: (name, type, link id / link ids)."""
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [300, 200], "flags": {}, "order": 0,
            "mode": mode, "properties": {}, "widgets_values": widgets,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs]}


def hand_workflow(width: int = 128, height: int = 96, batch_size: int = 1, model: str = "anny (open)",
                  mano_file: str = "") -> dict:
    """UI workflow: Hand Model -> Hand Pose (random) -> Reroute -> Render Conditions -> bypassed
    Image Invert -> Save Image, and Render Conditions -> Export Mesh."""
    nodes = [
        node(1, "SesaHandHandModel", [model, "right", mano_file], outputs=[("hand_model", "SESAHAND_HAND_MODEL", [1])]),
        node(2, "SesaHandHandPose", ["random", "open_palm", 0, "randomize", 1, 40, 64, ""],
             outputs=[("pose", "SESAHAND_POSE", [2])]),
        node(9, "Reroute", None, inputs=[("", "*", 2)], outputs=[("", "SESAHAND_POSE", [3])]),
        node(3, "SesaHandRenderConditions", [width, height, 40, batch_size, "auto", "none"],
             inputs=[("hand_model", "SESAHAND_HAND_MODEL", 1), ("pose", "SESAHAND_POSE", 3)],
             outputs=[("mesh", "IMAGE", [4]), ("depth", "IMAGE", []), ("normal", "IMAGE", []),
                      ("pose", "IMAGE", []), ("mask", "MASK", []), ("hands", "SESAHAND_HANDS", [6]),
                      ("arm_mask", "MASK", [])]),
        node(4, "ImageInvert", [], inputs=[("image", "IMAGE", 4)], outputs=[("IMAGE", "IMAGE", [5])], mode=4),
        node(5, "SaveImage", ["sesahand/queued"], inputs=[("images", "IMAGE", 5)]),
        node(6, "SesaHandExportMesh", ["sesahand/queued"], inputs=[("hands", "SESAHAND_HANDS", 6)],
             outputs=[("model_file", "STRING", [])]),
    ]
    links = [[1, 1, 0, 3, 0, "SESAHAND_HAND_MODEL"], [2, 2, 0, 9, 0, "SESAHAND_POSE"],
             [3, 9, 0, 3, 1, "SESAHAND_POSE"], [4, 3, 0, 4, 0, "IMAGE"], [5, 4, 0, 5, 0, "IMAGE"],
             [6, 3, 5, 6, 0, "SESAHAND_HANDS"]]
    return {"last_node_id": 9, "last_link_id": 6, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def history_ids(base: str) -> set[str]:
    reply = requests.get(base + "/history", timeout=30)
    assert reply.status_code == 200
    return set(reply.json())


def test_queue_runs_jobs_fetches_outputs_and_resumes_without_duplicates(server, tmp_path):
    workflow = tmp_path / "hands.json"
    workflow.write_text(json.dumps(hand_workflow()))
    out = tmp_path / "out"
    before = history_ids(server)
    command = ["queue", "--server", server, "--workflow", str(workflow), "--count", "3", "--seed", "11",
               "--vary", "pose", "--out", str(out)]
    assert main(command) == 0
    ran = history_ids(server) - before
    assert len(ran) == 3

    latest = Manifest(out / "manifest.jsonl").latest()
    assert sorted(latest) == [0, 1, 2]
    assert {record["prompt_id"] for record in latest.values()} == ran
    for index, record in latest.items():
        assert record["status"] == "done" and record["server"] == server
        assert record["varied"] == {"2.seed": 11 + index}
        assert sorted(f.rsplit(".", 1)[1] for f in record["outputs"]) == ["glb", "png"]
        for name in record["outputs"]:
            assert name.startswith(f"job_{index:05d}/sesahand/")
            assert (out / name).stat().st_size > 0
    # a different pose seed per job gives different pictures
    pngs = {(out / f).read_bytes() for r in latest.values() for f in r["outputs"] if f.endswith(".png")}
    assert len(pngs) == 3

    lines = (out / "manifest.jsonl").read_text()
    assert main(command) == 0  # everything is done: nothing is submitted again
    assert history_ids(server) - before == ran
    assert (out / "manifest.jsonl").read_text() == lines


def test_validation_errors_are_reported_with_the_node_message_and_not_retried(server, tmp_path, capsys):
    workflow = tmp_path / "bad.json"
    # a MANO file that is not in the model folder, and a width that is not a multiple of 8
    workflow.write_text(json.dumps(hand_workflow(width=100, model="mano", mano_file="MANO_RIGHT.pkl")))
    out = tmp_path / "out"
    before = history_ids(server)
    assert main(["queue", "--server", server, "--workflow", str(workflow), "--count", "2", "--vary", "pose",
                 "--retries", "3", "--out", str(out)]) == 1
    assert history_ids(server) == before  # nothing was queued
    records = Manifest(out / "manifest.jsonl").records()
    assert [(r["job"], r["status"]) for r in records] in (
        [(0, "submitted"), (0, "failed"), (1, "submitted"), (1, "failed")],
        [(0, "submitted"), (1, "submitted"), (0, "failed"), (1, "failed")])
    error = next(r["error"] for r in records if r["status"] == "failed")
    assert "node 1 (SesaHandHandModel)" in error
    assert "MANO file 'MANO_RIGHT.pkl' is not in the mano model folder" in error
    assert "node 3 (SesaHandRenderConditions)" in error and "width 100 is not a multiple of 8" in error
    summary = capsys.readouterr().out
    assert "2 failed" in summary and "MANO_RIGHT.pkl" in summary


def test_interrupt_ends_the_running_job_and_the_next_one_runs(server, tmp_path):
    out = tmp_path / "out"
    # 16 frames of 192 x 192: a second or more of rendering, time enough to interrupt it
    workflow = hand_workflow(width=192, height=192, batch_size=16)
    reports = []
    runner = threading.Thread(target=lambda: reports.append(run_queue(
        [server], workflow, count=2, seed=300, vary=("pose",), out=out)))
    runner.start()
    manifest = Manifest(out / "manifest.jsonl")
    deadline = time.monotonic() + 60
    prompt_id = None
    while prompt_id is None:
        assert time.monotonic() < deadline, "job 0 was not submitted in 60 s"
        prompt_id = next((r["prompt_id"] for r in manifest.records() if r["job"] == 0), None)
        time.sleep(0.02)
    while True:
        assert time.monotonic() < deadline, "job 0 did not start in 60 s"
        queue = requests.get(server + "/queue", timeout=30).json()
        if any(item[1] == prompt_id for item in queue["queue_running"]):
            break
        time.sleep(0.02)
    assert requests.post(server + "/interrupt", json={"prompt_id": prompt_id}, timeout=30).status_code == 200
    runner.join(120)
    assert not runner.is_alive()
    first, second = reports[0].results
    assert (first.status, first.attempts) == ("interrupted", 1) and first.error.startswith("interrupted in node")
    assert not first.outputs
    assert second.status == "done" and len(second.outputs) == 32  # 16 images and 16 meshes


def test_two_server_urls_share_the_jobs(server, tmp_path):
    # The same server under two names is enough to exercise the distribution (one worker per URL).
    other = server.replace("127.0.0.1", "localhost")
    workflow = tmp_path / "hands.json"
    workflow.write_text(json.dumps(hand_workflow()))
    out = tmp_path / "out"
    assert main(["queue", "--server", server, "--server", other, "--workflow", str(workflow), "--count", "4",
                 "--seed", "500", "--vary", "pose", "--out", str(out)]) == 0
    latest = Manifest(out / "manifest.jsonl").latest()
    assert all(r["status"] == "done" for r in latest.values()) and len(latest) == 4
    assert {r["server"] for r in latest.values()} == {server, other}
