"""Anatomical finger angles <-> MANO ``hand_pose``, joint limits, and the random articulation prior.

Presets and the random sampler are authored in anatomical angles (degrees) because those are
what people reason about; they are converted to MANO axis-angle ``hand_pose`` (45,) here.

Axes (MANO's rest frame of the right hand, flat hand; left hands are mirrored elsewhere):

* fingers point along -x, the back of the hand faces +y (palm normal ``-y``), the thumb lies
  towards +z;
* finger flexion (MCP, PIP, DIP) is a positive rotation about +z; MCP spread (abduction) is
  a rotation about +y, positive towards the thumb;
* thumb CMC: ``abduct`` lifts the thumb out of the palm plane towards the palm side (palmar
  abduction, about ``d1 x n`` with ``n`` the palm normal), ``cross`` swings it across the palm
  towards the little finger (about ``n``); thumb MCP/IP flexion turns about an axis between
  the palm normal and ``d x n`` (the thumb is pronated by about 30 degrees relative to the
  fingers), so a flexed thumb curls in front of the palm.

``d1..d3`` are the nominal flat-hand thumb segment directions (CMC->MCP, MCP->IP, IP->tip),
measured on the flattened open hand model. The conversion is a documented approximation of
hand anatomy, not a fit to MANO data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FINGERS = ("index", "middle", "ring", "little")
#: Position of each finger's three joints in MANO's ``hand_pose`` (15 joints x 3).
MANO_FINGER_SLOTS = {"index": 0, "middle": 3, "little": 6, "ring": 9, "thumb": 12}

PALM_NORMAL = torch.tensor([0.0, -1.0, 0.0])
THUMB_DIRECTIONS = torch.tensor([[-0.511, 0.0, 0.859], [-0.8, 0.0, 0.6], [-0.933, 0.0, 0.36]])
THUMB_PRONATION_DEG = 30.0

#: Anatomical limits in degrees (lower, upper), used to validate presets and bound sampling.
LIMITS = {
    "mcp": (-15.0, 90.0),
    "pip": (0.0, 110.0),
    "dip": (0.0, 90.0),
    "spread": (-25.0, 25.0),
    "thumb_abduct": (-10.0, 70.0),
    "thumb_cross": (-30.0, 60.0),
    "thumb_mcp": (-10.0, 60.0),
    "thumb_ip": (-15.0, 80.0),
}


@dataclass(frozen=True)
class FingerAngles:
    """One long finger in degrees: MCP/PIP/DIP flexion and MCP spread (+ towards the thumb)."""

    mcp: float = 0.0
    pip: float = 0.0
    dip: float = 0.0
    spread: float = 0.0


@dataclass(frozen=True)
class ThumbAngles:
    """The thumb in degrees: CMC palmar abduction and cross-palm swing, MCP and IP flexion."""

    abduct: float = 0.0
    cross: float = 0.0
    mcp: float = 0.0
    ip: float = 0.0


@dataclass(frozen=True)
class HandAngles:
    """Anatomical articulation of one (right) hand; converts to MANO ``hand_pose``."""

    index: FingerAngles = FingerAngles()
    middle: FingerAngles = FingerAngles()
    ring: FingerAngles = FingerAngles()
    little: FingerAngles = FingerAngles()
    thumb: ThumbAngles = ThumbAngles()

    @classmethod
    def from_dict(cls, data: dict, where: str = "angles") -> "HandAngles":
        """Parse ``{"index": {"mcp":..}, ..., "thumb": {"abduct":..}}``; missing = 0.

        Raises:
            ValueError: unknown finger or angle names, non-numbers, or angles outside ``LIMITS``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object of fingers, got {type(data).__name__}")
        unknown = set(data) - set(FINGERS) - {"thumb"}
        if unknown:
            raise ValueError(f"{where}: unknown finger(s) {sorted(unknown)}; use {FINGERS + ('thumb',)}")
        kwargs = {}
        for finger, value in data.items():
            klass = ThumbAngles if finger == "thumb" else FingerAngles
            fields = klass.__dataclass_fields__
            if not isinstance(value, dict) or set(value) - set(fields):
                raise ValueError(f"{where}.{finger}: expected an object with keys among {list(fields)}")
            for key, angle in value.items():
                if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
                    raise ValueError(f"{where}.{finger}.{key}: expected a finite number of degrees")
                limit_key = f"thumb_{key}" if finger == "thumb" else key
                lo, hi = LIMITS[limit_key]
                if not lo <= angle <= hi:
                    raise ValueError(f"{where}.{finger}.{key}: {angle} degrees is outside the "
                                     f"anatomical range [{lo}, {hi}]")
            kwargs[finger] = klass(**value)
        return cls(**kwargs)

    def to_vector(self) -> torch.Tensor:
        """The 20 angles (degrees) in :data:`ANGLE_NAMES` order, float32."""
        values = []
        for name in FINGERS:
            f: FingerAngles = getattr(self, name)
            values += [f.mcp, f.pip, f.dip, f.spread]
        t = self.thumb
        values += [t.abduct, t.cross, t.mcp, t.ip]
        return torch.tensor(values, dtype=torch.float32)

    def to_hand_pose(self) -> torch.Tensor:
        """MANO ``hand_pose`` (45,) float32 axis-angle in radians, relative to the flat hand."""
        return angles_to_hand_pose(self.to_vector()).float()


