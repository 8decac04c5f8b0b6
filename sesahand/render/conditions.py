"""What the renderer returns: condition maps of a batch of frames, and per-hand labels."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..io import atomic_path, to_uint8


@dataclass
class ArmLabels:
    """Labels of the arm rendered with a hand (``arm`` option).

    Attributes:
        kind: ``"forearm"`` or ``"arm"``.
        joints3d: (K, 3) float32 metres, camera frame: wrist, elbow (, shoulder for ``arm``).
        joints2d: (K, 2) float32 pixels.
        visible: (K,) bool, as for hands (in front, inside the image, not hidden by another
            surface; the arm's own surface and its hand may lie up to 6 cm in front).
        box: (4,) float32 pixels of the arm's visible pixels, or None (clipped away or hidden).
        elbow_flexion: radians, as placed.
    """

    kind: str
    joints3d: torch.Tensor
    joints2d: torch.Tensor
    visible: torch.Tensor
    box: torch.Tensor | None
    elbow_flexion: float

    def to_dict(self) -> dict:
        """JSON-ready dict; ``joint_names`` says the order."""
        names = ("wrist", "elbow", "shoulder")[:self.joints3d.shape[0]]
        return {"kind": self.kind, "joint_names": list(names),
                "joints3d": self.joints3d.tolist(), "joints2d": self.joints2d.tolist(),
                "visible": self.visible.tolist(),
                "box": None if self.box is None else self.box.tolist(),
                "elbow_flexion": self.elbow_flexion}


@dataclass
class HandLabels:
    """Labels of one rendered hand.

    Attributes:
        side: ``"right"`` or ``"left"``.
        model: hand model that made the mesh (``"anny"`` or ``"mano"``).
        joints3d: (21, 3) float32, metres, camera frame (OpenCV), OpenPose/FreiHAND order.
        joints2d: (21, 2) float32 pixels, pixel centres at +0.5 (``Camera.project``).
        visible: (21,) bool; a joint is visible when it is in front of the camera, projects
            inside the image, no other hand covers it there, and its own hand's surface at its
            pixel is not nearer than the joint by more than the joint's tolerance (joints lie
            inside the mesh; see ``sesahand.render.renderer.joint_visibility``).
        box: (4,) float32 ``x0, y0, x1, y1`` pixels of the hand's visible pixels, max
            exclusive (a one-pixel hand at column 5, row 7 has box 5, 7, 6, 8); ``None`` when
            the hand has no visible pixel.
        notes: remarks carried over from the mesh, plus one if the hand is not visible.
        arm: the labels of the arm rendered with this hand, or None (no ``arm`` option).

    All tensors are on the CPU.
    """

    side: str
    model: str
    joints3d: torch.Tensor
    joints2d: torch.Tensor
    visible: torch.Tensor
    box: torch.Tensor | None
    notes: list[str] = field(default_factory=list)
    arm: ArmLabels | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict: lists of floats / bools, ``box`` None when absent; ``arm`` only
        when an arm was rendered."""
        extra = {} if self.arm is None else {"arm": self.arm.to_dict()}
        return {
            "side": self.side,
            "model": self.model,
            "joints3d": self.joints3d.tolist(),
            "joints2d": self.joints2d.tolist(),
            "visible": self.visible.tolist(),
            "box": None if self.box is None else self.box.tolist(),
            "notes": list(self.notes),
            **extra,
        }


