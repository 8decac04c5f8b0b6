import os

import numpy as np
import pytest
import torch

from sesahand.io import atomic_path, atomic_write_bytes, to_float, to_uint8


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"], "no temporary files left"


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_to_uint8_clamps_values_outside_0_1_instead_of_wrapping(kind):
    values = [-0.5, -0.001, 0.0, 0.5, 1.0, 1.001, 1.2, 3.0]
    pixels = np.array(values, dtype=np.float32) if kind == "numpy" else torch.tensor(values)
    out = to_uint8(pixels)
    assert out.dtype == np.uint8
    # A bare cast would wrap: 1.2 * 255 = 306 -> 50, -0.5 * 255 -> 129 or 0 by platform.
    assert out.tolist() == [0, 0, 0, 128, 255, 255, 255, 255]


def test_to_uint8_numpy_and_torch_agree_and_round():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-0.2, 1.2, (2, 8, 8, 3)).astype(np.float32)
    from_numpy, from_torch = to_uint8(pixels), to_uint8(torch.from_numpy(pixels))
    assert from_numpy.shape == (2, 8, 8, 3)
    assert np.array_equal(from_numpy, from_torch)
    expected = np.rint(np.clip(pixels.astype(np.float64), 0, 1) * 255)
    assert np.abs(from_numpy.astype(np.float64) - expected).max() <= 1


def test_to_uint8_keeps_uint8_and_to_float_inverts_it():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert to_uint8(pixels) is pixels
    assert np.array_equal(to_uint8(torch.from_numpy(pixels)), pixels), "a uint8 tensor is not rescaled"
    floats = to_float(pixels)
    assert floats.dtype == torch.float32 and floats.shape == (16, 16)
    assert float(floats.min()) == 0.0 and float(floats.max()) == 1.0
    assert np.array_equal(to_uint8(floats), pixels)


def test_one_rule_turns_any_pil_mode_into_rgb_for_photos_and_captions(tmp_path):
    """16-bit stays in its range (a dark 16-bit image stays dark), floats at most 1 are 0..1,
    wide 32-bit integers scale by their maximum, alpha goes over white; the captioner and the
    photo loader give the same pixels."""
    from PIL import Image

    from sesahand.fit.photo import load_photo
    from sesahand.io import pil_to_rgb
    from sesahand.semantics.captioner import to_rgb

    def grey(image):
        return np.asarray(pil_to_rgb(image))[0, :, 0].tolist()

    assert grey(Image.fromarray(np.array([[0, 200, 65535]], dtype=np.uint16))) == [0, 1, 255]
    assert grey(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))) == [0, 128, 255]
    assert grey(Image.fromarray(np.array([[0.0, 128.0, 255.0]], dtype=np.float32))) == [0, 128, 255]
    assert grey(Image.fromarray(np.array([[0, 100000, 200000]], dtype=np.int32))) == [0, 128, 255]
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    assert np.asarray(pil_to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    dark = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) // 16))  # max 255
    dark.save(tmp_path / "dark16.png")
    photo = load_photo(tmp_path / "dark16.png").pixels
    caption = np.asarray(to_rgb(Image.open(tmp_path / "dark16.png")))
    assert np.array_equal(photo, caption) and photo.max() <= 1
