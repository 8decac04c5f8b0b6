"""SF's native CPU attention kernel (sesahand/control/sf_attend.cpp) against the reference
chunk path, its build cache, and the fallback when it cannot be built."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from sesahand.control import SelfAttentionMaps, grid_cells
from sesahand.control import fusion as fusion_module
from sesahand.control import native


@pytest.fixture(scope="module")
def kernel():
    if native.kernel() is None:
        pytest.skip(f"the native kernel could not be built here (C++ compiler: {native.compiler()}); "
                    "the PyTorch path is used instead and tested in test_fusion.py")
    return native.kernel()


def reference(q, k, v, fusion, grid, common):
    """Output (B, heads, N, d) and summed aggregate by the explicit reference (_chunk_maps), in
    float64: the kernel's float32 error against it is about the float32 reference's."""
    q, k, v = (t.double() for t in (q, k, v))
    b, heads, n, d = q.shape
    k_t = k.transpose(-1, -2).contiguous() * d ** -0.5
    q_flat = q.transpose(1, 2).reshape(b, n, heads * d)
    out, agg = fusion_module._chunk_maps(q_flat, k_t, v, 0, n, fusion, grid, common,
                                         grid_cells(grid, common))
    return out.float(), agg.float()


# (batch, grid, common grid, heads, head width): SD1.5's grids and widths, a grid whose keys are
# no multiple of 16, odd widths, and grids that the common grid does not divide.
SHAPES = [(2, (32, 32), (8, 8), 8, 40), (1, (16, 16), (8, 8), 8, 80), (2, (8, 8), (8, 8), 8, 160),
          (2, (9, 9), (5, 5), 3, 20), (1, (25, 18), (7, 5), 5, 33), (3, (5, 3), (2, 3), 2, 4)]


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
@pytest.mark.parametrize("batch,grid,common,heads,d", SHAPES)
def test_kernel_equals_the_reference(kernel, fusion, batch, grid, common, heads, d):
    g = torch.Generator().manual_seed(batch * 100 + d)
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) * 2 for _ in range(3))
    out, agg = native.attention_maps(q, k, v, fusion, grid_cells(grid, common), common[0] * common[1],
                                     1 << 23)
    expected_out, expected_agg = reference(q, k, v, fusion, grid, common)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(agg, expected_agg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["tokens", "gate"])
def test_rows_per_item_and_threads_do_not_change_results(kernel, fusion, monkeypatch):
    """Items of 1, 7 and 64 rows (a tail item when N is no multiple), on 1 and 2 threads."""
    grid, common = (12, 10), (3, 5)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 120, 24, generator=g) for _ in range(3))
    cells = grid_cells(grid, common)
    expected_out, expected_agg = reference(q, k, v, fusion, grid, common)
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        for rows in (1, 7, 64):
            chunk = 2 * threads * 128 * rows  # 120 keys are padded to 128
            assert native.rows_per_item(chunk, 120, threads) == rows
            out, agg = native.attention_maps(q, k, v, fusion, cells, 15, chunk)
            torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(agg, expected_agg, rtol=1e-5, atol=1e-5)


def test_extreme_logits_give_finite_maps(kernel):
    """Large logits (a near one-hot softmax: exp2 underflows to 0 for most keys) and equal
    logits (uniform rows) as the reference. Logits of size ~900 carry a float32 rounding error
    of ~1e-4, hence the wider tolerance (over 200 seeds the error stayed under 0.16 of it)."""
    grid, common = (8, 8), (4, 4)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 64, 8, generator=g) * torch.tensor([30.0, 0.0]).view(1, 2, 1, 1)
    k, v = torch.randn(1, 2, 64, 8, generator=g) * 30, torch.randn(1, 2, 64, 8, generator=g)
    for fusion in ("tokens", "gate"):
        out, agg = native.attention_maps(q, k, v, fusion, grid_cells(grid, common), 16, 1 << 23)
        expected_out, expected_agg = reference(q, k, v, fusion, grid, common)
        assert torch.isfinite(out).all() and torch.isfinite(agg).all()
        torch.testing.assert_close(out, expected_out, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(agg, expected_agg, rtol=1e-3, atol=1e-4)


def test_self_attention_maps_use_the_kernel_without_gradients(kernel, monkeypatch):
    calls = []
    original = native.attention_maps
    monkeypatch.setattr(native, "attention_maps", lambda *a: calls.append(1) or original(*a))
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 64, 16, generator=g) for _ in range(3))
    with torch.no_grad():
        SelfAttentionMaps("tokens", (4, 4)).attention(q, k, v, 2, (8, 8))
    assert calls == [1]
    SelfAttentionMaps("tokens", (4, 4)).attention(*(t.requires_grad_() for t in (q, k, v)), 2, (8, 8))
    assert calls == [1]  # with gradients: the checkpointed reference path


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private cache folder and no kernel loaded yet (restored afterwards)."""
    monkeypatch.setenv("SESAHAND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_kernel", None)
    return tmp_path / "cache" / "native"


def test_the_kernel_is_built_once_into_a_private_cache_folder(kernel, fresh):
    fresh.mkdir(mode=0o700, parents=True)
    (fresh / "sf_attend-0123456789abcdef0123.so").write_bytes(b"an older build")
    umask = os.umask(0o002)  # a common user umask: files would be group-writable
    try:
        assert native.kernel() is not None
    finally:
        os.umask(umask)
    libraries = list(fresh.iterdir())
    assert [p.suffix for p in libraries] == [".so"]  # no temporary file left, the older build removed
    assert fresh.stat().st_mode & 0o777 == 0o700
    assert libraries[0].stat().st_mode & 0o777 == 0o755
    assert libraries[0] == native.library_path(native.compiler())
    mtime = libraries[0].stat().st_mtime_ns
    native._kernel = None
    assert native.kernel() is not None  # loaded again, not rebuilt
    assert libraries[0].stat().st_mtime_ns == mtime


def test_a_library_others_could_write_is_refused(kernel, fresh, caplog):
    assert native.kernel() is not None
    library = next(fresh.iterdir())
    os.chmod(library, 0o666)
    native._kernel = None
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.kernel() is None
    assert "writable by others" in caplog.text


@pytest.mark.parametrize("cxx", ["no-such-compiler-anywhere", "false"])
def test_without_a_working_compiler_the_pytorch_path_runs(fresh, monkeypatch, caplog, cxx):
    """No compiler, or one that fails: one warning, no file in the cache, same results."""
    monkeypatch.setenv("CXX", cxx)
    grid = (6, 10)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 60, 8, generator=g) for _ in range(3))
    expected = SelfAttentionMaps("gate", (2, 3))
    out_expected = expected.attention(*(t.clone().requires_grad_() for t in (q, k, v)), 2, grid)
    with caplog.at_level(logging.WARNING, logger=native.__name__), torch.no_grad():
        maps = SelfAttentionMaps("gate", (2, 3))
        out = maps.attention(q, k, v, 2, grid)
        maps.attention(q, k, v, 2, grid)
    assert caplog.text.count("using the slower PyTorch path") == 1
    assert not fresh.exists() or not any(fresh.iterdir())
    torch.testing.assert_close(out, out_expected.detach(), rtol=1e-5, atol=1e-6)


def test_a_failed_build_leaves_no_file(kernel, fresh, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.kernel() is None
    assert "exited with" in caplog.text
    assert list(fresh.iterdir()) == []
