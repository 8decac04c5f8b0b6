"""Conventions of the condition maps, and the per-pixel maths both backends share.

Mesh image (the SesaHand ControlNet condition): Lambert shading under a headlight (a point
light at the camera centre), no specular, on black::

    colour = HAND_COLORS[side] * (AMBIENT + (1 - AMBIENT) * max(0, n . l))

with ``HAND_COLORS`` of :mod:`sesahand.hands.types`, ``n`` the unit surface normal turned to
face the camera and ``l = -p / |p|`` the unit direction from the surface point ``p`` back to
the camera.

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
``OPENPOSE_KEYPOINT_COLOR``. With arms, the OpenPose *body* limbs wrist-elbow(-shoulder) are
drawn first, as controlnet_aux's ``draw_bodypose`` draws them for body+hand OpenPose
ControlNets: each limb a band 4 px wide in its body-limb colour at 60 % (right upper arm
(255, 170, 0), right forearm (255, 255, 0), left upper arm (170, 255, 0), left forearm
(85, 255, 0)), each joint a disc of radius 4 in its body-keypoint colour.

Arms (``arm`` option) are shaded like hands in :data:`ARM_COLOR` (grey, so that a ControlNet
trained on hand meshes sees where the hand ends); in the depth image a hand and its arm are
normalised together (one near-to-far range, so the depth runs on across the wrist without a
step).
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


#: Base colour (RGB in 0..1) of arms in the shaded mesh image.
ARM_COLOR = (0.60, 0.60, 0.60)

#: OpenPose body colours (controlnet_aux ``draw_bodypose``) of the arm limbs and joints, per
#: side: limbs wrist-elbow and elbow-shoulder, joints wrist, elbow, shoulder (RGB 0..255).
OPENPOSE_ARM_LIMB_COLORS = {
    "right": ((255, 255, 0), (255, 170, 0)),
    "left": ((85, 255, 0), (170, 255, 0)),
}
OPENPOSE_ARM_JOINT_COLORS = {
    "right": ((170, 255, 0), (255, 255, 0), (255, 170, 0)),
    "left": ((0, 255, 85), (0, 255, 0), (85, 255, 0)),
}
OPENPOSE_BODY_LIMB_WIDTH = 4
OPENPOSE_BODY_LIMB_ALPHA = 0.6

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
        (V, 3) float32 outward unit normals on the device of ``vertices`` (computed on the
        CPU): the sum of the cross products of the faces around each vertex (each
        proportional to twice the face area). A vertex that no face uses, or whose faces
        cancel, gets a zero vector, which the shading replaces with the direction to the
        camera.
    """
    # numpy, one coordinate at a time: cheaper than torch's per-op cost at this size.
    x, y, z = np.asarray(vertices.detach().cpu(), dtype=np.float32).T
    i0, i1, i2 = np.asarray(faces.detach().cpu()).T
    ax, ay, az = x[i1] - x[i0], y[i1] - y[i0], z[i1] - z[i0]
    bx, by, bz = x[i2] - x[i0], y[i2] - y[i0], z[i2] - z[i0]
    corners = np.concatenate([i0, i1, i2])
    acc = np.empty((len(x), 3))
    for k, n in enumerate((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)):
        acc[:, k] = np.bincount(corners, np.tile(n, 3), minlength=len(x))
    length = np.sqrt(np.einsum("ij,ij->i", acc, acc))[:, None]
    normals = (acc / np.maximum(length, 1e-20)).astype(np.float32)
    return torch.from_numpy(normals).to(vertices.device)


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


def fill_depth_image(depth_image: np.ndarray, depth: np.ndarray, selected: Sequence[np.ndarray],
                     rect: tuple[int, int, int, int]) -> None:
    """HandRefiner-style depth of one object (a hand, or a hand with its arm) in place.

    Sets ``depth_image`` (H, W) float32 on the pixels inside ``rect`` (``x0, y0, x1, y1``, max
    exclusive) that any of the ``selected`` (H, W) bool masks marks to
    ``1 - 0.8 (z - z_min) / (z_max - z_min)`` over those pixels, ``z`` the rendered camera depth
    (H, W) in metres (1.0 for all of them when seen at a single depth). Nothing happens when no
    pixel is selected.
    """
    x0, y0, x1, y1 = rect
    crop = (slice(y0, y1), slice(x0, x1))
    sel = np.logical_or.reduce([m[crop] for m in selected])
    z = depth[crop][sel]
    if z.size == 0:
        return
    z_min = z.min()
    span = z.max() - z_min
    depth_image[crop][sel] = 1.0 - HANDREFINER_DEPTH_SPAN * ((z - z_min) / span) if span > 0 \
        else 1.0


