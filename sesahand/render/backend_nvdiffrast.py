"""nvdiffrast backend (optional): CUDA rasterisation, every tensor stays on the GPU."""

from __future__ import annotations

import torch

from .maps import shade
from .scene import FrameGeometry, GBuffer


class NvdiffrastBackend:
    """Rasterises hands with nvdiffrast's CUDA rasteriser (no OpenGL needed).

    Per frame: clip-space positions from the same projection as the moderngl backend, one
    ``rasterize`` (pixel centres at +0.5, depth test, no culling, no antialiasing), one
    ``interpolate`` of position, normal and colour (perspective-correct, as OpenGL), then
    ``maps.shade`` — the fragment shader's maths — on the interpolated values.

    Raises:
        RuntimeError: CUDA is not available or nvdiffrast is not importable.
    """

    name = "nvdiffrast"

    def __init__(self):
        if not torch.cuda.is_available():
            raise RuntimeError("nvdiffrast backend: needs a CUDA device and torch built with "
                               "CUDA; use backend='moderngl' on machines without one")
        try:
            import nvdiffrast.torch as dr
        except ImportError as exc:
            raise RuntimeError(f"nvdiffrast backend: nvdiffrast is not importable ({exc}); "
                               "install NVIDIA's nvdiffrast (NVlabs/nvdiffrast) into this "
                               "environment, or use backend='moderngl'") from None
        self._dr = dr
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._glctx = dr.RasterizeCudaContext(device=self.device)

    def rasterize(self, frames: list[FrameGeometry], width: int, height: int) -> GBuffer:
        """Render every frame; see :class:`sesahand.render.scene.GBuffer` for the outputs."""
        batch, dev = len(frames), self.device
        out = GBuffer(
            mesh=torch.zeros(batch, height, width, 3, device=dev),
            normal=torch.zeros(batch, height, width, 3, device=dev),
            depth=torch.zeros(batch, height, width, device=dev),
            hand=torch.zeros(batch, height, width, dtype=torch.uint8, device=dev),
        )
        for b, frame in enumerate(frames):
            if not frame.num_hands:
                continue
            verts = torch.cat(frame.vertices)
            offsets = torch.tensor([0] + [v.shape[0] for v in frame.vertices[:-1]],
                                   device=dev).cumsum(0)
            tri = torch.cat([f + o for f, o in zip(frame.faces, offsets)]).to(torch.int32)
            face_hand = torch.cat([torch.zeros(1, dtype=torch.uint8, device=dev)] + [
                torch.full((f.shape[0],), i + 1, dtype=torch.uint8, device=dev)
                for i, f in enumerate(frame.faces)])
            colors = torch.cat([c.expand(v.shape[0], 3)
                                for c, v in zip(frame.colors, frame.vertices)])
            proj = frame.projection.to(dev)
            clip = torch.cat([verts, torch.ones_like(verts[:, :1])], dim=1) @ proj.T
            rast, _ = self._dr.rasterize(self._glctx, clip[None].contiguous(), tri.contiguous(),
                                         resolution=(height, width))
            attrs = torch.cat([verts, torch.cat(frame.normals), colors], dim=1)
            interp, _ = self._dr.interpolate(attrs[None].contiguous(), rast, tri)
            interp = interp[0]
            tri_id = rast[0, ..., 3].long()
            fg = tri_id > 0
            mesh_rgb, normal_rgb = shade(interp[..., 0:3], interp[..., 3:6], interp[..., 6:9])
            fg3 = fg[..., None]
            out.mesh[b] = torch.where(fg3, mesh_rgb, 0.0)
            out.normal[b] = torch.where(fg3, normal_rgb, 0.0)
            out.depth[b] = torch.where(fg, interp[..., 2], 0.0)
            out.hand[b] = face_hand[tri_id]
        return out

    def close(self) -> None:
        """Drop the rasteriser context (idempotent)."""
        self._glctx = None
