"""What the paper measures on generated images: FID, KID, FID-H, KID-H, hand confidence and
label alignment (``python -m sesahand eval-images``; docs/alignment_and_metrics.md).

Definitions:

* **FID / KID**: torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``
  (polynomial kernel, degree 3, subsets of ``min(1000, n_generated, n_reference)``
  samples, 100 subsets, seeded) between the Inception-v3 pool features (2048) of the
  generated and the reference images. Every image is resized to 299 x 299 (PIL bicubic)
  before the network; features are extracted once and given to both metrics.
* **FID-H / KID-H**: the same on hand crops: a square of side ``max(w, h) * (1 + 2 *
  margin)`` (margin 0.25) centred on each hand box, black outside the image, resized to
  299 x 299. Boxes come from the labels (``hands[].box`` of a SesaHand dataset record,
  the hand's visible pixels); for a reference folder without labels, from the box of the
  hand detector's 21 keypoints. Hands whose box is smaller than ``min_hand_px`` (16 px)
  are skipped.
* **Hand confidence** (the paper's pilot metric): per generated image, the highest score
  MediaPipe's hand landmarker gives a detected hand (its handedness probability, the
  per-hand score the Tasks API returns; the hand already passed the detection and
  presence thresholds of 0.5), 0 when it finds none; averaged over the images.
  ``detection_rate`` is the share of images with a detected hand.
* **Label alignment**: :func:`sesahand.eval.alignment.score_detections` of every
  generated image's detections against its labels (PCK@0.05/0.1/0.2 of the hand box,
  median normalised keypoint error, pass rate), summarised as ``qa`` does
  (:func:`sesahand.eval.qa.summarise`). Needs a SesaHand dataset folder.

Inception weights: no download. The user gives the FID Inception-v3 weights that
torch-fidelity (and so torchmetrics) use, ``weights-inception-2015-12-05-6726825d.pth``
(the TensorFlow FID graph converted to PyTorch; torch-fidelity's release v0.2.0), or the
same state dict saved as ``.safetensors``. It is read without unpickling code
(``torch.load(weights_only=True)`` or safetensors) and checked against the network before
use (:func:`load_inception`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

#: Environment variable naming the Inception weights file.
INCEPTION_ENV = "SESAHAND_INCEPTION"
#: File name of torch-fidelity's FID Inception-v3 weights.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
#: Image files looked for in a plain folder (lower-case suffixes).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
#: Side of the square every image and crop is resized to (Inception-v3's input).
INCEPTION_SIZE = 299

_INCEPTION_HINT = (f"give torch-fidelity's FID Inception-v3 weights, {INCEPTION_FILE} "
                   "(github.com/toshas/torch-fidelity, release v0.2.0; fetch it on a machine "
                   "with internet access), or that state dict saved as .safetensors, with "
                   f"--inception FILE or ${INCEPTION_ENV}; or skip FID/KID with --no-fid")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Sample:
    """One image of a set: its path and, for a SesaHand dataset, its record's hands."""

    path: Path
    hands: list | None = None


