"""Read MANO model files without running code from them.

The official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` are Python 2 pickles (protocol 2, read with
``encoding='latin1'``) holding numpy arrays, one ``scipy.sparse`` CSC matrix (``J_regressor``)
and chumpy objects: ``chumpy.ch.Ch`` (an array in its state key ``x``) and, for ``shapedirs``,
``chumpy.reordering.Select`` (``a.ravel()[idxs].reshape(preferred_shape)`` over a ``Ch``).
chumpy no longer installs on current Python/numpy, and a plain ``pickle.load`` would run
whatever a tampered file asks for, so :func:`load_mano_pickle` uses a restricted unpickler.

Allow-list (every other global is refused with :class:`UnsafePickleError` before anything
is called):

* numpy: ``ndarray``, ``dtype``, ``multiarray._reconstruct`` and ``multiarray.scalar``
  (numpy 1 path ``numpy.core``, numpy 2 path ``numpy._core``), ``numeric._frombuffer``
  (arrays pickled with protocol 5). Arrays must end up with a numeric dtype.
* ``scipy.sparse.csc.csc_matrix`` / ``scipy.sparse._csc.csc_matrix``, ``chumpy.ch.Ch`` and
  ``chumpy.reordering.Select``: mapped to inert stand-in classes that only keep the state
  dict pickle gives them; the arrays are read out of that state afterwards (no chumpy or
  scipy code runs while unpickling).
* ``copyreg._reconstructor`` (``copy_reg`` in Python 2), replaced by a function that only
  creates an empty stand-in (``_reconstructor(stand_in, object, None)``), and
  ``builtins.object`` (``__builtin__``) as its argument: protocols 0 and 1 rebuild objects so.
* ``builtins.set``: chumpy's state holds a set of names (``_dirty_vars``).
* ``_codecs.encode``: Python 3 writes bytes into protocol <= 2 pickles as
  ``_codecs.encode(text, 'latin1')``; replaced by a function that accepts only that encoding.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MANO_DOWNLOAD = "https://mano.is.tue.mpg.de"
_FIX = (f"use the official MANO_RIGHT.pkl / MANO_LEFT.pkl from {MANO_DOWNLOAD} "
        "(Downloads, 'Models & Code'), unmodified")

#: MANO's kinematic tree: parent of each of the 16 joints (wrist, then index, middle,
#: little, ring, thumb chains of three).
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

#: Arrays a MANO file must hold, with their shapes (None: any size, checked separately).
MANO_REQUIRED_SHAPES = {
    "v_template": (778, 3),
    "f": (1538, 3),
    "shapedirs": (778, 3, None),
    "posedirs": (778, 3, 135),
    "J_regressor": (16, 778),
    "kintree_table": (2, 16),
    "weights": (778, 16),
    "hands_components": (45, 45),
    "hands_mean": (45,),
}
#: Optional: PCA coefficients of MANO's training poses (N, 45), used for the pose prior.
MANO_OPTIONAL_SHAPES = {"hands_coeffs": (None, 45)}
_NUMERIC_KINDS = "biuf"
_MAX_NESTING = 8


class UnsafePickleError(ValueError):
    """A pickle asked for a class or function that is not a numpy/scipy/chumpy array type."""


class _StandIn:
    """Inert placeholder for an allowed class: keeps the state dict and nothing else."""

    qualname = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"{self.qualname}: state is a {type(state).__name__}, expected a dict")
        object.__setattr__(self, "state", state)


class _ChumpyCh(_StandIn):
    qualname = "chumpy.ch.Ch"


class _ChumpySelect(_StandIn):
    qualname = "chumpy.reordering.Select"


class _SparseCsc(_StandIn):
    qualname = "scipy.sparse.csc_matrix"


_STAND_INS = (_ChumpyCh, _ChumpySelect, _SparseCsc)


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` limited to creating an empty stand-in object."""
    if cls not in _STAND_INS or base is not object or state is not None:
        raise UnsafePickleError(f"copyreg._reconstructor called with {cls!r}, {base!r}, "
                                f"{type(state).__name__}; only array types are allowed")
    return object.__new__(cls)


