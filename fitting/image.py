"""Fit the morphable model to the 68 landmarks of single images.

The energy is the one of :mod:`fitting.config`: landmark reprojection error
(least squares or Huber) plus Gaussian / L2 priors on the identity and
expression coefficients, with box bounds on blendshape weights. It is minimised
in two stages, as eos's ``fit_shape_and_pose`` starts and a Gauss–Newton fitter
finishes:

1. **Closed-form initialisation** — a few alternations of: the Gold-Standard
   weak-perspective camera from the current shape's landmarks
   (:mod:`fitting.camera_estimate`); the identity coefficients by regularised
   linear least squares given that camera; the expression coefficients likewise,
   bounded by projected coordinate descent for blendshapes (eos uses NNLS); the
   contour correspondences for the new pose (:mod:`fitting.contour`).
2. **Levenberg–Marquardt refinement** of camera, identity and expression jointly
   (Marquardt's diagonal damping, Jacobi-scaled normal equations solved by
   Cholesky). The Jacobian is ``jax.jacfwd`` of the projection of the model rows
   landmarks can map to, so every camera of :mod:`morphable.camera` works; the
   residuals' Jacobian is its rows at the current correspondences. The Huber loss
   is handled by iteratively reweighted least squares. With blendshape bounds each
   step minimises the damped quadratic model within the box: camera and identity
   are eliminated (Schur complement) and the small bounded problem left in the
   expression is solved by projected coordinate descent. Contour correspondences
   are re-matched to the nearest candidate before every iteration; which sides
   are matched is fixed from the initial pose. Steps are accepted when they lower
   the energy; the damping follows Marquardt's gain-ratio rule.

Only the model rows that landmarks can map to take part (the fixed landmark
vertices and the contour candidates: 50–110 rows for SFM and ICT); normal
equations are accumulated over them with per-row weights, so no per-image gather
of basis rows happens. Each batch of images is one ``vmap``-ed, jitted program,
compiled once per (model layout, batch size, configuration). Under ``vmap`` the
refinement loop runs until the slowest image of the batch stops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fitting.camera_estimate import MIN_POINTS, estimate_weak_perspective_matrix
from fitting.config import ImageFitConfig
from fitting.contour import N_LANDMARKS, LandmarkVertexTable, landmark_vertex_table, match_contour
from morphable.camera import Camera, PerspectiveCamera, WeakPerspectiveCamera, project
from morphable.model import MorphableModel
from morphable.rotation import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["ImageFitResult", "fit_image", "OUTER_EYE_CORNERS"]

OUTER_EYE_CORNERS = (36, 45)
"""0-based indices of iBUG landmarks 37 and 46, whose distance normalises the RMSE."""

_MAX_DAMPING = 1e10
_TINY = 1e-20


@struct.dataclass
class ImageFitResult:
    """The fit of one image (or, with leading dims ``(...)``, of a batch of images).

    Attributes:
      identity: ``(..., n_i)`` identity coefficients (model units: std units for PCA).
      expression: ``(..., n_e)`` expression coefficients.
      camera: :class:`morphable.WeakPerspectiveCamera` or
        :class:`morphable.PerspectiveCamera` with batch dims ``(...)``.
      rmse: ``(...)`` root mean square landmark distance over the used
        landmarks, pixels (0 when none is used).
      rmse_normalised: ``(...)`` ``rmse`` divided by the outer-eye-corner distance
        (iBUG 37–46) of the input landmarks, or of the fitted projection when
        either corner is missing.
      residuals: ``(..., 68, 2)`` projected minus input landmark, pixels; 0 for
        unused landmarks.
      used: ``(..., 68) bool`` landmarks that took part (finite, positive weight,
        with a model vertex or contour correspondence).
      landmark_vertices: ``(..., 68) int32`` model vertex of each landmark at the
        end of the fit (contour landmarks re-matched), ``-1`` if none.
      energy: ``(...)`` final value of the energy of :mod:`fitting.config`.
      iterations: ``(...) int32`` Levenberg–Marquardt iterations run.
      converged: ``(...) bool`` the refinement met its tolerance.
      valid: ``(...) bool`` enough landmarks and a non-degenerate configuration;
        when False the parameters are a finite neutral fallback (zero identity,
        expression at its lower bound or zero, the camera estimate's fallback).
    """

    identity: jax.Array
    expression: jax.Array
    camera: Camera
    rmse: jax.Array
    rmse_normalised: jax.Array
    residuals: jax.Array
    used: jax.Array
    landmark_vertices: jax.Array
    energy: jax.Array
    iterations: jax.Array
    converged: jax.Array
    valid: jax.Array


@struct.dataclass
class _Rows:
    """The table's model rows, with the bases pre-multiplied by their std."""

    mean: jax.Array  # (K, 3)
    identity: jax.Array  # (K, 3, n_i)
    expression: jax.Array  # (K, 3, n_e)
    lower: jax.Array  # (n_e,)
    upper: jax.Array  # (n_e,)


def _gather_rows(model: MorphableModel, table: LandmarkVertexTable) -> _Rows:
    idx = table.vertices
    return _Rows(
        mean=model.mean[idx],
        identity=model.identity_basis[idx] * model.identity_std,
        expression=model.expression_basis[idx] * model.expression_std,
        lower=model.expression_lower,
        upper=model.expression_upper,
    )


def _all_points(rows: _Rows, identity: jax.Array, expression: jax.Array) -> jax.Array:
    return rows.mean + rows.identity @ identity + rows.expression @ expression


def _n_camera_parameters(config: ImageFitConfig) -> int:
    return 7 if config.camera == "perspective" and config.fit_focal_length else 6


def _camera_from_vector(vector: jax.Array, config: ImageFitConfig, principal_point: jax.Array) -> Camera:
    """Unpack the optimised camera parameters into a camera of the pivot-centred model frame.

    During the refinement the model frame is shifted so that the pivot (the
    landmarks' centroid) is its origin: rotating about the face rather than about a
    possibly distant model origin decouples rotation from translation. Every camera
    is parametrised like the weak-perspective one, ``(rotation, image position of
    the pivot (px), log scale (px per model unit))``, plus, when the focal length is
    fitted, the log distance of the pivot: a pinhole camera sits at distance
    ``f / scale`` (or has ``f = scale · distance``). Giving depth as a scale keeps
    the problem nearly linear and the float32 normal equations well conditioned.
    See :func:`_to_model_frame` for the camera of the model's own frame.
    """
    dtype = vector.dtype
    image_pivot, scale = vector[3:5], jnp.exp(vector[5])
    if config.camera == "weak_perspective":
        return WeakPerspectiveCamera(rotation=vector[0:3], scale=scale, translation=image_pivot)
    if config.fit_focal_length:
        distance = jnp.exp(vector[6])
        focal = scale * distance
    else:
        focal = jnp.asarray(config.focal_length, dtype)
        distance = focal / scale
    flip = jnp.array([1.0, -1.0], dtype)
    pivot_in_camera = jnp.concatenate([(image_pivot - principal_point) * flip / scale, -distance[None]])
    return PerspectiveCamera(
        rotation=vector[0:3], translation=pivot_in_camera, focal=focal, principal_point=principal_point
    )


def _to_model_frame(camera: Camera, pivot: jax.Array) -> Camera:
    """The same camera for points in the model's frame (the pivot-centred frame shifted back)."""
    rotated_pivot = axis_angle_to_matrix(camera.rotation) @ pivot
    if isinstance(camera, WeakPerspectiveCamera):
        flip = jnp.array([1.0, -1.0], rotated_pivot.dtype)
        return camera.replace(translation=camera.translation - camera.scale * rotated_pivot[:2] * flip)
    return camera.replace(translation=camera.translation - rotated_pivot)


def _camera_vector(matrix, scale, translation, pivot, config: ImageFitConfig):
    """Parameters (see :func:`_camera_from_vector`) of a weak-perspective camera of the model frame.

    A pinhole camera starts at the distance ``f / s`` with the pivot imaged where
    the weak camera put it: the two agree to first order around the face.
    """
    rotation = matrix_to_axis_angle(matrix)
    # Use the matrix the parameters encode, so the pivot's image is preserved exactly.
    rotated = axis_angle_to_matrix(rotation) @ pivot
    image_pivot = scale * rotated[:2] * jnp.array([1.0, -1.0]) + translation
    parts = [rotation, image_pivot, jnp.log(scale)[None]]
    if config.camera == "perspective" and config.fit_focal_length:
        parts.append(jnp.log(config.focal_length / scale)[None])
    return jnp.concatenate(parts)


def _yaw_degrees(matrix: jax.Array) -> jax.Array:
    """Yaw of ``R = R_y(yaw) R_x(pitch) R_z(roll)`` (as :func:`morphable.rotation.matrix_to_euler`)."""
    return jnp.rad2deg(jnp.arctan2(matrix[0, 2], matrix[2, 2]))


def _weighted_gram(rows: jax.Array, row_weights: jax.Array) -> jax.Array:
    """``Σ_k w_k A_kᵀ A_k`` for ``rows (K, 2, n)``, as one two-operand matrix product.

    (A three-operand einsum lowers to a much slower contraction on CPU.)
    """
    flat = rows.reshape(-1, rows.shape[-1])
    weighted = (rows * row_weights[:, None, None]).reshape(flat.shape)
    return weighted.T @ flat


def _map_rows(linear: jax.Array, basis: jax.Array) -> jax.Array:
    """``linear_k @ basis_k`` for ``linear (2, 3)`` or ``(K, 2, 3)`` and ``basis (K, 3, n)`` → ``(K, 2, n)``.

    Written as three broadcast multiply-adds: XLA fuses them into one vectorised
    loop, where the equivalent einsum becomes many tiny matrix products.
    """
    linear = jnp.broadcast_to(linear, (basis.shape[0], 2, 3))
    return sum(linear[:, :, j, None] * basis[:, None, j, :] for j in range(3))


def _spd_solve_many(matrix, rhs):
    """Solve a symmetric positive-definite system for right-hand sides ``(n, r)`` by Cholesky.

    Lean to compile (no ``custom_linear_solve`` wrapper); NaN if the matrix is not
    positive definite, which callers check.
    """
    if rhs.shape[0] == 0:
        return rhs
    factor = jax.lax.linalg.cholesky(matrix)
    half = jax.lax.linalg.triangular_solve(factor, rhs, left_side=True, lower=True)
    return jax.lax.linalg.triangular_solve(factor, half, left_side=True, lower=True, transpose_a=True)


def _spd_solve(matrix, rhs):
    """Solve a symmetric positive-definite system for one right-hand side ``(n,)``."""
    return _spd_solve_many(matrix, rhs[:, None])[:, 0]


def _bounded_quadratic(hessian, gradient, lower, upper, start, sweeps: int):
    """argmin ½ eᵀHe − gᵀe on the box [lower, upper] by projected coordinate descent.

    Hand-written: jax has no batched box-constrained QP solver. With H positive
    definite (the prior and the damping guarantee it) cyclic projected coordinate
    descent converges to the constrained minimum; the problems here are small
    (the expression block) and start close to their solution.
    """
    n = gradient.shape[-1]
    if n == 0 or sweeps == 0:
        return start
    diagonal = jnp.maximum(jnp.diagonal(hessian), _TINY)

    def step(k, e):
        j = k % n
        updated = e[j] + (gradient[j] - hessian[j] @ e) / diagonal[j]
        return e.at[j].set(jnp.clip(updated, lower[j], upper[j]))

    return jax.lax.fori_loop(0, sweeps * n, step, start)


def _huber_weights(norms, config: ImageFitConfig):
    if config.robust_loss == "none":
        return jnp.ones_like(norms)
    return jnp.minimum(1.0, config.huber_scale / jnp.maximum(norms, _TINY))


def _robust(norms, config: ImageFitConfig):
    if config.robust_loss == "none":
        return norms**2
    delta = config.huber_scale
    return jnp.where(norms <= delta, norms**2, 2.0 * delta * norms - delta**2)


def _safe_norm(vectors):
    squared = jnp.sum(vectors**2, -1)
    return jnp.sqrt(jnp.where(squared > 0, squared, 1.0)) * (squared > 0)


def _fit_one(
    rows: _Rows,
    table: LandmarkVertexTable,
    landmarks2d: jax.Array,
    weights: jax.Array,
    principal_point: jax.Array | None,
    config: ImageFitConfig,
    blendshape_bounds: bool,
) -> ImageFitResult:
    dtype = rows.mean.dtype
    n_rows = rows.mean.shape[0]
    n_i, n_e = rows.identity.shape[-1], rows.expression.shape[-1]
    n_c = _n_camera_parameters(config)
    contour = config.contour_fitting and table.has_contour
    flip = jnp.array([1.0, -1.0], dtype)

    finite = jnp.all(jnp.isfinite(landmarks2d), -1) & jnp.isfinite(weights)
    weights = jnp.where(finite & (weights > 0), weights, 0.0).astype(dtype)
    y = jnp.where(finite[:, None], landmarks2d, 0.0).astype(dtype)
    if principal_point is None:
        principal_point = jnp.sum(y * (weights > 0)[:, None], 0) / jnp.maximum(jnp.sum(weights > 0), 1)
    principal_point = principal_point.astype(dtype)
    fixed = jnp.where(weights > 0, jnp.asarray(table.fixed, jnp.int32), -1)

    right_eye, left_eye = (int(table.fixed[k]) for k in OUTER_EYE_CORNERS)
    if right_eye >= 0 and left_eye >= 0:
        size3d = jnp.linalg.norm(rows.mean[right_eye] - rows.mean[left_eye])
    elif np.any(table.fixed >= 0):
        fixed_rows = rows.mean[table.fixed[table.fixed >= 0]]
        size3d = 2.0 * jnp.sqrt(jnp.mean(jnp.sum((fixed_rows - fixed_rows.mean(0)) ** 2, -1)))
    else:
        size3d = jnp.asarray(1.0, dtype)  # no fixed landmark: the fit will be flagged invalid
    lam_id, lam_exp = config.identity_prior_weight, config.expression_prior_weight

    def match(projected, yaw, positions):
        if not contour:
            return positions
        return match_contour(table, projected, y, weights, yaw, config.frontal_yaw_degrees)

    def aggregate(positions, landmark_weights):
        """Per-row sums of the landmark weights and weighted targets (rows may repeat)."""
        used = landmark_weights * (positions >= 0)
        idx = jnp.maximum(positions, 0)
        omega = jnp.zeros(n_rows, dtype).at[idx].add(used)
        target = jnp.zeros((n_rows, 2), dtype).at[idx].add(used[:, None] * y)
        return omega, target

    # ---- stage 1: closed-form alternation (weak perspective) ----
    # Normal equations are accumulated over the K table rows with per-row weights,
    # so no per-image gather of basis rows is needed.
    def linear_step(iteration, state):
        identity, expression, positions, pixel_scale, _, _, _, _ = state
        points = _all_points(rows, identity, expression)
        used = weights * (positions >= 0)
        matrix, scale, translation, valid = estimate_weak_perspective_matrix(
            points[jnp.maximum(positions, 0)], y, used
        )
        if config.reference_face_size is not None:
            # Face size in pixels from the first estimate (mean shape, fixed landmarks).
            measured = config.reference_face_size / jnp.maximum(scale * size3d, _TINY)
            pixel_scale = jnp.where(iteration == 0, jnp.clip(measured, 1e-4, 1e4), pixel_scale)
        weight = config.landmark_weight * pixel_scale**2
        projection = scale * matrix[:2] * flip[:, None]
        identity_rows = _map_rows(projection, rows.identity)
        expression_rows = _map_rows(projection, rows.expression)
        mean_image = rows.mean @ projection.T + translation
        omega, target = aggregate(positions, used)
        omega = weight * omega
        target = weight * target

        base = mean_image + expression_rows @ expression
        hessian = _weighted_gram(identity_rows, omega) + lam_id * jnp.eye(n_i)
        gradient = jnp.einsum("kin,ki->n", identity_rows, target - omega[:, None] * base)
        identity = _spd_solve(hessian, gradient)

        base = mean_image + identity_rows @ identity
        hessian = _weighted_gram(expression_rows, omega) + lam_exp * jnp.eye(n_e)
        gradient = jnp.einsum("kin,ki->n", expression_rows, target - omega[:, None] * base)
        if blendshape_bounds:
            expression = _bounded_quadratic(
                hessian, gradient, rows.lower, rows.upper, expression, config.expression_solver_sweeps
            )
        else:
            expression = _spd_solve(hessian, gradient)

        projected = base + expression_rows @ expression
        positions = match(projected, _yaw_degrees(matrix), fixed)
        return identity, expression, positions, pixel_scale, matrix, scale, translation, valid

    identity = jnp.zeros(n_i, dtype)
    expression = jnp.clip(jnp.zeros(n_e, dtype), rows.lower, rows.upper)
    state = (
        identity,
        expression,
        fixed,
        jnp.asarray(1.0, dtype),
        jnp.eye(3, dtype=dtype),
        jnp.asarray(1.0, dtype),
        jnp.zeros(2, dtype),
        jnp.asarray(False),
    )
    identity, expression, positions, pixel_scale, matrix, scale, translation, valid_linear = jax.lax.fori_loop(
        0, max(config.linear_iterations, 1), linear_step, state
    )
    landmark_weight = config.landmark_weight * pixel_scale**2
    # Which contour sides are matched is decided once, from the initial pose: a yaw
    # near the frontal threshold would otherwise flip a side in and out every
    # iteration (each change moves the optimum's yaw back across the threshold).
    yaw_linear = _yaw_degrees(matrix)

    # ---- stage 2: Levenberg–Marquardt on all parameters ----
    used = weights * (positions >= 0)
    points = _all_points(rows, identity, expression)[jnp.maximum(positions, 0)]
    centroid = jnp.sum(points * used[:, None], 0) / jnp.maximum(jnp.sum(used), _TINY)
    linear_camera = _camera_vector(matrix, scale, translation, centroid, config)
    theta0 = jnp.concatenate([linear_camera, identity, expression])
    prior = jnp.concatenate(
        [jnp.zeros(n_c, dtype), jnp.full(n_i, lam_id, dtype), jnp.full(n_e, lam_exp, dtype)]
    )

    centred = rows.replace(mean=rows.mean - centroid)

    def unpack(theta):
        return (
            _camera_from_vector(theta[:n_c], config, principal_point),
            theta[n_c : n_c + n_i],
            theta[n_c + n_i :],
        )

    def project_all(theta):
        camera, identity, expression = unpack(theta)
        return project(camera, _all_points(centred, identity, expression)[None])[0]

    def project_points(camera_vector, points):
        return project(_camera_from_vector(camera_vector, config, principal_point), points[None])[0]

    def project_with_primal(camera_vector, points):
        projected = project_points(camera_vector, points)
        return projected, projected

    shape_basis = jnp.concatenate([rows.identity, rows.expression], axis=-1)  # (K, 3, n_i + n_e)

    def jacobian_and_projection(theta):
        """Forward-mode Jacobian ``(K, 2, n)`` of every table row's projection, and the projection.

        ``jax.jacfwd`` differentiates the camera's projection (any camera) with
        respect to its parameters and to each row's 3D point; the shape part
        follows by the chain rule through the linear model, ``∂π/∂X · basis``,
        which avoids pushing one-hot tangents through the basis product.
        """
        camera, identity, expression = unpack(theta)
        points = _all_points(centred, identity, expression)
        camera_jacobian, projected = jax.jacfwd(project_with_primal, has_aux=True)(theta[:n_c], points)
        point_jacobian = jax.vmap(jax.jacfwd(lambda point: project(camera, point[None, None])[0, 0]))(points)
        shape_jacobian = _map_rows(point_jacobian, shape_basis)
        return jnp.concatenate([camera_jacobian, shape_jacobian], axis=-1), projected

    def energy(theta, projected, positions):
        norms = pixel_scale * _safe_norm(projected[jnp.maximum(positions, 0)] - y)
        landmark = config.landmark_weight * jnp.sum(weights * (positions >= 0) * _robust(norms, config))
        return landmark + jnp.sum(prior * theta**2)

    lower = jnp.concatenate([jnp.full(n_c + n_i, -jnp.inf, dtype), rows.lower])
    upper = jnp.concatenate([jnp.full(n_c + n_i, jnp.inf, dtype), rows.upper])

    def scaled_system(normal, damping):
        """Jacobi scaling ``S`` and ``S N S + μ I`` (unit diagonal plus damping: well conditioned in float32)."""
        diagonal = jnp.diagonal(normal)
        scaling = 1.0 / jnp.sqrt(jnp.maximum(diagonal, 1e-10 * jnp.max(diagonal) + _TINY))
        curvature = normal * scaling[:, None] * scaling[None, :]
        return scaling, curvature, curvature + damping * jnp.eye(normal.shape[0], dtype=dtype)

    def damped_step(normal, gradient, damping):
        """Levenberg–Marquardt step (Marquardt's diagonal damping) and its predicted decrease."""
        scaling, curvature, damped = scaled_system(normal, damping)
        solution = -_spd_solve(damped, scaling * gradient)
        solution = jnp.where(jnp.all(jnp.isfinite(solution)), solution, 0.0)
        # Decrease predicted by the Gauss–Newton model, −(2gᵀδ + δᵀNδ), in the
        # scaled variables: the unscaled form cancels catastrophically in float32.
        predicted = -(2.0 * (scaling * gradient) @ solution + solution @ (curvature @ solution))
        return scaling * solution, predicted

    n_free = n_c + n_i

    def bounded_step(normal, gradient, theta, damping):
        """The damped step minimising the quadratic model within the blendshape bounds.

        The unbounded camera and identity block is eliminated (Schur complement), and
        the remaining box-constrained quadratic in the expression step is solved by
        projected coordinate descent: projecting an unconstrained step instead can go
        uphill when it cuts a weight coupled to the others.
        """
        scaling, curvature, damped = scaled_system(normal, damping)
        scaled_gradient = scaling * gradient
        free_block, coupling = damped[:n_free, :n_free], damped[:n_free, n_free:]
        eliminated = _spd_solve_many(free_block, jnp.concatenate([coupling, scaled_gradient[:n_free, None]], 1))
        reduced = damped[n_free:, n_free:] - coupling.T @ eliminated[:, :-1]
        reduced_gradient = scaled_gradient[n_free:] - coupling.T @ eliminated[:, -1]
        box_scale = scaling[n_free:]
        expression_step = _bounded_quadratic(
            reduced,
            -reduced_gradient,
            (lower[n_free:] - theta[n_free:]) / box_scale,
            (upper[n_free:] - theta[n_free:]) / box_scale,
            jnp.zeros(n_e, dtype),
            config.expression_solver_sweeps,
        )
        free_step = -(eliminated[:, -1] + eliminated[:, :-1] @ expression_step)
        solution = jnp.concatenate([free_step, expression_step])
        solution = jnp.where(jnp.all(jnp.isfinite(solution)), solution, 0.0)
        predicted = -(2.0 * scaled_gradient @ solution + solution @ (curvature @ solution))
        return scaling * solution, predicted

    def lm_step(state):
        theta, positions, damping, iteration, _ = state
        # The landmark residuals' Jacobian is the rows' at the current correspondences.
        jacobian, projected = jacobian_and_projection(theta)
        positions = match(projected, yaw_linear, positions)
        current = energy(theta, projected, positions)
        norms = pixel_scale * _safe_norm(projected[jnp.maximum(positions, 0)] - y)
        omega, target = aggregate(positions, landmark_weight * weights * _huber_weights(norms, config))
        normal = _weighted_gram(jacobian, omega) + jnp.diag(prior)
        gradient = jnp.einsum("kin,ki->n", jacobian, omega[:, None] * projected - target) + prior * theta
        if blendshape_bounds:
            step, predicted = bounded_step(normal, gradient, theta, damping)
            candidate = jnp.clip(theta + step, lower, upper)
        else:
            step, predicted = damped_step(normal, gradient, damping)
            candidate = theta + step
        trial = energy(candidate, project_all(candidate), positions)
        accept = jnp.isfinite(trial) & (trial < current)
        converged = (predicted <= config.tolerance * current) | (~accept & (damping >= _MAX_DAMPING))
        converged |= accept & (current - trial <= config.tolerance * current)
        theta = jnp.where(accept, candidate, theta)
        # Marquardt's rule on the gain ratio (actual / predicted decrease): trust the
        # quadratic model more when it was right, less when it was not.
        gain = (current - trial) / jnp.maximum(predicted, _TINY)
        damping = jnp.where(
            ~accept | (gain < 0.25),
            damping * config.damping_increase,
            jnp.where(gain > 0.75, damping * config.damping_decrease, damping),
        )
        return theta, positions, jnp.minimum(damping, _MAX_DAMPING), iteration + 1, converged

    def keep_going(state):
        return (state[3] < config.gauss_newton_iterations) & ~state[4]

    damping = jnp.asarray(config.initial_damping, dtype)
    state = (theta0, positions, damping, jnp.asarray(0, jnp.int32), jnp.asarray(False))
    theta, positions, _, iterations, converged = jax.lax.while_loop(keep_going, lm_step, state)

    # ---- diagnostics and the validity flag ----
    used = (weights > 0) & (positions >= 0)
    n_used = jnp.sum(used)
    valid = (n_used >= max(config.min_landmarks, MIN_POINTS)) & valid_linear & jnp.all(jnp.isfinite(theta))
    neutral_expression = jnp.clip(jnp.zeros(n_e, dtype), rows.lower, rows.upper)
    neutral = jnp.concatenate([linear_camera, jnp.zeros(n_i, dtype), neutral_expression])
    theta = jnp.where(valid, theta, jnp.where(jnp.isfinite(neutral), neutral, 0.0))
    camera, identity, expression = unpack(theta)
    projected = project_all(theta)
    camera = _to_model_frame(camera, centroid)
    final_energy = jnp.where(valid, energy(theta, projected, positions), 0.0)
    final_residuals = jnp.where(used[:, None], projected[jnp.maximum(positions, 0)] - y, 0.0)
    rmse = jnp.sqrt(jnp.sum(final_residuals**2) / jnp.maximum(n_used, 1))

    eyes = np.asarray(OUTER_EYE_CORNERS)
    input_eyes = jnp.linalg.norm(y[eyes[0]] - y[eyes[1]])
    have_input_eyes = jnp.all(weights[eyes] > 0) & (input_eyes > 0)
    if right_eye >= 0 and left_eye >= 0:
        model_eyes = jnp.linalg.norm(projected[right_eye] - projected[left_eye])
    else:
        centred = (y - jnp.sum(y * used[:, None], 0) / jnp.maximum(n_used, 1)) * used[:, None]
        model_eyes = 2.0 * jnp.sqrt(jnp.sum(centred**2) / jnp.maximum(n_used, 1))
    eye_distance = jnp.where(have_input_eyes, input_eyes, model_eyes)
    rmse_normalised = rmse / jnp.where(eye_distance > 0, eye_distance, 1.0)

    vertices = jnp.asarray(table.vertices, jnp.int32)
    return ImageFitResult(
        identity=identity,
        expression=expression,
        camera=camera,
        rmse=rmse,
        rmse_normalised=rmse_normalised,
        residuals=final_residuals,
        used=used,
        landmark_vertices=jnp.where(positions >= 0, vertices[jnp.maximum(positions, 0)], -1),
        energy=final_energy,
        iterations=iterations,
        converged=converged & valid,
        valid=valid,
    )


def _fit_batch(model, landmarks2d, weights, principal_point, config):
    table = landmark_vertex_table(model)
    rows = _gather_rows(model, table)
    blendshape_bounds = model.expression_kind == "blendshape" and config.enforce_expression_bounds

    def one(y, w, pp):
        return _fit_one(rows, table, y, w, pp, config, blendshape_bounds)

    in_axes = (0, 0, None if principal_point is None else 0)
    return jax.vmap(one, in_axes=in_axes)(landmarks2d, weights, principal_point)


_fit_batch_jit = jax.jit(_fit_batch, static_argnames=("config",))


def fit_image(
    model: MorphableModel,
    landmarks2d,
    *,
    weights=None,
    principal_point=None,
    config: ImageFitConfig = ImageFitConfig(),
) -> ImageFitResult:
    """Fit identity, expression and camera to the 68 landmarks of one or many images.

    Args:
      model: a :class:`morphable.MorphableModel` with 68 landmark slots (iBUG
        order); landmarks it has no vertex for are matched to its contour
        candidates (jawline) or ignored.
      landmarks2d: ``(..., 68, 2)`` pixels (origin top-left, y down, 0-based),
        iBUG/Multi-PIE order; NaN (or infinite) rows are missing landmarks.
        Leading dims are independent images, fitted by one compiled program.
      weights: ``(..., 68)`` non-negative per-landmark weights (0 = missing);
        default ones.
      principal_point: ``(..., 2)`` pixels, used by the perspective camera
        (e.g. the image centre); default the centroid of the valid landmarks.
      config: the energy weights and solver settings (:class:`ImageFitConfig`).

    Returns:
      :class:`ImageFitResult` with leading dims ``(...)``. Images with fewer than
      ``config.min_landmarks`` usable landmarks or a degenerate configuration
      have ``valid`` False and finite fallback parameters.

    Raises:
      ValueError: naming the argument, for wrong shapes or dtypes, negative or
        NaN weights, a model without 68 landmark slots, or an invalid config.

    Examples:
      >>> import numpy as np, jax
      >>> import morphable
      >>> from fitting.image import fit_image
      >>> rng = np.random.default_rng(0)
      >>> model = morphable.make_model(rng.normal(size=(80, 3)) * 50, rng.normal(size=(80, 3, 4)),
      ...                              rng.normal(size=(80, 3, 2)), triangles=[[0, 1, 2]],
      ...                              landmark_indices=np.arange(68))
      >>> camera = morphable.WeakPerspectiveCamera(jax.numpy.array([0.1, 0.3, 0.0]), jax.numpy.array(2.0),
      ...                                          jax.numpy.array([320.0, 240.0]))
      >>> y = morphable.project(camera, morphable.landmarks(model, np.ones(4) * 0.5, np.ones(2) * 0.5))
      >>> result = fit_image(model, y)
      >>> bool(result.valid), result.identity.shape, result.residuals.shape
      (True, (4,), (68, 2))
    """
    if not isinstance(model, MorphableModel):
        raise ValueError(f"model: expected a morphable.MorphableModel, got {type(model).__name__}")
    if len(model.landmark_indices) != N_LANDMARKS:
        raise ValueError(
            f"model: expected {N_LANDMARKS} landmark slots (iBUG order), got {len(model.landmark_indices)}"
        )
    if not isinstance(config, ImageFitConfig):
        raise ValueError(f"config: expected an ImageFitConfig, got {type(config).__name__}")
    config.validate()

    landmarks2d = _as_float_array(landmarks2d, "landmarks2d")
    if landmarks2d.ndim < 2 or landmarks2d.shape[-2:] != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks2d: expected shape (..., {N_LANDMARKS}, 2), got {tuple(landmarks2d.shape)}")
    batch_shape = tuple(landmarks2d.shape[:-2])
    n_images = int(np.prod(batch_shape, dtype=np.int64))

    if weights is None:
        weights = jnp.ones((*batch_shape, N_LANDMARKS), jnp.float32)
    else:
        weights = _as_float_array(weights, "weights")
        if tuple(weights.shape) != (*batch_shape, N_LANDMARKS):
            try:
                weights = jnp.broadcast_to(weights, (*batch_shape, N_LANDMARKS))
            except ValueError:
                raise ValueError(
                    f"weights: expected shape {(*batch_shape, N_LANDMARKS)} (or broadcastable), "
                    f"got {tuple(weights.shape)}"
                ) from None
        host = np.asarray(weights)
        if np.isnan(host).any() or (host < 0).any() or np.isinf(host).any():
            raise ValueError("weights: must be finite and non-negative (use 0 for a missing landmark)")
    if principal_point is not None:
        principal_point = _as_float_array(principal_point, "principal_point")
        try:
            principal_point = jnp.broadcast_to(principal_point, (*batch_shape, 2))
        except ValueError:
            raise ValueError(
                f"principal_point: expected shape {(*batch_shape, 2)} (or broadcastable), "
                f"got {tuple(principal_point.shape)}"
            ) from None
        if not np.all(np.isfinite(np.asarray(principal_point))):
            raise ValueError("principal_point: contains NaN or infinite values")
        principal_point = principal_point.reshape(n_images, 2)

    if n_images == 0:
        raise ValueError("landmarks2d: the batch is empty")
    result = _fit_batch_jit(
        model,
        landmarks2d.reshape(n_images, N_LANDMARKS, 2),
        weights.reshape(n_images, N_LANDMARKS),
        principal_point,
        config,
    )
    return jax.tree_util.tree_map(lambda leaf: leaf.reshape(*batch_shape, *leaf.shape[1:]), result)


def _as_float_array(value, name: str) -> jax.Array:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            value = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__}") from None
        dtype = value.dtype
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"{name}: expected a real numeric dtype, got {dtype}")
    return jnp.asarray(value, dtype=jnp.float32)
