"""The open hand model: retargeting, mirroring, fingertips, cache."""

import time

import pytest
import torch

from sesahand.hands.anatomy import FingerAngles, HandAngles
from sesahand.hands.anny_model import MANO_MEAN_WRIST, anny_cache_file
from sesahand.hands.poses import preset_hand_pose
from sesahand.hands.types import HandParams

PALM_CENTRE = [0, 5, 9, 13, 17]  # wrist and the four MCPs


def tip_distances(mesh) -> torch.Tensor:
    """Thumb tip to the palm centre, then each long finger's tip to its own MCP (metres)."""
    j = mesh.joints
    thumb = (j[4] - j[PALM_CENTRE].mean(0)).norm()
    fingers = (j[[8, 12, 16, 20]] - j[[5, 9, 13, 17]]).norm(dim=1)
    return torch.cat([thumb[None], fingers])


def test_mesh_shapes_and_units(anny_model):
    mesh, = anny_model([HandParams.create()])
    assert mesh.vertices.shape == (1609, 3) and mesh.vertices.dtype == torch.float32
    assert mesh.faces.shape == (3196, 3) and mesh.faces.dtype == torch.int64
    assert mesh.joints.shape == (21, 3)
    length = (mesh.joints[12] - mesh.joints[0]).norm().item()
    assert 0.14 < length < 0.22, "wrist to middle tip of an adult hand, in metres"


def test_zero_pose_is_flat_in_manos_rest_frame(anny_model):
    mesh, = anny_model([HandParams.create()])
    j = mesh.joints
    assert torch.allclose(j[0], MANO_MEAN_WRIST, atol=1e-5), "wrist at MANO's mean wrist"
    direction = (j[12] - j[0]) / (j[12] - j[0]).norm()
    assert direction[0] < -0.95, "fingers point along -x in MANO's rest frame"
    assert (j[4] - j[0])[2] > 0.03, "thumb on the +z side"
    # flat: the long fingers' joints lie in the palm plane (y = wrist y) within a few mm
    assert (j[5:21, 1] - j[0, 1]).abs().max() < 0.012


def test_flexion_about_z_curls_fingers_towards_the_palm(anny_model):
    hand_pose = torch.zeros(15, 3)
    hand_pose[:3, 2] = 0.8  # index MCP, PIP, DIP
    flat, bent = anny_model([HandParams.create(), HandParams.create(hand_pose=hand_pose.flatten())])
    assert bent.joints[8, 1] < flat.joints[8, 1] - 0.03, "index tip moves to the palm side (-y)"
    assert torch.allclose(bent.joints[12], flat.joints[12], atol=1e-6), "middle finger untouched"


def test_fist_brings_fingertips_closer_to_the_palm_than_open_palm(anny_model):
    fist, open_ = anny_model([HandParams.create(hand_pose=preset_hand_pose("fist")),
                              HandParams.create(hand_pose=preset_hand_pose("open_palm"))])
    d_fist, d_open = tip_distances(fist), tip_distances(open_)
    assert (d_fist[1:] < 0.6 * d_open[1:]).all(), (d_fist, d_open)
    assert d_fist[0] < d_open[0]


def test_global_orient_rotates_about_the_wrist_and_transl_adds(anny_model):
    import roma

    r = torch.tensor([0.4, -1.2, 0.7])
    t = torch.tensor([0.1, -0.05, 0.6])
    rest, posed = anny_model([HandParams.create(), HandParams.create(global_orient=r, transl=t)])
    R = roma.rotvec_to_rotmat(r)
    expected = (rest.vertices - MANO_MEAN_WRIST) @ R.T + MANO_MEAN_WRIST + t
    assert torch.allclose(posed.vertices, expected, atol=1e-5)


def test_left_hand_is_the_mirror_of_the_right(anny_model):
    right = HandParams.create("right", global_orient=torch.tensor([0.2, 0.5, -0.3]),
                              hand_pose=preset_hand_pose("ok"), transl=torch.tensor([0.05, 0.0, 0.5]))
    from sesahand.hands.base import mirror_params

    r_mesh, l_mesh = anny_model([right, mirror_params(right)])
    S = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(l_mesh.vertices, r_mesh.vertices * S, atol=1e-5)
    assert torch.allclose(l_mesh.joints, r_mesh.joints * S, atol=1e-5)
    assert torch.equal(l_mesh.faces, r_mesh.faces[:, [0, 2, 1]]), "winding flipped to stay outward"


def test_faces_wind_outwards(anny_model):
    mesh, = anny_model([HandParams.create()])
    v, f = mesh.vertices.double(), mesh.faces
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    signed_volume = (a * torch.linalg.cross(b, c)).sum() / 6
    assert signed_volume > 0, "counter-clockwise faces seen from outside enclose a positive volume"


def test_betas_are_reported_not_dropped(anny_model, caplog):
    mesh, = anny_model([HandParams.create(betas=torch.ones(10))])
    assert any("betas not honoured" in n for n in mesh.notes)
    assert "betas not honoured" in caplog.text
    plain, = anny_model([HandParams.create()])
    assert plain.notes == []


def test_batch_mixes_sides_in_order(anny_model):
    meshes = anny_model([HandParams.create("left"), HandParams.create("right"), HandParams.create("left")])
    assert [m.side for m in meshes] == ["left", "right", "left"]
    assert meshes[0].joints[0, 0] < 0 < meshes[1].joints[0, 0]


def test_cache_reloads_fast_and_identically(anny_model):
    from sesahand.hands.anny_model import AnnyHandModel

    path = anny_cache_file()
    assert path.exists() and path.stat().st_size < 8 * 2**20, "compact data only (about 4 MB)"
    start = time.perf_counter()
    again = AnnyHandModel()
    assert time.perf_counter() - start < 10  # generous: the benchmark measures the real figure
    p = [HandParams.create(hand_pose=preset_hand_pose("claw"))]
    assert torch.equal(again(p)[0].vertices, anny_model(p)[0].vertices)


def test_corrupt_cache_names_the_file(tmp_path):
    from sesahand.hands.anny_model import AnnyHandModel

    bad = anny_cache_file(tmp_path)
    bad.write_bytes(b"not safetensors")
    with pytest.raises(RuntimeError, match="delete it"):
        AnnyHandModel(cache_dir=tmp_path)


def test_anatomy_limits_are_enforced():
    with pytest.raises(ValueError, match=r"index\.mcp.*outside"):
        HandAngles.from_dict({"index": {"mcp": 170}})
    with pytest.raises(ValueError, match="unknown finger"):
        HandAngles.from_dict({"pinky": {"mcp": 10}})
    pose = HandAngles(index=FingerAngles(mcp=90)).to_hand_pose().reshape(15, 3)
    assert torch.allclose(pose[0], torch.tensor([0.0, 0.0, torch.pi / 2]), atol=1e-5)
