"""On-disk cache of semantics results, keyed by image content and model identity (issue 5,
item 6): re-running a dataset with the same models costs one hash and one small file read per
image.

Layout: ``<folder>/<kind>/<first 2 hex>/<sha256 of key>.json``, each file
``{"key": key, "value": {...}}``, written atomically (temporary file, then rename), so
concurrent writers and interrupted runs never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from PIL import Image

from ..io import atomic_write_bytes
from .captioner import to_rgb

logger = logging.getLogger(__name__)

_KIND = re.compile(r"[a-z0-9][a-z0-9_-]*")


def image_hash(image: Image.Image) -> str:
    """SHA-256 hex digest of ``image``'s decoded 8-bit RGB pixels and size.

    The same picture saved as PNG or as RGBA with an opaque alpha gives the same hash; any
    pixel change gives another. ``image`` of any mode is converted as
    :func:`~sesahand.semantics.captioner.to_rgb` does.

    Raises:
        ValueError: ``image`` is not a PIL image or has no pixels.
    """
    rgb = image if isinstance(image, Image.Image) and image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"rgb8:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


class SemanticsCache:
    """A folder of JSON entries: ``get(kind, key)`` / ``put(kind, key, value)``.

    ``kind`` names the stage (e.g. ``"caption"``, ``"semantics"``): lower-case letters, digits,
    ``_`` and ``-``. ``key`` is any string, typically ``f"{model_id}:{image_hash(image)}"``.
    Values are JSON-serialisable dicts.

    Raises:
        ValueError: (constructor) ``folder`` exists and is not a folder.
    """

    image_hash = staticmethod(image_hash)

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"cache folder {self.folder} is a file; give a folder path")

    def _path(self, kind: str, key: str) -> Path:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise ValueError(f"cache kind {kind!r}: use lower-case letters, digits, '_' and '-' "
                             "(e.g. 'caption')")
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache key {key!r}: expected a non-empty string")
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / kind / name[:2] / f"{name}.json"

    def get(self, kind: str, key: str) -> dict | None:
        """The value stored for ``(kind, key)``, or None when absent (an unreadable or foreign
        entry counts as absent, with a warning)."""
        path = self._path(kind, key)
        try:
            entry = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cache entry %s is unreadable (%s); ignoring it", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("value"), dict):
            logger.warning("cache entry %s does not hold key %r; ignoring it", path, key)
            return None
        return entry["value"]

    def put(self, kind: str, key: str, value: dict) -> None:
        """Store ``value`` for ``(kind, key)`` atomically, replacing an earlier value.

        Raises:
            ValueError: ``value`` is not a dict or not JSON-serialisable; bad kind or key.
        """
        path = self._path(kind, key)
        if not isinstance(value, dict):
            raise ValueError(f"cache value: expected a dict, got {type(value).__name__}")
        try:
            data = json.dumps({"key": key, "value": value}, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cache value for {kind} {key!r} is not JSON-serialisable: {exc}") from exc
        atomic_write_bytes(path, data)
