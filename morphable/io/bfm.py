"""Loaders for the Basel Face Model: BFM 2009 (``.mat``) and BFM 2017/2019 (statismo ``.h5``).

The BFM is licensed and not shipped; these functions read the files a licensee
downloads. Layout facts they rely on, with where they were confirmed:

BFM 2009, ``PublicMM1/01_MorphableModel.mat`` (MATLAB v5, read with
:func:`scipy.io.loadmat`):
  * ``shapeMU`` ``(3N, 1)`` mean, ordered ``x1, y1, z1, x2, ...`` (the BFM's own
    ``coef2object.m`` reshapes it to ``(3, N)`` column-major).
  * ``shapePC`` ``(3N, 199)`` unit-norm, orthogonal principal components and
    ``shapeEV`` ``(199, 1)`` their **standard deviations**, not variances:
    ``coef2object.m`` computes ``shapeMU + shapePC * (coef .* shapeEV)`` with
    ``coef`` "in units of standard deviation"; eos's
    ``share/scripts/convert-bfm2009-to-eos.py`` says the same.
  * ``tl`` ``(T, 3)`` 1-based triangles whose front faces are wound the wrong way
    round for OpenGL; eos's converter and menpo/lsfm (``lsfm/data/basel.py``)
    both swap the last two corners, and so do we.
  * Coordinates are in **micrometres** (BFM maintainer B. Egger,
    unibas-gravis/basel-face-model-viewer#20: "BFM 2009 micrometer, BFM 2017 and
    2019 millimeter"). We convert to millimetres so that all Basel models load
    in the same unit.

BFM 2017/2019, ``model2017-1_*.h5`` / ``model2019_*.h5`` (statismo layout, as
read by scalismo's ``StatismoIO.scala`` and scalismo-faces' ``MoMoIO.scala``):
  * ``/shape/model/mean`` ``(3N,)``, ``/shape/model/pcaBasis`` ``(3N, K)``,
    ``/shape/model/pcaVariance`` ``(K,)`` (variances), the same under
    ``/expression/model`` (a model of *displacements*; scalismo-faces adds its
    mean to the shape instance), ``/shape/representer/points`` ``(3, N)`` and
    ``/shape/representer/cells`` ``(3, T)`` 0-based.
  * ``pcaBasis`` is **orthonormal** for file format 0.9 and 1.x (written in
    ``/version/majorVersion``, ``/version/minorVersion``; scalismo-faces, which
    writes the BFM 2017/2019 files, writes 0.9), but **already scaled by** ``sqrt(pcaVariance)`` in the old
    0.8 format (scalismo's ``extractOrthonormalPCABasisMatrix``). Without a
    version we infer which from the column norms.
  * Coordinates are in millimetres (same maintainer statement as above).

Neither release has a 68-point iBUG landmark list, so ``landmark_indices``
defaults to 68 missing landmarks (``-1``) unless the caller passes one.

The small helpers below are shared by the FLAME and LSFM loaders.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import numpy as np
import scipy.io

from morphable.model import MorphableModel, make_model

__all__ = ["load_bfm2009", "load_bfm2017", "N_LANDMARKS"]

N_LANDMARKS = 68
"""Landmark slots of a loaded model (iBUG/Multi-PIE 68-point order)."""

_MICROMETRES_PER_MILLIMETRE = 1000.0
# Relative tolerance for "this column has unit norm" when a statismo file does
# not say whether its basis is orthonormal; float32 files are good to ~1e-6.
_UNIT_NORM_RTOL = 1e-3


# ----------------------------------------------------------------------------
# Shared helpers (also used by morphable.io.flame and morphable.io.lsfm)
# ----------------------------------------------------------------------------


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def _landmarks_or_missing(landmark_indices) -> np.ndarray:
    # make_model checks the range against the vertex count and names the argument.
    if landmark_indices is None:
        return np.full((N_LANDMARKS,), -1, dtype=np.int64)
    return np.asarray(landmark_indices, dtype=np.int64).reshape(-1)


def _component_count(requested, available: int, what: str, path: Path) -> int:
    if requested is None:
        return available
    try:
        count = operator.index(requested)
    except TypeError:
        raise TypeError(f"{what}: expected an integer, got {requested!r}") from None
    if not 0 <= count <= available:
        raise ValueError(f"{what}: {path} has {available} components, cannot take {count}")
    return count


def _orthonormal_columns(scaled_basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``(3N, k)`` columns ``b_k = u_k σ_k`` into unit columns ``u_k`` and ``σ_k``.

    The generated faces are unchanged (``u_k σ_k = b_k``); this only puts the
    scale where :class:`MorphableModel` expects it. A zero column stays zero with
    ``σ_k = 0``.
    """
    scaled_basis = np.asarray(scaled_basis, dtype=np.float64)
    norms = np.linalg.norm(scaled_basis, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    return scaled_basis / safe, norms


def _triangles(array, n_vertices: int, path: Path, key: str, *, one_based: bool) -> np.ndarray:
    tri = np.asarray(array)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"{path}: '{key}' should have shape (T, 3), got {tri.shape}")
    if not np.issubdtype(tri.dtype, np.integer):
        if not np.all(np.isfinite(tri)) or np.any(tri != np.round(tri)):
            raise ValueError(f"{path}: '{key}' holds non-integer vertex indices")
    tri = tri.astype(np.int64) - (1 if one_based else 0)
    if tri.size and (tri.min() < 0 or tri.max() >= n_vertices):
        base = "1-based" if one_based else "0-based"
        raise ValueError(f"{path}: '{key}' has a vertex index outside [0, {n_vertices}) ({base} in the file)")
    return tri


