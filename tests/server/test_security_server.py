"""A real ComfyUI server with the pack, tried as an attacker (or a careless user) would: file
paths in widgets stay inside their folders, FIFOs and huge sizes are refused at /prompt,
error messages never repeat a file's contents, planted links are not written through, wrong
value types get messages naming the field, and the queue never counts a job done that the
server did not run.
"""

from __future__ import annotations

import json
import os

import pytest
import requests

from sesahand.cli import main
from sesahand.queue import Manifest

pytestmark = pytest.mark.comfyui

SECRET = "TOPSECRET-7f3a"
GOOD_POSE = {"frames": [{"hands": [{"side": "right", "preset": "fist", "box": {"center": [32, 32], "size": 40}}]}]}


@pytest.fixture(scope="module")
def server(server):
    """The tier's shared headless ComfyUI; (base URL, its state folder). A secret JSON lies
    outside every folder of the server: ``root/private/secret.json``."""
    private = server.root / "private"
    private.mkdir(exist_ok=True)
    (private / "secret.json").write_text(json.dumps({"frames": [{"hands": [{"side": SECRET}]}]}))
    return server.url, server.root


def post(base: str, prompt: dict, timeout: float = 30) -> tuple[int, dict, str]:
    reply = requests.post(base + "/prompt", json={"prompt": prompt}, timeout=timeout)
    return reply.status_code, reply.json(), reply.text


def errors_of(body: dict, node: str) -> str:
    """The error messages and details ComfyUI reports for ``node``, one string."""
    return " | ".join(f"{e.get('message')}: {e.get('details')}"
                      for e in body.get("node_errors", {}).get(node, {}).get("errors", []))


def hands_graph(pose: dict | None = None, width=64, height=64) -> dict:
    """Hand Model -> Hand Pose -> Render Conditions (64 x 64) -> Export Mesh (an output)."""
    pose_inputs = {"mode": "random", "preset": "fist", "seed": 1, "num_hands": 1, "box_min": 30,
                   "box_max": 40, "pose_json": ""}
    pose_inputs.update(pose or {})
    return {
        "1": {"class_type": "SesaHandHandModel", "inputs": {"model": "anny (open)", "mano_file": "", "side": "right"}},
        "2": {"class_type": "SesaHandHandPose", "inputs": pose_inputs},
        "3": {"class_type": "SesaHandRenderConditions",
              "inputs": {"hand_model": ["1", 0], "pose": ["2", 0], "width": width, "height": height, "fov": 40.0,
                         "batch_size": 1, "backend": "auto"}},
        "4": {"class_type": "SesaHandExportMesh", "inputs": {"hands": ["3", 5], "filename_prefix": "sec/mesh"}},
    }


def pose_file_graph(pose_json: str) -> dict:
    return hands_graph({"mode": "json", "pose_json": pose_json})


@pytest.mark.parametrize("value", ["{root}/private/secret.json", "../private/secret.json",
                                   "../../../../../../../../{root}/private/secret.json", "link_out.json",
                                   "/etc/hostname", "/dev/zero"])
def test_pose_json_paths_outside_the_input_folder_are_refused(server, value):
    base, root = server
    link = root / "input" / "link_out.json"
    if not link.is_symlink():
        os.symlink(root / "private" / "secret.json", link)
    status, body, text = post(base, pose_file_graph(value.format(root=root)))
    assert status == 400
    assert "pose_json" in errors_of(body, "2") and "is not a file inside the allowed folders" in errors_of(body, "2")
    assert SECRET not in text


def test_outside_paths_do_not_tell_whether_a_file_exists(server):
    base, root = server
    answers = []
    for name in ("secret.json", "no_such_file.json"):
        _, body, _ = post(base, pose_file_graph(str(root / "private" / name)))
        answers.append(errors_of(body, "2").replace(name, "NAME"))
    assert answers[0] == answers[1]


def test_a_fifo_does_not_freeze_the_server(server):
    base, root = server
    fifo = root / "input" / "fifo.json"
    if not fifo.exists():
        os.mkfifo(fifo)
    try:
        status, body, _ = post(base, pose_file_graph("fifo.json"), timeout=20)
    finally:  # had the server blocked opening it, a writer would let it go on
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert status == 400 and "is not a regular file" in errors_of(body, "2")


