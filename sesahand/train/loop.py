"""The training loop (docs/method.md, "Backbone and loss"): HuggingFace ``accelerate`` around
:func:`sesahand.train.model.training_loss`.

One process or many: ``python -m sesahand train --config C.yaml`` runs on one device;
``accelerate launch [--multi_gpu --num_processes N | --num_machines ...] -m sesahand train
--config C.yaml`` runs data-parallel (accelerate's DDP; nothing home-made). Mixed precision,
gradient accumulation, gradient checkpointing, AdamW (torch) or 8-bit AdamW (bitsandbytes),
an optional EMA of the ControlNet weights (``diffusers.training_utils.EMAModel``), periodic
validation images, tensorboard logs (accelerate trackers) and a tqdm progress bar.

Run folder (``output_dir``)::

    checkpoints/checkpoint-STEP/   accelerator.save_state (ControlNet, optimizer, LR scheduler,
                                   RNG states, EMA) + trainer_state.json (step, data position)
    logs/                          tensorboard
    validation/step-STEP/          POSE_seedSEED.png (+ condition_POSE.png once)
    condition_cache/               rendered conditions (unless data.cache_dir says elsewhere)
    controlnet.safetensors         the export (original ControlNet layout + sesahand.* metadata)
    diffusers/                     with export_diffusers: true

Exact resume: the data order and every augmentation depend only on (seed, epoch, index), the
noise, timesteps and VAE sample of micro-batch m only on (seed, m, process), and the
checkpoint holds the optimizer, LR scheduler, EMA and accelerate's step counter, so a run
resumed from step k ends with the same weights as one that never stopped (same number of
processes and batch settings).

Checkpoints are written to ``checkpoints/.tmp-checkpoint-STEP`` and renamed into place once
complete; older ones are pruned (``keep_last``) only after that, so a failure (a full disk)
leaves the previous checkpoint valid.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import to_float, to_uint8
from .config import OptimConfig, TrainConfig, config_hash

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
EXPORT_NAME = "controlnet.safetensors"
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        output_dir: the run folder.
        global_step: optimiser steps done (== ``train.max_steps`` after a complete run).
        export_path: the exported ``controlnet.safetensors`` (None on non-main processes).
        checkpoint: the last checkpoint folder.
        losses: per optimiser step of this process (this invocation only), the mean loss of
            its micro-batches.
    """

    output_dir: Path
    global_step: int
    export_path: Path | None
    checkpoint: Path | None
    losses: list[float]


# ---------------------------------------------------------------------------- checkpoints

def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest (lowest step) first."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume: str) -> Path:
    """The checkpoint folder ``--resume`` names: ``"latest"`` (newest of the run) or a path.

    Raises:
        FileNotFoundError: no checkpoint there (names what was looked for).
    """
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}; "
                                    "start without --resume")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}); give "
                                f"OUTPUT/{CHECKPOINTS_DIR}/checkpoint-STEP or 'latest'")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones (all processes call this).

    ``accelerator.save_state`` writes into ``checkpoints/.tmp-checkpoint-STEP``; the main
    process adds ``trainer_state.json`` (``state``) and renames the folder to
    ``checkpoint-STEP`` (replacing one of that name); only then are checkpoints beyond the
    newest ``keep_last`` (0 = keep all) removed.

    Raises:
        RuntimeError: writing failed (a full disk): the partial folder is removed, earlier
            checkpoints are untouched; the message says how to go on.
    """
    folder = output_dir / CHECKPOINTS_DIR
    final = folder / f"checkpoint-{step}"
    tmp = folder / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        hint = "the disk is full: free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
        raise RuntimeError(f"checkpoint at step {step} could not be written to {folder} ({hint}); {kept}; "
                           "then run the same command with --resume latest") from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            old = folder / f".old-checkpoint-{step}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        if keep_last:
            for stale in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
        log.info("checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------ pieces

def make_optimizer(config: OptimConfig, parameters) -> torch.optim.Optimizer:
    """AdamW (torch) or 8-bit AdamW (bitsandbytes) over ``parameters``.

    Raises:
        RuntimeError: ``adamw8bit`` without bitsandbytes installed (says how to fix it).
    """
    kwargs = {"lr": config.lr, "betas": (config.adam_beta1, config.adam_beta2),
              "weight_decay": config.weight_decay, "eps": config.adam_epsilon}
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("train.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes; "
                               "it needs a CUDA GPU); or set train.optimizer: adamw") from None
        return bnb.optim.AdamW8bit(parameters, **kwargs)
    return torch.optim.AdamW(parameters, **kwargs)


def step_generator(seed: int, micro_step: int, process: int, device) -> torch.Generator:
    """The generator of micro-batch ``micro_step`` on process ``process`` (noise, timesteps,
    VAE sample): depends only on these, so a resumed run draws the same numbers."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, micro_step, process]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state >> np.uint64(1)))


