"""From scenes to condition images and labels: the render job shared by the CLI and the nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import __version__
from .hands.base import HandModel
from .hands.types import HandMesh, HandScene
from .render import Conditions, HandLabels, render_conditions


@dataclass
class RenderedHands:
    """What was rendered, frame by frame: the scenes, posed meshes and labels.

    This is the ``SESAHAND_HANDS`` object of the nodes and the source of ``labels.json``.

    Attributes:
        scenes: B scenes (hand parameters and camera of each frame).
        meshes: B lists of posed :class:`HandMesh` (camera frame, metres).
        labels: B lists of :class:`~sesahand.render.HandLabels` (joints 3D/2D, visibility, box).
        model: name of the hand model used.
    """

    scenes: list[HandScene]
    meshes: list[list[HandMesh]]
    labels: list[list[HandLabels]]
    model: str

    def frame_dict(self, index: int) -> dict:
        """JSON-ready labels of frame ``index``: camera, and per hand its MANO parameters,
        joints (OpenPose order), visibility, box and notes."""
        scene = self.scenes[index]
        hands = []
        for params, labels in zip(scene.hands, self.labels[index]):
            hand = params.to_dict()
            hand.update(labels.to_dict())
            hands.append(hand)
        return {
            "sesahand_version": __version__,
            "hand_model": self.model,
            "joint_order": "openpose",
            "camera": scene.camera.to_dict(),
            "hands": hands,
        }


def render_scenes(model: HandModel, scenes: list[HandScene], backend: str = "auto",
                  progress: Callable[[int, int], None] | None = None, arm: str = "none",
                  arm_cache_dir=None) -> tuple[Conditions, RenderedHands]:
    """Pose every scene's hands with ``model`` and render all condition maps.

    Args:
        model: the hand model.
        scenes: B scenes, all with the same image size.
        backend: renderer backend (``"auto"``, ``"moderngl"``, ``"nvdiffrast"``).
        progress: called as ``progress(done, total)`` after each rendered frame.
        arm: ``"none"`` (the hands alone), ``"forearm"`` or ``"arm"``: Anny's forearm / arm
            attached to every hand (``sesahand.hands.arm``; with MANO hands, scaled to the
            MANO palm), in every map, with its own mask and labels.
        arm_cache_dir: folder of the Anny body cache (default: :func:`default_cache_dir`).

    Returns: the conditions (B frames) and the :class:`RenderedHands` record.
    Raises: ValueError if the scenes differ in image size, or an unknown ``arm``.
    """
    from .hands.arm import check_arm, load_arm_model

    arms_model = load_arm_model(arm_cache_dir) if check_arm(arm) != "none" else None
    sizes = {(s.camera.width, s.camera.height) for s in scenes}
    if len(sizes) > 1:
        raise ValueError(f"scenes have different image sizes {sorted(sizes)}; render them in separate batches")
    if not scenes:
        raise ValueError("no scenes to render: give at least one frame")
    meshes, parts = [], []
    for i, scene in enumerate(scenes):
        meshes.append(model(scene.hands))
        arms = [arms_model.attach(meshes[-1], arm, scene.elbow_flexion)] \
            if arms_model is not None else None
        parts.append(render_conditions(meshes[-1:], [scene.camera], backend=backend, arms=arms))
        if progress is not None:
            progress(i + 1, len(scenes))
    conditions = Conditions.concat(parts)
    return conditions, RenderedHands(scenes=scenes, meshes=meshes, labels=conditions.labels, model=model.name)
