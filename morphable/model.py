"""The additive 3D Morphable Model as an immutable JAX pytree.

A face with identity coefficients ``i`` and expression coefficients ``e`` is

    x(i, e) = mean + U_id · (σ_id ⊙ i) + U_exp · (σ_exp ⊙ e)

where ``U_id``/``U_exp`` are the bases stored per vertex and coordinate
(``(N, 3, n)``) and ``σ`` the per-component scale ("std"). For a PCA model the
basis is orthonormal and ``σ`` holds the standard deviations, so the
coefficients are in standard-deviation units and i.i.d. N(0, 1) under the model.
For a blendshape model ``σ`` is one and the coefficients are the blendshape
weights, bounded by ``expression_lower``/``expression_upper``.

Array fields are pytree leaves (they can be traced, sharded and differentiated);
topology, landmark indices and names are static metadata (hashable, compared by
content) so jitted functions taking a model compile once per model layout.
"""

from __future__ import annotations

import hashlib
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "Topology",
    "MorphableModel",
    "make_model",
    "shape",
    "landmarks",
    "vertices_at",
    "sample",
    "landmark_mask",
]

ExpressionKind = Literal["pca", "blendshape"]


class Topology:
    """Mesh connectivity: triangles ``(T, 3) int32`` (0-based vertex indices).

    Immutable and hashable by content (a SHA-1 digest computed once), so it can
    be static metadata of a jitted pytree without re-hashing large arrays.
    """

    __slots__ = ("_triangles", "_digest")

    def __init__(self, triangles: np.ndarray | Sequence[Sequence[int]]):
        tri = np.ascontiguousarray(np.asarray(triangles, dtype=np.int32).reshape(-1, 3))
        tri.setflags(write=False)
        self._triangles = tri
        self._digest = hashlib.sha1(tri.tobytes()).hexdigest()

    @property
    def triangles(self) -> np.ndarray:
        """Triangles ``(T, 3) int32``, read-only."""
        return self._triangles

    def __len__(self) -> int:
        return len(self._triangles)

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topology) and other._digest == self._digest

    def __repr__(self) -> str:
        return f"Topology({len(self)} triangles)"


@struct.dataclass
class MorphableModel:
    """An additive identity + expression 3DMM.

    Attributes:
      mean: ``(N, 3) float32`` mean shape, model units.
      identity_basis: ``(N, 3, n_i) float32``.
      identity_std: ``(n_i,) float32`` scale of each identity component.
      expression_basis: ``(N, 3, n_e) float32``.
      expression_std: ``(n_e,) float32`` scale of each expression component.
      expression_lower, expression_upper: ``(n_e,) float32`` bounds of the
        expression coefficients (``-inf``/``inf`` for a PCA basis).
      topology: triangles (static).
      landmark_indices: 68 vertex indices in iBUG/Multi-PIE order, ``-1`` where
        the model has no fixed vertex for a landmark (e.g. the jaw contour of
        SFM); see :func:`landmark_mask` (static).
      contour_right, contour_left: candidate vertices for the outer face
        contour (jawline), on the subject's right (iBUG 1–8) and left
        (iBUG 10–17) side; empty when the model ships none (static).
      expression_names: one name per expression component (static).
      expression_kind: ``"pca"`` or ``"blendshape"`` (static).
      units: length unit of the coordinates, e.g. ``"cm"`` or ``"mm"`` (static).
      name: model name (static).
    """

    mean: jax.Array
    identity_basis: jax.Array
    identity_std: jax.Array
    expression_basis: jax.Array
    expression_std: jax.Array
    expression_lower: jax.Array
    expression_upper: jax.Array
    topology: Topology = struct.field(pytree_node=False)
    landmark_indices: tuple[int, ...] = struct.field(pytree_node=False)
    contour_right: tuple[int, ...] = struct.field(pytree_node=False, default=())
    contour_left: tuple[int, ...] = struct.field(pytree_node=False, default=())
    expression_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    expression_kind: str = struct.field(pytree_node=False, default="pca")
    units: str = struct.field(pytree_node=False, default="unknown")
    name: str = struct.field(pytree_node=False, default="model")

    @property
    def n_vertices(self) -> int:
        """Number of vertices N."""
        return self.mean.shape[-2]

    @property
    def n_identity(self) -> int:
        """Number of identity components n_i."""
        return self.identity_basis.shape[-1]

    @property
    def n_expression(self) -> int:
        """Number of expression components n_e."""
        return self.expression_basis.shape[-1]

    @property
    def triangles(self) -> np.ndarray:
        """Triangles ``(T, 3) int32``."""
        return self.topology.triangles

    def __repr__(self) -> str:
        return (
            f"MorphableModel(name={self.name!r}, vertices={self.n_vertices}, "
            f"identity={self.n_identity}, expression={self.n_expression} "
            f"({self.expression_kind}), landmarks={int(np.sum(landmark_mask(self)))}/"
            f"{len(self.landmark_indices)}, units={self.units!r})"
        )


