"""Consistency check (and repair) of a dataset folder."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .format import (
    CONDITION_NAME,
    CONDITIONS_DIR,
    IMAGE_NAME,
    IMAGES_DIR,
    QUARANTINE_DIR,
    DatasetLock,
    iter_lines,
    write_error,
    write_labels,
)

log = logging.getLogger(__name__)

#: Problem kinds, in report order.
PROBLEM_KINDS = ("corrupt_line", "invalid_record", "duplicate_index", "missing_file", "orphan_file")


@dataclass
class Problem:
    """One finding.

    Attributes:
        kind: one of ``PROBLEM_KINDS``: ``corrupt_line`` (not JSON, or cut off), ``invalid_record``
            (schema violation or paths not matching the index), ``duplicate_index`` (an earlier
            record with the index of a later one), ``missing_file`` (a record whose image or
            condition file is absent), ``orphan_file`` (a file in images/ or conditions/ no
            valid record names, including temporary files of an interrupted write).
        message: what is wrong.
        line: line number in labels.jsonl (1-based), None for files.
        path: file path relative to the dataset folder, None for lines.
    """

    kind: str
    message: str
    line: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = f"labels.jsonl line {self.line}" if self.line is not None else self.path
        return f"{self.kind}: {where}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_dataset` found (and, with repair, set aside).

    Attributes:
        root: the dataset folder.
        records: number of intact records (valid, unique index, every file present).
        problems: the findings, in ``PROBLEM_KINDS`` order then line / path order.
        repaired: True when the problems were set aside (``repair=True``).
        quarantined: paths (relative to ``root``) written or moved into ``quarantine/``.
    """

    root: Path
    records: int
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem is left (none found, or all repaired)."""
        return not self.problems or self.repaired

    def summary(self) -> str:
        """Human-readable report: counts per kind, then every problem."""
        counts = {k: sum(p.kind == k for p in self.problems) for k in PROBLEM_KINDS}
        lines = [f"dataset {self.root}: {self.records} intact record(s), {len(self.problems)} problem(s)"
                 + "".join(f", {n} {k}" for k, n in counts.items() if n)]
        lines += [f"  {p}" for p in self.problems]
        if self.repaired:
            lines.append(f"repaired: {len(self.quarantined)} item(s) set aside in {self.root / QUARANTINE_DIR}")
        elif self.problems:
            lines.append("run again with --repair to set the bad lines and orphan files aside")
        return "\n".join(lines)


def check_dataset(root: str | Path, repair: bool = False) -> CheckReport:
    """Check a dataset folder; with ``repair``, set every problem aside.

    Finds corrupt or truncated labels.jsonl lines, records violating the schema, duplicate
    indices (the last record of an index is kept: it was written after the image now on disk),
    records whose image or condition files are missing, and orphan files in ``images/`` and
    ``conditions/`` (including ``.tmp`` files of interrupted writes).

    Repair (under the writer lock): bad records go to ``quarantine/bad_lines.jsonl`` (one JSON
    object per line: ``line``, ``problem``, ``text``), labels.jsonl is rewritten atomically with
    the intact records only, and orphan files are moved to ``quarantine/images/`` and
    ``quarantine/conditions/``. Without repair nothing is written; run it while no writer is
    active, or the sample being written may show as orphan files.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        RuntimeError: (repair) another writer holds the dataset.
        ValueError: (repair) ``quarantine/`` or a folder in it is a symbolic link or a file
            (nothing is written).
        OSError: (repair) the folder is not writable.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if repair:
        with DatasetLock(root):
            return _check(root, repair=True)
    return _check(root, repair=False)


