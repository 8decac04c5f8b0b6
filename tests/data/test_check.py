"""Consistency check and repair, and the ``dataset check`` command."""

from __future__ import annotations

import json

import pytest

from sesahand.cli import main
from sesahand.data import check_dataset, image_path, read_labels


def damage(root):
    """Add one problem of every kind to a 3-sample dataset; returns the expected findings."""
    labels = root / "labels.jsonl"
    lines = labels.read_text().splitlines(keepends=True)
    bad_schema = json.loads(lines[1])
    bad_schema["hands"][0]["joints2d"] = bad_schema["hands"][0]["joints2d"][:20]
    duplicate = json.loads(lines[0])  # an earlier line with index 2: the later line 3 wins
    duplicate["index"], duplicate["image"], duplicate["conditions"] = 2, "images/00000002.png", {}
    labels.write_text("".join([lines[0], json.dumps(duplicate) + "\n", lines[1], lines[2],
                               '{"index": 9, "image": "images/0000\n', json.dumps(bad_schema) + "\n"]))
    image_path(root, 1).unlink()  # line 3 (sample 1) loses its image
    image_path(root, 42).write_bytes(image_path(root, 0).read_bytes())
    (root / "images" / ".00000043.png.abc.tmp").write_bytes(b"partial")
    (root / "conditions" / "00000001_mesh.png").write_bytes(b"x")  # sample 1's record is dropped
    return [
        ("corrupt_line", 5, None),
        ("invalid_record", 6, None),
        ("duplicate_index", 2, None),
        ("missing_file", 3, None),
        ("orphan_file", None, "conditions/00000001_mesh.png"),
        ("orphan_file", None, "images/.00000043.png.abc.tmp"),
        ("orphan_file", None, "images/00000042.png"),
    ]


def test_clean_dataset_passes(small_dataset, capsys):
    root, _, _ = small_dataset
    report = check_dataset(root)
    assert report.ok and report.records == 3 and report.problems == []
    assert main(["dataset", "check", str(root)]) == 0
    assert "3 intact record(s), 0 problem(s)" in capsys.readouterr().out


def test_every_problem_is_found_with_its_line(small_dataset, capsys):
    root, _, _ = small_dataset
    expected = damage(root)
    before = (root / "labels.jsonl").read_bytes()
    report = check_dataset(root)
    assert [(p.kind, p.line, p.path) for p in report.problems] == expected
    assert report.records == 2 and not report.ok
    by_line = {p.line: p.message for p in report.problems}
    assert "not valid JSON" in by_line[5]
    assert "hands/0/joints2d" in by_line[6]
    assert "used again on line 4" in by_line[2]
    assert "missing images/00000001.png" in by_line[3]
    with pytest.raises(ValueError, match="line 5"):
        read_labels(root)
    assert (root / "labels.jsonl").read_bytes() == before  # checking writes nothing
    assert main(["dataset", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "labels.jsonl line 5" in out and "--repair" in out


def test_repair_sets_problems_aside(small_dataset, capsys):
    root, _, _ = small_dataset
    damage(root)
    lines = (root / "labels.jsonl").read_text().splitlines()
    assert main(["dataset", "check", str(root), "--repair"]) == 0
    assert "repaired" in capsys.readouterr().out
    assert [r["index"] for r in read_labels(root)] == [0, 2]
    assert read_labels(root)[1] == json.loads(lines[3])  # the later record of index 2 is kept
    quarantine = root / "quarantine"
    bad = [json.loads(line) for line in (quarantine / "bad_lines.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad] == [2, 3, 5, 6]
    assert [b["text"] for b in bad] == [lines[1], lines[2], lines[4], lines[5]]
    assert sorted(p.relative_to(quarantine).as_posix() for p in quarantine.rglob("*.png*")) == [
        "conditions/00000001_mesh.png", "images/.00000043.png.abc.tmp", "images/00000042.png"]
    assert check_dataset(root).ok
    # a second orphan of the same name is kept beside the first
    image_path(root, 42).write_bytes(b"again")
    report = check_dataset(root, repair=True)
    assert report.repaired and report.quarantined == ["quarantine/images/00000042.1.png"]
    assert (quarantine / "images" / "00000042.1.png").read_bytes() == b"again"


@pytest.mark.parametrize("planted", ["quarantine", "quarantine/images"])
def test_repair_refuses_a_linked_quarantine_and_writes_nothing(small_dataset, tmp_path, planted):
    root, _, _ = small_dataset
    damage(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / planted).parent.mkdir(exist_ok=True)
    (root / planted).symlink_to(outside, target_is_directory=True)
    labels = (root / "labels.jsonl").read_bytes()
    with pytest.raises(ValueError, match=f"{planted} is a symbolic link.*move {planted} away"):
        check_dataset(root, repair=True)
    assert (root / "labels.jsonl").read_bytes() == labels and list(outside.iterdir()) == []
    assert image_path(root, 42).is_file()  # the orphan was not moved


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_dataset(tmp_path / "nope")
    assert main(["dataset", "check", str(tmp_path / "nope")]) == 2
