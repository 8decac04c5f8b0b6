"""Hierarchical structural fusion (SF): the math, as pure tensor functions (eq. SF-1..3).

SesaHand (ICLR 2026, arXiv 2603.00443) refines a ControlNet's control features with the
self-attention maps of its own encoder and middle blocks, collected at every token grid
(64, 32, 16 and 8 at 512 x 512 for SD1.5)::

    psi'  = sum_r M(psi_r)          M: max pooling to one common grid      (eq. SF-1)
    f_c'  = f_c (x) psi'            f_c: control feature before its zero conv (eq. SF-2)
    f'    = Z(f_c') + f             Z: zero conv, f: SD decoder feature     (eq. SF-3)

with this project's blend (docs/method.md): ``f_c' = (1 - w) f_c + w (f_c (x) psi')``; w = 0 turns
SF off, w = 1 is the paper's form. SF has no parameters. The paper leaves ``(x)`` open; both
readings are here (``fusion``):

* ``"tokens"`` (default): per layer, the (r^2 x r^2) map is averaged over heads and max-pooled
  on its query and key axes to the common grid; the pooled maps of one resolution are averaged
  over its layers, summed over resolutions and row-normalised; the middle block's feature
  (G tokens x C channels, G = cells of the common grid) is multiplied by it.
  Pooling each layer before averaging its resolution's layers (docs/method.md lists the layer
  mean first) keeps memory at one query chunk: the other order needs every layer's full map.
* ``"gate"``: every map becomes an r x r saliency (mean over heads and queries), averaged over
  the layers of its resolution, max-pooled to the common grid, summed and divided by its
  maximum (so in [0, 1]); it is resized (bilinear) to each of the 13 control features and
  multiplies them element-wise.

The common grid is the middle block's (8 x 8 at 512 x 512; :func:`coarsest_grid`). Max pooling
maps grid cell (y, x) of an h x w grid to cell (y * gh // h, x * gw // w) of the gh x gw common
grid (plain max pooling when the sizes divide, a partition of the cells otherwise).

Balanced hierarchy (``hierarchy``, docs/method.md "Structural fusion choices"): a softmax row
over r^2 keys has entries of order 1/r^2, so the pooled maps of the 64 x 64 grid are about 64
times smaller than the 8 x 8 grid's and a plain sum is in effect the middle block's map alone.
By default (``"balanced"``) each resolution's pooled map is normalised before the sum (rows
summing to 1 for ``"tokens"``, maximum 1 for ``"gate"``), so every resolution weighs the same;
``"sum"`` keeps the unnormalised sum of eq. SF-1 as written (for reproduction).

Attention maps are computed explicitly, in query chunks of bounded size, and reduced into the
aggregates chunk by chunk (:class:`SelfAttentionMaps`); flash attention cannot return them.
Without gradients on the CPU, a native kernel computes the output and reduces the maps in one
pass over the logits (:mod:`sesahand.control.native`, ``sf_attend.cpp``, compiled at first
use); where it cannot be built, the output and each query's log-sum-exp come from PyTorch's
fused attention kernel and the maps are exp(logits - lse) (:func:`_fused_maps`). With
gradients, or on other devices, each chunk runs the explicit softmax and value product
(:func:`_chunk_maps`, the reference). All give the same outputs and maps to float32 rounding
(tested).
Logits and softmax are float32 whatever the input dtype, also under ``torch.autocast`` (which
is switched off for them). Everything is differentiable (training uses the same functions);
with gradients each chunk is recomputed in backward (``torch.utils.checkpoint``), so no
attention map is kept: what SF keeps for backward per layer is q, k, v, the output and one
small aggregate per chunk, O(B N C + chunks B G^2), and backward holds one chunk's maps at a
time, O(max_chunk_elements). ControlNet forwards that apply SF (the ComfyUI one is in
``nodes/control_model.py``) route every encoder and middle self-attention through
:meth:`SelfAttentionMaps.attention`, keep each control feature before its zero convolution,
and pass it through :func:`refine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from . import native

FUSION_MODES = ("tokens", "gate")
#: How the resolutions' pooled maps are combined (module docstring): normalised each, or summed.
HIERARCHIES = ("balanced", "sum")

#: Elements of one chunk of attention logits on the CPU with gradients (float32: 8 MiB): the
#: reference path (:func:`_chunk_maps`) was fastest with chunks of this size (cache reuse).
CPU_CHUNK_ELEMENTS = 1 << 21
#: The same without gradients (float32: 32 MiB), the fused path (:func:`_fused_maps`): each
#: chunk re-reads all keys. One 64x64 layer (batch 2, 8 heads), chunks of 2^21 / 2^23 / 2^25:
#: 0.67 / 0.70 / 0.73 s on an idle CPU (explicit path: 0.68 s) but 10.2 / 6.9 / 4.7 s on a
#: loaded one (explicit path: 23.8 s); 2^23 is the compromise. The native kernel
#: (:mod:`sesahand.control.native`) keeps its scratch within the same number of floats.
CPU_FUSED_CHUNK_ELEMENTS = 1 << 23
#: Range of the chunk size on CUDA devices, chosen by free memory (:func:`default_chunk_elements`):
#: larger chunks mean fewer kernel launches; 1 << 26 float32 elements are 256 MiB.
CUDA_CHUNK_RANGE = (1 << 21, 1 << 26)
#: Share of a CUDA device's free memory SF's chunk buffers may take (1 / this).
CUDA_FREE_MEMORY_SHARE = 16
#: Chunk-sized float32 buffers alive at once in a forward (logits, probabilities, head sum).
CHUNK_BUFFERS = 3
#: log2(e): exp(x) = exp2(x * LOG2_E) (the fused path's probabilities).
LOG2_E = math.log2(math.e)


def default_chunk_elements(device: torch.device | str | None, fused: bool = False) -> int:
    """The attention chunk size (elements of one chunk of logits) for ``device``.

    CPU and other devices: :data:`CPU_CHUNK_ELEMENTS`, or :data:`CPU_FUSED_CHUNK_ELEMENTS` on
    the CPU when ``fused`` (inference without gradients, :func:`_fused_maps`). CUDA: the largest chunk whose
    :data:`CHUNK_BUFFERS` float32 buffers take at most 1 / :data:`CUDA_FREE_MEMORY_SHARE` of the
    device's free memory now (``torch.cuda.mem_get_info``), clamped to :data:`CUDA_CHUNK_RANGE`.
    The chunk size never changes results, only speed and memory.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        low, high = CUDA_CHUNK_RANGE
        return int(min(high, max(low, free // (CUDA_FREE_MEMORY_SHARE * CHUNK_BUFFERS * 4))))
    return CPU_FUSED_CHUNK_ELEMENTS if fused and device.type == "cpu" else CPU_CHUNK_ELEMENTS


def chunk_memory_bytes(max_chunk_elements: int) -> int:
    """Memory SF's attention adds at once in a forward with chunks of ``max_chunk_elements`` (bytes)."""
    return CHUNK_BUFFERS * max_chunk_elements * 4


@dataclass(frozen=True)
class FusionSettings:
    """How SF is applied: ``fusion`` in :data:`FUSION_MODES`, the blend weight ``w`` and the
    ``hierarchy`` in :data:`HIERARCHIES` (per-resolution normalisation, module docstring).

    ``w`` is in [0, 1]: 0 turns SF off (the plain ControlNet), 1 is the paper's eq. SF-2.
    Raises ValueError for an unknown mode or hierarchy, or a weight outside [0, 1].
    """

    fusion: str = "tokens"
    w: float = 0.0
    hierarchy: str = "balanced"

    def __post_init__(self):
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion {self.fusion!r} is unknown; choose one of {list(FUSION_MODES)}")
        if not (isinstance(self.w, (int, float)) and 0.0 <= self.w <= 1.0):
            raise ValueError(f"fusion weight w must be a number in [0, 1], got {self.w!r}")
        if self.hierarchy not in HIERARCHIES:
            raise ValueError(f"hierarchy {self.hierarchy!r} is unknown; choose one of {list(HIERARCHIES)}")

    @property
    def active(self) -> bool:
        """True when SF changes the control features (w != 0)."""
        return self.w != 0.0


def coarsest_grid(grid: tuple[int, int], downsamples: int) -> tuple[int, int]:
    """Token grid (h, w) after ``downsamples`` stride-2 convolutions (padding 1) of ``grid``.

    Each halves a side, rounding up: a 64 x 64 latent gives 8 x 8 after SD1.5's 3.
    """
    h, w = grid
    for _ in range(downsamples):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def grid_cells(grid: tuple[int, int], target: tuple[int, int],
               device: torch.device | str | None = None) -> torch.Tensor:
    """Cell of the ``target`` grid (gh, gw) holding each token of ``grid`` (h, w).

    Returns a long tensor (h * w,) in row-major token order: token (y, x) goes to cell
    (y * gh // h) * gw + x * gw // w. Raises ValueError when the target grid is the larger.
    """
    (h, w), (gh, gw) = grid, target
    if gh > h or gw > w:
        raise ValueError(f"cannot max-pool a {h}x{w} grid to the larger {gh}x{gw} grid")
    rows = torch.arange(h, device=device) * gh // h
    cols = torch.arange(w, device=device) * gw // w
    return (rows[:, None] * gw + cols[None, :]).reshape(-1)


def pool_cells(x: torch.Tensor, cells: torch.Tensor, num_cells: int, dim: int) -> torch.Tensor:
    """Max over the tokens of each cell along ``dim`` (the M of eq. SF-1).

    ``x``: (..., n, ...) with n = len(cells) at ``dim``; ``cells``: long (n,) from
    :func:`grid_cells`. Returns the same shape with ``num_cells`` at ``dim``. Cells without a
    token would be 0 (cannot happen for :func:`grid_cells`); inputs are >= 0 attention weights.
    """
    dim = dim % x.ndim
    shape = [1] * x.ndim
    shape[dim] = cells.numel()
    index = cells.view(shape).expand_as(x)
    out_shape = list(x.shape)
    out_shape[dim] = num_cells
    return x.new_zeros(out_shape).scatter_reduce_(dim, index, x, "amax", include_self=True)


def _pool_keys(x: torch.Tensor, grid: tuple[int, int], common: tuple[int, int],
               cells: torch.Tensor) -> torch.Tensor:
    """Max over the keys of each common-grid cell on the last axis: (..., h * w) -> (..., gh * gw).

    A reshape and ``amax`` when the grids divide (the usual case), :func:`pool_cells` otherwise.
    """
    (h, w), (gh, gw) = grid, common
    if h % gh == 0 and w % gw == 0:
        lead = x.shape[:-1]
        # one axis at a time, the contiguous one first: about 3x faster than amax over both
        return x.reshape(*lead, gh, h // gh, gw, w // gw).amax(-1).amax(-2).reshape(*lead, gh * gw)
    return pool_cells(x, cells, gh * gw, dim=-1)


def _chunk_maps(q: torch.Tensor, k_t: torch.Tensor, v_h: torch.Tensor, start: int, stop: int,
                fusion: str, grid: tuple[int, int], common: tuple[int, int],
                cells: torch.Tensor, buffers: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One query chunk: attention output (B, heads, rows, d) and the chunk's map aggregate.

    ``q``: (B, N, heads * d); ``k_t``: (B, heads, d, N) float32 keys scaled by 1/sqrt(d);
    ``v_h``: (B, heads, N, d). Logits and softmax are float32 with autocast off. The
    aggregate: ``"tokens"``: (B, G, G) max over the chunk's queries and each cell's keys of the
    head-summed map; ``"gate"``: (B, N) the map summed over heads and the chunk's queries.
    ``buffers`` (no autograd only): flat float32 tensors ``"p"`` and ``"sum"`` of one chunk's
    size, reused across chunks (no allocation, no fresh pages per chunk); the softmax is then
    computed in place (same formula).
    """
    b, heads, d, n = k_t.shape
    rows = stop - start
    with torch.autocast(device_type=q.device.type, enabled=False):
        q_chunk = q[:, start:stop].reshape(b, rows, heads, d).transpose(1, 2).to(k_t.dtype)
        if buffers is None:
            p = torch.softmax(torch.matmul(q_chunk, k_t), dim=-1)  # (B, heads, rows, N) float32
        else:
            p = buffers["p"][:b * heads * rows * n].view(b, heads, rows, n)
            torch.matmul(q_chunk, k_t, out=p)
            p.sub_(p.amax(dim=-1, keepdim=True)).exp_()
            p.div_(p.sum(dim=-1, keepdim=True))
        out = torch.matmul(p.to(v_h.dtype), v_h)
        if fusion == "tokens":  # head sum now, / heads after the max (same result)
            gh, gw = common
            if buffers is None:
                summed = p.sum(dim=1)
            else:
                summed = torch.sum(p, dim=1, out=buffers["sum"][:b * rows * n].view(b, rows, n))
            keys = _pool_keys(summed, grid, common, cells)  # (B, rows, G)
            agg = pool_cells(keys, cells[start:stop], gh * gw, dim=1)  # (B, G, G)
        else:
            agg = p.sum(dim=(1, 2))
    return out, agg


def _fused_maps(q_h: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor, rows: int, fusion: str,
                grid: tuple[int, int], common: tuple[int, int], cells: torch.Tensor,
                buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and map aggregate without autograd, on the CPU: the fast path.

    ``q_h``, ``k_h``, ``v_h``: (B, heads, N, d) float32 queries, keys and values (any strides);
    ``rows``: query rows per chunk; ``buffer``: flat float32 of at least B * heads * rows * N
    elements, reused by every chunk.
    The output and the log-sum-exp of each query's logits come from PyTorch's fused CPU
    attention kernel (``_scaled_dot_product_flash_attention_for_cpu``, float32 inputs, so a
    float32 lse); the probabilities are then exp(q k^T / sqrt(d) - lse), one matmul (lse
    folded in as an extra column of q and a row of log2 e in k, k scaled by log2 e / sqrt(d))
    and one in-place exp2 per chunk,
    reduced as in :func:`_chunk_maps` (same aggregates, same float32; no softmax passes and no
    value product here). Returns the output (B, heads, N, d) and the summed aggregate
    (``"tokens"``: (B, G, G) max, divided by heads later; ``"gate"``: (B, N) sum).
    """
    b, heads, n, d = q_h.shape
    scale = d ** -0.5
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q_h, k_h, v_h, scale=scale)
    # base 2: exp(x) = exp2(x log2 e) (exp2 is several times cheaper than exp on the CPU, same
    # float32 accuracy); [q, -lse] . [k log2 e / sqrt(d); log2 e] = (q k^T / sqrt(d) - lse) log2 e
    q_aug = q_h.new_empty(b, heads, n, d + 1)
    q_aug[..., :d] = q_h
    torch.neg(lse, out=q_aug[..., d])
    k_aug = k_h.new_empty(b, heads, d + 1, n)
    torch.mul(k_h.transpose(-1, -2), scale * LOG2_E, out=k_aug[:, :, :d])
    k_aug[:, :, d] = LOG2_E
    q_aug, k_aug = q_aug.view(b * heads, n, d + 1), k_aug.view(b * heads, d + 1, n)
    gh, gw = common
    agg = None
    head_sum = buffer.new_empty(b * rows * n) if fusion == "tokens" else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        p = buffer[:b * heads * (stop - start) * n].view(b, heads, stop - start, n)
        torch.bmm(q_aug[:, start:stop], k_aug, out=p.view(b * heads, stop - start, n)).exp2_()  # probabilities
        if fusion == "tokens":
            summed = torch.sum(p, dim=1, out=head_sum[:b * (stop - start) * n].view(b, stop - start, n))
            part = pool_cells(_pool_keys(summed, grid, common, cells), cells[start:stop], gh * gw, dim=1)
            agg = part if agg is None else torch.maximum(agg, part)
        else:
            part = p.sum(dim=(1, 2))
            agg = part if agg is None else agg + part
    return out, agg


def _same_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """For each batch row, the first row with the same q, k and v (long (B,)), or None when all
    rows differ. Candidates are found by a strided sample of q and confirmed exactly."""
    b = q.shape[0]
    if b < 2:
        return None
    sample = q.reshape(b, -1)[:, ::(q[0].numel() // 64) or 1]
    index = list(range(b))
    for i in range(1, b):
        for j in range(i):
            if index[j] == j and torch.equal(sample[i], sample[j]) and all(
                    torch.equal(t[i], t[j]) for t in (q, k, v)):
                index[i] = j
                break
    if index == list(range(b)):
        return None
    return torch.tensor(index, device=q.device)


def _normalised(agg: torch.Tensor, fusion: str) -> torch.Tensor:
    """``agg`` scaled per sample: rows summing to 1 (``"tokens"``, (B, G, G)) or maximum 1
    (``"gate"``, (B, G)); an all-zero row or map stays zero."""
    tiny = torch.finfo(agg.dtype).tiny
    if fusion == "tokens":
        return agg / agg.sum(dim=-1, keepdim=True).clamp_min(tiny)
    return agg / agg.amax(dim=-1, keepdim=True).clamp_min(tiny)


class SelfAttentionMaps:
    """Self-attention of one ControlNet forward, with its maps reduced on the fly (eq. SF-1).

    Call :meth:`attention` for every encoder and middle-block self-attention (in any order),
    then :meth:`structure` once for psi'. One object serves one forward pass.

    Args:
        fusion: ``"tokens"`` or ``"gate"``: which aggregate to keep (module docstring).
        common_grid: (gh, gw), the middle block's token grid (:func:`coarsest_grid`).
        max_chunk_elements: size of one chunk of attention logits (batch x heads x query
            rows x keys); the memory SF adds is about :func:`chunk_memory_bytes` of it. None:
            :func:`default_chunk_elements` of the inputs' device. Results do not depend on it.
        hierarchy: ``"balanced"`` (each resolution's pooled map normalised before the sum) or
            ``"sum"`` (module docstring).
    """

    def __init__(self, fusion: str, common_grid: tuple[int, int],
                 max_chunk_elements: int | None = None, hierarchy: str = "balanced"):
        FusionSettings(fusion, hierarchy=hierarchy)  # validates the mode and hierarchy
        if max_chunk_elements is not None and max_chunk_elements < 1:
            raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.fusion = fusion
        self.hierarchy = hierarchy
        self.common_grid = tuple(common_grid)
        self.max_chunk_elements = max_chunk_elements
        #: token grid (h, w) -> [sum of the layers' aggregates, number of layers]
        self.sums: dict[tuple[int, int], list] = {}
        self._cells: dict[tuple, torch.Tensor] = {}

    @property
    def layers(self) -> dict[tuple[int, int], int]:
        """Number of layers recorded per token grid (h, w)."""
        return {grid: count for grid, (_, count) in self.sums.items()}

    def _cells_of(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (grid, device)
        if key not in self._cells:
            self._cells[key] = grid_cells(grid, self.common_grid, device)
        return self._cells[key]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                  grid: tuple[int, int]) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per head, recording the map's aggregate for ``grid``.

        Args:
            q, k, v: (B, N, heads * d) projected tokens of a self-attention over an h x w
                grid (N = h * w, row-major), any float dtype; logits and softmax are float32
                (at least), also under ``torch.autocast``.
            heads: number of heads.
            grid: (h, w) of the tokens.

        Returns:
            (B, N, heads * d) in v's dtype, the attention output before the out projection.
            With gradients, every chunk is recomputed in backward (module docstring: no
            attention map is kept for backward). Without gradients, batch rows whose q, k and
            v are equal are computed once and copied (same results): the positive and negative
            rows of classifier-free guidance share latent, hint and timestep, so they are equal
            until the first cross-attention (ComfyUI batches them together).

        Raises:
            ValueError: N differs from h * w, keys and queries differ in number, or the
                width is not divisible by ``heads``.
        """
        b, n, inner = q.shape
        h, w = grid
        if n != h * w or k.shape[1] != n or v.shape[1] != n:
            raise ValueError(f"self-attention over a {h}x{w} grid needs {h * w} queries and keys, "
                             f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
        if inner % heads:
            raise ValueError(f"width {inner} is not divisible by {heads} heads")
        recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        index = None if recompute else _same_rows(q, k, v)
        if index is not None:  # CFG: rows equal up to here (module docstring); each computed once
            firsts = index.unique()
            out, agg = self._attend(q[firsts], k[firsts], v[firsts], heads, grid, recompute)
            where = torch.searchsorted(firsts, index)
            out, agg = out[where], agg[where]
        else:
            out, agg = self._attend(q, k, v, heads, grid, recompute)
        self._record((h, w), agg, heads, n)
        return out

    def _attend(self, q, k, v, heads: int, grid: tuple[int, int], recompute: bool):
        """:meth:`attention`'s output and the layer's summed aggregate (not yet recorded)."""
        b, n, inner = q.shape
        h, w = grid
        d = inner // heads
        compute = torch.promote_types(q.dtype, torch.float32)
        fused = not recompute and q.device.type == "cpu"
        chunk = self.max_chunk_elements or default_chunk_elements(q.device, fused)

        gh, gw = self.common_grid
        cells = self._cells_of((h, w), q.device)
        rows = min(n, max(1, chunk // (b * heads * n)))
        if fused:  # the native kernel; else PyTorch's fused kernel's output and lse, then the maps
            with torch.autocast(device_type="cpu", enabled=False):
                q_h, k_h, v_h = (t.reshape(b, n, heads, d).transpose(1, 2).to(compute) for t in (q, k, v))
                result = native.attention_maps(q_h, k_h, v_h, self.fusion, cells, gh * gw, chunk)
                if result is None:
                    result = _fused_maps(q_h, k_h, v_h, rows, self.fusion, (h, w), self.common_grid,
                                         cells, q_h.new_empty(b * heads * rows * n))
            out_h, agg = result
            return out_h.transpose(1, 2).reshape(b, n, inner).to(v.dtype), agg

        with torch.autocast(device_type=q.device.type, enabled=False):
            # Keys (scaled by 1/sqrt(d)) and values once per head, contiguous; queries by chunks.
            k_t = k.reshape(b, n, heads, d).permute(0, 2, 3, 1).to(compute).contiguous() * d ** -0.5
            v_h = v.reshape(b, n, heads, d).transpose(1, 2).contiguous()  # (B, heads, N, d)
        agg = None
        out = v.new_empty((b, n, heads, d))
        buffers = None
        if not recompute:  # one chunk's buffers, reused: no allocation churn per chunk
            buffers = {"p": k_t.new_empty(b * heads * rows * n),
                       "sum": k_t.new_empty(b * rows * n if self.fusion == "tokens" else 0)}
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            args = (q, k_t, v_h, start, stop, self.fusion, (h, w), self.common_grid, cells)
            if recompute:
                out_chunk, part = torch.utils.checkpoint.checkpoint(_chunk_maps, *args, use_reentrant=False)
            else:
                out_chunk, part = _chunk_maps(*args, buffers)
            out[:, start:stop] = out_chunk.transpose(1, 2)
            if agg is None:
                agg = part
            elif self.fusion == "tokens":
                agg = torch.maximum(agg, part)
            else:
                agg = agg + part
        return out.view(b, n, inner), agg

    def _record(self, grid: tuple[int, int], agg: torch.Tensor, heads: int, n: int) -> None:
        """Add one layer's summed aggregate (divided here by heads, and by N for ``"gate"``)."""
        agg = agg / (heads if self.fusion == "tokens" else heads * n)
        total, count = self.sums.get(grid, (0, 0))
        self.sums[grid] = [total + agg, count + 1]

    def structure(self) -> torch.Tensor:
        """psi' of eq. SF-1 from the recorded layers (mean per grid; normalised per grid for the
        ``"balanced"`` hierarchy; summed over grids; normalised).

        Returns:
            ``"tokens"``: (B, G, G) float32, rows summing to 1 (G = gh * gw cells, query
            rows, key columns, row-major cells). ``"gate"``: (B, gh, gw) float32 in [0, 1],
            maximum 1 per sample.

        Raises:
            RuntimeError: nothing was recorded (the model has no self-attention layer).
        """
        if not self.sums:
            raise RuntimeError("no self-attention map was recorded: the control model has no "
                               "self-attention in its encoder or middle block")
        gh, gw = self.common_grid
        psi = None
        for grid, (total, count) in self.sums.items():
            mean = total / count
            if self.fusion == "gate":
                mean = pool_cells(mean, self._cells_of(grid, mean.device), gh * gw, dim=1)
            if self.hierarchy == "balanced":
                mean = _normalised(mean, self.fusion)
            psi = mean if psi is None else psi + mean
        psi = _normalised(psi, self.fusion)
        return psi if self.fusion == "tokens" else psi.view(-1, gh, gw)


def refine_tokens(feature: torch.Tensor, psi: torch.Tensor, w: float) -> torch.Tensor:
    """Blended eq. SF-2, tokens reading: (1 - w) f + w (psi' f) over the G tokens of f.

    Args:
        feature: (B, C, gh, gw) control feature on the common grid (the middle block's).
        psi: (B, G, G) from :meth:`SelfAttentionMaps.structure` (``"tokens"``), G = gh * gw.
        w: blend weight in [0, 1].

    Returns:
        (B, C, gh, gw) in the feature's dtype; token q becomes sum_k psi'[q, k] f[k].

    Raises:
        ValueError: the feature's grid does not have G cells or the batches differ.
    """
    b, c, h, w_ = feature.shape
    if psi.shape != (b, h * w_, h * w_):
        raise ValueError(f"tokens fusion: psi' {tuple(psi.shape)} does not fit a feature "
                         f"{tuple(feature.shape)} (needs ({b}, {h * w_}, {h * w_}))")
    mixed = torch.matmul(feature.flatten(2), psi.transpose(1, 2).to(feature.dtype))
    return torch.lerp(feature, mixed.view_as(feature), w)


def refine_gate(feature: torch.Tensor, psi: torch.Tensor, w: float) -> torch.Tensor:
    """Blended eq. SF-2, gate reading: (1 - w) f + w (f * resize(psi')).

    Args:
        feature: (B, C, h, w) control feature of any grid.
        psi: (B, gh, gw) from :meth:`SelfAttentionMaps.structure` (``"gate"``), in [0, 1];
            resized bilinearly (half-pixel centres) to (h, w).
        w: blend weight in [0, 1].

    Returns:
        (B, C, h, w) in the feature's dtype.

    Raises:
        ValueError: psi' is not (B, gh, gw) with the feature's batch.
    """
    if psi.ndim != 3 or psi.shape[0] != feature.shape[0]:
        raise ValueError(f"gate fusion: psi' {tuple(psi.shape)} does not fit a feature "
                         f"{tuple(feature.shape)} (needs ({feature.shape[0]}, gh, gw))")
    gate = F.interpolate(psi[:, None], size=feature.shape[-2:], mode="bilinear", align_corners=False)
    return torch.lerp(feature, feature * gate.to(feature.dtype), w)


def refine(feature: torch.Tensor, psi: torch.Tensor, settings: FusionSettings,
           middle: bool) -> torch.Tensor:
    """f_c' of eq. SF-2 (blended) for one control feature, before its zero convolution.

    ``middle`` marks the middle block's feature, the only one the ``"tokens"`` reading
    changes (the others are returned as they are); ``"gate"`` changes all. The zero
    convolution and the addition to the SD decoder feature (eq. SF-3) follow in the caller.
    """
    if settings.fusion == "tokens":
        return refine_tokens(feature, psi, settings.w) if middle else feature
    return refine_gate(feature, psi, settings.w)