def fill_hand_pixels(index: int, rect: tuple[int, int, int, int], hand: np.ndarray,
                     own_mask: np.ndarray, mask: np.ndarray) -> torch.Tensor | None:
    """Write one hand's (or arm's) visible pixels into the masks of its frame, looking only
    inside ``rect``; its depth image follows from :func:`fill_depth_image`.

    Args:
        index: the object's position in its frame; its pixels hold ``index + 1`` in ``hand``.
        rect: ``(x0, y0, x1, y1)`` pixel bounds, max exclusive, holding all of its pixels.
        hand: (H, W) uint8 rendered object index + 1 of the frame, 0 for background.
        own_mask: (H, W) bool, all False: set True on the object's pixels.
        mask: (H, W) float32: set to 1 on the object's pixels.

    Returns:
        (4,) float32 CPU tensor, the box ``x0, y0, x1, y1`` of the object's pixels, max
        exclusive; None (and nothing written) when it has no pixel.
    """
    x0, y0, x1, y1 = rect
    crop = (slice(y0, y1), slice(x0, x1))
    sel = hand[crop] == index + 1
    rows = np.flatnonzero(sel.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(sel.any(axis=0))
    own_mask[crop] = sel
    mask[crop][sel] = 1.0
    return torch.tensor([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1],
                        dtype=torch.float32)


def draw_hand_poses(joints2d: list[np.ndarray], drawable: list[np.ndarray], width: int,
                    height: int, arms: list[tuple[str, np.ndarray, np.ndarray]] = ()
                    ) -> tuple[np.ndarray, int, int] | None:
    """Draw the OpenPose hand skeletons of one frame, in list order.

    Args:
        joints2d: per hand, (21, 2) float pixel coordinates (pixel centres at +0.5), OpenPose
            order. A joint is drawn at pixel ``floor(u), floor(v)``, where controlnet_aux's
            ``int(x)`` puts a keypoint given in pixel indices.
        drawable: per hand, (21,) bool; edges with an undrawable end and undrawable joints
            are skipped (the renderer passes "in front of the camera"; occluded joints are
            drawn, as an OpenPose hand detector also reports them).
        width, height: image size in pixels.
        arms: OpenPose body limbs drawn first, per arm ``(side, joints2d (K, 2) wrist, elbow
            [, shoulder], drawable (K,))``.

    Returns:
        ``(crop, x0, y0)``: an (h, w, 3) uint8 RGB crop of the black frame holding every drawn
        pixel, whose top-left pixel is image pixel (x0, y0); None when nothing is drawable.
        Only the region around the hands is drawn and converted, which keeps this cheap for
        large frames.
    """
    pts = [np.clip(np.floor(j), -(2**30), 2**30).astype(np.int64) for j in joints2d]
    arm_pts = [np.clip(np.floor(j), -(2**30), 2**30).astype(np.int64) for _, j, _ in arms]
    shown = [p[d] for p, d in zip(pts, drawable)] + \
        [p[d] for p, (_, _, d) in zip(arm_pts, arms)]
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
    for p, (side, _, ok) in zip(arm_pts, arms):
        p = p - np.array([x0, y0])
        for k in range(len(p) - 1):
            if ok[k] and ok[k + 1]:
                color = tuple(round(c * OPENPOSE_BODY_LIMB_ALPHA)
                              for c in OPENPOSE_ARM_LIMB_COLORS[side][k])
                draw.line([tuple(p[k].tolist()), tuple(p[k + 1].tolist())], fill=color,
                          width=OPENPOSE_BODY_LIMB_WIDTH)
        for k, ((x, y), good) in enumerate(zip(p.tolist(), ok.tolist())):
            if good:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=OPENPOSE_ARM_JOINT_COLORS[side][k])
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


def draw_hand_skeleton(draw: ImageDraw.ImageDraw, points, colour, radius: int) -> None:
    """Draw one hand's 21 keypoints and their OpenPose limbs on a PIL ``draw`` (for overlays a
    person reads: labels vs detections), in one flat ``colour``.

    Args:
        points: 21 ``(x, y)`` pixel positions, OpenPose hand order.
        colour: an RGB tuple.
        radius: joint dot radius in pixels; limbs are ``max(1, radius // 2)`` wide.
    """
    for a, b in OPENPOSE_HAND_EDGES:
        draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=max(1, radius // 2))
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
