"""SF's native CPU attention kernel (``sf_attend.cpp``): attention output and map aggregate in
one pass, for inference without gradients (docs/method.md, "SF on the CPU").

The kernel is compiled at first use with the system's C++ compiler (``$CXX``, else the first of
``c++``, ``g++``, ``clang++`` on PATH; about a second) for this CPU (``-march=native``) into
``<cache>/native/`` (:func:`sesahand.io.default_cache_dir`; the folder is the user's own,
mode 0700, and a library there that another user could have written is refused), built to a
temporary file and renamed, so concurrent processes never load a half-written library. The
file name holds a hash of the source, the compiler's version, the flags and the target the
compiler sees, so a changed CPU or compiler builds anew (and the older library is removed). It is loaded with ``ctypes`` (which
releases the GIL during the call) and run on ``torch.get_num_threads()`` Python threads, each on
its own query rows. When no compiler is found, the platform is not POSIX, or the build or load
fails, :func:`kernel` logs one warning and returns None; callers then use the PyTorch path
(:func:`sesahand.control.fusion._fused_maps`), which gives the same results more slowly.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import stat
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..io import atomic_path, default_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("sf_attend.cpp")
#: Compiler flags; the second targets this CPU (GCC and Clang spell it -mcpu on Arm).
FLAGS = ("-O3", "-mcpu=native" if platform.machine().lower() in ("arm64", "aarch64") else "-march=native",
         "-std=c++17", "-shared", "-fPIC")
#: Query rows of one work item at most (the kernel's scratch is 2 x rows x keys floats per
#: thread); fewer when the chunk size asks for less memory (:func:`rows_per_item`).
MAX_ROWS = 64
#: floats per vector in the kernel: keys and head widths are padded to multiples of it
VECTOR = 16
COMPILE_TIMEOUT_S = 300

_lock = threading.Lock()
_kernel = None  # the ctypes function, False once it failed
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool)


def compiler() -> str | None:
    """Path of the C++ compiler to use: ``$CXX`` when set, else the first of ``c++``, ``g++``,
    ``clang++`` on PATH; None when there is none."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(command: list[str]) -> str:
    """Run a compiler command; its stdout, or RuntimeError with the end of its stderr."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"{command[0]} could not run: {error}") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])}... exited with {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout


def _check_private(path: Path) -> None:
    """RuntimeError unless ``path`` is this user's and nobody else may write it."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{path} is a link, another user's, or writable by others: not loading "
                           f"code from it (remove it, or set SESAHAND_CACHE_DIR to a private folder)")


def library_path(cxx: str) -> Path:
    """Where the kernel compiled by ``cxx`` for this machine lives (it may not exist yet)."""
    version = _run([cxx, "--version"])
    target = _run([cxx, *FLAGS[:3], "-E", "-dM", "-x", "c++", os.devnull])  # e.g. __AVX512F__
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(), target.encode(),
                 platform.machine().encode()):
        digest.update(hashlib.sha256(part).digest())
    return default_cache_dir() / "native" / f"sf_attend-{digest.hexdigest()[:20]}.so"


def _load():
    if os.name != "posix":
        raise RuntimeError(f"the native kernel is built on Linux and macOS only, not {os.name}")
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or clang++, or set CXX)")
    path = library_path(cxx)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path.parent)
    if not path.exists():
        with atomic_path(path) as tmp:
            _run([cxx, *FLAGS, "-o", str(tmp), str(SOURCE)])
        path.chmod(0o755)  # whatever the umask (002 would leave it group-writable: refused below)
        log.info("compiled SF's attention kernel with %s into %s", cxx, path)
        for stale in path.parent.glob("sf_attend-*.so"):  # older sources, compilers or CPUs
            if stale != path:
                stale.unlink(missing_ok=True)
    _check_private(path)
    function = ctypes.CDLL(str(path)).sf_attend
    p, i = ctypes.c_void_p, ctypes.c_int
    function.argtypes = [p, p, p, p, i, i, i, i, i, p, i, i, ctypes.c_int64, ctypes.c_int64, p, p]
    function.restype = None
    return function