def test_pose_files_inside_the_input_folder_work_and_their_errors_hide_values(server, wait_for_prompt):
    base, root = server
    (root / "input" / "bad.json").write_text(json.dumps({"frames": [{"hands": [{"side": SECRET}]}]}))
    status, body, text = post(base, pose_file_graph("bad.json"))
    assert status == 400 and "frames/0/hands/0/side: expected one of" in errors_of(body, "2")
    assert SECRET not in text

    (root / "input" / "huge.json").write_text(json.dumps({"frames": [{"camera": {
        "K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "width": 100000, "height": 100000}, "hands": []}]}))
    status, body, _ = post(base, pose_file_graph("huge.json"))
    assert status == 400 and "camera/width: expected a number at most 4096" in errors_of(body, "2")

    (root / "input" / "poses").mkdir(exist_ok=True)
    (root / "input" / "poses" / "good.json").write_text(json.dumps(GOOD_POSE))
    status, body, _ = post(base, pose_file_graph("poses/good.json"))
    assert status == 200 and not body["node_errors"], body
    entry = wait_for_prompt(base, body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_task_file_stays_in_the_sesahand_model_folders(server):
    base, root = server
    prompt = hands_graph()
    del prompt["4"]  # the check's own output only: its rejection is then the prompt's
    prompt["5"] = {"class_type": "SesaHandAlignmentCheck",
                   "inputs": {"images": ["3", 0], "hands": ["3", 5], "min_pck": 0.7, "require_side": True,
                              "task_file": "/etc/passwd"}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "sec/overlay"}}
    for value in ("/etc/passwd", "../../../../../../etc/passwd", str(root / "private" / "secret.json")):
        prompt["5"]["inputs"]["task_file"] = value
        status, body, text = post(base, prompt)
        assert status == 400, body
        assert "task_file" in errors_of(body, "5") and "not a file inside the allowed folders" in errors_of(body, "5")
        assert SECRET not in text and "root:" not in text


def test_wrong_value_types_get_messages_naming_the_field(server):
    base, _ = server
    for value in ("abc", "512.5", [1]):
        status, body, text = post(base, hands_graph(width=value))
        assert status == 400
        assert "width" in errors_of(body, "3") and "is not a whole number" in errors_of(body, "3"), body
        assert "string formatting" not in text and "unsupported operand" not in text
        assert "exception_during" not in text


def dataset_graph(dataset: str) -> dict:
    prompt = hands_graph()
    del prompt["4"]
    prompt["5"] = {"class_type": "SesaHandSaveDatasetSample",
                   "inputs": {"images": ["3", 0], "hands": ["3", 5], "dataset": dataset}}
    return prompt


def test_a_nul_in_the_dataset_name_is_named(server):
    base, _ = server
    status, body, _ = post(base, dataset_graph("bad\0name"))
    assert status == 400 and "dataset: the name contains a NUL character" in errors_of(body, "5"), body


def test_a_linked_images_folder_is_not_written_through(server, wait_for_prompt):
    base, root = server
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    dataset = root / "output" / "linked_ds"
    dataset.mkdir(parents=True)
    os.symlink(elsewhere, dataset / "images")
    status, body, _ = post(base, dataset_graph("linked_ds"))
    assert status == 200, body
    entry = wait_for_prompt(base, body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    messages = json.dumps(entry["status"]["messages"])
    assert "symbolic link" in messages
    assert list(elsewhere.iterdir()) == []
    assert not (dataset / "labels.jsonl").exists()


def test_queue_counts_jobs_with_node_errors_as_failed(server, tmp_path, capsys, wait_for_prompt):
    """ComfyUI answers HTTP 200 when some outputs pass validation and lists the others in
    node_errors: those jobs failed (a missing checkpoint), and are not retried."""
    base, _ = server
    prompt = hands_graph()
    prompt.update({
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
        "11": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["10", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "sec/never"}},
    })
    status, body, _ = post(base, prompt)  # what the server does with it, as the queue sees it
    assert status == 200 and "10" in body["node_errors"]
    wait_for_prompt(base, body["prompt_id"])

    workflow = tmp_path / "partial.json"
    workflow.write_text(json.dumps(prompt))
    out = tmp_path / "out"
    assert main(["queue", "--server", base, "--workflow", str(workflow), "--count", "2", "--retries", "3",
                 "--out", str(out)]) == 1
    records = Manifest(out / "manifest.jsonl").records()
    assert sorted((r["job"], r["status"]) for r in records) == \
        [(0, "failed"), (0, "submitted"), (1, "failed"), (1, "submitted")]  # one attempt each
    errors = [r["error"] for r in records if r["status"] == "failed"]
    assert all("node 10 (CheckpointLoaderSimple)" in e and "missing.safetensors" in e for e in errors), errors
    summary = capsys.readouterr().out
    assert "0 done, 2 failed" in summary and "CheckpointLoaderSimple" in summary
    assert not any(out.glob("job_*"))


def test_export_mesh_does_not_write_through_a_linked_subfolder(server, wait_for_prompt):
    base, root = server
    elsewhere = root / "elsewhere_mesh"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "output" / "linked_meshes")
    prompt = hands_graph()
    prompt["4"]["inputs"]["filename_prefix"] = "linked_meshes/hand"
    status, body, _ = post(base, prompt)
    assert status == 200, body
    entry = wait_for_prompt(base, body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert "symbolic link" in json.dumps(entry["status"]["messages"])
    assert list(elsewhere.iterdir()) == []


def test_batches_too_large_to_render_are_refused_at_prompt(server):
    base, _ = server
    prompt = hands_graph(width=4096, height=4096)
    prompt["3"]["inputs"]["batch_size"] = 64
    status, body, _ = post(base, prompt)
    assert status == 400
    assert "64 images of 4096x4096 are 1073741824 pixels, more than the 67108864" in errors_of(body, "3")


def test_pose_file_frames_are_never_left_out(server, wait_for_prompt):
    base, root = server
    two = {"frames": GOOD_POSE["frames"] * 2}
    (root / "input" / "two.json").write_text(json.dumps(two))
    status, body, _ = post(base, pose_file_graph("two.json"))  # batch_size 1
    assert status == 200, body
    entry = wait_for_prompt(base, body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert "the pose file has 2 frames but batch_size is 1" in json.dumps(entry["status"]["messages"])
    prompt = pose_file_graph("two.json")
    prompt["3"]["inputs"]["batch_size"] = 2
    status, body, _ = post(base, prompt)
    entry = wait_for_prompt(base, body["prompt_id"])
    assert entry["status"]["status_str"] == "success"
