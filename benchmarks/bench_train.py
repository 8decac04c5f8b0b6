"""Training step with SesaHand's SF + AE against a plain ControlNet training step (CPU), and a
memory scaling law with an estimate for 512 x 512 fp16 training on a 24 GB GPU.

Usage:
    python benchmarks/bench_train.py [--rounds N] [--size S] [--mem-sizes S1 S2 S3] [--table PATH]
    python benchmarks/bench_train.py --only-512      # just the 512 x 512 memory ratio

Model: SD1.5's UNet and ControlNet shapes (diffusers defaults with cross-attention 768:
320/640/1280/1280 channels, 2 res blocks per level, transformers on the first three levels and
the middle, 8 heads; UNet 860 M, ControlNet 361 M parameters), seeded random weights, float32.
The VAE and text encoder are reduced stand-ins (a 4-level 32-channel AutoencoderKL, a one-layer
768-wide CLIP text model): they run without gradient and cost the same in every variant, so
leaving them small makes the ratios stricter, not looser. One step = ``training_loss`` (VAE
encode, noise, ControlNet, frozen UNet with the residuals, MSE), backward, AdamW step; batch 1.

Variants: ``plain`` (w = 0, no hand bias: diffusers' own ControlNet and UNet forwards),
``sf+ae`` (fusion "tokens", w = 1, alpha = 2 on the decoder cross-attention, two hand tokens),
``sf(gate)+ae``.

Speed: variants run back to back in each round at an S x S latent (default 32: 256 x 256
pixels), in alternating order; the ratio to ``plain`` is taken within each round and its median
over rounds printed (robust to other load changing between rounds), with the ratio of the
minima. Target: sf+ae / plain <= 1.10. On a shared machine other load still moves single
rounds by 10-20 %: read both ratios.

Memory at 512 x 512 (64 x 64 latent, token grids 64/32/16/8 as SD1.5's), measured: a
reduced-width UNet and ControlNet (channels 32/64/128/128, 8 heads; SD1.5's layout and grids),
one forward + backward per fresh subprocess (glibc's mmap threshold fixed at 1 MiB so resident
memory follows live tensors, see ``memory_child``), peak resident memory above the start for
``sf+ae`` and ``sf(gate)+ae`` over ``plain``. Target: <= 1.3. The reduced width makes the ratio
stricter: activations shrink with the width, attention maps (heads x N^2) do not. SF keeps no
attention map for backward (each query chunk is recomputed, ``sesahand.control.fusion``), so
its extra memory is q, k, v copies and small per-chunk aggregates, plus one chunk's maps at a
time during backward.

Memory scaling: one forward + backward per fresh subprocess (no optimizer, glibc's mmap
threshold fixed at 1 MiB, see ``memory_child``); a thread samples the
process's resident memory (/proc/self/statm) every millisecond; printed is the peak resident
memory above the resident memory just before the step (weights and inputs loaded), i.e.
activations + the ControlNet's float32 gradients, and activations alone (that minus the
gradient size). This is resident memory of the CPU allocator (glibc), not tracemalloc (which
does not see torch's allocations). Measured with and without gradient checkpointing
(``enable_gradient_checkpointing`` on ControlNet and UNet) at three latent sizes, fitted per
variant as act(N) = a + b N + c N^2 (N latent tokens), and extrapolated to N = 4096 (512 x 512)
for the 24 GB GPU table: an ESTIMATE (see ``estimate`` for its assumptions).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sesahand.control import FusionSettings
from sesahand.train import model as tm

VARIANTS = {"plain": (FusionSettings("tokens", 0.0), 0.0), "sf+ae": (FusionSettings("tokens", 1.0), 2.0),
            "sf(gate)+ae": (FusionSettings("gate", 1.0), 2.0)}
MIB = 1 << 20
GIB = 1 << 30
#: Assumed CUDA context + allocator reserve on the GPU (not measured here).
CUDA_OVERHEAD_GIB = 0.8


#: The reduced-width UNet / ControlNet of the 512 x 512 memory measurement (SD1.5's layout).
REDUCED = {"block_out_channels": (32, 64, 128, 128), "attention_head_dim": 8, "norm_num_groups": 32}


def build(seed: int = 0, reduced: bool = False):
    """(SD15 with SD1.5-shaped UNet and stand-in VAE / text encoder, FusedControlNet, HandAttention);
    ``reduced``: the UNet (and so the ControlNet) at :data:`REDUCED` widths."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(cross_attention_dim=768, **(REDUCED if reduced else {}))
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                        num_attention_heads=12, max_position_embeddings=77))
    sd = tm.SD15(unet, vae, text, CLIPTokenizer.from_pretrained(tm.SD15_DATA / "tokenizer"),
                 DDPMScheduler.from_pretrained(tm.SD15_DATA, subfolder="scheduler"))
    for module in (unet, vae, text):
        module.eval().requires_grad_(False)
    fused = tm.FusedControlNet(tm.build_controlnet(unet), VARIANTS["plain"][0])
    hand = tm.install_hand_attention(unet, 2.0)
    return sd, fused, hand


