"""Differentiable joints for fitting: ``HandModel.keypoints`` equals ``forward``'s joints (both
models, both sides) and passes gradients; batched anatomical angles match the presets."""

from __future__ import annotations

import pytest
import roma
import torch

from sesahand.hands import HandParams
from sesahand.hands.anatomy import ANGLE_NAMES, angle_limits, angles_to_hand_pose, angles_to_rotmats
from sesahand.hands.poses import load_presets


def _random_params(side: str, n: int, seed: int) -> list[HandParams]:
    g = torch.Generator().manual_seed(seed)
    return [HandParams.create(side, global_orient=torch.randn(3, generator=g),
                              hand_pose=0.4 * torch.randn(45, generator=g),
                              betas=0.5 * torch.randn(10, generator=g),
                              transl=0.1 * torch.randn(3, generator=g) + torch.tensor([0.0, 0.0, 0.5]))
            for _ in range(n)]


def _check(model, side: str, betas: bool):
    params = _random_params(side, 3, seed=1 if side == "right" else 2)
    if not betas:
        params = [HandParams.create(side, global_orient=p.global_orient, hand_pose=p.hand_pose, transl=p.transl)
                  for p in params]
    joints = torch.stack([m.joints for m in model(params)])
    stack = {k: torch.stack([getattr(p, k) for p in params]) for k in ("global_orient", "hand_pose", "betas", "transl")}
    stack["hand_pose"].requires_grad_(True)
    keypoints = model.keypoints(side, **stack)
    assert keypoints.shape == (3, 21, 3) and keypoints.dtype == torch.float32
    assert torch.allclose(keypoints, joints, atol=1e-5)
    keypoints.sum().backward()
    assert stack["hand_pose"].grad is not None and stack["hand_pose"].grad.abs().sum() > 0
    # The same 15 rotations as matrices (the fitter's path) give the same joints and gradients.
    rotmats = roma.rotvec_to_rotmat(stack["hand_pose"].detach().reshape(3, 15, 3)).requires_grad_(True)
    from_matrices = model.keypoints(side, **{**stack, "hand_pose": rotmats})
    assert torch.allclose(from_matrices, joints, atol=1e-5)
    from_matrices.sum().backward()
    assert rotmats.grad is not None and rotmats.grad.abs().sum() > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_anny_keypoints_equal_forward(anny_model, side):
    _check(anny_model, side, betas=False)


@pytest.mark.parametrize("side", ["right", "left"])
def test_mano_keypoints_equal_forward(tmp_path, side, mano_pair):
    pytest.importorskip("smplx")
    from sesahand.hands import load_hand_model

    _check(load_hand_model("mano", mano_path=mano_pair(tmp_path)), side, betas=True)


def test_batched_angles_match_each_preset():
    presets = load_presets()
    vectors = torch.stack([a.to_vector() for a in presets.values()])
    batched = angles_to_hand_pose(vectors.double())
    assert torch.allclose(roma.rotvec_to_rotmat(batched.view(-1, 15, 3)), angles_to_rotmats(vectors.double()),
                          atol=1e-9)
    assert batched.shape == (len(presets), 45) and batched.dtype == torch.float64
    for row, angles in zip(batched, presets.values()):
        assert torch.allclose(row.float(), angles.to_hand_pose(), atol=1e-6)
    lo, hi = angle_limits()
    assert len(ANGLE_NAMES) == lo.numel() == 20 and bool((lo < hi).all())
    assert bool(((vectors >= lo) & (vectors <= hi)).all())  # presets lie within the limits
