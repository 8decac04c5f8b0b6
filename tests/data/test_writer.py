"""DatasetWriter: format, atomicity, numbering, lock, bad input, full and read-only disks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

import sesahand
from sesahand.data import (
    DatasetWriter,
    check_dataset,
    file_sha256,
    image_path,
    labels_schema,
    read_labels,
    update_records,
)
from sesahand.data import writer as writer_module



def files_of(root: Path) -> list[str]:
    """Every file under images/ and conditions/, relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for sub in ("images", "conditions")
                  for p in (root / sub).iterdir())


def test_records_follow_the_schema_and_the_labels(small_dataset, frame_size):
    root, hands, images = small_dataset
    records = read_labels(root)
    assert [r["index"] for r in records] == [0, 1, 2]
    validator = jsonschema.Draft202012Validator(labels_schema())
    for line in (root / "labels.jsonl").read_text().splitlines():
        validator.validate(json.loads(line))
    for i, record in enumerate(records):
        frame = hands.frame_dict(i)
        assert record["image"] == f"images/{i:08d}.png"
        assert (record["width"], record["height"]) == frame_size
        assert record["K"] == frame["camera"]["K"]
        assert record["hands"] == frame["hands"]
        assert record["sesahand_version"] == sesahand.__version__
        assert record["alignment"] is None
        saved = np.asarray(Image.open(image_path(root, i)))
        assert np.array_equal(saved, images[i])  # PNG is lossless
    first = records[0]
    assert (first["prompt"], first["seed"], first["semantics"], first["sampler"]) == \
        ("a hand", 7, {"action": "wave"}, {"steps": 4, "cfg": 7.0})
    assert records[1]["prompt"] is None and records[1]["conditions"] == {}
    assert set(first["conditions"]) == {"mesh", "depth", "normal", "mask"}
    modes = {name: Image.open(root / path).mode for name, path in first["conditions"].items()}
    assert modes == {"mesh": "RGB", "depth": "L", "normal": "RGB", "mask": "L"}
    mesh = np.asarray(Image.open(root / first["conditions"]["mesh"]))
    assert np.array_equal(mesh, images[0][::-1])
    assert check_dataset(root).ok


def test_appending_resumes_numbering_after_records_and_orphans(small_dataset, image_factory, hands_factory):
    root, hands, _ = small_dataset
    with DatasetWriter(root) as writer:
        assert writer.next_index == 3
        assert writer.append(image_factory(9), hands.frame_dict(0)) == 3
    orphan = image_path(root, 7)
    orphan.write_bytes(image_path(root, 0).read_bytes())
    with DatasetWriter(root) as writer:
        assert writer.append(image_factory(10), hands.frame_dict(0)) == 8  # 7 is never overwritten
    assert [r["index"] for r in read_labels(root)] == [0, 1, 2, 3, 8]


def test_one_writer_at_a_time(tmp_path, image_factory, hands_factory):
    first = DatasetWriter(tmp_path / "ds")
    with pytest.raises(RuntimeError, match="another process or writer"):
        DatasetWriter(tmp_path / "ds")
    with pytest.raises(RuntimeError, match="another process or writer"):
        update_records(tmp_path / "ds", {})
    first.close()
    with DatasetWriter(tmp_path / "ds") as second:
        second.append(image_factory(), hands_factory().frame_dict(0))
    with pytest.raises(ValueError, match="closed"):
        second.append(image_factory(), hands_factory().frame_dict(0))


