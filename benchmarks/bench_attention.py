"""Hand attention (AE) cost per model family: time of one sampling step's model evaluation
with the bias against the unpatched model, measured in the same run.

Usage:
    python benchmarks/bench_attention.py [--repeats N] [--pytorch-attention]
                                         [--families sd15,sdxl,flux,sd3]

Needs ComfyUI core at $COMFYUI_PATH (default ~/ComfyUI) and its requirements. Runs on the CPU.

Models (random weights, built from ComfyUI's own model classes; no checkpoint files):

* ``sd15``: the SD1.5 UNet configuration (model_channels 320, 16 cross-attention layers,
  860 M parameters), 32x32 latent (256 px); AE on the decoder's 9 layers (the default).
* ``sdxl``: SDXL's layout (channel_mult 1-2-4, transformer depth 0/2/10, linear projections,
  CLIP-L+G context 2048, pooled ADM) at reduced width (model_channels 64, 32-channel heads),
  32x32 latent; AE on the decoder layers.
* ``flux``: Flux's layout (double then single stream blocks, 128-channel heads, RoPE) at reduced
  size (hidden 512, 2 double + 4 single blocks), 32x32 latent (1024 image tokens) and the 256
  T5 tokens of ComfyUI's Flux tokenizer; AE on every joint attention.
* ``sd3``: SD3.5's MMDiT layout (64-channel heads, QK RMS norm, an image self-attention block)
  at reduced size (depth 6, hidden 384), 32x32 latent, 77 CLIP + 77 T5 text tokens; AE on every
  joint attention.

A step is what core's sampler runs per step with CFG: one forward of the positive and the
negative prompt as a batch of 2 (``cond_or_uncond`` [1, 0], as core orders them), through
``BaseModel.apply_model`` with the patched model's transformer options and wrappers, as
``comfy.samplers.calc_cond_batch`` calls it. The prompt's hand tokens are found with the
family's own ComfyUI tokenizer.

Plain and AE steps run in pairs, ``--repeats`` pairs after a warm-up, the order within a pair
alternating (so a drift of the machine's speed cancels). Printed per family: the median and the
best step time of each, and the AE/plain ratio of each pair: their median is checked against
the target (at most 1.05 per family), with their range and the ratios of the medians and of the
bests. The per-pair median is the figure least moved by other load on a shared machine: both
steps of a pair see about the same load, while a best or a median of each alone can come from
different moments.

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
TARGET = 1.05

SD15_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False, "image_size": 32,
    "use_checkpoint": False,
}
SDXL_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
    "context_dim": 2048, "use_linear_in_transformer": True, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": 2816, "num_classes": "sequential",
    "num_head_channels": 32, "use_temporal_attention": False, "use_temporal_resblock": False,
    "image_size": 32, "use_checkpoint": False,
}
FLUX = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 512, "mlp_ratio": 4.0, "num_heads": 4, "depth": 2,
    "depth_single_blocks": 4, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2,
    "qkv_bias": True, "guidance_embed": True,
}
SD35 = {
    "in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2,
    "depth": 6, "adm_in_channels": 2048, "pos_embed_max_size": 64, "num_patches": 4096,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": 4096, "out_features": 384}},
    "x_block_self_attn_layers": [0], "qk_norm": "rms",
}


def load_comfyui(pytorch_attention: bool):
    """ComfyUI's modules, imported in-process on the CPU; the pack's attention patch module."""
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
    return importlib.import_module("sesahand_pack.nodes.attention_patch")


def random_patcher(model):
    """A ModelPatcher around ``model`` with random weights (std 0.02)."""
    import comfy.model_patcher
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for b in model.diffusion_model.buffers():  # torch.empty buffers (MMDiT's pos_embed)
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tokenizer_clip(tokenizer):
    """A core CLIP object with a core tokenizer only (the nodes only tokenize)."""
    import comfy.sd

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer = tokenizer
    clip.tokenizer_options = {}
    return clip


def family(name: str):
    """``(patcher, clip, layers, latent (C, H, W), text (tokens, width), extra conds)``."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models as models
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip
    import torch

    g = torch.Generator().manual_seed(1)
    if name == "sd15":
        return (random_patcher(models.SD15(dict(SD15_UNET)).get_model({})),
                tokenizer_clip(comfy.sd1_clip.SD1Tokenizer()), "decoder", (4, 32, 32), (77, 768),
                {})
    if name == "sdxl":
        return (random_patcher(models.SDXL(dict(SDXL_UNET)).get_model({})),
                tokenizer_clip(comfy.sdxl_clip.SDXLTokenizer()), "decoder", (4, 32, 32),
                (77, 2048), {"y": torch.randn(2, 2816, generator=g)})
    if name == "flux":
        return (random_patcher(models.Flux(dict(FLUX)).get_model({})),
                tokenizer_clip(comfy.text_encoders.flux.FluxTokenizer()), "all", (16, 32, 32),
                (256, 4096), {"y": torch.randn(2, 768, generator=g),
                              "guidance": torch.full((2,), 3.5)})
    if name == "sd3":
        return (random_patcher(models.SD3(dict(SD35)).get_model({})),
                tokenizer_clip(comfy.text_encoders.sd3_clip.SD3Tokenizer()), "all", (16, 32, 32),
                (154, 4096), {"y": torch.randn(2, 2048, generator=g)})
    raise SystemExit(f"unknown family {name!r}: choose from sd15, sdxl, flux, sd3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8, help="steps timed per variant")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="core attention through PyTorch SDPA (default: sub-quadratic)")
    parser.add_argument("--families", default="sd15,sdxl,flux,sd3",
                        help="comma-separated: sd15, sdxl, flux, sd3")
    opts = parser.parse_args()

    ae = load_comfyui(opts.pytorch_attention)
    import comfy.ldm.modules.attention as comfy_attention
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, core attention: "
          f"{comfy_attention.optimized_attention.__name__}; CFG batch 2, {opts.repeats} steps "
          "per variant, alternating")
    ratios = {}
    for name in opts.families.split(","):
        base, clip, layers, latent, (length, width), extra = family(name.strip())
        kind = ae.model_family(base)
        tokens = ae.hand_tokens(clip, PROMPT, "", kind)
        patched = ae.patch_model(base, tokens, 2.0, layers, 0.0, 1.0, None, kind)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, *latent, generator=g)
        context = torch.randn(2, length, width, generator=g)
        sigma = torch.full((2,), 0.7 if kind != "unet" else 7.0)

        @torch.inference_mode()
        def step(patcher) -> float:
            options = dict(patcher.model_options["transformer_options"])
            options.update(cond_or_uncond=[1, 0], sigmas=sigma[:1], wrappers=patcher.wrappers)
            start = time.perf_counter()
            patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options,
                                      **extra)
            return time.perf_counter() - start

        params = sum(p.numel() for p in base.model.parameters()) / 1e6
        step(base), step(patched)  # warm-up
        times = {"plain": [], "AE": []}
        for r in range(opts.repeats):  # pairs, in alternating order: drift cancels
            for variant, patcher in (("plain", base), ("AE", patched))[::1 if r % 2 else -1]:
                times[variant].append(step(patcher))
        median = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        pairs = [a / b for a, b in zip(times["AE"], times["plain"])]
        ratios[name] = statistics.median(pairs)
        print(f"{name:5s} ({kind}, {params:.0f} M params, latent {latent[1]}x{latent[2]}, "
              f"{length} text tokens, AE on {layers}; hand tokens: {', '.join(tokens.words)})")
        for variant in times:
            print(f"      {variant:5s} step: median {median[variant] * 1000:8.1f} ms, best "
                  f"{best[variant] * 1000:8.1f} ms")
        print(f"      AE / plain: per-pair median {ratios[name]:.3f} (range {min(pairs):.3f}-"
              f"{max(pairs):.3f}; of medians {median['AE'] / median['plain']:.3f}, of bests "
              f"{best['AE'] / best['plain']:.3f}) (target <= {TARGET}: "
              f"{'met' if ratios[name] <= TARGET else 'NOT met'})")
    print("AE / plain step, per-pair medians: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
