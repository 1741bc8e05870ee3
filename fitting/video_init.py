"""Initialisation of the whole-video fit (paper §III-A2).

Instead of rigid structure from motion (unstable when the head barely rotates),
the face is assumed rigid over the whole video **and constrained to the 3DMM**:
shape ``x̄ + U_id · i`` with expression 0. Alternating a few times,

1. every frame's weak-perspective camera is estimated against the current rigid
   shape's landmarks (:func:`fitting.camera_estimate.estimate_weak_perspective`,
   Gold-Standard affine camera);
2. the identity is re-solved by ONE linear least-squares problem over all frames
   (normal equations summed over frames — per landmark, so missing landmarks are
   exact — plus the Gaussian prior).

Then each frame's expression is solved linearly given its camera and the
identity (clipped to the blendshape bounds), and frames without landmarks get
their camera and expression by linear interpolation between the nearest frames
that have them (held constant before the first and after the last).

Also here: which frames are usable and the face size in pixels that
normalises the landmark term (:func:`usable_weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from fitting import spd_blocks
from fitting.camera_estimate import estimate_weak_perspective
from fitting.video_solve import LandmarkSystem, VideoParameters
from morphable.camera import WeakPerspectiveCamera
from morphable.rotation import axis_angle_to_matrix

if TYPE_CHECKING:
    from fitting.video import VideoFitConfig

__all__ = ["usable_weights", "affine_scale", "fill_gaps", "rigid_fit", "initialise"]

_FLIP = (1.0, -1.0)
_MIN_SCALE = 1e-20


def usable_weights(
    system: LandmarkSystem, points: jax.Array, observed: jax.Array, exists: jax.Array, config: "VideoFitConfig"
) -> tuple[jax.Array, jax.Array]:
    """Landmark weights with unusable frames zeroed, and the face size in pixels.

    A frame is usable when it is inside the video, has at least
    ``config.min_landmarks`` observed landmarks with a model vertex, their RMS
    distance to their centroid is at least ``config.min_face_size`` pixels, and
    a non-degenerate camera maps the mean face onto them (not collinear).

    The face size is the outer-eye-corner distance in pixels: the mean over
    usable frames of :func:`affine_scale` (mean face → landmarks) times the
    mean face's eye-corner distance. Unlike the distance between the detected
    corners it does not shrink with yaw, and it is a smooth function of the
    landmarks (the implicit gradient goes through it). 1 when no frame is usable.

    Args:
      system: the model's landmark rows.
      points: ``(F, L, 2)`` pixels, finite (missing entries any finite value).
      observed: ``(F, L)`` 1 where the landmark is observed and the model has a vertex.
      exists: ``(F,)`` 1 inside the video.

    Returns:
      ``(weights (F, L) in {0, 1}, face_size ())``.
    """
    observed = observed * exists[:, None]
    count = jnp.sum(observed, -1)
    safe_count = jnp.maximum(count, 1.0)
    centre = jnp.sum(observed[..., None] * points, 1) / safe_count[:, None]
    spread_squared = jnp.sum(observed * jnp.sum((points - centre[:, None]) ** 2, -1), -1) / safe_count
    # Only the validity flag of the Gold-Standard estimate is used: no gradient goes through it.
    _, camera_ok = estimate_weak_perspective(system.mean, jax.lax.stop_gradient(points), observed)
    usable = (
        (exists > 0)
        & (count >= config.min_landmarks)
        & (spread_squared >= config.min_face_size**2)
        & camera_ok
    )
    weights = jax.lax.stop_gradient(observed * usable[:, None])
    used = usable.astype(points.dtype)
    n_used = jnp.sum(used)
    scale = affine_scale(system.mean, points, weights)
    size = jnp.sum(used * scale) / jnp.maximum(n_used, 1.0) * system.eye_distance
    good = (n_used > 0) & (size > 0) & jnp.isfinite(size)
    return weights, jnp.where(good, size, 1.0)


def affine_scale(points3d: jax.Array, points2d: jax.Array, weights: jax.Array) -> jax.Array:
    """Pixels per model unit of the least-squares affine camera, ``(F,)``.

    The 2×3 linear part ``A`` of the weighted affine fit ``points2d ≈ A X + t``
    gives ``(det A Aᵀ)^(1/4)``, the geometric mean of its singular values: the
    scale of a weak-perspective camera whatever the head pose. Written with
    closed-form 3×3 and 2×2 algebra and guarded so that missing points and
    degenerate frames give finite values *and* finite gradients (0 where
    degenerate), which the implicit gradient of the fit needs.

    Args:
      points3d: ``(L, 3)`` model points; points2d: ``(F, L, 2)`` pixels;
      weights: ``(F, L)`` non-negative, 0 = missing.

    Examples:
      >>> import jax.numpy as jnp
      >>> X = jnp.array([[0., 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
      >>> round(float(affine_scale(X, 3.0 * X[None, :, :2], jnp.ones((1, 5)))[0]), 4)
      3.0
    """
    total = jnp.maximum(jnp.sum(weights, -1), _MIN_SCALE)
    centre3d = jnp.einsum("fl,li->fi", weights, points3d) / total[:, None]
    centre2d = jnp.einsum("fl,flc->fc", weights, points2d) / total[:, None]
    x = (points3d[None] - centre3d[:, None]) * weights[..., None]
    y = points2d - centre2d[:, None]
    scatter = jnp.einsum("fli,flj->fij", x, points3d[None] - centre3d[:, None])
    cross = jnp.einsum("flc,fli->fci", y, x)
    ridge = 1e-6 * jnp.trace(scatter, axis1=-2, axis2=-1) + _MIN_SCALE
    scatter = scatter + ridge[:, None, None] * jnp.eye(3, dtype=scatter.dtype)
    # inverse of the SPD 3×3 scatter by its adjugate
    a, b, c = scatter[:, 0], scatter[:, 1], scatter[:, 2]
    adjugate = jnp.stack([jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)], -1)
    determinant = jnp.sum(a * jnp.cross(b, c), -1)
    linear = jnp.einsum("fci,fij->fcj", cross, adjugate) / jnp.maximum(determinant, _MIN_SCALE)[:, None, None]
    gram = jnp.einsum("fci,fdi->fcd", linear, linear)
    gram_determinant = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
    return jnp.sqrt(jnp.sqrt(jnp.maximum(gram_determinant, 1e-30)))  # a float32-normal floor


def fill_gaps(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Linearly interpolate ``values (F, ...)`` over frames where ``valid (F,)`` is False.

    Frames before the first / after the last valid frame hold its value; with no
    valid frame the values are returned unchanged.

    Examples:
      >>> import jax.numpy as jnp
      >>> fill_gaps(jnp.array([0.0, 9.0, 2.0, 9.0]), jnp.array([True, False, True, False])).tolist()
      [0.0, 1.0, 2.0, 2.0]
    """
    n = values.shape[0]
    frame = jnp.arange(n)
    previous = jax.lax.cummax(jnp.where(valid, frame, -1))
    following = jax.lax.cummin(jnp.where(valid, frame, n), reverse=True)
    has_previous, has_following = previous >= 0, following < n
    before = values[jnp.clip(previous, 0, n - 1)]
    after = values[jnp.clip(following, 0, n - 1)]
    gap = jnp.maximum(following - previous, 1)
    fraction = ((frame - previous) / gap).astype(values.dtype)
    fraction = fraction.reshape((n,) + (1,) * (values.ndim - 1))
    both = (has_previous & has_following).reshape(fraction.shape)
    interpolated = jnp.where(both, before + fraction * (after - before), jnp.where(has_previous.reshape(fraction.shape), before, after))
    keep = (valid | ~(has_previous | has_following)).reshape(fraction.shape)
    return jnp.where(keep, values, interpolated)


def _camera_matrices(camera):
    rotation = axis_angle_to_matrix(camera.rotation)
    flip = jnp.asarray(_FLIP, rotation.dtype)
    projection = camera.scale[:, None, None] * flip[None, :, None] * rotation[:, :2]
    metric = camera.scale[:, None, None] ** 2 * jnp.einsum("fci,fcj->fij", rotation[:, :2], rotation[:, :2])
    return projection, metric


def _identity_least_squares(system, camera, points, weights, landmark_weight, prior):
    """Identity minimising the landmark error of the rigid shape ``μ + A i`` under fixed cameras."""
    projection, metric = _camera_matrices(camera)
    target = points - camera.translation[:, None, :] - jnp.einsum("fci,li->flc", projection, system.mean)
    per_landmark = jnp.einsum("fl,fab->lab", weights, metric)  # normal equations summed over frames first
    weighted = jnp.einsum("lab,lbm->lam", per_landmark, system.identity)
    normal = landmark_weight * jnp.einsum("lan,lam->nm", system.identity, weighted)
    normal += prior * jnp.eye(system.n_identity, dtype=normal.dtype)
    back = jnp.einsum("fci,flc->li", projection, weights[..., None] * target)
    rhs = landmark_weight * jnp.einsum("li,lin->n", back, system.identity)
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(normal), True), rhs)


def rigid_fit(system: LandmarkSystem, points, weights, landmark_weight, config: "VideoFitConfig"):
    """The 3DMM-constrained rigid fit: per-frame cameras and one identity.

    Args:
      system: landmark rows; points ``(F, L, 2)``; weights ``(F, L)``.
      landmark_weight: weight per pixel² of the landmark term.

    Returns:
      ``(identity (n_i,), camera (WeakPerspectiveCamera, batch (F,)), camera_ok (F,) bool)``.
    """

    n_rounds = config.init_iterations

    def round_(k, state):
        identity, _, _ = state
        rigid = system.mean + (system.identity.reshape(-1, system.n_identity) @ identity).reshape(system.mean.shape)
        camera, ok = estimate_weak_perspective(rigid, points, weights)
        solved = _identity_least_squares(
            system, camera, points, weights * ok[:, None], landmark_weight, config.identity_prior_weight
        )
        # The last round only estimates the cameras of the final identity.
        return jnp.where(k < n_rounds, solved, identity), camera, ok

    n_frames = points.shape[0]
    start = (
        jnp.zeros(system.n_identity, points.dtype),
        WeakPerspectiveCamera(
            rotation=jnp.zeros((n_frames, 3), points.dtype),
            scale=jnp.ones((n_frames,), points.dtype),
            translation=jnp.zeros((n_frames, 2), points.dtype),
        ),
        jnp.zeros((n_frames,), bool),
    )
    identity, camera, ok = jax.lax.fori_loop(0, n_rounds + 1, round_, start)
    return identity, camera, ok


def _expression_least_squares(system, camera, identity, points, weights, landmark_weight, config):
    """Per-frame expression given camera and identity (Gram-matrix normal blocks), clipped to the bounds.

    Landmarks missing from a usable frame count in the normal matrix with a zero
    residual (as in the solver): exact for complete frames, slightly shrunk
    otherwise — a starting point the Gauss–Newton iterations refine.
    """
    projection, metric = _camera_matrices(camera)
    rigid = system.mean + jnp.einsum("lcn,n->lc", system.identity, identity)
    target = points - camera.translation[:, None, :] - jnp.einsum("fci,li->flc", projection, rigid)
    has_data = jnp.any(weights > 0, -1).astype(points.dtype)
    back = jnp.einsum("fci,flc->fli", projection, weights[..., None] * target)
    rhs = landmark_weight * jnp.einsum("fli,lin->fn", back, system.expression)
    n_e = system.n_expression
    scaled_metric = ((landmark_weight * has_data)[:, None, None] * metric).reshape(-1, 9)
    # trace(normal) from the Gram matrices' traces: no pass over the (F, n_e, n_e) blocks.
    trace = scaled_metric @ jnp.trace(system.expression_gram, axis1=-2, axis2=-1).reshape(9)
    ridge = config.expression_prior_weight + config.damping + 1e-6 * trace / n_e
    shift = jnp.broadcast_to(ridge[:, None], (points.shape[0], n_e))
    factor = spd_blocks.factor_gram(scaled_metric, system.expression_gram, shift=shift)
    expression = spd_blocks.solve(factor, rhs[..., None])[..., 0]
    expression = jnp.where(jnp.isfinite(expression), expression, 0.0)
    return jnp.clip(expression, system.lower, system.upper)


def initialise(
    system: LandmarkSystem,
    points: jax.Array,
    weights: jax.Array,
    face_size: jax.Array,
    config: "VideoFitConfig",
) -> VideoParameters:
    """Starting parameters of the video fit (see the module docstring).

    Args:
      system: the model's landmark rows.
      points: ``(F, L, 2)`` landmarks, pixels (finite).
      weights: ``(F, L)`` from :func:`usable_weights`.
      face_size: ``()`` face size in pixels (:func:`usable_weights`).

    Returns:
      :class:`fitting.video_solve.VideoParameters`, finite.
    """
    landmark_weight = config.landmark_weight * (config.reference_face_size / face_size) ** 2
    identity, camera, camera_ok = rigid_fit(system, points, weights, landmark_weight, config)
    good = jnp.any(weights > 0, -1) & camera_ok
    rotation = fill_gaps(camera.rotation, good)
    log_scale = fill_gaps(jnp.log(jnp.maximum(camera.scale, _MIN_SCALE)), good)
    translation = fill_gaps(camera.translation, good)
    filled = camera.replace(rotation=rotation, scale=jnp.exp(log_scale), translation=translation)
    expression = _expression_least_squares(
        system, filled, identity, points, weights * good[:, None], landmark_weight, config
    )
    expression = fill_gaps(expression, good)
    return VideoParameters(
        identity=identity,
        expression=expression,
        rotation=rotation,
        log_scale=log_scale,
        translation=translation / face_size,
    )
