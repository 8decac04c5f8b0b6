"""Conventions of the condition maps, and the per-pixel maths both backends share.

Mesh image (the SesaHand ControlNet condition): Lambert shading under a headlight (a point
light at the camera centre), no specular, on black::

    colour = HAND_COLORS[side] * (AMBIENT + (1 - AMBIENT) * max(0, n . l))

with ``n`` the unit surface normal turned to face the camera and ``l = -p / |p|`` the unit
direction from the surface point ``p`` back to the camera.

Normal image: the colour convention of the SD1.5 NormalBAE ControlNet
(``control_v11p_sd15_normalbae``), whose training maps come from Bae et al.'s ScanNet
estimator as drawn by the ControlNet annotator / controlnet_aux (``rgb = (normal + 1) / 2``
of the estimator's output). That estimator works in camera axes (x right, y down, z forward,
the same as OpenCV) and outputs the normal pointing *away* from the camera, i.e. minus the
visible surface's normal, so here::

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

#: Base colours (linear RGB in 0..1) of the shaded mesh image, per hand side.
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
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    face_n = torch.linalg.cross(v1 - v0, v2 - v0, dim=1)
    acc = torch.zeros_like(vertices)
    for k in range(3):
        acc.index_add_(0, faces[:, k], face_n)
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


def hand_depth_image(depth: torch.Tensor, hand: torch.Tensor, num_hands: int) -> torch.Tensor:
    """HandRefiner-style depth image of one frame.

    Args:
        depth: (H, W) float32 camera z in metres, 0 where no hand.
        hand: (H, W) uint8, 0 for background, ``i + 1`` where hand ``i`` is visible.
        num_hands: number of hands drawn in the frame.

    Returns:
        (H, W) float32 in 0..1: per hand, ``1 - 0.8 (z - z_min) / (z_max - z_min)`` over its
        visible pixels (1.0 for every pixel of a hand seen at a single depth), 0 elsewhere.
    """
    out = torch.zeros_like(depth)
    for i in range(num_hands):
        sel = hand == i + 1
        z = depth[sel]
        if z.numel() == 0:
            continue
        z_min, z_max = z.min(), z.max()
        span = (z_max - z_min).clamp_min(1e-12)
        out[sel] = torch.where(z_max > z_min, 1.0 - HANDREFINER_DEPTH_SPAN * (z - z_min) / span, 1.0)
    return out


def draw_hand_pose(canvas: Image.Image, joints2d: np.ndarray, drawable: np.ndarray) -> None:
    """Draw one OpenPose hand skeleton onto ``canvas`` in place.

    Args:
        canvas: RGB PIL image, the full frame.
        joints2d: (21, 2) float pixel coordinates (pixel centres at +0.5), OpenPose order.
            A joint is drawn at pixel ``floor(u), floor(v)``, which is where
            controlnet_aux's ``int(x)`` puts a keypoint given in pixel indices.
        drawable: (21,) bool; edges with an undrawable end and undrawable joints are skipped
            (the renderer passes "in front of the camera"; occluded joints are drawn, as an
            OpenPose hand detector also reports them).
    """
    draw = ImageDraw.Draw(canvas)
    pts = np.floor(joints2d).astype(np.int64)
    for (a, b), color in zip(OPENPOSE_HAND_EDGES, OPENPOSE_EDGE_COLORS):
        if drawable[a] and drawable[b]:
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=color, width=OPENPOSE_LINE_WIDTH)
    r = OPENPOSE_KEYPOINT_RADIUS
    for (x, y), ok in zip(pts.tolist(), drawable.tolist()):
        if ok:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=OPENPOSE_KEYPOINT_COLOR)
