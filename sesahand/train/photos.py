"""The ``photos`` training source: real photographs, hand meshes fitted to them (docs/fitting.md).

This is the paper's training-data protocol (real images paired with meshes estimated from
them, AttentionHand's MSCOCO setup with HaMeR) with MediaPipe + the pack's fit in place of
HaMeR. Each photo of the source folder is fitted once into the cache
(``CACHE/photo_fits/<hand model>/<sha256 of the photo>/``, the folder layout of
``python -m sesahand fit``), framed to its own size rounded down to a multiple of 8 (a crop
of at most 7 pixels, no scaling); hands that fail the fit rules are dropped, and a photo
without a kept hand is skipped with a log line. The caption is ``NAME.txt`` beside the photo,
else the source's ``captions`` (e.g. the ``captions.jsonl`` of ``python -m sesahand caption``),
else its ``prompt``. The detector is MediaPipe's hand landmarker from
``$SESAHAND_HAND_LANDMARKER``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .config import SourceConfig

log = logging.getLogger(__name__)

#: Smallest photo side used for training (pixels, after rounding down to a multiple of 8).
MIN_TRAIN_SIDE = 64


def photo_records(source: SourceConfig, model, cache_dir: str | Path, fit: bool = True) -> list:
    """Records of a ``photos`` source (see the module docstring).

    Args:
        source: the source (``path``: a folder of photos).
        model: the configured hand model.
        cache_dir: the condition cache folder; fits go below it.
        fit: fit photos not fitted yet (the main process); False: a missing fit is an error.

    Raises:
        FileNotFoundError: no such folder, no detector model, or (``fit`` False) a photo not
            fitted yet.
        ValueError: a photo without caption when the source gives none.
    """
    from ..eval.detector import HandKeypointDetector
    from ..fit import MAX_HANDS
    from ..fit.batch import fit_photo
    from ..fit.photo import list_photos, load_photo
    from .data import Captions, Record, _caption, _limit, scene_from_labels

    root = Path(source.path)
    photos = _limit(list_photos(root), source)
    captions = Captions(source.captions) if source.captions else None
    folders = {}
    for photo in photos:
        digest = hashlib.sha256(photo.read_bytes()).hexdigest()
        folders[photo] = Path(cache_dir) / "photo_fits" / model.name / digest
    missing = [p for p in photos if not (folders[p] / "labels.json").is_file()]
    if missing and not fit:
        raise FileNotFoundError(f"photos {root}: {len(missing)} photo(s) not fitted yet (the main process "
                                "fits them first)")
    if missing:
        with HandKeypointDetector(num_hands=MAX_HANDS) as detector:
            for photo in missing:
                pixels = load_photo(photo)
                size = (pixels.width // 8 * 8, pixels.height // 8 * 8)
                if min(size) < MIN_TRAIN_SIDE:
                    log.warning("photos %s: %s is smaller than %d px; skipped", root, photo.name, MIN_TRAIN_SIDE)
                    continue
                outcome = fit_photo(photo, folders[photo], model, detector, size=size, framing="crop")
                log.info("photos %s: %s fitted, %d of %d hand(s) kept", root, photo.name, outcome.kept,
                         outcome.found)
    out = []
    for position, photo in enumerate(photos):
        labels_path = folders[photo] / "labels.json"
        if not labels_path.is_file():
            continue
        labels = json.loads(labels_path.read_text())
        if not labels["hands"]:
            log.info("photos %s: %s has no kept hand; skipped", root, photo.name)
            continue
        name = f"photos {root} {photo.name}"
        txt = photo.with_suffix(".txt")
        own = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
        prompt, terms = _caption(source, captions, photo.name, position, own, (), name)
        out.append(Record(name, folders[photo] / "photo.png", scene_from_labels(labels, name), prompt, terms))
    return out
