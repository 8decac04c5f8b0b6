"""Fit a folder of photos into per-photo output folders (the ``fit`` command and the ``photos``
training source).

For each photo ``NAME.ext`` the folder ``OUT/NAME/`` holds:

* ``photo.png``: the photo as fitted (EXIF rotation applied), framed to ``--size`` if given;
* ``pose.json``: the pose file (camera of that frame + kept hands);
* ``labels.json``: as ``python -m sesahand render`` writes it (camera ``K``, ``width``,
  ``height``, per kept hand MANO parameters, 21 joints 2D/3D, visibility, box), plus
  ``photo`` (own size, framing) and ``fit`` (every detected hand's residuals and verdict);
* ``mesh.png depth.png normal.png pose.png mask.png``: the condition maps of the kept hands;
* ``overlay.png``: detected keypoints vs fitted mesh outline and joints.

The folder is written under a temporary name and renamed into place when complete, so it is
there whole or not at all; a run resumes by skipping photos whose folder exists.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..eval.detector import HandKeypointDetector
from ..hands.base import HandModel
from ..io import atomic_write_bytes
from ..render import save_conditions
from .fitter import FitOptions, fit_hands
from .framing import Framing
from .output import overlay_for, pose_document, pose_frame, render_fit
from .photo import list_photos, load_photo, photo_intrinsics

log = logging.getLogger(__name__)

#: Files of a complete photo folder.
PHOTO_FILES = ("photo.png", "pose.json", "labels.json", "mesh.png", "depth.png", "normal.png", "pose.png",
               "mask.png", "overlay.png")


@dataclass
class PhotoOutcome:
    """What happened to one photo.

    Attributes:
        name: the photo's file name. status: ``fitted``, ``resumed`` (folder already there)
            or ``failed`` (unreadable or refused; ``message`` says why).
        found, kept: hands detected and hands that passed the fit rules.
        errors, errors_px: mean 2D error of each kept hand, in hand sizes and pixels.
        pck: PCK@0.1 of each kept hand.
    """

    name: str
    status: str
    found: int = 0
    kept: int = 0
    errors: list[float] = field(default_factory=list)
    errors_px: list[float] = field(default_factory=list)
    pck: list[float] = field(default_factory=list)
    message: str = ""


def _outcome_from_labels(name: str, status: str, labels: dict) -> PhotoOutcome:
    fits = labels.get("fit", [])
    good = [f for f in fits if f.get("kept")]
    return PhotoOutcome(name=name, status=status, found=len(fits), kept=len(good),
                        errors=[f["mean_error"] for f in good], errors_px=[f["mean_error_px"] for f in good],
                        pck=[f["pck"]["0.1"] for f in good],
                        message="" if fits else "no hand found")


def fit_photo(path: Path, folder: Path, model: HandModel, detector: HandKeypointDetector, *,
              size: tuple[int, int] | None = None, framing: str = "crop", hands: str = "all",
              fov_deg: float | None = None, options: FitOptions = FitOptions(),
              backend: str = "auto") -> PhotoOutcome:
    """Fit one photo and write its folder atomically (see the module docstring).

    Raises: ValueError / FileNotFoundError for an unreadable or refused photo (nothing written).
    """
    photo = load_photo(path)
    fits = fit_hands(photo.pixels, model, detector, hands=hands, fov_deg=fov_deg,
                     focal_35mm=photo.focal_35mm, options=options)
    K = photo_intrinsics(photo.width, photo.height, fov_deg=fov_deg, focal_35mm=photo.focal_35mm)
    frame = Framing.make((photo.width, photo.height), size, framing if size else "pad")
    cond, _, labels = render_fit(model, fits, K, frame, backend=backend)
    labels["photo"].update(name=path.name, focal_35mm=photo.focal_35mm,
                           fov_deg=None if photo.focal_35mm else fov_deg)
    framed = photo.pixels if frame.mode == "pad" else frame.image(photo.pixels)
    overlay = overlay_for(model, photo.pixels, fits, K, frame if frame.mode != "pad" else None,
                          backend=backend, title=path.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        save_conditions(cond, 0, tmp)
        Image.fromarray(framed).save(tmp / "photo.png")
        Image.fromarray(overlay).save(tmp / "overlay.png")
        atomic_write_bytes(tmp / "pose.json", json.dumps(pose_document([pose_frame(fits, K, frame)]),
                                                         indent=1).encode())
        atomic_write_bytes(tmp / "labels.json", json.dumps(labels, indent=1).encode())
        tmp.chmod(0o755)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if not fits:
        log.warning("%s: no hand found", path.name)
    for i, f in enumerate(fits):
        if not f.ok:
            log.warning("%s: hand %d (%s) not kept: %s", path.name, i, f.side, "; ".join(f.problems))
    return _outcome_from_labels(path.name, "fitted", labels)


def fit_folder(images_dir: str | Path, out: str | Path, model: HandModel, detector: HandKeypointDetector, *,
               size: tuple[int, int] | None = None, framing: str = "crop", hands: str = "all",
               fov_deg: float | None = None, options: FitOptions = FitOptions(), backend: str = "auto",
               progress: Callable[[str], None] | None = None) -> list[PhotoOutcome]:
    """Fit every photo of ``images_dir`` into ``out/<stem>/`` (resumable; see the module docstring).

    A photo that cannot be read or is refused (size, corruption) is reported as ``failed``
    with the reason, and the run goes on.

    Raises: FileNotFoundError if ``images_dir`` is not a folder; ValueError if two photos
    share a file stem (their folders would collide).
    """
    photos = list_photos(images_dir)
    stems: dict[str, str] = {}
    for p in photos:
        if p.stem in stems:
            raise ValueError(f"{p.name} and {stems[p.stem]} have the same stem {p.stem!r}: their output "
                             "folders would collide; rename one")
        stems[p.stem] = p.name
    out = Path(out)
    outcomes = []
    for p in photos:
        folder = out / p.stem
        labels_file = folder / "labels.json"
        if labels_file.is_file():
            try:
                outcomes.append(_outcome_from_labels(p.name, "resumed", json.loads(labels_file.read_text())))
            except (ValueError, KeyError) as exc:
                outcomes.append(PhotoOutcome(p.name, "failed", message=f"{labels_file} unreadable ({exc}); "
                                             "delete the folder to fit it again"))
        else:
            try:
                outcomes.append(fit_photo(p, folder, model, detector, size=size, framing=framing, hands=hands,
                                          fov_deg=fov_deg, options=options, backend=backend))
            except (ValueError, FileNotFoundError) as exc:
                log.error("%s", exc)
                outcomes.append(PhotoOutcome(p.name, "failed", message=str(exc)))
        if progress is not None:
            progress(p.name)
    return outcomes


def format_summary(outcomes: list[PhotoOutcome]) -> str:
    """The summary table: one row per photo, then the totals and medians."""
    rows = [("photo", "status", "found", "kept", "err (hand)", "err (px)", "PCK@0.1")]
    for o in outcomes:
        rows.append((o.name, o.status, str(o.found), str(o.kept),
                     " ".join(f"{e:.3f}" for e in o.errors) or "-",
                     " ".join(f"{e:.1f}" for e in o.errors_px) or "-",
                     " ".join(f"{e:.2f}" for e in o.pck) or "-"))
    errors = [e for o in outcomes for e in o.errors]
    errors_px = [e for o in outcomes for e in o.errors_px]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("")
    lines.append(f"photos {len(outcomes)}, failed {sum(o.status == 'failed' for o in outcomes)}, "
                 f"hands found {sum(o.found for o in outcomes)}, hands kept {sum(o.kept for o in outcomes)}, "
                 "median reprojection error "
                 + (f"{statistics.median(errors):.3f} of the hand size ({statistics.median(errors_px):.1f} px)"
                    if errors else "-"))
    for o in outcomes:
        if o.message:
            lines.append(f"{o.name}: {o.message}")
    return "\n".join(lines)

