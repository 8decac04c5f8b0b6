"""The on-disk dataset format: paths, the labels.jsonl records and their schema, the writer lock.

A dataset folder holds::

    images/NNNNNNNN.png                  the generated image of sample N (8 digits, RGB)
    conditions/NNNNNNNN_{mesh,depth,normal,mask}.png   optional condition images
    labels.jsonl                         one JSON record per sample (labels.schema.json)
    .lock                                taken by whoever writes (filelock)
    quarantine/                          what ``check_dataset(repair=True)`` moved aside
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..io import atomic_path

LABELS_FILE = "labels.jsonl"
IMAGES_DIR = "images"
CONDITIONS_DIR = "conditions"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = ".lock"
#: Condition images a sample may carry, in the order they are written.
CONDITION_NAMES = ("mesh", "depth", "normal", "mask")

IMAGE_NAME = re.compile(r"^(\d{8})\.png$")
CONDITION_NAME = re.compile(r"^(\d{8})_(mesh|depth|normal|mask)\.png$")


def image_path(root: str | Path, index: int) -> Path:
    """Path of sample ``index``'s image: ``root/images/NNNNNNNN.png``."""
    return Path(root) / IMAGES_DIR / f"{index:08d}.png"


def condition_path(root: str | Path, index: int, name: str) -> Path:
    """Path of a condition image of sample ``index``: ``root/conditions/NNNNNNNN_<name>.png``."""
    return Path(root) / CONDITIONS_DIR / f"{index:08d}_{name}.png"


@lru_cache(maxsize=1)
def labels_schema() -> dict:
    """The JSON Schema (draft 2020-12) of one labels.jsonl record (``labels.schema.json``)."""
    return json.loads(resources.files(__package__).joinpath("labels.schema.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(labels_schema())


def record_errors(record) -> list[str]:
    """Every problem of a decoded record: schema violations (``path: message``) and paths that
    do not match its index. Empty when the record is valid."""
    errors = [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
              for e in sorted(_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))]
    if errors:
        return errors
    index = record["index"]
    if record["image"] != f"{IMAGES_DIR}/{index:08d}.png":
        errors.append(f"image: {record['image']!r} does not match index {index} "
                      f"(expected {IMAGES_DIR}/{index:08d}.png)")
    for name, path in record["conditions"].items():
        if path != f"{CONDITIONS_DIR}/{index:08d}_{name}.png":
            errors.append(f"conditions/{name}: {path!r} does not match index {index}")
    return errors


def iter_lines(root: str | Path) -> Iterator[tuple[int, str, dict | None, str | None]]:
    """Each non-blank line of ``root/labels.jsonl`` as ``(line_number, text, record, error)``:
    ``record`` is the decoded object (None if the line is not valid JSON), ``error`` says what
    is wrong with it (undecodable, unterminated, schema) or is None. Line numbers start at 1.
    A missing labels.jsonl yields nothing."""
    path = Path(root) / LABELS_FILE
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                end = "" if raw.endswith(b"\n") else " (truncated: the line has no end)"
                yield number, text, None, f"not valid JSON: {exc.msg} at column {exc.colno}{end}"
                continue
            if not raw.endswith(b"\n"):
                yield number, text, record, "truncated: the line has no end"
                continue
            errors = record_errors(record)
            yield number, text, record, "; ".join(errors) if errors else None


def read_labels(root: str | Path) -> list[dict]:
    """All records of ``root/labels.jsonl``, in file order.

    Raises:
        FileNotFoundError: ``root`` is not a dataset folder (no labels.jsonl).
        ValueError: a line is corrupt, truncated or violates the schema; the message names the
            line number. ``python -m sesahand dataset check DIR --repair`` sets such lines aside.
    """
    path = Path(root) / LABELS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a SesaHand dataset folder")
    records = []
    for number, _, record, error in iter_lines(root):
        if error is not None:
            raise ValueError(f"{path} line {number}: {error}; run `python -m sesahand dataset check "
                             f"{root} --repair` to set bad lines aside")
        records.append(record)
    return records


class DatasetLock:
    """The writer lock of a dataset folder (``root/.lock``, via ``filelock``), used with ``with``
    or ``acquire()`` / ``release()``. It is taken at once or not at all: a second writer, in this
    process or another, gets a RuntimeError instead of waiting; the lock goes with the process.
    """

    def __init__(self, root: str | Path):
        from filelock import FileLock

        self.root = Path(root)
        self._lock = FileLock(str(self.root / LOCK_FILE), timeout=0)

    def acquire(self) -> DatasetLock:
        """Take the lock.

        Raises:
            RuntimeError: another writer holds it.
            OSError: the folder is not writable (read-only disk, permissions).
        """
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RuntimeError(f"dataset {self.root} is being written by another process or writer "
                               f"(lock {self.root / LOCK_FILE} is held); wait for it to finish or "
                               "use another dataset folder") from None
        except OSError as exc:
            raise write_error(self.root, exc, "cannot take the writer lock") from exc
        return self

    def release(self) -> None:
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


def write_error(root: Path, exc: OSError, what: str) -> OSError:
    """An OSError (same errno) saying ``what`` failed in dataset ``root`` and how to fix it."""
    hints = {
        errno.ENOSPC: "the disk is full: free some space",
        errno.EDQUOT: "the disk quota is exceeded: free some space",
        errno.EROFS: "the file system is read-only: use a dataset folder on a writable disk",
        errno.EACCES: "permission denied: make the folder writable or use another one",
        errno.EPERM: "permission denied: make the folder writable or use another one",
    }
    hint = hints.get(exc.errno, str(exc))
    return OSError(exc.errno, f"dataset {root}: {what}; {hint} ({exc.strerror or exc})")


def update_records(root: str | Path, patches: dict[int, dict]) -> None:
    """Merge fields into records by sample index and rewrite labels.jsonl atomically.

    Args:
        root: dataset folder.
        patches: sample index -> fields to set (top-level keys, replaced whole), e.g.
            ``{3: {"alignment": {...}}}``.

    Takes the writer lock; the new file is written beside the old one and renamed over it.

    Raises:
        FileNotFoundError: no labels.jsonl.
        ValueError: a corrupt line (with its number), an index not in the dataset, or a patched
            record that violates the schema (nothing is written then).
        RuntimeError: another writer holds the lock.
    """
    root = Path(root)
    with DatasetLock(root):
        records = read_labels(root)
        by_index = {r["index"]: r for r in records}
        missing = sorted(set(patches) - set(by_index))
        if missing:
            raise ValueError(f"update_records: indices {missing} are not in dataset {root}")
        for index, fields in patches.items():
            by_index[index].update(fields)
            errors = record_errors(by_index[index])
            if errors:
                raise ValueError(f"update_records: sample {index}: {'; '.join(errors)}")
        write_labels(root, records)


def write_labels(root: Path, records: list[dict]) -> None:
    """Replace ``root/labels.jsonl`` by ``records`` atomically (temp file, fsync, rename)."""
    try:
        with atomic_path(root / LABELS_FILE) as tmp, open(tmp, "wb") as f:
            f.writelines(record_line(r) for r in records)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise write_error(root, exc, "cannot rewrite labels.jsonl (left unchanged)") from exc


def record_line(record: dict) -> bytes:
    """One JSONL line (UTF-8, compact, ending in a newline)."""
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, computed once per (real path, mtime, size) per process.

    Raises: FileNotFoundError / OSError if the file cannot be read.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]
