"""Append samples (image, condition images, labels) to a dataset folder, atomically."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..io import atomic_path, to_uint8
from ..safe_paths import check_write_file, make_write_dir
from .format import (
    CONDITION_NAME,
    CONDITION_NAMES,
    CONDITIONS_DIR,
    IMAGE_NAME,
    IMAGES_DIR,
    LABELS_FILE,
    LOCK_FILE,
    DatasetLock,
    condition_path,
    file_sha256,
    image_path,
    iter_lines,
    record_errors,
    record_line,
    write_error,
)

log = logging.getLogger(__name__)

#: zlib level of the PNGs. Every level keeps saving a 512 x 512 sample with four condition
#: images far below 5 % of one SD1.5 UNet step on CPU (benchmarks/bench_dataset.py: 0.3 % at
#: level 1, 0.6 % at 6); level 1 saves 1.4x faster than PIL's default 6 for files about 10 %
#: larger, while level 0 makes them 4x larger.
PNG_COMPRESS_LEVEL = 1


def to_uint8_image(image, name: str) -> np.ndarray:
    """An image as a uint8 array (H, W, 3) or (H, W).

    Accepts a PIL image, a uint8 array, or a float array / torch tensor with values in 0..1
    (clipped, rounded); (H, W, 1) becomes (H, W).

    Raises: ValueError naming ``name`` for other shapes, dtypes or NaN values.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L" if image.mode in ("L", "1", "I", "F") else "RGB"))
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)) or array.size == 0:
        raise ValueError(f"{name}: expected an image of shape (H, W, 3) or (H, W), got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8 or float values in 0..1, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: the image holds NaN or infinite values")
    return to_uint8(array)


def _condition_image(array: np.ndarray, name: str) -> Image.Image:
    """Condition images follow ``sesahand.render.save_conditions``: mesh and normal RGB, depth
    and mask grey (a 3-channel depth/mask, as ComfyUI IMAGEs carry them, keeps its first channel)."""
    if name in ("depth", "mask"):
        return Image.fromarray(array[..., 0] if array.ndim == 3 else array, "L")
    return Image.fromarray(np.repeat(array[..., None], 3, -1) if array.ndim == 2 else array, "RGB")


