import math

import pytest
import torch

from sesahand.hands.base import mirror_params, mirror_rotvec
from sesahand.camera import Camera
from sesahand.hands.types import HandParams


def test_params_reject_nan_naming_the_field():
    with pytest.raises(ValueError, match="hand_pose.*NaN"):
        HandParams.create(hand_pose=torch.full((45,), float("nan")))


@pytest.mark.parametrize("field,value", [("global_orient", [0, 0]), ("betas", [0] * 11), ("transl", "abc")])
def test_params_reject_wrong_shapes(field, value):
    with pytest.raises(ValueError, match=field):
        HandParams.create(**{field: value})


def test_params_reject_unknown_side():
    with pytest.raises(ValueError, match="side"):
        HandParams.create("middle")


@pytest.mark.parametrize("w,h", [(500, 512), (512, 0), (512.0, 512)])
def test_camera_sizes_must_be_multiples_of_8(w, h):
    with pytest.raises(ValueError, match="multiple of 8"):
        Camera.default(w, h) if isinstance(w, int) else Camera(K=torch.eye(3), width=w, height=h)


def test_camera_projects_principal_point_and_fov():
    cam = Camera.default(512, 256, fov_deg=90.0)
    assert torch.allclose(cam.project(torch.tensor([0.0, 0.0, 2.0])), torch.tensor([256.0, 128.0]))
    # a point at 45 degrees lands on the right edge for a 90 degree horizontal fov
    assert cam.project(torch.tensor([1.0, 0.0, 1.0]))[0].item() == pytest.approx(512.0)


def test_mirroring_twice_is_identity():
    p = HandParams.create("left", global_orient=torch.randn(3), hand_pose=torch.randn(45), transl=torch.randn(3))
    back = mirror_params(mirror_params(p))
    assert back.side == "left"
    for name in ("global_orient", "hand_pose", "transl"):
        assert torch.equal(getattr(back, name), getattr(p, name))


def test_mirror_rotvec_conjugates_by_the_mirror():
    import roma

    r = torch.tensor([0.3, -0.7, 1.1])
    S = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    expected = S @ roma.rotvec_to_rotmat(r) @ S
    assert torch.allclose(roma.rotvec_to_rotmat(mirror_rotvec(r)), expected, atol=1e-6)
    assert math.isclose(mirror_rotvec(r).norm().item(), r.norm().item(), rel_tol=1e-6)
