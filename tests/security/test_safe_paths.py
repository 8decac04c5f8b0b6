"""The one path rule (``sesahand.safe_paths``) and the size limits (``sesahand.limits``)."""

from __future__ import annotations

import os
import threading

import pytest

from sesahand import limits
from sesahand.safe_paths import (
    PathRefused,
    check_write_file,
    make_write_dir,
    read_input_file,
    read_local_file,
    resolve_input_file,
)

SECRET = "TOPSECRET-7f3a"


@pytest.fixture
def folders(tmp_path):
    """An allowed folder ``input`` holding good and hostile entries, and a secret outside it."""
    inp = tmp_path / "input"
    (inp / "sub").mkdir(parents=True)
    (inp / "pose.json").write_text('{"frames": []}')
    (inp / "sub" / "deep.json").write_text("{}")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.json").write_text(f'{{"token": "{SECRET}"}}')
    os.symlink(outside / "secret.json", inp / "link_out.json")
    os.symlink(outside, inp / "dir_out")
    os.symlink(inp / "pose.json", inp / "link_in.json")
    os.mkfifo(inp / "fifo.json")
    return inp, outside


def read(value, inp, max_bytes=1000):
    return read_input_file(value, [inp], what="pose_json", max_bytes=max_bytes)


def test_files_inside_the_folder_are_read(folders):
    inp, _ = folders
    assert read("pose.json", inp) == b'{"frames": []}'
    assert read(" sub/deep.json ", inp) == b"{}"
    assert read(str(inp / "pose.json"), inp) == b'{"frames": []}'  # absolute, but inside
    assert read("link_in.json", inp) == b'{"frames": []}'  # a link that stays inside
    assert resolve_input_file("sub/../pose.json", [inp], what="x", max_bytes=100) == \
        (inp / "pose.json").resolve()


@pytest.mark.parametrize("value", [
    "../private/secret.json",       # traversal
    "sub/../../private/secret.json",
    "{private}/secret.json",        # absolute path outside
    "/etc/hostname",
    "link_out.json",                # a link inside pointing out
    "dir_out/secret.json",          # through a linked folder
    "/dev/zero",                    # a device
    ".",                            # the folder itself
])
def test_paths_leading_out_are_refused_without_contents(folders, value):
    inp, outside = folders
    value = value.format(private=outside)
    with pytest.raises(PathRefused, match="not a file inside the allowed folders") as err:
        read(value, inp)
    assert SECRET not in str(err.value) and "pose_json" in str(err.value)


def test_outside_paths_get_the_same_answer_whether_they_exist_or_not(folders):
    inp, outside = folders
    answers = []
    for name in ("secret.json", "no_such_file.json"):
        with pytest.raises(PathRefused) as err:
            read(str(outside / name), inp)
        answers.append(str(err.value).replace(name, "NAME"))
    assert answers[0] == answers[1]


def test_a_fifo_is_refused_at_once(folders):
    inp, _ = folders
    result = {}

    def attempt():
        try:
            read("fifo.json", inp)
        except PathRefused as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader before failing
        with open(inp / "fifo.json", "w") as f:
            f.write("x")
        pytest.fail("opening a FIFO blocked")
    assert "not a regular file" in result["error"]


def test_folders_missing_files_nul_and_size(folders):
    inp, _ = folders
    with pytest.raises(PathRefused, match="not a regular file"):
        read("sub", inp)
    with pytest.raises(PathRefused, match="no such file"):
        read("missing.json", inp)
    with pytest.raises(PathRefused, match="NUL"):
        read("pose\0.json", inp)
    with pytest.raises(PathRefused, match="empty"):
        read("  ", inp)
    with pytest.raises(PathRefused, match="more than the limit of 5 bytes"):
        read("pose.json", inp, max_bytes=5)
    with pytest.raises(PathRefused, match="not a file inside"):
        read_input_file("pose.json", [], what="pose_json", max_bytes=100)


def test_several_roots_are_searched_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "m.task").write_bytes(b"B")
    assert read_input_file("m.task", [a, b], what="task_file", max_bytes=10) == b"B"
    (a / "m.task").write_bytes(b"A")
    assert read_input_file("m.task", [a, b], what="task_file", max_bytes=10) == b"A"


def test_local_files_for_the_cli(tmp_path):
    (tmp_path / "f.json").write_text("{}")
    assert read_local_file(tmp_path / "f.json", what="pose file", max_bytes=10) == b"{}"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PathRefused, match="not a regular file"):
        read_local_file(tmp_path / "fifo", what="pose file", max_bytes=10)
    with pytest.raises(PathRefused, match="cannot read"):
        read_local_file(tmp_path / "nope", what="pose file", max_bytes=10)
    with pytest.raises(PathRefused, match="more than the limit"):
        read_local_file(tmp_path / "f.json", what="pose file", max_bytes=1)


def test_write_folders_never_follow_links(tmp_path):
    out, elsewhere = tmp_path / "output", tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = make_write_dir("ds/images", inside=out, what="dataset")
    assert made == (out / "ds" / "images").resolve() and made.is_dir()
    os.symlink(elsewhere, out / "ds" / "conditions")
    with pytest.raises(PathRefused, match="symbolic link"):
        make_write_dir("ds/conditions", inside=out, what="dataset")
    os.symlink(elsewhere, out / "linked")
    with pytest.raises(PathRefused, match="symbolic link"):
        make_write_dir("linked/images", inside=out, what="dataset")
    for bad in ("../x", str(tmp_path / "x"), "a\0b"):
        with pytest.raises(PathRefused):
            make_write_dir(bad, inside=out, what="dataset")
    (out / "file").write_text("")
    with pytest.raises(PathRefused, match="not a folder"):
        make_write_dir("file", inside=out, what="dataset")
    assert list(elsewhere.iterdir()) == []
    os.symlink(elsewhere / "t", out / "labels.jsonl")
    with pytest.raises(PathRefused, match="symbolic link"):
        check_write_file(out / "labels.jsonl", what="labels")
    assert check_write_file(out / "new.jsonl", what="labels") == out / "new.jsonl"


@pytest.mark.parametrize("size,message", [
    ((512, 512), None),
    ((limits.MAX_IMAGE_SIDE, limits.MAX_IMAGE_SIDE), None),
    ((100000, 100000), "outside 8..4096"),
    ((40000, 8), "width 40000 is outside"),
    ((8, 40000), "height 40000 is outside"),
    ((500, 512), "not a multiple of 8"),
    ((512.0, 512), "not a whole number"),
    (("512", 512), "not a whole number"),
    ((True, 512), "not a whole number"),
    ((0, 512), "outside"),
])
def test_image_size_limits(size, message):
    if message is None:
        assert limits.check_image_size(*size, what="size") == size
    else:
        with pytest.raises(ValueError, match=message):
            limits.check_image_size(*size, what="size")


def test_fov_and_count_limits():
    assert limits.check_fov(40, "fov") == 40.0
    for bad in (0, 4.9, 121, float("nan"), float("inf"), "40", True):
        with pytest.raises(ValueError, match="fov"):
            limits.check_fov(bad, "fov")
    assert limits.check_count(3, 64, "batch_size") == 3
    with pytest.raises(ValueError, match="batch_size"):
        limits.check_count(65, 64, "batch_size")
    huge = "x" * 10000
    with pytest.raises(ValueError) as err:
        limits.check_fov(huge, "fov")
    assert len(str(err.value)) < 200  # a hostile value is not repeated in full