def _as_index_tuple(values, n_vertices: int, what: str, allow_missing: bool) -> tuple[int, ...]:
    arr = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    low = -1 if allow_missing else 0
    bad = (arr < low) | (arr >= n_vertices)
    if bad.any():
        raise ValueError(
            f"{what}: vertex index {int(arr[bad][0])} out of range for a model with {n_vertices} vertices"
        )
    return tuple(int(v) for v in arr)


def make_model(
    mean,
    identity_basis,
    expression_basis,
    *,
    triangles,
    landmark_indices,
    identity_std=None,
    expression_std=None,
    expression_lower=None,
    expression_upper=None,
    contour_right=(),
    contour_left=(),
    expression_names=(),
    expression_kind: ExpressionKind = "pca",
    units: str = "unknown",
    name: str = "model",
) -> MorphableModel:
    """Build a validated :class:`MorphableModel` from NumPy-like arrays.

    Args:
      mean: ``(N, 3)`` or flat ``(3N,)`` (x0, y0, z0, x1, ...).
      identity_basis: ``(N, 3, n_i)`` or ``(3N, n_i)``.
      expression_basis: ``(N, 3, n_e)`` or ``(3N, n_e)``; ``n_e`` may be 0.
      triangles: ``(T, 3)`` 0-based vertex indices.
      landmark_indices: vertex index per landmark (``-1`` = not available).
      identity_std, expression_std: per-component scale, default ones.
      expression_lower, expression_upper: coefficient bounds; default
        ``[-inf, inf]`` for ``"pca"`` and ``[0, 1]`` for ``"blendshape"``.
      contour_right, contour_left: jawline candidate vertices.
      expression_names: names of the expression components (default ``e0``...).
      expression_kind: ``"pca"`` or ``"blendshape"``.
      units, name: metadata.

    Returns:
      The model with float32 leaves.

    Raises:
      ValueError: on inconsistent shapes, non-finite values or out-of-range indices.

    Examples:
      >>> import numpy as np
      >>> m = make_model(np.zeros((4, 3)), np.ones((4, 3, 2)), np.ones((4, 3, 1)),
      ...                triangles=[[0, 1, 2], [1, 2, 3]], landmark_indices=[0, 3])
      >>> m.n_vertices, m.n_identity, m.n_expression
      (4, 2, 1)
    """
    mean = np.asarray(mean, dtype=np.float32)
    if mean.ndim == 1:
        if mean.size % 3:
            raise ValueError(f"mean: flat length {mean.size} is not a multiple of 3")
        mean = mean.reshape(-1, 3)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"mean: expected shape (N, 3), got {mean.shape}")
    n = mean.shape[0]

    def basis3(b, what):
        b = np.asarray(b, dtype=np.float32)
        if b.ndim == 2 and b.shape[0] == 3 * n:
            b = b.reshape(n, 3, b.shape[1])
        if b.ndim != 3 or b.shape[:2] != (n, 3):
            raise ValueError(f"{what}: expected shape ({n}, 3, k) or ({3 * n}, k), got {b.shape}")
        return b

    identity_basis = basis3(identity_basis, "identity_basis")
    expression_basis = basis3(expression_basis, "expression_basis")
    n_i, n_e = identity_basis.shape[2], expression_basis.shape[2]

    def vector(v, k, default, what):
        v = np.full((k,), default, np.float32) if v is None else np.asarray(v, np.float32).reshape(-1)
        if v.shape != (k,):
            raise ValueError(f"{what}: expected {k} values, got {v.shape}")
        return v

    identity_std = vector(identity_std, n_i, 1.0, "identity_std")
    expression_std = vector(expression_std, n_e, 1.0, "expression_std")
    if expression_kind not in ("pca", "blendshape"):
        raise ValueError(f"expression_kind: expected 'pca' or 'blendshape', got {expression_kind!r}")
    lo_default, hi_default = (-np.inf, np.inf) if expression_kind == "pca" else (0.0, 1.0)
    expression_lower = vector(expression_lower, n_e, lo_default, "expression_lower")
    expression_upper = vector(expression_upper, n_e, hi_default, "expression_upper")
    for what, bound in (("expression_lower", expression_lower), ("expression_upper", expression_upper)):
        if np.any(np.isnan(bound)):
            raise ValueError(f"{what}: contains NaN (use -inf/inf for an unbounded side)")
    if np.any(expression_lower > expression_upper):
        raise ValueError("expression_lower must not exceed expression_upper")
    for what, arr in (
        ("mean", mean),
        ("identity_basis", identity_basis),
        ("expression_basis", expression_basis),
        ("identity_std", identity_std),
        ("expression_std", expression_std),
    ):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what}: contains NaN or infinite values")

    tri = np.asarray(triangles, dtype=np.int64)
    if tri.size == 0:
        tri = tri.reshape(0, 3)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"triangles: expected shape (T, 3), got {tri.shape}")
    if tri.size and (tri.min() < 0 or tri.max() >= n):
        raise ValueError(f"triangles: vertex index out of range [0, {n})")
    names = tuple(str(s) for s in expression_names) or tuple(f"e{k}" for k in range(n_e))
    if len(names) != n_e:
        raise ValueError(f"expression_names: expected {n_e} names, got {len(names)}")

    return MorphableModel(
        mean=jnp.asarray(mean),
        identity_basis=jnp.asarray(identity_basis),
        identity_std=jnp.asarray(identity_std),
        expression_basis=jnp.asarray(expression_basis),
        expression_std=jnp.asarray(expression_std),
        expression_lower=jnp.asarray(expression_lower),
        expression_upper=jnp.asarray(expression_upper),
        topology=Topology(tri),
        landmark_indices=_as_index_tuple(landmark_indices, n, "landmark_indices", allow_missing=True),
        contour_right=_as_index_tuple(contour_right, n, "contour_right", allow_missing=False),
        contour_left=_as_index_tuple(contour_left, n, "contour_left", allow_missing=False),
        expression_names=names,
        expression_kind=expression_kind,
        units=units,
        name=name,
    )


