"""Synthetic MANO-format files for tests: random but well-formed, no real MANO data. A pytest
plugin (registered from ``tests/conftest.py``): tests reach it through the fixtures
:func:`mano_pair` (a factory writing ``MANO_RIGHT.pkl`` + ``MANO_LEFT.pkl``) and
:func:`mano_files` (every maker and writer below), never by import.

The arrays have MANO's names, shapes and dtypes. The template is an ellipsoid of hand size
(778 vertices on its surface, 1538 outward counter-clockwise hull triangles); skinning
weights sum to 1 per vertex and the PCA components are orthonormal, like MANO's.

Writers produce the file layouts the loader must read:

* :func:`write_plain_pickle`: arrays and a scipy CSC matrix, pickled by this Python; with
  ``legacy_names`` the globals are renamed to the numpy 1 / old scipy module paths
  (``numpy.core.multiarray``, ``scipy.sparse.csc``) that the official files use.
* :func:`write_chumpy_pickle`: like the official Python 2 files: protocol 2, legacy module
  paths, arrays with their raw data as latin1 text (what a Python 2 ``str`` becomes when read
  with ``encoding='latin1'``), ``shapedirs`` as a ``chumpy.reordering.Select`` over a
  ``chumpy.ch.Ch`` of 20 shape components, a few other arrays as ``chumpy.ch.Ch``, and the
  strings ``bs_style`` / ``bs_type``. The chumpy classes are stand-ins defined here with
  chumpy's module paths and chumpy's pickled state (``__getstate__`` = instance dict minus
  its weak caches, so the array is under ``x``); chumpy itself is not needed.
* :func:`write_npz`: ``numpy.savez`` with a dense ``J_regressor``.
* :func:`write_malicious_pickle`: a pickle that runs ``touch <marker>`` when loaded with
  plain ``pickle.load``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from scipy.spatial import ConvexHull

MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
N_VERTS, N_FACES, N_JOINTS = 778, 1538, 16


def make_mano_data(seed: int = 0) -> dict:
    """A right-hand MANO-format dict (float64 arrays, int64 faces, CSC J_regressor)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(N_VERTS, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    v_template = dirs * np.array([0.09, 0.045, 0.02]) + np.array([0.05, 0.005, 0.005])
    hull = ConvexHull(v_template)
    faces = hull.simplices.astype(np.int64)
    a, b, c = (v_template[faces[:, k]] for k in range(3))
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), hull.equations[:, :3]) < 0
    faces[inward] = faces[inward][:, [0, 2, 1]]
    faces = faces[:N_FACES]  # 1552 hull triangles -> MANO's 1538 (an open mesh, like MANO)

    rows, cols, vals = [], [], []
    for j in range(N_JOINTS):
        picked = rng.choice(N_VERTS, size=20, replace=False)
        rows += [j] * 20
        cols += picked.tolist()
        vals += rng.dirichlet(np.ones(20)).tolist()
    j_regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(N_JOINTS, N_VERTS))

    weights = rng.random((N_VERTS, N_JOINTS)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    components, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    kintree = np.array([[4294967295] + MANO_PARENTS[1:], list(range(N_JOINTS))], dtype=np.int64)
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": rng.normal(0.0, 2e-3, size=(N_VERTS, 3, 10)),
        "posedirs": rng.normal(0.0, 1e-4, size=(N_VERTS, 3, 135)),
        "J_regressor": j_regressor,
        "kintree_table": kintree,
        "weights": weights,
        "hands_components": components.T.copy(),
        "hands_mean": rng.normal(0.0, 0.1, size=45),
        "hands_coeffs": rng.normal(size=(200, 45)) * np.linspace(1.0, 0.05, 45),
    }


def make_left_data(right: dict, shapedirs_bug: bool = True, flip_faces: bool = False) -> dict:
    """The mirror image (x -> -x) of ``right``.

    ``shapedirs_bug``: keep ``shapedirs[:, 0, :]`` equal to the right hand's, as the official
    MANO_LEFT.pkl does; otherwise negate it (a correctly mirrored left hand).
    ``flip_faces``: reverse the triangles' winding so they stay outward after mirroring.
    """
    left = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in right.items()}
    left["v_template"][:, 0] *= -1.0
    if not shapedirs_bug:
        left["shapedirs"][:, 0, :] *= -1.0
    if flip_faces:
        left["f"] = right["f"][:, [0, 2, 1]].copy()
    return left


class Ch:
    """Stand-in for ``chumpy.ch.Ch``, pickled the way chumpy pickles it."""

    def __init__(self, x):
        self._init_internals()
        self.x = np.asarray(x, dtype=np.float64)

    def _init_internals(self):
        self._dirty_vars = {"x"}
        self._itr = None
        self._make_dense = False
        self._make_sparse = False
        self._depends_on_deps = {}

    def __getstate__(self):
        return dict(self.__dict__)


class Select(Ch):
    """Stand-in for ``chumpy.reordering.Select``: ``a.ravel()[idxs].reshape(preferred_shape)``."""

    def __init__(self, a, idxs, preferred_shape):
        self._init_internals()
        self.a = a
        self.idxs = idxs
        self.preferred_shape = preferred_shape


