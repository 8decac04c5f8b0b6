"""Pose sources: named presets, a seeded random sampler, and pose files (JSON, FreiHAND-style).

Every source becomes a :class:`PoseSpec`, which ``resolve`` turns into one
:class:`~sesahand.hands.types.HandScene` per frame for a given hand model and camera. Hands can
be placed by their image box (centre and larger side, in pixels); the translation is then
solved with the model's own mesh so the box lands where asked.

Presentation orientation: presets and the random sampler start from ``PRESENT_ORIENT``, which
turns MANO's rest hand so the fingers point up in the image and the palm faces the camera
(right hand: thumb on the image right). The pose-file format is documented by the JSON Schema
``data/pose.schema.json`` and in the README.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import limits
from ..safe_paths import read_local_file
from .anatomy import HandAngles, sample_angles
from .base import HandModel, mirror_rotvec
from .types import NUM_BETAS, SIDES, Camera, HandParams, HandScene

log = logging.getLogger(__name__)

#: Axis-angle taking MANO's rest frame (fingers -x, back +y, thumb +z) to the camera frame
#: with fingers up (-y), back away from the camera (+z) and thumb to the right (+x).
PRESENT_ORIENT = torch.tensor([1.0, 1.0, 1.0]) * (2 * math.pi / 3) / math.sqrt(3)

#: Default hand size for presets: the larger box side as a fraction of the smaller image side.
PRESET_BOX_FRACTION = 0.6


def _data_text(name: str) -> str:
    return resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def load_presets() -> dict[str, HandAngles]:
    """The built-in presets (``data/presets.json``), name -> anatomical angles (right hand)."""
    data = json.loads(_data_text("presets.json"))
    return {name: HandAngles.from_dict(entry["angles"], where=f"presets.json:{name}")
            for name, entry in data["presets"].items()}


PRESET_NAMES: tuple[str, ...] = tuple(load_presets())


@lru_cache(maxsize=1)
def pose_schema() -> dict:
    """The JSON Schema of pose files (``data/pose.schema.json``) with the limits of
    :mod:`sesahand.limits` filled in (largest image side, most frames and hands)."""
    schema = json.loads(_data_text("pose.schema.json"))
    schema["properties"]["frames"]["maxItems"] = limits.MAX_POSE_FRAMES
    camera = schema["$defs"]["camera"]["properties"]
    for side in ("width", "height"):
        camera[side].update(minimum=limits.MIN_IMAGE_SIDE, maximum=limits.MAX_IMAGE_SIDE,
                            multipleOf=limits.IMAGE_MULTIPLE)
    schema["$defs"]["frame"]["properties"]["hands"]["maxItems"] = limits.MAX_HANDS_PER_FRAME
    return schema


def _schema_problem(error) -> str:
    """What a schema violation means, built from the schema only: pose files may hold anything
    (a path typed into a node can name a file with secrets), so no value of the document is
    repeated (JSON Schema's own messages quote them)."""
    keyword, expected, instance = error.validator, error.validator_value, error.instance
    if keyword == "type":
        return f"expected {' or '.join(expected) if isinstance(expected, list) else expected}"
    if keyword == "enum":
        return f"expected one of {', '.join(map(json.dumps, expected))}"
    if keyword == "const":
        return f"expected {json.dumps(expected)}"
    if keyword == "required":
        missing = [k for k in expected if not isinstance(instance, dict) or k not in instance]
        return f"missing required field(s) {', '.join(missing)}"
    if keyword == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        return f"has a field that is not allowed here; allowed fields: {allowed}"
    if keyword in ("minItems", "maxItems"):
        return f"expected {'at least' if keyword == 'minItems' else 'at most'} {expected} entries"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                 "exclusiveMaximum": "less than", "multipleOf": "a multiple of"}
        return f"expected a number {words[keyword]} {expected}"
    if keyword == "not" and isinstance(instance, dict):
        pairs = [rule["required"] for rule in expected.get("anyOf", []) if "required" in rule
                 and all(k in instance for k in rule["required"])]
        if pairs:
            return f"give only one of {' and '.join(pairs[0])}"
    return f"does not match the pose schema ({keyword})"


