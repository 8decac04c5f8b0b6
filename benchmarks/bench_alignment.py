"""Alignment checks per second on 512 x 512 images on the CPU (target: at least 10/s).

Usage: python benchmarks/bench_alignment.py [--task FILE] [--repeats N]

Renders the open hand (open_palm, 512 x 512), shades the mesh image to skin on a light
background, then times ``check_alignment`` (detector + matching + scores) on it, and the
MediaPipe detector alone as the reference measured in the same run: the printed ratio
"check / detector" is the cost of SesaHand's scoring on top. Also printed: the load time of
the detector and the rate of an image without a hand (the palm detector's early exit).
Needs mediapipe>=0.10.30 and a hand_landmarker.task (--task or $SESAHAND_HAND_LANDMARKER).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_PER_S = 10.0


def skin_render():
    """(image uint8 (512, 512, 3), labels) of an open right palm."""
    import numpy as np

    from sesahand.camera import Camera
    from sesahand.hands import PoseSpec, load_hand_model
    from sesahand.hands.types import HAND_COLORS
    from sesahand.io import to_uint8
    from sesahand.pipeline import render_scenes

    model = load_hand_model("anny")
    scenes = PoseSpec.preset("open_palm").resolve(model, Camera.default(512, 512), 1)
    cond, rendered = render_scenes(model, scenes)
    shade = cond.mesh[0].numpy().max(-1, keepdims=True) / max(HAND_COLORS["right"])
    m = cond.mask[0].numpy()[..., None]
    image = m * shade * np.array([0.87, 0.67, 0.55]) + (1 - m) * np.array([0.85, 0.88, 0.92])
    return to_uint8(image), rendered.labels[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="hand_landmarker.task (default: $SESAHAND_HAND_LANDMARKER)")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()

    import numpy as np

    from sesahand.eval import HandKeypointDetector, check_alignment

    image, labels = skin_render()
    start = time.perf_counter()
    detector = HandKeypointDetector(args.task)
    load_s = time.perf_counter() - start
    with detector:
        result = check_alignment(image, labels, detector)  # warm-up
        if not result.hands[0].detected:
            print(f"the detector found no hand on the benchmark image: {result.reason}")
            return 1
        detect_s = median_time(lambda: detector.detect(image), args.repeats)
        check_s = median_time(lambda: check_alignment(image, labels, detector), args.repeats)
        blank = np.full_like(image, 200)
        blank_s = median_time(lambda: check_alignment(blank, labels, detector), args.repeats)
    rate = 1.0 / check_s
    print(f"detector load: {load_s:.2f} s")
    print(f"detector alone: {1.0 / detect_s:.1f} images/s")
    print(f"alignment check (512x512, one hand): {rate:.1f} checks/s  "
          f"(target {TARGET_PER_S:.0f}/s: x{rate / TARGET_PER_S:.2f})")
    print(f"check / detector time: {check_s / detect_s:.3f}")
    print(f"alignment check, image without a hand: {1.0 / blank_s:.1f} checks/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