def collect_images(folder: str | Path, role: str) -> list[Sample]:
    """The images of ``folder``: a SesaHand dataset (``labels.jsonl``: its records' images,
    with their hands) or any folder of images (searched recursively, sorted by path).

    Args:
        folder: the folder.
        role: what it is for the messages ("generated", "reference").

    Raises:
        FileNotFoundError: the folder does not exist, or a record's image is missing.
        ValueError: no image in it, or a corrupt labels line.
    """
    from ..data import image_path, read_labels

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{role} folder {root}: not found (or not a folder); give the "
                                "folder of the images")
    if (root / "labels.jsonl").is_file():
        records = read_labels(root)
        samples = [Sample(image_path(root, r["index"]), r["hands"]) for r in records]
        missing = [s.path.name for s in samples if not s.path.is_file()]
        if missing:
            raise FileNotFoundError(f"{role} dataset {root}: {len(missing)} image(s) of "
                                    f"labels.jsonl are missing ({', '.join(missing[:5])}); "
                                    f"run `python -m sesahand dataset check {root} --repair`")
    else:
        samples = [Sample(p) for p in sorted(root.rglob("*"))
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not samples:
        raise ValueError(f"{role} folder {root}: no images (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}, recursively, or a SesaHand "
                         "dataset's labels.jsonl)")
    return samples


def check_readable(samples: Sequence[Sample], role: str) -> None:
    """Raise ValueError naming every image PIL cannot decode or that is over the limits
    (:data:`~sesahand.limits.MAX_PHOTO_FILE_BYTES`, :data:`~sesahand.limits.MAX_IMAGE_PIXELS`);
    checked before any metric runs, so a bad file costs no computation and nothing is
    written."""
    from ..limits import MAX_IMAGE_PIXELS, MAX_PHOTO_FILE_BYTES

    bad = []
    for sample in samples:
        if sample.path.stat().st_size > MAX_PHOTO_FILE_BYTES:
            bad.append(f"{sample.path} (over {MAX_PHOTO_FILE_BYTES} bytes)")
            continue
        try:
            with Image.open(sample.path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    bad.append(f"{sample.path} ({im.width}x{im.height}, over "
                               f"{MAX_IMAGE_PIXELS} pixels)")
                    continue
                im.verify()
        except Exception as exc:  # PIL raises many types for corrupt files
            bad.append(f"{sample.path} ({type(exc).__name__})")
    if bad:
        raise ValueError(f"{role}: {len(bad)} unreadable image(s): {'; '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}; remove or replace them")


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (transparency placed on black)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def resize_square(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """``image`` resized to (size, size, 3) uint8 with PIL's bicubic filter."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def crop_hand(image: np.ndarray, box: Sequence[float], margin: float = 0.25,
              size: int = INCEPTION_SIZE) -> np.ndarray:
    """A square crop around a hand box, resized to (size, size, 3) uint8.

    Args:
        image: (H, W, 3) uint8.
        box: x0, y0, x1, y1 pixels (max exclusive).
        margin: added on each side, as a fraction of the box's larger side.
        size: output side.

    Pixels outside the image are black (the crop is not shifted, so the hand stays
    centred).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    n = max(1, int(math.ceil(side)))
    out = np.zeros((n, n, 3), np.uint8)
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + n, w), min(top + n, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return resize_square(out, size)


def _label_boxes(hands: list) -> list[list[float]]:
    return [h["box"] for h in hands if h.get("box") is not None]


def _keypoint_box(joints2d: np.ndarray) -> list[float]:
    lo, hi = joints2d.min(axis=0), joints2d.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]


# --------------------------------------------------------------------------- features


def find_inception_path(path: str | Path | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$SESAHAND_INCEPTION``.

    Raises:
        FileNotFoundError: neither is given, or the file does not exist (the message says
            which file to give).
        ValueError: the file is larger than :data:`~sesahand.limits.MAX_INCEPTION_FILE_BYTES`.
    """
    given = path if path not in (None, "") else os.environ.get(INCEPTION_ENV) or None
    if given is None:
        raise FileNotFoundError("no Inception weights for FID/KID: " + _INCEPTION_HINT)
    from ..limits import MAX_INCEPTION_FILE_BYTES

    found = Path(given).expanduser()
    if not found.is_file():
        raise FileNotFoundError(f"Inception weights {found}: file not found; " + _INCEPTION_HINT)
    if found.stat().st_size > MAX_INCEPTION_FILE_BYTES:
        raise ValueError(f"Inception weights {found}: over {MAX_INCEPTION_FILE_BYTES} bytes, "
                         "not the FID Inception-v3 (about 91 MB); " + _INCEPTION_HINT)
    return found


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with code, truncated safetensors ...
        raise ValueError(f"Inception weights {path}: cannot be read as a tensor state dict "
                         f"({type(exc).__name__}); " + _INCEPTION_HINT) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Inception weights {path}: not a state dict of tensors; "
                         + _INCEPTION_HINT)
    return state


def load_inception(path: str | Path | None = None, feature: int = 2048):
    """torchmetrics' FID Inception-v3 (``NoTrainInceptionV3``, torch-fidelity's network)
    with the weights of a local file.

    Args:
        path: the weights file (see the module docstring); default ``$SESAHAND_INCEPTION``.
        feature: which features: 64, 192, 768 or 2048 (the pool features FID uses).

    Returns:
        An ``nn.Module`` in eval mode taking (N, 3, H, W) uint8 RGB and returning (N,
        ``feature``) float32.

    Raises:
        FileNotFoundError: no file (the message names the file to give).
        ValueError: the file is not a tensor state dict, or not this network's weights.
        RuntimeError: torch-fidelity / torchmetrics are not installed.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as exc:
        raise RuntimeError(f"FID/KID need torchmetrics and torch-fidelity ({exc}); install the "
                           "'metrics' extra: pip install torchmetrics==1.9.0 "
                           "torch-fidelity==0.4.0") from None
    found = find_inception_path(path)
    state = _read_state_dict(found)
    buffer = io.BytesIO()  # torch-fidelity unpickles its path; give it only checked tensors
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                                   feature_extractor_weights_path=buffer)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise ValueError(f"Inception weights {found}: they do not fit torch-fidelity's FID "
                         f"Inception-v3 ({first}); " + _INCEPTION_HINT) from None
    model.num_features = feature
    return model


class _Precomputed(torch.nn.Module):
    """Identity "feature extractor": lets torchmetrics' FID/KID take features computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def extract_features(extractor, images: Sequence[np.ndarray], device: str = "cpu"):
    """(N, D) float64 CPU features of (S, S, 3) uint8 images, in one batch."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    with torch.inference_mode():
        out = extractor(batch)
    return out.reshape(len(images), -1).double().cpu()


def fid_kid(generated, reference, subsets: int = 100, subset_size: int = 1000,
            seed: int = 0) -> dict:
    """torchmetrics' FID and KID of two feature sets.

    Args:
        generated, reference: (N, D) feature tensors (N >= 2 each).
        subsets, subset_size: KID's subsets; the size is capped at the smaller N.
        seed: seed of KID's subset sampling (the global torch RNG is left as it was).

    Returns:
        ``{"fid", "kid_mean", "kid_std", "n_generated", "n_reference"}`` (floats / ints).

    Raises:
        ValueError: fewer than 2 samples in a set, or different feature sizes.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_gen, n_ref = len(generated), len(reference)
    if min(n_gen, n_ref) < 2:
        raise ValueError(f"FID/KID need at least 2 samples per set, got {n_gen} generated and "
                         f"{n_ref} reference")
    if generated.shape[1] != reference.shape[1]:
        raise ValueError(f"feature sizes differ: {generated.shape[1]} vs {reference.shape[1]}")
    dim = generated.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim))
    with warnings.catch_warnings():  # "will save all extracted features": that is the plan
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=subsets,
                                      subset_size=min(subset_size, n_gen, n_ref))
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean),
            "kid_std": float(kid_std), "n_generated": n_gen, "n_reference": n_ref}


# --------------------------------------------------------------------------- the run


@dataclass
class GenerationReport:
    """Result of :func:`evaluate_generation` (JSON: :meth:`to_dict`).

    Attributes:
        generated, reference: the folders.
        images: ``{"generated": n, "reference": n}``.
        fid, kid_mean, kid_std: on whole images (None when FID was skipped).
        fid_h, kid_h_mean, kid_h_std: on hand crops (None when skipped or too few crops).
        hand_crops: ``{"generated": n, "reference": n}`` crops used.
        hand_confidence: mean per-image detector score (module docstring); None without
            a detector.
        detection_rate: share of generated images with a detected hand.
        alignment: :class:`~sesahand.eval.qa.QaReport` fields (labels vs detected
            keypoints) for a generated dataset with a detector, else None.
        notes: why something was skipped.
        settings: inputs that shape the numbers (feature, sizes, margin, seed, files).
    """

    generated: str
    reference: str
    images: dict = field(default_factory=dict)
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    fid_h: float | None = None
    kid_h_mean: float | None = None
    kid_h_std: float | None = None
    hand_crops: dict = field(default_factory=dict)
    hand_confidence: float | None = None
    detection_rate: float | None = None
    alignment: dict | None = None
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict of the attributes."""
        return asdict(self)

    def format_table(self) -> str:
        """The numbers as an aligned two-column text table."""
        def num(value, fmt="{:.4f}"):
            return "-" if value is None else fmt.format(value)

        rows = [("generated images", str(self.images.get("generated", 0))),
                ("reference images", str(self.images.get("reference", 0))),
                ("FID", num(self.fid)),
                ("KID", f"{num(self.kid_mean, '{:.5f}')} +- {num(self.kid_std, '{:.5f}')}"),
                ("hand crops (gen / ref)", f"{self.hand_crops.get('generated', 0)} / "
                                           f"{self.hand_crops.get('reference', 0)}"),
                ("FID-H", num(self.fid_h)),
                ("KID-H", f"{num(self.kid_h_mean, '{:.5f}')} +- "
                          f"{num(self.kid_h_std, '{:.5f}')}"),
                ("hand confidence", num(self.hand_confidence)),
                ("detection rate", num(self.detection_rate))]
        if self.alignment is not None:
            a = self.alignment
            rows += [("alignment: passed", f"{a['passed']}/{a['scored']}"),
                     ("alignment: hands detected", f"{a['hands_detected']}/{a['hands_checked']}"),
                     ("alignment: median error / box", num(a["median_error"]))]
            rows += [(f"alignment: PCK@{k}", num(v)) for k, v in a["pck"].items()]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _pass(samples: list[Sample], role: str, extractor, detector, *, device: str, batch_size: int,
          margin: float, min_hand_px: float, image_size: int):
    """Features of images and hand crops, and detections, of one set (one read per image)."""
    from tqdm import tqdm

    full, crops, detections, sizes = [], [], [], []
    pending: list[np.ndarray] = []
    pending_crops: list[np.ndarray] = []

    def flush(force=False):
        for queue, out in ((pending, full), (pending_crops, crops)):
            if queue and (force or len(queue) >= batch_size):
                out.append(extract_features(extractor, queue, device))
                queue.clear()

    for sample in tqdm(samples, desc=f"{role} images", unit="image", disable=None):
        image = read_rgb(sample.path)
        sizes.append(image.shape[1::-1])
        found = detector.detect(image) if detector is not None else None
        detections.append(found)
        if sample.hands is not None:
            boxes = _label_boxes(sample.hands)
        elif found is not None:
            boxes = [_keypoint_box(d.joints2d) for d in found]
        else:
            boxes = []
        if extractor is not None:
            pending.append(resize_square(image, image_size))
            pending_crops.extend(crop_hand(image, box, margin, image_size) for box in boxes
                                 if max(box[2] - box[0], box[3] - box[1]) >= min_hand_px)
            flush()
    if extractor is not None:
        flush(force=True)
    cat = (lambda parts: torch.cat(parts) if parts else torch.zeros(0, 1, dtype=torch.float64))
    return cat(full), cat(crops), detections, sizes


def evaluate_generation(generated: str | Path, reference: str | Path, *, extractor=None,
                        inception: str | Path | None = None, detector=None,
                        task_path: str | Path | None = None, fid: bool = True,
                        use_detector: bool = True, device: str = "cpu", batch_size: int = 32,
                        image_size: int = INCEPTION_SIZE, margin: float = 0.25,
                        min_hand_px: float = 16, kid_subsets: int = 100,
                        kid_subset_size: int = 1000, seed: int = 0) -> GenerationReport:
    """All generation metrics of a generated folder against a reference folder.

    Args:
        generated: a SesaHand dataset folder (FID-H from its label boxes, alignment) or a
            plain image folder (FID, KID, hand confidence; FID-H from detected hands).
        reference: real images: a plain image folder (hand crops from detected hands) or a
            SesaHand dataset folder (hand crops from its label boxes).
        extractor: an ``nn.Module`` taking (N, 3, image_size, image_size) uint8 and returning
            (N, D) features, instead of the Inception network (tests use a random one).
        inception: the Inception weights file (:func:`load_inception`) when no extractor.
        detector: a :class:`~sesahand.eval.detector.HandKeypointDetector` to use (kept open).
        task_path: hand_landmarker.task for a detector made here (closed at the end).
        fid: False skips FID, KID, FID-H, KID-H (no Inception file needed).
        use_detector: False skips hand confidence, alignment and detected crops.
        device: torch device of the feature extractor.
        batch_size: images per feature batch.
        image_size: side images and crops are resized to (299 for Inception).
        margin, min_hand_px: hand crops (module docstring).
        kid_subsets, kid_subset_size, seed: KID's subsets (:func:`fid_kid`).

    Raises:
        FileNotFoundError: a folder, an image of a dataset, the Inception file or the hand
            landmarker model is missing.
        ValueError: no images, unreadable images, bad weights, a corrupt labels line.
        RuntimeError: torchmetrics / torch-fidelity or mediapipe missing.
    """
    from .alignment import score_detections
    from .detector import HandKeypointDetector
    from .qa import summarise

    gen = collect_images(generated, "generated")
    ref = collect_images(reference, "reference")
    check_readable(gen, "generated")
    check_readable(ref, "reference")
    report = GenerationReport(str(generated), str(reference),
                              images={"generated": len(gen), "reference": len(ref)})
    if fid and extractor is None:
        extractor = load_inception(inception)
        report.settings["inception"] = str(find_inception_path(inception))
    if not fid:
        extractor = None
        report.notes.append("FID, KID, FID-H and KID-H skipped (--no-fid)")
    if extractor is not None:
        extractor = extractor.to(device).eval()
    own = None
    if use_detector and detector is None:
        detector = own = HandKeypointDetector(task_path)
    if not use_detector:
        detector = None
        report.notes.append("hand confidence, alignment and detected hand crops skipped "
                            "(--no-detector)")
    report.settings.update({"image_size": image_size, "crop_margin": margin,
                            "min_hand_px": min_hand_px, "kid_subsets": kid_subsets,
                            "kid_subset_size": kid_subset_size, "seed": seed,
                            "feature_extractor": type(extractor).__name__ if extractor else None})
    common = dict(device=device, batch_size=batch_size, margin=margin,
                  min_hand_px=min_hand_px, image_size=image_size)
    try:
        g_full, g_crops, g_det, g_sizes = _pass(gen, "generated", extractor, detector, **common)
        r_full, r_crops, _, _ = _pass(ref, "reference", extractor, detector, **common)
    finally:
        if own is not None:
            own.close()
    report.hand_crops = {"generated": len(g_crops), "reference": len(r_crops)}
    if extractor is not None:
        kid = dict(subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        whole = fid_kid(g_full, r_full, **kid)
        report.fid, report.kid_mean, report.kid_std = (whole["fid"], whole["kid_mean"],
                                                        whole["kid_std"])
        if min(len(g_crops), len(r_crops)) >= 2:
            hands = fid_kid(g_crops, r_crops, **kid)
            report.fid_h, report.kid_h_mean, report.kid_h_std = (
                hands["fid"], hands["kid_mean"], hands["kid_std"])
        else:
            report.notes.append(f"FID-H/KID-H skipped: {len(g_crops)} generated and "
                                f"{len(r_crops)} reference hand crops (need 2 each; crops "
                                "come from label boxes, or from detected hands)")
    if detector is not None:
        scores = [max((d.side_score for d in found), default=0.0) for found in g_det]
        report.hand_confidence = float(np.mean(scores))
        report.detection_rate = float(np.mean([bool(found) for found in g_det]))
        labelled = [(s, found, size) for s, found, size in zip(gen, g_det, g_sizes)
                    if s.hands is not None]
        if labelled:
            results = [score_detections(w, h, s.hands, found) for s, found, (w, h) in labelled]
            report.alignment = asdict(summarise(results))
        else:
            report.notes.append("label alignment skipped: the generated folder has no "
                                "labels.jsonl (not a SesaHand dataset)")
    return report
