"""The hand-model interface shared by the open hand (Anny) and MANO, and left/right mirroring."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from .types import HandMesh, HandParams

#: Mirror across the camera's yz-plane (x -> -x): turns a right hand into a left hand.
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
#: Signs of S R S for S = MIRROR, element-wise.
_MIRROR_SIGNS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])


def mirror_rotvec(rotvec: torch.Tensor) -> torch.Tensor:
    """Mirror axis-angle rotations across the yz-plane.

    A rotation R becomes S R S with S = diag(-1, 1, 1); for axis-angle vectors this negates
    the y and z components. Args: rotvec (..., 3k) float, radians. Returns the same shape.
    This is the standard MANO left/right pose flip (e.g. used by HaMeR and InterHand2.6M).
    """
    r = rotvec.reshape(*rotvec.shape[:-1], -1, 3).clone()
    r[..., 1:] *= -1
    return r.reshape(rotvec.shape)


def mirror_rotmat(rotmat: torch.Tensor) -> torch.Tensor:
    """Mirror rotation matrices (..., 3, 3) across the yz-plane: S R S with S = diag(-1, 1, 1)
    (the matrix form of :func:`mirror_rotvec`)."""
    return rotmat * _MIRROR_SIGNS.to(rotmat)


def mirror_params(params: HandParams) -> HandParams:
    """The right-hand parameters whose mirror image is the given left hand (and vice versa).

    ``global_orient`` and ``hand_pose`` are mirrored with :func:`mirror_rotvec`; ``transl``
    is mirrored in x; ``betas`` are kept; ``side`` is swapped.
    """
    return HandParams(
        global_orient=mirror_rotvec(params.global_orient),
        hand_pose=mirror_rotvec(params.hand_pose),
        betas=params.betas,
        transl=params.transl * torch.tensor([-1.0, 1.0, 1.0]),
        side="left" if params.side == "right" else "right",
    )


class HandModel(ABC):
    """A hand model driven by MANO-convention :class:`HandParams`.

    Subclasses produce meshes in the camera frame (metres, OpenCV axes) with 21 OpenPose-order
    joints. Implementations: :class:`~sesahand.hands.anny_model.AnnyHandModel` (open default),
    :class:`~sesahand.hands.mano.ManoHandModel` (user-supplied MANO files).
    """

    #: Short model name recorded in labels (``"anny"`` or ``"mano"``).
    name: str

    @abstractmethod
    def faces(self, side: str) -> torch.Tensor:
        """Triangles (F, 3) int64 of the given side, counter-clockwise seen from outside."""

    @abstractmethod
    def forward(self, params: Sequence[HandParams]) -> list[HandMesh]:
        """Pose a batch of hands (any mix of sides); one :class:`HandMesh` per input, in order."""

    @abstractmethod
    def keypoints(self, side: str, global_orient: torch.Tensor, hand_pose: torch.Tensor,
                  betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """The 21 OpenPose joints of a batch of hands of one side, differentiable (for fitting).

        Args:
            side: ``"right"`` or ``"left"``.
            global_orient: (N, 3) axis-angle, radians. hand_pose: (N, 45) axis-angle, radians,
                MANO order, relative to the flat hand, or the same 15 rotations as (N, 15, 3, 3)
                matrices. betas: (N, 10). transl: (N, 3) metres.

        Returns: (N, 21, 3) float32 joints in the camera frame (metres), equal to the
        ``joints`` of :meth:`forward` for the same parameters; gradients flow to the inputs.
        """

    def __call__(self, params: Sequence[HandParams]) -> list[HandMesh]:
        return self.forward(params)
