"""Hand attention (AE) cost: time of one sampling step's UNet evaluation, with the bias
against the plain UNet.

Usage:
    python benchmarks/bench_attention.py [--repeats N] [--pytorch-attention]

Needs ComfyUI core at $COMFYUI_PATH (default ~/ComfyUI) and its requirements. Runs on the CPU.

Model: a UNet with the SD1.5 configuration (model_channels 320, channel_mult 1-2-4-4, 16
cross-attention layers, 860 M parameters) and random weights. A step is what core's sampler
runs per step with CFG: one forward of the positive and the negative prompt as a batch of 2
(``cond_or_uncond`` [1, 0], as core orders them) on one 32x32 latent (a 256x256 image),
through ``BaseModel.apply_model`` with the model's transformer options, as
``comfy.samplers.calc_cond_batch`` calls it. The prompt has 77 tokens, 4 of them hand tokens.

Measured in the same run: plain (the unpatched model), AE on the decoder's 9 cross-attention
layers (the default) and AE on all 16, one step of each in turn, ``--repeats`` times. Printed:
the median and the best step time of each variant, and the ratios to plain of the medians and
of the bests. The target (at most 1.05 for the default) is checked on the bests: the best is
the step least disturbed by other processes, where the median follows the machine's load.

``--pytorch-attention`` makes core use PyTorch SDPA for every attention (as ComfyUI's
``--use-pytorch-cross-attention`` does); on the CPU core's default is sub-quadratic attention.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI")).expanduser().resolve()

PROMPT = "a person sitting at a table, holding a cup with one hand, smiling"
SD15_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False, "image_size": 32,
    "use_checkpoint": False,
}


def load_comfyui(pytorch_attention: bool):
    """ComfyUI's modules, imported in-process on the CPU; the pack's attention nodes module."""
    if not (COMFYUI_PATH / "main.py").is_file():
        sys.exit(f"no ComfyUI at {COMFYUI_PATH}: set COMFYUI_PATH")
    sys.path.insert(0, str(COMFYUI_PATH))
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = pytorch_attention  # read when comfy's attention loads

    # The pack as a package (its modules use relative imports), without running its
    # __init__ files (which would register every node).
    for name, path in (("sesahand_pack", REPO), ("sesahand_pack.nodes", REPO / "nodes")):
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(path)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return importlib.import_module("sesahand_pack.nodes.attention")


def build_model():
    """A ModelPatcher around an SD1.5-configured UNet with random weights (std 0.02)."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    model = comfy.supported_models.SD15(dict(SD15_UNET)).get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def sd1_clip():
    """A core CLIP object with ComfyUI's SD1 tokenizer only (the nodes only tokenize)."""
    import comfy.sd
    import comfy.sd1_clip

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = comfy.sd1_clip.SD1Tokenizer()
    clip.tokenizer_options = {}
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="steps timed per variant")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="core attention through PyTorch SDPA (default: sub-quadratic)")
    opts = parser.parse_args()

    ae = load_comfyui(opts.pytorch_attention)
    import comfy.ldm.modules.attention as comfy_attention
    import torch

    torch.manual_seed(0)
    base = build_model()
    tokens = ae.hand_tokens(sd1_clip(), PROMPT, "")
    variants = {
        "plain": base,
        "AE decoder": ae.patch_model(base, tokens, 2.0, "decoder", 0.0, 1.0, None),
        "AE all": ae.patch_model(base, tokens, 2.0, "all", 0.0, 1.0, None),
    }
    x = torch.randn(2, 4, 32, 32)
    context = torch.randn(2, 77, 768)
    sigma = torch.full((2,), 7.0)

    @torch.inference_mode()
    def step(patcher) -> float:
        options = dict(patcher.model_options["transformer_options"])
        options.update(cond_or_uncond=[1, 0], sigmas=sigma[:1])
        start = time.perf_counter()
        patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)
        return time.perf_counter() - start

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, core attention: "
          f"{comfy_attention.optimized_attention.__name__}")
    print(f"SD1.5 UNet ({sum(p.numel() for p in base.model.parameters()) / 1e6:.0f} M params), "
          f"32x32 latent, CFG batch 2, {opts.repeats} steps per variant; hand tokens: "
          f"{', '.join(tokens.words)} at {list(tokens.positions)}")
    for patcher in variants.values():
        step(patcher)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(opts.repeats):
        for name, patcher in variants.items():
            times[name].append(step(patcher))
    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    for name in variants:
        print(f"{name:11s} step: median {median[name] * 1000:7.1f} ms, "
              f"best {best[name] * 1000:7.1f} ms"
              f"   / plain: median {median[name] / median['plain']:.3f}, "
              f"best {best[name] / best['plain']:.3f}")
    ratio = best["AE decoder"] / best["plain"]
    print(f"AE (default, decoder) / plain UNet, bests = {ratio:.3f} "
          f"(target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
