"""Building and finding the hand_landmarker.task file (no mediapipe needed)."""

from __future__ import annotations

import zipfile

import pytest

from sesahand.cli import main
from sesahand.eval import TASK_ENV, HandKeypointDetector, build_hand_landmarker_task, find_task_path
from sesahand.eval.detector import TASK_MEMBERS

PALM, LANDMARKS = TASK_MEMBERS


@pytest.fixture
def fake_wheel(tmp_path):
    """A zip laid out like the mediapipe 0.10.21 wheel, with stand-in model bytes."""
    path = tmp_path / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(PALM, b"palm model")
        z.writestr(LANDMARKS, b"landmark model")
        z.writestr("mediapipe/__init__.py", b"")
    return path


def task_contents(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def test_task_from_wheel_holds_the_two_models_under_task_names(fake_wheel, tmp_path):
    out = build_hand_landmarker_task(fake_wheel, tmp_path / "sub" / "hand_landmarker.task")
    assert task_contents(out) == {"hand_detector.tflite": b"palm model",
                                  "hand_landmarks_detector.tflite": b"landmark model"}
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_task_from_an_unpacked_folder_and_the_cli(fake_wheel, tmp_path):
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(fake_wheel).extractall(unpacked)
    out = tmp_path / "cli.task"
    assert main(["qa-model", "--source", str(unpacked), "--out", str(out)]) == 0
    assert set(task_contents(out)) == {"hand_detector.tflite", "hand_landmarks_detector.tflite"}


def test_wrong_sources_are_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "x.task"
    newer = tmp_path / "mediapipe-1.2.2.whl"
    with zipfile.ZipFile(newer, "w") as z:
        z.writestr("mediapipe/__init__.py", b"")
    with pytest.raises(FileNotFoundError, match="0.10.21"):
        build_hand_landmarker_task(newer, out)
    (tmp_path / "text.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="not a wheel"):
        build_hand_landmarker_task(tmp_path / "text.whl", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="palm_detection_full.tflite"):
        build_hand_landmarker_task(tmp_path / "empty", out)
    assert main(["qa-model", "--source", str(tmp_path / "nope.whl"), "--out", str(out)]) == 2
    assert not out.exists()


def test_the_task_path_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    task = tmp_path / "h.task"
    task.write_bytes(b"x")
    monkeypatch.delenv(TASK_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=TASK_ENV):
        find_task_path()
    assert find_task_path(task) == task
    monkeypatch.setenv(TASK_ENV, str(task))
    assert find_task_path() == task
    with pytest.raises(FileNotFoundError, match="file not found.*qa-model"):
        find_task_path(tmp_path / "missing.task")


def test_detector_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="num_hands"):
        HandKeypointDetector(tmp_path / "h.task", num_hands=0)
    with pytest.raises(ValueError, match="min_confidence"):
        HandKeypointDetector(tmp_path / "h.task", min_confidence=2.0)


def test_a_file_that_is_not_a_model_gives_a_clear_error(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe not installed: model loading not testable")
    task = tmp_path / "broken.task"
    task.write_bytes(b"not a task file")
    with pytest.raises(RuntimeError, match="cannot load it"):
        HandKeypointDetector(task)
