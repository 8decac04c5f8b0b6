"""The job log of a queue run's output folder (``manifest.jsonl``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"


class Manifest:
    """The job log of one output folder: a JSONL file, one line per job state change.

    Each line is a JSON object with ``job`` (index), ``status`` and ``time`` (UTC ISO 8601), plus,
    where they apply: ``attempt``, ``server``, ``prompt_id``, ``varied`` (``{"node.input":
    value}``), ``prompt_sha`` (:func:`prompt_digest`), ``outputs`` (paths relative to the
    folder), ``error``. Statuses: ``submitted`` (written before the POST), ``retrying`` (an
    attempt failed, another follows), ``done``, ``failed``, ``interrupted``. A job's state is its
    last line.

    A line is appended with one ``write`` on an ``O_APPEND`` descriptor, then fsynced: lines are
    never interleaved. A line cut by a crash is skipped by readers and cut off the file before
    the next append. One run at a time may append to a manifest.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._repaired = False

    def append(self, record: dict) -> None:
        """Append ``record`` (JSON-serialisable) as one line, with ``time`` added."""
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._repaired:
                self._cut_fragment()
                self._repaired = True
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write to {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _cut_fragment(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: cutting off an incomplete last line (%d bytes)", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)

    def records(self) -> list[dict]:
        """Every complete line, in order (an incomplete last line is skipped)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        out = []
        for number, line in enumerate(data[:data.rfind(b"\n") + 1].splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON, skipped", self.path, number)
        return out

    def latest(self) -> dict[int, dict]:
        """The last record of each job, by job index."""
        return {record["job"]: record for record in self.records() if isinstance(record.get("job"), int)}
