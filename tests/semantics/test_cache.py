"""SemanticsCache: content hashing, round trips, atomic writes, bad entries."""

import json

import numpy as np
import pytest
from PIL import Image

from sesahand.semantics.cache import SemanticsCache, image_hash


def picture(seed=0, size=(20, 10)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_hash_follows_decoded_pixels_not_the_file(tmp_path):
    image = picture()
    png, bmp = tmp_path / "a.png", tmp_path / "a.bmp"
    image.save(png)
    image.save(bmp)
    assert image_hash(Image.open(png)) == image_hash(Image.open(bmp)) == image_hash(image)
    assert image_hash(image.convert("RGBA")) == image_hash(image)  # opaque alpha: same picture
    changed = image.copy()
    changed.putpixel((3, 4), (0, 0, 0) if image.getpixel((3, 4)) != (0, 0, 0) else (1, 1, 1))
    assert image_hash(changed) != image_hash(image)
    # same bytes, other shape
    flat = Image.frombytes("RGB", (10, 20), image.tobytes())
    assert image_hash(flat) != image_hash(image)
    assert SemanticsCache.image_hash(image) == image_hash(image)


def test_round_trip_and_separation_by_kind_and_key(tmp_path):
    cache = SemanticsCache(tmp_path / "cache")
    assert cache.get("caption", "m1:abc") is None
    cache.put("caption", "m1:abc", {"caption": "a person waving"})
    cache.put("caption", "m2:abc", {"caption": "other model"})
    cache.put("semantics", "m1:abc", {"pose": "standing"})
    assert cache.get("caption", "m1:abc") == {"caption": "a person waving"}
    assert cache.get("caption", "m2:abc") == {"caption": "other model"}
    assert cache.get("semantics", "m1:abc") == {"pose": "standing"}
    cache.put("caption", "m1:abc", {"caption": "replaced"})
    assert SemanticsCache(tmp_path / "cache").get("caption", "m1:abc") == {"caption": "replaced"}
    # no temporary files are left behind
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]


def test_unreadable_or_foreign_entries_count_as_missing(tmp_path, caplog):
    cache = SemanticsCache(tmp_path)
    cache.put("caption", "k", {"caption": "x"})
    (entry,) = (tmp_path / "caption").rglob("*.json")
    entry.write_text('{"key": "k", "val')
    assert cache.get("caption", "k") is None
    entry.write_text(json.dumps({"key": "other", "value": {"caption": "y"}}))
    assert cache.get("caption", "k") is None
    assert "ignoring it" in caplog.text


def test_bad_kind_key_value_and_folder(tmp_path):
    cache = SemanticsCache(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        cache.put("../up", "k", {})
    with pytest.raises(ValueError, match="key"):
        cache.get("caption", "")
    with pytest.raises(ValueError, match="dict"):
        cache.put("caption", "k", ["not", "a", "dict"])
    with pytest.raises(ValueError, match="JSON"):
        cache.put("caption", "k", {"image": object()})
    assert cache.get("caption", "k") is None  # nothing written halfway
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        SemanticsCache(tmp_path / "file")
