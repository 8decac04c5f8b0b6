"""Dataset export: cost of saving one sample against one generation step, measured in one run.

Usage:
    python benchmarks/bench_dataset.py [--rounds N] [--samples N] [--levels 0,1,3,6,9]

Export: ``DatasetWriter.append`` of 512x512 samples with all four condition images (mesh, depth,
normal, mask rendered with the open hand model) and the labels, at several PNG zlib levels;
each append writes five PNGs to temporary files, fsyncs them and their folders, renames them
and appends the fsync'ed labels line. The image is a stand-in for a generated picture: the
shaded hand over a smooth colour gradient with fine texture and pixel noise (sigma 6 levels),
harder to compress than most generated images.

Reference: one SD1.5-shaped UNet step (diffusers ``UNet2DConditionModel`` with SD1.5's channel
widths, 860 M parameters, random weights, float32) on a 64x64 latent (512x512 image), batch 1,
77 text tokens, on the CPU, in the same run: each round times one step, then some appends per
level, so both meet the same machine load. Wall-clock and process CPU times (the UNet's summed
over its threads) are both compared, since other processes inflate wall time. Target: saving
costs at most 5 % of one step. Medians; the table also gives the files' size per sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sesahand.data import PNG_COMPRESS_LEVEL, DatasetWriter  # noqa: E402
from sesahand.camera import Camera  # noqa: E402
from sesahand.hands import PoseSpec, load_hand_model  # noqa: E402
from sesahand.pipeline import render_scenes  # noqa: E402

SIZE = 512
TARGET = 0.05


def sample_inputs():
    """The image stand-in, condition images (float 0..1 arrays) and labels of one frame."""
    model = load_hand_model("anny")
    camera = Camera.default(SIZE, SIZE)
    scenes = PoseSpec.random(0, num_hands=2).resolve(model, camera, 1)
    cond, hands = render_scenes(model, scenes, backend="moderngl")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    background = np.stack([0.3 + 0.4 * x, 0.5 + 0.2 * np.sin(6 * y), 0.6 - 0.3 * x * y], -1)
    background += 0.05 * np.sin(40 * x + 25 * y)[..., None]  # fabric-like texture
    mesh = cond.mesh[0].numpy()
    hand = cond.mask[0].numpy()[..., None] > 0
    image = np.where(hand, mesh, background) + rng.normal(0, 6 / 255, (SIZE, SIZE, 3))
    conditions = {"mesh": mesh, "depth": cond.depth_image[0].numpy(), "normal": cond.normal[0].numpy(),
                  "mask": cond.mask[0].numpy()}
    return np.clip(image, 0, 1).astype(np.float32), conditions, hands.frame_dict(0)


class Saver:
    """One dataset writer per PNG level, in a temporary folder."""

    def __init__(self, folder: Path, level: int):
        self.root = folder / f"level{level}"
        self.writer = DatasetWriter(self.root, png_compress_level=level)
        self.wall, self.cpu = [], []

    def append(self, image, conditions, labels) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.writer.append(image, labels, conditions=conditions, prompt="a hand", seed=1,
                           sampler={"sampler_name": "euler", "steps": 20, "cfg": 7.0})
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)

    def bytes_per_sample(self) -> float:
        self.writer.close()
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) / len(self.wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of one UNet step then SAMPLES appends per level (default 3)")
    parser.add_argument("--samples", type=int, default=5, help="appends per level and round (default 5)")
    parser.add_argument("--levels", default="0,1,3,6,9", help="PNG zlib levels to time (default 0,1,3,6,9)")
    args = parser.parse_args()

    from diffusers import UNet2DConditionModel

    image, conditions, labels = sample_inputs()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    latent, text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
    step_wall, step_cpu = [], []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        savers = {int(v): Saver(Path(tmp), int(v)) for v in args.levels.split(",")}
        unet(latent, 999, encoder_hidden_states=text)  # warm-up
        for r in range(args.rounds):  # interleaved, so both see the same machine load
            wall, cpu = time.perf_counter(), time.process_time()
            unet(latent, 999 - r, encoder_hidden_states=text)
            step_wall.append(time.perf_counter() - wall)
            step_cpu.append(time.process_time() - cpu)
            for saver in savers.values():
                for _ in range(args.samples):
                    saver.append(image, conditions, labels)
        sizes = {level: saver.bytes_per_sample() for level, saver in savers.items()}
    step, step_c = statistics.median(step_wall), statistics.median(step_cpu)
    print(f"torch threads {torch.get_num_threads()}; one SD1.5 UNet step (64x64 latent, batch 1, CPU): "
          f"{step * 1000:.0f} ms wall, {step_c * 1000:.0f} ms CPU (all threads); medians of {args.rounds}")
    print(f"{'PNG level':>9} {'ms/sample':>10} {'samples/s':>10} {'CPU ms':>8} {'MB/sample':>10} "
          f"{'wall/step':>10} {'CPU/step':>9}")
    for level, saver in savers.items():
        seconds, cpu = statistics.median(saver.wall), statistics.median(saver.cpu)
        mark = " (default)" if level == PNG_COMPRESS_LEVEL else ""
        print(f"{level:>9} {seconds * 1000:>10.1f} {1 / seconds:>10.1f} {cpu * 1000:>8.1f} "
              f"{sizes[level] / 1e6:>10.2f} {seconds / step:>10.1%} {cpu / step_c:>9.1%}{mark}")
    meeting = [level for level, saver in savers.items()
               if statistics.median(saver.wall) / step <= TARGET and statistics.median(saver.cpu) / step_c <= TARGET]
    print(f"target: saving <= {TARGET:.0%} of a step (wall and CPU); met at levels {meeting or 'none'}; "
          f"default level {PNG_COMPRESS_LEVEL} {'meets' if PNG_COMPRESS_LEVEL in meeting else 'MISSES'} it")


if __name__ == "__main__":
    main()
