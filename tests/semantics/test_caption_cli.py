"""``python -m sesahand caption``: JSON lines, resuming, cache, bad input (tiny random models:
the LLM writes garbage, so the extraction falls back to the rules, which the lines record)."""

import json

import numpy as np
import pytest
from PIL import Image

from sesahand.cli import main
from sesahand.semantics import Captioner, Extractor, SemanticsResult
from sesahand.semantics.commands import read_done


def write_images(folder, count, start=0):
    rng = np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def run(tiny_vlm_dir, tiny_llm_dir, monkeypatch):
    """The CLI with the tiny models, generating few tokens (the CLI uses the models' defaults:
    hundreds of tokens, slow even for tiny models)."""
    load_captioner, load_extractor = Captioner.load.__func__, Extractor.load.__func__
    monkeypatch.setattr(Captioner, "load", classmethod(
        lambda cls, path, **kw: load_captioner(cls, path, max_new_tokens=8, **kw)))
    monkeypatch.setattr(Extractor, "load", classmethod(
        lambda cls, path, **kw: load_extractor(cls, path, max_new_tokens=16, max_repairs=0, **kw)))

    def run_cli(images, out, *extra):
        return main(["caption", str(images), "--vlm", str(tiny_vlm_dir), "--llm", str(tiny_llm_dir),
                     "--out", str(out), "--device", "cpu", "--dtype", "float32", *extra])
    return run_cli


def test_one_line_per_image_then_resume_and_cache(tmp_path, run, tiny_captioner, caplog):
    images, out, cache = tmp_path / "images", tmp_path / "captions.jsonl", tmp_path / "cache"
    write_images(images, 2)
    write_images(images / "sub", 1, start=2)
    assert run(images, out, "--batch-size", "2", "--cache", str(cache)) == 0
    records = lines(out)
    assert sorted(r["image"] for r in records) == ["img0.png", "img1.png", "sub/img2.png"]
    for record in records:
        result = SemanticsResult.from_dict(record)
        assert result.semantics_source in ("model", "repaired", "fallback")
        assert result.caption_source == "model" and result.prompt
        assert result.models["captioner"] == tiny_captioner.model_id
        # the caption is the captioner's, for that image
        assert result.caption == tiny_captioner.caption([images / record["image"]])[0]

    # resume: only the new image is captioned, nothing is duplicated
    write_images(images, 1, start=3)
    assert run(images, out, "--cache", str(cache)) == 0
    again = lines(out)
    assert again[:3] == records and [r["image"] for r in again[3:]] == ["img3.png"]
    assert run(images, out) == 0 and lines(out) == again  # all done: nothing to add

    # a new output file with the same cache: identical results from the cache
    caplog.clear()
    caplog.set_level("INFO")
    fresh = tmp_path / "fresh.jsonl"
    assert run(images, fresh, "--cache", str(cache)) == 0
    assert sorted(lines(fresh), key=lambda r: r["image"]) == sorted(again, key=lambda r: r["image"])
    assert "4 from the cache, 0 generated" in caplog.text


def test_a_truncated_last_line_is_dropped_and_redone(tmp_path, run, caplog):
    images, out = tmp_path / "images", tmp_path / "captions.jsonl"
    write_images(images, 2)
    assert run(images, out) == 0
    complete = out.read_text().splitlines(keepends=True)
    out.write_text(complete[0] + complete[1][:25])  # interrupted in the middle of a line
    assert read_done(out) == {json.loads(complete[0])["image"]}
    assert "incomplete" in caplog.text
    assert out.read_text() == complete[0]
    assert run(images, out) == 0
    assert sorted(r["image"] for r in lines(out)) == ["img0.png", "img1.png"]


def test_corrupt_images_are_skipped_and_reported(tmp_path, run, caplog):
    images, out = tmp_path / "images", tmp_path / "captions.jsonl"
    write_images(images, 1)
    (images / "broken.png").write_bytes((images / "img0.png").read_bytes()[:50])
    assert run(images, out) == 1
    assert [r["image"] for r in lines(out)] == ["img0.png"]
    assert "broken.png" in caplog.text


@pytest.mark.parametrize("case,message", [
    ("no_dir", "is not a folder"),
    ("empty_dir", "holds no image files"),
    ("bad_vlm", "VLM folder"),
    ("bad_out", "line 1 is not a caption record"),
    ("batch", "--batch-size"),
])
def test_bad_input_exits_2(tmp_path, run, caplog, case, message, tiny_vlm_dir, tiny_llm_dir):
    images, out = tmp_path / "images", tmp_path / "captions.jsonl"
    if case != "no_dir":
        images.mkdir()
    if case not in ("no_dir", "empty_dir"):
        write_images(images, 1)
    if case == "bad_vlm":
        code = main(["caption", str(images), "--vlm", str(tmp_path / "none"), "--llm",
                     str(tiny_llm_dir), "--out", str(out), "--device", "cpu"])
    else:
        if case == "bad_out":
            out.write_text("not json\n")
        code = run(images, out, *(["--batch-size", "0"] if case == "batch" else []))
    assert code == 2
    assert message in caplog.text
    if case != "bad_out":
        assert not out.exists()


def test_an_interrupt_keeps_the_finished_batches(tmp_path, run, monkeypatch):
    from sesahand.semantics import SemanticsPipeline

    images, out = tmp_path / "images", tmp_path / "captions.jsonl"
    write_images(images, 3)
    real_run, calls = SemanticsPipeline.run, []

    def interrupted(self, batch, joints3d=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, batch, joints3d)

    monkeypatch.setattr(SemanticsPipeline, "run", interrupted)
    assert run(images, out, "--batch-size", "1") == 130
    assert [r["image"] for r in lines(out)] == ["img0.png"]
    monkeypatch.setattr(SemanticsPipeline, "run", real_run)
    assert run(images, out, "--batch-size", "1") == 0
    assert [r["image"] for r in lines(out)] == ["img0.png", "img1.png", "img2.png"]
