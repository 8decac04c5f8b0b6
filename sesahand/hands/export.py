"""Mesh export for viewers (core ComfyUI ``Preview3D``, Blender): binary glTF (.glb)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..io import atomic_write_bytes, to_uint8
from .types import HAND_COLORS, HandMesh


def export_glb(meshes: Sequence[HandMesh], path: str | Path) -> Path:
    """Write the hands of one frame to a .glb file, atomically.

    Vertices are converted from the OpenCV camera frame (y down, z forward) to glTF's
    (y up, z towards the viewer) by negating y and z, so viewers show the hands upright as
    in the image. One node per hand, named ``<side>_hand_<i>``, coloured like the mesh condition
    (``sesahand.hands.types.HAND_COLORS``).

    Raises: ValueError when ``meshes`` is empty.
    """
    import numpy as np
    import trimesh

    if not meshes:
        raise ValueError("no hands to export: the frame has no hand meshes")
    scene = trimesh.Scene()
    flip = np.array([1.0, -1.0, -1.0], dtype=np.float32)
    for i, mesh in enumerate(meshes):
        tm = trimesh.Trimesh(vertices=mesh.vertices.detach().cpu().numpy() * flip,
                             faces=mesh.faces.cpu().numpy(), process=False)
        rgba = [*to_uint8(np.array(HAND_COLORS[mesh.side])), 255]
        tm.visual.vertex_colors = np.tile(rgba, (len(tm.vertices), 1))
        scene.add_geometry(tm, node_name=f"{mesh.side}_hand_{i}", geom_name=f"{mesh.side}_hand_{i}")
    return atomic_write_bytes(path, scene.export(file_type="glb"))
