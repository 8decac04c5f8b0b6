"""What a fit becomes: pose files, rendered condition maps and labels, and the overlay picture.

* :func:`pose_frame` / :func:`pose_document`: the pack's pose file (``frames[].camera`` +
  ``hands[]``, ``sesahand/hands/data/pose.schema.json``) with the kept hands of each photo
  and the photo's camera moved into the output frame by a :class:`~.framing.Framing`; the
  Hand Pose / Render Conditions path renders it pixel-aligned over the framed photo.
* :func:`render_fit`: the condition maps and ``labels.json`` record (as ``render`` writes
  it) of one photo's kept hands; in ``pad`` framing the maps are cut back to the photo's own
  size so labels stay in its pixel frame.
* :func:`draw_fit_overlay`: the photo with each fitted mesh's outline, the detected keypoints
  (magenta) and the fitted joints (green), and one line per hand (residual, kept or why not).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..camera import Camera
from ..eval.alignment import DETECTED_COLOR, LABEL_COLOR
from ..hands.base import HandModel
from ..hands.poses import PoseSpec, parse_pose_document
from ..hands.types import HAND_COLORS, HandScene
from ..io import to_uint8
from ..pipeline import RenderedHands, render_scenes
from ..render import Conditions
from ..render.maps import draw_hand_skeleton
from .fitter import FittedHand
from .framing import Framing

#: Colour (RGB) of the text band and of rejected hands' outlines.
REJECTED_COLOR = (255, 60, 60)


def kept(fits: Sequence[FittedHand]) -> list[FittedHand]:
    """The hands that passed the fit rules, in order."""
    return [f for f in fits if f.ok]


def camera_for(K: np.ndarray, framing: Framing) -> Camera:
    """The renderer's camera of the framed output (``K`` of the photo moved by ``framing``)."""
    w, h = framing.out_size
    return Camera(K=torch.as_tensor(framing.intrinsics(K), dtype=torch.float32), width=w, height=h)


def pose_frame(fits: Sequence[FittedHand], K: np.ndarray, framing: Framing) -> dict:
    """One pose-file frame: the camera of the framed output and the kept hands' parameters.

    Args:
        fits: the photo's fitted hands (rejected ones are left out).
        K: (3, 3) the photo's intrinsics at its own size.
        framing: photo -> output framing.
    """
    camera = camera_for(K, framing)
    hands = []
    for f in kept(fits):
        d = f.params.to_dict()
        hands.append({k: d[k] for k in ("side", "global_orient", "hand_pose", "betas", "transl")})
    return {"camera": {"K": framing.intrinsics(K).tolist(), "width": camera.width, "height": camera.height},
            "hands": hands}


def pose_document(frames: Sequence[dict]) -> dict:
    """A pose file from :func:`pose_frame` frames (validated against the pose schema).

    Raises: ValueError if it does not validate (a bug, not bad input).
    """
    document = {"version": 1, "frames": list(frames)}
    parse_pose_document(document)
    return document


def pose_spec(document: dict) -> PoseSpec:
    """The ``SESAHAND_POSE`` value (:class:`PoseSpec`) of a pose document."""
    return PoseSpec(kind="json", frames=tuple(parse_pose_document(document)))


def _crop(cond: Conditions, width: int, height: int) -> Conditions:
    """The conditions cut to the top-left ``width`` x ``height`` (pad framing); boxes clipped."""
    labels = []
    for frame in cond.labels:
        out = []
        for lab in frame:
            box = lab.box
            if box is not None:
                box = torch.stack([box[0].clamp(max=width), box[1].clamp(max=height),
                                   box[2].clamp(max=width), box[3].clamp(max=height)])
                if box[2] <= box[0] or box[3] <= box[1]:
                    box = None
            inside = (lab.joints2d[:, 0] < width) & (lab.joints2d[:, 1] < height)
            out.append(replace(lab, box=box, visible=lab.visible & inside))
        labels.append(out)
    return Conditions(mesh=cond.mesh[:, :height, :width], depth=cond.depth[:, :height, :width],
                      depth_image=cond.depth_image[:, :height, :width], normal=cond.normal[:, :height, :width],
                      masks=[m[:, :height, :width] for m in cond.masks], mask=cond.mask[:, :height, :width],
                      pose=cond.pose[:, :height, :width], labels=labels)