def preset_hand_pose(name: str) -> torch.Tensor:
    """MANO ``hand_pose`` (45,) of a preset, right-hand convention. Raises ValueError if unknown."""
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return presets[name].to_hand_pose()


def place_hand(model: HandModel, params: HandParams, camera: Camera,
               center: Sequence[float], size: float) -> HandParams:
    """Solve ``transl`` so the hand's image box has the given centre and larger side.

    Args:
        model: the hand model whose mesh defines the box.
        params: the hand (its ``transl`` is replaced).
        camera: the image's camera.
        center: (2,) box centre in pixels.
        size: larger side of the box in pixels (> 0).

    Returns: ``params`` with the solved ``transl`` (metres, camera frame).
    Raises: ValueError for a non-positive size or non-finite centre.
    """
    center_t = torch.as_tensor(center, dtype=torch.float32)
    if center_t.shape != (2,) or not torch.isfinite(center_t).all():
        raise ValueError(f"box center: expected 2 finite pixel coordinates, got {center!r}")
    if not (isinstance(size, (int, float)) and math.isfinite(size) and size > 0):
        raise ValueError(f"box size: expected a positive number of pixels, got {size!r}")
    vertices = model([replace(params, transl=torch.zeros(3))])[0].vertices.double()
    K = camera.K.double()
    f = float(K[0, 0])
    centroid = vertices.mean(0)
    extent = float((vertices[:, :2].max(0).values - vertices[:, :2].min(0).values).max())
    depth = f * extent / size
    t = torch.tensor([-centroid[0], -centroid[1], depth - centroid[2]], dtype=torch.float64)
    for _ in range(8):
        uvw = (vertices + t) @ K.T
        uv = uvw[:, :2] / uvw[:, 2:].clamp_min(1e-6)
        lo, hi = uv.min(0).values, uv.max(0).values
        measured = float((hi - lo).max())
        depth = float((centroid + t)[2])
        new_depth = max(depth * measured / size, float(vertices[:, 2].max() - vertices[:, 2].min()) + 0.05)
        t[2] += new_depth - depth
        box_center = (lo + hi) / 2
        t[0] += (center_t[0] - box_center[0]) * new_depth / f
        t[1] += (center_t[1] - box_center[1]) * new_depth / float(K[1, 1])
    return replace(params, transl=t.float())


def _frame_generator(seed: int, frame: int) -> torch.Generator:
    """Independent stream per (seed, frame): frame i is the same whatever the batch size."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, frame]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


@dataclass(frozen=True)
class OrientationRanges:
    """Random global orientation, in degrees, applied on top of ``PRESENT_ORIENT``.

    ``yaw`` turns about the image's vertical axis (180 shows the back of the hand), ``pitch``
    tilts about the horizontal axis, ``roll`` spins in the image plane.
    """

    yaw: tuple[float, float] = (-180.0, 180.0)
    pitch: tuple[float, float] = (-45.0, 45.0)
    roll: tuple[float, float] = (-60.0, 60.0)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Axis-angle (3,) in the camera frame: R = R_roll(z) R_pitch(x) R_yaw(y) R_present."""
        import roma

        def draw(lo_hi):
            lo, hi = lo_hi
            return math.radians(lo + (hi - lo) * torch.rand((), generator=generator).item())

        yaw, pitch, roll = draw(self.yaw), draw(self.pitch), draw(self.roll)
        R = (roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, roll]))
             @ roma.rotvec_to_rotmat(torch.tensor([pitch, 0.0, 0.0]))
             @ roma.rotvec_to_rotmat(torch.tensor([0.0, yaw, 0.0]))
             @ roma.rotvec_to_rotmat(PRESENT_ORIENT))
        return roma.rotmat_to_rotvec(R)