def _read_mat(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    try:
        # variable_names keeps e.g. the BFM's 127 MB texture basis out of memory.
        content = scipy.io.loadmat(str(path), variable_names=[*required, *optional])
    except Exception as error:  # scipy raises a zoo of types for a non-.mat file
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(error).__name__}: {error})") from error
    missing = [key for key in required if key not in content]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing} in the .mat file")
    return content


def _flat_vector(array, path: Path, key: str) -> np.ndarray:
    vector = np.asarray(array, dtype=np.float64)
    if vector.ndim > 2 or (vector.ndim == 2 and 1 not in vector.shape):
        raise ValueError(f"{path}: '{key}' should be a vector, got shape {vector.shape}")
    return vector.reshape(-1)


def _basis_matrix(array, rows: int, path: Path, key: str) -> np.ndarray:
    basis = np.asarray(array, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[0] != rows:
        raise ValueError(f"{path}: '{key}' should have shape ({rows}, K), got {basis.shape}")
    return basis


def _vertex_count(mean: np.ndarray, path: Path, key: str) -> int:
    if mean.size == 0 or mean.size % 3:
        raise ValueError(f"{path}: '{key}' has {mean.size} values, not a positive multiple of 3")
    return mean.size // 3


# ----------------------------------------------------------------------------
# BFM 2009
# ----------------------------------------------------------------------------


def load_bfm2009(path: str | os.PathLike, *, landmark_indices=None, n_identity: int | None = None) -> MorphableModel:
    """Load the BFM 2009 shape model from ``01_MorphableModel.mat``.

    Only the shape PCA is read (the BFM 2009 has no expression model, so the
    model has ``n_e = 0``). Coordinates are converted from the file's
    micrometres to **millimetres**; the identity coefficients are in standard
    deviations (the file's ``shapeEV``), so they are N(0, 1) under the model.
    Triangles are made 0-based and wound counter-clockwise (OpenGL front faces),
    swapping the file's last two corners as eos does.

    Args:
      path: the ``.mat`` file (keys ``shapeMU (3N, 1)``, ``shapePC (3N, K)``,
        ``shapeEV (K, 1)``, ``tl (T, 3)`` 1-based; N = 53490, K = 199 for the
        released file).
      landmark_indices: ``(L,)`` vertex index per landmark, ``-1`` where none;
        default 68 missing landmarks (the BFM ships no iBUG-68 list).
      n_identity: keep the first ``n_identity`` components (default all).

    Returns:
      A model with ``mean (N, 3)`` mm, ``identity_basis (N, 3, n_i)`` orthonormal
      columns, ``identity_std (n_i,)`` mm, no expression components,
      ``units="mm"``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a readable ``.mat`` file, a required key is missing or has
        the wrong shape, or an index is out of range (the message names the
        file, key or argument).

    Examples:
      >>> model = load_bfm2009("PublicMM1/01_MorphableModel.mat", n_identity=80)  # doctest: +SKIP
      >>> model.n_vertices, model.n_identity, model.units  # doctest: +SKIP
      (53490, 80, 'mm')
    """
    path = _existing_file(path)
    content = _read_mat(path, ("shapeMU", "shapePC", "shapeEV", "tl"))
    mean_um = _flat_vector(content["shapeMU"], path, "shapeMU")
    n = _vertex_count(mean_um, path, "shapeMU")
    components = _basis_matrix(content["shapePC"], 3 * n, path, "shapePC")
    std_um = _flat_vector(content["shapeEV"], path, "shapeEV")
    if std_um.shape[0] != components.shape[1]:
        raise ValueError(
            f"{path}: 'shapeEV' has {std_um.shape[0]} values for {components.shape[1]} columns of 'shapePC'"
        )
    if not np.all(np.isfinite(std_um)) or np.any(std_um < 0):
        raise ValueError(f"{path}: 'shapeEV' must hold non-negative standard deviations")
    k = _component_count(n_identity, components.shape[1], "n_identity", path)

    # One coefficient unit moves the face by shapePC·shapeEV micrometres.
    basis, std_mm = _orthonormal_columns(components[:, :k] * std_um[:k] / _MICROMETRES_PER_MILLIMETRE)
    triangles = _triangles(content["tl"], n, path, "tl", one_based=True)[:, [0, 2, 1]]
    return make_model(
        mean_um / _MICROMETRES_PER_MILLIMETRE,
        basis,
        np.zeros((3 * n, 0)),
        triangles=triangles,
        landmark_indices=_landmarks_or_missing(landmark_indices),
        identity_std=std_mm,
        units="mm",
        name="bfm2009",
    )


# ----------------------------------------------------------------------------
# BFM 2017 / 2019 (statismo HDF5)
# ----------------------------------------------------------------------------


def _import_h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "reading BFM 2017/2019 .h5 files needs h5py; install it with: pip install 'deepexp3d[h5]'"
        ) from error
    return h5py