def batch(sd, size: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    pixels = 8 * size
    ids = sd.tokenizer(["a person waving a hand"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[0, [3, 5]] = True  # "waving", "hand"
    return {"pixel_values": torch.rand(1, 3, pixels, pixels, generator=g) * 2 - 1,
            "conditioning": torch.rand(1, 3, pixels, pixels, generator=g), "input_ids": ids, "hand_token_mask": mask}


def select(fused, hand, variant: str):
    """Set the variant; returns the hand_attention argument for training_loss."""
    fusion, alpha = VARIANTS[variant]
    fused.fusion, hand.alpha = fusion, alpha
    if alpha == 0:
        hand.set_token_mask(None)
        return None
    return hand


def measure_speed(rounds: int, size: int) -> dict[str, list[float]]:
    sd, fused, hand = build()
    data = batch(sd, size)
    optimizer = torch.optim.AdamW(fused.parameters(), lr=1e-5)
    times = {v: [] for v in VARIANTS}
    for r in range(rounds + 1):  # round 0 warms up (allocations, optimizer state)
        for variant in list(VARIANTS)[::1 if r % 2 else -1]:  # alternate the order: cancels drift
            handle = select(fused, hand, variant)
            start = time.perf_counter()
            loss = tm.training_loss(sd, fused, data, handle, torch.Generator().manual_seed(r))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r:
                times[variant].append(time.perf_counter() - start)
    return times


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: glibc ``mallopt`` parameter of the mmap threshold.
M_MMAP_THRESHOLD = -3


def memory_child(variant: str, size: int, checkpointing: bool, reduced: bool = False) -> None:
    # A fixed 1 MiB mmap threshold: glibc's dynamic threshold otherwise keeps freed chunk-sized
    # blocks (SF's per-chunk maps, recomputed in backward) in the heap, where interleaved small
    # live tensors pin them, so resident memory grows with allocations already freed. With it,
    # resident memory follows the live tensors (as a GPU's caching allocator would); the same
    # for every variant.
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    sd, fused, hand = build(reduced=reduced)
    if checkpointing:
        fused.controlnet.enable_gradient_checkpointing()
        sd.unet.enable_gradient_checkpointing()
    data = batch(sd, size)
    handle = select(fused, hand, variant)
    grads = sum(p.numel() * 4 for p in fused.parameters())
    libc.malloc_trim(0)
    before = _resident()
    peak, running = [before], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _resident())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    loss = tm.training_loss(sd, fused, data, handle, torch.Generator().manual_seed(0))
    loss.backward()
    running[0] = False
    thread.join()
    above = max(peak[0], _resident()) - before
    print(json.dumps({"above": above, "grads": grads, "activations": above - grads}))


def measure_memory(variant: str, size: int, checkpointing: bool, reduced: bool = False) -> dict:
    command = [sys.executable, __file__, "--memory-child", variant, "--size", str(size)]
    if checkpointing:
        command.append("--checkpointing")
    if reduced:
        command.append("--reduced")
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def component_sizes() -> dict[str, int]:
    """Parameter counts of the real SD1.5 components (built on the meta device)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(tm.SD15_DATA / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(tm.SD15_DATA / "text_encoder"))
        controlnet = ControlNetModel(cross_attention_dim=768)
    return {name: sum(p.numel() for p in m.parameters())
            for name, m in (("unet", unet), ("vae", vae), ("text", text), ("controlnet", controlnet))}


def estimate(fits: dict, sizes: dict[str, int], tokens: int = 4096) -> list[dict]:
    """24 GB GPU memory ESTIMATE at 512 x 512 (N = 4096 latent tokens), fp16 mixed precision.

    Assumptions: frozen UNet, VAE and text encoder in fp16 (2 B / parameter); ControlNet
    float32 weights and gradients (4 + 4 B) and AdamW state (8 B; 8-bit Adam 2 B); activations
    per sample = the CPU float32 fit's linear part a + b N halved (fp16 under autocast) plus SF's
    quadratic part c N^2 kept (its attention maps are float32 on any device), times the batch;
    plus CUDA context and allocator reserve of about 0.8 GiB. Not measured on a GPU.
    """
    frozen = 2 * (sizes["unet"] + sizes["vae"] + sizes["text"])
    trained = 16 * sizes["controlnet"]
    rows = []
    for (variant, checkpointing), (a, b, c) in fits.items():
        per_sample = 0.5 * max(a + b * tokens, 0.0) + max(c, 0.0) * tokens ** 2
        for batch_size in (1, 2, 3, 4):
            total = frozen + trained + batch_size * per_sample + CUDA_OVERHEAD_GIB * GIB
            rows.append({"variant": variant, "checkpointing": checkpointing, "batch": batch_size,
                         "gib": total / GIB, "gib_8bit_adam": (total - 6 * sizes["controlnet"]) / GIB})
    return rows


def write_table(path: Path, rows: list[dict], measured: dict, sizes: dict[str, int], speed: str) -> None:
    latents = ", ".join(f"{s}x{s}" for s in sorted({k[2] for k in measured}))
    lines = [
        "### Training memory at 512 x 512 (ESTIMATE)",
        "",
        "Estimated GPU memory of one SesaHand training step, SD1.5 at 512 x 512, fp16 mixed precision",
        "(frozen UNet / VAE / text encoder in fp16, ControlNet float32 with AdamW). From a scaling law",
        f"measured on the CPU by `benchmarks/bench_train.py`: activation memory at latents {latents},",
        "fitted as a + bN (N latent tokens) plus cN^2 for SF's float32 attention maps, extrapolated to",
        "the 64x64 latent, the linear part halved for fp16, plus the weights, gradients, optimizer state",
        f"and {CUDA_OVERHEAD_GIB} GiB CUDA context. Not measured on a GPU: an estimate, not a guarantee",
        "(PyTorch's caching allocator and cuDNN workspaces add more).",
        "",
        "| variant | gradient checkpointing | batch 1 | batch 2 | batch 3 | batch 4 | fits 24 GB (AdamW / 8-bit Adam) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = {}
    for row in rows:
        groups.setdefault((row["variant"], row["checkpointing"]), []).append(row)
    for (variant, checkpointing), group in groups.items():
        cells = [f"{r['gib']:.1f} GiB" for r in group]
        fit = [max((r["batch"] for r in group if r[key] <= 24 * 1e9 / GIB), default=0)
               for key in ("gib", "gib_8bit_adam")]
        lines.append(f"| {variant} | {'on' if checkpointing else 'off'} | {' | '.join(cells)} | "
                     f"batch <= {fit[0]} / <= {fit[1]} |")
    frozen = 2 * (sizes["unet"] + sizes["vae"] + sizes["text"]) / GIB
    measured_sizes = sorted({k[2] for k in measured})
    lines += ["", (f"Fixed part: frozen fp16 weights {frozen:.1f} GiB, ControlNet weights + gradients + AdamW "
                   f"{16 * sizes['controlnet'] / GIB:.1f} GiB (8-bit Adam: {10 * sizes['controlnet'] / GIB:.1f} GiB)."),
              "", "Measured CPU activation memory, batch 1, float32 (MiB):", "",
              "| variant | checkpointing | " + " | ".join(f"{s}x{s}" for s in measured_sizes) + " |",
              "|---|---|" + "---|" * len(measured_sizes)]
    for variant, checkpointing in groups:
        values = [measured[(variant, checkpointing, s)]["activations"] / MIB for s in measured_sizes]
        lines.append(f"| {variant} | {'on' if checkpointing else 'off'} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    lines += ["", speed, ""]
    path.write_text("\n".join(lines))


def measure_512() -> dict[str, float]:
    """Peak memory of a training step at 512 x 512 (64 x 64 latent), reduced widths, SF+AE / plain."""
    print("\npeak resident memory above weights+inputs, 512x512 (64x64 latent), reduced widths "
          f"{REDUCED['block_out_channels']}, one forward+backward per process (MiB):")
    measured = {v: measure_memory(v, 64, False, reduced=True) for v in VARIANTS}
    for variant, m in measured.items():
        print(f"  {variant:12s} {m['above'] / MIB:7.0f}")
    ratios = {v: measured[v]["above"] / measured["plain"]["above"] for v in VARIANTS if v != "plain"}
    for variant, ratio in ratios.items():
        print(f"  memory ratio {variant} / plain at 512 px: {ratio:.3f}  target <= 1.3: "
              f"{'met' if ratio <= 1.3 else 'NOT met'}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="latent side for the speed comparison")
    parser.add_argument("--mem-sizes", type=int, nargs=3, default=[16, 24, 32])
    parser.add_argument("--table", type=Path, help="write the memory table (Markdown) here")
    parser.add_argument("--memory-child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reduced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only-512", action="store_true", help="only the 512 x 512 memory ratio")
    opts = parser.parse_args()
    if opts.memory_child:
        memory_child(opts.memory_child, opts.size, opts.checkpointing, opts.reduced)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, batch 1")
    memory_512 = measure_512()
    if opts.only_512:
        return
    times = measure_speed(opts.rounds, opts.size)
    print(f"\nstep time, {opts.size}x{opts.size} latent ({8 * opts.size}x{8 * opts.size} px), {opts.rounds} rounds:")
    ratios = {}
    for variant, values in times.items():
        ratio = statistics.median(t / p for t, p in zip(values, times["plain"]))
        ratios[variant] = ratio
        print(f"  {variant:12s} median {statistics.median(values):7.2f} s  min {min(values):7.2f} s  "
              f"ratio to plain: median of rounds {ratio:.3f}, of minima {min(values) / min(times['plain']):.3f}")
    print(f"  target sf+ae / plain <= 1.10: {'met' if ratios['sf+ae'] <= 1.10 else 'NOT met'}")

    measured = {}
    print("\npeak resident memory above weights+inputs, one forward+backward per process (MiB):")
    print("  variant       ckpt  size  above  activations")
    for checkpointing in (False, True):
        for variant in ("plain", "sf+ae"):
            for size in opts.mem_sizes:
                m = measure_memory(variant, size, checkpointing)
                measured[(variant, checkpointing, size)] = m
                print(f"  {variant:12s}  {'on ' if checkpointing else 'off'}  {size:4d}  {m['above'] / MIB:6.0f}  "
                      f"{m['activations'] / MIB:6.0f}")
    for checkpointing in (False, True):
        for size in opts.mem_sizes:
            plain, sf = (measured[(v, checkpointing, size)]["above"] for v in ("plain", "sf+ae"))
            print(f"  memory ratio sf+ae / plain, ckpt {'on ' if checkpointing else 'off'}, {size}x{size}: "
                  f"{sf / plain:.3f}")

    fits = {}
    n = np.array([s * s for s in opts.mem_sizes], dtype=float)
    for checkpointing in (False, True):
        plain, sf = (np.array([measured[(v, checkpointing, s)]["activations"] for s in opts.mem_sizes], dtype=float)
                     for v in ("plain", "sf+ae"))
        # plain: linear in N (least squares; a GPU's flash attention keeps no N^2 maps, and a line
        # through the CPU's slightly convex points leans high); SF adds its float32 attention
        # maps kept for backward, c N^2 (least squares on the differences)
        b, a = np.polyfit(n, plain, 1)
        c = float(np.dot(sf - plain, n ** 2) / np.dot(n ** 2, n ** 2))
        fits[("plain", checkpointing)] = (a, b, 0.0)
        fits[("sf+ae", checkpointing)] = (a, b, c)
        print(f"  fit ckpt {'on ' if checkpointing else 'off'}: plain act(N) = {a / MIB:.0f} MiB + {b / 1024:.1f} KiB N; "
              f"sf+ae adds {c:.1f} B N^2")
    sizes = component_sizes()
    rows = estimate(fits, sizes)
    print("\nESTIMATE, 512x512 fp16 mixed precision on a 24 GB GPU (GiB; see estimate()):")
    for row in rows:
        print(f"  {row['variant']:6s} ckpt {'on ' if row['checkpointing'] else 'off'} batch {row['batch']}: "
              f"{row['gib']:5.1f} (8-bit Adam {row['gib_8bit_adam']:5.1f})")
    speed = (f"Step time on the CPU ({opts.size}x{opts.size} latent, batch 1, same run): SF+AE / plain = "
             f"{ratios['sf+ae']:.3f} (tokens), {ratios['sf(gate)+ae']:.3f} (gate); target <= 1.10.\n"
             f"Peak memory of a training step (forward + backward) at 512 x 512, measured (reduced widths, "
             f"SD1.5's grids): SF+AE / plain = {memory_512['sf+ae']:.3f} (tokens), "
             f"{memory_512['sf(gate)+ae']:.3f} (gate); target <= 1.3.")
    if opts.table:
        write_table(opts.table, rows, measured, sizes, speed)
        print(f"\ntable written to {opts.table}")


if __name__ == "__main__":
    main()