@dataclass(frozen=True)
class _HandEntry:
    """One hand of a pose file before it meets a hand model (see the schema for fields)."""

    side: str
    where: str
    global_orient: torch.Tensor | None = None
    hand_pose: torch.Tensor | None = None
    hand_pose_pca: torch.Tensor | None = None
    preset: str | None = None
    mano61: torch.Tensor | None = None
    betas: torch.Tensor | None = None
    transl: torch.Tensor | None = None
    box: tuple[tuple[float, float], float] | None = None
    elbow_flexion: float | None = None

    def resolve(self, model: HandModel, camera: Camera) -> HandParams:
        side = self.side
        global_orient = self.global_orient
        hand_pose = self.hand_pose
        betas, transl = self.betas, self.transl
        try:
            if self.preset is not None:
                hand_pose = preset_hand_pose(self.preset)
                if side == "left":
                    hand_pose = mirror_rotvec(hand_pose)
            if self.hand_pose_pca is not None:
                hand_pose = self._mano_only(model, "hand_pose_pca").pca_to_hand_pose(self.hand_pose_pca, side)
            if self.mano61 is not None:
                mano = self._mano_only(model, "mano61")
                v = self.mano61
                global_orient, betas, transl = v[:3], v[48:58], v[58:61]
                hand_pose = v[3:48] + mano.hands_mean(side)
            if global_orient is None:
                global_orient = PRESENT_ORIENT if side == "right" else mirror_rotvec(PRESENT_ORIENT)
            params = HandParams.create(side, global_orient=global_orient, hand_pose=hand_pose,
                                       betas=betas, transl=transl)
            if self.box is not None:
                params = place_hand(model, params, camera, *self.box)
        except ValueError as exc:
            raise ValueError(f"{self.where}: {exc}") from None
        return params

    def _mano_only(self, model: HandModel, what: str):
        if model.name != "mano":
            raise ValueError(f"{what} needs the MANO hand model (its PCA basis and mean pose); "
                             "choose hand model 'mano' and provide MANO_RIGHT.pkl / MANO_LEFT.pkl")
        return model


def _parse_hand(data: dict, where: str) -> _HandEntry:
    vec = {k: torch.tensor(data[k], dtype=torch.float32)
           for k in ("global_orient", "hand_pose", "hand_pose_pca", "mano61", "betas", "transl") if k in data}
    if "preset" in data and data["preset"] not in PRESET_NAMES:
        raise ValueError(f"{where}/preset: unknown preset; choose one of {', '.join(PRESET_NAMES)}")
    box = None
    if "box" in data:
        box = (tuple(data["box"]["center"]), float(data["box"]["size"]))
        if not all(math.isfinite(v) for v in (*box[0], box[1])):
            raise ValueError(f"{where}/box: contains NaN or infinite values")
    return _HandEntry(side=data["side"], where=where, preset=data.get("preset"), box=box,
                      elbow_flexion=data.get("elbow_flexion"), **vec)


