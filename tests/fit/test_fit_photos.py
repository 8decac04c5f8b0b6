"""Fits on real photographs (tests/data/photos): residual targets, sides, masks, pose files.

Stated targets (issue 12): over the test photos, the median 2D reprojection error of the kept
hands is at most 0.05 of the hand size and their median PCK@0.1 at least 0.95; every kept hand
meets the keep rule (mean error <= 0.06, PCK@0.1 >= 0.9). The hand cut by the top border is
reported, not kept; the photo without a hand gives no hand.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch



def test_residual_targets_on_real_photos(photo_fits, expected_sides):
    errors, pcks = [], []
    for name, expected in expected_sides.items():
        fits = photo_fits[name].fits
        assert len(fits) == len(expected), f"{name}: {len(fits)} hands fitted, expected {len(expected)}"
        for f in fits:
            assert np.isfinite(f.joints3d).all() and f.params.transl[2] > 0.1, name
            if name == "raised_hand_cut.jpg":
                assert not f.ok and any("border" in p for p in f.problems), f.problems
                continue
            assert f.ok, f"{name}: {f.problems}"
            assert f.mean_error <= 0.06 and f.pck["0.1"] >= 0.9, (name, f.mean_error, f.pck)
            errors.append(f.mean_error)
            pcks.append(f.pck["0.1"])
            json.dumps(f.to_dict(), allow_nan=False)
    assert len(errors) == 11
    assert float(np.median(errors)) <= 0.05, errors
    assert float(np.median(pcks)) >= 0.95, pcks


def test_pinch_keeps_thumb_and_index_tips_together(photo_fits):
    """The pinch ("OK" sign) photo: detected, kept, and the fitted thumb and index tips touch
    (2.1 cm apart in the fit; an open or closed hand of the set keeps them 6-10 cm apart)."""
    pinch = photo_fits["pinch_right.jpg"].fits
    assert len(pinch) == 1 and pinch[0].ok, [f.problems for f in pinch]
    tips = np.linalg.norm(pinch[0].joints3d[4] - pinch[0].joints3d[8])
    assert tips < 0.035, tips
    assert np.linalg.norm(pinch[0].joints2d[4] - pinch[0].joints2d[8]) < 0.1 * pinch[0].hand_size_px
    for name in ("open_palm_left.jpg", "open_palm_right.jpg", "point_left.jpg"):
        f = photo_fits[name].fits[0]
        assert np.linalg.norm(f.joints3d[4] - f.joints3d[8]) > 2 * tips, name


def test_no_hand_photo_gives_no_hand(photo_fits):
    assert photo_fits["no_hand.jpg"].fits == []


def test_hand_holding_an_object_is_fitted_and_kept(photo_fits):
    """A hand on a flute (fingers on the keys, thumb hidden behind it): detected, kept, and the
    fitted fingers curl round the instrument: the long fingers' total flexion (MCP + PIP + DIP
    of index..little) is more than twice that of either open palm of the set."""
    fits = photo_fits["holding_flute_right.jpg"].fits
    assert len(fits) == 1 and fits[0].ok and fits[0].side == "right", [f.problems for f in fits]
    assert fits[0].mean_error <= 0.05 and fits[0].pck["0.1"] >= 0.95, (fits[0].mean_error, fits[0].pck)

    def flexion(f):
        return sum(f.angles[f"{finger}_{joint}"] for finger in ("index", "middle", "ring", "little")
                   for joint in ("mcp", "pip", "dip"))

    for name in ("open_palm_left.jpg", "open_palm_right.jpg"):
        assert flexion(fits[0]) > 2 * flexion(photo_fits[name].fits[0]), name


def test_hands_holding_an_object_are_reported_not_invented(photo_fits, detector, missed_by_detector):
    """Hands wrapped around an object (a trumpet): MediaPipe finds none, so the photo is
    reported as having no hand, like the empty photo; nothing is fitted or kept. (A detector
    that finds them would turn this into a residual test: update MISSED_BY_DETECTOR in conftest.py.)"""
    for name in missed_by_detector:
        assert detector.detect(photo_fits[name].pixels) == [], name
        assert photo_fits[name].fits == [], name


def test_sides_match_the_subjects_hands(photo_fits, expected_sides):
    for name, expected in expected_sides.items():
        assert sorted(f.side for f in photo_fits[name].fits) == sorted(expected), name


def test_mirrored_photo_swaps_the_detected_side(photo_fits, detector, expected_sides):
    """A horizontally mirrored photo shows the other hand: the detector must say so (the
    Tasks API does not assume a selfie-mirrored input)."""
    for name in ("open_palm_left.jpg", "open_palm_right.jpg", "two_hands_thumb_down.jpg"):
        mirrored = np.ascontiguousarray(photo_fits[name].pixels[:, ::-1])
        sides = sorted(d.side for d in detector.detect(mirrored))
        flipped = sorted({"left": "right", "right": "left"}[s] for s in expected_sides[name])
        assert sides == flipped, name


def test_the_other_side_fits_worse_in_3d(photo_fits, anny_model):
    """Chirality check independent of the detector's label: for every kept hand, the mirror-image
    hand model cannot match the world landmarks' 3D shape as well as the reported side does
    (its bones end up more than 2 degrees further off on average)."""
    from sesahand.eval.detector import DetectedHand
    from sesahand.fit import fit_detections

    for name, pf in photo_fits.items():
        for f in [f for f in pf.fits if f.ok]:
            other = {"left": "right", "right": "left"}[f.side]
            det = DetectedHand(joints2d=f.detected2d.astype(np.float32), side=other, side_score=f.score,
                               world_joints=f.detected_world.astype(np.float32))
            h, w = pf.pixels.shape[:2]
            wrong = fit_detections([det], anny_model, w, h, pf.K)[0]
            assert wrong.bone_angle_deg > f.bone_angle_deg + 2.0, (name, wrong.bone_angle_deg, f.bone_angle_deg)


def test_rendered_mask_covers_the_detected_keypoints(photo_fits, anny_model):
    """The fitted mesh, rendered in the photo's own frame, covers the detected keypoints: at
    least 90 % lie on the mask or within 3 % of the hand size of it, and all within 10 %."""
    from scipy.ndimage import distance_transform_edt

    from sesahand.fit import Framing
    from sesahand.fit.output import render_fit

    for name, pf in photo_fits.items():
        kept = [f for f in pf.fits if f.ok]
        if not kept:
            continue
        h, w = pf.pixels.shape[:2]
        cond, _, labels = render_fit(anny_model, kept, pf.K, Framing.make((w, h), mode="pad"))
        assert cond.mask.shape[1:] == (h, w)
        assert labels["camera"]["width"] == w and labels["camera"]["height"] == h
        for f, mask in zip(kept, cond.masks[0].numpy()):
            assert mask.any(), name
            distance = distance_transform_edt(~mask)
            x = np.clip(f.detected2d[:, 0].astype(int), 0, w - 1)
            y = np.clip(f.detected2d[:, 1].astype(int), 0, h - 1)
            d = distance[y, x] / f.hand_size_px
            assert (d <= 0.03).mean() >= 0.9 and d.max() <= 0.1, (name, f.side, np.round(d, 3))


@pytest.mark.parametrize("mode,size", [("crop", (256, 384)), ("letterbox", (320, 192)), ("crop", (512, 512))])
def test_pose_file_renders_pixel_aligned_at_any_size(photo_fits, anny_model, mode, size):
    """The pose file's camera is K moved by the framing: rendering it puts the fitted joints where
    the framing puts them in the framed photo."""
    from sesahand.fit import Framing
    from sesahand.fit.output import pose_document, pose_frame, pose_spec
    from sesahand.camera import Camera
    from sesahand.pipeline import render_scenes

    pf = photo_fits["two_hands_thumb_down.jpg"]
    h, w = pf.pixels.shape[:2]
    framing = Framing.make((w, h), size, mode)
    document = pose_document([pose_frame(pf.fits, pf.K, framing)])
    scenes = pose_spec(json.loads(json.dumps(document))).resolve(anny_model, Camera.default(64, 64), 1)
    assert (scenes[0].camera.width, scenes[0].camera.height) == size
    _, rendered = render_scenes(anny_model, scenes)
    for f, labels in zip(pf.fits, rendered.labels[0]):
        expected = framing.points(f.joints2d)
        assert np.abs(labels.joints2d.numpy() - expected).max() < 0.05, mode
    framed = framing.image(pf.pixels)
    assert framed.shape == (size[1], size[0], 3)


@pytest.mark.parametrize("mode,size", [("crop", (256, 384)), ("letterbox", (320, 192)), ("pad", None)])
def test_framed_image_and_points_agree(mode, size):
    """A bright square's centre in the framed image is where ``Framing.points`` puts it."""
    from sesahand.fit import Framing

    photo = np.zeros((300, 420, 3), dtype=np.uint8)
    photo[100:120, 200:220] = 255  # centre (210, 110) in continuous pixel coordinates
    framing = Framing.make((420, 300), size, mode)
    framed = framing.image(photo).astype(float).sum(-1)
    assert framed.shape[::-1] == framing.out_size
    ys, xs = np.nonzero(framed > 0)
    w = framed[ys, xs]
    centre = np.array([(xs + 0.5) @ w / w.sum(), (ys + 0.5) @ w / w.sum()])
    assert np.abs(centre - framing.points(np.array([210.0, 110.0]))).max() < 0.3
    K = np.array([[400.0, 0, 210], [0, 400.0, 150], [0, 0, 1]])
    point = np.array([0.03, -0.02, 0.5])
    uv = K @ point
    uv2 = framing.intrinsics(K) @ point
    assert np.allclose(uv2[:2] / uv2[2], framing.points(uv[:2] / uv[2]))


