"""Fixtures of the renderer tests: a shared moderngl renderer and small synthetic hands."""

from __future__ import annotations

import pytest
import torch
import trimesh

from sesahand.camera import Camera
from sesahand.hands.types import HandMesh
from sesahand.render import Renderer


@pytest.fixture(scope="session")
def gl_renderer():
    """One moderngl (EGL) renderer for the whole session, closed at the end."""
    renderer = Renderer("moderngl")
    yield renderer
    renderer.close()


@pytest.fixture
def camera64() -> Camera:
    """64 x 64 pixels, f = 80 px, principal point at the image centre."""
    return Camera(K=torch.tensor([[80.0, 0.0, 32.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]]),
                  width=64, height=64)


def _ellipsoid(center, radii=(0.04, 0.05, 0.01), side="right", subdivisions=3) -> HandMesh:
    """A closed ellipsoid "hand" whose 21 joints lie inside it, on its long (y) axis at up to
    60 % of the radius, wrist first. The default half-thickness (z) of 1 cm keeps every joint
    within the visibility tolerance of the surface in front of it."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    center = torch.tensor(center, dtype=torch.float32)
    radii = torch.tensor(radii, dtype=torch.float32)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) * radii + center
    t = torch.linspace(-0.6, 0.6, 21)[:, None]
    joints = center + t * torch.tensor([0.0, 1.0, 0.0]) * radii
    return HandMesh(vertices=vertices, faces=torch.tensor(sphere.faces, dtype=torch.int64),
                    joints=joints, side=side, model="test")


@pytest.fixture
def ellipsoid():
    """Factory ``ellipsoid(center, radii=(0.04, 0.05, 0.01), side="right", subdivisions=3)``
    of closed ellipsoid hand meshes (metres, camera frame) with joints inside."""
    return _ellipsoid
