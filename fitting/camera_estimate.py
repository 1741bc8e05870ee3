"""Linear weak-perspective camera from 2D–3D point correspondences.

The Gold-Standard algorithm for an affine camera (Hartley & Zisserman, *Multiple
View Geometry*, 2nd ed., Alg. 7.2), as eos's
``estimate_orthographic_projection_linear`` does it:

1. normalise both point sets (centroid at the origin, mean distance √3 in 3D
   and √2 in 2D) so the least-squares problem is well conditioned in float32;
2. solve the 2×4 affine camera by linear least squares — with centred points
   the normal equations separate into the 3×3 scatter of the 3D points and the
   centroids, so no 8-column system is formed;
3. replace the 2×3 linear part by the nearest scaled rotation: its rows are
   orthonormalised by the polar decomposition (``U Vᵀ`` of its SVD, computed in
   closed form for a 2×3 matrix), the scale is the mean singular value and the
   third rotation row is the cross product of the first two (so ``det R = +1``);
4. refit the translation for that scaled rotation (the weighted centroid of the
   2D points minus the projected centroid of the 3D points).

The result uses :func:`morphable.project`'s convention (image y down):
``u = s·(R X)_x + t_x``, ``v = −s·(R X)_y + t_y``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from morphable.camera import WeakPerspectiveCamera
from morphable.rotation import matrix_to_axis_angle

__all__ = ["estimate_weak_perspective", "estimate_weak_perspective_matrix", "MIN_POINTS"]

MIN_POINTS = 4
"""Fewest valid correspondences for an affine camera (8 unknowns, 2 equations each)."""

# Relative thresholds on normalised (dimensionless) quantities. The 3D points must
# not be collinear (a planar set is fine: the ridge term below picks the
# minimum-norm camera); the 2D points must not be collinear, and the affine
# part must not be nearly rank one (its singular values' ratio).
_MIN_SPREAD_RATIO_3D = 1e-4
_MIN_SPREAD_RATIO_2D = 1e-4
_MIN_SINGULAR_RATIO = 1e-2
_RIDGE = 1e-6
_TINY = 1e-12


def _weighted_mean(points: jax.Array, weights: jax.Array, total: jax.Array) -> jax.Array:
    return jnp.sum(points * weights[..., None], axis=-2) / total[..., None]


def _det2(matrix: jax.Array) -> jax.Array:
    return matrix[..., 0, 0] * matrix[..., 1, 1] - matrix[..., 0, 1] * matrix[..., 1, 0]


def _solve3(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve 3×3 systems by the adjugate (closed form: tiny, and much cheaper to compile than LU)."""
    a0, a1, a2 = matrix[..., 0, :], matrix[..., 1, :], matrix[..., 2, :]
    columns = jnp.stack([jnp.cross(a1, a2), jnp.cross(a2, a0), jnp.cross(a0, a1)], axis=-1)
    determinant = jnp.sum(a0 * columns[..., :, 0], axis=-1)
    return (columns @ rhs) / determinant[..., None, None]


