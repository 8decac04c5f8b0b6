"""Training data: sources, captions, rendered-condition cache, label-keeping augmentation, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sesahand.train.config import AugmentConfig, DataConfig, SourceConfig
from sesahand.train.data import (
    ConditionCache,
    EpochSampler,
    build_dataset,
    choose_crop,
    collate,
    crop_labels,
    flip_scene,
    load_records,
    scene_from_labels,
    tokenize_prompt,
)



@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    from sesahand.train.model import SD15_DATA

    return CLIPTokenizer.from_pretrained(SD15_DATA / "tokenizer", local_files_only=True)


def data_config(path, **augment) -> DataConfig:
    return DataConfig(sources=[SourceConfig(kind="records", path=str(path))], resolution=32, num_workers=0,
                      augment=AugmentConfig(**augment))


def test_flip_scene_renders_the_mirrored_image(anny_model, toy_records, image_size):
    from sesahand.pipeline import render_scenes

    scene = scene_from_labels(json.loads((toy_records / "sample_0.json").read_text()), "sample_0")
    flipped = flip_scene(scene)
    assert [h.side for h in flipped.hands] == ["left"]
    cond, rendered = render_scenes(anny_model, [scene])
    cond_f, rendered_f = render_scenes(anny_model, [flipped])
    # joints land at W - u; the hand's pixels are the mirrored pixels
    uv, uv_f = rendered.labels[0][0].joints2d, rendered_f.labels[0][0].joints2d
    torch.testing.assert_close(uv_f[:, 0], image_size - uv[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(uv_f[:, 1], uv[:, 1], atol=1e-3, rtol=0)
    mask, mask_f = cond.mask[0].bool(), cond_f.mask[0].bool()
    assert (mask.flip(-1) ^ mask_f).sum() <= 0.03 * mask.sum()
    # colours follow the new side
    mean_f = cond_f.mesh[0][mask_f].mean(0)
    assert mean_f[0] > mean_f[2]  # left hands are orange, right hands blue


def test_crop_labels_keep_projection_consistent(toy_records):
    labels = json.loads((toy_records / "sample_1.json").read_text())
    out = crop_labels(labels, 10, 6, 48, 32)
    K = torch.tensor(out["camera"]["K"])
    for hand in out["hands"]:
        j3 = torch.tensor(hand["joints3d"])
        uv = (j3 @ K.T)[:, :2] / (j3 @ K.T)[:, 2:]
        torch.testing.assert_close(uv, torch.tensor(hand["joints2d"]), atol=1e-3, rtol=0)
        inside = ((uv >= 0) & (uv < 32)).all(1)
        assert not (torch.tensor(hand["visible"]) & ~inside).any()
    assert out["camera"]["width"] == out["camera"]["height"] == 32


def test_choose_crop_keeps_hands_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, side = choose_crop(rng, 96, 64, [[70, 10, 90, 30]], [0.5, 0.8])
        assert 32 <= side <= 64 and x0 <= 70 and x0 + side >= 90 and y0 <= 10 and y0 + side >= 30
        assert 0 <= x0 <= 96 - side and 0 <= y0 <= 64 - side


def test_tokenize_marks_hand_words(tokenizer):
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    ids, weights, mask = tokenize_prompt(tokenizer, vocab, "a person waving a hand near the sea", ["sea"])
    words = [vocab[int(i)] for i in ids[mask]]
    assert words == ["waving</w>", "hand</w>", "sea</w>"]
    assert ids.shape == (77,) and ids[0] == tokenizer.bos_token_id and not mask[0]
    assert torch.equal(weights, torch.ones(77))


def test_dataset_items_and_determinism(toy_records, tokenizer, tmp_path):
    config = data_config(toy_records, hflip=0.5, crop_scale=[0.6, 1.0])
    ds = build_dataset(config, "mesh", tokenizer, seed=3, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds) == 4 and len(list((tmp_path / "cache").rglob("*.png"))) == 8  # records + mirrored
    item = ds[(2, 1)]
    assert item["pixel_values"].shape == item["conditioning"].shape == (3, 32, 32)
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    assert 0 <= item["conditioning"].min() and item["conditioning"].max() <= 1
    assert item["hand_token_mask"].any()  # "a hand holding a cup"
    again = ds[(2, 1)]
    assert torch.equal(item["pixel_values"], again["pixel_values"]) and item["labels"] == again["labels"]
    sides = {ds[(e, 0)]["labels"]["hands"][0]["side"] for e in range(12)}
    assert sides == {"right", "left"}  # flips happen and swap the side
    batch = collate([ds[(0, i)] for i in range(3)])
    assert batch["input_ids"].shape == (3, 77) and batch["hand_token_mask"].dtype == torch.bool
    # a caption of two chunks: the others repeat to its length (ComfyUI's batching rule)
    long = dict(ds[(0, 1)], input_ids=torch.arange(154), token_weights=torch.ones(154),
                hand_token_mask=torch.zeros(154, dtype=torch.bool))
    batch = collate([ds[(0, 0)], long])
    assert batch["input_ids"].shape == batch["hand_token_mask"].shape == (2, 154)
    assert torch.equal(batch["input_ids"][0], ds[(0, 0)]["input_ids"].repeat(2))
    assert torch.equal(batch["hand_token_mask"][0], ds[(0, 0)]["hand_token_mask"].repeat(2))
    order = list(EpochSampler(4, 0))
    assert sorted(i for _, i in order) == [0, 1, 2, 3] and order == list(EpochSampler(4, 0))
    # a second build finds everything in the cache
    cache = ConditionCache(tmp_path / "cache", "anny", "mesh")
    assert cache.prepare(ds.records, flips=True, progress=False) == 0


def test_captions_jsonl_txt_and_fallback(toy_records, tmp_path):
    root = tmp_path / "recs"
    shutil.copytree(toy_records, root)
    (root / "sample_2.txt").unlink()
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"image": "sample_0.png", "prompt": "P0", "hand_terms": ["grip"]}) + "\n")
    source = SourceConfig(kind="records", path=str(root), captions=str(jsonl), prompt="fallback")
    records = load_records([source], lambda: None)
    assert [r.prompt for r in records] == ["P0", "a hand holding a cup", "fallback", "a hand resting on a table"]
    assert records[0].hand_terms == ("grip",)
    txt = tmp_path / "captions.txt"
    txt.write_text("T0\nT1\n\nT3\n")
    records = load_records([SourceConfig(kind="records", path=str(root), captions=str(txt), prompt="F")],
                           lambda: None)
    assert [r.prompt for r in records] == ["T0", "T1", "F", "T3"]
    with pytest.raises(ValueError, match="sample_2: no caption"):
        load_records([SourceConfig(kind="records", path=str(root))], lambda: None)


def test_caption_field_picks_the_raw_vlm_caption(toy_records, tmp_path):
    """The ablation's row without behaviour semantics trains on captions.jsonl's raw caption."""
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"sample_{k}.png", "prompt": f"P{k}", "caption": f"C{k}"}) + "\n"
                             for k in range(4)))
    for field in ("prompt", "caption"):
        source = SourceConfig(kind="records", path=str(toy_records), captions=str(jsonl), caption_field=field)
        assert [r.prompt for r in load_records([source], lambda: None)] == [f"{field[0].upper()}{k}" for k in range(4)]
    txt = tmp_path / "captions.txt"
    txt.write_text("T0\n")
    with pytest.raises(ValueError, match="caption_field 'caption' needs a captions.jsonl"):
        load_records([SourceConfig(kind="records", path=str(toy_records), captions=str(txt), caption_field="caption")],
                     lambda: None)


def test_caption_dropout_empties_prompts_and_keeps_the_augmentation(toy_records, tokenizer, tmp_path):
    import dataclasses

    config = data_config(toy_records, hflip=0.5, crop_scale=[0.6, 1.0])
    kept = build_dataset(config, "mesh", tokenizer, seed=3, cache_dir=tmp_path / "cache", progress=False)
    dropped = build_dataset(dataclasses.replace(config, caption_dropout=1.0), "mesh", tokenizer, seed=3,
                            cache_dir=tmp_path / "cache", progress=False)
    half = build_dataset(dataclasses.replace(config, caption_dropout=0.5), "mesh", tokenizer, seed=3,
                         cache_dir=tmp_path / "cache", progress=False)
    empty = tokenize_prompt(tokenizer, {i: t for t, i in tokenizer.get_vocab().items()}, "")[0]
    outcomes = []
    for key in [(e, i) for e in range(4) for i in range(4)]:
        a, b, c = kept[key], dropped[key], half[key]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["labels"] == c["labels"]
        assert torch.equal(b["input_ids"], empty) and not b["hand_token_mask"].any()
        outcomes.append(torch.equal(c["input_ids"], empty))
    assert 0 < sum(outcomes) < len(outcomes)  # about half are dropped, by the item's own draw
    assert kept.caption_dropout == 0.0


def test_sesahand_dataset_source(toy_records, tmp_path):
    from sesahand.data import DatasetWriter

    root = tmp_path / "ds"
    with DatasetWriter(root) as writer:
        for k in range(2):
            labels = json.loads((toy_records / f"sample_{k}.json").read_text())
            writer.append(np.asarray(Image.open(toy_records / f"sample_{k}.png")), labels, prompt=f"hand {k}")
    records = load_records([SourceConfig(kind="sesahand", path=str(root))], lambda: None)
    assert [r.prompt for r in records] == ["hand 0", "hand 1"]
    assert records[1].image == root / "images" / "00000001.png"
    assert records[1].scene.to_dict() == scene_from_labels(
        json.loads((toy_records / "sample_1.json").read_text()), "x").to_dict()


def test_size_mismatch_and_missing_image_name_the_record(toy_records, tokenizer, tmp_path, image_size):
    root = tmp_path / "recs"
    shutil.copytree(toy_records, root)
    Image.open(root / "sample_1.png").crop((0, 0, image_size, image_size - 16)).save(root / "sample_1.png")
    with pytest.raises(ValueError, match=r"records .*sample_1: image .* is 64x48 but its labels say 64x64"):
        build_dataset(data_config(root), "mesh", tokenizer, 0, tmp_path / "cache", progress=False)
    (root / "sample_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"records .*sample_1: image .*sample_1.png is missing"):
        build_dataset(data_config(root), "mesh", tokenizer, 0, tmp_path / "cache", progress=False)


def test_bad_labels_name_the_record(toy_records, tmp_path):
    root = tmp_path / "recs"
    shutil.copytree(toy_records, root)
    labels = json.loads((root / "sample_3.json").read_text())
    del labels["hands"][0]["hand_pose"]
    (root / "sample_3.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match="sample_3: labels lack the field 'hand_pose'"):
        load_records([SourceConfig(kind="records", path=str(root))], lambda: None)


def test_freihand_source_with_mano(toy_records, tokenizer, tmp_path, mano_pair):
    pytest.importorskip("smplx")
    from sesahand.hands import load_hand_model

    mano_pair(tmp_path)
    root = tmp_path / "FreiHAND"
    (root / "training" / "rgb").mkdir(parents=True)
    K = [[[80.0, 0.0, 32.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]]] * 2
    rng = np.random.default_rng(0)
    mano = [[(rng.normal(size=61) * 0.1 + np.r_[np.zeros(58), 0.0, 0.0, 0.5]).tolist()] for _ in range(2)]
    (root / "training_K.json").write_text(json.dumps(K))
    (root / "training_mano.json").write_text(json.dumps(mano))
    for i in range(4):  # two background versions of the two samples
        Image.open(toy_records / f"sample_{i}.png").convert("RGB").save(root / "training" / "rgb" / f"{i:08d}.jpg")
    (tmp_path / "captions.txt").write_text("a\nb\nc\nd\n")
    config = DataConfig(sources=[SourceConfig(kind="freihand", path=str(root), captions=str(tmp_path / "captions.txt"))],
                        resolution=32, hand_model="mano", mano_path=str(tmp_path), num_workers=0,
                        augment=AugmentConfig(hflip=0.0))
    ds = build_dataset(config, "depth", tokenizer, 0, tmp_path / "cache", progress=False)
    assert [r.prompt for r in ds.records] == ["a", "b", "c", "d"]
    assert ds.records[2].scene is ds.records[0].scene
    hand = ds.records[1].scene.hands[0]
    mean = load_hand_model("mano", mano_path=tmp_path).hands_mean("right")
    torch.testing.assert_close(hand.hand_pose, torch.tensor(mano[1][0][3:48], dtype=torch.float32) + mean)
    assert hand.side == "right" and ds.records[1].scene.camera.width == 64
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 2  # one render per labelled pose
    assert ds[3]["conditioning"].shape == (3, 32, 32)