#: The anatomical angles of one hand as a vector: per long finger (index, middle, ring,
#: little) MCP, PIP, DIP flexion and MCP spread, then the thumb's CMC abduction, CMC cross,
#: MCP and IP flexion. 20 angles, degrees.
ANGLE_NAMES = tuple(f"{finger}_{joint}" for finger in FINGERS for joint in ("mcp", "pip", "dip", "spread")) \
    + ("thumb_abduct", "thumb_cross", "thumb_mcp", "thumb_ip")


def angle_limits() -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper anatomical limits (20,) float32 in degrees, in :data:`ANGLE_NAMES` order
    (from :data:`LIMITS`)."""
    keys = [name.split("_", 1)[1] if not name.startswith("thumb") else name for name in ANGLE_NAMES]
    lo = torch.tensor([LIMITS[k][0] for k in keys], dtype=torch.float32)
    hi = torch.tensor([LIMITS[k][1] for k in keys], dtype=torch.float32)
    return lo, hi


def _angle_axes() -> torch.Tensor:
    """The fixed unit rotation axis (20, 3) of each angle of :data:`ANGLE_NAMES`."""
    z = torch.tensor([0.0, 0.0, 1.0])
    y = torch.tensor([0.0, 1.0, 0.0])
    n, d = PALM_NORMAL, THUMB_DIRECTIONS
    c, si = math.cos(math.radians(THUMB_PRONATION_DEG)), math.sin(math.radians(THUMB_PRONATION_DEG))
    axes = [z, z, z, y] * len(FINGERS)  # mcp, pip, dip flexion about z; spread about y
    abduct = torch.linalg.cross(d[0], n)
    axes += [abduct, n]
    for k in (1, 2):
        out_of_plane = torch.linalg.cross(d[k], n)
        axes.append(c * n + si * out_of_plane / out_of_plane.norm())
    axes = torch.stack(axes)
    return axes / axes.norm(dim=1, keepdim=True)


_AXES = _angle_axes()


def _axis_terms(axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rodrigues' constant terms of fixed unit axes (20, 3): the cross-product matrices [a]x
    and their squares, each (20, 3, 3), so R(theta) = I + sin(theta) [a]x + (1 - cos(theta)) [a]x^2."""
    zero = torch.zeros_like(axes[:, 0])
    x, y, z = axes.unbind(-1)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    return cross, cross @ cross


_CROSS, _CROSS2 = _axis_terms(_AXES)