def estimate_weak_perspective_matrix(
    points3d: jax.Array, points2d: jax.Array, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`estimate_weak_perspective` returning the rotation as a matrix (not jitted).

    For callers that go on with the matrix (e.g. linear solves inside a jitted
    fitter): it skips the conversion to axis-angle and back.

    Returns:
      ``(rotation (..., 3, 3), scale (...), translation (..., 2), valid (...))``,
      as :func:`estimate_weak_perspective`.
    """
    points3d = jnp.asarray(points3d)
    points2d = jnp.asarray(points2d)
    dtype = jnp.result_type(points3d.dtype, points2d.dtype, jnp.float32)
    points3d = points3d.astype(dtype)
    points2d = points2d.astype(dtype)
    if weights is None:
        weights = jnp.ones(points2d.shape[:-1], dtype)
    weights = jnp.asarray(weights, dtype)
    batch = jnp.broadcast_shapes(points3d.shape[:-2], points2d.shape[:-2], weights.shape[:-1])
    n_points = points2d.shape[-2]
    points3d = jnp.broadcast_to(points3d, (*batch, n_points, 3))
    points2d = jnp.broadcast_to(points2d, (*batch, n_points, 2))
    weights = jnp.broadcast_to(weights, (*batch, n_points))

    finite = jnp.all(jnp.isfinite(points3d), -1) & jnp.all(jnp.isfinite(points2d), -1)
    finite &= jnp.isfinite(weights)
    weights = jnp.where(finite & (weights > 0), weights, 0.0)
    # Zero the coordinates of missing points too: 0 · NaN would still be NaN.
    points3d = jnp.where(weights[..., None] > 0, points3d, 0.0)
    points2d = jnp.where(weights[..., None] > 0, points2d, 0.0)
    n_valid = jnp.sum(weights > 0, axis=-1)
    total = jnp.maximum(jnp.sum(weights, axis=-1), _TINY)

    centroid3d = _weighted_mean(points3d, weights, total)
    centroid2d = _weighted_mean(points2d, weights, total)
    centred3d = (points3d - centroid3d[..., None, :]) * (weights[..., None] > 0)
    centred2d = (points2d - centroid2d[..., None, :]) * (weights[..., None] > 0)
    spread3d = jnp.sum(weights * jnp.linalg.norm(centred3d, axis=-1), -1) / total
    spread2d = jnp.sum(weights * jnp.linalg.norm(centred2d, axis=-1), -1) / total
    has_size = (spread3d > _TINY) & (spread2d > _TINY)
    norm3d = jnp.sqrt(3.0) / jnp.where(spread3d > _TINY, spread3d, 1.0)
    norm2d = jnp.sqrt(2.0) / jnp.where(spread2d > _TINY, spread2d, 1.0)
    x3 = centred3d * norm3d[..., None, None]
    x2 = centred2d * norm2d[..., None, None]

    # Weighted normal equations of the affine least squares in normalised units.
    scatter3d = jnp.einsum("...p,...pi,...pj->...ij", weights, x3, x3) / total[..., None, None]
    cross = jnp.einsum("...p,...pi,...pj->...ij", weights, x3, x2) / total[..., None, None]
    scatter2d = jnp.einsum("...p,...pi,...pj->...ij", weights, x2, x2) / total[..., None, None]

    trace3d = jnp.trace(scatter3d, axis1=-2, axis2=-1)
    # Sum of the 2×2 principal minors = λ1λ2 + λ1λ3 + λ2λ3: zero iff collinear.
    minors3d = 0.5 * (trace3d**2 - jnp.sum(scatter3d * jnp.swapaxes(scatter3d, -1, -2), axis=(-2, -1)))
    not_collinear3d = minors3d > _MIN_SPREAD_RATIO_3D * trace3d**2
    trace2d = jnp.trace(scatter2d, axis1=-2, axis2=-1)
    not_collinear2d = _det2(scatter2d) > _MIN_SPREAD_RATIO_2D * trace2d**2

    eye3 = jnp.eye(3, dtype=dtype)
    regularised = scatter3d + (_RIDGE * jnp.maximum(trace3d, 1.0))[..., None, None] * eye3
    regularised = jnp.where(not_collinear3d[..., None, None], regularised, eye3)
    solution = _solve3(regularised, cross)  # (..., 3, 2) normalised affine, transposed
    ratio = (norm3d / norm2d)[..., None, None]
    affine = jnp.swapaxes(solution, -1, -2) * ratio  # rows: du/dX, dv/dX in pixels per model unit
    # Image y points down: the second rotation row is minus the v row.
    linear = affine * jnp.array([1.0, -1.0], dtype)[:, None]

    # Closed-form polar decomposition of the 2×3 matrix M = U S Vᵀ:
    # A = M Mᵀ, sqrt(A) = (A + √det(A) I) / √(tr A + 2√det A), rows = sqrt(A)⁻¹ M.
    gram = linear @ jnp.swapaxes(linear, -1, -2)
    gram_det = jnp.maximum(_det2(gram), 0.0)
    gram_trace = jnp.trace(gram, axis1=-2, axis2=-1)
    root_det = jnp.sqrt(gram_det)  # σ1·σ2
    sum_singular = jnp.sqrt(jnp.maximum(gram_trace + 2.0 * root_det, 0.0))  # σ1 + σ2
    well_conditioned = root_det > _MIN_SINGULAR_RATIO * jnp.maximum(gram_trace, _TINY)
    safe_sum = jnp.where(well_conditioned, sum_singular, 1.0)
    safe_root = jnp.where(well_conditioned, root_det, 1.0)
    eye2 = jnp.eye(2, dtype=dtype)
    sqrt_gram = (gram + root_det[..., None, None] * eye2) / safe_sum[..., None, None]
    # The inverse of a 2×2 matrix is its adjugate over its determinant (σ1σ2 here).
    adjugate = jnp.stack(
        [
            jnp.stack([sqrt_gram[..., 1, 1], -sqrt_gram[..., 0, 1]], -1),
            jnp.stack([-sqrt_gram[..., 1, 0], sqrt_gram[..., 0, 0]], -1),
        ],
        -2,
    )
    rows = (adjugate / safe_root[..., None, None]) @ linear
    row3 = jnp.cross(rows[..., 0, :], rows[..., 1, :])
    matrix = jnp.concatenate([rows, row3[..., None, :]], axis=-2)

    valid = (n_valid >= MIN_POINTS) & has_size & not_collinear3d & not_collinear2d & well_conditioned
    matrix = jnp.where(valid[..., None, None], matrix, eye3)
    fallback_scale = jnp.where(has_size, spread2d / jnp.where(spread3d > _TINY, spread3d, 1.0), 1.0)
    scale = jnp.where(valid, 0.5 * safe_sum, fallback_scale)
    rotated_centroid = jnp.einsum("...ij,...j->...i", matrix[..., :2, :], centroid3d)
    translation = centroid2d - scale[..., None] * rotated_centroid * jnp.array([1.0, -1.0], dtype)
    return matrix, scale, translation, valid


@jax.jit
def estimate_weak_perspective(
    points3d: jax.Array, points2d: jax.Array, weights: jax.Array | None = None
) -> tuple[WeakPerspectiveCamera, jax.Array]:
    """Least-squares scaled-orthographic camera mapping ``points3d`` onto ``points2d``.

    Pure ``jax.numpy``: jittable, differentiable away from degenerate input and
    batched over leading dimensions. Non-finite points are treated as missing.

    Args:
      points3d: ``(..., P, 3)`` model points, model units.
      points2d: ``(..., P, 2)`` image points, pixels (origin top-left, y down).
      weights: ``(..., P)`` non-negative per-point weights; 0 marks a missing
        point (its coordinates are ignored, even if NaN). Default: all ones.

    Returns:
      ``(camera, valid)``: a :class:`morphable.WeakPerspectiveCamera` with batch
      dims ``(...)`` (rotation axis-angle radians, scale pixels per model unit,
      translation pixels) and ``valid (...) bool``. ``valid`` is False when fewer
      than :data:`MIN_POINTS` points have positive weight or the configuration is
      degenerate (collinear or coincident points); the camera is then a finite
      fallback: no rotation, the ratio of the 2D to 3D spreads (1 if either is
      zero) as scale, and the 2D centroid as translation.

    Examples:
      >>> import jax.numpy as jnp
      >>> import morphable
      >>> X = jnp.array([[0., 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
      >>> truth = morphable.WeakPerspectiveCamera(
      ...     rotation=jnp.array([0.1, 0.2, 0.0]), scale=jnp.array(3.0),
      ...     translation=jnp.array([10.0, 20.0]))
      >>> camera, valid = estimate_weak_perspective(X, morphable.project(truth, X))
      >>> bool(valid), round(float(camera.scale), 4)
      (True, 3.0)
    """
    matrix, scale, translation, valid = estimate_weak_perspective_matrix(points3d, points2d, weights)
    camera = WeakPerspectiveCamera(rotation=matrix_to_axis_angle(matrix), scale=scale, translation=translation)
    return camera, valid
