"""Generation metrics (``eval-images``): FID / KID plumbing through torchmetrics with a
random-weight feature extractor, hand crops from label boxes, the Inception weights file
route, hand confidence and alignment with the real detector, and the command's errors."""

from __future__ import annotations

import json
import re
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from sesahand.cli import main
from sesahand.eval.generation import (INCEPTION_ENV, INCEPTION_FILE, crop_hand,
                                      evaluate_generation, fid_kid, load_inception)


class TinyExtractor(torch.nn.Module):
    """TEST DOUBLE for Inception-v3: a seeded random conv net, (N, 3, S, S) uint8 -> (N, 16)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return 20 * self.net(x.float() / 255)


def smooth_images(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """n smooth random colour images (8 x 8 noise upscaled), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                       .resize((size, size), Image.BICUBIC)) for _ in range(n)]


def write_folder(folder, images, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}{suffix}")
    return folder


def noisy(images, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return [np.clip(im + rng.normal(0, sigma, im.shape), 0, 255).astype(np.uint8)
            for im in images]


def run(gen, ref, **kwargs):
    return evaluate_generation(gen, ref, extractor=TinyExtractor(), use_detector=False,
                               image_size=64, **kwargs)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(tmp_path):
    real = smooth_images(24)
    ref = write_folder(tmp_path / "real", real)
    reports = {sigma: run(write_folder(tmp_path / f"gen{sigma}", noisy(real, sigma)), ref)
               for sigma in (0, 8, 32)}
    fids = [reports[s].fid for s in (0, 8, 32)]
    kids = [reports[s].kid_mean for s in (0, 8, 32)]
    assert abs(fids[0]) < 1e-6 * max(1.0, fids[2]), fids
    assert fids[0] < fids[1] < fids[2], fids
    # KID is an unbiased estimate: for identical sets it is at or just below 0
    assert kids[0] <= 1e-9 and kids[0] < kids[1] < kids[2], kids
    report = reports[8]
    assert report.images == {"generated": 24, "reference": 24}
    assert report.fid_h is None and report.hand_crops == {"generated": 0, "reference": 0}
    assert any("FID-H/KID-H skipped" in n for n in report.notes)
    assert report.hand_confidence is None and report.alignment is None


def test_kid_is_seeded_and_fid_kid_validates_its_input():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 4, generator=g).double(), torch.randn(30, 4, generator=g).double() + 1
    first, again = fid_kid(a, b, subset_size=10, seed=3), fid_kid(a, b, subset_size=10, seed=3)
    assert first == again and first["fid"] > 0.5
    with pytest.raises(ValueError, match="at least 2 samples"):
        fid_kid(a[:1], b)
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_kid(a, b[:, :3])


def test_hand_crop_is_centred_square_and_black_outside():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 150:170] = 255  # a 20 px "hand"
    crop = crop_hand(image, [150, 40, 170, 60], margin=0.25, size=30)
    assert crop.shape == (30, 30, 3)
    assert crop[15, 15].min() > 200 and crop[1, 1].max() < 30, "hand centred, margin around"
    edge = crop_hand(image, [190, 0, 200, 10], margin=0.5, size=20)
    assert edge[:5, :5].max() == 0 and edge[-5:, :5].max() == 0, "outside the image is black"


@pytest.fixture(scope="module")
def render_datasets(tmp_path_factory, renders):
    """Two datasets (sesahand.data format) of the same four renders, and a plain folder of
    them plus a blank image."""
    from sesahand.data import DatasetWriter

    root = tmp_path_factory.mktemp("gen")
    for name in ("a", "b"):
        with DatasetWriter(root / name) as writer:
            for r in renders[:4]:
                writer.append(r.image, r.frame)
    plain = write_folder(root / "plain", [r.image for r in renders[:4]]
                         + [np.full_like(renders[0].image, 200)], ".jpg")
    return root / "a", root / "b", plain


def test_hand_crops_come_from_the_label_boxes(render_datasets):
    a, b, _ = render_datasets
    same = run(a, b)
    assert same.hand_crops == {"generated": 4, "reference": 4}
    assert abs(same.fid_h) < 1e-6 and abs(same.fid) < 1e-6
    assert same.fid_h is not None and same.kid_h_mean is not None


