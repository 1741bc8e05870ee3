"""Editing models: new bases, vertex subsets, PCA from meshes, orthonormal expression bases.

All functions return a new :class:`~morphable.model.MorphableModel`; models are
immutable. They run in NumPy at model-building time (not inside jit).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import struct

from morphable.model import MorphableModel, make_model

__all__ = [
    "replace_expression_basis",
    "append_expression_basis",
    "replace_identity_basis",
    "append_identity_basis",
    "restrict",
    "pca_model_from_meshes",
    "BlendshapeMapping",
    "orthonormal_expression_basis",
]


def _fields(model: MorphableModel) -> dict:
    return dict(
        mean=np.asarray(model.mean),
        identity_basis=np.asarray(model.identity_basis),
        expression_basis=np.asarray(model.expression_basis),
        triangles=model.triangles,
        landmark_indices=model.landmark_indices,
        identity_std=np.asarray(model.identity_std),
        expression_std=np.asarray(model.expression_std),
        expression_lower=np.asarray(model.expression_lower),
        expression_upper=np.asarray(model.expression_upper),
        contour_right=model.contour_right,
        contour_left=model.contour_left,
        expression_names=model.expression_names,
        expression_kind=model.expression_kind,
        units=model.units,
        name=model.name,
    )


def _basis3(model: MorphableModel, basis, what: str) -> np.ndarray:
    basis = np.asarray(basis, dtype=np.float32)
    n = model.n_vertices
    if basis.ndim == 2 and basis.shape[0] == 3 * n:
        basis = basis.reshape(n, 3, -1)
    if basis.ndim != 3 or basis.shape[:2] != (n, 3):
        raise ValueError(f"{what}: expected shape ({n}, 3, k) or ({3 * n}, k), got {basis.shape}")
    return basis


def replace_expression_basis(
    model: MorphableModel,
    basis,
    *,
    std=None,
    names: Sequence[str] = (),
    kind: str = "pca",
    lower=None,
    upper=None,
) -> MorphableModel:
    """Swap the expression basis.

    Args:
      basis: ``(N, 3, n_e)`` or ``(3N, n_e)`` offsets from the mean, model units.
      std: ``(n_e,)`` per-component scale (default ones).
      names: component names (default ``e0``, ``e1``, ...).
      kind: ``"pca"`` (Gaussian prior, unbounded) or ``"blendshape"`` (bounded).
      lower, upper: coefficient bounds (defaults per kind, see :func:`make_model`).

    Examples:
      >>> import numpy as np
      >>> m = make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 1)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0])
      >>> replace_expression_basis(m, np.zeros((3, 3, 4))).n_expression
      4
    """
    fields = _fields(model)
    fields.update(
        expression_basis=_basis3(model, basis, "basis"),
        expression_std=std,
        expression_names=tuple(names),
        expression_kind=kind,
        expression_lower=lower,
        expression_upper=upper,
    )
    return make_model(**fields)


def append_expression_basis(
    model: MorphableModel,
    basis,
    *,
    std=None,
    names: Sequence[str] = (),
    lower=None,
    upper=None,
) -> MorphableModel:
    """Add expression components after the existing ones (same kind as the model).

    Args:
      basis: ``(N, 3, k)`` or ``(3N, k)`` additional components.
      std, names, lower, upper: for the new components (defaults as in
        :func:`make_model` for the model's kind).
    """
    extra = _basis3(model, basis, "basis")
    k = extra.shape[2]
    lo_default, hi_default = (-np.inf, np.inf) if model.expression_kind == "pca" else (0.0, 1.0)
    names = tuple(names) or tuple(f"e{model.n_expression + j}" for j in range(k))
    fields = _fields(model)
    fields.update(
        expression_basis=np.concatenate([fields["expression_basis"], extra], axis=2),
        expression_std=np.concatenate([fields["expression_std"], _vector(std, k, 1.0, "std")]),
        expression_lower=np.concatenate([fields["expression_lower"], _vector(lower, k, lo_default, "lower")]),
        expression_upper=np.concatenate([fields["expression_upper"], _vector(upper, k, hi_default, "upper")]),
        expression_names=model.expression_names + names,
    )
    return make_model(**fields)


def _vector(values, k: int, default: float, what: str) -> np.ndarray:
    if values is None:
        return np.full((k,), default, np.float32)
    values = np.asarray(values, np.float32).reshape(-1)
    if values.shape != (k,):
        raise ValueError(f"{what}: expected {k} values, got {values.shape}")
    return values


def replace_identity_basis(model: MorphableModel, basis, *, std=None) -> MorphableModel:
    """Swap the identity basis (``(N, 3, n_i)`` or ``(3N, n_i)``) and its per-component std."""
    fields = _fields(model)
    fields.update(identity_basis=_basis3(model, basis, "basis"), identity_std=std)
    return make_model(**fields)


def append_identity_basis(model: MorphableModel, basis, *, std=None) -> MorphableModel:
    """Add identity components after the existing ones."""
    extra = _basis3(model, basis, "basis")
    fields = _fields(model)
    fields.update(
        identity_basis=np.concatenate([fields["identity_basis"], extra], axis=2),
        identity_std=np.concatenate([fields["identity_std"], _vector(std, extra.shape[2], 1.0, "std")]),
    )
    return make_model(**fields)


def restrict(model: MorphableModel, vertex_indices, *, name: str | None = None) -> MorphableModel:
    """Keep only a subset of vertices (e.g. ICT's face area, vertices 0–9408).

    Triangles entirely inside the subset are kept and re-indexed; landmark and
    contour indices are re-mapped. A landmark whose vertex is not kept raises
    (a landmark must stay valid); a contour candidate not kept is dropped.

    Args:
      vertex_indices: ``(K,)`` distinct vertex indices, in the order of the new model.
      name: new model name (default: the old one with ``"-restricted"``).

    Raises:
      ValueError: on out-of-range or repeated indices, or a dropped landmark.

    Examples:
      >>> import numpy as np
      >>> m = make_model(np.arange(12.0).reshape(4, 3), np.zeros((4, 3, 1)), np.zeros((4, 3, 0)),
      ...                triangles=[[0, 1, 2], [1, 2, 3]], landmark_indices=[3])
      >>> r = restrict(m, [1, 2, 3])
      >>> r.triangles.tolist(), r.landmark_indices
      ([[0, 1, 2]], (2,))
    """
    keep = np.asarray(vertex_indices, dtype=np.int64).reshape(-1)
    n = model.n_vertices
    if keep.size == 0 or keep.min() < 0 or keep.max() >= n:
        raise ValueError(f"vertex_indices: must be non-empty and within [0, {n})")
    if np.unique(keep).size != keep.size:
        raise ValueError("vertex_indices: contains repeated vertices")
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.size)

    landmarks = np.asarray(model.landmark_indices, dtype=np.int64)
    remapped = np.where(landmarks >= 0, new_index[np.maximum(landmarks, 0)], -1)
    lost = (landmarks >= 0) & (remapped < 0)
    if lost.any():
        raise ValueError(
            f"vertex_indices: landmark(s) {np.flatnonzero(lost).tolist()} (0-based) lie on vertices "
            f"{landmarks[lost].tolist()} that are not kept"
        )
    triangles = model.triangles
    inside = np.all(new_index[triangles] >= 0, axis=1)

    def contour(indices):
        mapped = new_index[np.asarray(indices, dtype=np.int64)] if len(indices) else np.zeros(0, np.int64)
        return tuple(int(v) for v in mapped if v >= 0)

    fields = _fields(model)
    fields.update(
        mean=fields["mean"][keep],
        identity_basis=fields["identity_basis"][keep],
        expression_basis=fields["expression_basis"][keep],
        triangles=new_index[triangles[inside]],
        landmark_indices=remapped,
        contour_right=contour(model.contour_right),
        contour_left=contour(model.contour_left),
        name=name or f"{model.name}-restricted",
    )
    return make_model(**fields)


def pca_model_from_meshes(
    meshes,
    n_components: int,
    *,
    triangles,
    landmark_indices,
    name: str = "pca-model",
    units: str = "unknown",
) -> MorphableModel:
    """Identity PCA model from a stack of registered meshes.

    The mean is the sample mean; the basis the leading right singular vectors
    of the centred data (orthonormal over all 3N coordinates) with
    ``identity_std = singular value / sqrt(M − 1)``, so coefficients are in std
    units. The expression basis is empty.

    Args:
      meshes: ``(M, N, 3)`` registered meshes in correspondence.
      n_components: number of components kept, ``≤ min(M − 1, 3N)``.

    Examples:
      >>> import numpy as np
      >>> meshes = np.random.default_rng(0).normal(size=(10, 4, 3))
      >>> pca_model_from_meshes(meshes, 3, triangles=[[0, 1, 2]], landmark_indices=[0]).n_identity
      3
    """
    meshes = np.asarray(meshes, dtype=np.float64)
    if meshes.ndim != 3 or meshes.shape[2] != 3:
        raise ValueError(f"meshes: expected shape (M, N, 3), got {meshes.shape}")
    m, n, _ = meshes.shape
    if not 1 <= n_components <= min(m - 1, 3 * n):
        raise ValueError(f"n_components: must be in [1, {min(m - 1, 3 * n)}] for {m} meshes, got {n_components}")
    if not np.all(np.isfinite(meshes)):
        raise ValueError("meshes: contains NaN or infinite values")
    mean = meshes.mean(axis=0)
    centred = (meshes - mean).reshape(m, 3 * n)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:n_components].T.reshape(n, 3, n_components)
    std = singular[:n_components] / np.sqrt(m - 1)
    return make_model(
        mean,
        basis,
        np.zeros((n, 3, 0)),
        triangles=triangles,
        landmark_indices=landmark_indices,
        identity_std=std,
        name=name,
        units=units,
    )


@struct.dataclass
class BlendshapeMapping:
    """Linear map between blendshape weights ``w`` and orthonormal-basis coefficients ``e``.

    With the blendshape matrix ``B`` (3N × n_b) = U S Vᵀ (thin SVD) and the
    kept ``n_e`` components, the orthonormal basis is ``U_n`` with per-component
    std ``σ_k = S_k · weight_rms``, and for coefficients in std units

        e = to_orthonormal @ w,   to_orthonormal = diag(1/weight_rms) V_nᵀ
        w = to_blendshape @ e,    to_blendshape  = V_n diag(weight_rms)

    ``to_orthonormal`` gives the ``e`` whose shape is the orthogonal projection
    of ``B w`` on the kept subspace; ``to_blendshape`` the minimum-norm weights
    reproducing ``e``'s shape (``to_orthonormal @ to_blendshape = I``).

    Attributes:
      to_orthonormal: ``(n_e, n_b)``.
      to_blendshape: ``(n_b, n_e)``.
      singular_values: ``(n_b,)`` all singular values of ``B``.
      residual: relative Frobenius residual ``‖B − U_n U_nᵀ B‖ / ‖B‖`` of the kept subspace.
      blendshape_names: names of the original components.
    """

    to_orthonormal: np.ndarray = struct.field(pytree_node=False)
    to_blendshape: np.ndarray = struct.field(pytree_node=False)
    singular_values: np.ndarray = struct.field(pytree_node=False)
    residual: float = struct.field(pytree_node=False)
    blendshape_names: tuple[str, ...] = struct.field(pytree_node=False)


def orthonormal_expression_basis(
    model: MorphableModel,
    n_components: int = 28,
    *,
    vertex_indices=None,
    weight_rms: float = 1.0 / np.sqrt(3.0),
) -> tuple[MorphableModel, BlendshapeMapping]:
    """Turn a blendshape set into an orthonormal PCA-kind expression basis (paper: n_e = 28).

    The blendshape offsets are stacked into ``B`` (3N × n_b) and factored by a
    thin SVD, ``B = U S Vᵀ``; the first ``n_components`` left singular vectors
    span the best rank-``n_e`` approximation of the blendshape space (Eckart–
    Young). The new basis is those vectors (orthonormal over the 3N coordinates),
    with std ``S_k · weight_rms``: if the blendshape weights are independent with
    second moment ``weight_rms²`` (default: uniform on [0, 1], ``E[w²] = 1/3``)
    the new coefficients have unit variance in std units and are uncorrelated
    (``Vᵀ V = I``).

    Args:
      model: a model whose expression basis holds the blendshapes.
      n_components: ``n_e``, at most the number of blendshapes.
      vertex_indices: optional vertex subset used to compute the SVD (e.g. the
        face area, so eyeballs and teeth do not steer it); the basis is then
        evaluated for all vertices as ``B V_n S_n⁻¹``, which is orthonormal on
        the subset.
      weight_rms: assumed RMS of a blendshape weight, see above.

    Returns:
      ``(new_model, mapping)`` — the model with the orthonormal basis
      (kind ``"pca"``, names ``pc0``…) and the :class:`BlendshapeMapping`.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> m = make_model(np.zeros((20, 3)), np.zeros((20, 3, 1)), rng.normal(size=(20, 3, 6)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0], expression_kind="blendshape")
      >>> new, mapping = orthonormal_expression_basis(m, 6)
      >>> round(mapping.residual, 6)
      0.0
    """
    n_b = model.n_expression
    if not 1 <= n_components <= n_b:
        raise ValueError(f"n_components: must be in [1, {n_b}], got {n_components}")
    full = np.asarray(model.expression_basis, dtype=np.float64) * np.asarray(model.expression_std)
    subset = full if vertex_indices is None else full[np.asarray(vertex_indices, dtype=np.int64)]
    matrix = subset.reshape(-1, n_b)
    _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    if singular[n_components - 1] <= singular[0] * 1e-10:
        raise ValueError(
            f"n_components: the blendshapes span only {int(np.sum(singular > singular[0] * 1e-10))} dimensions"
        )
    v_n = vt[:n_components].T
    s_n = singular[:n_components]
    basis = np.einsum("nck,kj->ncj", full, v_n / s_n)
    total = float(np.sum(singular**2))
    residual = float(np.sqrt(np.sum(singular[n_components:] ** 2) / total)) if total > 0 else 0.0
    # ``full`` already includes the old per-component std, so B w is the shape
    # offset for the model's own coefficients w and V maps them directly.
    to_orthonormal = v_n.T / weight_rms
    to_blendshape = v_n * weight_rms
    new_model = replace_expression_basis(
        model,
        basis.astype(np.float32),
        std=(s_n * weight_rms).astype(np.float32),
        names=tuple(f"pc{k}" for k in range(n_components)),
        kind="pca",
    )
    mapping = BlendshapeMapping(
        to_orthonormal=to_orthonormal.astype(np.float32),
        to_blendshape=to_blendshape.astype(np.float32),
        singular_values=singular.astype(np.float32),
        residual=residual,
        blendshape_names=model.expression_names,
    )
    return new_model, mapping
