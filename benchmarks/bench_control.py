"""Structural fusion (SF): ControlNet step time and peak memory against the plain ControlNet;
then the hand-attention (AE) / plain UNet step ratio, so one run prints every figure.

Usage:
    python benchmarks/bench_control.py [--rounds N] [--rounds-512 N] [--no-ae]

The AE part runs ``benchmarks/bench_attention.py`` in a subprocess (its own ComfyUI
attention settings) and prints its output; see that file for its method.

Needs ComfyUI core (``$COMFYUI_PATH``, default ``~/ComfyUI``); runs on the CPU.

Model: a ControlNet of SD1.5's full shape (model_channels 320, channel mult 1-2-4-4, two res
blocks per level, transformers on the first three levels and the middle, 8 heads, context 768,
361 M parameters) with seeded random weights, float32, built by ComfyUI's cldm code. One step
is one ControlNet forward on a batch of 2 as CFG sampling calls it: the same latent, hint and
timestep in both rows with a positive and a negative prompt (SF attends the rows that are
still equal, the first 64 x 64 self-attention's, once: ``SelfAttentionMaps.attention``).

Each comparison is run twice, with core's attention set to ComfyUI's CPU default
(sub-quadratic) and to PyTorch SDPA (``--use-pytorch-cross-attention``): the plain forward
uses it everywhere, the SF forward for its cross-attention (SF computes its self-attention
and maps itself).

Speed, at 64 x 64 (512 x 512 pixels: token grids 64, 32, 16, 8, the grid that costs SF most)
with PyTorch SDPA and at 32 x 32 (256 x 256 pixels) with both attentions: the per-step time of
the SF forward (``fusion="tokens"`` and ``"gate"``, w = 1, balanced hierarchy, the CPU chunk
size of ``default_chunk_elements``) over core's plain forward, measured alternately in this
process: variants run back to back in each round, the ratio is taken within each round and
its median over rounds is printed (robust to other load on the machine changing between
rounds), with the ratio of the minima; medians and minima of the times are printed too.
Target: ratio <= 1.10 at 512 px with SDPA.

Memory, 64 x 64 latent (512 x 512 pixels, token grids 64, 32, 16, 8): one forward per fresh
subprocess; the peak resident memory of the forward alone (Linux: the peak is reset just
before it by writing 5 to /proc/self/clear_refs and read from VmHWM, so the start-up's own
peak, model building included, does not mask it), in total and above the resident memory just
before the forward (weights and inputs loaded). Target: SF / plain <= 1.2 (total).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI")).expanduser().resolve()

SD15_CONTROLNET = {
    "image_size": 32, "in_channels": 4, "model_channels": 320, "hint_channels": 3,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True,
    "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None,
}
ATTENTIONS = ("sub-quad", "sdpa")
FUSIONS = ("plain", "tokens", "gate")
VARIANTS = tuple(f"{fusion}/{attention}" for attention in ATTENTIONS for fusion in FUSIONS)


def import_comfy():
    """ComfyUI on the CPU, and the pack's ``nodes.control_model`` (imported as a package)."""
    if not (COMFYUI / "main.py").is_file():
        sys.exit(f"no ComfyUI at {COMFYUI}: set COMFYUI_PATH")
    sys.path.insert(0, str(COMFYUI))
    from comfy.cli_args import args

    args.cpu = True
    spec = importlib.util.spec_from_file_location("sesahand_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["sesahand_pack"] = pack
    spec.loader.exec_module(pack)
    return importlib.import_module("sesahand_pack.nodes.control_model")


def build_controlnet():
    """The SD1.5-shaped cldm ControlNet, random weights filled in place (no copy at any time)."""
    import comfy.cldm.cldm
    import comfy.ops

    model = comfy.cldm.cldm.ControlNet(**SD15_CONTROLNET, operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=g)
    return model.eval()


def inputs(size: int):
    """A CFG batch as ComfyUI's sampler hands it to a ControlNet: one latent, its hint and its
    timestep for both rows (``calc_cond_batch`` repeats them), a positive and a negative context."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, size, size, generator=g).expand(2, -1, -1, -1).contiguous()
    hint = torch.rand(1, 3, 8 * size, 8 * size, generator=g).expand(2, -1, -1, -1).contiguous()
    return x, hint, torch.tensor([700.0, 700.0]), torch.randn(2, 77, 768, generator=g)


def forward(cm, model, variant, x, hint, t, context):
    """One ControlNet step of ``variant`` ("fusion/attention"), core's attention set first."""
    import comfy.ldm.modules.attention as attention

    fusion, backend = variant.split("/")
    attention.optimized_attention = (attention.attention_pytorch if backend == "sdpa"
                                     else attention.attention_sub_quad)
    if fusion == "plain":
        return model(x=x, hint=hint, timesteps=t, context=context)
    return cm.sf_forward(model, x, hint, t, context, cm.FusionSettings(fusion, 1.0, "balanced"))


def peak_rss() -> int:
    """Peak resident memory of this process since the last :func:`reset_peak` (bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(variant: str, size: int) -> None:
    import gc

    import psutil

    cm = import_comfy()
    model = build_controlnet()
    data = inputs(size)
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    reset_peak()
    with torch.no_grad():
        out = forward(cm, model, variant, *data)
    peak = peak_rss()
    assert len(out["output"]) == 12 and len(out["middle"]) == 1
    print(json.dumps({"peak": peak, "before": rss_before}))


def measure_memory(size: int) -> dict[str, dict]:
    results = {}
    for variant in VARIANTS:
        run = subprocess.run([sys.executable, __file__, "--memory-child", variant, "--size", str(size)],
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    return results


def measure_speed(cm, rounds: int, size: int, variants) -> dict[str, list[float]]:
    model = build_controlnet()
    data = inputs(size)
    times = {v: [] for v in variants}
    with torch.no_grad():
        for variant in variants:  # warm-up
            forward(cm, model, variant, *data)
        for r in range(rounds):
            for variant in variants[::1 if r % 2 else -1]:  # alternate the order: cancels drift
                start = time.perf_counter()
                forward(cm, model, variant, *data)
                times[variant].append(time.perf_counter() - start)
    return times


def report_speed(times: dict[str, list[float]], size: int, rounds: int) -> dict[str, float]:
    """Print the step times and the SF / plain ratios of one size; returns the median ratios."""
    print(f"\nstep time, {size}x{size} latent ({8 * size} px), {rounds} rounds, median (min):")
    for v, t in times.items():
        print(f"  {v:15s} {statistics.median(t):7.3f} s ({min(t):.3f})")
    ratios = {}
    for attention in ATTENTIONS:
        base = f"plain/{attention}"
        if base not in times:
            continue
        for sf in (f"tokens/{attention}", f"gate/{attention}"):
            per_round = [a / b for a, b in zip(times[sf], times[base])]
            ratios[sf] = statistics.median(per_round)
            print(f"  ratio {sf} / {base} at {8 * size} px: {ratios[sf]:.3f} (per-round median; range "
                  f"{min(per_round):.3f}-{max(per_round):.3f}; of minima {min(times[sf]) / min(times[base]):.3f})"
                  "  target <= 1.10")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds at 256 px")
    parser.add_argument("--rounds-512", type=int, default=3, help="rounds at 512 px")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--no-ae", action="store_true", help="skip the AE / plain UNet part")
    opts = parser.parse_args()
    if opts.memory_child:
        memory_child(opts.memory_child, opts.size)
        return

    cm = import_comfy()
    native = importlib.import_module("sesahand_pack.sesahand.control.native")
    path = "native kernel (sf_attend.cpp)" if native.kernel() else "PyTorch fused (no native kernel)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SD1.5-shaped ControlNet, "
          f"batch 2, float32, CPU; SF chunk {cm.default_chunk_elements('cpu', fused=True)} logits; "
          f"SF's CPU path: {path}")
    sdpa = tuple(f"{fusion}/sdpa" for fusion in FUSIONS)
    ratios_512 = report_speed(measure_speed(cm, opts.rounds_512, 64, sdpa), 64, opts.rounds_512)
    ratios_256 = report_speed(measure_speed(cm, opts.rounds, 32, VARIANTS), 32, opts.rounds)

    mem = measure_memory(64)
    mib = 1 << 20
    print("\npeak memory, 64x64 latent, one forward per process (MiB): total / above weights+inputs")
    for v in VARIANTS:
        m = mem[v]
        print(f"  {v:15s} {m['peak'] / mib:8.0f} / {(m['peak'] - m['before']) / mib:6.0f}")
    memory_ratios = {}
    for attention in ATTENTIONS:
        b = mem[f"plain/{attention}"]
        for sf in (f"tokens/{attention}", f"gate/{attention}"):
            s_ = mem[sf]
            memory_ratios[sf] = s_["peak"] / b["peak"]
            print(f"  ratio {sf} / plain/{attention}: total {memory_ratios[sf]:.3f}, above "
                  f"weights {(s_['peak'] - s_['before']) / (b['peak'] - b['before']):.3f}  target <= 1.2")

    print("\nsummary (SF / plain, PyTorch SDPA, CPU):")
    for fusion in ("tokens", "gate"):
        v = f"{fusion}/sdpa"
        print(f"  {fusion:6s} step at 512 px {ratios_512[v]:.3f}, at 256 px {ratios_256[v]:.3f} (target <= 1.10); "
              f"peak memory at 512 px {memory_ratios[v]:.3f} (target <= 1.2)")

    if not opts.no_ae:
        print("\nhand attention (AE) / plain UNet, 32x32 latent (benchmarks/bench_attention.py):", flush=True)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_attention.py")], check=True)


if __name__ == "__main__":
    main()
