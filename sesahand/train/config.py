"""Training configuration: a tree of dataclasses read from YAML, checked key by key.

``load_config(path)`` reads a YAML file (``configs/default.yaml`` documents every key) into a
:class:`TrainConfig`. Every level rejects unknown keys (the error lists the valid ones) and
checks each value's type; missing keys take the defaults below. ``config_hash`` is the
sha256 of the canonical JSON of the whole tree (sorted keys, defaults filled in), stored in
the exported weights' metadata so a file can be traced to the settings that made it.

Relative paths in the file are resolved against the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..attention.bias import DEFAULT_ALPHA
from ..control.fusion import FUSION_MODES, HIERARCHIES
from ..control.metadata import ATTENTION_LAYERS, RENDER_STYLES

SOURCE_KINDS = ("sesahand", "freihand", "records", "photos")
CAPTION_FIELDS = ("prompt", "caption")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
HAND_MODELS = ("anny", "mano")


@dataclass
class ModelConfig:
    """What is trained and how SF / AE are applied.

    Attributes:
        sd15: SD1.5 checkpoint: a single ``.safetensors``/``.ckpt`` file or a diffusers folder
            (local only). Required. SDXL and other families are refused.
        controlnet_init: ``null`` = a new ControlNet copied from the UNet encoder (zero convs
            at 0); or an existing SD1.5 ControlNet (file or diffusers folder) to start from.
        fusion: SF reading, ``"tokens"`` or ``"gate"`` (docs/method.md, SF).
        w: SF blend weight in [0, 1]; 1 = the paper's SF, 0 = SF off.
        alpha: AE bias on hand-token logits (eq. AE-1), >= 0; 2.0 is the paper's best, 0 = off.
        attention_layers: cross-attention layers that get the AE bias, ``"decoder"`` or ``"all"``.
        render_style: the condition image trained on, one of ``mesh``, ``depth``, ``normal``,
            ``pose``, ``mask`` (outputs of ``sesahand.render``).
        hierarchy: how SF combines its resolutions: ``"balanced"`` (each normalised before the
            sum) or ``"sum"`` (eq. SF-1 as written); docs/method.md "Structural fusion choices".
        attention_chunk: SF's attention chunk size (logits per chunk); ``null`` = chosen per
            device (``sesahand.control.default_chunk_elements``). Speed and memory only.

    Every setting here that changes inference (fusion, w, hierarchy, alpha, attention_layers,
    render_style) is written into the exported file's metadata.
    """

    sd15: str = ""
    controlnet_init: str | None = None
    fusion: str = "tokens"
    w: float = 1.0
    alpha: float = DEFAULT_ALPHA
    attention_layers: str = "decoder"
    render_style: str = "mesh"
    hierarchy: str = "balanced"
    attention_chunk: int | None = None


@dataclass
class SourceConfig:
    """One dataset folder.

    Attributes:
        kind: ``"sesahand"`` (the pack's dataset format, ``python -m sesahand dataset``),
            ``"freihand"`` (``training/rgb/%08d.jpg`` + ``training_K.json`` +
            ``training_mano.json``; needs the MANO files, see ``DataConfig.mano_path``) or
            ``"records"`` (a folder of ``NAME.png|.jpg`` + ``NAME.json`` labels + optional
            ``NAME.txt`` caption) or ``"photos"`` (a folder of real photos fitted once
            with MediaPipe + the hand model fit; captions from ``captions``, else the folder's
            ``captions.jsonl``, else ``NAME.txt``).
        path: the folder.
        captions: ``captions.jsonl`` of ``python -m sesahand caption`` (one JSON object per
            image with ``image`` and ``prompt``), or a ``.txt`` file with one caption per
            line in record order; ``null`` = the source's own captions.
        caption_field: which text of a ``captions.jsonl`` to train on: ``"prompt"`` (the
            behaviour-semantics prompt) or ``"caption"`` (the raw VLM caption: the ablation's
            row without SE).
        prompt: caption for records that have none; ``null`` = such a record is an error.
        limit: use only the first N records (``null`` = all).
    """

    kind: str = "sesahand"
    path: str = ""
    captions: str | None = None
    prompt: str | None = None
    limit: int | None = None
    caption_field: str = "prompt"


@dataclass
class AugmentConfig:
    """Augmentations that keep the labels valid (K, joints and side are updated).

    Attributes:
        hflip: probability of a horizontal flip (mirrors the hands: right <-> left, the
            condition is re-rendered for the mirrored hands).
        crop_scale: (min, max) side of the random square crop as a fraction of the image's
            shorter side; [1.0, 1.0] = the centred largest square. The crop keeps every hand
            inside when it can.
    """

    hflip: float = 0.5
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])


@dataclass
class DataConfig:
    """Training data.

    Attributes:
        sources: the dataset folders (see :class:`SourceConfig`), concatenated.
        resolution: side of the square training images in pixels (multiple of 8).
        hand_model: hand model that renders the conditions, ``"anny"`` (open) or ``"mano"``.
        mano_path: folder with ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``; needed for ``mano``
            and for FreiHAND (its poses are relative to MANO's mean pose).
        cache_dir: where rendered conditions are cached (``null`` = ``OUTPUT/condition_cache``);
            entries are keyed by labels, render style, hand model and size, so a cache can be
            shared between runs.
        num_workers: DataLoader worker processes.
        augment: see :class:`AugmentConfig`.
        caption_dropout: probability of training a sample on the empty prompt instead of its
            caption. Default 0: the paper does not drop captions, and SesaHand trains the
            ControlNet to follow behaviour-semantics prompts; ControlNet's original recipe
            replaced 50% of prompts by empty ones, which teaches the control alone (useful
            when the weights are to be run without prompts).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    resolution: int = 512
    hand_model: str = "anny"
    mano_path: str | None = None
    cache_dir: str | None = None
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    caption_dropout: float = 0.0


@dataclass
class OptimConfig:
    """Optimisation.

    Attributes:
        lr: AdamW learning rate (docs/method.md: 1e-5).
        weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW settings.
        max_grad_norm: gradient clipping (``null`` = none).
        lr_scheduler: ``constant``, ``constant_with_warmup``, ``linear`` or ``cosine``
            (diffusers ``get_scheduler``); ``lr_warmup_steps`` steps of warm-up.
        batch_size: samples per GPU per micro-step.
        gradient_accumulation_steps: micro-steps per optimiser step (effective batch =
            batch_size x accumulation x GPUs).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (frozen SD weights are stored in
            that dtype, the ControlNet stays float32 under autocast).
        gradient_checkpointing: recompute activations in backward (less memory, ~20% slower).
        optimizer: ``"adamw"`` (torch) or ``"adamw8bit"`` (bitsandbytes, must be installed).
        ema: keep an exponential moving average of the ControlNet weights (exported instead
            of the raw weights); ``ema_decay`` its decay.
        max_steps: optimiser steps to train.
        seed: seeds data order, augmentation, noise and timesteps.
    """

    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    ema: bool = False
    ema_decay: float = 0.9999
    max_steps: int = 50000
    seed: int = 0


@dataclass
class ValidationConfig:
    """Periodic validation images (fixed poses and seeds, so runs can be compared).

    Attributes:
        every_n_steps: render validation images every N optimiser steps (0 = never) and at the end.
        poses: preset names (``python -m sesahand render --pose``) or pose ``.json`` files.
        prompts: one prompt per pose (a single prompt is used for all).
        seeds: each pose is sampled once per seed.
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free guidance scale.
    """

    every_n_steps: int = 500
    poses: list[str] = field(default_factory=lambda: ["open_palm", "fist"])
    prompts: list[str] = field(default_factory=lambda: ["a person raising a hand, photo"])
    seeds: list[int] = field(default_factory=lambda: [0])
    num_inference_steps: int = 20
    guidance_scale: float = 7.5


@dataclass
class CheckpointConfig:
    """Checkpoints (``OUTPUT/checkpoints/checkpoint-STEP``), resumable with ``--resume``.

    Attributes:
        every_n_steps: save every N optimiser steps (0 = only at the end).
        keep_last: keep the newest K checkpoints (older ones are removed once a new one is
            complete); 0 = keep all.
    """

    every_n_steps: int = 1000
    keep_last: int = 3


@dataclass
class LoggingConfig:
    """Logs.

    Attributes:
        tensorboard: write tensorboard logs to ``OUTPUT/logs``.
        every_n_steps: log loss and learning rate every N optimiser steps.
    """

    tensorboard: bool = True
    every_n_steps: int = 10


@dataclass
class TrainConfig:
    """The whole training configuration (see ``configs/default.yaml``).

    Attributes:
        output_dir: run folder: checkpoints, logs, validation images, the exported
            ``controlnet.safetensors``. Required.
        export_diffusers: also save the ControlNet as a diffusers folder ``OUTPUT/diffusers``.
    """

    output_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export_diffusers: bool = False

    def to_dict(self) -> dict:
        """Plain dict of the whole tree (JSON/YAML-ready)."""
        return dataclasses.asdict(self)


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp, value, where: str):
    """``value`` checked against the annotation ``tp`` (and converted: int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config {where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, "
                             f"got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config {where}: expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"config {where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return _convert(float, float(value), where)
        except ValueError:
            pass
    if tp in (int, bool, str) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ValueError(f"config {where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        place = f"section {where!r}" if where else "the top level"
        raise ValueError(f"config: unknown key(s) {unknown} in {place}; valid keys: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _choice(where: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"config {where}: {value!r} is not one of {', '.join(map(str, choices))}")


def _positive(where: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"config {where}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


def validate(config: TrainConfig) -> TrainConfig:
    """Check value ranges and choices across the tree; returns ``config``.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    m, d, t, v = config.model, config.data, config.train, config.validation
    if not config.output_dir:
        raise ValueError("config output_dir: required (the run folder)")
    if not m.sd15:
        raise ValueError("config model.sd15: required (an SD1.5 single-file checkpoint or diffusers folder)")
    _choice("model.fusion", m.fusion, FUSION_MODES)
    if not 0.0 <= m.w <= 1.0:
        raise ValueError(f"config model.w: must be in [0, 1], got {m.w}")
    _choice("model.hierarchy", m.hierarchy, HIERARCHIES)
    _positive("model.alpha", m.alpha, zero_ok=True)
    if m.attention_chunk is not None:
        _positive("model.attention_chunk", m.attention_chunk)
    _choice("model.attention_layers", m.attention_layers, ATTENTION_LAYERS)
    _choice("model.render_style", m.render_style, RENDER_STYLES)
    if not d.sources:
        raise ValueError("config data.sources: give at least one dataset folder "
                         "(a mapping with kind and path)")
    for i, s in enumerate(d.sources):
        _choice(f"data.sources[{i}].kind", s.kind, SOURCE_KINDS)
        _choice(f"data.sources[{i}].caption_field", s.caption_field, CAPTION_FIELDS)
        if not s.path:
            raise ValueError(f"config data.sources[{i}].path: required (the dataset folder)")
        if s.limit is not None:
            _positive(f"data.sources[{i}].limit", s.limit)
        if s.kind == "freihand" and d.hand_model != "mano":
            raise ValueError(f"config data.sources[{i}]: FreiHAND poses are relative to MANO's mean pose; "
                             "set data.hand_model: mano and data.mano_path (folder with MANO_RIGHT.pkl)")
    if d.resolution <= 0 or d.resolution % 8:
        raise ValueError(f"config data.resolution: must be a positive multiple of 8, got {d.resolution}")
    _choice("data.hand_model", d.hand_model, HAND_MODELS)
    if d.hand_model == "mano" and not d.mano_path:
        raise ValueError("config data.mano_path: required with data.hand_model: mano (folder with "
                         "MANO_RIGHT.pkl / MANO_LEFT.pkl)")
    _positive("data.num_workers", d.num_workers, zero_ok=True)
    if not 0.0 <= d.caption_dropout <= 1.0:
        raise ValueError(f"config data.caption_dropout: a probability in [0, 1], got {d.caption_dropout}")
    if not 0.0 <= d.augment.hflip <= 1.0:
        raise ValueError(f"config data.augment.hflip: a probability in [0, 1], got {d.augment.hflip}")
    cs = d.augment.crop_scale
    if len(cs) != 2 or not 0.0 < cs[0] <= cs[1] <= 1.0:
        raise ValueError(f"config data.augment.crop_scale: [min, max] with 0 < min <= max <= 1, got {cs}")
    for name in ("lr", "adam_epsilon", "batch_size", "gradient_accumulation_steps", "max_steps"):
        _positive(f"train.{name}", getattr(t, name))
    for name in ("weight_decay", "lr_warmup_steps"):
        _positive(f"train.{name}", getattr(t, name), zero_ok=True)
    if t.max_grad_norm is not None:
        _positive("train.max_grad_norm", t.max_grad_norm)
    for name in ("adam_beta1", "adam_beta2", "ema_decay"):
        if not 0.0 <= getattr(t, name) < 1.0:
            raise ValueError(f"config train.{name}: must be in [0, 1), got {getattr(t, name)}")
    _choice("train.lr_scheduler", t.lr_scheduler, LR_SCHEDULERS)
    _choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    _positive("validation.every_n_steps", v.every_n_steps, zero_ok=True)
    if v.every_n_steps:
        if not v.poses or not v.seeds:
            raise ValueError("config validation.poses / validation.seeds: give at least one each, "
                             "or set validation.every_n_steps: 0")
        if len(v.prompts) not in (1, len(v.poses)):
            raise ValueError(f"config validation.prompts: give 1 prompt or one per pose ({len(v.poses)}), "
                             f"got {len(v.prompts)}")
        _positive("validation.num_inference_steps", v.num_inference_steps)
    _positive("checkpointing.every_n_steps", config.checkpointing.every_n_steps, zero_ok=True)
    _positive("checkpointing.keep_last", config.checkpointing.keep_last, zero_ok=True)
    _positive("logging.every_n_steps", config.logging.every_n_steps)
    return config


def _resolve_paths(config: TrainConfig, base: Path) -> None:
    def resolve(p: str | None) -> str | None:
        return None if not p else str((base / Path(p).expanduser()).resolve())

    config.output_dir = resolve(config.output_dir) or ""
    config.model.sd15 = resolve(config.model.sd15) or ""
    config.model.controlnet_init = resolve(config.model.controlnet_init)
    config.data.mano_path = resolve(config.data.mano_path)
    config.data.cache_dir = resolve(config.data.cache_dir)
    for s in config.data.sources:
        s.path = resolve(s.path) or ""
        s.captions = resolve(s.captions)
    config.validation.poses = [p if not p.endswith(".json") else resolve(p) for p in config.validation.poses]


def config_from_dict(data: dict, base_dir: str | Path = ".") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a decoded mapping.

    Relative paths are resolved against ``base_dir``.

    Raises:
        ValueError: unknown key (with the valid keys of its section), wrong type, or a value
            out of range.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping at the top level, got {type(data).__name__}")  # noqa: TRY004
    config = _build(TrainConfig, data)
    _resolve_paths(config, Path(base_dir))
    return validate(config)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file (see ``configs/default.yaml``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed YAML (with line and column) or an invalid config (see
            :func:`config_from_dict`).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValueError(f"config {path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    try:
        return config_from_dict(data, path.parent)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def config_hash(config: TrainConfig) -> str:
    """sha256 (hex) of the canonical JSON of the config (sorted keys, no spaces)."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