def test_fit_is_deterministic(photo_fits, anny_model, detector):
    from sesahand.fit import fit_hands

    again = fit_hands(photo_fits["rock_right.jpg"].pixels, anny_model, detector)
    first = photo_fits["rock_right.jpg"].fits
    for a, b in zip(first, again):
        for field in ("global_orient", "hand_pose", "transl"):
            assert torch.equal(getattr(a.params, field), getattr(b.params, field)), field


def test_hand_choices(photo_fits, anny_model, detector):
    from sesahand.fit import fit_hands

    pixels = photo_fits["two_hands_thumb_down.jpg"].pixels
    assert [f.side for f in fit_hands(pixels, anny_model, detector, hands="left")] == ["left"]
    assert [f.side for f in fit_hands(pixels, anny_model, detector, hands="right")] == ["right"]
    assert len(fit_hands(pixels, anny_model, detector, hands="largest")) == 1
    with pytest.raises(ValueError, match="hands"):
        fit_hands(pixels, anny_model, detector, hands="both")


def test_tiny_and_bad_fits_are_reported(photo_fits, anny_model):
    from sesahand.fit import FitOptions, fit_detections
    from sesahand.eval.detector import DetectedHand

    pf = photo_fits["open_palm_right.jpg"]
    f = pf.fits[0]
    h, w = pf.pixels.shape[:2]
    det = DetectedHand(joints2d=f.detected2d.astype(np.float32), side=f.side, side_score=0.4,
                       world_joints=f.detected_world.astype(np.float32))
    strict = FitOptions(min_hand_px=500.0, max_error=0.001)
    problems = fit_detections([det], anny_model, w, h, pf.K, strict)[0].problems
    assert any(p.startswith("tiny") for p in problems)
    assert any(p.startswith("residual") for p in problems)
    assert any(p.startswith("low score") for p in problems)


