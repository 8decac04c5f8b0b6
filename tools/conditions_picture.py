"""Make the README's picture of the condition maps (``docs/conditions.png``).

Usage (from the repository root)::

    python tools/conditions_picture.py [--out docs/conditions.png]

Two seeded random hands (``PoseSpec.random(seed=0, num_hands=2)``, the open hand) with their
forearms (``arm="forearm"``), rendered at 512 x 512 by the library and tiled at 256 px: mesh,
depth, normal, OpenPose (hand skeletons and the body limbs of the arms), hand mask, arm mask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

TILE, GAP = 256, 4


def main(argv: list[str] | None = None) -> int:
    import io

    import numpy as np
    from PIL import Image

    from sesahand.camera import Camera
    from sesahand.hands import PoseSpec, load_hand_model
    from sesahand.io import atomic_write_bytes, to_uint8
    from sesahand.pipeline import render_scenes

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "conditions.png"))
    args = parser.parse_args(argv)
    model = load_hand_model("anny")
    scenes = PoseSpec.random(0, num_hands=2).resolve(model, Camera.default(512, 512, 40.0), 1)
    cond, _ = render_scenes(model, scenes, backend="moderngl", arm="forearm")
    maps = [cond.mesh[0], cond.depth_image[0], cond.normal[0], cond.pose[0], cond.mask[0],
            cond.arm_mask[0]]
    sheet = Image.new("RGB", (len(maps) * TILE + (len(maps) - 1) * GAP, TILE), (48, 48, 48))
    for i, image in enumerate(maps):
        array = to_uint8(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        tile = Image.fromarray(array).resize((TILE, TILE), Image.LANCZOS)
        sheet.paste(tile, (i * (TILE + GAP), 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(Path(args.out), buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