def _latin1_bytes(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` limited to what Python 3 writes for bytes: ``(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode called with {type(text).__name__}, "
                                f"{encoding!r}; only latin1 text -> bytes is allowed")
    return text.encode("latin1")


class _Function:
    """An allowed Python function, callable but closed to pickle's BUILD opcode.

    BUILD on a plain function would write into its ``__dict__``; here it raises instead.
    (numpy's C functions and the allowed types have no writable ``__dict__``.)
    """

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"the pickle tries to set attributes of {self._fn.__name__}")


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = _Function(np.zeros(1).__reduce_ex__(5)[0])
    scalar = np.float64(0).__reduce__()[0]
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("scipy.sparse.csc", "csc_matrix"): _SparseCsc,
        ("scipy.sparse._csc", "csc_matrix"): _SparseCsc,
        ("chumpy.ch", "Ch"): _ChumpyCh,
        ("chumpy.reordering", "Select"): _ChumpySelect,
        ("_codecs", "encode"): _Function(_latin1_bytes),
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for module in ("copy_reg", "copyreg"):
        table[(module, "_reconstructor")] = _Function(_reconstructor)
    for module in ("__builtin__", "builtins"):
        table[(module, "object")] = object
        table[(module, "set")] = set
    return table


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"the pickle asks for '{module}.{name}', which is not a "
                                    "numpy / scipy.sparse / chumpy array type") from None


def _to_array(value, key: str, path: Path, depth: int = 0):
    """The numeric ndarray / csc_matrix a loaded value stands for, or None for non-arrays."""
    if depth > _MAX_NESTING:
        raise ValueError(f"{path}: '{key}' nests chumpy objects more than {_MAX_NESTING} deep")
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in _NUMERIC_KINDS else None
    if isinstance(value, _ChumpyCh):
        return _to_array(value.__dict__.get("state", {}).get("x"), key, path, depth + 1)
    if isinstance(value, _ChumpySelect):
        state = value.__dict__.get("state", {})
        source = _to_array(state.get("a"), key, path, depth + 1)
        idxs = state.get("idxs")
        if not isinstance(source, np.ndarray) or not isinstance(idxs, np.ndarray):
            raise ValueError(f"{path}: '{key}' is a chumpy Select without its array or indices")
        out = source.ravel()[idxs.ravel().astype(np.int64)]
        shape = state.get("preferred_shape")
        return out if shape is None else out.reshape(tuple(shape))
    if isinstance(value, _SparseCsc):
        return _csc_from_state(value.__dict__.get("state", {}), key, path)
    return None


def _csc_from_state(state: dict, key: str, path: Path):
    """Rebuild a fresh ``scipy.sparse.csc_matrix`` from a pickled one's state dict."""
    import scipy.sparse

    parts = [state.get(name) for name in ("data", "indices", "indptr")]
    shape = state.get("_shape", state.get("shape"))
    if not all(isinstance(p, np.ndarray) and p.dtype.kind in _NUMERIC_KINDS for p in parts) \
            or not isinstance(shape, tuple):
        raise ValueError(f"{path}: '{key}' is a sparse matrix without data/indices/indptr/shape")
    try:
        matrix = scipy.sparse.csc_matrix(tuple(parts), shape=shape)
        matrix.check_format(full_check=True)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: '{key}' is a malformed sparse matrix ({exc})") from None
    return matrix


def load_mano_pickle(path) -> dict:
    """Load a MANO ``.pkl`` without importing chumpy or running code from the file.

    Args:
        path: a MANO pickle (official Python 2 file, or a chumpy-free re-save; any protocol).

    Returns:
        ``{key: numpy.ndarray | scipy.sparse.csc_matrix}``: the numeric arrays of the file,
        chumpy objects replaced by the arrays they hold; non-array entries (e.g. the strings
        ``bs_style``, ``bs_type``) are left out.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError (a ValueError): the pickle refers to a class or function outside the
            allow-list (see the module docstring); names it and the file.
        ValueError: the file is truncated, corrupt or not a dict of arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MANO file not found; {_FIX}, and put it there")
    try:
        with path.open("rb") as fh:
            raw = _RestrictedUnpickler(fh, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: refused to load: {exc}. A MANO file holds only "
                                "arrays: this one is damaged or was tampered with (no code "
                                f"from it was run); {_FIX}") from None
    except Exception as exc:  # a corrupt pickle can raise almost any exception type
        raise ValueError(f"{path}: unreadable MANO pickle, the file is truncated or corrupt "
                         f"({type(exc).__name__}: {exc}); {_FIX}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: holds a {type(raw).__name__}, not a MANO model dict; {_FIX}")
    arrays = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: has a non-text key {key!r}; not a MANO model file; {_FIX}")
        array = _to_array(value, key, path)
        if array is None:
            log.debug("%s: skipping non-array entry %r (%s)", path, key, type(value).__name__)
        else:
            arrays[key] = array
    return arrays


def _load_npz(path: Path) -> dict:
    try:
        with path.open("rb") as fh:  # our handle: np.load leaks its own on a bad zip
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {key: archive[key] for key in archive.files}
    except Exception as exc:  # zipfile, numpy and OS errors all mean an unusable file
        raise ValueError(f"{path}: unreadable MANO .npz (needs plain numeric arrays, no pickled "
                         f"objects; {type(exc).__name__}: {exc}); {_FIX}, or re-save it with "
                         "numpy.savez") from exc


def _check_shape(key: str, value, expected: tuple, path: Path) -> None:
    shape = tuple(value.shape)
    if len(shape) != len(expected) or any(e not in (None, s) for s, e in zip(shape, expected)):
        want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{path}: '{key}' has shape {shape}, a MANO hand model has {want}; {_FIX}")


def load_mano_file(path) -> dict:
    """Load and check a MANO model file (``.pkl`` or ``.npz``).

    ``.pkl`` goes through :func:`load_mano_pickle`; ``.npz`` through
    ``numpy.load(allow_pickle=False)``. The arrays listed in :data:`MANO_REQUIRED_SHAPES` must
    be present with those shapes (``shapedirs`` with at least 10 shape components), ``f`` must
    hold integer vertex indices, ``kintree_table[0]`` must be MANO's parents
    (:data:`MANO_PARENTS`; the root entry is ignored) and float arrays must be finite.

    Returns:
        ``{key: array}`` as loaded (``J_regressor`` may be a ``scipy.sparse`` matrix); units
        are MANO's: metres, radians.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: see :func:`load_mano_pickle`.
        ValueError: unknown suffix, unreadable file, or a missing / malformed array (the
            message names the key and the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MANO file not found; {_FIX}, and put it there")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        data = load_mano_pickle(path)
    elif suffix == ".npz":
        data = _load_npz(path)
    else:
        raise ValueError(f"{path}: unknown MANO file type {suffix!r}; expected .pkl or .npz")
    for key, expected in MANO_REQUIRED_SHAPES.items():
        if key not in data:
            raise ValueError(f"{path}: missing '{key}', so this is not a MANO hand model "
                             f"file (found keys: {sorted(data)}); {_FIX}")
        _check_shape(key, data[key], expected, path)
    for key, expected in MANO_OPTIONAL_SHAPES.items():
        if key in data:
            _check_shape(key, data[key], expected, path)
    if data["shapedirs"].shape[2] < 10:
        raise ValueError(f"{path}: 'shapedirs' has {data['shapedirs'].shape[2]} shape "
                         f"components, MANO has 10; {_FIX}")
    faces = data["f"]
    if faces.dtype.kind not in "iu" or faces.min() < 0 or faces.max() >= 778:
        raise ValueError(f"{path}: 'f' must hold integer vertex indices in [0, 778); {_FIX}")
    parents = np.asarray(data["kintree_table"])[0, 1:]
    if parents.tolist() != list(MANO_PARENTS[1:]):
        raise ValueError(f"{path}: 'kintree_table' parents {parents.tolist()} are not MANO's "
                         f"hand skeleton {list(MANO_PARENTS[1:])}; {_FIX}")
    for key, value in data.items():
        values = value.data if hasattr(value, "tocsc") else value
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"{path}: '{key}' holds NaN or infinite values; {_FIX}")
    return data
