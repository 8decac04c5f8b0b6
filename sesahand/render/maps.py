"""Conventions of the condition maps, and the per-pixel maths both backends share.

Mesh image (the SesaHand ControlNet condition): Lambert shading under a headlight (a point
light at the camera centre), no specular, on black::

    colour = HAND_COLORS[side] * (AMBIENT + (1 - AMBIENT) * max(0, n . l))

with ``n`` the unit surface normal turned to face the camera and ``l = -p / |p|`` the unit
direction from the surface point ``p`` back to the camera.

Normal image: the colour convention of the SD1.5 NormalBAE ControlNet
(``control_v11p_sd15_normalbae``), whose training maps come from Bae et al.'s ScanNet
estimator as drawn by the ControlNet annotator / controlnet_aux (``rgb = (normal + 1) / 2``
of the estimator's output). Bae's estimators work in camera axes x right, y down, z forward
(OpenCV's) and give the normal pointing *away* from the camera, minus the visible surface's
normal (stated in Bae's DSINE repository: a wall facing the camera is (0, 0, 1)), so here::

    rgb = (1 - n) / 2        n: unit, camera-facing normal, OpenCV camera frame

A surface facing the camera is (0.5, 0.5, 1.0) (lavender), one facing image-right has R = 0,
one facing image-up has G = 1. Background is black (0, 0, 0), the value the estimator's
training data use for pixels without a normal.

Depth image: as HandRefiner's hand-depth ControlNet (``control_sd15_inpaint_depth_hand``)
was trained, and as comfyui_controlnet_aux's MeshGraphormer preprocessor draws it: per hand,
over that hand's visible pixels, ``1 - 0.8 * (z - z_min) / (z_max - z_min)`` (nearest 1.0,
farthest 0.2), background 0.

Pose image: OpenPose hand skeleton as controlnet_aux's ``draw_handpose`` draws it for the
SD1.5 OpenPose ControlNet: the 20 edges below, edge ``i`` in colour
``hsv_to_rgb(i / 20, 1, 1)`` two pixels wide, then a filled disc of radius 4 on every joint in
``OPENPOSE_KEYPOINT_COLOR``.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

#: Base colours (RGB in 0..1) of the shaded mesh image, per hand side.
HAND_COLORS = {
    "right": (0.40, 0.60, 1.00),  # light blue
    "left": (1.00, 0.55, 0.35),  # orange
}

#: Share of the base colour a surface keeps when it faces away from the light.
AMBIENT = 0.2

#: HandRefiner depth: the farthest visible pixel of a hand gets 1 - HANDREFINER_DEPTH_SPAN.
HANDREFINER_DEPTH_SPAN = 0.8

#: OpenPose hand limbs (joint index pairs, OpenPose order), in drawing order.
OPENPOSE_HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4),
    (0, 5), (5, 6), (6, 7), (7, 8),
    (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16),
    (0, 17), (17, 18), (18, 19), (19, 20),
)

#: RGB 0..255 colour of each edge: hue i / 20 at full saturation and value.
OPENPOSE_EDGE_COLORS = tuple(
    tuple(round(c * 255) for c in colorsys.hsv_to_rgb(i / len(OPENPOSE_HAND_EDGES), 1.0, 1.0))
    for i in range(len(OPENPOSE_HAND_EDGES))
)

#: Joint disc colour. controlnet_aux passes (0, 0, 255) to OpenCV on an RGB canvas, so the
#: dots the ControlNet saw in training are blue (they are red only in OpenCV's BGR reading).
OPENPOSE_KEYPOINT_COLOR = (0, 0, 255)
OPENPOSE_LINE_WIDTH = 2
OPENPOSE_KEYPOINT_RADIUS = 4


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (V, 3) float32 positions (any frame; the normals are in the same frame).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.

    Returns:
        (V, 3) float32 outward unit normals: the sum of the cross products of the faces around
        each vertex (each proportional to twice the face area). A vertex that no face uses,
        or whose faces cancel, gets a zero vector, which the shading replaces with the
        direction to the camera.
    """
    corners = vertices[faces]  # (F, 3, 3)
    face_n = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0],
                                dim=1)
    acc = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1),
                                                face_n.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(acc, dim=1, eps=1e-20)


