"""Colour conventions of the condition maps: NormalBAE normals, HandRefiner depth, OpenPose
hand drawing, side colours, and the torch shading the nvdiffrast backend uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sesahand.camera import Camera
from sesahand.hands.types import HAND_COLORS
from sesahand.render.maps import (
    AMBIENT,
    OPENPOSE_EDGE_COLORS,
    OPENPOSE_KEYPOINT_COLOR,
    draw_hand_poses,
    shade,
    vertex_normals,
)


def _rays(camera) -> torch.Tensor:
    """(H, W, 3) camera-frame directions (x/z, y/z, 1) through the pixel centres."""
    u = torch.arange(camera.width, dtype=torch.float32) + 0.5
    v = torch.arange(camera.height, dtype=torch.float32) + 0.5
    K = camera.K
    y = ((v - K[1, 2]) / K[1, 1])[:, None].expand(-1, camera.width)
    x = (u[None, :] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def test_normals_are_unit_and_face_the_camera(gl_renderer, camera64, ellipsoid):
    cond = gl_renderer.render([[ellipsoid((0.0, 0.0, 0.5), radii=(0.05, 0.05, 0.05))]],
                              [camera64])
    fg = cond.mask[0] > 0
    n = 1.0 - 2.0 * cond.normal[0][fg]  # decode the NormalBAE colour
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-5)
    view = torch.nn.functional.normalize(_rays(camera64)[fg], dim=-1)
    assert ((n * view).sum(-1) < 0).all()
    assert not cond.normal[0][~fg].any()


def test_normal_colours_follow_normalbae(gl_renderer, camera64, ellipsoid):
    """Facing the camera: lavender (0.5, 0.5, 1); facing image-right: R < 0.5; facing up:
    G > 0.5 (the estimator's axes are x right, y down, z forward, and it points into the
    surface)."""
    cond = gl_renderer.render([[ellipsoid((0.0, 0.0, 0.5), radii=(0.05, 0.05, 0.05))]],
                              [camera64])
    normal = cond.normal[0]
    assert torch.allclose(normal[32, 32], torch.tensor([0.5, 0.5, 1.0]), atol=0.03)
    right, up = normal[32, 36], normal[28, 32]
    assert right[0] < 0.4 and abs(right[1] - 0.5) < 0.03
    assert up[1] > 0.6 and abs(up[0] - 0.5) < 0.03


def test_mesh_colour_is_the_sides_colour_times_lambert(gl_renderer, camera64, ellipsoid):
    hands = [ellipsoid((-0.035, 0.0, 0.5), radii=(0.03, 0.05, 0.02)),
             ellipsoid((0.035, 0.0, 0.5), radii=(0.03, 0.05, 0.02), side="left")]
    cond = gl_renderer.render([hands], [camera64])
    for mask, side in zip(cond.masks[0], ("right", "left")):
        rgb = cond.mesh[0][mask]
        base = torch.tensor(HAND_COLORS[side])
        scale = rgb / base
        assert torch.allclose(scale, scale[:, :1].expand_as(scale), atol=1e-5)
        assert (scale >= AMBIENT - 1e-6).all() and (scale <= 1 + 1e-6).all()
        assert scale.max() > 0.99  # the surface facing the camera is fully lit
    assert not cond.mesh[0][cond.mask[0] == 0].any()


def test_shading_in_torch_matches_the_fragment_shader(gl_renderer, camera64, ellipsoid):
    """maps.shade (used by the nvdiffrast backend) reproduces the moderngl colours from the
    G-buffer the moderngl backend returns."""
    hands = [ellipsoid((-0.02, 0.0, 0.45), radii=(0.04, 0.06, 0.02)),
             ellipsoid((0.03, 0.01, 0.5), radii=(0.03, 0.05, 0.03), side="left")]
    cond = gl_renderer.render([hands], [camera64])
    fg = cond.mask[0] > 0
    position = _rays(camera64)[fg] * cond.depth[0][fg][:, None]
    normal = 1.0 - 2.0 * cond.normal[0][fg]
    hand = torch.argmax(cond.masks[0][:, fg].int(), dim=0)
    colors = torch.tensor([HAND_COLORS[h.side] for h in hands])[hand]
    mesh_rgb, normal_rgb = shade(position, normal, colors)
    assert torch.allclose(mesh_rgb, cond.mesh[0][fg], atol=2e-5)
    assert torch.allclose(normal_rgb, cond.normal[0][fg], atol=2e-5)
    # Unnormalised, camera-averted normals give the same colours (as interpolation yields).
    mesh2, normal2 = shade(position, -3.0 * normal, colors)
    assert torch.allclose(mesh2, mesh_rgb, atol=1e-6) and torch.allclose(normal2, normal_rgb)


def test_vertex_normals_point_outwards(ellipsoid):
    mesh = ellipsoid((0.1, -0.2, 0.5), radii=(0.05, 0.05, 0.05))
    n = vertex_normals(mesh.vertices, mesh.faces)
    radial = torch.nn.functional.normalize(mesh.vertices - torch.tensor([0.1, -0.2, 0.5]), dim=1)
    assert torch.allclose(n.norm(dim=1), torch.ones(len(n)), atol=1e-5)
    assert ((n * radial).sum(1) > 0.99).all()


def test_depth_image_follows_handrefiner_per_hand(gl_renderer, camera64, ellipsoid):
    hands = [ellipsoid((-0.03, 0.0, 0.4), radii=(0.025, 0.05, 0.03)),
             ellipsoid((0.03, 0.0, 0.7), radii=(0.025, 0.05, 0.05), side="left")]
    cond = gl_renderer.render([hands], [camera64])
    depth, image = cond.depth[0], cond.depth_image[0]
    for mask in cond.masks[0]:
        z, value = depth[mask], image[mask]
        expected = 1.0 - 0.8 * (z - z.min()) / (z.max() - z.min())
        assert torch.allclose(value, expected, atol=1e-6)
        assert value.max() == pytest.approx(1.0) and value.min() == pytest.approx(0.2)
    assert not image[cond.mask[0] == 0].any()


def test_pose_drawing_uses_openpose_colours(gl_renderer, ellipsoid):
    cam = Camera(K=torch.tensor([[160.0, 0.0, 64.0], [0.0, 160.0, 64.0], [0.0, 0.0, 1.0]]),
                 width=128, height=128)
    hand = ellipsoid((0.0, 0.0, 0.5))
    # Spread the joints over the image: wrist at the bottom, thumb going right, the other
    # fingers in columns.
    joints = torch.zeros(21, 3)
    joints[:, 2] = 0.5
    joints[0, :2] = torch.tensor([0.0, 0.15])
    for j in range(1, 21):
        finger, k = (j - 1) // 4, (j - 1) % 4
        joints[j, :2] = torch.tensor([-0.15 + 0.075 * finger, 0.08 - 0.05 * k])
    hand.joints = joints
    cond = gl_renderer.render([[hand]], [cam])
    pose = (cond.pose[0] * 255).round().to(torch.uint8).numpy()
    j2d = cond.labels[0][0].joints2d.floor().long()
    for x, y in j2d.tolist():
        assert tuple(pose[y, x]) == OPENPOSE_KEYPOINT_COLOR
    # Middle of each index-finger edge (joints 5-8, edges 5-7) carries that edge's colour.
    for e, (a, b) in zip((5, 6, 7), ((5, 6), (6, 7), (7, 8))):
        mx, my = ((j2d[a] + j2d[b]) // 2).tolist()
        assert tuple(pose[my, mx]) == OPENPOSE_EDGE_COLORS[e]
    assert OPENPOSE_EDGE_COLORS[0] == (255, 0, 0) and len(set(OPENPOSE_EDGE_COLORS)) == 20


def test_pose_drawing_skips_undrawable_joints_and_their_edges():
    joints = np.stack([np.linspace(4, 40, 21), np.full(21, 8.0)], axis=1)
    joints[4] = (50.0, 50.0)  # thumb tip, far from the others
    drawable = np.ones(21, dtype=bool)

    def paint(ok):
        crop, x0, y0 = draw_hand_poses([joints], [ok], 64, 64)
        full = np.zeros((64, 64, 3), np.uint8)
        full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return full

    mid = ((joints[3] + joints[4]) / 2).astype(int)
    drawn = paint(drawable)
    assert tuple(drawn[50, 50]) == OPENPOSE_KEYPOINT_COLOR
    assert tuple(drawn[mid[1], mid[0]]) == OPENPOSE_EDGE_COLORS[3]
    drawable[4] = False
    skipped = paint(drawable)
    assert not skipped[30:, 30:].any()
    assert draw_hand_poses([joints], [np.zeros(21, dtype=bool)], 64, 64) is None
    assert draw_hand_poses([joints + 1000], [np.ones(21, dtype=bool)], 64, 64) is None
