"""Hands room nodes: choose the hand model and side, describe the hands to render."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import folder_paths
from comfy_api.latest import io

from ..sesahand import limits
from ..sesahand.hands import PRESET_NAMES, HandModel, PoseSpec, load_hand_model
from ..sesahand.hands.safe_pickle import MANO_DOWNLOAD
from ..sesahand.camera import Camera
from ..sesahand.hands.types import SIDES, HandScene
from ..sesahand.safe_paths import PathRefused, read_input_file, resolve_input_file

#: Hand model combo label -> ``load_hand_model`` name.
MODEL_CHOICES = {"anny (open)": "anny", "mano": "mano"}
POSE_MODES = ("preset", "random", "json")

_LOADED: dict[tuple[str, str], HandModel] = {}


def cached_hand_model(name: str, path: str) -> HandModel:
    """The hand model ``name`` loaded from ``path`` (Anny: cache folder; MANO: model folder),
    loaded once per process and shared by every node."""
    key = (name, path)
    if key not in _LOADED:
        if name == "anny":
            _LOADED[key] = load_hand_model("anny", cache_dir=path)
        else:
            _LOADED[key] = load_hand_model("mano", mano_path=path)
    return _LOADED[key]


@dataclass(frozen=True)
class HandModelChoice:
    """Value of ``SESAHAND_HAND_MODEL``: a loaded hand model and its default side.

    The side applies to preset poses and to a single random hand; two random hands are always
    a right and a left one, and pose files name the side of every hand.
    """

    model: HandModel
    side: str

    def resolve(self, pose: PoseSpec, camera: Camera, num_frames: int) -> list[HandScene]:
        """The ``num_frames`` scenes of ``pose`` posed with this model and side.

        Raises: ValueError when a pose file holds more frames than ``num_frames`` (they would
        be left out silently; fewer frames repeat cyclically)."""
        if pose.kind == "json" and len(pose.frames) > num_frames:
            raise ValueError(f"the pose file has {len(pose.frames)} frames but batch_size is {num_frames}; "
                             f"set batch_size to {len(pose.frames)} (at most {limits.MAX_BATCH}) or split "
                             "the file, so that no frame is left out")
        return replace(pose, side=self.side).resolve(self.model, camera, num_frames)


HandModelType = io.Custom("SESAHAND_HAND_MODEL")
#: Value: :class:`sesahand.hands.PoseSpec`.
PoseType = io.Custom("SESAHAND_POSE")


#: The Hand Model node's ``mano_file`` choice that names no file (always first in the list, so
#: an empty models/mano folder shows a choice instead of nothing).
NO_MANO_FILE = "none"


def _no_file(mano_file) -> bool:
    """True for the ``mano_file`` values that name no file: ``none``, empty (older workflows)."""
    return mano_file in (None, "", NO_MANO_FILE)


def _mano_missing_message() -> str:
    folder = folder_paths.get_folder_paths("mano")[0]
    return (f"no MANO file chosen: put MANO_RIGHT.pkl / MANO_LEFT.pkl (from {MANO_DOWNLOAD}, "
            f"free registration, non-commercial licence) in {folder} and refresh, or choose "
            "'anny (open)'")


class SesaHandHandModel(io.ComfyNode):
    """Load the hand model (open Anny hand or the user's MANO) and choose the default side."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandModel",
            display_name="SesaHand Hand Model",
            category="SesaHand/hands",
            description="The 3D hand model that turns MANO-convention pose parameters into "
                        "meshes. 'anny (open)' needs no licence (built once, 1-3 minutes, then "
                        "cached in models/sesahand); 'mano' uses your MANO files.",
            inputs=[
                io.Combo.Input("model", options=list(MODEL_CHOICES), default="anny (open)",
                               tooltip="anny (open): NAVER's Anny hand, Apache-2.0 / CC0, works "
                                       "out of the box. mano: the MANO model from your own files "
                                       "(non-commercial licence; needs the smplx package)."),
                io.Combo.Input("side", options=list(SIDES), default="right",
                               tooltip="Side of preset hands and of a single random hand. Two "
                                       "random hands are a right and a left one; pose JSON names "
                                       "each hand's side."),
                io.Combo.Input("mano_file", options=[NO_MANO_FILE, *folder_paths.get_filename_list("mano")],
                               default=NO_MANO_FILE, optional=True,
                               tooltip="With model mano: a MANO_RIGHT / MANO_LEFT file in "
                                       "models/mano. Both sides found in its folder are loaded. "
                                       "'none' (always offered, also with an empty folder): "
                                       "no MANO file, for the open anny hand."),
            ],
            outputs=[HandModelType.Output("hand_model", display_name="hand_model",
                                          tooltip="The loaded model and its side.")],
        )

    @classmethod
    def validate_inputs(cls, model=None, mano_file=None):
        if model is not None and model not in MODEL_CHOICES:
            return f"model {model!r} is unknown; choose one of {list(MODEL_CHOICES)}"
        if model == "mano" and mano_file not in folder_paths.get_filename_list("mano"):
            return _mano_missing_message() if _no_file(mano_file) else \
                f"MANO file {mano_file!r} is not in the mano model folder; choose one from the list"
        return True

    @classmethod
    def execute(cls, model: str, side: str, mano_file: str = "") -> io.NodeOutput:
        name = MODEL_CHOICES[model]
        if name == "anny":
            path = folder_paths.get_folder_paths("sesahand")[0]
        elif _no_file(mano_file):
            raise ValueError(_mano_missing_message())
        else:
            path = os.path.dirname(folder_paths.get_full_path_or_raise("mano", mano_file))
        return io.NodeOutput(HandModelChoice(model=cached_hand_model(name, path), side=side))