@dataclass
class Conditions:
    """Condition maps of B frames of equal size H x W (see ``sesahand.render.maps`` for the
    colour conventions). Image tensors live on the backend's device (CPU for moderngl, the
    CUDA device for nvdiffrast); labels are on the CPU.

    Attributes:
        mesh: (B, H, W, 3) float32 0..1, Lambert-shaded hands on black, colour by side.
        depth: (B, H, W) float32 camera z in metres of the nearest hand surface, 0 where no
            hand.
        depth_image: (B, H, W) float32 0..1, HandRefiner-style depth: per hand (with its
            arm, when one is rendered), near = 1.0, the farthest visible pixel = 0.2,
            background 0.
        normal: (B, H, W, 3) float32 0..1, NormalBAE colours ``(1 - n) / 2`` of the unit
            camera-facing normal n (OpenCV frame); background 0 (black).
        masks: per frame a (Nh, H, W) bool tensor, one mask of visible pixels per hand, in
            input order (a hand hidden behind another loses those pixels).
        mask: (B, H, W) float32 0/1, union of the hand masks.
        pose: (B, H, W, 3) float32 0..1, OpenPose hand skeletons on black (and the
            OpenPose body limbs of arms).
        labels: per frame, one ``HandLabels`` per hand, in input order.
        arm_mask: (B, H, W) float32 0/1, union of the arms' visible pixels (zeros without
            arms). ``mesh``, ``depth``, ``depth_image`` and ``normal`` show arms too; ``mask``
            and ``masks`` stay the hands'.
        arm_masks: per frame a (Na, H, W) bool tensor, one per arm in hand order (Na = 0
            without arms).
    """

    mesh: torch.Tensor
    depth: torch.Tensor
    depth_image: torch.Tensor
    normal: torch.Tensor
    masks: list[torch.Tensor]
    mask: torch.Tensor
    pose: torch.Tensor
    labels: list[list[HandLabels]]
    arm_mask: torch.Tensor | None = None
    arm_masks: list[torch.Tensor] | None = None

    @classmethod
    def concat(cls, parts: "list[Conditions]") -> "Conditions":
        """Join batches of equal frame size into one, frames in order.

        Raises: ValueError for an empty list.
        """
        if not parts:
            raise ValueError("Conditions.concat: no batches to join")

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        arms = all(p.arm_mask is not None for p in parts)
        return cls(mesh=cat("mesh"), depth=cat("depth"), depth_image=cat("depth_image"),
                   normal=cat("normal"), masks=[m for p in parts for m in p.masks], mask=cat("mask"),
                   pose=cat("pose"), labels=[lab for p in parts for lab in p.labels],
                   arm_mask=cat("arm_mask") if arms else None,
                   arm_masks=[m for p in parts for m in p.arm_masks] if arms else None)


def save_conditions(cond: Conditions, index: int, out_dir) -> dict[str, Path]:
    """Write frame ``index`` of ``cond`` as 8-bit PNGs in ``out_dir`` (created if missing).

    Files: ``mesh.png`` (RGB), ``depth.png`` (grey, the HandRefiner-style ``depth_image``,
    near = bright), ``normal.png`` (RGB), ``pose.png`` (RGB), ``mask.png`` (grey, hands 255),
    and ``arm_mask.png`` (grey, arms 255) when the frame has arms.
    Every file is first written to a temporary file in ``out_dir`` and moved into place only
    once all five are written, so an error leaves no partial file and no half-replaced set;
    files get the usual permissions (0666 minus the umask).

    Returns:
        ``{"mesh": path, "depth": path, "normal": path, "pose": path, "mask": path}`` (and
        ``"arm_mask"``).

    Raises:
        IndexError: ``index`` is not a frame of ``cond``.
    """
    batch = cond.mesh.shape[0]
    if not -batch <= index < batch:
        raise IndexError(f"index: frame {index} does not exist; the conditions hold {batch} "
                         f"frame(s), give 0..{batch - 1}")
    images = {
        "mesh": Image.fromarray(to_uint8(cond.mesh[index]), "RGB"),
        "depth": Image.fromarray(to_uint8(cond.depth_image[index]), "L"),
        "normal": Image.fromarray(to_uint8(cond.normal[index]), "RGB"),
        "pose": Image.fromarray(to_uint8(cond.pose[index]), "RGB"),
        "mask": Image.fromarray(to_uint8(cond.mask[index]), "L"),
    }
    if cond.arm_masks is not None and cond.arm_masks[index].shape[0]:
        images["arm_mask"] = Image.fromarray(to_uint8(cond.arm_mask[index]), "L")
    out = Path(out_dir)
    paths = {name: out / f"{name}.png" for name in images}
    with ExitStack() as stack:  # renames happen on leaving, once every file is written
        for name, image in images.items():
            image.save(stack.enter_context(atomic_path(paths[name])), format="PNG")
    return paths
