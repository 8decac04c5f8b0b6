"""Condition renderer: speed against pyrender, and resident memory over many renders.

Usage:
    python benchmarks/bench_render.py [--rounds N] [--frames N]   speed (default)
    python benchmarks/bench_render.py --memory [--renders 2000]   memory

Speed: frames/s at 512x512 for one and two hands, per available backend, producing every map
(mesh, depth, HandRefiner depth, normal, masks, OpenPose drawing) and the labels. The
reference, measured in the same run on the same meshes, is pyrender (EGL) rendering colour
and depth with a headlight, one reused OffscreenRenderer, meshes re-uploaded every frame as
with a changing pose. Each measurement is the best of several rounds (the least disturbed by
other processes); medians are printed too. Targets: at least 3x pyrender's frames/s, and
under 10 ms per frame on 2 CPU cores. Our renderer runs twice per batch size: dropping each
result before the next call (as a loop that saves and moves on does, and as the pyrender job
does), and then, in rounds of their own, keeping every result of a round ("kept"), which
takes new memory every call (measured apart because freeing that much memory at once makes
the next allocations of the other jobs, pyrender's too, fault in fresh pages).

Memory: resident set size (VmRSS) over consecutive renders of two hands, switching between
512x512 and 384x384 every 250 renders so framebuffers are also rebuilt and released.
Target: flat within 20 MB after warm-up.

The maps of one 512x512 frame are 12 MB of float32 memory (pyrender returns 1.75 MB). Each
call here frees the previous call's maps, so the renderer recycles their arrays (it zeroes only
the pixels written before); where results are kept instead, every call takes new memory,
which costs a memset or, where malloc hands freed memory back to the system (glibc does when
much is freed at once, always for large batches), faulting pages in again; the benchmark
prints what that costs per MB on this machine (virtual machines can be slow at it), to read
the figures against.

Meshes: a hand-sized closed capsule (about 10 x 8 x 3 cm, 1538 vertices, 3072 triangles;
the open hand model has 1609 and 3196) with 21 joints inside, in a new random orientation
every frame, so the benchmark needs no hand model files.
"""

from __future__ import annotations

import argparse
import math
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # pyrender picks its platform at import

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from sesahand.camera import Camera  # noqa: E402
from sesahand.hands.types import HandMesh  # noqa: E402
from sesahand.render import Renderer  # noqa: E402
from sesahand.render.renderer import resolve_backend  # noqa: E402

SIZE = 512
POSES = 16


def hand_like_mesh(rotation: torch.Tensor, center, side: str) -> HandMesh:
    capsule = trimesh.creation.capsule(height=1.0, radius=0.5, count=[32, 48])
    v = torch.tensor(capsule.vertices, dtype=torch.float32)
    v = v / v.abs().amax(dim=0)  # unit box
    half = torch.tensor([0.04, 0.015, 0.05])  # half extents: width, thickness, length (m)
    joints = torch.zeros(21, 3)
    joints[:, 2] = torch.linspace(-0.7, 0.7, 21) * half[2]
    joints[:, 0] = torch.tensor([(i % 5 - 2) * 0.3 for i in range(21)]) * half[0]
    center = torch.tensor(center, dtype=torch.float32)
    return HandMesh(vertices=(v * half) @ rotation.T + center,
                    faces=torch.tensor(capsule.faces, dtype=torch.int64),
                    joints=(joints @ rotation.T) + center, side=side, model="benchmark")


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q = torch.nn.functional.normalize(torch.randn(4, generator=gen), dim=0)
    w, x, y, z = q.tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def scenes(num_hands: int) -> list[list[HandMesh]]:
    gen = torch.Generator().manual_seed(num_hands)
    centers = [(-0.055, 0.0, 0.45), (0.055, 0.01, 0.5)]
    return [[hand_like_mesh(random_rotation(gen), centers[i], ("right", "left")[i])
             for i in range(num_hands)] for _ in range(POSES)]


