"""Backend selection, start-up errors, and moderngl/nvdiffrast parity (CUDA only)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sesahand.camera import Camera
from sesahand.render import Renderer
from sesahand.render import renderer as renderer_module


def test_missing_egl_gives_a_clear_error(monkeypatch):
    import moderngl

    def no_egl(*args, **kwargs):
        raise Exception("eglGetDisplay failed")

    monkeypatch.setattr(moderngl, "create_context", no_egl)
    with pytest.raises(RuntimeError) as info:
        Renderer("moderngl")
    message = str(info.value)
    assert "moderngl backend" in message and "eglGetDisplay failed" in message
    assert "libegl1 libgl1-mesa-dri" in message and "nvdiffrast" in message


def test_auto_picks_moderngl_without_cuda_or_nvdiffrast(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert renderer_module.resolve_backend("auto") == "moderngl"
    with pytest.raises(RuntimeError, match="nvdiffrast backend: needs a CUDA device"):
        Renderer("nvdiffrast")


def test_auto_prefers_nvdiffrast_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "nvdiffrast" else None)
    assert renderer_module.resolve_backend("auto") == "nvdiffrast"


_HAS_NVDIFFRAST = torch.cuda.is_available() and importlib.util.find_spec("nvdiffrast") is not None


@pytest.mark.skipif(not _HAS_NVDIFFRAST, reason="needs CUDA and nvdiffrast")
def test_backends_agree(gl_renderer, ellipsoid):
    skewed = torch.tensor([[150.0, 2.0, 60.0], [0.0, 140.0, 50.0], [0.0, 0.0, 1.0]])
    cams = [Camera.default(128, 96), Camera(K=skewed, width=128, height=96)]
    hands = [ellipsoid((-0.02, 0.0, 0.45), radii=(0.04, 0.06, 0.02)),
             ellipsoid((0.03, 0.01, 0.5), radii=(0.03, 0.05, 0.03), side="left")]
    meshes = [hands, hands[::-1]]
    with Renderer("nvdiffrast") as nv:
        b = nv.render(meshes, cams)
    a = gl_renderer.render(meshes, cams)
    assert b.mesh.is_cuda and b.depth.is_cuda
    same = torch.cat([m.cpu() == n for m, n in zip(b.masks, a.masks)])
    # Pixels whose centre lies exactly on a triangle edge may go either way.
    assert same.float().mean() > 0.995
    both = (a.mask > 0) & (b.mask.cpu() > 0)
    for name, atol in (("mesh", 1e-4), ("normal", 1e-4), ("depth", 1e-5), ("depth_image", 1e-3)):
        x, y = getattr(a, name)[both], getattr(b, name).cpu()[both]
        close = (x - y).abs().reshape(len(x), -1).amax(dim=1) <= atol
        assert close.float().mean() > 0.99, name
    assert torch.equal(a.pose, b.pose.cpu())
    for la, lb in zip(a.labels, b.labels):
        for ha, hb in zip(la, lb):
            assert torch.equal(ha.joints2d, hb.joints2d)
            assert torch.equal(ha.visible, hb.visible)
            assert (ha.box - hb.box).abs().max() <= 1


def test_moderngl_falls_back_to_rgba_targets(camera64, ellipsoid, gl_renderer):
    """Drivers may refuse to render into RGB float targets; RGBA ones give the same maps."""
    import moderngl

    hands = [[ellipsoid((0.0, 0.0, 0.5)), ellipsoid((0.03, 0.0, 0.6), side="left")]]
    with Renderer("moderngl") as renderer:
        ctx = renderer._impl._ctx
        real = ctx.framebuffer
        refused = []

        def no_rgb_float(color_attachments=(), depth_attachment=None):
            if any(rb.components == 3 for rb in color_attachments):
                refused.append(True)
                raise moderngl.Error("the framebuffer is not complete")
            return real(color_attachments=color_attachments, depth_attachment=depth_attachment)

        ctx.framebuffer = no_rgb_float
        cond = renderer.render(hands, [camera64])
    assert refused
    expected = gl_renderer.render(hands, [camera64])
    for name in ("mesh", "normal", "depth", "depth_image", "mask", "pose"):
        assert torch.equal(getattr(cond, name), getattr(expected, name)), name


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton installed")
def test_triton_can_be_imported_after_a_moderngl_renderer_starts():
    """torch imports triton lazily; after llvmpipe has loaded its LLVM that import used to
    kill the process, so the backend imports triton first."""
    code = ("from sesahand.render import Renderer\n"
            "renderer = Renderer('moderngl')\n"
            "import triton\n"
            "renderer.close()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