def test_hand_confidence_and_alignment_with_the_real_detector(render_datasets, detector):
    a, _, plain = render_datasets
    report = evaluate_generation(a, plain, extractor=TinyExtractor(), detector=detector,
                                 image_size=64)
    assert report.detection_rate == 1.0 and 0.5 <= report.hand_confidence <= 1.0
    assert report.alignment["hands_checked"] == 4 and report.alignment["hands_detected"] == 4
    assert report.alignment["pck"]["0.2"] > 0.8
    assert report.hand_crops == {"generated": 4, "reference": 4}, \
        "reference crops from the detected hands (the blank image has none)"
    flipped = evaluate_generation(plain, a, fid=False, detector=detector)
    assert flipped.detection_rate == 0.8, "4 hands in 5 images"
    assert flipped.hand_confidence == pytest.approx(report.hand_confidence * 4 / 5, abs=0.05)
    assert flipped.alignment is None and flipped.fid is None
    assert any("no labels.jsonl" in n for n in flipped.notes)


# --------------------------------------------------------------------------- Inception file

@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """TEST DOUBLE for torch-fidelity's weights file: the real Inception-v3 architecture with
    random (default-initialised) weights, saved as a .pth state dict like the real one."""
    pytest.importorskip("torch_fidelity", reason="pip install torch-fidelity==0.4.0")
    from torch_fidelity import feature_extractor_inceptionv3 as tf

    with mock.patch.object(tf, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(tf.FeatureExtractorInceptionV3, "load_state_dict"):
        torch.manual_seed(0)
        net = tf.FeatureExtractorInceptionV3("random", ["2048"])
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_weights_load_from_pth_and_safetensors(inception_file, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(inception_file, weights_only=True)
    save_file(state, tmp_path / "inception.safetensors")
    images = torch.from_numpy(np.stack(smooth_images(2, 120))).permute(0, 3, 1, 2).contiguous()
    out = load_inception(inception_file)(images)
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and out.std() > 0
    same = load_inception(tmp_path / "inception.safetensors")(images)
    assert torch.equal(out, same)


def test_bad_inception_files_are_refused_with_the_file_to_give(inception_file, tmp_path,
                                                              monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE):
        load_inception(None)
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_inception(tmp_path / "nope.pth")
    state = torch.load(inception_file, weights_only=True)
    state.pop("fc.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_inception(tmp_path / "partial.pth")
    torch.save({"net": mock.sentinel}, tmp_path / "code.pth")  # a pickle of an arbitrary object
    with pytest.raises(ValueError, match="cannot be read"):
        load_inception(tmp_path / "code.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot be read"):
        load_inception(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- the command

def test_command_prints_the_table_and_writes_json(inception_file, tmp_path, capsys):
    real = smooth_images(3, 48)
    ref = write_folder(tmp_path / "real" / "sub", real).parent  # found recursively
    gen = write_folder(tmp_path / "gen", noisy(real, 20))
    out = tmp_path / "metrics.json"
    assert main(["eval-images", str(gen), "--reference", str(ref), "--inception",
                 str(inception_file), "--no-detector", "--out", str(out),
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "KID" in table and "hand confidence" in table
    data = json.loads(out.read_text())
    assert data["images"] == {"generated": 3, "reference": 3}
    assert data["fid"] > 0 and data["settings"]["inception"] == str(inception_file)
    assert data["hand_confidence"] is None


@pytest.mark.parametrize("case, message", [
    ("missing", "generated folder .*not found"), ("empty", "no images"),
    ("unreadable", "unreadable image.*0001.png"), ("no_inception", INCEPTION_FILE),
])
def test_command_errors_name_the_problem_and_write_nothing(case, message, tmp_path, caplog,
                                                            monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    ref = write_folder(tmp_path / "ref", smooth_images(2, 32))
    gen = tmp_path / "gen"
    if case != "missing":
        gen.mkdir()
    if case in ("unreadable", "no_inception"):
        write_folder(gen, smooth_images(2, 32))
    if case == "unreadable":
        (gen / "0001.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "metrics.json"
    args = ["eval-images", str(gen), "--reference", str(ref), "--no-detector", "--out", str(out)]
    assert main(args) == 2
    assert caplog.records and re.search(message, caplog.records[-1].getMessage())
    assert not out.exists()


def test_images_over_the_size_limits_are_refused(tmp_path, monkeypatch):
    import sesahand.limits

    gen = write_folder(tmp_path / "gen", smooth_images(2, 64))
    ref = write_folder(tmp_path / "ref", smooth_images(2, 32))
    monkeypatch.setattr(sesahand.limits, "MAX_IMAGE_PIXELS", 1024)
    with pytest.raises(ValueError, match=r"generated: 2 unreadable.*64x64, over 1024 pixels"):
        run(gen, ref)
    monkeypatch.setattr(sesahand.limits, "MAX_PHOTO_FILE_BYTES", 10)
    with pytest.raises(ValueError, match="over 10 bytes"):
        run(gen, ref)