def test_synthetic_hand_is_recovered(anny_model):
    """Keypoints made from a known hand (a preset, turned and placed; world landmarks exact)
    are fitted to within 1.5 % of the hand size, and the 3D joints to within 1 cm on average (the
    priors pull a little; a fingertip's depth is the least constrained)."""
    from sesahand.eval.detector import DetectedHand
    from sesahand.fit import fit_detections, photo_intrinsics
    from sesahand.hands import HandParams
    from sesahand.hands.poses import preset_hand_pose

    K = photo_intrinsics(480, 360)
    truth = HandParams.create("left", global_orient=torch.tensor([0.3, 2.8, -0.4]),
                              hand_pose=preset_hand_pose("peace") * torch.tensor([1.0, -1.0, -1.0]).repeat(15),
                              transl=torch.tensor([0.0, 0.0, 0.7]))
    joints = anny_model([truth])[0].joints.double().numpy()
    uv = joints @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    det = DetectedHand(joints2d=uv.astype(np.float32), side="left", side_score=0.99,
                       world_joints=(joints - joints.mean(0)).astype(np.float32))
    fit = fit_detections([replace(det)], anny_model, 480, 360, K)[0]
    assert fit.ok, fit.problems
    assert fit.mean_error < 0.015, fit.mean_error
    distance = np.linalg.norm(fit.joints3d - joints, axis=1)
    assert distance.mean() < 0.01 and distance.max() < 0.03, distance


def test_photo_folder_holds_only_small_redistributable_photos(photos, expected_sides, missed_by_detector):
    sources = (photos / "SOURCES.md").read_text()
    for path in sorted(photos.glob("*.jpg")):
        assert path.stat().st_size <= 200 * 1024, path.name
        assert f"`{path.name}`" in sources, f"{path.name} has no entry in SOURCES.md"
    assert set(expected_sides) | set(missed_by_detector) == {p.name for p in photos.glob("*.jpg")}