def _camera_from_json(data: dict, where: str) -> Camera:
    # The schema has checked the size against sesahand.limits; K's values are not repeated.
    try:
        return Camera(K=torch.tensor(data["K"], dtype=torch.float32), width=data["width"], height=data["height"])
    except ValueError:
        raise ValueError(f"{where}/K: expected a finite 3x3 matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                         "with positive focal lengths") from None


def parse_pose_document(document) -> list[tuple[Camera | None, list[_HandEntry]]]:
    """Validate a decoded pose file against the schema and parse its frames.

    Raises:
        ValueError: the first schema violation, with its JSON path (e.g. ``frames/0/hands/1/
            hand_pose``) and what was expected (never the value found); or non-finite numbers.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(pose_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"{path}: {_schema_problem(error)}")
    frames = []
    for i, frame in enumerate(document["frames"]):
        where = f"frames/{i}"
        camera = _camera_from_json(frame["camera"], f"{where}/camera") if "camera" in frame else None
        hands = [_parse_hand(h, f"{where}/hands/{j}") for j, h in enumerate(frame["hands"])]
        for hand in hands:
            for name, value in vars(hand).items():
                if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                    raise ValueError(f"{hand.where}/{name}: contains NaN or infinite values")
        frames.append((camera, hands))
    return frames


@dataclass(frozen=True)
class PoseSpec:
    """How to make the hands of each frame; ``resolve`` produces the scenes.

    Build one with :meth:`preset`, :meth:`random`, :meth:`from_json` or :meth:`from_freihand`.
    """

    kind: str
    preset_name: str | None = None
    side: str = "right"
    seed: int = 0
    num_hands: int = 1
    box_px: tuple[float, float] = (160.0, 320.0)
    orientation: OrientationRanges = OrientationRanges()
    frames: tuple = field(default=(), repr=False)

    @classmethod
    def preset(cls, name: str, side: str = "right") -> "PoseSpec":
        """A named preset (see ``PRESET_NAMES``), palm to the camera, centred, 60% of the frame."""
        if name not in PRESET_NAMES:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
        if side not in SIDES:
            raise ValueError(f"side: expected 'right' or 'left', got {side!r}")
        return cls(kind="preset", preset_name=name, side=side)

    @classmethod
    def random(cls, seed: int, num_hands: int = 1, box_px: Sequence[float] = (160.0, 320.0),
               side: str = "right", orientation: OrientationRanges = OrientationRanges()) -> "PoseSpec":
        """Seeded random hands.

        Args:
            seed: any integer; frame i of a batch depends only on (seed, i).
            num_hands: 1 (of ``side``) or 2 (a right and a left hand, side by side).
            box_px: (min, max) of the hand box's larger side, in pixels.
            side: side of a single hand, ``"right"`` or ``"left"``.
            orientation: ranges of the random global orientation.

        Articulation: the MANO PCA prior when the model provides ``sample_hand_pose`` (MANO),
        otherwise :func:`~sesahand.hands.anatomy.sample_angles` within anatomical limits.
        """
        if num_hands not in (1, 2):
            raise ValueError(f"num_hands: expected 1 or 2, got {num_hands!r}")
        lo, hi = (float(b) for b in box_px)
        if not (0 < lo <= hi):
            raise ValueError(f"box_px: expected 0 < min <= max pixels, got {tuple(box_px)}")
        if side not in SIDES:
            raise ValueError(f"side: expected 'right' or 'left', got {side!r}")
        return cls(kind="random", seed=int(seed), num_hands=num_hands, box_px=(lo, hi), side=side,
                   orientation=orientation)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "PoseSpec":
        """A pose file: a path to a ``.json`` file, or the JSON text itself (starting with ``{``).

        The path is the caller's own (CLI, scripts): any regular file of at most
        ``limits.MAX_POSE_FILE_BYTES``. Paths from untrusted users (node widgets) go through
        :mod:`sesahand.safe_paths` first, then :meth:`parse`.

        Raises:
            ValueError: unreadable, non-regular or too large file, or see :meth:`parse`.
        """
        text = str(text_or_path)
        if text.lstrip().startswith("{"):
            return cls.parse(text)
        path = Path(text).expanduser()
        return cls.parse(read_local_file(path, what="pose file", max_bytes=limits.MAX_POSE_FILE_BYTES),
                         what=f"pose file {path.name}")

    @classmethod
    def parse(cls, text: str | bytes, what: str = "pose JSON") -> "PoseSpec":
        """A pose document from its JSON text (UTF-8 bytes or str).

        Args:
            text: at most ``limits.MAX_POSE_FILE_BYTES`` bytes of JSON (see the schema).
            what: where it came from, for messages (``"pose_json"``, ``"pose file x.json"``).

        Raises:
            ValueError: too long, not UTF-8, malformed JSON (line and column), or a schema
                violation naming the field; messages never repeat the document's values.
        """
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
        if size > limits.MAX_POSE_FILE_BYTES:
            raise ValueError(f"{what}: {size} bytes, more than the limit of {limits.MAX_POSE_FILE_BYTES} "
                             "bytes; split it into several files")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{what}: not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is malformed at line {exc.lineno} column {exc.colno}: "
                             f"{exc.msg} (not valid JSON)") from None
        except RecursionError:
            raise ValueError(f"{what} is nested too deeply to be a pose file") from None
        try:
            frames = parse_pose_document(document)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        return cls(kind="json", frames=tuple(frames))

    @classmethod
    def from_freihand(cls, mano: Sequence, K: Sequence, size: int = 224, side: str = "right") -> "PoseSpec":
        """FreiHAND-style annotations: per sample a 61-vector and its 3x3 ``K``.

        Args:
            mano: N entries of 61 numbers (``training_mano.json`` rows; [[...]] nesting allowed):
                3 global_orient + 45 hand_pose relative to MANO's mean pose + 10 betas + 3 transl.
            K: N 3x3 intrinsics (``training_K.json``).
            size: image side in pixels (FreiHAND: 224).
            side: FreiHAND hands are right hands.
        Needs the MANO hand model at ``resolve`` time (the mean pose comes from MANO).
        """
        mano_t = [np.asarray(m, dtype=np.float64).reshape(-1) for m in mano]
        if len(mano_t) != len(K):
            raise ValueError(f"FreiHAND: {len(mano_t)} MANO vectors but {len(K)} K matrices; "
                             "give one K per sample")
        frames = {"frames": [
            {"camera": {"K": np.asarray(k, dtype=np.float64).tolist(), "width": size, "height": size},
             "hands": [{"side": side, "mano61": m.tolist()}]} for m, k in zip(mano_t, K)]}
        return cls(kind="json", frames=tuple(parse_pose_document(frames)))

    def resolve(self, model: HandModel, camera: Camera, num_frames: int | None = None) -> list[HandScene]:
        """The scenes to render.

        Args:
            model: hand model (needed to place hands by their box and for MANO-only fields).
            camera: camera for frames that do not carry their own.
            num_frames: frames to produce; None = the spec's own count (1, or a file's frames).
                A pose file with fewer frames is repeated cyclically.

        Raises:
            ValueError: frames of different image sizes, or a field the model cannot honour.
        """
        if self.kind == "json":
            n = len(self.frames) if num_frames is None else num_frames
            scenes = []
            for i in range(n):
                cam, hands = self.frames[i % len(self.frames)]
                cam = cam or camera
                scenes.append(HandScene(hands=[h.resolve(model, cam) for h in hands], camera=cam,
                                        elbow_flexion=[h.elbow_flexion for h in hands]))
            sizes = {(s.camera.width, s.camera.height) for s in scenes}
            if len(sizes) > 1:
                raise ValueError(f"pose file frames have different image sizes {sorted(sizes)}; "
                                 "a batch needs one size: split the file or give equal sizes")
            return scenes
        n = 1 if num_frames is None else num_frames
        if self.kind == "preset":
            size = PRESET_BOX_FRACTION * min(camera.width, camera.height)
            entry = _HandEntry(side=self.side, where=f"preset {self.preset_name}", preset=self.preset_name,
                               box=((camera.width / 2, camera.height / 2), size))
            hand = entry.resolve(model, camera)
            return [HandScene(hands=[hand], camera=camera) for _ in range(n)]
        return [self._random_scene(model, camera, i) for i in range(n)]

    def _random_scene(self, model: HandModel, camera: Camera, frame: int) -> HandScene:
        g = _frame_generator(self.seed, frame)
        sides = [self.side] if self.num_hands == 1 else ["right", "left"]
        hands = []
        for k, side in enumerate(sides):
            sampler = getattr(model, "sample_hand_pose", None)
            if sampler is not None:
                hand_pose = sampler(g, side)
            else:
                hand_pose = sample_angles(g).to_hand_pose()
                if side == "left":
                    hand_pose = mirror_rotvec(hand_pose)
            orient = self.orientation.sample(g)
            if side == "left":
                orient = mirror_rotvec(orient)
            lo, hi = self.box_px
            size = min(lo + (hi - lo) * torch.rand((), generator=g).item(),
                       0.95 * min(camera.height, camera.width / len(sides)))
            # One hand anywhere; two hands in the left and right halves (a right hand seen
            # palm-on appears on the image's left).
            x0, x1 = k * camera.width / len(sides), (k + 1) * camera.width / len(sides)
            cx = x0 + size / 2 + (x1 - x0 - size) * torch.rand((), generator=g).item()
            cy = size / 2 + (camera.height - size) * torch.rand((), generator=g).item()
            params = HandParams.create(side, global_orient=orient, hand_pose=hand_pose,
                                       betas=torch.zeros(NUM_BETAS))
            hands.append(place_hand(model, params, camera, (cx, cy), size))
        return HandScene(hands=hands, camera=camera)
