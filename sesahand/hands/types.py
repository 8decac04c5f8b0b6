"""Small typed objects that cross rooms: hand parameters, meshes, scenes (the camera is
:class:`sesahand.camera.Camera`).

Conventions used everywhere in the pack:

* Units are metres for 3D quantities, pixels for image quantities, radians for angles.
* The camera frame is OpenCV's: x right, y down, z forward (the camera looks down +z).
  Hand parameters, meshes and joints are all expressed in the camera frame of the image.
* Rotations are axis-angle vectors (direction = axis, norm = angle in radians).
* Joint order of the 21 keypoints is OpenPose / FreiHAND: 0 wrist, 1-4 thumb (CMC, MCP, IP,
  tip), 5-8 index (MCP, PIP, DIP, tip), 9-12 middle, 13-16 ring, 17-20 little.
* ``hand_pose`` follows MANO: 15 joints x 3 axis-angle, MANO joint order (index 1-3,
  middle 1-3, little 1-3, ring 1-3, thumb 1-3), each rotation relative to the parent joint
  and expressed in MANO's rest frame, relative to the flat open hand (all zeros = flat hand,
  smplx ``flat_hand_mean=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..camera import Camera

SIDES = ("right", "left")
NUM_BETAS = 10
NUM_HAND_POSE = 45

#: Base colours (RGB in 0..1) of a hand, per side: the shaded mesh condition
#: (:mod:`sesahand.render.maps`), mesh export and overlays.
HAND_COLORS = {
    "right": (0.40, 0.60, 1.00),  # light blue
    "left": (1.00, 0.55, 0.35),  # orange
}

#: OpenPose hand keypoint names, in order.
OPENPOSE_JOINT_NAMES = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)

#: MANO's 15 articulated joints, in the order of ``hand_pose`` (3 values each).
MANO_JOINT_NAMES = (
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "little1", "little2", "little3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)


def _as_vector(name: str, value, size: int) -> torch.Tensor:
    """Return ``value`` as a finite float32 CPU tensor of shape (size,), or raise ValueError."""
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected {size} numbers, got {value!r} ({exc})") from None
    if t.numel() != size:
        raise ValueError(f"{name}: expected {size} numbers, got shape {tuple(t.shape)}; "
                         f"give a flat list of {size} values")
    t = t.reshape(size).clone()
    if not torch.isfinite(t).all():
        bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()
        raise ValueError(f"{name}: values at positions {bad} are NaN or infinite; "
                         "give finite numbers")
    return t


@dataclass(frozen=True)
class HandParams:
    """MANO-convention parameters of one hand, in the camera frame.

    Attributes:
        global_orient: (3,) float32, axis-angle in radians, rotation of the wrist about the
            wrist joint, from MANO's rest frame to the camera frame.
        hand_pose: (45,) float32, axis-angle in radians, 15 finger joints in MANO order
            (see ``MANO_JOINT_NAMES``), relative to the flat hand.
        betas: (10,) float32, MANO shape coefficients (unitless).
        transl: (3,) float32, metres, translation added after the rotation (MANO ``transl``).
        side: ``"right"`` or ``"left"``.

    Raises:
        ValueError: a field has the wrong size, holds NaN/inf, or ``side`` is unknown.
    """

    global_orient: torch.Tensor
    hand_pose: torch.Tensor
    betas: torch.Tensor
    transl: torch.Tensor
    side: str = "right"

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"side: expected 'right' or 'left', got {self.side!r}")
        object.__setattr__(self, "global_orient", _as_vector("global_orient", self.global_orient, 3))
        object.__setattr__(self, "hand_pose", _as_vector("hand_pose", self.hand_pose, NUM_HAND_POSE))
        object.__setattr__(self, "betas", _as_vector("betas", self.betas, NUM_BETAS))
        object.__setattr__(self, "transl", _as_vector("transl", self.transl, 3))

    @classmethod
    def create(cls, side: str = "right", *, global_orient=None, hand_pose=None, betas=None,
               transl=None) -> "HandParams":
        """Build parameters with zeros for every field not given (flat hand at the origin)."""
        return cls(
            global_orient=torch.zeros(3) if global_orient is None else global_orient,
            hand_pose=torch.zeros(NUM_HAND_POSE) if hand_pose is None else hand_pose,
            betas=torch.zeros(NUM_BETAS) if betas is None else betas,
            transl=torch.zeros(3) if transl is None else transl,
            side=side,
        )

    def to_dict(self) -> dict:
        """JSON-ready dict with the MANO field names (lists of floats) and ``side``."""
        return {
            "side": self.side,
            "global_orient": self.global_orient.tolist(),
            "hand_pose": self.hand_pose.tolist(),
            "betas": self.betas.tolist(),
            "transl": self.transl.tolist(),
        }


@dataclass
class HandMesh:
    """A posed hand mesh in the camera frame.

    Attributes:
        vertices: (V, 3) float32, metres, camera frame.
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside the hand.
        joints: (21, 3) float32, metres, camera frame, OpenPose order.
        side: ``"right"`` or ``"left"``.
        model: name of the hand model that produced it (``"anny"`` or ``"mano"``).
        params: the parameters it was posed with.
        notes: human-readable remarks about what could not be honoured (for example betas
            the open hand model cannot represent); copied into the labels.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    joints: torch.Tensor
    side: str
    model: str
    params: HandParams | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class HandScene:
    """The hands of one image and its camera: the unit that gets rendered into one frame.

    ``elbow_flexion``: per hand, the elbow flexion (radians) a pose file gave for the ``arm``
    option, or None (the placement rule's default); None for the whole scene when no file
    gave any.
    """

    hands: list[HandParams]
    camera: Camera
    elbow_flexion: list[float | None] | None = None

    def to_dict(self) -> dict:
        return {"camera": self.camera.to_dict(), "hands": [h.to_dict() for h in self.hands]}
