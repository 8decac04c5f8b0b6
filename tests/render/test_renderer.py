"""Geometry, occlusion, labels and input checks of the renderer (moderngl backend)."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import torch

from sesahand.camera import Camera
from sesahand.hands.types import HandMesh
from sesahand.render import Renderer, render_conditions
from sesahand.render.scene import ZeroArrays


def _pixel(joint2d: torch.Tensor) -> tuple[int, int]:
    return int(joint2d[1].floor()), int(joint2d[0].floor())


def test_projected_joints_fall_inside_the_hand_mask(gl_renderer, camera64, ellipsoid):
    hand = ellipsoid((0.01, -0.005, 0.5))
    cond = gl_renderer.render([[hand]], [camera64])
    lab = cond.labels[0][0]
    mask = cond.masks[0][0]
    assert lab.visible.all()
    for j in lab.joints2d:
        assert mask[_pixel(j)]
    x0, y0, x1, y1 = lab.box.tolist()
    assert (lab.joints2d[:, 0] >= x0).all() and (lab.joints2d[:, 0] < x1).all()
    assert (lab.joints2d[:, 1] >= y0).all() and (lab.joints2d[:, 1] < y1).all()
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    assert lab.box.tolist() == [cols[0].item(), rows[0].item(), cols[-1].item() + 1,
                                rows[-1].item() + 1]


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_hand_wins_and_hides_the_far_hands_joints(gl_renderer, camera64, ellipsoid,
                                                         near_first):
    near = ellipsoid((0.0, 0.0, 0.40), radii=(0.05, 0.07, 0.01), side="right")
    far = ellipsoid((0.005, 0.0, 0.60), radii=(0.03, 0.05, 0.01), side="left")
    hands = [near, far] if near_first else [far, near]
    cond = gl_renderer.render([hands], [camera64])
    i_near, i_far = (0, 1) if near_first else (1, 0)
    m_near, m_far = cond.masks[0][i_near], cond.masks[0][i_far]
    assert m_near.any() and not (m_near & m_far).any()
    # The far hand is smaller on screen and fully behind the near one: no pixel of its own.
    assert not m_far.any()
    assert cond.labels[0][i_far].box is None
    assert not cond.labels[0][i_far].visible.any()
    assert cond.labels[0][i_near].visible.all()
    centre = cond.depth[0, 32, 32].item()
    assert centre == pytest.approx(0.40 - 0.01, abs=1e-3)
    assert torch.equal(cond.mask[0] > 0, m_near | m_far)


def test_partly_hidden_far_hand_keeps_its_visible_pixels(gl_renderer, camera64, ellipsoid):
    near = ellipsoid((-0.03, 0.0, 0.45), radii=(0.03, 0.06, 0.01))
    far = ellipsoid((0.02, 0.0, 0.55), radii=(0.04, 0.06, 0.01), side="left")
    cond = gl_renderer.render([[far, near]], [camera64])
    m_far, m_near = cond.masks[0]
    assert m_far.any() and m_near.any() and not (m_far & m_near).any()
    depth = cond.depth[0]
    assert depth[m_near].max() < depth[m_far].min()
    # Far joints behind the near hand are hidden, the others are visible.
    lab = cond.labels[0][0]
    on_near = torch.tensor([bool(m_near[_pixel(j)]) for j in lab.joints2d])
    assert torch.equal(lab.visible, ~on_near)


def test_known_triangle_covers_its_analytic_area(gl_renderer):
    cam = Camera(K=torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]),
                 width=64, height=64)
    # A tilted triangle: pixels (6.3, 9.7), (57.1, 20.2), (20.4, 58.9) at depths 1.0, 1.3, 0.8.
    px = torch.tensor([[6.3, 9.7], [57.1, 20.2], [20.4, 58.9]])
    z = torch.tensor([1.0, 1.3, 0.8])
    verts = torch.cat([(px - 32.0) / 100.0 * z[:, None], z[:, None]], dim=1)
    tri = HandMesh(vertices=verts, faces=torch.tensor([[0, 1, 2]]),
                   joints=verts.mean(0).expand(21, 3).clone(), side="right", model="test")
    cond = gl_renderer.render([[tri]], [cam])
    mask = cond.masks[0][0].numpy()

    (x0, y0), (x1, y1), (x2, y2) = px.tolist()
    area = 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
    perimeter = sum(float(torch.dist(px[i], px[(i + 1) % 3])) for i in range(3))
    assert abs(mask.sum() - area) < 0.5 * perimeter

    # Pixel by pixel: the centres inside the triangle, except those within 0.01 px of an edge.
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    pts = px.numpy()
    signed = []
    for i in range(3):
        a, b = pts[i], pts[(i + 1) % 3]
        edge = b - a
        signed.append((edge[0] * (v - a[1]) - edge[1] * (u - a[0])) / np.hypot(*edge))
    signed = np.stack(signed)
    inside = (signed > 0).all(0) | (signed < 0).all(0)
    clear = (np.abs(signed) > 0.01).all(0)
    assert (mask[clear] == inside[clear]).all()

    # Depth is the ray's intersection with the triangle's plane (perspective-correct).
    normal = torch.linalg.cross(verts[1] - verts[0], verts[2] - verts[0])
    rays = torch.stack([(torch.tensor(u, dtype=torch.float32) - 32.0) / 100.0,
                        (torch.tensor(v, dtype=torch.float32) - 32.0) / 100.0,
                        torch.ones(64, 64)], dim=-1)
    expected = (normal @ verts[0]) / (rays @ normal)
    sel = torch.from_numpy(mask)
    assert torch.allclose(cond.depth[0][sel], expected[sel], rtol=1e-4)


def test_hand_outside_the_frame_is_empty_invisible_and_warned(gl_renderer, camera64, ellipsoid,
                                                              caplog):
    outside = ellipsoid((2.0, 0.0, 0.5))
    behind = ellipsoid((0.0, 0.0, -0.5), side="left")
    with caplog.at_level(logging.WARNING, logger="sesahand.render"):
        cond = gl_renderer.render([[outside, behind]], [camera64])
    assert not cond.masks[0].any()
    assert not cond.mask.any() and not cond.mesh.any() and not cond.pose.any()
    for lab in cond.labels[0]:
        assert not lab.visible.any()
        assert lab.box is None
        assert any("no visible pixel" in n for n in lab.notes)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "hand 0" in warnings[0].getMessage()


def test_batch_of_frames_with_different_hand_counts(gl_renderer, camera64, ellipsoid):
    cam2 = Camera(K=torch.tensor([[60.0, 0.0, 30.0], [0.0, 60.0, 34.0], [0.0, 0.0, 1.0]]),
                  width=64, height=64)
    hands = [ellipsoid((-0.03, 0.0, 0.5)), ellipsoid((0.03, 0.0, 0.5), side="left")]
    cond = gl_renderer.render([[], hands], [camera64, cam2])
    assert cond.mesh.shape == (2, 64, 64, 3) and cond.normal.shape == (2, 64, 64, 3)
    assert cond.depth.shape == cond.depth_image.shape == cond.mask.shape == (2, 64, 64)
    assert cond.pose.shape == (2, 64, 64, 3)
    assert cond.masks[0].shape == (0, 64, 64) and cond.masks[1].shape == (2, 64, 64)
    assert cond.labels[0] == [] and [lab.side for lab in cond.labels[1]] == ["right", "left"]
    for t in (cond.mesh[0], cond.normal[0], cond.depth[0], cond.pose[0], cond.mask[0]):
        assert not t.any()
    # Frame 1 alone gives the same maps as inside the batch.
    alone = gl_renderer.render([hands], [cam2])
    assert torch.equal(alone.mesh[0], cond.mesh[1])
    assert torch.equal(alone.depth[0], cond.depth[1])
    # Joints project with each frame's own camera.
    assert torch.allclose(cond.labels[1][0].joints2d, cam2.project(hands[0].joints))


def test_consecutive_frames_leave_no_trace(gl_renderer, camera64, ellipsoid):
    """Each frame starts from an empty image, whatever the previous frame or call drew."""
    small = [ellipsoid((0.02, 0.02, 0.5), radii=(0.01, 0.01, 0.01))]
    big = [ellipsoid((0.0, 0.0, 0.3), radii=(0.06, 0.08, 0.03), side="left")]
    straddling = [ellipsoid((0.0, 0.0, 0.0), radii=(0.05, 0.05, 0.05))]  # crosses the near plane
    fresh = {}
    with Renderer("moderngl") as other:
        for name, hands in (("small", small), ("big", big), ("straddling", straddling)):
            fresh[name] = other.render([hands], [camera64])
    order = [("big", big), ("small", small), ("straddling", straddling), ("small", small),
             ("big", big), ("small", small)]
    batch = gl_renderer.render([h for _, h in order], [camera64] * len(order))
    for b, (name, _) in enumerate(order):
        assert torch.equal(batch.mesh[b], fresh[name].mesh[0]), name
        assert torch.equal(batch.depth[b], fresh[name].depth[0]), name
        assert torch.equal(batch.mask[b], fresh[name].mask[0]), name
    for name, hands in order:
        single = gl_renderer.render([hands], [camera64])
        assert torch.equal(single.normal[0], fresh[name].normal[0]), name


_MAPS = ("mesh", "normal", "depth", "depth_image", "mask", "pose")


def test_recycled_maps_equal_fresh_ones_and_held_maps_stay_intact(camera64, ellipsoid):
    """Arrays of freed results are reused: the next maps still match a fresh renderer's,
    and results still held are never written over."""
    big = [ellipsoid((0.0, 0.0, 0.3), radii=(0.06, 0.08, 0.03), side="left"),
           ellipsoid((0.02, 0.01, 0.35), radii=(0.02, 0.02, 0.02))]
    small = [ellipsoid((0.02, 0.02, 0.5), radii=(0.01, 0.01, 0.01))]
    with Renderer("moderngl") as fresh_renderer:
        fresh = fresh_renderer.render([small], [camera64])
    with Renderer("moderngl") as renderer:
        held = renderer.render([big], [camera64])
        copies = {name: getattr(held, name).clone() for name in _MAPS}
        held_masks = held.masks[0].clone()
        for _ in range(3):  # each result is freed before the next call
            cond = renderer.render([small], [camera64])
            for name in _MAPS:
                assert torch.equal(getattr(cond, name), getattr(fresh, name)), name
            assert torch.equal(cond.masks[0], fresh.masks[0])
            del cond
        big_again = renderer.render([big], [camera64])
    for name in _MAPS:
        assert torch.equal(getattr(held, name), copies[name]), name
        assert torch.equal(getattr(big_again, name), copies[name]), name
    assert torch.equal(held.masks[0], held_masks)


def test_zero_arrays_recycles_only_freed_arrays():
    arrays = ZeroArrays()
    a = arrays.zeros((2, 4, 5), np.float32)
    a[1, 1:3, 2:4] = 7.0
    t = arrays.tensor(a, [(1, 2, 1, 4, 3)])
    view = t[1].numpy()  # anything derived from the tensor keeps the array in use
    del t
    assert arrays.zeros((2, 4, 5), np.float32) is not a
    del view
    again = arrays.zeros((2, 4, 5), np.float32)
    assert again is a and not again.any()
    assert arrays.zeros((2, 4, 5), np.float32) is not a  # handed out once
    assert arrays.zeros((2, 4, 5), np.uint8).dtype == np.uint8


def test_labels_are_json_ready(gl_renderer, camera64, ellipsoid):
    hand = ellipsoid((0.0, 0.0, 0.5))
    hand.notes.append("betas beyond the open model's range were clipped")
    lab = gl_renderer.render([[hand]], [camera64]).labels[0][0]
    data = json.loads(json.dumps(lab.to_dict()))
    assert data["side"] == "right" and data["model"] == "test"
    assert len(data["joints3d"]) == 21 and len(data["joints2d"][0]) == 2
    assert data["visible"] == [True] * 21 and len(data["box"]) == 4
    assert data["notes"] == ["betas beyond the open model's range were clipped"]
    assert lab.joints3d.dtype == torch.float32 and lab.visible.dtype == torch.bool


def test_render_conditions_matches_a_renderer(gl_renderer, camera64, ellipsoid):
    hands = [[ellipsoid((0.0, 0.0, 0.5))]]
    a = render_conditions(hands, [camera64], backend="moderngl")
    b = gl_renderer.render(hands, [camera64])
    assert torch.equal(a.mesh, b.mesh) and torch.equal(a.pose, b.pose)


@pytest.mark.parametrize("case, message", [
    ("no_frames", "no frame"),
    ("count", "one list of hands"),
    ("sizes", "differs from"),
    ("bare_mesh", "wrap it in a list"),
    ("faces", "faces"),
    ("joints", "joints"),
    ("nan", "NaN"),
    ("side", "side"),
])
def test_bad_input_is_refused(gl_renderer, camera64, ellipsoid, case, message):
    hand = ellipsoid((0.0, 0.0, 0.5))
    meshes, cameras = [[hand]], [camera64]
    if case == "no_frames":
        meshes, cameras = [], []
    elif case == "count":
        cameras = [camera64, camera64]
    elif case == "sizes":
        meshes, cameras = [[hand], [hand]], [camera64, Camera.default(64, 72)]
    elif case == "bare_mesh":
        meshes = [hand]
    elif case == "faces":
        hand.faces = hand.faces.clone()
        hand.faces[0, 0] = hand.vertices.shape[0]
    elif case == "joints":
        hand.joints = hand.joints[:20]
    elif case == "nan":
        hand.vertices = hand.vertices.clone()
        hand.vertices[3, 1] = float("nan")
    elif case == "side":
        hand.side = "middle"
    with pytest.raises(ValueError, match=message):
        gl_renderer.render(meshes, cameras)


def test_unknown_backend_and_closed_renderer():
    with pytest.raises(ValueError, match="backend"):
        Renderer("vulkan")
    renderer = Renderer("moderngl")
    renderer.close()
    renderer.close()
    with pytest.raises(RuntimeError, match="closed"):
        renderer.render([[]], [Camera.default(64, 64)])


def test_a_part_of_the_same_hand_in_front_hides_joints(gl_renderer, camera64, ellipsoid):
    """A "finger" lying 3 cm in front of the "palm" hides the palm joints beneath it; joints
    just under the palm's own surface stay visible."""
    palm = ellipsoid((0.0, 0.0, 0.5), radii=(0.05, 0.05, 0.008))
    finger = ellipsoid((0.02, 0.0, 0.47), radii=(0.012, 0.06, 0.009))
    hand = HandMesh(vertices=torch.cat([palm.vertices, finger.vertices]),
                    faces=torch.cat([palm.faces, finger.faces + len(palm.vertices)]),
                    joints=palm.joints.clone(), side="right", model="test")
    hand.joints[::2, 0] = 0.02  # even joints under the finger, odd ones beside it
    hand.joints[1::2, 0] = -0.02
    lab = gl_renderer.render([[hand]], [camera64]).labels[0][0]
    assert not lab.visible[::2].any()
    assert lab.visible[1::2].all()


def test_renderer_works_from_other_threads(gl_renderer, camera64, ellipsoid):
    """ComfyUI runs nodes on a worker thread: the context follows the calling thread."""
    hands = [[ellipsoid((0.0, 0.0, 0.5))]]
    expected = gl_renderer.render(hands, [camera64])
    results = []
    workers = [threading.Thread(target=lambda: results.append(gl_renderer.render(hands,
                                                                                [camera64])))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 3
    for cond in results:
        assert torch.equal(cond.mesh, expected.mesh) and torch.equal(cond.depth, expected.depth)
