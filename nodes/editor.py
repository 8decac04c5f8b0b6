"""The 3D hand-pose editor: its node, and the routes that serve it the pack's hand meshes.

The browser side is ``js/hand_pose_editor.js``; three.js is vendored in ``web_vendor/three``
(``tools/vendor_three.py``) and served from here, outside ``js/`` (ComfyUI loads every ``.js``
under ``WEB_DIRECTORY`` as an extension).

The editor's state is anatomical (what people pose): per hand its side, the joint angles of
``sesahand.hands.anatomy`` (degrees, within ``LIMITS``), a wrist orientation as yaw / pitch /
roll on top of the presentation orientation (degrees, as ``OrientationRanges``), the image
box (centre and larger side in pixels, as pose files place hands) and optional ``betas``; plus
the camera (image size and horizontal field of view). Every conversion happens here, in the
library's own code: ``POST /sesahand/editor/resolve`` turns a state into the pack's pose JSON
(``sesahand/hands/data/pose.schema.json``) and the posed meshes of exactly that JSON, through
the same path SesaHand Render Conditions takes, so the preview and the rendered maps agree;
``POST /sesahand/editor/parse`` turns pose JSON back into a state (joint angles decomposed
from ``hand_pose``, out-of-limit angles clamped and listed).

Request data is untrusted: bodies are size-capped (``MAX_BODY_BYTES``), every field is
checked, model names come from fixed lists, MANO files only by a name ComfyUI lists, and no
path from the client is ever opened (pose JSON must be the JSON text itself).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io
from scipy.spatial.transform import Rotation

from ..sesahand import limits
from ..sesahand.hands import PoseSpec
from ..sesahand.hands.anatomy import (
    FINGERS,
    LIMITS,
    MANO_FINGER_SLOTS,
    PALM_NORMAL,
    THUMB_DIRECTIONS,
    THUMB_PRONATION_DEG,
    HandAngles,
)
from ..sesahand.hands.base import mirror_rotvec
from ..sesahand.hands.poses import PRESENT_ORIENT, PRESET_BOX_FRACTION, load_presets, parse_pose_document
from ..sesahand.camera import Camera
from ..sesahand.hands.types import SIDES
from .hands import MODEL_CHOICES, PoseType, SesaHandHandModel

log = logging.getLogger(__name__)

#: Largest request body the editor routes accept (a pose of 8 hands is about 10 KB).
MAX_BODY_BYTES = 64 * 1024
#: Hands one editor state may hold (the schema allows 8 per frame; the editor poses 1 or 2).
MAX_HANDS = 2
MAX_IMAGE_SIDE = limits.MAX_IMAGE_SIDE
FOV_RANGE = (limits.MIN_FOV_DEG, limits.MAX_FOV_DEG)
ORIENT_RANGE = (-180.0, 180.0)
VENDOR_DIR = Path(__file__).resolve().parents[1] / "web_vendor" / "three"
#: The only files the vendor route serves (name -> content type).
VENDOR_FILES = {"three.module.js": "text/javascript", "three.core.js": "text/javascript",
                "OrbitControls.js": "text/javascript", "LICENSE": "text/plain"}
#: Joint angle names per finger, in slider order.
JOINTS = {**{f: ("mcp", "pip", "dip", "spread") for f in FINGERS}, "thumb": ("abduct", "cross", "mcp", "ip")}
#: Decomposition residual (degrees) above which a hand_pose counts as not expressible in angles.
RESIDUAL_DEG = 0.5
#: Angles this close beyond a limit (degrees; float32 round-off of a pose written at its
#: limit) are set to the limit without a "clamped" message.
LIMIT_TOLERANCE_DEG = 1e-3
#: Decimals (degrees) kept of angles decomposed from hand_pose.
ANGLE_DECIMALS = 4

_MODEL_LOCK = threading.Lock()


class EditorInputError(ValueError):
    """Bad editor input; the message says what was wrong and is safe to show."""


def limit(finger: str, joint: str) -> tuple[float, float]:
    """The anatomical range (degrees) of one joint angle."""
    return LIMITS[f"thumb_{joint}" if finger == "thumb" else joint]


def default_state(side: str = "right", preset: str = "open_palm") -> dict:
    """A new editor state: one hand of ``side`` in ``preset``, centred in a 512 x 512 image."""
    size = 512
    return {"camera": {"width": size, "height": size, "fov": 40.0},
            "hands": [{"side": side, "angles": preset_angles(preset), "orient": [0.0, 0.0, 0.0],
                       "box": {"center": [size / 2, size / 2], "size": PRESET_BOX_FRACTION * size}}]}


def preset_angles(name: str) -> dict:
    """Full joint-angle table of a preset (every joint present, degrees)."""
    angles = load_presets()[name]
    return {finger: {j: float(getattr(getattr(angles, finger), j)) for j in joints}
            for finger, joints in JOINTS.items()}


# ---------------------------------------------------------------------------------------------
# Editor state checks
# ---------------------------------------------------------------------------------------------

def _number(value, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EditorInputError(f"{where}: expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise EditorInputError(f"{where}: {value} is outside [{lo}, {hi}]")
    return float(value)


def _object(value, where: str, keys: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise EditorInputError(f"{where}: expected an object")
    unknown, missing = set(value) - keys, set(required) - set(value)
    if unknown:
        raise EditorInputError(f"{where}: unknown field(s) {sorted(unknown)[:5]}")
    if missing:
        raise EditorInputError(f"{where}: missing field(s) {sorted(missing)}")
    return value


def check_state(state) -> tuple[dict, list[str]]:
    """Validate an editor state; clamp joint angles to the anatomical limits.

    Returns: (the checked state with every joint angle present, messages naming each clamped
    angle). Raises: EditorInputError naming the first malformed field.
    """
    state = _object(state, "state", {"camera", "hands"}, {"camera", "hands"})
    cam = _object(state["camera"], "state.camera", {"width", "height", "fov"}, {"width", "height", "fov"})
    try:
        width, height = limits.check_image_size(cam["width"], cam["height"], "state.camera")
    except ValueError as exc:
        raise EditorInputError(str(exc)) from None
    camera = {"width": width, "height": height}
    camera["fov"] = _number(cam["fov"], "state.camera.fov", *FOV_RANGE)
    hands_in = state["hands"]
    if not isinstance(hands_in, list) or not 1 <= len(hands_in) <= MAX_HANDS:
        raise EditorInputError(f"state.hands: expected a list of 1 to {MAX_HANDS} hands")
    clamped, hands = [], []
    for i, hand in enumerate(hands_in):
        where = f"state.hands[{i}]"
        hand = _object(hand, where, {"side", "angles", "orient", "box", "betas"},
                       {"side", "angles", "orient", "box"})
        if hand["side"] not in SIDES:
            raise EditorInputError(f"{where}.side: expected 'right' or 'left'")
        angles_in = _object(hand["angles"], f"{where}.angles", set(JOINTS))
        angles = {}
        for finger, joints in JOINTS.items():
            values = _object(angles_in.get(finger, {}), f"{where}.angles.{finger}", set(joints))
            angles[finger] = {}
            for joint in joints:
                v = _number(values.get(joint, 0.0), f"{where}.angles.{finger}.{joint}")
                lo, hi = limit(finger, joint)
                if lo - LIMIT_TOLERANCE_DEG <= v <= hi + LIMIT_TOLERANCE_DEG:
                    v = min(max(v, lo), hi)  # float round-off of a pose at its limit
                if not lo <= v <= hi:
                    clamped.append(f"hand {i + 1} ({hand['side']}) {finger} {joint}: {v:.1f} -> "
                                   f"{min(max(v, lo), hi):.1f} degrees (limits {lo:g}..{hi:g})")
                    v = min(max(v, lo), hi)
                angles[finger][joint] = v
        orient = hand["orient"]
        if not isinstance(orient, list) or len(orient) != 3:
            raise EditorInputError(f"{where}.orient: expected [yaw, pitch, roll] in degrees")
        orient = [_number(v, f"{where}.orient[{k}]", *ORIENT_RANGE) for k, v in enumerate(orient)]
        box = _object(hand["box"], f"{where}.box", {"center", "size"}, {"center", "size"})
        center = box["center"]
        if not isinstance(center, list) or len(center) != 2:
            raise EditorInputError(f"{where}.box.center: expected [x, y] in pixels")
        side_px = max(camera["width"], camera["height"])
        center = [_number(v, f"{where}.box.center[{k}]", -side_px, 2 * side_px) for k, v in enumerate(center)]
        size = _number(box["size"], f"{where}.box.size", 1.0, 4.0 * side_px)
        out = {"side": hand["side"], "angles": angles, "orient": orient,
               "box": {"center": center, "size": size}}
        if "betas" in hand:
            betas = hand["betas"]
            if not isinstance(betas, list) or len(betas) != 10:
                raise EditorInputError(f"{where}.betas: expected 10 numbers")
            out["betas"] = [_number(v, f"{where}.betas[{k}]", -10.0, 10.0) for k, v in enumerate(betas)]
        hands.append(out)
    return {"camera": camera, "hands": hands}, clamped


# ---------------------------------------------------------------------------------------------
# State <-> pose JSON
# ---------------------------------------------------------------------------------------------

def _present(side: str) -> np.ndarray:
    return Rotation.from_rotvec(PRESENT_ORIENT.double().numpy()).as_matrix() if side == "right" \
        else Rotation.from_rotvec(mirror_rotvec(PRESENT_ORIENT).double().numpy()).as_matrix()


_MIRROR = np.diag([-1.0, 1.0, 1.0])


def orient_to_rotvec(side: str, yaw_pitch_roll) -> list[float]:
    """``global_orient`` (axis-angle, radians) of yaw / pitch / roll degrees on top of the
    presentation orientation, as ``OrientationRanges``: R = Rz(roll) Rx(pitch) Ry(yaw) R_present
    for a right hand; a left hand is its mirror image."""
    yaw, pitch, roll = yaw_pitch_roll
    R = Rotation.from_euler("ZXY", [roll, pitch, yaw], degrees=True).as_matrix() @ _present("right")
    if side == "left":
        R = _MIRROR @ R @ _MIRROR
    return Rotation.from_matrix(R).as_rotvec().tolist()


def rotvec_to_orient(side: str, rotvec) -> list[float]:
    """Inverse of :func:`orient_to_rotvec`: [yaw, pitch, roll] degrees."""
    R = Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix()
    if side == "left":
        R = _MIRROR @ R @ _MIRROR
    roll, pitch, yaw = Rotation.from_matrix(R @ _present("right").T).as_euler("ZXY", degrees=True)
    return [float(yaw), float(pitch), float(roll)]


def camera_of(state_camera: dict) -> Camera:
    return Camera.default(state_camera["width"], state_camera["height"], state_camera["fov"])


def state_to_pose(state: dict) -> dict:
    """The pose JSON document of a checked state: one frame with its camera; per hand its side,
    ``global_orient``, ``hand_pose`` (from the joint angles, mirrored for left hands), ``box``
    and ``betas`` when given."""
    camera = camera_of(state["camera"])
    hands = []
    for hand in state["hands"]:
        hand_pose = HandAngles.from_dict(hand["angles"]).to_hand_pose()
        if hand["side"] == "left":
            hand_pose = mirror_rotvec(hand_pose)
        entry = {"side": hand["side"], "global_orient": orient_to_rotvec(hand["side"], hand["orient"]),
                 "hand_pose": hand_pose.double().tolist(), "box": hand["box"]}
        if "betas" in hand:
            entry["betas"] = hand["betas"]
        hands.append(entry)
    return {"version": 1, "frames": [{"camera": camera.to_dict(), "hands": hands}]}


def _axis_basis(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) whose first axis is ``first`` and second lies along ``second``."""
    a = first / np.linalg.norm(first)
    b = second - a * (a @ second)
    b /= np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def hand_pose_to_angles(hand_pose, side: str) -> tuple[dict, float]:
    """Joint angles (degrees) whose ``HandAngles.to_hand_pose`` is closest to ``hand_pose``
    (45 MANO axis-angle values, radians, of a hand of ``side``), and the largest residual
    rotation (degrees) the angles cannot express. Not clamped."""
    pose = torch.as_tensor(hand_pose, dtype=torch.float64)
    if side == "left":
        pose = mirror_rotvec(pose)
    mats = Rotation.from_rotvec(pose.reshape(15, 3).numpy()).as_matrix()
    angles, residual = {}, 0.0

    def euler(M: np.ndarray, basis: np.ndarray, order: str) -> np.ndarray:
        return Rotation.from_matrix(basis.T @ M @ basis).as_euler(order, degrees=True)

    z_first = np.eye(3)[:, [2, 0, 1]]   # basis (z, x, y)
    y_first = np.eye(3)[:, [1, 2, 0]]   # basis (y, z, x)
    for finger in FINGERS:
        s = MANO_FINGER_SLOTS[finger]
        spread, mcp, r0 = euler(mats[s], y_first, "XYZ")     # Ry(spread) Rz(mcp)
        pip, r1, r2 = euler(mats[s + 1], z_first, "XYZ")
        dip, r3, r4 = euler(mats[s + 2], z_first, "XYZ")
        angles[finger] = {"mcp": mcp, "pip": pip, "dip": dip, "spread": spread}
        residual = max(residual, *map(abs, (r0, r1, r2, r3, r4)))
    s = MANO_FINGER_SLOTS["thumb"]
    n, d = PALM_NORMAL.double().numpy(), THUMB_DIRECTIONS.double().numpy()
    a = np.cross(d[0], n)
    cross, abduct, r0 = euler(mats[s], _axis_basis(n, a), "XYZ")  # Rn(cross) Ra(abduct)
    c, si = math.cos(math.radians(THUMB_PRONATION_DEG)), math.sin(math.radians(THUMB_PRONATION_DEG))
    thumb = {"abduct": abduct, "cross": cross}
    for k, name in ((1, "mcp"), (2, "ip")):
        out = np.cross(d[k], n)
        axis = c * n + si * out / np.linalg.norm(out)
        value, r1, r2 = euler(mats[s + k], _axis_basis(axis, np.array([1.0, 0.0, 0.0])), "XYZ")
        thumb[name] = value
        residual = max(residual, abs(r1), abs(r2))
    residual = max(residual, abs(r0))
    angles["thumb"] = thumb
    return ({f: {j: round(float(v), ANGLE_DECIMALS) + 0.0 for j, v in joints.items()} for f, joints in angles.items()},
            float(residual))