def _dataset(handle, name: str, path: Path):
    if name not in handle:
        raise ValueError(f"{path}: missing required dataset '/{name}'")
    return handle[name]


def _statismo_version(handle, path: Path) -> tuple[int, int] | None:
    if "version/majorVersion" not in handle or "version/minorVersion" not in handle:
        return None
    try:
        return int(np.asarray(handle["version/majorVersion"][()]).reshape(-1)[0]), int(
            np.asarray(handle["version/minorVersion"][()]).reshape(-1)[0]
        )
    except (TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{path}: unreadable '/version' entries ({error})") from error


def _statismo_scaled_basis(handle, group: str, path: Path, version, requested, what: str):
    """Read ``group``'s mean ``(3N,)`` and its first columns as ``U·sqrt(variance)``."""
    mean = _flat_vector(_dataset(handle, f"{group}/model/mean", path)[()], path, f"/{group}/model/mean")
    basis_ds = _dataset(handle, f"{group}/model/pcaBasis", path)
    variance_name = f"{group}/model/pcaVariance"
    variance = _flat_vector(_dataset(handle, variance_name, path)[()], path, f"/{variance_name}")
    if len(basis_ds.shape) != 2 or basis_ds.shape[0] != mean.size:
        raise ValueError(
            f"{path}: '/{group}/model/pcaBasis' should have shape ({mean.size}, K), got {tuple(basis_ds.shape)}"
        )
    if basis_ds.shape[1] != variance.size:
        raise ValueError(
            f"{path}: '/{group}/model/pcaVariance' has {variance.size} values "
            f"for {basis_ds.shape[1]} columns of '/{group}/model/pcaBasis'"
        )
    if not np.all(np.isfinite(variance)) or np.any(variance < 0):
        raise ValueError(f"{path}: '/{group}/model/pcaVariance' must hold non-negative variances")
    k = _component_count(requested, variance.size, what, path)
    # Slicing the dataset reads only the kept columns from disk.
    stored = np.asarray(basis_ds[:, :k], dtype=np.float64)
    std = np.sqrt(variance[:k])

    if version is None:
        # scalismo-faces assumes 0.8 when the version is absent; checking the
        # column norms instead cannot silently mis-scale an orthonormal basis.
        norms = np.linalg.norm(stored, axis=0)
        if np.allclose(norms, 1.0, rtol=_UNIT_NORM_RTOL):
            orthonormal = True
        elif np.allclose(norms, std, rtol=_UNIT_NORM_RTOL):
            orthonormal = False
        else:
            raise ValueError(
                f"{path}: no '/version' and the columns of '/{group}/model/pcaBasis' are neither unit-norm "
                "nor scaled by sqrt(pcaVariance); cannot tell how the basis is stored"
            )
    elif version[0] == 1 or version == (0, 9):
        orthonormal = True
    elif version == (0, 8):
        orthonormal = False
    else:
        raise ValueError(f"{path}: statismo file format {version[0]}.{version[1]} is not supported (0.8, 0.9, 1.x)")
    return mean, stored * std if orthonormal else stored


def load_bfm2017(
    path: str | os.PathLike,
    *,
    landmark_indices=None,
    n_identity: int | None = None,
    n_expression: int | None = None,
    include_expression_mean: bool = True,
) -> MorphableModel:
    """Load a BFM 2017/2019 shape + expression model from its statismo ``.h5`` file.

    Reads ``/shape`` (identity) and, if present, ``/expression`` (the BFM 2009
    ``.h5`` re-release has none, giving ``n_e = 0``). Coefficients of both are in
    standard deviations (``std = sqrt(pcaVariance)``); the stored basis is made
    orthonormal whatever the file format version (see the module docstring).
    The expression model describes displacements with a non-zero mean; like
    scalismo-faces, the model's mean is ``shape mean + expression mean`` unless
    ``include_expression_mean=False`` (the neutral-ish shape mean alone).

    Args:
      path: the ``.h5`` file, e.g. ``model2017-1_bfm_nomouth.h5``.
      landmark_indices: ``(L,)`` vertex index per landmark, ``-1`` where none;
        default 68 missing landmarks (the file's named landmarks are not iBUG-68).
      n_identity, n_expression: keep the first components (default all).
      include_expression_mean: add the expression model's mean displacement.

    Returns:
      A model with ``mean (N, 3)`` mm, orthonormal ``identity_basis (N, 3, n_i)``
      and ``expression_basis (N, 3, n_e)``, stds in mm, triangles ``(T, 3)``
      0-based as stored, ``units="mm"``.

    Raises:
      ImportError: h5py is not installed (``pip install 'deepexp3d[h5]'``).
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an HDF5 file, a required dataset is missing or malformed,
        an unsupported format version, or an index out of range.

    Examples:
      >>> model = load_bfm2017("model2017-1_bfm_nomouth.h5", n_expression=50)  # doctest: +SKIP
      >>> model.n_identity, model.n_expression, model.units  # doctest: +SKIP
      (199, 50, 'mm')
    """
    h5py = _import_h5py()
    path = _existing_file(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
    with handle:
        version = _statismo_version(handle, path)
        mean, identity = _statismo_scaled_basis(handle, "shape", path, version, n_identity, "n_identity")
        n = _vertex_count(mean, path, "/shape/model/mean")
        if "shape/representer/points" in handle:
            points_shape = tuple(handle["shape/representer/points"].shape)
            if points_shape != (3, n):
                raise ValueError(
                    f"{path}: '/shape/representer/points' has shape {points_shape}, expected (3, {n}) "
                    "to match '/shape/model/mean'"
                )
        cells = np.asarray(_dataset(handle, "shape/representer/cells", path)[()])
        if cells.ndim != 2 or cells.shape[0] != 3:
            raise ValueError(f"{path}: '/shape/representer/cells' should have shape (3, T), got {cells.shape}")
        triangles = _triangles(cells.T, n, path, "/shape/representer/cells", one_based=False)

        if "expression" in handle:
            expression_mean, expression = _statismo_scaled_basis(
                handle, "expression", path, version, n_expression, "n_expression"
            )
            if expression_mean.size != mean.size:
                raise ValueError(
                    f"{path}: '/expression/model/mean' has {expression_mean.size} values, "
                    f"'/shape/model/mean' {mean.size}"
                )
            if include_expression_mean:
                mean = mean + expression_mean
        else:
            _component_count(n_expression, 0, "n_expression", path)
            expression = np.zeros((3 * n, 0))

    identity_basis, identity_std = _orthonormal_columns(identity)
    expression_basis, expression_std = _orthonormal_columns(expression)
    return make_model(
        mean,
        identity_basis,
        expression_basis,
        triangles=triangles,
        landmark_indices=_landmarks_or_missing(landmark_indices),
        identity_std=identity_std,
        expression_std=expression_std,
        units="mm",
        name=f"bfm:{path.stem}",
    )
