"""Score every sample of a dataset folder with the alignment check and store the scores.

``python -m sesahand qa DATASET_DIR`` runs :func:`run_qa`: each sample's image is checked
against its record's hands, the result (``AlignmentResult.to_dict()``) replaces the record's
``alignment`` field, and labels.jsonl is rewritten once, atomically, at the end
(``sesahand.data.update_records``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .alignment import PCK_LEVELS, AlignmentResult, Thresholds, check_alignment
from .detector import HandKeypointDetector

log = logging.getLogger(__name__)


@dataclass
class QaReport:
    """Summary of a qa run.

    Attributes:
        samples: records in the dataset.
        scored: samples checked (their ``alignment`` was rewritten).
        missing_images: indices whose image file is missing or unreadable (left unchanged).
        hands_checked: conditioning hands checked (visible ones).
        hands_detected: of those, hands matched to a detection.
        passed: samples that passed.
        median_error: median over detected hands of their median normalised keypoint error
            (None when no hand was detected).
        pck: mean PCK per level over the checked hands (0 for a hand not detected).
    """

    samples: int = 0
    scored: int = 0
    missing_images: list[int] = field(default_factory=list)
    hands_checked: int = 0
    hands_detected: int = 0
    passed: int = 0
    median_error: float | None = None
    pck: dict[str, float] = field(default_factory=dict)

    @property
    def detection_rate(self) -> float | None:
        """Detected / checked hands, None when no hand was checked."""
        return self.hands_detected / self.hands_checked if self.hands_checked else None

    def format_table(self) -> str:
        """The summary as an aligned two-column text table."""
        def num(value, fmt="{:.3f}"):
            return "-" if value is None else fmt.format(value)

        rows = [("samples", str(self.samples)), ("scored", str(self.scored)),
                ("missing images", str(len(self.missing_images))),
                ("passed", f"{self.passed}/{self.scored}"),
                ("hands checked", str(self.hands_checked)),
                ("detection rate", num(self.detection_rate)),
                ("median error / box", num(self.median_error))]
        rows += [(f"PCK@{a}", num(self.pck.get(str(a)))) for a in PCK_LEVELS]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def summarise(results: list[AlignmentResult]) -> QaReport:
    """Aggregate alignment results into a :class:`QaReport` (``samples`` = ``scored`` = len)."""
    report = QaReport(samples=len(results), scored=len(results))
    errors, pck = [], {str(a): [] for a in PCK_LEVELS}
    for result in results:
        report.passed += int(result.passed)
        for hand in result.hands:
            if not hand.checked:
                continue
            report.hands_checked += 1
            for a, values in pck.items():
                values.append(hand.pck[a])
            if hand.detected:
                report.hands_detected += 1
                errors.append(hand.median_error)
    report.median_error = float(np.median(errors)) if errors else None
    report.pck = {a: float(np.mean(v)) for a, v in pck.items() if v}
    return report


def run_qa(root: str | Path, task_path: str | Path | None = None,
           thresholds: Thresholds = Thresholds()) -> QaReport:
    """Check every sample of dataset ``root`` and write the results into its labels.

    Args:
        root: dataset folder (``sesahand.data`` format).
        task_path: ``hand_landmarker.task``; default ``$SESAHAND_HAND_LANDMARKER``.
        thresholds: pass/fail rule stored with each result.

    Returns: the summary. Samples whose image is missing or unreadable are reported in
    ``missing_images`` and keep their old ``alignment``.

    Raises:
        FileNotFoundError: not a dataset folder, or no detector model.
        ValueError: a corrupt labels line (with its number).
        RuntimeError: mediapipe missing, or another writer holds the dataset.
    """
    from tqdm import tqdm

    from ..data import image_path, read_labels, update_records

    root = Path(root)
    records = read_labels(root)
    patches, results, missing = {}, [], []
    with HandKeypointDetector(task_path) as detector:
        for record in tqdm(records, desc="alignment check", unit="image", disable=None):
            index = record["index"]
            path = image_path(root, index)
            try:
                with Image.open(path) as im:
                    image = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as exc:
                log.warning("sample %d: cannot read %s (%s); not scored", index, path, exc)
                missing.append(index)
                continue
            result = check_alignment(image, record["hands"], detector, thresholds)
            results.append(result)
            patches[index] = {"alignment": result.to_dict()}
    if patches:
        update_records(root, patches)
    report = summarise(results)
    report.samples, report.missing_images = len(records), missing
    return report