def _box_of(model, params, camera: Camera) -> dict:
    """The image box (centre, larger side; pixels) of a posed hand."""
    uv = camera.project(model([params])[0].vertices.double())
    lo, hi = uv.min(0).values, uv.max(0).values
    return {"center": ((lo + hi) / 2).tolist(), "size": float((hi - lo).max())}


def parse_pose_text(text, model=None) -> tuple[dict, list[str], list[str]]:
    """Editor state of pose JSON text (the first frame), notes on how it was read, and the
    joint angles that were clamped to the limits (the state then differs from the text).

    Presets become their joint angles; ``hand_pose`` is decomposed into joint angles (angles
    outside the limits are clamped and listed; a pose the angles cannot express is noted);
    ``transl`` becomes the box it projects to (needs ``model``); a camera whose ``K`` is not a
    centred pinhole keeps its size and horizontal field of view.

    Raises: EditorInputError for text that is not JSON, breaks the schema, or holds fields the
    editor cannot pose (MANO PCA or ``mano61`` hands, more than ``MAX_HANDS`` hands).
    """
    if not isinstance(text, str) or not text.lstrip().startswith("{"):
        raise EditorInputError("pose JSON must be the JSON text itself, starting with '{'")
    if len(text.encode()) > MAX_BODY_BYTES:
        raise EditorInputError(f"pose JSON is longer than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EditorInputError(f"pose JSON is malformed at line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None
    try:
        parse_pose_document(document)
    except ValueError as exc:
        raise EditorInputError(str(exc)) from None
    notes = []
    if len(document["frames"]) > 1:
        notes.append(f"the pose has {len(document['frames'])} frames; the editor shows and edits the first")
    frame = document["frames"][0]
    state = default_state()
    if "camera" in frame:
        cam = frame["camera"]
        K = np.asarray(cam["K"], dtype=np.float64)
        width, height = cam["width"], cam["height"]
        fov = math.degrees(2 * math.atan(width / (2 * K[0, 0])))
        fov = min(max(fov, FOV_RANGE[0]), FOV_RANGE[1])
        state["camera"] = {"width": width, "height": height, "fov": fov}
        expected = camera_of(state["camera"]).K.double().numpy()
        if not np.allclose(K, expected, rtol=1e-4, atol=1e-3):
            notes.append(f"camera K is not a centred pinhole; the editor uses a {fov:.1f} degree "
                         "field of view at the same size")
    else:
        notes.append("the pose has no camera: the editor shows it in a 512x512, 40 degree camera, "
                     "SesaHand Render Conditions renders it with its own until the pose is edited")
    camera = camera_of(state["camera"])
    hands = frame["hands"]
    if not 1 <= len(hands) <= MAX_HANDS:
        raise EditorInputError(f"the editor poses 1 or {MAX_HANDS} hands; this pose has {len(hands)}")
    state["hands"] = []
    for i, hand in enumerate(hands):
        side = hand["side"]
        for field in ("hand_pose_pca", "mano61"):
            if field in hand:
                raise EditorInputError(f"hand {i + 1} uses {field} (MANO only); the editor poses "
                                       "joint angles: use hand_pose or a preset")
        if "preset" in hand:
            angles = preset_angles(hand["preset"])
        elif "hand_pose" in hand:
            angles, residual = hand_pose_to_angles(hand["hand_pose"], side)
            if residual > RESIDUAL_DEG:
                notes.append(f"hand {i + 1}: hand_pose has rotations the joint angles cannot express "
                             f"(up to {residual:.1f} degrees); shown as the nearest editable pose")
        else:
            angles = {f: {j: 0.0 for j in joints} for f, joints in JOINTS.items()}  # the flat hand
        orient = rotvec_to_orient(side, hand["global_orient"]) if "global_orient" in hand else [0.0, 0.0, 0.0]
        entry = {"side": side, "angles": angles, "orient": orient}
        if "betas" in hand:
            entry["betas"] = [float(b) for b in hand["betas"]]
        if "box" in hand:
            entry["box"] = {"center": [float(c) for c in hand["box"]["center"]], "size": float(hand["box"]["size"])}
        elif "transl" in hand and model is not None:
            spec = PoseSpec(kind="json", frames=tuple(parse_pose_document(
                {"frames": [{"camera": camera.to_dict(), "hands": [hand]}]})))
            entry["box"] = _box_of(model, spec.resolve(model, camera)[0].hands[0], camera)
            notes.append(f"hand {i + 1}: its transl is kept as the image box it projects to")
        else:
            entry["box"] = {"center": [camera.width * (2 * i + 1) / (2 * len(hands)), camera.height / 2],
                            "size": PRESET_BOX_FRACTION * min(camera.width / len(hands), camera.height)}
            if "transl" in hand:
                notes.append(f"hand {i + 1}: its transl is replaced by a centred box")
        state["hands"].append(entry)
    try:
        state, clamped = check_state(state)
    except EditorInputError as exc:
        raise EditorInputError(f"the pose cannot be edited: {exc}") from None
    return state, notes, clamped


# ---------------------------------------------------------------------------------------------
# Meshes
# ---------------------------------------------------------------------------------------------

def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def posed_meshes(model, pose: dict) -> tuple[dict, list[dict]]:
    """Pose the hands of a pose document's first frame exactly as SesaHand Render Conditions
    does (``PoseSpec.resolve`` then the model's forward pass).

    Returns: (camera dict with ``K``, ``width``, ``height``; per hand ``side``, ``vertices``
    (base64 little-endian float32, V x 3, metres, OpenCV camera frame) and ``joints``
    (21 x 3 lists, OpenPose order))."""
    spec = PoseSpec(kind="json", frames=tuple(parse_pose_document(pose)))
    scene = spec.resolve(model, Camera.default())[0]
    meshes = model(scene.hands)
    hands = [{"side": m.side, "vertices": _b64(m.vertices.detach().cpu().numpy().astype("<f4")),
              "joints": m.joints.detach().cpu().double().numpy().round(6).tolist()} for m in meshes]
    return scene.camera.to_dict(), hands


def editor_model(model: str, mano_file: str):
    """The hand model the editor poses, loaded like SesaHand Hand Model (shared cache).

    Raises: EditorInputError for an unknown model or a MANO file ComfyUI does not list."""
    if model not in MODEL_CHOICES:
        raise EditorInputError(f"model: expected one of {list(MODEL_CHOICES)}")
    if not isinstance(mano_file, str):
        raise EditorInputError("mano_file: expected a file name")
    message = SesaHandHandModel.validate_inputs(model=model, mano_file=mano_file)
    if message is not True:
        raise EditorInputError(message)
    with _MODEL_LOCK:
        return SesaHandHandModel.execute(model=model, side="right", mano_file=mano_file)[0].model


def resolve_request(body: dict) -> dict:
    """``/sesahand/editor/resolve``: a state (and model) -> pose JSON, clamped state, meshes."""
    body = _object(body, "request", {"model", "mano_file", "state"}, {"model", "state"})
    model = editor_model(body["model"], body.get("mano_file", ""))
    state, clamped = check_state(body["state"])
    pose = state_to_pose(state)
    with _MODEL_LOCK:
        try:
            camera, hands = posed_meshes(model, pose)
        except ValueError as exc:
            raise EditorInputError(str(exc)) from None
    return {"pose": pose, "state": state, "clamped": clamped, "camera": camera, "hands": hands}


def parse_request(body: dict) -> dict:
    """``/sesahand/editor/parse``: pose JSON text (and model) -> state, notes, clamped angles."""
    body = _object(body, "request", {"model", "mano_file", "pose_json"}, {"model", "pose_json"})
    model = editor_model(body["model"], body.get("mano_file", ""))
    with _MODEL_LOCK:
        state, notes, clamped = parse_pose_text(body["pose_json"], model)
    return {"state": state, "notes": notes, "clamped": clamped}


def mesh_request(query) -> dict:
    """``/sesahand/editor/mesh``: triangles of the model's hand of one side."""
    side = query.get("side", "right")
    if side not in SIDES:
        raise EditorInputError("side: expected 'right' or 'left'")
    model = editor_model(query.get("model", ""), query.get("mano_file", ""))
    faces = model.faces(side).detach().cpu().numpy().astype("<i4")
    return {"side": side, "model": model.name, "faces": _b64(faces), "num_faces": int(faces.shape[0])}


def info() -> dict:
    """``/sesahand/editor/info``: limits, joints, presets and the default state."""
    return {"joints": {f: list(j) for f, j in JOINTS.items()},
            "limits": {f: {j: list(limit(f, j)) for j in joints} for f, joints in JOINTS.items()},
            "presets": {name: preset_angles(name) for name in load_presets()},
            "models": list(MODEL_CHOICES), "default_state": default_state(),
            "fov_range": list(FOV_RANGE), "max_image_side": MAX_IMAGE_SIDE}


def register_routes(routes) -> None:
    """Add the editor's routes to ComfyUI's ``PromptServer.instance.routes``."""
    from aiohttp import web

    async def run(fn, *args):
        try:
            return web.json_response(await asyncio.to_thread(fn, *args))
        except EditorInputError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception:  # noqa: BLE001 - logged; the client gets no internals
            log.exception("SesaHand editor route failed")
            return web.json_response({"error": "internal error; see the ComfyUI log"}, status=500)

    async def json_body(request):
        if request.content_length is None or request.content_length > MAX_BODY_BYTES:
            raise EditorInputError(f"request body missing or over {MAX_BODY_BYTES} bytes")
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise EditorInputError(f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EditorInputError("request body is not JSON") from None

    def post(path, handler):
        async def route(request):
            try:
                body = await json_body(request)
            except EditorInputError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return await run(handler, body)
        routes.post(path)(route)

    post("/sesahand/editor/resolve", resolve_request)
    post("/sesahand/editor/parse", parse_request)

    @routes.get("/sesahand/editor/mesh")
    async def mesh(request):
        return await run(mesh_request, dict(request.query))

    @routes.get("/sesahand/editor/info")
    async def editor_info(request):
        return await run(info)

    @routes.get("/sesahand/vendor/three/{name}")
    async def vendor(request):
        name = request.match_info["name"]
        if name not in VENDOR_FILES:  # a fixed list: no path from the client reaches the disk
            return web.Response(status=404, text="not a vendored file")
        return web.FileResponse(VENDOR_DIR / name, headers={"Content-Type": VENDOR_FILES[name]})


def _register_with_server() -> None:
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI imported without its server (in-process tests)
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        register_routes(instance.routes)


_register_with_server()


class SesaHandHandPoseEditor(io.ComfyNode):
    """Hands posed in the browser: the 3D editor's pose JSON becomes a pose."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SesaHandHandPoseEditor",
            display_name="SesaHand Hand Pose Editor",
            category="SesaHand/hands",
            description="Pose one or two hands in 3D in the node (drag a finger, or use the "
                        "joint sliders; press H in the editor for help). The pose, camera and "
                        "framing are stored in the workflow as pose JSON and rendered exactly "
                        "as previewed by SesaHand Render Conditions (the pose's camera "
                        "overrides its width, height and fov).",
            inputs=[
                io.String.Input("pose_json", multiline=True, default="",
                                tooltip="Pose JSON written by the editor (pose schema, one frame "
                                        "with its camera). Edit it by hand if you like: the "
                                        "editor checks it and keeps the last valid pose."),
            ],
            outputs=[PoseType.Output("pose", display_name="pose",
                                     tooltip="The edited pose, with its camera.")],
        )

    @classmethod
    def validate_inputs(cls, pose_json=None):
        if pose_json is None:
            return True
        try:
            cls._spec(pose_json)
        except ValueError as exc:
            return str(exc)
        return True

    @staticmethod
    def _spec(pose_json: str) -> PoseSpec:
        if not pose_json.strip():
            return PoseSpec(kind="json", frames=tuple(parse_pose_document(state_to_pose(default_state()))))
        if not pose_json.lstrip().startswith("{"):
            raise ValueError("pose_json must be the pose JSON text (starting with '{'), not a path; "
                             "use SesaHand Hand Pose (mode json) for pose files")
        return PoseSpec.parse(pose_json, what="pose_json")

    @classmethod
    def execute(cls, pose_json: str) -> io.NodeOutput:
        return io.NodeOutput(cls._spec(pose_json))


NODES = [SesaHandHandPoseEditor]
