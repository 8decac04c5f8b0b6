"""Hand fitting on photos: speed on the CPU and fit quality on the real test photos.

Usage: python benchmarks/bench_fit.py [--task FILE] [--repeats N] [--photos DIR]

1. Speed (target: at least 2 photos/s with one hand at 512 px on 2 cores): a test photo with
   one hand (``open_palm_right.jpg``) scaled to 512 x 512; median wall time of detect + fit
   (``fit_hands``) against the MediaPipe detector alone, the reference measured in the same
   run (the ratio is the fit's cost on top of detection).
2. Quality over every photo of ``tests/data/photos``: per hand the mean 2D reprojection error
   (fitted joints vs detected keypoints) in pixels and in hand sizes, PCK@0.1 and the verdict;
   then the medians over the kept hands against the targets (error <= 0.05, PCK@0.1 >= 0.95).
3. Re-detection: the alignment check of the generated-image path
   (``sesahand.eval.check_alignment``) run on the *photo* against the labels of the fitted
   hands rendered in the photo's frame (its hand size is the rendered box): the fraction of
   photos whose fitted labels pass it, and their scores.

Needs mediapipe>=0.10.30 and a hand_landmarker.task (--task or $SESAHAND_HAND_LANDMARKER).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from timing import median_time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_PER_S = 2.0
TARGET_ERROR = 0.05
TARGET_PCK = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="hand_landmarker.task (default: $SESAHAND_HAND_LANDMARKER)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", default=str(REPO / "tests" / "data" / "photos"))
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from sesahand.eval import HandKeypointDetector, check_alignment
    from sesahand.fit import MAX_HANDS, Framing, fit_hands, load_photo, photo_intrinsics
    from sesahand.fit.output import render_fit
    from sesahand.fit.photo import list_photos
    from sesahand.hands import load_hand_model

    model = load_hand_model("anny")
    photos = Path(args.photos)
    with HandKeypointDetector(args.task, num_hands=MAX_HANDS) as detector:
        image = np.asarray(Image.open(photos / "open_palm_right.jpg").convert("RGB").resize((512, 512),
                                                                                             Image.BICUBIC))
        fit_hands(image, model, detector)  # warm-up
        detect = median_time(lambda: detector.detect(image), args.repeats)
        both = median_time(lambda: fit_hands(image, model, detector), args.repeats)
        print(f"speed at 512 x 512, one hand ({args.repeats} runs, median):")
        print(f"  detector alone (reference) {detect * 1000:8.1f} ms")
        print(f"  detect + fit               {both * 1000:8.1f} ms  = {1 / both:.2f} photos/s "
              f"(target >= {TARGET_PER_S}: {'met' if 1 / both >= TARGET_PER_S else 'NOT met'}); "
              f"ratio to the detector {both / detect:.1f}x")

        rows, errors, pcks, aligned = [], [], [], []
        for path in list_photos(photos):
            photo = load_photo(path)
            fits = fit_hands(photo.pixels, model, detector, focal_35mm=photo.focal_35mm)
            for i, f in enumerate(fits):
                rows.append((path.name, f"{i} {f.side}", f"{f.hand_size_px:.0f}", f"{f.mean_error_px:.2f}",
                             f"{f.mean_error:.3f}", f"{f.pck['0.1']:.2f}",
                             "kept" if f.ok else "; ".join(f.problems)))
                if f.ok:
                    errors.append(f.mean_error)
                    pcks.append(f.pck["0.1"])
            if not fits:
                rows.append((path.name, "-", "-", "-", "-", "-", "no hand found"))
            kept = [f for f in fits if f.ok]
            if kept:
                K = photo_intrinsics(photo.width, photo.height, focal_35mm=photo.focal_35mm)
                _, rendered, _ = render_fit(model, kept, K, Framing.make((photo.width, photo.height), mode="pad"))
                result = check_alignment(photo.pixels, rendered.labels[0], detector)
                aligned.append((path.name, result.score, result.passed))

    header = ("photo", "hand", "size px", "err px", "err/size", "PCK@0.1", "verdict")
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    print("\nfit quality per hand (fitted joints vs detected keypoints):")
    for r in [header, *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    med_err, med_pck = statistics.median(errors), statistics.median(pcks)
    print(f"\nkept hands {len(errors)}: median error {med_err:.3f} of the hand size (target <= {TARGET_ERROR}: "
          f"{'met' if med_err <= TARGET_ERROR else 'NOT met'}), median PCK@0.1 {med_pck:.2f} "
          f"(target >= {TARGET_PCK}: {'met' if med_pck >= TARGET_PCK else 'NOT met'})")
    print("\nre-detection: alignment check of the fitted labels against MediaPipe on the photo:")
    for name, score, passed in aligned:
        print(f"  {name:28s} score {score:.2f} {'pass' if passed else 'FAIL'}")
    print(f"  {sum(p for _, _, p in aligned)} of {len(aligned)} photos pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
