"""Training data: records from dataset folders, rendered conditions (cached), augmentation, batches.

Sources (``data.sources`` of the config, :class:`~sesahand.train.config.SourceConfig`):

* ``sesahand``: the pack's dataset folder (``labels.jsonl`` + ``images/NNNNNNNN.png``,
  :mod:`sesahand.data.format`); prompt from each record's ``prompt``.
* ``freihand``: a FreiHAND-style folder: ``training/rgb/%08d.jpg``, ``training_K.json`` (N 3x3)
  and ``training_mano.json`` (N x 61: global_orient, hand_pose relative to MANO's mean pose,
  betas, transl). Images ``i + k N`` (FreiHAND's background variants) share labels ``i``. Hands
  are right hands; the mean pose comes from the MANO files, so FreiHAND needs
  ``data.hand_model: mano`` and ``data.mano_path``. No captions of its own: give ``captions``.
* ``records``: any folder of ``NAME.png|.jpg|.jpeg`` + ``NAME.json`` + optional ``NAME.txt``
  (the caption). ``NAME.json`` holds the labels in the format ``python -m sesahand render``
  writes (``camera: {K, width, height}``, ``hands: [{side, global_orient, hand_pose, betas,
  transl}, ...]``) or a ``labels.jsonl`` record (``K``, ``width``, ``height``, ``hands``), and
  optionally a ``prompt``.
* ``photos``: a folder of real photos; each is fitted once (MediaPipe + hand model fit,
  :mod:`sesahand.train.photos`), hands failing the fit rules are dropped; caption from
  ``captions``, else the folder's ``captions.jsonl`` (``python -m sesahand caption``), else
  ``NAME.txt`` beside the photo.

Captions: ``captions`` of a source is a ``captions.jsonl`` (``python -m sesahand caption``: one
object per image with ``image`` and ``prompt``, the raw VLM ``caption``, optional
``hand_terms``; the source's ``caption_field`` picks ``prompt`` or ``caption``; ``image`` is matched
against the record's image path relative to the source folder, then its file name) or a
``.txt`` file with one caption per line in record order. It overrides the source's own
captions; ``prompt`` of the source fills in records that still have none.

Conditions: each record's hands are posed by the configured hand model (MANO-convention
parameters: the open Anny hand or MANO from the user's files) and rendered by
:mod:`sesahand.render` in the record's own camera at the image's own size, in the configured
render style. Renders are cached on disk (``CACHE/ab/<sha256>.png`` + ``.json`` with the
rendered labels), keyed by the camera, the hand parameters, the hand model and the style, so
any change of labels renders again. The mirrored scene of every record is rendered too when
flips are on. All rendering happens once, in the main process, before training
(:meth:`ConditionCache.prepare`); data-loader workers only read files.

Augmentation, drawn per (seed, epoch, index) so any position of a run can be reproduced:

* horizontal flip: the image is mirrored; its hands become the mirrored hands
  (``sesahand.hands.base.mirror_params``: right <-> left, rotations and ``transl`` mirrored) in
  the camera with ``cx' = W - cx``; the condition is the render of that mirrored scene, so
  colours by side stay right.
* square crop of a random side (``crop_scale`` x the shorter side), placed so every hand box
  stays inside when it fits, then resized to ``resolution``: ``K`` is shifted and scaled,
  ``joints2d`` and ``box`` moved with it, joints outside the crop become invisible.

Samples carry the updated labels (``labels``) next to the model inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..camera import Camera
from ..hands.base import mirror_params
from ..hands.types import HandParams, HandScene
from ..io import atomic_path, to_float, to_uint8
from .config import AugmentConfig, DataConfig, SourceConfig
from .prompts import repeat_to_common_length, tokenize_prompt

log = logging.getLogger(__name__)

#: Version of the cache entry layout (part of every cache key).
CACHE_FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Batch entries that go to the model (``sesahand.train.model.training_loss``).
MODEL_KEYS = ("pixel_values", "conditioning", "input_ids", "token_weights", "hand_token_mask")
#: The caption's keys: C * 77 tokens, C chunks (:mod:`.prompts`).
TEXT_KEYS = ("input_ids", "token_weights", "hand_token_mask")


@dataclass(frozen=True)
class Record:
    """One training sample before augmentation.

    Attributes:
        name: where it comes from, for messages (``"freihand /data/FreiHAND #12"``).
        image: path of the RGB image.
        scene: hands (MANO-convention parameters, camera frame) and camera (K in pixels,
            width/height = the image's size).
        prompt: caption.
        hand_terms: extra hand words for AE's token set (from captions.jsonl).
    """

    name: str
    image: Path
    scene: HandScene
    prompt: str
    hand_terms: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------- labels

def scene_from_labels(labels: dict, where: str) -> HandScene:
    """The :class:`HandScene` of a labels dict (``labels.json`` of ``python -m sesahand render``
    with ``camera``, or a ``labels.jsonl`` record with ``K``/``width``/``height``).

    Raises:
        ValueError: missing or malformed camera / hand fields, naming ``where`` and the field.
    """
    try:
        cam = labels.get("camera", labels)
        camera = Camera(K=torch.tensor(cam["K"], dtype=torch.float32), width=cam["width"], height=cam["height"])
        hands = [HandParams(global_orient=h["global_orient"], hand_pose=h["hand_pose"], betas=h["betas"],
                            transl=h["transl"], side=h["side"]) for h in labels["hands"]]
    except KeyError as exc:
        raise ValueError(f"{where}: labels lack the field {exc.args[0]!r} (need camera K/width/height and "
                         "hands with side, global_orient, hand_pose, betas, transl)") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: bad labels: {exc}") from None
    if not hands:
        raise ValueError(f"{where}: labels have no hands; every training image needs at least one")
    return HandScene(hands=hands, camera=camera)


def flip_scene(scene: HandScene) -> HandScene:
    """The scene seen in the horizontally mirrored image (x -> W - x in pixels).

    Every hand is mirrored across the camera's yz-plane (:func:`mirror_params`: side swapped),
    and the principal point moves to ``cx' = W - cx`` (skew negated), so a camera-frame point
    (X, Y, Z) of the original projects to u while its mirror (-X, Y, Z) projects to W - u.
    """
    K = scene.camera.K.clone()
    K[0, 2] = scene.camera.width - K[0, 2]
    K[0, 1] = -K[0, 1]
    return HandScene(hands=[mirror_params(h) for h in scene.hands],
                     camera=replace(scene.camera, K=K))


def crop_labels(labels: dict, x0: int, y0: int, side: int, size: int) -> dict:
    """Labels of the square crop ``[x0, x0 + side) x [y0, y0 + side)`` resized to ``size``.

    Args:
        labels: a rendered frame dict (``RenderedHands.frame_dict``): ``camera`` and ``hands``
            with ``joints2d``, ``visible``, ``box`` (pixels, centres at +0.5).
        x0, y0, side: crop in pixels of the original image.
        size: output side in pixels.

    Returns: a new dict: ``K' = S (K - shift)`` with ``S = size / side``, joints2d and boxes
    moved the same way (boxes clipped to the crop, None if nothing is left), joints outside
    the crop marked invisible, camera width/height = size. 3D fields are unchanged.
    """
    s = size / side
    K = np.asarray(labels["camera"]["K"], dtype=np.float64)
    K = np.diag([s, s, 1.0]) @ (K - np.array([[0, 0, x0], [0, 0, y0], [0, 0, 0]]))
    out = dict(labels)
    out["camera"] = {"K": K.tolist(), "width": size, "height": size}
    hands = []
    for hand in labels["hands"]:
        hand = dict(hand)
        j = (np.asarray(hand["joints2d"], dtype=np.float64) - [x0, y0]) * s
        inside = (j >= 0).all(1) & (j < size).all(1)
        hand["joints2d"] = j.tolist()
        hand["visible"] = (np.asarray(hand["visible"], dtype=bool) & inside).tolist()
        if hand.get("box") is not None:
            b = (np.asarray(hand["box"], dtype=np.float64) - [x0, y0, x0, y0]) * s
            b = np.clip(b, 0, size)
            hand["box"] = b.tolist() if b[2] > b[0] and b[3] > b[1] else None
        hands.append(hand)
    out["hands"] = hands
    return out


def choose_crop(rng: np.random.Generator, width: int, height: int, boxes: Sequence[Sequence[float]],
                crop_scale: Sequence[float]) -> tuple[int, int, int]:
    """A random square crop ``(x0, y0, side)`` in pixels.

    ``side`` is drawn uniformly in ``crop_scale`` x min(width, height) and enlarged to hold the
    union of ``boxes`` (x0, y0, x1, y1) when that fits in the image; the crop is placed
    uniformly among the positions that keep that union inside (anywhere if none does).
    """
    short = min(width, height)
    lo, hi = crop_scale
    side = round(short * (lo + (hi - lo) * rng.random()))
    union = None
    if boxes:
        b = np.asarray(boxes, dtype=np.float64)
        union = (int(np.floor(b[:, 0].min())), int(np.floor(b[:, 1].min())),
                 int(np.ceil(b[:, 2].max())), int(np.ceil(b[:, 3].max())))
        side = max(side, min(short, max(union[2] - union[0], union[3] - union[1])))
    side = max(1, min(side, short))

    def place(extent: int, b0: int | None, b1: int | None) -> int:
        lo_, hi_ = 0, extent - side
        if b0 is not None and max(lo_, b1 - side) <= min(hi_, b0):
            lo_, hi_ = max(lo_, b1 - side), min(hi_, b0)
        return int(rng.integers(lo_, hi_ + 1))

    x0 = place(width, union and union[0], union and union[2])
    y0 = place(height, union and union[1], union and union[3])
    return x0, y0, side


# --------------------------------------------------------------------------------- sources

def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") \
            from None


class Captions:
    """Captions of one source from a ``captions.jsonl`` or a ``.txt`` file (see the module doc).

    Raises (on construction):
        FileNotFoundError: the file does not exist.
        ValueError: a JSONL line is not valid JSON or lacks ``image`` / ``prompt``.
    """

    def __init__(self, path: str | Path, field: str = "prompt"):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"captions file {self.path} does not exist")
        if field != "prompt" and self.path.suffix.lower() == ".txt":
            raise ValueError(f"captions file {self.path}: caption_field {field!r} needs a captions.jsonl "
                             "(a .txt file holds one caption per line); use caption_field: prompt")
        self.by_image: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.by_name: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.lines: list[str] | None = None
        if self.path.suffix.lower() == ".txt":
            self.lines = self.path.read_text(encoding="utf-8").splitlines()
            return
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    image, prompt = str(entry["image"]), str(entry[field])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.path} line {number}: expected a JSON object with 'image' and "
                                     f"{field!r} ({exc})") from None
                value = (prompt, tuple(entry.get("hand_terms") or ()))
                self.by_image[Path(image).as_posix()] = value
                self.by_name[Path(image).name] = value

    def get(self, relative_image: str, position: int) -> tuple[str, tuple[str, ...]] | None:
        """(prompt, hand_terms) of a record, by image path (relative to the source) or position."""
        if self.lines is not None:
            if position < len(self.lines) and self.lines[position].strip():
                return self.lines[position].strip(), ()
            return None
        return self.by_image.get(relative_image) or self.by_name.get(Path(relative_image).name)


def _caption(source: SourceConfig, captions: Captions | None, relative: str, position: int,
             own: str | None, own_terms: Sequence[str], name: str) -> tuple[str, tuple[str, ...]]:
    found = captions.get(relative, position) if captions is not None else None
    if found is not None:
        return found
    if own:
        return own, tuple(own_terms)
    if source.prompt:
        return source.prompt, ()
    raise ValueError(f"{name}: no caption (captions file: {source.captions or 'none'}); give the source a "
                     "'captions' file, a 'prompt' for records without one, or caption it with "
                     "`python -m sesahand caption`")


def _limit(items: list, source: SourceConfig) -> list:
    return items if source.limit is None else items[:source.limit]


def sesahand_records(source: SourceConfig) -> list[Record]:
    """Records of a pack dataset folder (``labels.jsonl``, :func:`sesahand.data.format.read_labels`)."""
    from ..data.format import read_labels

    root = Path(source.path)
    captions = Captions(source.captions, source.caption_field) if source.captions else None
    out = []
    for position, rec in enumerate(_limit(read_labels(root), source)):
        name = f"sesahand {root} #{rec['index']}"
        scene = scene_from_labels(rec, name)
        semantics = rec.get("semantics") or {}
        prompt, terms = _caption(source, captions, rec["image"], position, rec.get("prompt"),
                                 semantics.get("hand_terms") or (), name)
        out.append(Record(name, root / rec["image"], scene, prompt, terms))
    return out


def freihand_records(source: SourceConfig, model) -> list[Record]:
    """Records of a FreiHAND-style folder (see the module doc); ``model`` must be MANO."""
    from ..hands.poses import PoseSpec

    root = Path(source.path)
    Ks = _read_json(root / "training_K.json", "FreiHAND")
    mano = _read_json(root / "training_mano.json", "FreiHAND")
    if len(Ks) != len(mano):
        raise ValueError(f"FreiHAND {root}: training_K.json has {len(Ks)} entries but training_mano.json "
                         f"{len(mano)}; they must match one to one")
    rgb = root / "training" / "rgb"
    versions = 1
    while (rgb / f"{versions * len(Ks):08d}.jpg").exists():
        versions += 1
    count = versions * len(Ks) if source.limit is None else min(source.limit, versions * len(Ks))
    used = sorted({i % len(Ks) for i in range(count)})
    if getattr(model, "name", None) != "mano":
        raise ValueError("FreiHAND: its poses are relative to MANO's mean pose; set data.hand_model: mano "
                         "and data.mano_path")
    size = Image.open(rgb / f"{0:08d}.jpg").size[0] if (rgb / f"{0:08d}.jpg").exists() else 224
    spec = PoseSpec.from_freihand([mano[i] for i in used], [Ks[i] for i in used], size=size)
    dummy = Camera.default(size, size)
    scenes = dict(zip(used, spec.resolve(model, dummy)))
    captions = Captions(source.captions, source.caption_field) if source.captions else None
    out = []
    for i in range(count):
        relative = f"training/rgb/{i:08d}.jpg"
        name = f"freihand {root} #{i}"
        prompt, terms = _caption(source, captions, relative, i, None, (), name)
        out.append(Record(name, root / relative, scenes[i % len(Ks)], prompt, terms))
    return out


def folder_records(source: SourceConfig) -> list[Record]:
    """Records of a ``records`` folder: ``NAME.json`` + image + optional ``NAME.txt``."""
    root = Path(source.path)
    if not root.is_dir():
        raise FileNotFoundError(f"records folder {root} does not exist")
    captions = Captions(source.captions, source.caption_field) if source.captions else None
    out = []
    for position, labels_path in enumerate(_limit(sorted(root.glob("*.json")), source)):
        stem = labels_path.stem
        name = f"records {root} {stem}"
        images = [root / (stem + s) for s in IMAGE_SUFFIXES if (root / (stem + s)).exists()]
        image = images[0] if images else root / (stem + IMAGE_SUFFIXES[0])
        labels = _read_json(labels_path, name)
        scene = scene_from_labels(labels, name)
        txt = root / (stem + ".txt")
        own = txt.read_text(encoding="utf-8").strip() if txt.exists() else labels.get("prompt")
        prompt, terms = _caption(source, captions, image.name, position, own, (), name)
        out.append(Record(name, image, scene, prompt, terms))
    return out


def load_records(sources: Sequence[SourceConfig], model_factory: Callable[[], object],
                 cache_dir: str | Path | None = None, fit: bool = True) -> list[Record]:
    """All records of the configured sources, in order.

    ``model_factory()`` gives the hand model (needed by FreiHAND to resolve its poses, and by
    ``photos`` to fit them). ``cache_dir``: where ``photos`` keeps its fits (needed for that
    source); ``fit``: fit photos not fitted yet (:func:`~sesahand.train.photos.photo_records`).

    Raises:
        FileNotFoundError / ValueError: a missing folder or file, malformed labels or captions
            (naming the record or line).
    """
    records: list[Record] = []
    for source in sources:
        if source.kind == "sesahand":
            found = sesahand_records(source)
        elif source.kind == "freihand":
            found = freihand_records(source, model_factory())
        elif source.kind == "photos":
            from .photos import photo_records

            if cache_dir is None:
                raise ValueError(f"photos {source.path}: needs the cache folder to keep its fits")
            found = photo_records(source, model_factory(), cache_dir, fit=fit)
        else:
            found = folder_records(source)
        if not found:
            raise ValueError(f"data source {source.kind} {source.path}: no records found")
        log.info("%s %s: %d records", source.kind, source.path, len(found))
        records.extend(found)
    return records


def check_image(record: Record) -> None:
    """Check that the image exists and has the size its labels say (reads the header only).

    Raises:
        FileNotFoundError: the image is missing.
        ValueError: its size differs from the labels' camera width x height.
    """
    try:
        with Image.open(record.image) as im:
            size = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{record.name}: image {record.image} is missing") from None
    cam = record.scene.camera
    if size != (cam.width, cam.height):
        raise ValueError(f"{record.name}: image {record.image} is {size[0]}x{size[1]} but its labels say "
                         f"{cam.width}x{cam.height} (camera width/height, which K refers to); fix the labels "
                         "or the image")


# ---------------------------------------------------------------------------------- cache

def style_image(conditions, style: str) -> np.ndarray:
    """Frame 0 of a :class:`~sesahand.render.Conditions` in ``style`` as (H, W, 3) uint8 RGB."""
    maps = {"mesh": conditions.mesh, "depth": conditions.depth_image, "normal": conditions.normal,
            "pose": conditions.pose, "mask": conditions.mask}
    image = maps[style][0].detach().float().cpu()
    if image.ndim == 2:
        image = image[..., None].expand(*image.shape, 3)
    return to_uint8(image)


class ConditionCache:
    """Rendered condition images of scenes, on disk (see the module doc).

    Args:
        folder: cache folder (created when needed).
        hand_model: name of the hand model (``"anny"``/``"mano"``), part of the key.
        style: render style (:data:`sesahand.control.metadata.RENDER_STYLES`).
        model_factory: gives the hand model when something must be rendered.
    """

    def __init__(self, folder: str | Path, hand_model: str, style: str,
                 model_factory: Callable[[], object] | None = None):
        self.folder = Path(folder)
        self.hand_model = hand_model
        self.style = style
        self.model_factory = model_factory

    def key(self, scene: HandScene) -> str:
        """sha256 of the scene (camera + hand parameters), hand model, style and cache format."""
        text = json.dumps({"scene": scene.to_dict(), "hand_model": self.hand_model, "style": self.style,
                           "format": CACHE_FORMAT}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def paths(self, scene: HandScene) -> tuple[Path, Path]:
        """(image path, labels path) of a scene's entry."""
        key = self.key(scene)
        base = self.folder / key[:2] / key
        return base.with_suffix(".png"), base.with_suffix(".json")

    def prepare(self, records: Sequence[Record], flips: bool, backend: str = "auto",
                progress: bool = True) -> int:
        """Check every record's image and render what the cache lacks.

        Args:
            records: the records.
            flips: also render each record's mirrored scene.
            backend: renderer backend.
            progress: show a tqdm bar.

        Returns: the number of entries rendered.
        Raises: as :func:`check_image`; ValueError if a scene cannot be posed or rendered.
        """
        from tqdm.auto import tqdm

        from ..pipeline import render_scenes

        todo = []
        for record in records:
            check_image(record)
            for scene in (record.scene, flip_scene(record.scene)) if flips else (record.scene,):
                if not all(p.exists() for p in self.paths(scene)):
                    todo.append((record, scene))
        if not todo:
            return 0
        model = self.model_factory()
        for record, scene in tqdm(todo, desc="rendering conditions", disable=not progress):
            image_path, labels_path = self.paths(scene)
            try:
                conditions, rendered = render_scenes(model, [scene], backend=backend)
            except ValueError as exc:
                raise ValueError(f"{record.name}: cannot render its condition: {exc}") from None
            labels = rendered.frame_dict(0)
            with atomic_path(labels_path) as tmp:
                tmp.write_text(json.dumps(labels), encoding="utf-8")
            with atomic_path(image_path) as tmp:
                Image.fromarray(style_image(conditions, self.style), "RGB").save(tmp, format="PNG")
        return len(todo)

    def load(self, scene: HandScene) -> tuple[Image.Image, dict]:
        """(condition image RGB, rendered labels dict) of a scene.

        Raises: RuntimeError when the entry was never rendered (run :meth:`prepare` first).
        """
        image_path, labels_path = self.paths(scene)
        try:
            labels = json.loads(labels_path.read_text(encoding="utf-8"))
            with Image.open(image_path) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            raise RuntimeError(f"condition cache {self.folder} lacks {image_path.name}: "
                               "ConditionCache.prepare must run before loading") from None
        return image, labels


# -------------------------------------------------------------------------------- dataset

class EpochSampler(torch.utils.data.Sampler):
    """Shuffled order of ``n`` samples for one epoch, yielding ``(epoch, index)`` keys.

    The order depends only on (seed, epoch); ``set_epoch`` selects the epoch (accelerate's
    data loader calls it too).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter([(self.epoch, int(i)) for i in torch.randperm(self.n, generator=g)])


class HandControlDataset(torch.utils.data.Dataset):
    """Augmented (image, condition, prompt) samples of the records.

    Items are keyed ``(epoch, index)`` (or a plain ``index`` = epoch 0); the augmentation is
    drawn from (seed, epoch, index). An item is a dict:

    * ``pixel_values``: (3, S, S) float32 in [-1, 1], the image (S = resolution).
    * ``conditioning``: (3, S, S) float32 in [0, 1], the rendered condition.
    * ``input_ids``: (C * 77,) int64, ``token_weights``: (C * 77,) float32, ``hand_token_mask``:
      (C * 77,) bool: the caption's C chunks as ComfyUI's CLIP Text Encode tokenizes them
      (:mod:`.prompts`); the empty
      prompt with probability ``caption_dropout`` (drawn per item like the augmentation).
    * ``labels``: the rendered labels after flip and crop (camera K, hands with side, joints).
    * ``name``: the record's name.

    Raises (on access): FileNotFoundError / ValueError for a missing image or one whose size
    differs from its labels.
    """

    def __init__(self, records: Sequence[Record], cache: ConditionCache, tokenizer, resolution: int,
                 augment: AugmentConfig, seed: int, caption_dropout: float = 0.0):
        self.caption_dropout = caption_dropout
        self.records = list(records)
        self.cache = cache
        self.tokenizer = tokenizer
        self.vocab = {i: t for t, i in tokenizer.get_vocab().items()}
        self.resolution = resolution
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        flip = bool(rng.random() < self.augment.hflip)
        check_image(record)
        with Image.open(record.image) as im:
            image = im.convert("RGB")
        scene = record.scene
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            scene = flip_scene(scene)
        condition, labels = self.cache.load(scene)
        boxes = [h["box"] for h in labels["hands"] if h.get("box") is not None]
        x0, y0, side = choose_crop(rng, image.width, image.height, boxes, self.augment.crop_scale)
        S = self.resolution
        area = (x0, y0, x0 + side, y0 + side)
        image = image.resize((S, S), Image.Resampling.BICUBIC, box=area)
        condition = condition.resize((S, S), Image.Resampling.BILINEAR, box=area)
        # drawn after the crop, so a dropout setting leaves every other augmentation as it was
        dropped = self.caption_dropout > 0 and bool(rng.random() < self.caption_dropout)
        prompt, terms = ("", ()) if dropped else (record.prompt, record.hand_terms)
        ids, weights, mask = tokenize_prompt(self.tokenizer, self.vocab, prompt, terms)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        cond = to_float(np.asarray(condition)).permute(2, 0, 1)
        return {"pixel_values": pixels.contiguous(), "conditioning": cond.contiguous(), "input_ids": ids,
                "token_weights": weights, "hand_token_mask": mask,
                "labels": crop_labels(labels, x0, y0, side, S), "name": record.name}


def collate(items: Sequence[dict]) -> dict:
    """Stack items into the batch of :func:`sesahand.train.model.training_loss` (tensors with a
    leading batch axis B) plus ``labels`` and ``name`` lists. Captions of different chunk
    counts are repeated to a common length (:func:`.prompts.repeat_to_common_length`)."""
    batch = {k: (repeat_to_common_length if k in TEXT_KEYS else torch.stack)([it[k] for it in items])
             for k in MODEL_KEYS}
    batch["labels"] = [it["labels"] for it in items]
    batch["name"] = [it["name"] for it in items]
    return batch


def hand_model_factory(config: DataConfig) -> Callable[[], object]:
    """A function loading the configured hand model once (on first call)."""
    loaded = []

    def factory():
        if not loaded:
            from ..hands import load_hand_model

            loaded.append(load_hand_model(config.hand_model, mano_path=config.mano_path))
        return loaded[0]

    return factory


def build_dataset(config: DataConfig, style: str, tokenizer, seed: int, cache_dir: str | Path,
                  render: bool = True, progress: bool = True) -> HandControlDataset:
    """Records of every source, their conditions rendered into the cache, as a dataset.

    Args:
        config: the ``data`` section.
        style: render style of the conditions (``model.render_style``).
        tokenizer: the SD1.5 CLIP tokenizer.
        seed: augmentation seed.
        cache_dir: condition cache folder (``data.cache_dir`` or the run's default).
        render: check images and render missing conditions now (the main process does; other
            processes wait for it and then only read).
        progress: show progress bars.

    Raises: FileNotFoundError / ValueError for bad sources, records or images (naming them).
    """
    factory = hand_model_factory(config)
    records = load_records(config.sources, factory, cache_dir=cache_dir, fit=render)
    cache = ConditionCache(cache_dir, config.hand_model, style, factory)
    if render:
        count = cache.prepare(records, flips=config.augment.hflip > 0, progress=progress)
        log.info("conditions: %d rendered, %d records", count, len(records))
    return HandControlDataset(records, cache, tokenizer, config.resolution, config.augment, seed,
                              config.caption_dropout)
