"""The ``photos`` training source on real photos: fitted once into the cache, bad hands and
hand-less photos dropped, captions from NAME.txt, a dataset whose conditions line up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sesahand.train.config import AugmentConfig, DataConfig, SourceConfig
from sesahand.train.data import build_dataset, load_records

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"


@pytest.fixture()
def photo_source(tmp_path):
    pytest.importorskip("mediapipe")
    if not os.path.isfile(os.environ.get("SESAHAND_HAND_LANDMARKER", "")):
        pytest.skip("SESAHAND_HAND_LANDMARKER does not name a hand_landmarker.task (make test-models)")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, caption in (("open_palm_left.jpg", "a man showing four fingers"),
                          ("raised_hand_cut.jpg", "a raised hand"), ("no_hand.jpg", "a toy on a table")):
        shutil.copy(PHOTOS / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(caption)
    return folder


def test_photos_source_fits_once_and_keeps_good_hands(photo_source, anny_model, tmp_path):
    source = SourceConfig(kind="photos", path=str(photo_source))
    cache = tmp_path / "cache"
    records = load_records([source], lambda: anny_model, cache_dir=cache)
    assert [r.name.rsplit(" ", 1)[1] for r in records] == ["open_palm_left.jpg"]  # cut hand, no hand: dropped
    record = records[0]
    assert record.prompt == "a man showing four fingers"
    assert [h.side for h in record.scene.hands] == ["left"]
    w, h = Image.open(PHOTOS / "open_palm_left.jpg").size
    assert (record.scene.camera.width, record.scene.camera.height) == (w // 8 * 8, h // 8 * 8)
    assert Image.open(record.image).size == (w // 8 * 8, h // 8 * 8)
    fitted = sorted(p.parent.name for p in cache.rglob("labels.json"))
    assert len(fitted) == 3  # every photo fitted once, kept hands or not
    again = load_records([source], lambda: anny_model, cache_dir=cache, fit=False)  # from the cache only
    assert [(r.name, r.image, r.prompt, [h.to_dict() for h in r.scene.hands]) for r in again] == \
        [(r.name, r.image, r.prompt, [h.to_dict() for h in r.scene.hands]) for r in records]


def test_photos_dataset_conditions_cover_the_hand(photo_source, anny_model, tmp_path):
    from transformers import CLIPTokenizer

    from sesahand.train.model import SD15_DATA

    tokenizer = CLIPTokenizer.from_pretrained(SD15_DATA / "tokenizer", local_files_only=True)
    config = DataConfig(sources=[SourceConfig(kind="photos", path=str(photo_source))], resolution=64,
                        num_workers=0, augment=AugmentConfig(hflip=0.0, crop_scale=[1.0, 1.0]))
    ds = build_dataset(config, "mesh", tokenizer, seed=0, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds) == 1
    item = ds[(0, 0)]
    condition = item["conditioning"].numpy()
    assert condition.shape == (3, 64, 64) and condition.max() > 0.3
    joints = np.array(item["labels"]["hands"][0]["joints2d"])
    x, y = np.clip(joints.astype(int), 0, 63).T
    lit = condition.max(0) > 0.05
    assert lit[y, x].mean() >= 0.8  # the rendered hand lies under its own joints


def _photo_folder(tmp_path, names):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        shutil.copy(PHOTOS / name, folder / name)
    return folder


def _caption_line(image, caption, prompt, hand_terms):
    """One line as ``python -m sesahand caption`` writes it (its own writer and result type)."""
    from sesahand.semantics import SemanticsResult

    fields = {"pose": "standing", "action": "waving", "hand_action": "raising a hand", "environment": "indoors"}
    result = SemanticsResult(caption=caption, semantics=fields, prompt=prompt, hand_terms=list(hand_terms))
    return {"image": image, **result.to_dict()}


def test_photos_captions_from_the_semantics_pipeline_output(tmp_path):
    """``PHOTOS/captions.jsonl`` (the ``caption`` command's output) is read without configuring
    it, before NAME.txt; ``caption_field`` picks the raw caption; an explicit file wins."""
    from sesahand.semantics.commands import append_lines
    from sesahand.train.photos import photo_captions

    folder = _photo_folder(tmp_path, ["open_palm_left.jpg", "rock_right.jpg", "point_left.jpg"])
    append_lines(folder / "captions.jsonl", [
        _caption_line("open_palm_left.jpg", "a man raises his hand", "a man raising an open hand, photo",
                      ["open", "hand"]),
        _caption_line("rock_right.jpg", "a hand sign", "a person making a rock sign, photo", ["hand"])])
    (folder / "rock_right.txt").write_text("ignored: the pipeline's caption comes first")
    (folder / "point_left.txt").write_text("a finger pointing up")
    photos = sorted(folder.glob("*.jpg"))
    got = photo_captions(SourceConfig(kind="photos", path=str(folder)), photos)
    assert {p.name: v for p, v in got.items()} == {
        "open_palm_left.jpg": ("a man raising an open hand, photo", ("open", "hand")),
        "rock_right.jpg": ("a person making a rock sign, photo", ("hand",)),
        "point_left.jpg": ("a finger pointing up", ())}
    raw = photo_captions(SourceConfig(kind="photos", path=str(folder), caption_field="caption"), photos)
    assert raw[folder / "open_palm_left.jpg"][0] == "a man raises his hand"
    other = tmp_path / "other.jsonl"
    append_lines(other, [_caption_line("point_left.jpg", "c", "from the explicit file", [])])
    explicit = photo_captions(SourceConfig(kind="photos", path=str(folder), captions=str(other),
                                           prompt="a hand"), photos)
    assert {p.name: v[0] for p, v in explicit.items()} == {
        "open_palm_left.jpg": "a hand", "rock_right.jpg": "ignored: the pipeline's caption comes first",
        "point_left.jpg": "from the explicit file"}


def test_a_photo_without_caption_fails_before_any_fit(tmp_path, anny_model):
    folder = _photo_folder(tmp_path, ["open_palm_left.jpg", "rock_right.jpg"])
    (folder / "open_palm_left.txt").write_text("a raised hand")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as error:
        load_records([SourceConfig(kind="photos", path=str(folder))], lambda: anny_model, cache_dir=cache)
    message = str(error.value)
    assert "1 photo(s) without a caption: rock_right.jpg" in message
    assert "open_palm_left" not in message
    for way in ("python -m sesahand caption", "captions.jsonl", "NAME.txt", "'captions'", "'prompt'"):
        assert way in message
    assert not (cache / "photo_fits").exists()  # nothing fitted, nothing half-written
