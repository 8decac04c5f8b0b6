"""SesaHand Save Dataset Sample in a real ComfyUI (in-process, CPU): files, labels, the
output-folder confinement, and the alignment threshold."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, replace

import pytest
import torch

pytestmark = pytest.mark.comfyui

W, H = 96, 64


@pytest.fixture(scope="module")
def rendered(comfyui):
    """Render Conditions outputs for two random two-hand frames of the open hand."""
    anny = comfyui.node("SesaHandHandModel").execute(model="anny (open)", mano_file="", side="right")[0]
    pose = comfyui.node("SesaHandHandPose").execute(mode="random", preset="fist", seed=5, num_hands=2,
                                                    box_min=30, box_max=40, pose_json="")[0]
    return comfyui.node("SesaHandRenderConditions").execute(
        hand_model=anny, pose=pose, width=W, height=H, fov=40.0, batch_size=2, backend="auto").args


@pytest.fixture(scope="module")
def checkpoint(comfyui, tmp_path_factory):
    """A small stand-in file in a checkpoints folder known to ComfyUI."""
    folder = tmp_path_factory.mktemp("checkpoints")
    (folder / "tiny.safetensors").write_bytes(b"not really weights" * 100)
    comfyui.folder_paths.add_model_folder_path("checkpoints", str(folder))
    return folder / "tiny.safetensors"


def node(comfyui):
    return comfyui.node("SesaHandSaveDatasetSample")


def pack(comfyui, name: str):
    """A module of the pack as ComfyUI imported it, e.g. ``sesahand.data``."""
    return importlib.import_module(f"{comfyui.pack_module.__name__}.{name}")


def ui_text(output) -> str:
    return output.ui.as_dict()["text"][0]


def test_schema_follows_the_pack_conventions(comfyui):
    info = node(comfyui).GET_NODE_INFO_V1()
    assert info["category"] == "SesaHand/data" and info["display_name"] == "SesaHand Save Dataset Sample"
    assert info["output_node"] is True
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert {"images", "hands", "dataset", "alignment_threshold", "mesh", "mask"} <= set(inputs)
    for name, (_, options) in inputs.items():
        assert options.get("tooltip"), name


@pytest.mark.parametrize("name,message", [
    ("", "empty"),
    ("../escape", "'..'"),
    ("a/../../escape", "'..'"),
    ("a\\..\\escape", "'..'"),
    ("/tmp/abs", "absolute"),
    ("C:\\data", "absolute"),
    (".", "outside"),
])
def test_dataset_name_must_stay_inside_the_output_folder(comfyui, name, message, rendered):
    problem = node(comfyui).validate_inputs(dataset=name)
    assert isinstance(problem, str) and message in problem
    with pytest.raises(ValueError, match="dataset"):
        node(comfyui).execute(images=rendered[0], hands=rendered[5], dataset=name)


def test_links_leading_out_of_the_output_folder_are_refused(comfyui, tmp_path):
    (comfyui.output_dir / "link").symlink_to(tmp_path, target_is_directory=True)
    assert "outside the output folder" in node(comfyui).validate_inputs(dataset="link/ds")
    assert node(comfyui).validate_inputs(dataset="datasets/hands_v1") is True


def test_json_inputs_are_checked_before_running(comfyui):
    assert "semantics: not valid JSON" in node(comfyui).validate_inputs(semantics="{nope")
    assert "expected a JSON object" in node(comfyui).validate_inputs(sampler_settings="[1, 2]")
    assert node(comfyui).validate_inputs(semantics='{"action": "wave"}', sampler_settings="") is True


def test_saves_one_sample_per_image_with_its_frame(comfyui, rendered, checkpoint):
    mesh, depth, normal, _, mask, hands, _ = rendered  # the last: arm_mask
    images = torch.rand(2, H, W, 3)
    kwargs = dict(images=images, hands=hands, dataset="datasets/run1", prompt="two hands", seed=42,
                  semantics='{"action": "clapping"}', sampler_settings='{"steps": 4, "cfg": 7.5}',
                  ckpt_name="tiny.safetensors", mesh=mesh, depth=depth, normal=normal, mask=mask)
    out = node(comfyui).execute(**kwargs)
    assert ui_text(out) == "saved 2 of 2 image(s) to datasets/run1 as sample(s) 0, 1"
    root = comfyui.output_dir / "datasets" / "run1"
    data = pack(comfyui, "sesahand.data")
    records = data.read_labels(root)
    for i, record in enumerate(records):
        frame = hands.frame_dict(i)
        assert record["hands"] == frame["hands"] and record["K"] == frame["camera"]["K"]
        assert (record["prompt"], record["seed"]) == ("two hands", 42)
        assert record["semantics"] == {"action": "clapping"} and record["sampler"] == {"steps": 4, "cfg": 7.5}
        assert record["checkpoint"] == {"name": "tiny.safetensors",
                                        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
        assert set(record["conditions"]) == {"mesh", "depth", "normal", "mask"}
        sample = data.HandDataset(root)[i]
        assert torch.allclose(sample["image"], images[i].permute(2, 0, 1), atol=0.5 / 255 + 1e-6)
    assert data.check_dataset(root).ok

    second = replace(hands, scenes=hands.scenes[1:], meshes=hands.meshes[1:], labels=hands.labels[1:])
    again = node(comfyui).execute(**{**kwargs, "images": images[1:], "hands": second, "mesh": mesh[1:],
                                           "depth": None, "normal": None, "mask": None})
    assert ui_text(again).endswith("as sample(s) 2")  # numbering continues
    assert data.read_labels(root)[2]["hands"] == hands.frame_dict(1)["hands"]
    assert data.read_labels(root)[2]["conditions"]["mesh"] == "conditions/00000002_mesh.png"


def test_frame_counts_and_sizes_must_match(comfyui, rendered):
    hands = rendered[5]
    with pytest.raises(ValueError, match="hands: 2 frames for 3 images"):
        node(comfyui).execute(images=torch.rand(3, H, W, 3), hands=hands, dataset="bad")
    with pytest.raises(ValueError, match="mesh: 3 frames for 2 images"):
        node(comfyui).execute(images=torch.rand(2, H, W, 3), hands=hands, dataset="bad",
                              mesh=torch.rand(3, H, W, 3))
    with pytest.raises(ValueError, match="labels' camera is 96x64"):
        node(comfyui).execute(images=torch.rand(2, H, W + 8, 3), hands=hands, dataset="bad")
    assert not (comfyui.output_dir / "bad" / "labels.jsonl").exists()


def test_alignment_threshold_without_mediapipe_says_so(comfyui, rendered):
    try:
        pack(comfyui, "nodes.alignment").cached_detector("")
        pytest.skip("a hand landmarker is available here")
    except (ImportError, RuntimeError, FileNotFoundError):
        pass
    with pytest.raises(RuntimeError, match="alignment_threshold 0.5 needs the MediaPipe hand landmarker.*"
                                           "set alignment_threshold to 0"):
        node(comfyui).execute(images=torch.rand(2, H, W, 3), hands=rendered[5], dataset="aligned",
                              alignment_threshold=0.5)
    assert not (comfyui.output_dir / "aligned" / "labels.jsonl").exists()


@dataclass
class FakeResult:
    score: float
    reason: str

    def to_dict(self) -> dict:
        return {"score": self.score, "passed": self.score > 0.5, "reason": self.reason}


class FakeDetector:
    def __init__(self, task_path, **options):
        self.task_path = task_path


def test_alignment_threshold_skips_low_scores_and_says_why(comfyui, rendered, monkeypatch, tmp_path):
    hands = rendered[5]
    seen = []

    def check_alignment(image, labels, detector=None):
        seen.append((image.dtype, image.shape, labels, detector))
        return FakeResult(0.9, "ok") if len(seen) == 1 else FakeResult(0.2, "index finger 30 px off")

    alignment_node = pack(comfyui, "nodes.alignment")
    monkeypatch.setattr(alignment_node, "HandKeypointDetector", FakeDetector)
    monkeypatch.setattr(alignment_node, "_DETECTORS", {})
    task = tmp_path / "hand_landmarker.task"
    task.write_bytes(b"")
    monkeypatch.setenv(alignment_node.TASK_ENV, str(task))
    monkeypatch.setattr(pack(comfyui, "sesahand.eval.alignment"), "check_alignment", check_alignment)
    out = node(comfyui).execute(images=torch.rand(2, H, W, 3), hands=hands, dataset="filtered",
                                alignment_threshold=0.5)
    assert [(str(d), s) for d, s, _, _ in seen] == [("uint8", (H, W, 3))] * 2
    assert [labels for _, _, labels, _ in seen] == hands.labels
    assert isinstance(seen[0][3], FakeDetector) and seen[0][3] is seen[1][3]  # one detector for the batch
    assert seen[0][3].task_path == os.path.realpath(task)  # found like the Alignment Check node finds it
    assert ui_text(out) == ("saved 1 of 2 image(s) to filtered as sample(s) 0\n"
                            "image 1 not saved: alignment score 0.20 < 0.50 (index finger 30 px off)")
    records = pack(comfyui, "sesahand.data").read_labels(comfyui.output_dir / "filtered")
    assert len(records) == 1 and records[0]["alignment"] == {"score": 0.9, "passed": True, "reason": "ok"}
    assert json.loads(json.dumps(records[0]))["hands"] == hands.frame_dict(0)["hands"]
