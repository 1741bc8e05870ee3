"""Loader for the FLAME head model (``generic_model.pkl``), linear part only.

FLAME is licensed and not shipped. Its pickle was written by Python 2 and holds
NumPy arrays, a SciPy sparse joint regressor and chumpy ``Ch`` objects, so the
usual recipe is ``pickle.load(f, encoding="latin1")`` with chumpy installed.
We need neither chumpy nor trust in the file: a restricted unpickler resolves
only an explicit allowlist of globals (NumPy's array/dtype reconstruction,
``set``/``frozenset``) and replaces every chumpy and SciPy sparse class by an
inert record of its pickled state, so no code from the file ever runs; any
other global (``os.system``, ``builtins.eval``, ...) raises
:class:`pickle.UnpicklingError` naming it.

Layout facts, with where they were confirmed:
  * ``v_template`` ``(5023, 3)``, ``f`` ``(9976, 3)`` 0-based triangles and
    ``shapedirs`` ``(5023, 3, 400)``: the first 300 components are identity
    shape, the last 100 expression (FLAME_PyTorch/DECA slice
    ``shapedirs[:, :, :n_shape]`` and ``shapedirs[:, :, 300:300 + n_exp]``;
    T. Bolkart, TF_FLAME#2: "300 shape components, and 100 expression
    components"), the same in FLAME 2017, 2019, 2020 and 2023.
  * Every shape and expression column is already scaled by its standard
    deviation, so coefficients are N(0, 1) and a column's norm *is* its std
    (T. Bolkart, TF_FLAME#7 and flame-fitting#20).
  * Coordinates are in metres (T. Bolkart, flame-fitting#17: "FLAME is in
    Meters"; MICA#70).

Pose (joints, skinning, ``posedirs``) is not read: the library's model is the
additive shape + expression part. FLAME's landmarks are barycentric embeddings
(a separate file), not vertex indices, so ``landmark_indices`` defaults to 68
missing landmarks.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from morphable.io.bfm import (
    _component_count,
    _existing_file,
    _landmarks_or_missing,
    _orthonormal_columns,
    _triangles,
)
from morphable.model import MorphableModel, make_model

__all__ = ["load_flame", "FLAME_SHAPE_COMPONENTS"]

FLAME_SHAPE_COMPONENTS = 300
"""Leading ``shapedirs`` columns that are identity shape; the rest are expression."""


class _PickledRecord:
    """Inert stand-in for a class we refuse to import: keeps only its pickled state.

    Unpickling calls ``cls.__new__(cls, *args)`` and ``__setstate__(state)``;
    both just store their arguments, so nothing from the file is executed.
    """

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record.args = args
        record.state = None
        return record

    def __init__(self, *args, **kwargs):
        pass  # a REDUCE of the class would otherwise reach object.__init__ with arguments

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_name}>"


class _ChumpyRecord(_PickledRecord):
    """A chumpy object; a plain ``chumpy.ch.Ch`` stores its array as ``x`` (= ``r``)."""

    def array(self, path: Path, key: str) -> np.ndarray:
        state = self.state if isinstance(self.state, dict) else {}
        if "x" not in state:
            raise ValueError(
                f"{path}: '{key}' is a chumpy {self.pickled_name} expression without a stored array; "
                "it cannot be evaluated without chumpy"
            )
        return _as_array(state["x"], path, key)

    @property
    def x(self) -> np.ndarray:
        """The stored array (what chumpy calls ``x``; for a plain ``Ch`` also ``r``)."""
        return self.array(Path("<pickle>"), self.pickled_name)

    r = x


def _numpy_allowlist() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 1.26 has no numpy._core alias
        from numpy.core import multiarray
    # Python 2 pickles name numpy.core; NumPy 2 writes numpy._core.
    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    # Stands in for _codecs.encode, limited to the one codec pickles use, so a
    # file cannot reach other codecs (compression, codec-search imports).
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise _ForbiddenGlobal(f"forbidden call _codecs.encode(..., {encoding!r}): only latin1 is allowed")
    return text.encode("latin1")


_BUILTIN_ALLOWLIST = {
    # Python 2 names first ("__builtin__"), then Python 3.
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    # Python 3 writes bytes as _codecs.encode(text, "latin1") at protocol < 3.
    ("_codecs", "encode"): _encode_latin1,
}

# Every class from these modules becomes an inert record (never imported).
_CHUMPY_MODULES = frozenset(
    {"chumpy", "chumpy.ch", "chumpy.ch_ops", "chumpy.reordering", "chumpy.linalg", "chumpy.utils"}
)
_SPARSE_CLASSES = frozenset({"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"})
_SPARSE_MODULES = frozenset(
    {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse.csr", "scipy.sparse.coo"}
    | {"scipy.sparse._csc", "scipy.sparse._csr", "scipy.sparse._coo"}
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; see the module docstring."""

    def __init__(self, file):
        # latin1 turns Python 2 byte strings (array buffers) into str losslessly;
        # NumPy's ndarray.__setstate__ accepts that.
        super().__init__(file, encoding="latin1")
        self._allowed = {**_numpy_allowlist(), **_BUILTIN_ALLOWLIST}
        self._records: dict[tuple[str, str], type] = {}

    def _record_class(self, module: str, name: str, base: type) -> type:
        key = (module, name)
        if key not in self._records:
            self._records[key] = type(name, (base,), {"pickled_name": f"{module}.{name}"})
        return self._records[key]

    def find_class(self, module: str, name: str):
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module in _CHUMPY_MODULES and name.isidentifier():
            return self._record_class(module, name, _ChumpyRecord)
        if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
            # J_regressor is not needed for the linear model; keep it inert.
            return self._record_class(module, name, _PickledRecord)
        raise _ForbiddenGlobal(
            f"forbidden global '{module}.{name}': a FLAME model pickle may only reference NumPy arrays, "
            "chumpy arrays and SciPy sparse matrices"
        )