def _check(root: Path, repair: bool) -> CheckReport:
    problems: list[Problem] = []
    bad_lines: list[tuple[int, str, str]] = []  # (line, problem, text)
    candidates: list[tuple[int, str, dict]] = []
    for number, text, record, error in iter_lines(root):
        if error is not None:
            kind = "corrupt_line" if record is None or error.startswith("truncated") else "invalid_record"
            problems.append(Problem(kind, error, line=number))
            bad_lines.append((number, error, text))
        else:
            candidates.append((number, text, record))

    last_line = {record["index"]: number for number, _, record in candidates}
    kept: list[tuple[int, str, dict]] = []
    for number, text, record in candidates:
        if last_line[record["index"]] != number:
            message = f"index {record['index']} is used again on line {last_line[record['index']]} (kept)"
            problems.append(Problem("duplicate_index", message, line=number))
            bad_lines.append((number, message, text))
            continue
        missing = [p for p in (record["image"], *record["conditions"].values()) if not (root / p).is_file()]
        if missing:
            message = f"sample {record['index']}: missing {', '.join(missing)}"
            problems.append(Problem("missing_file", message, line=number))
            bad_lines.append((number, message, text))
            continue
        kept.append((number, text, record))

    named = {p for _, _, r in kept for p in (r["image"], *r["conditions"].values())}
    orphans = []
    for sub, pattern in ((IMAGES_DIR, IMAGE_NAME), (CONDITIONS_DIR, CONDITION_NAME)):
        folder = root / sub
        for name in sorted(os.listdir(folder)) if folder.is_dir() else ():
            rel = f"{sub}/{name}"
            if rel in named or not (folder / name).is_file():
                continue
            reason = ("no record names this file" if pattern.match(name) else
                      "temporary file of an interrupted write" if name.endswith(".tmp") else
                      "not a dataset file name")
            problems.append(Problem("orphan_file", reason, path=rel))
            orphans.append(rel)

    problems.sort(key=lambda p: (PROBLEM_KINDS.index(p.kind), p.line or 0, p.path or ""))
    report = CheckReport(root=root, records=len(kept), problems=problems)
    if repair and problems:
        _repair(root, report, sorted(bad_lines), [r for _, _, r in kept], orphans)
    return report


def _check_quarantine(root: Path, orphans: list[str]) -> None:
    """Refuse (ValueError, before anything is written) a quarantine folder, or a subfolder the
    repair writes into, that is a symbolic link or not a folder: repair writes only inside
    the dataset."""
    folders = [QUARANTINE_DIR] + sorted({f"{QUARANTINE_DIR}/{Path(rel).parent.as_posix()}" for rel in orphans})
    for rel in folders:
        path = root / rel
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ValueError(f"dataset {root}: {rel} is a symbolic link or not a folder; repair writes "
                             f"only inside the dataset: move {rel} away and run the repair again")


def _repair(root: Path, report: CheckReport, bad_lines: list[tuple[int, str, str]], records: list[dict],
            orphans: list[str]) -> None:
    quarantine = root / QUARANTINE_DIR
    _check_quarantine(root, orphans)
    try:
        if bad_lines:
            quarantine.mkdir(exist_ok=True)
            with open(quarantine / "bad_lines.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps({"line": number, "problem": problem, "text": text.rstrip("\n")},
                                       ensure_ascii=False) + "\n" for number, problem, text in bad_lines)
                f.flush()
                os.fsync(f.fileno())
            report.quarantined.append(f"{QUARANTINE_DIR}/bad_lines.jsonl")
            write_labels(root, records)
        for rel in orphans:
            target = quarantine / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            stem, n = target, 1
            while target.exists():  # an earlier repair moved a file of the same name
                target = stem.with_name(f"{stem.stem}.{n}{stem.suffix}")
                n += 1
            os.replace(root / rel, target)
            report.quarantined.append(target.relative_to(root).as_posix())
    except OSError as exc:
        raise write_error(root, exc, "repair stopped (run it again once fixed)") from exc
    report.repaired = True
    log.info("dataset %s: %d line(s) and %d file(s) set aside in %s", root, len(bad_lines), len(orphans),
             quarantine)