class _Prepared:
    """The prepared (possibly DDP-wrapped) FusedControlNet as ``training_loss`` expects it:
    calls go through the wrapper (gradient sync, autocast), attributes come from the module."""

    def __init__(self, wrapped, module):
        self._wrapped, self._module = wrapped, module

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


# ---------------------------------------------------------------------------- validation

def validation_conditions(config: TrainConfig, model_factory) -> list[tuple[str, torch.Tensor, str]]:
    """The fixed validation inputs: per pose ``(name, condition (3, S, S) float in [0, 1], prompt)``,
    rendered with a centred default camera at the training resolution."""
    from ..camera import Camera
    from ..hands import PRESET_NAMES, PoseSpec
    from ..pipeline import render_scenes
    from .data import style_image

    v, S = config.validation, config.data.resolution
    camera = Camera.default(S, S)
    out = []
    for i, pose in enumerate(v.poses):
        if pose in PRESET_NAMES:
            spec, name = PoseSpec.preset(pose), pose
        elif pose.endswith(".json"):
            spec, name = PoseSpec.from_json(pose), Path(pose).stem
        else:
            raise ValueError(f"config validation.poses[{i}]: {pose!r} is neither a preset "
                             f"({', '.join(PRESET_NAMES)}) nor a .json pose file")
        scenes = spec.resolve(model_factory(), camera, 1)
        if (scenes[0].camera.width, scenes[0].camera.height) != (S, S):
            raise ValueError(f"config validation.poses[{i}]: {pose} has a {scenes[0].camera.width}x"
                             f"{scenes[0].camera.height} camera; validation renders at data.resolution "
                             f"{S}x{S}: give the pose file that size or no camera")
        conditions, _ = render_scenes(model_factory(), scenes)
        image = style_image(conditions, config.model.render_style)
        cond = to_float(image).permute(2, 0, 1)
        prompt = v.prompts[i] if len(v.prompts) > 1 else v.prompts[0]
        out.append((name, cond, prompt))
    return out


@torch.no_grad()
def sample_images(sd, controlnet, hand_attention, items, seeds, steps: int, guidance: float,
                  autocast) -> list[tuple[str, int, np.ndarray]]:
    """DDIM samples with the ControlNet (SF as set), AE on the conditional branch, and
    classifier-free guidance.

    Args:
        sd: :class:`~sesahand.train.model.SD15`; controlnet: the (unwrapped) FusedControlNet;
        hand_attention: its :class:`HandAttention` or None.
        items: ``(name, condition (3, S, S) in [0, 1], prompt)``.
        seeds: one image per item and seed (latent noise from ``torch.Generator(seed)`` on CPU).
        steps, guidance: DDIM steps and CFG scale.
        autocast: a context-manager factory (``accelerator.autocast``).

    Returns: ``(name, seed, image (S, S, 3) uint8)`` in item-major order.
    """
    from diffusers import DDIMScheduler

    from .model import encode_text
    from .prompts import repeat_to_common_length, tokenize_prompt

    device, dtype = sd.unet.device, sd.unet.dtype
    vocab = {i: t for t, i in sd.tokenizer.get_vocab().items()}
    scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    scheduler = DDIMScheduler.from_config(sd.noise_scheduler.config)
    empty_ids, _, empty_mask = tokenize_prompt(sd.tokenizer, vocab, "")
    uncond = encode_text(sd, empty_ids[None])[0]
    out = []
    was_training = controlnet.training
    controlnet.eval()
    try:
        for name, cond, prompt in items:
            ids, weights, mask = tokenize_prompt(sd.tokenizer, vocab, prompt)
            text = encode_text(sd, ids[None], weights[None])[0]
            context = repeat_to_common_length([uncond, text]).to(dtype)  # as ComfyUI batches them
            if hand_attention is not None:
                hand_attention.set_token_mask(repeat_to_common_length([empty_mask, mask]).to(device))
            c = cond[None].expand(2, -1, -1, -1).to(device)
            h, w = cond.shape[1] // scale, cond.shape[2] // scale
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                latents = torch.randn((1, sd.unet.config.in_channels, h, w), generator=g).to(device)
                latents = latents * scheduler.init_noise_sigma
                scheduler.set_timesteps(steps, device=device)
                with autocast():
                    for t in scheduler.timesteps:
                        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                        down, mid = controlnet(x.float(), t, context.float(), c.float())
                        eps = sd.unet(x.to(dtype), t, encoder_hidden_states=context,
                                      down_block_additional_residuals=[r.to(dtype) for r in down],
                                      mid_block_additional_residual=mid.to(dtype), return_dict=False)[0]
                        e_u, e_c = eps.float().chunk(2)
                        latents = scheduler.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
                    image = sd.vae.decode((latents / sd.vae.config.scaling_factor).to(sd.vae.dtype)).sample
                image = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
                out.append((name, seed, image))
    finally:
        controlnet.train(was_training)
    return out