def landmark_mask(model: MorphableModel) -> np.ndarray:
    """``(L,) bool``: which landmarks have a fixed model vertex.

    Examples:
      >>> import numpy as np
      >>> m = make_model(np.zeros((3, 3)), np.zeros((3, 3, 1)), np.zeros((3, 3, 0)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[2, -1])
      >>> landmark_mask(m).tolist()
      [True, False]
    """
    return np.asarray(model.landmark_indices, dtype=np.int64) >= 0


def _check_coefficients(model: MorphableModel, identity, expression):
    identity = jnp.asarray(identity, dtype=model.mean.dtype)
    expression = jnp.asarray(expression, dtype=model.mean.dtype)
    if identity.ndim == 0 or identity.shape[-1] != model.n_identity:
        raise ValueError(f"identity: expected trailing dimension {model.n_identity}, got shape {identity.shape}")
    if expression.ndim == 0 or expression.shape[-1] != model.n_expression:
        raise ValueError(
            f"expression: expected trailing dimension {model.n_expression}, got shape {expression.shape}"
        )
    # Concrete (eager) inputs are validated here; traced ones cannot be inspected
    # and are the caller's responsibility (fitters mask bad data instead).
    for what, values in (("identity", identity), ("expression", expression)):
        if not isinstance(values, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(values))):
            raise ValueError(f"{what}: contains NaN or infinite coefficients")
    return identity, expression


def _offset(basis: jax.Array, coefficients: jax.Array) -> jax.Array:
    # A plain (..., K) x (K, 3N) matmul: XLA's CPU backend runs this about twice
    # as fast as the equivalent einsum over the (N, 3, K) layout.
    n, _, k = basis.shape
    flat = coefficients @ basis.reshape(n * 3, k).T
    return flat.reshape(*coefficients.shape[:-1], n, 3)


def _evaluate(mean, identity_basis, identity_std, expression_basis, expression_std, identity, expression):
    return mean + _offset(identity_basis, identity * identity_std) + _offset(expression_basis, expression * expression_std)


