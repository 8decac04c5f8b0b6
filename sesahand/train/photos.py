"""The ``photos`` training source: real photographs, hand meshes fitted to them (docs/fitting.md).

This is the paper's training-data protocol (real images paired with meshes estimated from
them, AttentionHand's MSCOCO setup with HaMeR) with MediaPipe + the pack's fit in place of
HaMeR. Each photo of the source folder is fitted once into the cache
(``CACHE/photo_fits/<hand model>/<sha256 of the photo>/``, the folder layout of
``python -m sesahand fit``), framed to its own size rounded down to a multiple of 8 (a crop
of at most 7 pixels, no scaling); hands that fail the fit rules are dropped, and a photo
without a kept hand is skipped with a log line. The detector is MediaPipe's hand landmarker
from ``$SESAHAND_HAND_LANDMARKER``.

Captions, first found wins (as for the other sources, a captions file comes before a record's
own caption):

1. the source's ``captions`` file, else ``PHOTOS/captions.jsonl`` when it exists: the output of
   the semantics pipeline, ``python -m sesahand caption PHOTOS --out PHOTOS/captions.jsonl``
   (matched by path relative to the folder, then by file name; ``caption_field`` picks its
   ``prompt`` or raw ``caption``; its ``hand_terms`` join AE's hand tokens);
2. ``NAME.txt`` beside the photo;
3. the source's ``prompt``.

The semantics pipeline's content-hash cache (``caption --cache DIR``) is not read directly: its
entries are keyed by the captioner's and extractor's identities and hold the raw caption and the
extracted fields, not the composed prompt; the ``caption`` command turns them into the JSONL
(re-running it over the same photos with the same ``--cache`` costs one hash per photo).
Every photo's caption is resolved before any fitting, so a photo without one fails at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .config import SourceConfig

log = logging.getLogger(__name__)

#: The semantics pipeline's captions read from the photos folder when ``captions`` is not set.
CAPTIONS_JSONL = "captions.jsonl"

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
        ValueError: photos without a caption anywhere (naming them and the ways to give one).
    """
    from ..eval.detector import HandKeypointDetector
    from ..fit import MAX_HANDS
    from ..fit.batch import fit_photo
    from ..fit.photo import list_photos, load_photo
    from .data import Record, _limit, scene_from_labels

    root = Path(source.path)
    photos = _limit(list_photos(root), source)
    prompts = photo_captions(source, photos)
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
    for photo in photos:
        labels_path = folders[photo] / "labels.json"
        if not labels_path.is_file():
            continue
        labels = json.loads(labels_path.read_text())
        if not labels["hands"]:
            log.info("photos %s: %s has no kept hand; skipped", root, photo.name)
            continue
        name = f"photos {root} {photo.name}"
        prompt, terms = prompts[photo]
        out.append(Record(name, folders[photo] / "photo.png", scene_from_labels(labels, name), prompt, terms))
    return out


def photo_captions(source: SourceConfig, photos: list[Path]) -> dict[Path, tuple[str, tuple[str, ...]]]:
    """(prompt, hand_terms) of each photo of a ``photos`` source, in the order of the module
    docstring (captions file or ``PHOTOS/captions.jsonl``, ``NAME.txt``, ``prompt``).

    Raises:
        FileNotFoundError: the source's ``captions`` file does not exist.
        ValueError: a malformed captions file, or photos with no caption anywhere (the error
            names them and the ways to give one).
    """
    from .data import Captions

    root = Path(source.path)
    default = root / CAPTIONS_JSONL
    path = source.captions or (default if default.is_file() else None)
    captions = Captions(path, source.caption_field) if path else None
    out, missing = {}, []
    for position, photo in enumerate(photos):
        found = captions.get(photo.relative_to(root).as_posix(), position) if captions else None
        if found is None:
            txt = photo.with_suffix(".txt")
            own = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
            found = (own, ()) if own else (source.prompt, ()) if source.prompt else None
        if found is None:
            missing.append(photo.name)
        else:
            out[photo] = found
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"photos {root}: {len(missing)} photo(s) without a caption: {shown} (captions file: "
            f"{path or 'none'}). Give each one: caption the folder with the semantics pipeline "
            f"(`python -m sesahand caption {root} --vlm DIR --llm DIR|FILE.gguf --out "
            f"{default}`), or write NAME.txt beside the photo, or set the source's 'captions' "
            "file or a 'prompt' for photos without one")
    return out
