"""Open hand model: load time from the compact cache, and posing speed.

Usage: python benchmarks/bench_hand_model.py [--repeats N]

Prints the import time of ``anny`` (paid once per process, with warp's initialisation), the
load time of the compact cache (target: under 1 s), and frames/s of posing one and two hands.
The reference for posing is Anny's own forward pass at its rest pose in the same run, so the
printed ratio is the cost of SesaHand's retargeting on top.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    start = time.perf_counter()
    import anny  # noqa: F401  (warp initialises here)
    import_s = time.perf_counter() - start

    import torch

    from sesahand.hands.anny_model import AnnyHandModel, anny_cache_file
    from sesahand.hands.poses import preset_hand_pose
    from sesahand.hands.types import HandParams

    if not anny_cache_file().exists():
        AnnyHandModel()  # first build, not timed
    load_s = median_time(AnnyHandModel, 5)
    model = AnnyHandModel()
    one = [HandParams.create(hand_pose=preset_hand_pose("fist"))]
    two = one + [HandParams.create("left", hand_pose=preset_hand_pose("ok"))]
    model(two)  # warm-up
    identity = torch.eye(4, dtype=model._dtype).expand(1, 21, 4, 4)
    ref_s = median_time(lambda: model._model(pose_parameters=identity), args.repeats)
    one_s = median_time(lambda: model(one), args.repeats)
    two_s = median_time(lambda: model(two), args.repeats)
    print(f"import anny (+warp init): {import_s:.2f} s")
    print(f"load compact cache:       {load_s * 1e3:.0f} ms   (target < 1000 ms)  {'OK' if load_s < 1 else 'MISSED'}")
    print(f"Anny forward, rest pose:  {ref_s * 1e3:.2f} ms (reference)")
    print(f"pose 1 hand:              {one_s * 1e3:.2f} ms  ratio to reference {one_s / ref_s:.2f}")
    print(f"pose 2 hands:             {two_s * 1e3:.2f} ms  ratio to reference {two_s / ref_s:.2f}")


if __name__ == "__main__":
    main()