def shape(model: MorphableModel, identity, expression) -> jax.Array:
    """Vertices of the face with the given coefficients.

    Args:
      model: the morphable model.
      identity: ``(..., n_i)`` identity coefficients.
      expression: ``(..., n_e)`` expression coefficients; its leading dims
        broadcast against ``identity``'s (e.g. one identity, many frames).

    Returns:
      ``(..., N, 3) float32`` vertices, model units.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> m = make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 1)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0])
      >>> shape(m, jnp.zeros(2), jnp.ones((5, 1))).shape
      (5, 3, 3)
    """
    identity, expression = _check_coefficients(model, identity, expression)
    return _evaluate(
        model.mean,
        model.identity_basis,
        model.identity_std,
        model.expression_basis,
        model.expression_std,
        identity,
        expression,
    )


def vertices_at(model: MorphableModel, vertex_indices, identity, expression) -> jax.Array:
    """Evaluate only the given vertices (no full mesh is built).

    Args:
      vertex_indices: ``(K,)`` int vertex indices (may be traced, e.g. contour
        correspondences chosen per frame); values are clipped to ``[0, N)``.
      identity, expression: as in :func:`shape`.

    Returns:
      ``(..., K, 3)`` vertices.
    """
    identity, expression = _check_coefficients(model, identity, expression)
    idx = jnp.clip(jnp.asarray(vertex_indices, dtype=jnp.int32), 0, model.n_vertices - 1)
    return _evaluate(
        model.mean[idx],
        model.identity_basis[idx],
        model.identity_std,
        model.expression_basis[idx],
        model.expression_std,
        identity,
        expression,
    )


def landmarks(model: MorphableModel, identity, expression) -> jax.Array:
    """The model's landmark points (iBUG order), gathering only those rows.

    Landmarks without a fixed vertex (``landmark_mask(model)`` False) are
    returned at the mean of the model's landmark vertices (at vertex 0 when the
    model has none) so the output stays finite; mask them out when fitting.

    Args:
      identity, expression: as in :func:`shape`.

    Returns:
      ``(..., L, 3)`` landmark positions, model units.

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> m = make_model(np.arange(9.0).reshape(3, 3), np.zeros((3, 3, 1)), np.zeros((3, 3, 0)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[2, 0])
      >>> landmarks(m, jnp.zeros(1), jnp.zeros(0)).tolist()
      [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    """
    mask = landmark_mask(model)
    idx = np.asarray(model.landmark_indices, dtype=np.int64)
    points = vertices_at(model, np.where(mask, idx, 0), identity, expression)
    if mask.all() or not mask.any():
        # With no fixed landmark at all the mean below would be over nothing (NaN);
        # the gathered points already sit at vertex 0 then.
        return points
    centre = jnp.mean(points[..., mask, :], axis=-2, keepdims=True)
    return jnp.where(mask[:, None], points, centre)


def sample(
    model: MorphableModel,
    key: jax.Array,
    batch_shape: tuple[int, ...] = (),
    *,
    identity_scale: float = 1.0,
    expression_scale: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Draw random coefficients from the model's prior.

    Identity ~ N(0, identity_scale²). Expression ~ N(0, expression_scale²) for a
    PCA basis; for blendshapes, uniform on ``[lower, lower + expression_scale ·
    (upper − lower)]`` (an unbounded side is replaced by one unit beyond the
    bounded one, ``[0, 1]`` when both are unbounded).

    Args:
      model: the morphable model.
      key: a JAX PRNG key.
      batch_shape: leading dims of the result.

    Returns:
      ``(identity (*batch_shape, n_i), expression (*batch_shape, n_e))``.

    Examples:
      >>> import jax, numpy as np
      >>> m = make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 4)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[0], expression_kind="blendshape")
      >>> i, e = sample(m, jax.random.key(0), (5,))
      >>> i.shape, e.shape, bool((e >= 0).all() and (e <= 1).all())
      ((5, 2), (5, 4), True)
    """
    key_id, key_exp = jax.random.split(key)
    identity = identity_scale * jax.random.normal(key_id, (*batch_shape, model.n_identity))
    if model.expression_kind == "pca":
        expression = expression_scale * jax.random.normal(key_exp, (*batch_shape, model.n_expression))
    else:
        # An unbounded side is placed one unit from the bounded one (so an upper
        # bound below zero with no lower bound is still respected).
        finite_lower = jnp.isfinite(model.expression_lower)
        finite_upper = jnp.isfinite(model.expression_upper)
        lower = jnp.where(
            finite_lower, model.expression_lower, jnp.where(finite_upper, model.expression_upper - 1.0, 0.0)
        )
        upper = jnp.where(finite_upper, model.expression_upper, lower + 1.0)
        u = jax.random.uniform(key_exp, (*batch_shape, model.n_expression))
        expression = lower + expression_scale * u * (upper - lower)
    return identity, expression