def _as_array(value, path: Path, key: str) -> np.ndarray:
    if isinstance(value, _ChumpyRecord):
        return value.array(path, key)
    if isinstance(value, _PickledRecord):
        raise ValueError(f"{path}: '{key}' is a {value.pickled_name}, expected an array")
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{path}: '{key}' is not a numeric array")
    return array


def _read_pickle(path: Path) -> dict:
    data = path.read_bytes()
    try:
        content = _RestrictedUnpickler(io.BytesIO(data)).load()
    except _ForbiddenGlobal as error:
        raise pickle.UnpicklingError(f"{path}: {error}") from None
    except Exception as error:  # a non-pickle fails in many ways (opcodes, EOF, memo keys)
        raise ValueError(f"{path}: not a readable FLAME model pickle ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return content


def _required(content: dict, key: str, path: Path) -> np.ndarray:
    if key not in content:
        raise ValueError(f"{path}: missing required key '{key}' in the FLAME pickle")
    return _as_array(content[key], path, key)


def load_flame(
    path: str | os.PathLike,
    *,
    n_shape: int | None = None,
    n_expression: int | None = None,
    landmark_indices=None,
) -> MorphableModel:
    """Load FLAME's linear shape + expression model from ``generic_model.pkl``.

    Reads ``v_template``, ``shapedirs`` and ``f`` with a restricted unpickler
    (no chumpy, no code from the file runs). Columns ``[0, 300)`` of
    ``shapedirs`` become the identity basis and ``[300, K)`` the expression
    basis, both split into orthonormal columns and their norms (the standard
    deviations), so the coefficients are FLAME's own betas, N(0, 1).

    Args:
      path: the pickle (keys ``v_template (N, 3)``, ``shapedirs (N, 3, K)``,
        ``f (T, 3)``; N = 5023, K = 400 for the released models).
      n_shape: keep the first identity components (default all 300).
      n_expression: keep the first expression components (default all, 100).
      landmark_indices: ``(L,)`` vertex index per landmark, ``-1`` where none;
        default 68 missing landmarks.

    Returns:
      A model with ``mean (N, 3)`` metres, orthonormal ``identity_basis
      (N, 3, n_shape)`` and ``expression_basis (N, 3, n_expression)``, stds in
      metres, ``expression_kind="pca"``, ``units="m"``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      pickle.UnpicklingError: the pickle references a global outside the
        allowlist (named in the message); nothing from it was executed.
      ValueError: not a pickle, a required key is missing or malformed, or an
        index or count is out of range.

    Examples:
      >>> model = load_flame("FLAME2020/generic_model.pkl", n_shape=100, n_expression=50)  # doctest: +SKIP
      >>> model.n_vertices, model.n_identity, model.n_expression, model.units  # doctest: +SKIP
      (5023, 100, 50, 'm')
    """
    path = _existing_file(path)
    content = _read_pickle(path)
    template = _required(content, "v_template", path).astype(np.float64)
    if template.ndim != 2 or template.shape[1] != 3 or template.shape[0] == 0:
        raise ValueError(f"{path}: 'v_template' should have shape (N, 3), got {template.shape}")
    n = template.shape[0]
    directions = _required(content, "shapedirs", path).astype(np.float64)
    if directions.ndim != 3 or directions.shape[:2] != (n, 3):
        raise ValueError(f"{path}: 'shapedirs' should have shape ({n}, 3, K), got {directions.shape}")
    triangles = _triangles(_required(content, "f", path), n, path, "f", one_based=False)

    n_shape_available = min(directions.shape[2], FLAME_SHAPE_COMPONENTS)
    n_shape = _component_count(n_shape, n_shape_available, "n_shape", path)
    n_expression = _component_count(
        n_expression, directions.shape[2] - n_shape_available, "n_expression", path
    )
    flat = directions.reshape(3 * n, -1)  # (N, 3, K) → (3N, K), rows x0, y0, z0, x1, ...
    identity_basis, identity_std = _orthonormal_columns(flat[:, :n_shape])
    expression_basis, expression_std = _orthonormal_columns(
        flat[:, n_shape_available : n_shape_available + n_expression]
    )
    return make_model(
        template,
        identity_basis,
        expression_basis,
        triangles=triangles,
        landmark_indices=_landmarks_or_missing(landmark_indices),
        identity_std=identity_std,
        expression_std=expression_std,
        expression_kind="pca",
        units="m",
        name=f"flame:{path.stem}",
    )
