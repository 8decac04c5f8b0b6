"""Pose-aware hand action (beyond the paper): describe the conditioning hand from its joints.

When the hand mesh that conditions generation is known, its articulation is a better source
for the hand-action phrase than the caption: a prompt saying "waving" over a fist mesh pulls
the image away from its labels. This module measures per-finger flexion from the 21 joints,
names the gesture where it is clear (:func:`describe_hand`), and checks a caption's hand action
against the hands (:func:`reconcile_hand_action`).

Input joints: (21, 3), metres, any right-handed or mirrored frame (angles and distances do
not depend on it; "thumbs up" uses the camera frame's up, -y, OpenCV convention), OpenPose /
FreiHAND order (``sesahand.hands.types.OPENPOSE_JOINT_NAMES``): ``HandMesh.joints`` and
``HandLabels.joints3d`` of either hand model.

Measures (degrees, from the bone vectors of each finger's chain wrist -> 4 joints):

* flexion at each of a finger's three joints: the angle between consecutive bones (0 = in
  line); long fingers MCP, PIP, DIP; thumb CMC, MCP, IP;
* a long finger is ``extended`` when its total flexion is below :data:`EXTENDED_MAX`,
  ``curled`` at or above :data:`CURLED_MIN`, else ``bent``; the thumb is ``extended`` when
  its MCP + IP flexion is below :data:`THUMB_EXTENDED_MAX`, else ``flexed``;
* spread: the angle between the index and little proximal phalanges;
* thumb-index contact: tip distance below :data:`CONTACT_MAX` palm lengths (wrist to middle
  MCP).

Gesture rules, first match wins (the thresholds sit between the built-in presets of
``sesahand/hands/data/presets.json`` as the open hand model renders them):

1. thumb-index contact with the index flexed at least 40 degrees more than every other long
   finger: ``OK sign`` when the other three are extended, else ``pinch``;
2. all four long fingers curled: thumb extended and pointing up (-y) ``thumbs up``, down
   ``thumbs down``; thumb flexed ``fist``;
3. index (+ middle, + little) extended, the rest folded (total >= 100): ``pointing``,
   ``peace sign``, ``rock sign`` (thumb flexed); little and thumb extended, the rest folded:
   ``call-me sign``;
4. all four extended and the thumb extended: ``spread fingers`` when the spread is at least
   :data:`SPREAD_MIN`, else ``open palm``;
5. knuckles straight (MCP < 30) and the finger ends bent (PIP + DIP > 90): ``claw``;
   knuckles bent (MCP > 40), finger ends straight (PIP + DIP < 30): ``flat grasp``;
6. no long finger extended and a mean total flexion >= 85: ``power grasp`` at >= 115, else
   ``spherical grasp`` (spread >= 50) or ``loose grasp``;
7. no finger curled, mean total below 85: ``relaxed hand``;
8. otherwise no name: the phrase lists the finger states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..attention.words import split_words

FINGERS = ("thumb", "index", "middle", "ring", "little")
LONG_FINGERS = FINGERS[1:]
#: OpenPose joint indices of each finger's chain, starting at the wrist.
CHAINS = {"thumb": (0, 1, 2, 3, 4), "index": (0, 5, 6, 7, 8), "middle": (0, 9, 10, 11, 12),
          "ring": (0, 13, 14, 15, 16), "little": (0, 17, 18, 19, 20)}

EXTENDED_MAX = 35.0  #: a long finger with less total flexion (degrees) is extended
CURLED_MIN = 160.0  #: a long finger with at least this total flexion is curled
FOLDED_MIN = 100.0  #: "folded" (not raised) in the sign patterns
THUMB_EXTENDED_MAX = 50.0  #: thumb MCP + IP flexion below this: extended
CONTACT_MAX = 0.5  #: thumb-index tip distance, in palm lengths, that counts as touching
SPREAD_MIN = 58.0  #: index-little spread (degrees) of "spread fingers"

#: Verb-led phrase of each gesture; {hand} is "the right hand", "the left hand", "one hand".
GESTURE_PHRASES = {
    "OK sign": "making an OK sign with {hand}",
    "pinch": "pinching with the thumb and index finger of {hand}",
    "thumbs up": "giving a thumbs up with {hand}",
    "thumbs down": "giving a thumbs down with {hand}",
    "fist": "making a fist with {hand}",
    "pointing": "pointing with the index finger of {hand}",
    "peace sign": "making a peace sign with {hand}",
    "rock sign": "making a rock sign with {hand}",
    "call-me sign": "making a call-me sign with {hand}",
    "spread fingers": "spreading the fingers of {hand}",
    "open palm": "showing the open palm of {hand}",
    "claw": "bending the fingers of {hand} into a claw",
    "flat grasp": "holding {hand} in a flat grasp",
    "power grasp": "holding {hand} in a power grasp",
    "spherical grasp": "holding {hand} in a spherical grasp",
    "loose grasp": "holding {hand} in a loose grasp",
    "relaxed hand": "holding {hand} relaxed, the fingers gently curled",
}

#: What a caption's hand action implies about the hand, by keyword (lower-case phrases
#: matched word by word), and the gestures that satisfy it.
TEXT_EXPECTATIONS = {
    "an open hand": (("wave",), ("waves",), ("waving",), ("open", "hand"), ("open", "palm"),
                     ("high", "five"), ("spread",), ("spreading",), ("open", "hands")),
    "a fist": (("fist",), ("fists",), ("punch",), ("punching",), ("clenched",)),
    "pointing": (("point",), ("points",), ("pointing",)),
    "a thumbs up": (("thumbs", "up"), ("thumb", "up")),
    "a peace sign": (("peace", "sign"), ("victory", "sign"), ("v", "sign")),
    "an OK sign": (("ok", "sign"), ("okay", "sign"), ("ok", "gesture")),
    "a grip": (("holding",), ("holds",), ("hold",), ("grasping",), ("gripping",),
               ("grabbing",), ("carrying",), ("clutching",)),
}
COMPATIBLE = {
    "an open hand": {"open palm", "spread fingers", "relaxed hand"},
    "a fist": {"fist", "thumbs up", "thumbs down"},
    "pointing": {"pointing"},
    "a thumbs up": {"thumbs up"},
    "a peace sign": {"peace sign"},
    "an OK sign": {"OK sign"},
    # a grip is contradicted only by a flat open hand
    "a grip": set(GESTURE_PHRASES) - {"open palm", "spread fingers"},
}


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _as_joints(joints) -> np.ndarray:
    try:
        j = np.asarray(joints.detach().cpu() if hasattr(joints, "detach") else joints,
                       dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"joints: expected a (21, 3) array of numbers ({exc})") from None
    if j.shape != (21, 3):
        raise ValueError(f"joints: expected shape (21, 3) (OpenPose order, metres), got "
                         f"{j.shape}")
    if not np.isfinite(j).all():
        raise ValueError("joints: contains NaN or infinite values")
    if np.linalg.norm(j[9] - j[0]) < 1e-6:
        raise ValueError("joints: the wrist and middle MCP coincide; not a hand")
    return j


def finger_flexion(joints) -> dict[str, tuple[float, float, float]]:
    """Flexion angles (degrees) at the three joints of each finger.

    Args:
        joints: (21, 3) array-like (numpy or torch), OpenPose order, metres.

    Returns:
        ``{"thumb": (CMC, MCP, IP), "index": (MCP, PIP, DIP), ...}``: angle between
        consecutive bones, 0 for a straight chain.

    Raises:
        ValueError: wrong shape, non-finite values, or a degenerate hand.
    """
    j = _as_joints(joints)
    out = {}
    for name, chain in CHAINS.items():
        bones = [j[chain[k + 1]] - j[chain[k]] for k in range(4)]
        out[name] = tuple(_angle(bones[k], bones[k + 1]) for k in range(3))
    return out


@dataclass(frozen=True)
class HandPoseDescription:
    """What one hand's joints show.

    Attributes:
        side: ``"right"``, ``"left"`` or ``""`` (unknown).
        flexion: :func:`finger_flexion` (degrees).
        states: finger -> ``"extended"`` / ``"bent"`` / ``"curled"`` (thumb: ``"extended"`` /
            ``"flexed"``).
        gesture: the gesture name (a key of :data:`GESTURE_PHRASES`) or None.
        phrase: verb-led hand-action phrase for a prompt ("making a fist with the right
            hand").
    """

    side: str
    flexion: dict
    states: dict
    gesture: str | None
    phrase: str


def _hand_name(side: str) -> str:
    return f"the {side} hand" if side else "one hand"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _states_phrase(states: dict, hand: str) -> str:
    groups: dict[str, list[str]] = {}
    for finger in FINGERS:
        groups.setdefault(states[finger], []).append(finger)
    parts = []
    for state in ("extended", "bent", "flexed", "curled"):
        names = groups.get(state)
        if names:
            noun = "finger" if len(names) == 1 else "fingers"
            noun = "" if names == ["thumb"] else f" {noun}"
            parts.append(f"the {_join(names)}{noun} {state}")
    return f"holding {hand} with {_join(parts)}"


def _gesture(j: np.ndarray, flex: dict, states: dict) -> str | None:
    totals = {f: sum(flex[f]) for f in LONG_FINGERS}
    palm = np.linalg.norm(j[9] - j[0])
    others = [totals[f] for f in ("middle", "ring", "little")]
    thumb_ext = states["thumb"] == "extended"
    if np.linalg.norm(j[4] - j[8]) / palm < CONTACT_MAX and totals["index"] - max(others) > 40:
        return "OK sign" if max(others) < EXTENDED_MAX else "pinch"
    if all(states[f] == "curled" for f in LONG_FINGERS):
        if not thumb_ext:
            return "fist"
        up = (j[4] - j[2])[1] / max(np.linalg.norm(j[4] - j[2]), 1e-12)
        return "thumbs up" if up < -0.3 else "thumbs down" if up > 0.3 else None
    ext = {f for f in LONG_FINGERS if states[f] == "extended"}
    folded = {f for f in LONG_FINGERS if totals[f] >= FOLDED_MIN}
    patterns = ((("index",), "pointing", None), (("index", "middle"), "peace sign", None),
                (("index", "little"), "rock sign", False), (("little",), "call-me sign", True))
    for raised, name, thumb in patterns:
        if ext == set(raised) and folded == set(LONG_FINGERS) - ext \
                and (thumb is None or thumb == thumb_ext):
            return name
    spread = _angle(j[6] - j[5], j[18] - j[17])
    if len(ext) == 4:
        if not thumb_ext:
            return None
        return "spread fingers" if spread >= SPREAD_MIN else "open palm"
    mcp = [flex[f][0] for f in LONG_FINGERS]
    ends = [flex[f][1] + flex[f][2] for f in LONG_FINGERS]
    if max(mcp) < 30 and min(ends) > 90:
        return "claw"
    if min(mcp) > 40 and max(ends) < 30:
        return "flat grasp"
    mean = sum(totals.values()) / 4
    if not ext and mean >= 85:
        if mean >= 115:
            return "power grasp"
        return "spherical grasp" if spread >= 50 else "loose grasp"
    if "curled" not in states.values() and mean < 85:
        return "relaxed hand"
    return None


def describe_hand(joints, side: str = "") -> HandPoseDescription:
    """Describe one hand's articulation (see the module docstring for the rules).

    Args:
        joints: (21, 3) array-like, OpenPose order, metres (camera frame for "thumbs up").
        side: ``"right"``, ``"left"`` or ``""`` when unknown (the phrase says "one hand").

    Raises:
        ValueError: bad joints (see :func:`finger_flexion`) or an unknown side.
    """
    if side not in ("right", "left", ""):
        raise ValueError(f"side: expected 'right', 'left' or '' (unknown), got {side!r}")
    j = _as_joints(joints)
    flex = finger_flexion(j)
    states = {}
    for finger in LONG_FINGERS:
        total = sum(flex[finger])
        states[finger] = ("extended" if total < EXTENDED_MAX
                          else "curled" if total >= CURLED_MIN else "bent")
    states["thumb"] = ("extended" if flex["thumb"][1] + flex["thumb"][2] < THUMB_EXTENDED_MAX
                       else "flexed")
    gesture = _gesture(j, flex, states)
    hand = _hand_name(side)
    phrase = (GESTURE_PHRASES[gesture].format(hand=hand) if gesture
              else _states_phrase(states, hand))
    return HandPoseDescription(side, flex, states, gesture, phrase)


def describe_hands(descriptions: list[HandPoseDescription]) -> str:
    """One phrase for several hands: their phrases joined with " and "."""
    return " and ".join(d.phrase for d in descriptions)


def text_expectations(text: str) -> list[str]:
    """What a hand-action text implies (keys of :data:`TEXT_EXPECTATIONS`), in table order."""
    words = split_words(text)
    found = []
    for name, keys in TEXT_EXPECTATIONS.items():
        if any(words[i:i + len(k)] == list(k) for k in keys for i in range(len(words))):
            found.append(name)
    return found


@dataclass(frozen=True)
class HandActionCheck:
    """Outcome of :func:`reconcile_hand_action`.

    Attributes:
        phrase: the hand action to use.
        source: ``"text"`` or ``"pose"``.
        conflicts: one note per contradiction found (empty when none).
    """

    phrase: str
    source: str
    conflicts: list[str] = field(default_factory=list)


def reconcile_hand_action(text: str, hands: list[HandPoseDescription]) -> HandActionCheck:
    """Check a caption's hand action against the conditioning hands.

    Each expectation of the text (:func:`text_expectations`) must be met by at least one
    hand's gesture (:data:`COMPATIBLE`); a hand without a gesture name meets none of them
    except "a grip". On any contradiction the pose-derived phrase
    (:func:`describe_hands`) replaces the text and each contradiction is recorded. An empty
    text is replaced by the pose-derived phrase without a conflict. Without hands the text
    stands.
    """
    if not hands:
        return HandActionCheck(text, "text")
    pose_phrase = describe_hands(hands)
    if not text.strip():
        return HandActionCheck(pose_phrase, "pose")
    conflicts = []
    for expected in text_expectations(text):
        ok = COMPATIBLE[expected]
        if not any(h.gesture in ok or (expected == "a grip" and h.gesture is None)
                   for h in hands):
            shown = _join([f"{_hand_name(h.side)} shows {h.gesture or 'no named gesture'}"
                           for h in hands])
            conflicts.append(f"the caption's hand action {text!r} implies {expected}, "
                             f"but {shown}")
    if conflicts:
        return HandActionCheck(pose_phrase, "pose", conflicts)
    return HandActionCheck(text, "text")