@pytest.mark.parametrize("change,message", [
    (lambda img, lab, kw: (img[:, :-8], lab, kw), "labels' camera is 64x48"),
    (lambda img, lab, kw: (img, {k: v for k, v in lab.items() if k != "camera"}, kw), "missing field 'camera'"),
    (lambda img, lab, kw: (img, lab, {"conditions": {"pose": img}}), "unknown name 'pose'"),
    (lambda img, lab, kw: (img, lab, {"conditions": {"mesh": img[:8]}}), r"conditions\[mesh\]: size"),
    (lambda img, lab, kw: (img.astype(np.int32), lab, kw), "dtype int32"),
    (lambda img, lab, kw: (img, lab, {"checkpoint": "/no/such/model.safetensors"}), "does not exist"),
    (lambda img, lab, kw: (img, lab, {"seed": "seven"}), "seed: 'seven' is not of type"),
    (lambda img, lab, kw: (img, {**lab, "hands": [{**lab["hands"][0], "side": "middle"}]}, kw),
     "hands/0/side"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, image_factory, hands_factory, change,
                                                         message):
    image, labels, kwargs = change(image_factory(), hands_factory().frame_dict(0), {})
    with DatasetWriter(tmp_path / "ds") as writer:
        with pytest.raises(ValueError, match=message):
            writer.append(image, labels, **kwargs)
        assert writer.next_index == 0
    assert files_of(tmp_path / "ds") == [] and not (tmp_path / "ds" / "labels.jsonl").exists()


def test_model_files_are_hashed_once_per_version(tmp_path, image_factory, hands_factory, monkeypatch):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    control = tmp_path / "control.pth"
    control.write_bytes(b"control")
    with DatasetWriter(tmp_path / "ds") as writer:
        writer.append(image_factory(), hands_factory().frame_dict(0), checkpoint=ckpt, controlnets=[control])
        opened = []
        real_open = open
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
        writer.append(image_factory(), hands_factory().frame_dict(0), checkpoint=ckpt, controlnets=[control])
        monkeypatch.undo()
    assert opened, "the spy saw no file opened"
    hashed = {os.path.realpath(ckpt), os.path.realpath(control)}
    assert not hashed & {os.path.realpath(p) for p in opened}  # hashes came from the cache
    record = read_labels(tmp_path / "ds")[1]
    assert record["checkpoint"] == {"name": "model.safetensors",
                                    "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert record["controlnets"] == [{"name": "control.pth", "sha256": hashlib.sha256(b"control").hexdigest()}]
    ckpt.write_bytes(b"other weights")  # new size and mtime: hashed again
    assert file_sha256(ckpt) == hashlib.sha256(b"other weights").hexdigest()


def _fail_with(error_number: int):
    def fail(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))
    return fail


def test_full_disk_while_writing_conditions_leaves_nothing(small_dataset, image_factory, hands_factory,
                                                           monkeypatch):
    root, hands, _ = small_dataset
    before_files, before_labels = files_of(root), (root / "labels.jsonl").read_bytes()
    real_save, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # image and mesh written, depth hits the full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with DatasetWriter(root) as writer:
        with pytest.raises(OSError, match="disk is full") as info:
            writer.append(image_factory(), hands.frame_dict(0),
                          conditions={"mesh": image_factory(1), "depth": image_factory(2)})
        assert info.value.errno == errno.ENOSPC and "nothing of it was kept" in str(info.value)
        assert writer.next_index == 3
    assert files_of(root) == before_files  # no temporary file either
    assert (root / "labels.jsonl").read_bytes() == before_labels


def test_full_disk_on_the_labels_line_removes_the_sample(small_dataset, image_factory, monkeypatch):
    root, hands, _ = small_dataset
    before_files, before_labels = files_of(root), (root / "labels.jsonl").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("labels.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(writer_module.os, "fsync", fsync)
    with DatasetWriter(root) as writer:
        with pytest.raises(OSError, match="disk is full"):
            writer.append(image_factory(), hands.frame_dict(0), conditions={"mask": image_factory(1)})
    monkeypatch.undo()
    assert files_of(root) == before_files
    assert (root / "labels.jsonl").read_bytes() == before_labels  # the written line was cut back
    assert check_dataset(root).ok


def test_read_only_file_system_gives_a_clear_error(small_dataset, image_factory, monkeypatch):
    root, hands, _ = small_dataset
    before_files = files_of(root)
    monkeypatch.setattr("sesahand.io.tempfile.mkstemp", _fail_with(errno.EROFS))
    with DatasetWriter(root) as writer:
        with pytest.raises(OSError, match="read-only: use a dataset folder on a writable disk"):
            writer.append(image_factory(), hands.frame_dict(0))
    assert files_of(root) == before_files


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_gives_a_clear_error(small_dataset, image_factory, tmp_path):
    root, hands, _ = small_dataset
    writer = DatasetWriter(root)
    for sub in ("images", "conditions", ""):
        os.chmod(root / sub, 0o555)
    try:
        with pytest.raises(OSError, match="permission denied"):
            writer.append(image_factory(), hands.frame_dict(0))
        writer.close()
        with pytest.raises(OSError, match="permission denied"):
            DatasetWriter(tmp_path / "ds" / "new")
    finally:
        for sub in ("images", "conditions", ""):
            os.chmod(root / sub, 0o755)
    assert check_dataset(root).ok


def test_cut_off_last_line(small_dataset, image_factory, caplog):
    root, hands, _ = small_dataset
    labels = root / "labels.jsonl"
    data = labels.read_bytes()
    labels.write_bytes(data[:-40])  # the third record loses its end
    with pytest.raises(ValueError, match="line 3: .*truncated"):
        read_labels(root)
    with DatasetWriter(root) as writer:
        assert writer.append(image_factory(), hands.frame_dict(0)) == 3
    assert "lines [3] are damaged" in caplog.text
    report = check_dataset(root)
    assert [(p.kind, p.line, p.path) for p in report.problems] == [
        ("corrupt_line", 3, None), ("orphan_file", None, "images/00000002.png")]


def test_update_records_merges_fields_atomically(small_dataset):
    root, _, _ = small_dataset
    update_records(root, {1: {"alignment": {"score": 0.8, "passed": True}}})
    records = read_labels(root)
    assert records[1]["alignment"] == {"score": 0.8, "passed": True}
    assert records[0]["alignment"] is None and records[0]["prompt"] == "a hand"
    before = (root / "labels.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"indices \[5\]"):
        update_records(root, {5: {"alignment": None}})
    with pytest.raises(ValueError, match="alignment"):
        update_records(root, {0: {"alignment": 0.5}})
    assert (root / "labels.jsonl").read_bytes() == before
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("planted", ["images", "conditions", "labels.jsonl", ".lock"])
def test_links_planted_in_the_dataset_folder_are_refused(tmp_path, hands_factory, image_factory, planted, frame_size):
    """A symbolic link inside the dataset folder cannot send a write (or a lock's truncation)
    outside it: the writer refuses and the link's target is untouched."""
    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    target = elsewhere if planted in ("images", "conditions") else elsewhere / "victim.txt"
    if target != elsewhere:
        target.write_text("precious")
    os.symlink(target, root / planted)
    with pytest.raises(ValueError, match="symbolic link"):
        with DatasetWriter(root) as writer:
            writer.append(image_factory(0), hands_factory().frame_dict(0),
                          conditions={"mask": np.zeros((frame_size[1], frame_size[0]), np.uint8)})
    if target == elsewhere:
        assert list(elsewhere.iterdir()) == []
    else:
        assert target.read_text() == "precious"