def _joint_factors() -> tuple[torch.Tensor, torch.Tensor]:
    """Per MANO joint (15), the angles whose rotations make it, outer @ inner (index 20 is the
    identity): long-finger MCP = spread @ mcp, thumb CMC = cross @ abduct, the others alone."""
    outer, inner = [20] * 15, [20] * 15
    for k, name in enumerate(FINGERS):
        s = MANO_FINGER_SLOTS[name]
        outer[s], inner[s] = 4 * k + 3, 4 * k
        outer[s + 1], outer[s + 2] = 4 * k + 1, 4 * k + 2
    s = MANO_FINGER_SLOTS["thumb"]
    outer[s], inner[s] = 17, 16
    outer[s + 1], outer[s + 2] = 18, 19
    return torch.tensor(outer), torch.tensor(inner)


_OUTER, _INNER = _joint_factors()


def angles_to_rotmats(angles: torch.Tensor) -> torch.Tensor:
    """Anatomical angles -> the 15 MANO joint rotations as matrices, batched and differentiable.

    Args:
        angles: (..., 20) degrees in :data:`ANGLE_NAMES` order (right-hand convention; limits
            are not applied here).

    Returns: (..., 15, 3, 3) rotation matrices, MANO joint order, relative to the flat hand,
    same dtype as ``angles``. Long fingers: MCP = R_y(spread) R_z(mcp), PIP = R_z(pip),
    DIP = R_z(dip); thumb CMC = R_n(cross) R_(d1 x n)(abduct), MCP and IP about the pronated
    axes of the module docstring.
    """
    theta = torch.deg2rad(angles)[..., None, None]  # rotations about fixed axes: Rodrigues
    R = torch.eye(3, dtype=angles.dtype) + torch.sin(theta) * _CROSS.to(angles) \
        + (1.0 - torch.cos(theta)) * _CROSS2.to(angles)  # (..., 20, 3, 3)
    R = torch.cat([R, torch.eye(3, dtype=R.dtype).expand(*R.shape[:-3], 1, 3, 3)], dim=-3)  # 20: identity
    return R[..., _OUTER, :, :] @ R[..., _INNER, :, :]  # one gather per factor: few autograd nodes


def angles_to_hand_pose(angles: torch.Tensor) -> torch.Tensor:
    """Anatomical angles (..., 20) degrees -> MANO ``hand_pose`` (..., 45) axis-angle, radians:
    :func:`angles_to_rotmats` as axis-angle (for fitting: batched and differentiable)."""
    import roma

    return roma.rotmat_to_rotvec(angles_to_rotmats(angles)).flatten(-2)


def sample_angles(generator: torch.Generator) -> HandAngles:
    """Random articulation within ``LIMITS``: one curl level per finger, correlated joints.

    Each long finger draws a curl ``c`` in [0, 1] around a hand-wide curl (so fists and open
    hands both occur); MCP = 85c, PIP = 100c, DIP = 0.7 PIP, each with Gaussian jitter
    (8 degrees) and clipped to the limits; spread is Gaussian (6 degrees). The thumb's four
    angles are uniform within 80% of their ranges.
    """

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    def normal(std: float) -> float:
        return std * torch.randn((), generator=generator).item()

    def clip(key: str, value: float) -> float:
        lo, hi = LIMITS[key]
        return min(max(value, lo), hi)

    hand_curl = uniform(0.0, 1.0)
    fingers = {}
    for name in FINGERS:
        curl = min(max(hand_curl + normal(0.25), 0.0), 1.0)
        pip = clip("pip", 100 * curl + normal(8))
        fingers[name] = FingerAngles(
            mcp=clip("mcp", 85 * curl + normal(8)),
            pip=pip,
            dip=clip("dip", 0.7 * pip + normal(8)),
            spread=clip("spread", normal(6)),
        )

    def span(key: str) -> float:
        lo, hi = LIMITS[key]
        mid, half = (lo + hi) / 2, 0.4 * (hi - lo)
        return uniform(mid - half, mid + half)

    thumb = ThumbAngles(abduct=span("thumb_abduct"), cross=span("thumb_cross"),
                        mcp=span("thumb_mcp"), ip=span("thumb_ip"))
    return HandAngles(thumb=thumb, **fingers)
