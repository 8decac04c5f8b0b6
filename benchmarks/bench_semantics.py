"""Behaviour-semantics speed: captions per second with batch 1 against batch 8, and the cost
of a cache hit per image.

Usage:
    python benchmarks/bench_semantics.py [--images N] [--repeats R] [--size S]

Models: the tiny random-weight LLaVA and Llama of ``tests/semantics/tiny_vlm.py``, built in a
temporary folder, on the CPU in float32 (no model hub needed). Images: N random S x S RGB
pictures (default 16 of 512x512: the processor's resize is part of the cost).

Measured in the same run, best of R repeats (the run least disturbed by other processes):
1. ``Captioner.caption(images, batch_size=1)`` and ``batch_size=8``, greedy, 16 new tokens,
   in turns (so both see the same machine load);
   printed: captions per second of each and their ratio (target: at least 2x).
2. The cache hit path: ``SemanticsPipeline.run(images)`` with a cache already holding every
   image's result (content hash + one small file read per image, no model run), per image;
   and its two parts alone, ``image_hash`` and ``SemanticsCache.get``. Target: under 5 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from timing import best_time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sesahand.semantics import (
    Captioner,
    Extractor,
    SemanticsCache,
    SemanticsPipeline,
    image_hash,
)


def tiny_models():
    spec = importlib.util.spec_from_file_location("tiny_vlm", REPO / "tests/semantics/tiny_vlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats, best taken (default 5)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the tiny LLM's fallback warnings are expected

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = tiny_models()
        captioner = Captioner.load(tiny.build_tiny_vlm(tmp / "vlm"), device="cpu",
                                   dtype="float32", max_new_tokens=16)
        extractor = Extractor.load(tiny.build_tiny_llm(tmp / "llm"), device="cpu",
                                   max_new_tokens=16, max_repairs=0)
        captioner.caption(images[:8], batch_size=8)  # warm-up

        # interleaved, so both see the same machine load
        single, batched = float("inf"), float("inf")
        for _ in range(args.repeats):
            single = min(single, best_time(lambda: captioner.caption(images, batch_size=1), 1))
            batched = min(batched, best_time(lambda: captioner.caption(images, batch_size=8), 1))
        print(f"captioner, {args.images} images of {args.size}x{args.size}, CPU, tiny LLaVA:")
        print(f"  batch 1: {args.images / single:7.1f} captions/s")
        print(f"  batch 8: {args.images / batched:7.1f} captions/s")
        ratio = single / batched
        print(f"  ratio batch 8 / batch 1: {ratio:.2f}x (target >= 2): "
              f"{'ok' if ratio >= 2 else 'MISSED'}")

        cache = SemanticsCache(tmp / "cache")
        pipeline = SemanticsPipeline(captioner, extractor, cache=cache)
        first = pipeline.run(images)  # fills the cache
        hit = best_time(lambda: pipeline.run(images), args.repeats) / args.images
        assert [r.to_dict() for r in pipeline.run(images)] == [r.to_dict() for r in first]
        hashing = best_time(lambda: [image_hash(i) for i in images], args.repeats) / args.images
        keys = [f"{captioner.model_id}:{image_hash(i)}" for i in images]
        for key in keys:
            cache.put("bench", key, first[0].to_dict())
        reading = best_time(lambda: [cache.get("bench", k) for k in keys], args.repeats) / args.images
        print("cache hit path, per image:")
        print(f"  SemanticsPipeline.run, all cached: {hit * 1e3:6.2f} ms (target < 5 ms): "
              f"{'ok' if hit < 5e-3 else 'MISSED'}")
        print(f"  image_hash alone:                  {hashing * 1e3:6.2f} ms")
        print(f"  SemanticsCache.get alone:          {reading * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