Ch.__module__, Ch.__qualname__, Ch.__name__ = "chumpy.ch", "Ch", "Ch"
Select.__module__, Select.__qualname__, Select.__name__ = "chumpy.reordering", "Select", "Select"


@contextlib.contextmanager
def _fake_chumpy_modules():
    """Make ``chumpy.ch.Ch`` / ``chumpy.reordering.Select`` importable while pickling."""
    names = ("chumpy", "chumpy.ch", "chumpy.reordering")
    saved = {n: sys.modules.get(n) for n in names}
    ch_mod, re_mod = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")
    ch_mod.Ch, re_mod.Select = Ch, Select
    sys.modules.update({"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch_mod,
                        "chumpy.reordering": re_mod})
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


_LEGACY_NAMES = (
    (b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"),
    (b"cscipy.sparse._csc\n", b"cscipy.sparse.csc\n"),
)


def _legacy(blob: bytes) -> bytes:
    """Rename protocol <= 2 GLOBAL opcodes to numpy 1 / old scipy module paths."""
    for new, old in _LEGACY_NAMES:
        blob = blob.replace(new, old)
    return blob


class _Py2StylePickler(pickle.Pickler):
    """Writes arrays like Python 2 numpy did: ``_reconstruct`` + raw data as a text string."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            reconstruct = np.zeros(1).__reduce__()[0]
            raw = np.ascontiguousarray(obj).tobytes().decode("latin1")
            state = (1, obj.shape, obj.dtype, False, raw)
            return reconstruct, (np.ndarray, (0,), "b"), state
        return NotImplemented


def write_plain_pickle(path: Path, data: dict, protocol: int = 2,
                       legacy_names: bool = False) -> Path:
    blob = pickle.dumps(data, protocol=protocol)
    if legacy_names:
        assert protocol <= 2, "module renaming needs text GLOBAL opcodes (protocol <= 2)"
        blob = _legacy(blob)
    Path(path).write_bytes(blob)
    return Path(path)


def write_mano_pair(folder: Path, seed: int = 0) -> Path:
    """Synthetic ``MANO_RIGHT.pkl`` and its mirrored ``MANO_LEFT.pkl`` in ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    right = make_mano_data(seed=seed)
    write_plain_pickle(folder / "MANO_RIGHT.pkl", right)
    write_plain_pickle(folder / "MANO_LEFT.pkl", make_left_data(right))
    return folder


def to_chumpy_style(data: dict) -> dict:
    """The official layout: chumpy objects for some arrays, shapedirs as a Select over 20."""
    out = dict(data)
    rng = np.random.default_rng(1)
    extra = rng.normal(0.0, 2e-3, size=data["shapedirs"].shape)
    full = np.concatenate([data["shapedirs"], extra], axis=2)
    idxs = np.arange(full.size).reshape(full.shape)[:, :, :10].ravel()
    out["shapedirs"] = Select(Ch(full), idxs, data["shapedirs"].shape)
    out["v_template"] = Ch(data["v_template"])
    out["J"] = Ch(data["J_regressor"] @ data["v_template"])
    out["bs_style"], out["bs_type"] = "lbs", "lrotmin"
    return out


def write_chumpy_pickle(path: Path, data: dict, protocol: int = 2) -> Path:
    buf = io.BytesIO()
    with _fake_chumpy_modules():
        _Py2StylePickler(buf, protocol=protocol).dump(to_chumpy_style(data))
    Path(path).write_bytes(_legacy(buf.getvalue()))
    return Path(path)


def write_npz(path: Path, data: dict) -> Path:
    arrays = {k: (v.toarray() if scipy.sparse.issparse(v) else v) for k, v in data.items()}
    np.savez(path, **arrays)
    return Path(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def write_malicious_pickle(path: Path, data: dict, marker: Path) -> Path:
    """A MANO-looking pickle whose ``v_template`` runs ``touch marker`` when unpickled."""
    payload = dict(data)
    payload["v_template"] = _Exploit(marker)
    Path(path).write_bytes(pickle.dumps(payload, protocol=2))
    return Path(path)


@pytest.fixture(scope="session")
def mano_pair():
    """``mano_pair(folder, seed=0) -> folder``: :func:`write_mano_pair`, synthetic
    ``MANO_RIGHT.pkl`` and its mirrored ``MANO_LEFT.pkl`` written into ``folder``."""
    return write_mano_pair


@pytest.fixture(scope="session")
def mano_files():
    """The makers and writers of this module: ``make_mano_data``, ``make_left_data``,
    ``write_plain_pickle``, ``write_chumpy_pickle``, ``write_npz``, ``write_malicious_pickle``,
    ``write_mano_pair``."""
    return types.SimpleNamespace(make_mano_data=make_mano_data, make_left_data=make_left_data,
                                 write_plain_pickle=write_plain_pickle, write_chumpy_pickle=write_chumpy_pickle,
                                 write_npz=write_npz, write_malicious_pickle=write_malicious_pickle,
                                 write_mano_pair=write_mano_pair)