def kernel():
    """The compiled kernel (a ctypes function), built and loaded on the first call; None when it
    is unavailable (the reason is logged once as a warning; later calls return None at once)."""
    global _kernel
    with _lock:
        if _kernel is None:
            try:
                _kernel = _load()
            except (OSError, RuntimeError) as error:
                log.warning("SF's native attention kernel is unavailable, using the slower PyTorch "
                            "path: %s", error)
                _kernel = False
        return _kernel or None


def _pad(n: int) -> int:
    return -(-n // VECTOR) * VECTOR


def rows_per_item(max_chunk_elements: int, n: int, threads: int) -> int:
    """Query rows per work item: :data:`MAX_ROWS`, fewer when the threads' scratch (2 x rows x
    keys floats each) would exceed ``max_chunk_elements`` (SF's memory bound, fusion.py)."""
    return max(1, min(MAX_ROWS, n, max_chunk_elements // (2 * threads * _pad(n))))


def _threads_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] < threads:
            _pool = (threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sesahand-sf"))
        return _pool[1]


def attention_maps(q_h: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor, fusion: str,
                   cells: torch.Tensor, num_cells: int, max_chunk_elements: int
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """softmax(q k^T / sqrt(d)) v per head and the map's aggregate, by the native kernel.

    Args:
        q_h, k_h, v_h: (B, heads, N, d) float32 CPU queries, keys and values (any strides).
        fusion: ``"tokens"`` or ``"gate"`` (sesahand.control.fusion).
        cells: long (N,), the common-grid cell of each token (``grid_cells``).
        num_cells: G, the number of common-grid cells.
        max_chunk_elements: bound on the kernel's scratch, in floats (:func:`rows_per_item`).

    Returns:
        The output (B, heads, N, d) float32 and the aggregate summed over heads, as
        ``_fused_maps`` returns them (``"tokens"``: (B, G, G), the max over queries and each
        cell's keys; ``"gate"``: (B, N), the sum over queries); None when the kernel is
        unavailable (:func:`kernel`).
    """
    function = kernel()
    if function is None:
        return None
    b, heads, n, d = q_h.shape
    np_, dp = _pad(n), _pad(d)
    threads = max(1, torch.get_num_threads())
    rows = rows_per_item(max_chunk_elements, n, threads)
    q = q_h.contiguous()
    kt = q_h.new_zeros(b, heads, d, np_)
    torch.mul(k_h.transpose(-1, -2), d ** -0.5 * math.log2(math.e), out=kt[..., :n])
    if dp == d:
        v = v_h.contiguous()
    else:
        v = q_h.new_zeros(b, heads, n, dp)
        v[..., :d] = v_h
    out = q_h.new_empty(b, heads, n, dp)
    cells32 = cells.to(device="cpu", dtype=torch.int32).contiguous()
    items = b * -(-n // rows)
    threads = min(threads, items)
    scratch = q_h.new_empty(threads, 2 * rows * np_ + num_cells + rows)
    gate = fusion == "gate"
    agg = q_h.new_zeros((threads, b, np_) if gate else (threads, b, num_cells, num_cells))
    bounds = [items * t // threads for t in range(threads + 1)]

    def run(t: int) -> None:
        function(q.data_ptr(), kt.data_ptr(), v.data_ptr(), out.data_ptr(), heads, n, d, dp,
                 int(gate), cells32.data_ptr(), num_cells, rows, bounds[t], bounds[t + 1],
                 scratch[t].data_ptr(), agg[t].data_ptr())

    if threads == 1:
        run(0)
    else:
        for future in [_threads_pool(threads).submit(run, t) for t in range(threads)]:
            future.result()
    out = out[..., :d]
    return out, (agg.sum(0)[:, :n] if gate else agg.amax(0))
