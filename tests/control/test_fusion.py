"""Structural fusion math (eq. SF-1..3): chunked maps against a dense reference, refinement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sesahand.control import (FusionSettings, SelfAttentionMaps, coarsest_grid, grid_cells,
                              pool_cells, refine, refine_gate, refine_tokens)

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


def dense_structure(layers, fusion, common):
    """psi' from full maps, pooled with explicit loops over cells.

    tokens: per layer, mean over heads, then pooled; pooled maps averaged over a grid's layers.
    gate: per layer, saliency (mean over heads and queries); averaged over a grid's layers,
    then pooled.
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
        psi = psi + mean
    if fusion == "tokens":
        return psi / psi.sum(dim=-1, keepdim=True)
    return (psi / psi.amax(dim=-1, keepdim=True)).view(-1, *common)


# Grids of a tiny encoder: two layers at the finest grid, one per coarser grid; non-square and
# not divisible by the common grid, so cells hold unequal numbers of tokens.
LAYER_GRIDS = [(6, 10), (6, 10), (3, 5), (2, 3)]
COMMON = (2, 3)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
@pytest.mark.parametrize("chunk", [1 << 20, 7 * HEADS * 2 * 60, 1])  # one chunk, 7 rows, 1 row
def test_chunked_maps_equal_the_dense_reference(fusion, chunk):
    maps = SelfAttentionMaps(fusion, COMMON, max_chunk_elements=chunk)
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
    torch.testing.assert_close(psi, dense_structure(layers, fusion, COMMON), rtol=1e-5, atol=1e-6)


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
