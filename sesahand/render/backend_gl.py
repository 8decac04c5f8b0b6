"""moderngl backend: one headless EGL OpenGL 3.3 context (Mesa llvmpipe on CPU is enough)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading

import numpy as np
import torch

from .maps import AMBIENT
from .scene import FrameGeometry, GBuffer, ZeroArrays

logger = logging.getLogger(__name__)

_VERTEX_SHADER = """
#version 330
uniform mat4 projection;
in vec3 in_position;
in vec3 in_normal;
in vec3 in_color;
in float in_hand;
out vec3 v_position;
out vec3 v_normal;
out vec3 v_color;
flat out float v_hand;
void main() {
    v_position = in_position;
    v_normal = in_normal;
    v_color = in_color;
    v_hand = in_hand;
    gl_Position = projection * vec4(in_position, 1.0);
}
"""

# Same maths as maps.shade(); keep the two in step.
_FRAGMENT_SHADER = f"""
#version 330
in vec3 v_position;
in vec3 v_normal;
in vec3 v_color;
flat in float v_hand;
layout(location = 0) out vec4 out_mesh;
layout(location = 1) out vec4 out_normal;
layout(location = 2) out float out_depth;
layout(location = 3) out float out_hand;
void main() {{
    vec3 d = normalize(v_position);
    float len = length(v_normal);
    vec3 n = len > 1e-12 ? v_normal / len : -d;
    if (dot(n, d) > 0.0) n = -n;
    float lambert = max(-dot(n, d), 0.0);
    out_mesh = vec4(v_color * ({AMBIENT!r} + (1.0 - {AMBIENT!r}) * lambert), 1.0);
    out_normal = vec4(0.5 - 0.5 * n, 1.0);
    out_depth = v_position.z;
    out_hand = v_hand / 255.0;
}}
"""

_VERTEX_FORMAT = ("3f 3f 3f 1f", "in_position", "in_normal", "in_color", "in_hand")

_NO_EGL_HELP = (
    "install Mesa's EGL and OpenGL drivers (Debian/Ubuntu: apt-get install libegl1 "
    "libgl1-mesa-dri; they render on the CPU through llvmpipe when there is no GPU), or use "
    "backend='nvdiffrast' on a machine with CUDA and nvdiffrast"
)


class GLBackend:
    """Rasterises hands with moderngl into a G-buffer of multiple render targets.

    One context, program, vertex/index buffer and framebuffer are kept and reused; buffers
    grow when a frame needs more room and the framebuffer is rebuilt only when the image size
    changes. Each frame is one draw call that writes shaded colour, NormalBAE colour, camera
    z and hand index into four targets (no multisampling). Only each hand's covered pixel
    bounds (``FrameGeometry.rects``) are read back, into zeroed, recycled output arrays
    (``ZeroArrays``), and only the rectangle the previous frame drew into is cleared
    (clearing and reading whole float targets is a large share of a frame's cost on
    llvmpipe). Calls are serialised with a lock
    and make the context current for their duration, so other OpenGL users in the process
    (and other threads) are not disturbed.

    Raises:
        RuntimeError: moderngl is missing or no EGL OpenGL 3.3 context can be created.
    """

    name = "moderngl"
    device = torch.device("cpu")

    def __init__(self):
        try:
            import moderngl
        except ImportError as exc:
            raise RuntimeError(f"moderngl backend: the moderngl package is not importable "
                               f"({exc}); pip install moderngl") from None
        self._mgl = moderngl
        _import_triton_first()
        try:
            self._ctx = moderngl.create_context(standalone=True, backend="egl", require=330)
        except Exception as exc:  # glcontext raises bare Exception subclasses
            raise RuntimeError(f"moderngl backend: cannot create a headless EGL OpenGL 3.3 "
                               f"context ({exc}); {_NO_EGL_HELP}") from None
        self._lock = threading.Lock()
        with self._ctx:
            self._program = self._ctx.program(vertex_shader=_VERTEX_SHADER,
                                              fragment_shader=_FRAGMENT_SHADER)
        self._vbo = self._ibo = self._vao = self._fbo = None
        self._fbo_parts: list = []
        self._size = None
        self._dirty: tuple[int, int, int, int] | None = None  # x, y, w, h; None = everything
        self._scratch = np.empty(0, dtype=np.float32)
        self._arrays = ZeroArrays()

    def _ensure_buffers(self, vertex_bytes: int, index_bytes: int) -> None:
        if (self._vao is not None and vertex_bytes <= self._vbo.size
                and index_bytes <= self._ibo.size):
            return
        old_vbo = self._vbo.size if self._vbo is not None else 0
        old_ibo = self._ibo.size if self._ibo is not None else 0
        for obj in (self._vao, self._vbo, self._ibo):
            if obj is not None:
                obj.release()
        vbo_size = max(vertex_bytes, 2 * old_vbo, 1 << 16)
        ibo_size = max(index_bytes, 2 * old_ibo, 1 << 16)
        self._vbo = self._ctx.buffer(reserve=vbo_size)
        self._ibo = self._ctx.buffer(reserve=ibo_size)
        self._vao = self._ctx.vertex_array(self._program, [(self._vbo, *_VERTEX_FORMAT)],
                                           index_buffer=self._ibo, index_element_size=4)

    def _ensure_framebuffer(self, width: int, height: int) -> None:
        if self._size == (width, height):
            return
        for obj in [self._fbo, *self._fbo_parts]:
            if obj is not None:
                obj.release()
        size = (width, height)
        depth = self._ctx.depth_renderbuffer(size)
        # RGB float targets read back about 4x faster than RGBA ones on llvmpipe, but the GL
        # spec does not oblige drivers to render into them: use RGBA where RGB is refused.
        colors = []
        try:
            colors = self._color_targets(size, 3)
            self._fbo = self._ctx.framebuffer(color_attachments=colors, depth_attachment=depth)
        except self._mgl.Error:
            for rb in colors:
                rb.release()
            colors = self._color_targets(size, 4)
            self._fbo = self._ctx.framebuffer(color_attachments=colors, depth_attachment=depth)
        self._fbo_parts = [*colors, depth]
        self._size = size
        self._dirty = None

    def _color_targets(self, size: tuple[int, int], rgb_components: int) -> list:
        return [
            self._ctx.renderbuffer(size, components=rgb_components, dtype="f4"),  # shaded colour
            self._ctx.renderbuffer(size, components=rgb_components, dtype="f4"),  # NormalBAE
            self._ctx.renderbuffer(size, components=1, dtype="f4"),  # camera z
            self._ctx.renderbuffer(size, components=1, dtype="f1"),  # hand index + 1
        ]

    def rasterize(self, frames: list[FrameGeometry], width: int, height: int) -> GBuffer:
        """Render every frame; see :class:`sesahand.render.scene.GBuffer` for the outputs."""
        batch, zeros = len(frames), self._arrays.zeros
        targets = [zeros((batch, height, width, 3), np.float32),  # shaded colour
                   zeros((batch, height, width, 3), np.float32),  # NormalBAE
                   zeros((batch, height, width), np.float32),  # camera z
                   zeros((batch, height, width), np.uint8)]  # hand index + 1
        with self._lock, self._ctx:
            self._ensure_framebuffer(width, height)
            fbo = self._fbo
            fbo.use()
            self._ctx.enable_only(self._mgl.DEPTH_TEST)
            for b, frame in enumerate(frames):
                if self._dirty is None or self._dirty[2] * self._dirty[3] > 0:
                    fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=self._dirty)
                self._dirty = (0, 0, 0, 0)
                if not frame.num_hands:
                    continue
                self._dirty = None  # until the drawn rectangle is known
                vertices, indices = _interleave(frame)
                self._ensure_buffers(vertices.nbytes, indices.nbytes)
                self._vbo.write(vertices)
                self._ibo.write(indices)
                self._program["projection"].write(
                    np.ascontiguousarray(frame.projection.numpy().T))
                self._vao.render(self._mgl.TRIANGLES, vertices=indices.size)
                (x0, y0), (x1, y1) = np.min(frame.rects, 0)[:2], np.max(frame.rects, 0)[2:]
                self._dirty = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
                for rect in frame.rects:
                    self._read(rect, [t[b] for t in targets])
        written = [(b, *rect) for b, frame in enumerate(frames) for rect in frame.rects]
        mesh, normal, depth, hand = (self._arrays.tensor(t, written) for t in targets)
        return GBuffer(mesh=mesh, normal=normal, depth=depth, hand=hand)

    def _read(self, rect: tuple[int, int, int, int], targets: list[np.ndarray]) -> None:
        """Copy the pixels in ``rect`` (x0, y0, x1, y1) of the four targets into the
        (H, W, ...) arrays ``targets``, through a scratch buffer kept between calls."""
        x0, y0, x1, y1 = rect
        count = (x1 - x0) * (y1 - y0)
        if count == 0:
            return
        if self._scratch.size < count * 3:
            self._scratch = np.empty(max(count * 3, 2 * self._scratch.size), dtype=np.float32)
        for attachment, target in enumerate(targets):
            components = target.shape[2] if target.ndim == 3 else 1
            dtype = "f1" if target.dtype == np.uint8 else "f4"
            buf = self._scratch.view(target.dtype)[:count * components]
            self._fbo.read_into(buf, viewport=(x0, y0, x1 - x0, y1 - y0), attachment=attachment,
                                components=components, dtype=dtype)
            target[y0:y1, x0:x1] = buf.reshape(target[y0:y1, x0:x1].shape)

    def close(self) -> None:
        """Release every OpenGL object and the context (idempotent)."""
        with self._lock:
            if self._ctx is None:
                return
            with self._ctx:
                for obj in [self._vao, self._vbo, self._ibo, self._fbo, *self._fbo_parts,
                            self._program]:
                    if obj is not None:
                        obj.release()
            self._ctx.release()
            self._ctx = None
            self._vao = self._vbo = self._ibo = self._fbo = self._program = None
            self._fbo_parts = []
            self._size = None
            self._arrays.clear()


def _import_triton_first() -> None:
    """Import triton, when it is installed, before Mesa's llvmpipe loads its LLVM: importing
    triton (which bundles another LLVM) after an llvmpipe context exists kills the process
    with a segmentation fault (triton 3.8, Mesa llvmpipe), and torch imports triton lazily,
    for example when anny's dependency roma is first imported."""
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken triton install only matters to its own users
        logger.debug("triton is installed but cannot be imported (%s)", exc)


def _interleave(frame: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(N, 10) float32 vertex records (position, normal, colour, hand index + 1) and (3F,)
    int32 indices of all hands of a frame."""
    count = sum(v.shape[0] for v in frame.vertices)
    records = np.empty((count, 10), dtype=np.float32)
    indices, offset = [], 0
    for i, (verts, normals, faces, color) in enumerate(zip(frame.vertices, frame.normals,
                                                           frame.faces, frame.colors)):
        rows = records[offset:offset + verts.shape[0]]
        rows[:, 0:3] = verts.numpy()
        rows[:, 3:6] = normals.numpy()
        rows[:, 6:9] = color.numpy()
        rows[:, 9] = i + 1
        indices.append(faces.numpy().astype(np.int32).reshape(-1) + offset)
        offset += verts.shape[0]
    return records, np.concatenate(indices)

