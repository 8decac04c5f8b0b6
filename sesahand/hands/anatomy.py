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


def _rot(axis: torch.Tensor, deg: float) -> torch.Tensor:
    import roma

    axis = axis / axis.norm()
    return roma.rotvec_to_rotmat(axis * math.radians(deg))


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

    def to_hand_pose(self) -> torch.Tensor:
        """MANO ``hand_pose`` (45,) float32 axis-angle in radians, relative to the flat hand."""
        import roma

        z = torch.tensor([0.0, 0.0, 1.0])
        y = torch.tensor([0.0, 1.0, 0.0])
        mats = torch.eye(3).repeat(15, 1, 1)
        for name in FINGERS:
            f: FingerAngles = getattr(self, name)
            s = MANO_FINGER_SLOTS[name]
            mats[s] = _rot(y, f.spread) @ _rot(z, f.mcp)
            mats[s + 1] = _rot(z, f.pip)
            mats[s + 2] = _rot(z, f.dip)
        t = self.thumb
        s = MANO_FINGER_SLOTS["thumb"]
        n = PALM_NORMAL
        d = THUMB_DIRECTIONS
        mats[s] = _rot(n, t.cross) @ _rot(torch.linalg.cross(d[0], n), t.abduct)
        c, si = math.cos(math.radians(THUMB_PRONATION_DEG)), math.sin(math.radians(THUMB_PRONATION_DEG))
        for k, angle in ((1, t.mcp), (2, t.ip)):
            out_of_plane = torch.linalg.cross(d[k], n)
            mats[s + k] = _rot(c * n + si * out_of_plane / out_of_plane.norm(), angle)
        return roma.rotmat_to_rotvec(mats).reshape(45).float()


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