def _pose_spec(pose_json: str) -> PoseSpec:
    """The pose of the ``pose_json`` input: JSON text (starting with ``{``), or the name of a
    file inside ComfyUI's input folder read by the rule of :mod:`sesahand.safe_paths` (no path
    outside it, no links out, regular files of at most ``limits.MAX_POSE_FILE_BYTES``).

    Raises: ValueError naming ``pose_json`` (never repeating the file's contents)."""
    if pose_json.lstrip().startswith("{"):
        return PoseSpec.parse(pose_json, what="pose_json")
    data = read_input_file(pose_json, [folder_paths.get_input_directory()], what="pose_json",
                           max_bytes=limits.MAX_POSE_FILE_BYTES)
    return PoseSpec.parse(data, what=f"pose_json file {pose_json.strip()!r}")


class SesaHandHandPose(io.ComfyNode):
    """Describe the hands to render: a preset, seeded random hands, or a pose JSON."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandPose",
            display_name="SesaHand Hand Pose",
            category="SesaHand/hands",
            description="Which hands to render and how they are posed and placed. Only the "
                        "inputs of the chosen mode are used.",
            inputs=[
                io.Combo.Input("mode", options=list(POSE_MODES), default="preset",
                               tooltip="preset: a named pose, palm to the camera, centred. "
                                       "random: seeded random poses, a new one per image of the "
                                       "batch. json: a pose file (see the README / pose schema)."),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default=PRESET_NAMES[0],
                               tooltip="mode preset: the pose."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True,
                             tooltip="mode random: the seed; image i of a batch depends only on "
                                     "the seed and i."),
                io.Int.Input("num_hands", default=1, min=1, max=2,
                             tooltip="mode random: 1 hand (of the hand model's side) or 2 (a "
                                     "right and a left hand, side by side)."),
                io.Int.Input("box_min", default=160, min=8, max=limits.MAX_IMAGE_SIDE,
                             tooltip="mode random: smallest hand size, the larger side of the "
                                     "hand's image box in pixels."),
                io.Int.Input("box_max", default=320, min=8, max=limits.MAX_IMAGE_SIDE,
                             tooltip="mode random: largest hand size in pixels (>= box_min)."),
                io.String.Input("pose_json", multiline=True, default="",
                                placeholder='{"frames": [{"hands": [{"side": "right", '
                                            '"preset": "fist"}]}]}  or a path to a .json file',
                                tooltip="mode json: the pose JSON itself, or the name of a .json "
                                        "file inside ComfyUI's input folder (paths outside it are "
                                        f"refused; at most {limits.MAX_POSE_FILE_BYTES // 2**20} MiB)."),
            ],
            outputs=[PoseType.Output("pose", display_name="pose",
                                     tooltip="The pose description, posed at render time.")],
        )

    @classmethod
    def validate_inputs(cls, mode=None, box_min=None, box_max=None, pose_json=None):
        if mode is not None and mode not in POSE_MODES:
            return f"mode {str(mode)[:40]!r} is unknown; choose one of {list(POSE_MODES)}"
        for name, value in (("box_min", box_min), ("box_max", box_max)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                return f"{name} {str(value)[:40]!r} is not a whole number of pixels; give an integer such as 160"
        if mode == "random" and box_min is not None and box_max is not None \
                and not 8 <= box_min <= box_max <= limits.MAX_IMAGE_SIDE:
            return (f"box sizes must satisfy 8 <= box_min <= box_max <= {limits.MAX_IMAGE_SIDE} pixels, "
                    f"got box_min {box_min}, box_max {box_max}")
        if mode == "json" and pose_json is not None:
            try:
                _pose_spec(pose_json)
            except ValueError as exc:
                return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, mode=None, pose_json=None, **kwargs):
        # A pose file may change on disk under the same name: run again when it does.
        if mode == "json" and pose_json is not None and not pose_json.lstrip().startswith("{"):
            try:
                path = resolve_input_file(pose_json, [folder_paths.get_input_directory()], what="pose_json",
                                          max_bytes=limits.MAX_POSE_FILE_BYTES)
            except PathRefused:
                return ""
            info = path.stat()
            return f"{info.st_mtime_ns}:{info.st_size}"
        return ""

    @classmethod
    def execute(cls, mode: str, preset: str, seed: int, num_hands: int, box_min: int, box_max: int,
                pose_json: str) -> io.NodeOutput:
        if mode == "preset":
            spec = PoseSpec.preset(preset)
        elif mode == "random":
            spec = PoseSpec.random(seed, num_hands=num_hands, box_px=(box_min, box_max))
        else:
            spec = _pose_spec(pose_json)
        return io.NodeOutput(spec)
