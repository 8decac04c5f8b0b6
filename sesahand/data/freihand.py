"""Export a dataset in the layout of FreiHAND's training set (Zimmermann et al., ICCV 2019)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_path, atomic_write_bytes
from .format import read_labels

log = logging.getLogger(__name__)

JPEG_QUALITY = 95


@dataclass
class FreiHandExport:
    """What :func:`export_freihand` wrote.

    Attributes:
        out: the export folder.
        written: number of samples exported.
        skipped: reason -> number of dataset samples left out.
        mano_written: whether ``training_mano.json`` was written (needs the MANO mean pose).
    """

    out: Path
    written: int
    skipped: dict[str, int] = field(default_factory=dict)
    mano_written: bool = False

    def summary(self) -> str:
        text = f"exported {self.written} sample(s) to {self.out}"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(self.skipped.items()))
        if not self.mano_written:
            text += "; training_mano.json not written (give the MANO files to write it)"
        return text


def _skip_reason(hands: list[dict]) -> str | None:
    if not hands:
        return "no hand"
    if len(hands) > 1:
        return "more than one hand"
    if hands[0]["side"] != "right":
        return "left hand"
    if hands[0]["box"] is None:
        return "hand not visible"
    return None


def export_freihand(root: str | Path, out: str | Path, mano_path: str | Path | None = None) -> FreiHandExport:
    """Write the samples of dataset ``root`` as FreiHAND's training set does.

    Files in ``out``:

    * ``training/rgb/%08d.jpg``: the images (JPEG quality 95, the dataset's own size; K
      matches that size, unlike FreiHAND's fixed 224 x 224).
    * ``training_xyz.json``: (N, 21, 3) joints, metres, camera frame, OpenPose / FreiHAND order
      (the rendered hand's joints).
    * ``training_K.json``: (N, 3, 3) intrinsics, pixels.
    * ``training_mano.json``: (N, 1, 61) FreiHAND MANO vectors ``[global_orient (3), hand_pose
      relative to MANO's mean pose (45), betas (10), transl (3)]``, the inverse of
      ``sesahand.hands.PoseSpec.from_freihand``. Written only with ``mano_path``: the mean pose
      comes from the user's MANO files. For samples made with the open hand model these are
      the parameters it was posed with; MANO with them gives a similar, not identical hand.
    * ``sesahand_index.json``: (N,) dataset index of each exported sample.

    FreiHAND images hold one right hand, so only samples with exactly one visible right hand
    are exported; the others are skipped and counted by reason.

    Args:
        root: dataset folder. out: export folder (new, or empty).
        mano_path: folder with MANO_RIGHT.pkl (or that file), for ``training_mano.json``.

    Raises:
        FileNotFoundError / ValueError: not a dataset, a corrupt labels line (with its number),
            ``out`` not empty.
    """
    root, out = Path(root), Path(out)
    records = read_labels(root)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export folder {out} is not empty; give a new folder")
    mean = None
    if mano_path is not None:
        from ..hands import load_hand_model

        mean = load_hand_model("mano", mano_path=mano_path).hands_mean("right").numpy().astype(np.float64)

    xyz, Ks, manos, indices = [], [], [], []
    skipped: Counter = Counter()
    for record in records:
        reason = _skip_reason(record["hands"])
        if reason is not None:
            skipped[reason] += 1
            continue
        hand = record["hands"][0]
        n = len(indices)
        with Image.open(root / record["image"]) as picture, \
                atomic_path(out / "training" / "rgb" / f"{n:08d}.jpg") as tmp:
            picture.convert("RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
        xyz.append(hand["joints3d"])
        Ks.append(record["K"])
        if mean is not None:
            pose = np.asarray(hand["hand_pose"], dtype=np.float64) - mean
            manos.append([[*hand["global_orient"], *pose.tolist(), *hand["betas"], *hand["transl"]]])
        indices.append(record["index"])

    outputs = {"training_xyz.json": xyz, "training_K.json": Ks, "sesahand_index.json": indices}
    if mean is not None:
        outputs["training_mano.json"] = manos
    for name, value in outputs.items():
        atomic_write_bytes(out / name, json.dumps(value).encode())
    report = FreiHandExport(out=out, written=len(indices), skipped=dict(skipped), mano_written=mean is not None)
    log.info("%s", report.summary())
    return report
