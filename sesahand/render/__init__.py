"""Render hand meshes into condition images and labels.

``Renderer`` / ``render_conditions`` turn a batch of frames (hand meshes + camera) into a
``Conditions``: the shaded mesh image (the SesaHand ControlNet input), metric and
HandRefiner-style depth, NormalBAE normals, per-hand masks, an OpenPose hand drawing, and per
hand ``HandLabels`` (21 joints in 3D and 2D with visibility, box). ``save_conditions`` writes
one frame as PNGs. Colour conventions are in ``sesahand.render.maps``.
"""

from .conditions import ArmLabels, Conditions, HandLabels, save_conditions
from .renderer import BACKENDS, Renderer, render_conditions

__all__ = ["BACKENDS", "ArmLabels", "Conditions", "HandLabels", "Renderer",
           "render_conditions", "save_conditions"]
