"""Bad and unusual photo files: refused or converted with a clear message, nothing allocated
beyond the size cap, EXIF rotation applied."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sesahand.fit import MAX_PHOTO_PIXELS, MAX_PHOTO_SIDE, load_photo, photo_intrinsics
from sesahand.fit.photo import as_rgb8


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (no pixel data worth decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width,height", [(20000, 20000), (9000, 1000), (4000, 4400)])
def test_huge_photo_is_refused_before_decoding(tmp_path, width, height):
    path = _png_header_only(tmp_path / "huge.png", width, height)
    with pytest.raises(ValueError, match=f"huge.png.*({MAX_PHOTO_SIDE}|{MAX_PHOTO_PIXELS})"):
        load_photo(path)


def test_tiny_photo_is_refused(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="dot.png.*width 1 is outside"):
        load_photo(tmp_path / "dot.png")


def test_truncated_and_non_image_files(tmp_path, photos):
    data = (photos / "open_palm_left.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg: the image is corrupt or truncated"):
        load_photo(tmp_path / "cut.jpg")
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.jpg: not an image"):
        load_photo(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError):
        load_photo(tmp_path / "missing.jpg")


def test_colour_modes_become_rgb8(tmp_path, photos):
    rgb = np.asarray(Image.open(photos / "open_palm_left.jpg").convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_photo(tmp_path / "cmyk.jpg").pixels.shape == rgb.shape
    grey16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    loaded = load_photo(tmp_path / "grey16.png").pixels
    assert loaded.dtype == np.uint8 and loaded.shape == (64, 64, 3)
    assert loaded[..., 0].max() > 200 and loaded[..., 0].min() == 0  # scaled, not clipped to white
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:20, :, :] = (10, 20, 30, 255)  # opaque top half, transparent bottom half
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    loaded = load_photo(tmp_path / "alpha.png").pixels
    assert tuple(loaded[5, 5]) == (10, 20, 30) and tuple(loaded[30, 5]) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path, photos):
    upright = Image.open(photos / "open_palm_left.jpg").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_270)  # what a phone held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation 8: turn 90 degrees counter-clockwise to display
    exif[0xA405] = 26  # 35 mm equivalent focal length
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    photo = load_photo(tmp_path / "rotated.jpg")
    assert photo.pixels.shape == np.asarray(upright).shape
    assert np.abs(photo.pixels.astype(int) - np.asarray(upright).astype(int)).mean() < 6
    assert photo.focal_35mm == 26.0
    K = photo_intrinsics(photo.width, photo.height, focal_35mm=photo.focal_35mm)
    assert K[0, 0] == pytest.approx(26.0 * np.hypot(photo.width, photo.height) / np.hypot(36, 24))


def test_in_memory_images():
    assert as_rgb8(np.full((32, 48, 3), 0.5, dtype=np.float32))[0, 0, 0] == 128
    with pytest.raises(ValueError, match="RGB image"):
        as_rgb8(np.zeros((32, 32)))
    with pytest.raises(ValueError, match=f"height {MAX_PHOTO_SIDE + 8} is outside"):
        as_rgb8(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (MAX_PHOTO_SIDE + 8, 16, 3)))


def test_missing_task_file_says_where_to_put_it(tmp_path):
    pytest.importorskip("mediapipe")
    from sesahand.eval import HandKeypointDetector

    with pytest.raises(FileNotFoundError, match="make test-models.*models/sesahand"):
        HandKeypointDetector(tmp_path / "hand_landmarker.task")