def shade(position: torch.Tensor, normal: torch.Tensor, color: torch.Tensor):
    """Mesh and NormalBAE colours of surface samples (the fragment shader's maths, in torch).

    Args:
        position: (..., 3) float32 camera-frame points in metres (z > 0).
        normal: (..., 3) float32 interpolated vertex normals, any length and either
            orientation; a zero vector stands for "facing the camera".
        color: (..., 3) float32 base colour in 0..1.

    Returns:
        ``(mesh_rgb, normal_rgb)``, each (..., 3) float32 in 0..1 (see the module docstring).
    """
    d = torch.nn.functional.normalize(position, dim=-1)
    length = normal.norm(dim=-1, keepdim=True)
    n = torch.where(length > 1e-12, normal / length.clamp_min(1e-12), -d)
    n = torch.where((n * d).sum(-1, keepdim=True) > 0, -n, n)
    lambert = (-(n * d).sum(-1, keepdim=True)).clamp_min(0.0)
    return color * (AMBIENT + (1.0 - AMBIENT) * lambert), 0.5 - 0.5 * n


def hand_depth_image(depth: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """HandRefiner-style depth images.

    Args:
        depth: (..., H, W) float32 camera z in metres, 0 where no hand.
        hand: (..., H, W) uint8, 0 for background, ``i + 1`` where hand ``i`` of the frame is
            visible.

    Returns:
        (..., H, W) float32 in 0..1: per frame and hand, ``1 - 0.8 (z - z_min) /
        (z_max - z_min)`` over that hand's visible pixels (1.0 for every pixel of a hand seen
        at a single depth), 0 elsewhere.
    """
    out = torch.zeros_like(depth)
    flat = hand.reshape(-1)
    idx = torch.nonzero(flat).flatten()
    if idx.numel() == 0:
        return out
    frame_size = hand.shape[-1] * hand.shape[-2]
    key = (idx // frame_size) * 256 + flat[idx].long()
    z = depth.reshape(-1)[idx]
    slots = (hand.numel() // frame_size) * 256
    z_min = torch.full((slots,), float("inf"), device=depth.device)
    z_max = torch.full((slots,), float("-inf"), device=depth.device)
    z_min = z_min.scatter_reduce(0, key, z, "amin")[key]
    span = z_max.scatter_reduce(0, key, z, "amax")[key] - z_min
    scaled = (z - z_min) / span.clamp_min(1e-12)
    value = torch.where(span > 0, 1.0 - HANDREFINER_DEPTH_SPAN * scaled, 1.0)
    out.view(-1)[idx] = value
    return out


def draw_hand_poses(joints2d: list[np.ndarray], drawable: list[np.ndarray], width: int,
                    height: int) -> tuple[np.ndarray, int, int] | None:
    """Draw the OpenPose hand skeletons of one frame, in list order.

    Args:
        joints2d: per hand, (21, 2) float pixel coordinates (pixel centres at +0.5), OpenPose
            order. A joint is drawn at pixel ``floor(u), floor(v)``, where controlnet_aux's
            ``int(x)`` puts a keypoint given in pixel indices.
        drawable: per hand, (21,) bool; edges with an undrawable end and undrawable joints
            are skipped (the renderer passes "in front of the camera"; occluded joints are
            drawn, as an OpenPose hand detector also reports them).
        width, height: image size in pixels.

    Returns:
        ``(crop, x0, y0)``: an (h, w, 3) uint8 RGB crop of the black frame holding every drawn
        pixel, whose top-left pixel is image pixel (x0, y0); None when nothing is drawable.
        Only the region around the hands is drawn and converted, which keeps this cheap for
        large frames.
    """
    pts = [np.clip(np.floor(j), -(2**30), 2**30).astype(np.int64) for j in joints2d]
    shown = [p[d] for p, d in zip(pts, drawable)]
    if not any(len(p) for p in shown):
        return None
    allpts = np.concatenate(shown)
    pad = OPENPOSE_KEYPOINT_RADIUS + OPENPOSE_LINE_WIDTH
    x0, y0 = (int(v) for v in np.maximum(allpts.min(axis=0) - pad, 0))
    x1 = int(min(allpts[:, 0].max() + pad + 1, width))
    y1 = int(min(allpts[:, 1].max() + pad + 1, height))
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = Image.new("RGB", (x1 - x0, y1 - y0))
    draw = ImageDraw.Draw(canvas)
    r = OPENPOSE_KEYPOINT_RADIUS
    for p, ok in zip(pts, drawable):
        p = p - np.array([x0, y0])
        for (a, b), color in zip(OPENPOSE_HAND_EDGES, OPENPOSE_EDGE_COLORS):
            if ok[a] and ok[b]:
                draw.line([tuple(p[a].tolist()), tuple(p[b].tolist())], fill=color,
                          width=OPENPOSE_LINE_WIDTH)
        for (x, y), good in zip(p.tolist(), ok.tolist()):
            if good:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=OPENPOSE_KEYPOINT_COLOR)
    return np.array(canvas), x0, y0
