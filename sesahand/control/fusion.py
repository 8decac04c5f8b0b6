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

Attention maps are computed explicitly, in query chunks of bounded size, and reduced into the
aggregates chunk by chunk (:class:`SelfAttentionMaps`); flash attention cannot return them.
Everything is differentiable (training uses the same functions). ControlNet forwards that
apply SF (the ComfyUI one is in ``nodes/control_model.py``) route every encoder and middle
self-attention through :meth:`SelfAttentionMaps.attention`, keep each control feature before
its zero convolution, and pass it through :func:`refine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FUSION_MODES = ("tokens", "gate")

#: Elements of one chunk of attention logits (float32: 8 MiB): bounds the memory SF adds.
#: Chunks of this size were also the fastest on CPU (cache reuse) at 32x32 and 64x64 grids.
DEFAULT_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class FusionSettings:
    """How SF is applied: ``fusion`` in :data:`FUSION_MODES` and the blend weight ``w``.

    ``w`` is in [0, 1]: 0 turns SF off (the plain ControlNet), 1 is the paper's eq. SF-2.
    Raises ValueError for an unknown mode or a weight outside [0, 1].
    """

    fusion: str = "tokens"
    w: float = 0.0

    def __post_init__(self):
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion {self.fusion!r} is unknown; choose one of {list(FUSION_MODES)}")
        if not (isinstance(self.w, (int, float)) and 0.0 <= self.w <= 1.0):
            raise ValueError(f"fusion weight w must be a number in [0, 1], got {self.w!r}")

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


class SelfAttentionMaps:
    """Self-attention of one ControlNet forward, with its maps reduced on the fly (eq. SF-1).

    Call :meth:`attention` for every encoder and middle-block self-attention (in any order),
    then :meth:`structure` once for psi'. One object serves one forward pass.

    Args:
        fusion: ``"tokens"`` or ``"gate"``: which aggregate to keep (module docstring).
        common_grid: (gh, gw), the middle block's token grid (:func:`coarsest_grid`).
        max_chunk_elements: size of one chunk of attention logits (batch x heads x query
            rows x keys); the memory SF adds is about three such chunks (float32).
    """

    def __init__(self, fusion: str, common_grid: tuple[int, int],
                 max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        FusionSettings(fusion)  # validates the mode
        if max_chunk_elements < 1:
            raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.fusion = fusion
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
                for half-precision inputs (as ComfyUI's SD1.5 attention).
            heads: number of heads.
            grid: (h, w) of the tokens.

        Returns:
            (B, N, heads * d) in v's dtype, the attention output before the out projection.

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
        d = inner // heads
        compute = torch.promote_types(q.dtype, torch.float32)

        # Keys (scaled by 1/sqrt(d)) and values once per head, contiguous; queries by chunks.
        k_t = k.reshape(b, n, heads, d).permute(0, 2, 3, 1).to(compute).contiguous() * d ** -0.5
        v_h = v.reshape(b, n, heads, d).transpose(1, 2).contiguous()  # (B, heads, N, d)

        gh, gw = self.common_grid
        cells = self._cells_of((h, w), q.device)
        if self.fusion == "tokens":
            agg = q.new_zeros((b, gh * gw, gh * gw), dtype=compute)
        else:
            agg = q.new_zeros((b, n), dtype=compute)

        out = v.new_empty((b, n, heads, d))
        rows = max(1, self.max_chunk_elements // (b * heads * n))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            q_chunk = q[:, start:stop].reshape(b, stop - start, heads, d).transpose(1, 2).to(compute)
            p = torch.softmax(torch.matmul(q_chunk, k_t), dim=-1)  # (B, heads, rows, N)
            out[:, start:stop] = torch.matmul(p.to(v.dtype), v_h).transpose(1, 2)
            if self.fusion == "tokens":  # head sum now, / heads after the max (same result)
                keys = pool_cells(p.sum(dim=1), cells, gh * gw, dim=2)  # (B, rows, G)
                agg = torch.maximum(agg, pool_cells(keys, cells[start:stop], gh * gw, dim=1))
            else:
                agg = agg + p.sum(dim=(1, 2))
            del p
        agg = agg / (heads if self.fusion == "tokens" else heads * n)

        total, count = self.sums.get((h, w), (0, 0))
        self.sums[(h, w)] = [total + agg, count + 1]
        return out.view(b, n, inner)

    def structure(self) -> torch.Tensor:
        """psi' of eq. SF-1 from the recorded layers (mean per grid, summed over grids).

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
            psi = mean if psi is None else psi + mean
        if self.fusion == "tokens":
            return psi / psi.sum(dim=-1, keepdim=True)
        return (psi / psi.amax(dim=-1, keepdim=True)).view(-1, gh, gw)


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