def measure(jobs: dict, frames: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Seconds per frame of each job, best and median over rounds of ``frames`` frames; the
    jobs take turns within each round so that they see the same machine load."""
    for job in jobs.values():
        job(POSES)  # warm-up
    times = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job(frames)
            times[name].append((time.perf_counter() - start) / frames)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def first_touch_ms_per_mb() -> float:
    """Milliseconds per MB to fault in new anonymous memory from the OS (best of 3 x 64 MB):
    the price of each output byte that malloc does not recycle."""
    size = 64 << 20
    best = float("inf")
    for _ in range(3):
        with mmap.mmap(-1, size) as m:
            pages = np.frombuffer(m, dtype=np.uint8)
            start = time.perf_counter()
            pages[::mmap.PAGESIZE] = 1
            best = min(best, time.perf_counter() - start)
            del pages
    return best * 1e3 / 64


def ours(renderer: Renderer, frames_of_hands, camera, batch: int, sync, keep: bool):
    """Render ``frames`` frames in batches; with ``keep``, hold every result until the end
    of the round, so that no output memory can be recycled."""
    def job(frames: int):
        kept = []
        for start in range(0, frames, batch):
            chosen = [frames_of_hands[(start + k) % POSES] for k in range(batch)]
            cond = renderer.render(chosen, [camera] * batch)
            sync()
            if keep:
                kept.append(cond)
    return job


class PyrenderReference:
    """pyrender with one OffscreenRenderer for the whole run: deleting it terminates the EGL
    display, which the moderngl context in this process shares."""

    def __init__(self, camera: Camera):
        import pyrender

        self.pyrender = pyrender
        K = camera.K
        self.scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.2, 0.2, 0.2])
        cam = pyrender.IntrinsicsCamera(fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]),
                                        cy=float(K[1, 2]), znear=0.01, zfar=100.0)
        opencv_to_gl = np.diag([1.0, -1.0, -1.0, 1.0])  # pyrender cameras look down -z, y up
        self.scene.add(cam, pose=opencv_to_gl)
        self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0),
                       pose=opencv_to_gl)
        self.renderer = pyrender.OffscreenRenderer(camera.width, camera.height)
        self.material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[0.4, 0.6, 1.0, 1.0])

    def job(self, frames_of_hands):
        pyrender = self.pyrender

        def job(frames: int):
            for f in range(frames):
                nodes = []
                for hand in frames_of_hands[f % POSES]:
                    tm = trimesh.Trimesh(hand.vertices.numpy(), hand.faces.numpy(), process=False)
                    mesh = pyrender.Mesh.from_trimesh(tm, material=self.material, smooth=True)
                    nodes.append(self.scene.add(mesh))
                self.renderer.render(self.scene)  # colour (H, W, 3) uint8, depth (H, W) float32
                for node in nodes:
                    self.scene.remove_node(node)
        return job


def speed(args) -> None:
    camera = Camera.default(SIZE, SIZE)
    backends = ["moderngl"] + (["nvdiffrast"] if resolve_backend("auto") == "nvdiffrast" else [])
    print(f"{SIZE}x{SIZE}, torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}; "
          f"best (median) of {args.rounds} rounds of {args.frames} frames")
    out_mb = SIZE * SIZE * 4 * 12 / 2**20
    print(f"new memory costs {first_touch_ms_per_mb():.2f} ms/MB to fault in here; the float32 "
          f"maps of one frame are {out_mb:.1f} MB")
    renderers = {name: Renderer(name) for name in backends}
    reference = PyrenderReference(camera)
    for num_hands in (1, 2):
        frames_of_hands = scenes(num_hands)
        jobs = {"pyrender": reference.job(frames_of_hands)}
        kept_jobs = {}
        for name, renderer in renderers.items():
            sync = torch.cuda.synchronize if name == "nvdiffrast" else (lambda: None)
            for batch in (1, 8):
                jobs[f"{name} batch {batch}"] = ours(renderer, frames_of_hands, camera, batch,
                                                     sync, keep=False)
                kept_jobs[f"{name} batch {batch}, kept"] = ours(
                    renderer, frames_of_hands, camera, batch, sync, keep=True)
        results = measure(jobs, args.frames, args.rounds)
        results.update(measure(kept_jobs, args.frames, args.rounds))
        ref_best, ref_med = results.pop("pyrender")
        print(f"\n{num_hands} hand(s): pyrender colour+depth (reference): "
              f"{1 / ref_best:7.1f} frames/s  {ref_best * 1e3:6.2f} ms/frame "
              f"(median {ref_med * 1e3:.2f})")
        for name, (best, med) in results.items():
            ratio = ref_best / best
            print(f"  {name:26s} {1 / best:7.1f} frames/s  {best * 1e3:6.2f} ms/frame "
                  f"(median {med * 1e3:.2f})  {ratio:5.2f}x pyrender "
                  f"[{'OK' if ratio >= 3 else 'MISSED'} >= 3x]  "
                  f"[{'OK' if best < 0.010 else 'MISSED'} < 10 ms]")
    for renderer in renderers.values():
        renderer.close()
    reference.renderer.delete()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def memory(args) -> None:
    frames_of_hands = scenes(2)
    cameras = [Camera.default(SIZE, SIZE), Camera.default(384, 384)]
    warmup = 100
    samples = []
    with Renderer("moderngl") as renderer:
        for i in range(warmup + args.renders):
            camera = cameras[(i // 250) % 2]
            renderer.render([frames_of_hands[i % POSES]], [camera])
            if i >= warmup and (i - warmup) % 100 == 0:
                samples.append(rss_mb())
        samples.append(rss_mb())
    growth = samples[-1] - samples[0]
    spread = max(samples) - min(samples)
    print(f"RSS over {args.renders} renders after {warmup} warm-up renders (MB): "
          + " ".join(f"{s:.0f}" for s in samples))
    print(f"start {samples[0]:.1f} MB, end {samples[-1]:.1f} MB, growth {growth:+.1f} MB, "
          f"spread {spread:.1f} MB  [{'OK' if math.fabs(growth) < 20 and spread < 20 else 'MISSED'}"
          f" flat within 20 MB]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--memory", action="store_true", help="measure RSS instead of speed")
    parser.add_argument("--renders", type=int, default=2000)
    args = parser.parse_args()
    if args.memory:
        memory(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