def _model_file(path) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist; give the checkpoint / ControlNet file "
                         "that made the image, or None when unknown")
    return {"name": path.name, "sha256": file_sha256(path)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DatasetWriter:
    """Appends samples to a dataset folder (format: ``sesahand.data.format``, README).

    Guarantees:

    * A sample appears whole or not at all: its image and condition images are written to
      temporary files, flushed to disk and renamed into place; the labels.jsonl line comes
      last, written with one ``write`` and fsync'ed. If anything fails (full disk, read-only
      folder, interrupt), the files of that sample are removed and labels.jsonl is cut back
      to its previous length, then the error is raised. A crash between the renames and the
      line can leave images without a record: ``check_dataset`` reports them as orphans.
    * Numbering resumes after the highest index found in labels.jsonl or among the image and
      condition files, so an existing dataset is extended and orphans are never overwritten.
    * One writer per folder: the writer holds ``root/.lock`` from creation to :meth:`close`;
      a second writer (any process) gets a RuntimeError.
    * Nothing is written outside ``root``: ``images/`` and ``conditions/`` must be real
      folders and ``labels.jsonl`` and ``.lock`` regular files, not symbolic links (a link
      planted in the dataset folder is refused, see :mod:`sesahand.safe_paths`).

    Use as a context manager, or call :meth:`close`.

    Args:
        root: dataset folder (created if missing).
        png_compress_level: zlib level 0-9 of the PNG files.

    Raises:
        RuntimeError: another writer holds the folder.
        ValueError (:class:`~sesahand.safe_paths.PathRefused`): ``images/``, ``conditions/``,
            ``labels.jsonl`` or ``.lock`` is a symbolic link or of the wrong kind.
        OSError: the folder cannot be created or written (message says why and what to do).
    """

    def __init__(self, root: str | Path, *, png_compress_level: int = PNG_COMPRESS_LEVEL):
        self.root = Path(root)
        self.png_compress_level = png_compress_level
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in (IMAGES_DIR, CONDITIONS_DIR):
                make_write_dir(sub, inside=self.root, what=f"dataset {sub}/")
        except OSError as exc:
            raise write_error(self.root, exc, "cannot create the dataset folder") from exc
        for name in (LABELS_FILE, LOCK_FILE):
            check_write_file(self.root / name, what=f"dataset {name}")
        self._lock = DatasetLock(self.root).acquire()
        try:
            self.next_index = self._scan()
        except BaseException:
            self._lock.release()
            raise

    def _scan(self) -> int:
        """First free index; also ensures labels.jsonl ends with a newline."""
        indices, bad = [-1], []
        for number, _, record, error in iter_lines(self.root):
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                indices.append(record["index"])
            if error is not None:
                bad.append(number)
        if bad:
            log.warning("dataset %s: labels.jsonl lines %s are damaged; appending after them. Run "
                        "`python -m sesahand dataset check %s --repair` to set them aside",
                        self.root, bad, self.root)
        for sub, pattern in ((IMAGES_DIR, IMAGE_NAME), (CONDITIONS_DIR, CONDITION_NAME)):
            for name in os.listdir(self.root / sub):
                match = pattern.match(name)
                if match:
                    indices.append(int(match.group(1)))
        labels = self.root / LABELS_FILE
        if labels.exists() and labels.stat().st_size:
            try:
                with open(labels, "rb+") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a cut-off last line stays a line of its own
                        f.write(b"\n")
            except OSError as exc:
                raise write_error(self.root, exc, "cannot end the cut-off last line of labels.jsonl") from exc
        return max(indices) + 1

    def append(self, image, labels: Mapping, *, conditions: Mapping | None = None,
               prompt: str | None = None, semantics: Mapping | None = None, seed: int | None = None,
               sampler: Mapping | None = None, checkpoint: str | Path | None = None,
               controlnets: Sequence[str | Path] = (), alignment: Mapping | None = None) -> int:
        """Write one sample; returns its index.

        Args:
            image: the generated image, PIL or (H, W, 3) uint8 / float 0..1 array or tensor.
            labels: the frame's labels as :meth:`sesahand.pipeline.RenderedHands.frame_dict`
                returns them (``hand_model``, ``camera`` {K, width, height}, ``hands``).
            conditions: optional condition images by name (``mesh``, ``depth``, ``normal``,
                ``mask``), same forms as ``image``, same size; saved as
                ``conditions/NNNNNNNN_<name>.png`` (depth, mask grey; mesh, normal RGB).
            prompt: text prompt. semantics: semantics JSON object. seed: sampler seed.
            sampler: sampler settings (JSON object).
            checkpoint, controlnets: files used (their SHA-256 is recorded; hashes are cached
                per path, mtime and size).
            alignment: alignment check result (``AlignmentResult.to_dict()``).

        Raises:
            ValueError: bad input (wrong image size for the camera, unknown condition name,
                fields violating the schema): nothing is written.
            OSError: writing failed (full or read-only disk...): nothing of the sample is kept.
        """
        if self._lock is None:
            raise ValueError("this DatasetWriter is closed; open a new one")
        index = self.next_index
        pixels = to_uint8_image(image, "image")
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, -1)
        try:
            camera = labels["camera"]
            record = {
                "index": index,
                "image": f"{IMAGES_DIR}/{index:08d}.png",
                "width": camera["width"],
                "height": camera["height"],
                "K": camera["K"],
                "hand_model": labels["hand_model"],
                "joint_order": labels.get("joint_order", "openpose"),
                "hands": list(labels["hands"]),
            }
        except (KeyError, TypeError) as exc:
            raise ValueError(f"labels: missing field {exc}; pass RenderedHands.frame_dict(i)") from None
        if pixels.shape[:2] != (record["height"], record["width"]):
            raise ValueError(f"image: {pixels.shape[1]}x{pixels.shape[0]} pixels but the labels' camera "
                             f"is {record['width']}x{record['height']}; save the image the hands were "
                             "rendered for (resize or crop before generating, not after)")
        files = {image_path(self.root, index): Image.fromarray(pixels, "RGB")}
        record["conditions"] = {}
        for name, value in (conditions or {}).items():
            if name not in CONDITION_NAMES:
                raise ValueError(f"conditions: unknown name {name!r}; use {', '.join(CONDITION_NAMES)}")
            array = to_uint8_image(value, f"conditions[{name}]")
            if array.shape[:2] != pixels.shape[:2]:
                raise ValueError(f"conditions[{name}]: size {array.shape[1]}x{array.shape[0]} differs from "
                                 f"the image's {pixels.shape[1]}x{pixels.shape[0]}")
            files[condition_path(self.root, index, name)] = _condition_image(array, name)
            record["conditions"][name] = f"{CONDITIONS_DIR}/{index:08d}_{name}.png"
        record.update(prompt=prompt, semantics=None if semantics is None else dict(semantics), seed=seed,
                      sampler=None if sampler is None else dict(sampler),
                      checkpoint=_model_file(checkpoint),
                      controlnets=[_model_file(p) for p in controlnets],
                      sesahand_version=__version__,
                      alignment=None if alignment is None else dict(alignment))
        errors = record_errors(record)
        if errors:
            raise ValueError(f"sample {index}: {'; '.join(errors)}")
        line = record_line(record)
        self._write(index, files, line)
        self.next_index = index + 1
        return index

    def _write(self, index: int, files: dict[Path, Image.Image], line: bytes) -> None:
        placed: list[Path] = []
        labels = self.root / LABELS_FILE
        length = labels.stat().st_size if labels.exists() else 0
        try:
            with ExitStack() as stack:  # renames happen on leaving, once every file is written
                for path, picture in files.items():
                    tmp = stack.enter_context(atomic_path(path))
                    with open(tmp, "wb") as f:
                        picture.save(f, format="PNG", compress_level=self.png_compress_level)
                        f.flush()
                        os.fsync(f.fileno())
                    placed.append(path)
            for folder in {p.parent for p in files}:
                _fsync_dir(folder)
            # Unbuffered (nothing left to flush on error), and never through a symbolic link.
            fd = os.open(labels, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with open(fd, "ab", buffering=0) as f:
                try:
                    if f.write(line) != len(line):
                        raise OSError(errno.ENOSPC, "short write to labels.jsonl")
                    os.fsync(f.fileno())
                except BaseException:
                    f.truncate(length)
                    raise
        except BaseException as exc:
            for path in placed:
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise write_error(self.root, exc, f"cannot write sample {index}; nothing of it was "
                                  "kept") from exc
            raise

    def close(self) -> None:
        """Release the writer lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