def render_fit(model: HandModel, fits: Sequence[FittedHand], K: np.ndarray, framing: Framing,
               backend: str = "auto", include_rejected: bool = False) -> tuple[Conditions, RenderedHands, dict]:
    """Render one photo's fitted hands and make its ``labels.json`` record.

    Args:
        model: the hand model the hands were fitted with.
        fits: the photo's fitted hands.
        K: (3, 3) the photo's intrinsics at its own size.
        framing: photo -> output framing (``pad``: the photo's own pixel frame).
        backend: renderer backend.
        include_rejected: also render hands that failed the fit rules (the overlay does, to
            show them); the labels then list them too.

    Returns: (conditions of one frame, the rendered record, the labels dict). The labels are
    :meth:`RenderedHands.frame_dict` (camera, per hand MANO parameters and joints 2D/3D in
    the output frame) with ``camera.width`` / ``height`` the size of the maps, plus
    ``photo`` (size, framing) and ``fit`` (every fitted hand's residuals and verdict).
    """
    hands = list(fits) if include_rejected else kept(fits)
    scene = HandScene(hands=[f.params for f in hands], camera=camera_for(K, framing))
    cond, rendered = render_scenes(model, [scene], backend=backend)
    if framing.mode == "pad":
        w, h = framing.src_size
        cond = _crop(cond, w, h)
        rendered = RenderedHands(scenes=rendered.scenes, meshes=rendered.meshes, labels=cond.labels,
                                 model=rendered.model)
    labels = rendered.frame_dict(0)
    w, h = framing.visible_size()
    labels["camera"].update(width=w, height=h)
    labels["photo"] = {"width": framing.src_size[0], "height": framing.src_size[1], "K": np.asarray(K).tolist(),
                       "framing": framing.to_dict()}
    labels["fit"] = [f.to_dict() for f in fits]
    return cond, rendered, labels


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W bool) with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def draw_fit_overlay(photo: np.ndarray, fits: Sequence[FittedHand], masks: np.ndarray | None,
                     framing: Framing | None = None, title: str = "") -> np.ndarray:
    """The check picture of one photo.

    Args:
        photo: (H, W, 3) uint8, the photo (already framed when ``framing`` is given).
        fits: every fitted hand of the photo (kept and rejected).
        masks: (len(fits), H, W) bool rendered mask of each hand in ``fits`` order, or None.
        framing: maps the fits' photo-frame keypoints into ``photo`` (None: same frame).
        title: text for the top band (e.g. the file name).

    Returns: (H, W, 3) uint8: mesh outlines in the hand colour (red when rejected), detected
    keypoints magenta, fitted joints green, a label per hand and a top band.
    """
    canvas = np.array(photo, dtype=np.uint8, copy=True)
    if masks is not None:
        for f, mask in zip(fits, masks):
            edge = _outline(np.asarray(mask, dtype=bool))
            thick = edge.copy()
            thick[1:] |= edge[:-1]
            thick[:, 1:] |= edge[:, :-1]
            colour = to_uint8(np.array(HAND_COLORS[f.side])) if f.ok else np.array(REJECTED_COLOR)
            canvas[thick] = colour
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    radius = max(2, round(min(canvas.shape[:2]) / 180))

    for i, f in enumerate(fits):
        detected = f.detected2d if framing is None else framing.points(f.detected2d)
        fitted = f.joints2d if framing is None else framing.points(f.joints2d)
        draw_hand_skeleton(draw, detected.tolist(), DETECTED_COLOR, radius)
        draw_hand_skeleton(draw, fitted.tolist(), LABEL_COLOR, radius)
        x0, y0 = detected.min(0)
        verdict = "kept" if f.ok else f.problems[0].split(":")[0]
        draw.text((float(x0), max(16.0, float(y0) - 12)),
                  f"{i} {f.side} err {f.mean_error:.3f} PCK {f.pck['0.1']:.2f} {verdict}",
                  fill=(255, 255, 255) if f.ok else REJECTED_COLOR)
    draw.rectangle([0, 0, canvas.shape[1], 14], fill=(0, 0, 0))
    found = f"{len(fits)} hand(s), {sum(f.ok for f in fits)} kept" if fits else "no hand found"
    draw.text((3, 2), f"{title}  {found}  magenta=detected green=fitted".strip(), fill=(255, 255, 255))
    return np.asarray(image)


def overlay_for(model: HandModel, photo: np.ndarray, fits: Sequence[FittedHand], K: np.ndarray,
                framing: Framing | None = None, backend: str = "auto", title: str = "") -> np.ndarray:
    """Render every fitted hand (kept or not) and draw :func:`draw_fit_overlay` over ``photo``
    framed by ``framing`` (default: the photo's own frame)."""
    height, width = photo.shape[:2]
    framing = framing or Framing.make((width, height), mode="pad")
    framed = framing.image(photo) if framing.mode != "pad" else photo
    masks = None
    if fits:
        cond, _, _ = render_fit(model, fits, K, framing, backend=backend, include_rejected=True)
        masks = cond.masks[0].cpu().numpy()
    return draw_fit_overlay(framed, fits, masks, framing, title=title)
