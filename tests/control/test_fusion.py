"""Structural fusion math (eq. SF-1..3): chunked maps against a dense reference, refinement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sesahand.control import (CPU_CHUNK_ELEMENTS, FusionSettings, SelfAttentionMaps, chunk_memory_bytes,
                              coarsest_grid, default_chunk_elements, grid_cells, pool_cells, refine,
                              refine_gate, refine_tokens)
from sesahand.control import fusion as fusion_module
from sesahand.control import native

HEADS, DIM = 2, 4


def qkv(grid, batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    return [torch.randn(batch, n, HEADS * DIM, generator=g).mul(2).to(dtype) for _ in range(3)]


def dense_probs(q, k):
    """(B, heads, N, N) softmax attention probabilities, the whole map at once."""
    b, n, _ = q.shape
    q = q.float().view(b, n, HEADS, DIM).transpose(1, 2)
    k = k.float().view(b, n, HEADS, DIM).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM), dim=-1)


def cell_members(grid, common):
    """Token indices of each common-grid cell, by looping over tokens (independent of grid_cells)."""
    (h, w), (gh, gw) = grid, common
    members = [[] for _ in range(gh * gw)]
    for y in range(h):
        for x in range(w):
            members[math.floor(y * gh / h) * gw + math.floor(x * gw / w)].append(y * w + x)
    return members


def dense_structure(layers, fusion, common, hierarchy="balanced"):
    """psi' from full maps, pooled with explicit loops over cells.

    tokens: per layer, mean over heads, then pooled; pooled maps averaged over a grid's layers.
    gate: per layer, saliency (mean over heads and queries); averaged over a grid's layers,
    then pooled. balanced: each grid's map normalised (rows sum 1 / max 1) before the sum.
    """
    per_grid = {}
    for grid, (q, k) in layers:
        p = dense_probs(q, k)
        if fusion == "tokens":
            members = cell_members(grid, common)
            m = p.mean(dim=1)
            agg = torch.stack([torch.stack([m[:, qi][:, :, ki].amax(dim=(1, 2)) for ki in members], dim=1)
                               for qi in members], dim=1)  # (B, G, G)
        else:
            agg = p.mean(dim=(1, 2))  # (B, N)
        per_grid.setdefault(grid, []).append(agg)
    psi = 0
    for grid, aggs in per_grid.items():
        mean = torch.stack(aggs).mean(dim=0)
        if fusion == "gate":
            mean = torch.stack([mean[:, idx].amax(dim=1) for idx in cell_members(grid, common)], dim=1)
        if hierarchy == "balanced":
            mean = mean / (mean.sum(dim=-1, keepdim=True) if fusion == "tokens" else mean.amax(dim=-1, keepdim=True))
        psi = psi + mean
    if fusion == "tokens":
        return psi / psi.sum(dim=-1, keepdim=True)
    return (psi / psi.amax(dim=-1, keepdim=True)).view(-1, *common)


# Grids of a tiny encoder: two layers at the finest grid, one per coarser grid; non-square and
# not divisible by the common grid, so cells hold unequal numbers of tokens.
LAYER_GRIDS = [(6, 10), (6, 10), (3, 5), (2, 3)]
COMMON = (2, 3)


@pytest.mark.parametrize("hierarchy", ["balanced", "sum"])
@pytest.mark.parametrize("fusion", ["tokens", "gate"])
@pytest.mark.parametrize("chunk", [1 << 20, 7 * HEADS * 2 * 60, 1])  # one chunk, 7 rows, 1 row
def test_chunked_maps_equal_the_dense_reference(fusion, chunk, hierarchy):
    maps = SelfAttentionMaps(fusion, COMMON, max_chunk_elements=chunk, hierarchy=hierarchy)
    layers = []
    for seed, grid in enumerate(LAYER_GRIDS):
        q, k, v = qkv(grid, seed=seed)
        out = maps.attention(q, k, v, HEADS, grid)
        reference = F.scaled_dot_product_attention(
            *(t.view(2, -1, HEADS, DIM).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(q.shape)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        layers.append((grid, (q, k)))
    assert maps.layers == {(6, 10): 2, (3, 5): 1, (2, 3): 1}
    psi = maps.structure()
    torch.testing.assert_close(psi, dense_structure(layers, fusion, COMMON, hierarchy), rtol=1e-5, atol=1e-6)


def test_divisible_grids_pool_like_the_general_path():
    """The reshape fast path (grids that divide) equals pool_cells' scatter path."""
    x = torch.rand(2, 5, 8 * 12)
    cells = grid_cells((8, 12), (2, 3))
    fast = fusion_module._pool_keys(x, (8, 12), (2, 3), cells)
    torch.testing.assert_close(fast, pool_cells(x, cells, 6, dim=-1))


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_logits_and_softmax_stay_float32_under_autocast(fusion):
    """Under CPU bf16 autocast the maps equal the float32 ones to float32 precision (autocast
    would otherwise run the logits' matmul in bfloat16: errors of about 1e-2)."""
    layers = [((8, 8), qkv((8, 8), seed=1)), ((4, 4), qkv((4, 4), seed=2))]
    reference, under = SelfAttentionMaps(fusion, (2, 2)), SelfAttentionMaps(fusion, (2, 2))
    outs = [reference.attention(q, k, v, HEADS, grid) for grid, (q, k, v) in layers]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_outs = [under.attention(q, k, v, HEADS, grid) for grid, (q, k, v) in layers]
        psi = under.structure()
    torch.testing.assert_close(psi, reference.structure(), rtol=1e-6, atol=1e-7)
    for a, b in zip(autocast_outs, outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_backward_keeps_no_attention_map_and_matches_dense_gradients(fusion):
    """With gradients only q, k, v and per-chunk aggregates are saved for backward (each chunk is
    recomputed), never a chunk of probabilities; the gradients equal the dense reference's."""
    grid, common, batch = (16, 16), (4, 4), 2
    q, k, v = (t.requires_grad_() for t in qkv(grid, batch=batch, seed=4))
    n = grid[0] * grid[1]
    chunk = batch * HEADS * n * 16  # 16 query rows per chunk
    saved = {}  # storage -> bytes (a tensor saved by several chunks is kept once)

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    maps = SelfAttentionMaps(fusion, common, max_chunk_elements=chunk)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = maps.attention(q, k, v, HEADS, grid)
        psi = maps.structure()
    chunk_bytes = chunk * 4
    assert max(saved.values()) < chunk_bytes / HEADS  # no chunk of logits, probabilities or head sums
    # the stated bound: q, k, v and their per-head copies, the output; per chunk a (B, G, G) aggregate
    assert sum(saved.values()) <= 8 * q.numel() * 4 + n // 16 * batch * 16 * 16 * 4 * 2
    g = torch.Generator().manual_seed(9)
    weight_out, weight_psi = torch.randn(out.shape, generator=g), torch.randn(psi.shape, generator=g)
    ((out * weight_out).sum() + (psi * weight_psi).sum()).backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference_out = F.scaled_dot_product_attention(
        *(t.view(batch, -1, HEADS, DIM).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(q.shape)
    reference_psi = dense_structure([(grid, (q, k))], fusion, common)
    ((reference_out * weight_out).sum() + (reference_psi * weight_psi).sum()).backward()
    for ours, theirs in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def sd15_like_maps(fusion, hierarchy):
    """Maps of a tiny encoder with SD1.5's grid ratios (2 layers at 32, 16, 8; the middle at 4),
    logits of standard deviation about 0.5 (attention spread over many keys)."""
    maps = SelfAttentionMaps(fusion, (4, 4), hierarchy=hierarchy)
    for seed, grid in enumerate([(32, 32), (32, 32), (16, 16), (16, 16), (8, 8), (8, 8), (4, 4)]):
        maps.attention(*(t / 2 for t in qkv(grid, batch=1, seed=seed)), HEADS, grid)
    return maps


def without(maps, grid):
    """psi' with one resolution's pooled maps set to zero."""
    total, count = maps.sums[grid]
    maps.sums[grid] = [torch.zeros_like(total), count]
    try:
        return maps.structure()
    finally:
        maps.sums[grid] = [total, count]


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_every_resolution_contributes_to_the_balanced_hierarchy(fusion):
    """Zeroing one resolution's map changes psi' and the refined feature measurably for every
    resolution. In the plain sum the gate reading is in effect the coarse maps alone: there,
    the finest grid's map moves psi' about ten times less."""
    feature = torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = FusionSettings(fusion, 1.0)
    changes = {}
    for hierarchy in ("balanced", "sum"):
        maps = sd15_like_maps(fusion, hierarchy)
        psi = maps.structure()
        refined = refine(feature, psi, settings, middle=True)
        for grid in maps.sums:
            other = without(maps, grid)
            changes[hierarchy, grid] = float((other - psi).norm() / psi.norm())
            if hierarchy == "balanced":
                moved = refine(feature, other, settings, middle=True) - refined
                assert float(moved.norm() / refined.norm()) > 1e-3, (fusion, grid)
    for grid in [(32, 32), (16, 16), (8, 8), (4, 4)]:
        assert changes["balanced", grid] > 0.02, (grid, changes)
    if fusion == "gate":
        assert changes["balanced", (32, 32)] > 5 * changes["sum", (32, 32)], changes


def test_chunk_size_per_device(monkeypatch):
    assert default_chunk_elements("cpu") == default_chunk_elements(None) == CPU_CHUNK_ELEMENTS
    assert default_chunk_elements("cpu", fused=True) == fusion_module.CPU_FUSED_CHUNK_ELEMENTS > CPU_CHUNK_ELEMENTS
    low, high = fusion_module.CUDA_CHUNK_RANGE
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for free, expected in ((1 << 20, low), (80 << 30, high), (12 << 30, (12 << 30) // (16 * 3 * 4))):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 << 30))
        assert default_chunk_elements("cuda:0") == expected
    assert chunk_memory_bytes(CPU_CHUNK_ELEMENTS) == 3 * 4 * CPU_CHUNK_ELEMENTS
    with pytest.raises(ValueError, match="max_chunk_elements must be >= 1"):
        SelfAttentionMaps("tokens", (2, 2), max_chunk_elements=0)


def test_psi_is_normalised_per_reading():
    for fusion in ("tokens", "gate"):
        maps = SelfAttentionMaps(fusion, (4, 4))
        for seed, grid in enumerate([(16, 16), (8, 8), (4, 4)]):
            maps.attention(*qkv(grid, seed=seed), HEADS, grid)
        psi = maps.structure()
        assert psi.dtype == torch.float32 and torch.isfinite(psi).all()
        if fusion == "tokens":
            assert psi.shape == (2, 16, 16)
            torch.testing.assert_close(psi.sum(dim=-1), torch.ones(2, 16))
        else:
            assert psi.shape == (2, 4, 4)
            assert psi.min() >= 0 and torch.equal(psi.amax(dim=(1, 2)), torch.ones(2))


def test_half_precision_inputs_use_float32_maps():
    grid = (4, 4)
    q, k, v = qkv(grid, dtype=torch.bfloat16)
    maps = SelfAttentionMaps("gate", (2, 2))
    out = maps.attention(q, k, v, HEADS, grid)
    assert out.dtype == torch.bfloat16
    ref = SelfAttentionMaps("gate", (2, 2)).attention(q.float(), k.float(), v.float(), HEADS, grid)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert maps.structure().dtype == torch.float32


def test_maps_and_refinement_are_differentiable():
    grid = (4, 4)
    q, k, v = (t.requires_grad_() for t in qkv(grid))
    for fusion in ("tokens", "gate"):
        maps = SelfAttentionMaps(fusion, (2, 2), max_chunk_elements=HEADS * 2 * 16 * 3)
        out = maps.attention(q, k, v, HEADS, grid)
        feature = torch.randn(2, 3, 2, 2)
        refined = refine(feature, maps.structure(), FusionSettings(fusion, 1.0), middle=True)
        (out.sum() + refined.square().sum()).backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
        assert k.grad.abs().sum() > 0


def test_bad_attention_input_is_refused():
    maps = SelfAttentionMaps("tokens", (2, 2))
    q, k, v = qkv((4, 4))
    with pytest.raises(ValueError, match="4x5 grid needs 20"):
        maps.attention(q, k, v, HEADS, (4, 5))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        maps.attention(q, k, v, 3, (4, 4))
    with pytest.raises(RuntimeError, match="no self-attention map"):
        SelfAttentionMaps("gate", (2, 2)).structure()
    with pytest.raises(ValueError, match="fusion 'sum' is unknown"):
        SelfAttentionMaps("sum", (2, 2))


def test_grid_helpers():
    assert coarsest_grid((64, 64), 3) == (8, 8)
    assert coarsest_grid((60, 96), 3) == (8, 12)  # 60 -> 30 -> 15 -> 8
    x = torch.rand(3, 8 * 12)
    pooled = pool_cells(x, grid_cells((8, 12), (2, 3)), 6, dim=1)
    torch.testing.assert_close(pooled.view(3, 2, 3), F.max_pool2d(x.view(3, 1, 8, 12), 4).view(3, 2, 3))
    with pytest.raises(ValueError, match="larger"):
        grid_cells((4, 4), (8, 8))


def test_settings_are_validated():
    assert not FusionSettings().active and FusionSettings("gate", 0.5).active
    with pytest.raises(ValueError, match="fusion 'product' is unknown"):
        FusionSettings("product", 1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        FusionSettings("tokens", 1.5)
    with pytest.raises(ValueError, match="hierarchy 'mean' is unknown"):
        FusionSettings("tokens", 1.0, "mean")


def test_tokens_refinement_mixes_the_middle_tokens():
    feature = torch.randn(2, 5, 3, 3)
    identity = torch.eye(9).expand(2, 9, 9)
    torch.testing.assert_close(refine_tokens(feature, identity, 1.0), feature)
    uniform = torch.full((2, 9, 9), 1 / 9)
    mean = feature.mean(dim=(2, 3), keepdim=True).expand_as(feature)
    torch.testing.assert_close(refine_tokens(feature, uniform, 1.0), mean)
    torch.testing.assert_close(refine_tokens(feature, uniform, 0.25), 0.75 * feature + 0.25 * mean)
    assert torch.equal(refine_tokens(feature, uniform, 0.0), feature)
    settings = FusionSettings("tokens", 1.0)
    assert refine(feature, uniform, settings, middle=False) is feature  # only the middle changes
    with pytest.raises(ValueError, match="does not fit"):
        refine_tokens(torch.randn(2, 5, 4, 4), uniform, 1.0)


def test_gate_refinement_scales_every_feature():
    psi = torch.zeros(2, 2, 2)
    psi[:, 0, 0] = 1.0  # only the top-left cell is salient
    feature = torch.randn(2, 4, 16, 16)
    gated = refine(feature, psi, FusionSettings("gate", 1.0), middle=False)
    assert torch.allclose(gated[..., :4, :4], feature[..., :4, :4])  # bilinear: 1 near the cell
    assert torch.equal(gated[..., 12:, 12:], torch.zeros(2, 4, 4, 4))
    torch.testing.assert_close(refine_gate(feature, psi, 0.5), 0.5 * (feature + gated))
    torch.testing.assert_close(refine_gate(feature, torch.ones(2, 2, 2), 1.0), feature)
    with pytest.raises(ValueError, match="does not fit"):
        refine_gate(feature, torch.ones(3, 2, 2), 1.0)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
@pytest.mark.parametrize("chunk", [None, 5 * HEADS * 2 * 60])
@pytest.mark.parametrize("path", ["native", "pytorch"])
def test_fast_cpu_paths_equal_the_reference_path(fusion, chunk, path, monkeypatch):
    """Without gradients on the CPU, the output and maps come from the native kernel
    (native.attention_maps) or, where it cannot be built, from PyTorch's fused kernel and
    exp(logits - lse) (_fused_maps); with gradients every chunk runs the explicit softmax
    (_chunk_maps, checkpointed). Same outputs and psi' to float32 rounding, any chunk size."""
    if path == "native" and native.kernel() is None:
        pytest.skip(f"the native kernel could not be built here (C++ compiler: {native.compiler()})")
    if path == "pytorch":
        monkeypatch.setattr(native, "kernel", lambda: None)
    fast, reference = (SelfAttentionMaps(fusion, COMMON, max_chunk_elements=chunk) for _ in range(2))
    calls = []
    module, name = (native, "attention_maps") if path == "native" else (fusion_module, "_fused_maps")
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(1) or original(*a))
    for seed, grid in enumerate(LAYER_GRIDS):
        q, k, v = qkv(grid, seed=seed)
        with torch.no_grad():
            out = fast.attention(q, k, v, HEADS, grid)
        expected = reference.attention(*(t.clone().requires_grad_() for t in (q, k, v)), HEADS, grid)
        # the native kernel's own exp2 and summation order: float32 rounding of outputs up to ~8
        torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5 if path == "native" else 1e-6)
    assert len(calls) == len(LAYER_GRIDS)  # the fast path ran for every layer
    torch.testing.assert_close(fast.structure(), reference.structure().detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_equal_batch_rows_are_computed_once_with_the_same_results(fusion, monkeypatch):
    """CFG's positive and negative rows are equal until the first cross-attention: without
    gradients they are attended once and copied; outputs and psi' are those of each row
    computed on its own, and a row that differs in one value is not merged."""
    batches = []
    original = SelfAttentionMaps._attend
    monkeypatch.setattr(SelfAttentionMaps, "_attend",
                        lambda self, q, *a: batches.append(q.shape[0]) or original(self, q, *a))
    merged = SelfAttentionMaps(fusion, COMMON)
    alone = [SelfAttentionMaps(fusion, COMMON) for _ in range(4)]
    for seed, grid in enumerate(LAYER_GRIDS):
        a, b = qkv(grid, batch=1, seed=seed), qkv(grid, batch=1, seed=seed + 10)
        # rows: a, b, a again (equal), a with one value of v changed
        q, k, v = (torch.cat([x, y, x, x]) for x, y in zip(a, b))
        v[3, 0, 0] += 1.0
        with torch.no_grad():
            out = merged.attention(q, k, v, HEADS, grid)
            assert batches[-1] == 3  # rows 0 and 2 attended once
            rows = [maps.attention(*(t[i:i + 1] for t in (q, k, v)), HEADS, grid)
                    for i, maps in enumerate(alone)]
        torch.testing.assert_close(out, torch.cat(rows), rtol=1e-6, atol=1e-7)
        assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[3])
    psi = merged.structure()
    torch.testing.assert_close(psi, torch.cat([maps.structure() for maps in alone]), rtol=1e-6, atol=1e-7)
    assert torch.equal(psi[0], psi[2])