def _save_validation(accelerator, output_dir: Path, step: int, images, items, first: bool) -> None:
    from PIL import Image

    from ..io import atomic_path

    folder = output_dir / "validation" / f"step-{step:08d}"
    for name, seed, image in images:
        with atomic_path(folder / f"{name}_seed{seed}.png") as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    if first:
        for name, cond, _ in items:
            with atomic_path(output_dir / "validation" / f"condition_{name}.png") as tmp:
                Image.fromarray(to_uint8(cond.permute(1, 2, 0))).save(tmp, format="PNG")
    if any(t.name == "tensorboard" for t in accelerator.trackers):
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for name, seed, image in images:
            writer.add_image(f"validation/{name}_seed{seed}", image, step, dataformats="HWC")


# ----------------------------------------------------------------------------------- train

def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train the SesaHand ControlNet as ``config`` says, then export it.

    Args:
        config: a validated :class:`~sesahand.train.config.TrainConfig`.
        resume: None (start at step 0), ``"latest"`` (newest checkpoint of ``output_dir``) or a
            checkpoint folder (``.../checkpoints/checkpoint-STEP``, any run).

    Returns: :class:`TrainResult`.

    Raises:
        ValueError: the model is not SD1.5 (SDXL, SD2.x are named), bad data (record size
            mismatch, malformed labels), bad config values found late.
        FileNotFoundError: a missing model, dataset, image or checkpoint.
        RuntimeError: 8-bit Adam without bitsandbytes; a checkpoint that could not be written
            (the previous one stays valid).
    """
    from accelerate import Accelerator
    from accelerate.utils import (
        GradientAccumulationPlugin,
        ProjectConfiguration,
        set_seed,
    )
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from ..control.fusion import FusionSettings
    from ..io import atomic_write_bytes
    from .data import MODEL_KEYS, EpochSampler, build_dataset, collate, hand_model_factory
    from .export import export_controlnet, save_diffusers
    from .model import (
        FusedControlNet,
        build_controlnet,
        install_hand_attention,
        load_sd15,
        training_loss,
    )

    t, m = config.train, config.model
    out = Path(config.output_dir)
    digest = config_hash(config)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=t.gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        log_with="tensorboard" if config.logging.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    resume_dir = resolve_resume(out, resume) if resume else None
    set_seed(t.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", json.dumps(config.to_dict(), indent=1).encode())

    sd = load_sd15(m.sd15, dtype=WEIGHT_DTYPES[t.mixed_precision], device=accelerator.device)
    fused = FusedControlNet(build_controlnet(sd.unet, m.controlnet_init), FusionSettings(m.fusion, m.w, m.hierarchy),
                            m.attention_chunk)
    hand_attention = install_hand_attention(sd.unet, m.alpha, m.attention_layers) if m.alpha else None
    if t.gradient_checkpointing:
        fused.controlnet.enable_gradient_checkpointing()
        sd.unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(t, fused.parameters())
    lr_scheduler = get_scheduler(t.lr_scheduler, optimizer,
                                 num_warmup_steps=t.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=t.max_steps * accelerator.num_processes)

    model_factory = hand_model_factory(config.data)
    with accelerator.main_process_first():
        dataset = build_dataset(config.data, m.render_style, sd.tokenizer, t.seed,
                                config.data.cache_dir or out / "condition_cache",
                                progress=accelerator.is_local_main_process)
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, sampler=EpochSampler(len(dataset), t.seed),
                                         collate_fn=collate,
                                         num_workers=config.data.num_workers)
    prepared, optimizer, loader, lr_scheduler = accelerator.prepare(fused, optimizer, loader, lr_scheduler)
    controlnet = _Prepared(prepared, fused)
    ema = None
    if t.ema:
        from diffusers import ControlNetModel
        from diffusers.training_utils import EMAModel

        ema = EMAModel(fused.controlnet.parameters(), decay=t.ema_decay, model_cls=ControlNetModel,
                       model_config=fused.controlnet.config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    global_step = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state = json.loads((resume_dir / STATE_FILE).read_text(encoding="utf-8"))
        global_step = int(state["global_step"])
        if accelerator.is_main_process:
            if state.get("config_hash") != digest:
                log.warning("resuming %s, written with another config (hash %s, now %s)", resume_dir,
                            state.get("config_hash"), digest)
            if state.get("num_processes") != accelerator.num_processes:
                log.warning("resuming %s, written by %s processes, now %d: the data order goes on "
                            "differently from an uninterrupted run", resume_dir, state.get("num_processes"),
                            accelerator.num_processes)
            log.info("resumed from %s at step %d", resume_dir, global_step)

    validation = []
    if config.validation.every_n_steps and accelerator.is_main_process:
        validation = validation_conditions(config, model_factory)
    if accelerator.is_main_process:
        accelerator.init_trackers("sesahand", config={
            "config_hash": digest, "lr": t.lr, "batch_size": t.batch_size, "fusion": m.fusion, "w": m.w,
            "hierarchy": m.hierarchy, "alpha": m.alpha, "attention_layers": m.attention_layers, "render_style": m.render_style, "resolution": config.data.resolution})

    def run_validation(step: int, first: bool) -> None:
        if not validation:
            return
        unwrapped = accelerator.unwrap_model(prepared)
        if ema is not None:
            ema.store(unwrapped.controlnet.parameters())
            ema.copy_to(unwrapped.controlnet.parameters())
        try:
            images = sample_images(sd, unwrapped, hand_attention, validation, config.validation.seeds,
                                   config.validation.num_inference_steps, config.validation.guidance_scale,
                                   accelerator.autocast)
        finally:
            if ema is not None:
                ema.restore(unwrapped.controlnet.parameters())
        _save_validation(accelerator, out, step, images, validation, first)

    def checkpoint(step: int) -> Path:
        micro = step * t.gradient_accumulation_steps
        return save_checkpoint(accelerator, out, step, {
            "global_step": step, "micro_batches": micro, "epoch": micro // len(loader),
            "batch_in_epoch": micro % len(loader), "config_hash": digest,
            "num_processes": accelerator.num_processes}, config.checkpointing.keep_last)

    micro = global_step * t.gradient_accumulation_steps
    epoch, skip = divmod(micro, len(loader))
    losses, pending = [], []
    last_checkpoint = resume_dir
    progress = tqdm(total=t.max_steps, initial=global_step, desc="training",
                    disable=not accelerator.is_local_main_process)
    log_sum, log_count = torch.zeros((), device=accelerator.device), 0
    first_validation = True
    while global_step < t.max_steps:
        loader.set_epoch(epoch)  # accelerate's loaders pass it to the sampler (a skipping loader copies it)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            with accelerator.accumulate(prepared):
                generator = step_generator(t.seed, micro, accelerator.process_index, accelerator.device)
                with accelerator.autocast():
                    loss = training_loss(sd, controlnet, {k: batch[k] for k in MODEL_KEYS}, hand_attention,
                                         generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(prepared.parameters(), t.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            pending.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            step_loss = torch.stack(pending).mean()
            pending = []
            losses.append(float(step_loss))
            log_sum, log_count = log_sum + step_loss, log_count + 1
            if ema is not None:
                ema.step(fused.controlnet.parameters())
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            if global_step % config.logging.every_n_steps == 0 or global_step == t.max_steps:
                mean = accelerator.reduce(log_sum / log_count, reduction="mean")
                accelerator.log({"train/loss": float(mean), "train/lr": lr_scheduler.get_last_lr()[0]},
                                step=global_step)
                log_sum, log_count = torch.zeros((), device=accelerator.device), 0
            every = config.validation.every_n_steps
            if every and global_step % every == 0 and accelerator.is_main_process:
                run_validation(global_step, first_validation)
                first_validation = False
            every = config.checkpointing.every_n_steps
            if every and global_step % every == 0:
                last_checkpoint = checkpoint(global_step)
            if global_step >= t.max_steps:
                break
        epoch, skip = epoch + 1, 0
    progress.close()

    if last_checkpoint is None or not last_checkpoint.name.endswith(f"-{global_step}"):
        last_checkpoint = checkpoint(global_step)
    every = config.validation.every_n_steps
    if every and global_step % every and accelerator.is_main_process:
        run_validation(global_step, first_validation)
    export_path = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(prepared)
        if ema is not None:
            ema.copy_to(unwrapped.controlnet.parameters())
        metadata = {"fusion": m.fusion, "w": m.w, "hierarchy": m.hierarchy, "alpha": m.alpha,
                    "attention_layers": m.attention_layers, "render_style": m.render_style,
                    "config_hash": digest}
        export_path = export_controlnet(unwrapped.controlnet, out / EXPORT_NAME, metadata)
        log.info("exported %s", export_path)
        if config.export_diffusers:
            save_diffusers(unwrapped.controlnet, out / "diffusers")
    accelerator.end_training()
    return TrainResult(out, global_step, export_path, last_checkpoint, losses)
