"""The structured Gauss–Newton solver of the whole-video landmark energy.

One identity ``i`` is shared by the video; every frame ``f`` has an expression
``e_f`` and a weak-perspective pose ``p_f = (ω_f, ρ_f, τ_f)``: axis-angle
rotation (radians), log-scale ``ρ = log s`` (``s`` pixels per model unit) and
translation ``τ = t / face_pixels`` (the image position of the model origin in
units of the face size, so every parameter is dimensionless and O(1)). The
landmark ``k`` of frame ``f`` projects to

    π_fk = s_f · D R_f[:2] X_fk + face_pixels · τ_f,   X_fk = μ_k + A_k i + B_k e_f,

``D = diag(1, −1)`` (image y points down), ``A_k``/``B_k`` the model's scaled
bases at the landmark's vertex. The energy is documented in
:class:`fitting.video.VideoFitConfig`.

Time and memory are linear in the number of frames ``F``; no matrix couples
more than one frame with another except the ``n_i × n_i`` identity block:

* **Gram matrices.** Under the scaled-orthographic camera ``PᵀP = s² (I − n nᵀ)``
  with ``n`` the viewing direction, so a frame's expression normal block is
  ``s² Σ_ab M_ab G_ab`` with ``M = I − n nᵀ`` and the nine model-only matrices
  ``G_ab = Σ_k B_k[a]ᵀ B_k[b]``: nine scaled additions per frame instead of a
  136-row product. The identity–identity block is the same sum with the frame
  scalars accumulated over the video first, and the identity–expression cross
  products reuse the per-frame 3×3 matrices with shared ``n_e``-vectors.
* **Missing landmarks** of a valid frame are imputed in the normal matrix (their
  residual is zero, their rows stay in the Gram sums). The gradient is exact, so
  the fixed point is the minimiser of the masked energy; the normal matrix is
  only a larger (still positive definite) Gauss–Newton model there.
* **Temporal terms** couple neighbouring frames. Each step bounds their
  Hessian by its diagonal majoriser (row sums of absolute values: 4 for an
  interior first difference, 16 for a second difference) centred on a
  per-video constant ``c`` (the *anchor*; the temporal terms ignore constant
  shifts, so ``½ δzᵀTδz ≤ ½ Σ_f (δz_f − c)ᵀ T_f (δz_f − c)`` for any ``c``). That
  is one majorised block-Jacobi sweep per Gauss–Newton iteration: the gradient
  carries the exact coupling, the frames stay independent given the global
  unknowns, and the step can only lower the quadratic model. Solving for the
  anchor with the identity keeps the majoriser from slowing moves of all
  frames together (every frame's scale against the identity's size, the mean
  expression against the identity). Frames without landmarks are filled in
  by these terms, starting from a linear interpolation of their neighbours.
* **Global unknowns** (identity step and anchor, ``n_i + n_e + 6``). With the
  per-frame blocks ``D_f`` (59 × 59 for ICT) factorised once per iteration (one
  batched Cholesky), the frame unknowns are eliminated exactly given a global
  step: the reduced system is ``S δg = r`` with ``S = G − Σ_f B_fᵀ D_f⁻¹ B_f``,
  ``r = −g_g + Σ_f B_fᵀ D_f⁻¹ g_f`` (``B_f`` the frame's coupling to the
  globals). Their ``n_i + n_e + 7`` right-hand sides per frame are the
  expensive part, so they are computed on a fixed-size sample of frames
  (``schur_samples``, spread evenly over the usable frames and weighted to
  represent all of them; exact when the video has fewer), and only choose the
  global search direction ``S⁻¹ r``: the step is the exact minimiser of the
  quadratic model over global steps in the span of that direction and the
  previous global step, every frame's unknowns at their exact optimum for it.
* **Blendshape bounds** ``lower ≤ e ≤ upper`` by projected Newton (Bertsekas):
  coefficients at a bound whose gradient points outwards are held, the others
  take the Newton step. Of the rest, those the step pushes past a bound are
  then put on it and their frame re-optimised (a low-rank update of the same
  factorisation, for up to ``bound_corrections`` candidates per frame — the
  free coefficients nearest a bound), so strongly coupled blendshapes are not
  simply clipped; anything still outside is clipped.
* Each step is accepted with backtracking on the true energy.

Per iteration and frame this is one Cholesky factorisation of a
``(n_e + 6)²`` block, one triangular-solve pair with ``3 + bound_corrections``
right-hand sides, and matrix products with the shared landmark bases
(``(F, 3L) × (3L, n_e)`` and the like); everything else is O(1) in ``F``.

Everything is ``jax.numpy`` inside one ``lax.while_loop``: jittable, ``vmap``-able
over videos, compiled once per (model layout, number of frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fitting import spd_blocks
from morphable.model import MorphableModel, landmark_mask
from morphable.rotation import axis_angle_to_matrix

if TYPE_CHECKING:  # the config lives with the public API; imported lazily to avoid a cycle
    from fitting.video import VideoFitConfig

__all__ = [
    "LandmarkSystem",
    "VideoParameters",
    "SolverDiagnostics",
    "landmark_system",
    "project_landmarks",
    "video_energy",
    "energy_gradient",
    "frame_blocks",
    "expression_blocks",
    "expression_factor",
    "gauss_newton",
    "block_preconditioner",
    "POSE_SIZE",
    "OUTER_EYE_CORNERS",
]

POSE_SIZE = 6
"""Per-frame pose unknowns: rotation (3), log-scale (1), translation (2)."""

OUTER_EYE_CORNERS = (36, 45)
"""0-based iBUG indices of the outer eye corners (1-based 37 and 46)."""

_FLIP = (1.0, -1.0)
_TINY = 1e-30
_BOUND_EPSILON = 1e-6


@struct.dataclass
class LandmarkSystem:
    """The model restricted to its landmark vertices, plus the Gram matrices.

    Attributes:
      mean: ``(L, 3)`` mean shape at the landmark vertices, model units.
      identity: ``(L, 3, n_i)`` identity basis times its std (zero rows where
        the model has no landmark vertex).
      expression: ``(L, 3, n_e)`` expression basis times its std (same).
      available: ``(L,)`` 1 where the model has a fixed landmark vertex.
      expression_gram: ``(3, 3, n_e, n_e)`` ``G_ab = Σ_k B_k[a]ᵀ B_k[b]``.
      identity_gram: ``(3, 3, n_i, n_i)`` ``Σ_k A_k[a]ᵀ A_k[b]``.
      cross_gram: ``(3, 3, n_e, n_i)`` ``Σ_k B_k[a]ᵀ A_k[b]``.
      expression_sum: ``(3, n_e)`` ``Σ_k B_k``.
      lower, upper: ``(n_e,)`` expression bounds (``±inf`` when unbounded).
      eye_distance: ``()`` outer-eye-corner distance of the mean shape, model
        units (twice the landmarks' RMS spread when the model lacks those points).
    """

    mean: jax.Array
    identity: jax.Array
    expression: jax.Array
    available: jax.Array
    expression_gram: jax.Array
    identity_gram: jax.Array
    cross_gram: jax.Array
    expression_sum: jax.Array
    lower: jax.Array
    upper: jax.Array
    eye_distance: jax.Array

    @property
    def n_identity(self) -> int:
        return self.identity.shape[-1]

    @property
    def n_expression(self) -> int:
        return self.expression.shape[-1]


@struct.dataclass
class VideoParameters:
    """The unknowns of one video (see the module docstring for units).

    Attributes:
      identity: ``(n_i,)``.
      expression: ``(F, n_e)``.
      rotation: ``(F, 3)`` axis-angle, radians.
      log_scale: ``(F,)`` log of pixels per model unit.
      translation: ``(F, 2)`` image position of the model origin / face_pixels.
    """

    identity: jax.Array
    expression: jax.Array
    rotation: jax.Array
    log_scale: jax.Array
    translation: jax.Array

    def pose(self) -> jax.Array:
        """``(F, 6)`` rotation, log-scale and translation stacked."""
        return jnp.concatenate([self.rotation, self.log_scale[:, None], self.translation], axis=-1)

    def with_pose(self, pose: jax.Array) -> "VideoParameters":
        return self.replace(rotation=pose[:, :3], log_scale=pose[:, 3], translation=pose[:, 4:6])


@struct.dataclass
class SolverDiagnostics:
    """Scalars describing one solve: ``iterations`` (int), ``converged`` (bool), ``energy``."""

    iterations: jax.Array
    converged: jax.Array
    energy: jax.Array


def landmark_system(model: MorphableModel) -> LandmarkSystem:
    """Gather the landmark rows of ``model`` and precompute their Gram matrices.

    Only these rows (68 × 3 for iBUG landmarks) are used while fitting; the
    full mesh is for output. Jittable (the landmark indices are static).

    Returns:
      :class:`LandmarkSystem` in the model's dtype.
    """
    mask = landmark_mask(model)
    index = np.where(mask, np.asarray(model.landmark_indices, np.int64), 0)
    available = jnp.asarray(mask, model.mean.dtype)
    mean = model.mean[index] * available[:, None]
    identity = model.identity_basis[index] * model.identity_std * available[:, None, None]
    expression = model.expression_basis[index] * model.expression_std * available[:, None, None]
    right, left = OUTER_EYE_CORNERS
    if len(mask) > left and mask[right] and mask[left]:
        eye_distance = jnp.linalg.norm(mean[right] - mean[left])
    else:
        count = max(int(mask.sum()), 1)
        centre = jnp.sum(mean, 0) / count
        eye_distance = 2.0 * jnp.sqrt(jnp.sum(available * jnp.sum((mean - centre) ** 2, -1)) / count)
    return LandmarkSystem(
        mean=mean,
        identity=identity,
        expression=expression,
        available=available,
        expression_gram=jnp.einsum("lan,lbm->abnm", expression, expression),
        identity_gram=jnp.einsum("lan,lbm->abnm", identity, identity),
        cross_gram=jnp.einsum("lan,lbm->abnm", expression, identity),
        expression_sum=jnp.sum(expression, 0),
        lower=model.expression_lower,
        upper=model.expression_upper,
        eye_distance=eye_distance,
    )


# ---------------------------------------------------------------- temporal terms


def _pair_mask(exists: jax.Array) -> jax.Array:
    return exists[1:] * exists[:-1]


def _triple_mask(exists: jax.Array) -> jax.Array:
    return exists[2:] * exists[1:-1] * exists[:-2]


def _pad(x: jax.Array, before: int, after: int) -> jax.Array:
    return jnp.pad(x, [(before, after)] + [(0, 0)] * (x.ndim - 1))


def temporal_energy(values: jax.Array, exists: jax.Array, velocity: float, acceleration: float) -> jax.Array:
    """``velocity Σ‖x_f − x_{f−1}‖² + acceleration Σ‖x_{f+1} − 2x_f + x_{f−1}‖²`` over existing frames.

    Args:
      values: ``(F, k)``; exists: ``(F,)`` 1 inside the video.
    """
    n = values.shape[0]
    total = jnp.zeros((), values.dtype)
    if n >= 2:
        first = values[1:] - values[:-1]
        total += velocity * jnp.sum(_pair_mask(exists)[:, None] * first**2)
    if n >= 3:
        second = values[2:] - 2.0 * values[1:-1] + values[:-2]
        total += acceleration * jnp.sum(_triple_mask(exists)[:, None] * second**2)
    return total


def temporal_gradient(values: jax.Array, exists: jax.Array, velocity: float, acceleration: float) -> jax.Array:
    """Half the gradient of :func:`temporal_energy`, ``(F, k)``."""
    n = values.shape[0]
    gradient = jnp.zeros_like(values)
    if n >= 2:
        first = _pair_mask(exists)[:, None] * (values[1:] - values[:-1])
        gradient += velocity * (_pad(first, 1, 0) - _pad(first, 0, 1))
    if n >= 3:
        second = _triple_mask(exists)[:, None] * (values[2:] - 2.0 * values[1:-1] + values[:-2])
        gradient += acceleration * (_pad(second, 2, 0) - 2.0 * _pad(second, 1, 1) + _pad(second, 0, 2))
    return gradient


def temporal_diagonal(exists: jax.Array, velocity: float, acceleration: float, majorise: bool) -> jax.Array:
    """``(F,)`` diagonal of half the temporal Hessian, or of its diagonal majoriser.

    The majoriser is the row sum of absolute values (Gershgorin), so
    ``diag(majoriser) − Hessian`` is positive semi-definite.
    """
    n = exists.shape[0]
    diagonal = jnp.zeros_like(exists)
    if n >= 2:
        pairs = _pair_mask(exists)
        # |coefficient| · Σ|coefficients| for the majoriser: 1·2 per pair.
        diagonal += velocity * (2.0 if majorise else 1.0) * (_pad(pairs, 1, 0) + _pad(pairs, 0, 1))
    if n >= 3:
        triples = _triple_mask(exists)
        ends, middle = (4.0, 8.0) if majorise else (1.0, 4.0)  # 1·4, 2·4 | 1², 2²
        diagonal += acceleration * (ends * (_pad(triples, 2, 0) + _pad(triples, 0, 2)) + middle * _pad(triples, 1, 1))
    return diagonal


# ---------------------------------------------------------------- energy


def _landmark_weight(config: "VideoFitConfig", face_pixels: jax.Array) -> jax.Array:
    """Weight per pixel² of the landmark term: residuals are rescaled to the reference face size."""
    return config.landmark_weight * (config.reference_face_size / face_pixels) ** 2


def _flat(basis: jax.Array) -> jax.Array:
    """``(L, 3, n)`` → ``(3L, n)``: contractions with the bases become plain matrix products."""
    return basis.reshape(basis.shape[0] * basis.shape[1], basis.shape[-1])


def _landmark_points(params: VideoParameters, system: LandmarkSystem) -> jax.Array:
    """``(F, L, 3)`` model landmarks ``μ + A i + B e_f``."""
    n_frames = params.expression.shape[0]
    rigid = system.mean + (_flat(system.identity) @ params.identity).reshape(system.mean.shape)
    moved = (params.expression @ _flat(system.expression).T).reshape(n_frames, *system.mean.shape)
    return rigid + moved


def _rotate_rows(rows: jax.Array, points: jax.Array) -> jax.Array:
    """``(F, r, 3)`` rows applied to ``(F, L, 3)`` points → ``(F, L, r)`` (a 3-term sum, kept elementwise)."""
    return jnp.sum(rows[:, None, :, :] * points[:, :, None, :], -1)


def project_landmarks(params: VideoParameters, system: LandmarkSystem, face_pixels: jax.Array) -> jax.Array:
    """``(F, L, 2)`` model landmarks projected to pixels."""
    points = _landmark_points(params, system)
    rotation = axis_angle_to_matrix(params.rotation)
    flip = jnp.asarray(_FLIP, points.dtype)
    scale = jnp.exp(params.log_scale)
    image = _rotate_rows(rotation[:, :2], points) * (scale[:, None, None] * flip)
    return image + face_pixels * params.translation[:, None, :]


def video_energy(
    params: VideoParameters,
    system: LandmarkSystem,
    points: jax.Array,
    weights: jax.Array,
    exists: jax.Array,
    face_pixels: jax.Array,
    config: "VideoFitConfig",
) -> jax.Array:
    """The whole-video energy (see :class:`fitting.video.VideoFitConfig`).

    Args:
      params: the unknowns.
      system: :func:`landmark_system` of the model.
      points: ``(F, L, 2)`` landmarks, pixels (any finite value where missing).
      weights: ``(F, L)`` 1 for an observed landmark of a usable frame, else 0.
      exists: ``(F,)`` 1 for frames inside the video (0 for padding).
      face_pixels: ``()`` outer-eye-corner distance of the face, pixels.

    Returns:
      ``()`` the energy (dimensionless).
    """
    residual = project_landmarks(params, system, face_pixels) - points
    data = _landmark_weight(config, face_pixels) * jnp.sum(weights * jnp.sum(residual**2, -1))
    prior = config.identity_prior_weight * jnp.sum(params.identity**2) + config.expression_prior_weight * jnp.sum(
        exists[:, None] * params.expression**2
    )
    temporal = temporal_energy(
        params.expression, exists, config.expression_velocity_weight, config.expression_acceleration_weight
    ) + temporal_energy(params.pose(), exists, config.pose_velocity_weight, config.pose_acceleration_weight)
    return data + prior + temporal


# ---------------------------------------------------------------- linearisation


def _skew(v: jax.Array) -> jax.Array:
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([o, -z, y], -1), jnp.stack([z, o, -x], -1), jnp.stack([-y, x, o], -1)], -2)


def _left_jacobian(rotation: jax.Array) -> jax.Array:
    """Left Jacobian of SO(3) at axis-angle ``(..., 3)``: ``I + (1 − cos θ)/θ² [ω]× + (θ − sin θ)/θ³ [ω]×²``.

    ``∂R/∂ω_k = [J_l(ω) e_k]× R`` for ``R = exp([ω]×)``: the exact derivative of
    the axis-angle parameterisation (not a local perturbation), so the temporal
    terms on ω stay quadratic; written out because ``jacfwd`` of the Rodrigues
    formula compiles slowly. Series near θ = 0.
    """
    theta_squared = jnp.sum(rotation**2, -1)
    small = theta_squared < 1e-6
    safe_squared = jnp.where(small, 1.0, theta_squared)
    theta = jnp.sqrt(safe_squared)
    first = jnp.where(small, 0.5 - theta_squared / 24.0, (1.0 - jnp.cos(theta)) / safe_squared)
    second = jnp.where(small, 1.0 / 6.0 - theta_squared / 120.0, (theta - jnp.sin(theta)) / (theta * safe_squared))
    skew = _skew(rotation)
    eye = jnp.eye(3, dtype=rotation.dtype)
    return eye + first[..., None, None] * skew + second[..., None, None] * (skew @ skew)


@struct.dataclass
class _Linearisation:
    """Per-frame quantities at the current parameters (pixels, model units)."""

    projection: jax.Array  # (F, 2, 3) P_f = s D R[:2]
    view_metric: jax.Array  # (F, 3, 3) M_f = R[:2]ᵀ R[:2] = I − n nᵀ
    pose_jacobian: jax.Array  # (F, L, 2, 6) ∂π/∂pose
    rotation_axes: jax.Array  # (F, 3, 3) rows v_m = Rᵀ J_l(ω) e_m: ∂(R X)/∂ω_m = R (v_m × X)
    scale_squared: jax.Array  # (F,)
    residual: jax.Array  # (F, L, 2) weighted residual w (π − y), pixels
    face_pixels: jax.Array  # ()


def _linearise(params, system, points2d, weights, face_pixels) -> _Linearisation:
    dtype = params.expression.dtype
    n_frames = params.expression.shape[0]
    flip = jnp.asarray(_FLIP, dtype)
    rotation = axis_angle_to_matrix(params.rotation)
    scale = jnp.exp(params.log_scale)
    rotated = _rotate_rows(rotation, _landmark_points(params, system))  # Y = R X, (F, L, 3)
    projection = scale[:, None, None] * flip[None, :, None] * rotation[:, :2]
    image = scale[:, None, None] * flip * rotated[..., :2] + face_pixels * params.translation[:, None, :]
    residual = weights[..., None] * (image - points2d)
    # ∂(R X)/∂ω_k = u_k × (R X) with u_k = J_l(ω) e_k; only the two image rows are needed.
    u = jnp.swapaxes(_left_jacobian(params.rotation), -1, -2)[:, None]  # (F, 1, k, 3)
    y = rotated[:, :, None, :]
    d_x = u[..., 1] * y[..., 2] - u[..., 2] * y[..., 1]
    d_y = u[..., 2] * y[..., 0] - u[..., 0] * y[..., 2]
    d_rotated = jnp.stack([d_x, -d_y], 2) * scale[:, None, None, None]  # (F, L, 2, 3), image y flipped
    translation_jacobian = jnp.broadcast_to(face_pixels * jnp.eye(2, dtype=dtype), (n_frames, rotated.shape[1], 2, 2))
    scaled = (scale[:, None, None] * flip * rotated[..., :2])[..., None]
    pose_jacobian = jnp.concatenate([d_rotated, scaled, translation_jacobian], -1)
    rows = rotation[:, :2]
    return _Linearisation(
        projection=projection,
        view_metric=jnp.sum(rows[:, :, :, None] * rows[:, :, None, :], 1),
        pose_jacobian=pose_jacobian,
        rotation_axes=jnp.sum(u[:, 0, :, :, None] * rotation[:, None, :, :], 2),
        scale_squared=scale**2,
        residual=residual,
        face_pixels=jnp.asarray(face_pixels, dtype),
    )


def _back_project(projection: jax.Array, image: jax.Array) -> jax.Array:
    """``P_fᵀ v`` for ``(F, L, 2)`` image vectors → ``(F, L, 3)``."""
    return jnp.sum(projection[:, None, :, :] * image[..., None], 2)


def _gradient(params, system, lin: _Linearisation, exists, landmark_weight, config):
    """Half the energy gradient: identity ``(n_i,)``, frames ``(F, n_e + 6)``."""
    n_frames = lin.residual.shape[0]
    back = _back_project(lin.projection, lin.residual).reshape(n_frames, -1)  # P_fᵀ r_fk, (F, 3L)
    g_expression = landmark_weight * (back @ _flat(system.expression))
    g_expression += config.expression_prior_weight * exists[:, None] * params.expression
    g_expression += temporal_gradient(
        params.expression, exists, config.expression_velocity_weight, config.expression_acceleration_weight
    )
    jacobian = lin.pose_jacobian.reshape(n_frames, -1, POSE_SIZE)
    g_pose = landmark_weight * jnp.sum(jacobian * lin.residual.reshape(n_frames, -1, 1), 1)
    g_pose += temporal_gradient(params.pose(), exists, config.pose_velocity_weight, config.pose_acceleration_weight)
    g_identity = landmark_weight * (jnp.sum(back, 0) @ _flat(system.identity))
    g_identity += config.identity_prior_weight * params.identity
    return g_identity, jnp.concatenate([g_expression, g_pose], -1)


def energy_gradient(params, system, points, weights, exists, face_pixels, config):
    """Half the gradient of :func:`video_energy` from the structured formulas.

    Returns:
      ``(identity (n_i,), frames (F, n_e + 6))``; the frame columns are the
      expression, then rotation, log-scale and translation.
    """
    lin = _linearise(params, system, points, weights, face_pixels)
    return _gradient(params, system, lin, exists, _landmark_weight(config, face_pixels), config)


# ---------------------------------------------------------------- normal blocks


@struct.dataclass
class _Blocks:
    """The per-frame normal blocks in factored-out form (see :func:`fitting.spd_blocks.gram_blocks`).

    A frame's ``(n_z, n_z)`` block is ``[[Σ_ab metric_ab G_ab, borderᵀ], [border, corner]] + diag(shift)``
    with ``G`` the expression Gram matrices; the solver factorises it without
    forming it (:func:`fitting.spd_blocks.factor_gram`).
    """

    metric: jax.Array  # (F, 9) landmark_weight · ν_f · s_f² · M_f, the Gram matrices' weights
    border: jax.Array  # (F, 6, n_e) pose × expression
    corner: jax.Array  # (F, 6, 6) pose × pose (data term)
    shift: jax.Array  # (F, n_z) diagonal: priors, damping and the temporal diagonal
    identity: jax.Array  # (n_i, n_i)
    frame_weight: jax.Array  # (F,) landmark_weight · ν_f (ν_f: frame has landmarks)
    data_scale: jax.Array  # (F,) landmark_weight · ν_f · s_f²
    temporal: jax.Array  # (F, n_z) the temporal diagonal included in ``shift``

    def frames(self, gram: jax.Array) -> jax.Array:
        """``(F, n_z, n_z)`` the blocks in memory (``gram``: the system's expression Gram matrices)."""
        return spd_blocks.gram_blocks(self.metric, gram, self.border, self.corner, self.shift)

    def factor(self, gram: jax.Array, free: jax.Array, interleaved: bool = True) -> jax.Array:
        """Cholesky factors of the blocks with the held coordinates (``free == 0``) removed.

        Interleaved (:func:`fitting.spd_blocks.factor_gram_interleaved`) for the
        solver's own solves, else ``(F, n_z, n_z)``.
        """
        factorise = spd_blocks.factor_gram_interleaved if interleaved else spd_blocks.factor_gram
        return factorise(self.metric, gram, self.border, self.corner, self.shift, free)


def _blocks(params, system, lin: _Linearisation, weights, exists, landmark_weight, config, majorise: bool) -> _Blocks:
    n_frames = lin.residual.shape[0]
    n_e = system.n_expression
    dtype = lin.residual.dtype
    has_data = jnp.any(weights > 0, axis=-1).astype(dtype)
    frame_weight = landmark_weight * has_data
    data_scale = frame_weight * lin.scale_squared
    temporal_e = temporal_diagonal(
        exists, config.expression_velocity_weight, config.expression_acceleration_weight, majorise
    )
    temporal_p = temporal_diagonal(exists, config.pose_velocity_weight, config.pose_acceleration_weight, majorise)
    temporal = jnp.concatenate(
        [jnp.broadcast_to(temporal_e[:, None], (n_frames, n_e)), jnp.broadcast_to(temporal_p[:, None], (n_frames, POSE_SIZE))],
        -1,
    )
    diag_e = config.expression_prior_weight * exists + temporal_e + config.damping
    diag_p = temporal_p + config.damping
    # Expression block: s² Σ_ab M_ab G_ab — nine scaled Gram matrices per frame, summed inside the factorisation.
    metric = (data_scale[:, None, None] * lin.view_metric).reshape(n_frames, 9)
    # Expression × (rotation, log-scale): Σ_k B_kᵀ P_fᵀ ∂π_k/∂(ω, log s) = s² Σ_k B_kᵀ N X_k with
    # N = M [v_m]× (rotation) or M (log-scale), M = R[:2]ᵀR[:2]. With X_k = X̄_k + B_k e_f that is
    # s² Σ_ab N_ab (c_ab + G_ab e_f), c_ab = Σ_k B_k[a]ᵀ X̄_k[b] shared by the video: one
    # (F, n_e) × (n_e, 9 n_e) product instead of a pass over the landmarks.
    turn = jnp.einsum("fab,fmbc->fmac", lin.view_metric, _skew(lin.rotation_axes))  # (F, 3, 3, 3)
    mixing = jnp.concatenate([turn, lin.view_metric[:, None]], 1).reshape(n_frames, 4, 9)
    rigid = system.mean + (_flat(system.identity) @ params.identity).reshape(system.mean.shape)
    shared = jnp.einsum("lan,lb->abn", system.expression, rigid).reshape(9, n_e)
    gram_e = (params.expression @ system.expression_gram.reshape(9 * n_e, n_e).T).reshape(n_frames, 9, n_e)
    h_e_rs = (mixing.reshape(-1, 9) @ shared).reshape(n_frames, 4, n_e) + jnp.sum(
        mixing[..., None] * gram_e[:, None], 2
    )
    h_e_rs = h_e_rs * data_scale[:, None, None]
    # Expression × translation: face_pixels · (Σ_k B_k)ᵀ P_fᵀ.
    h_e_t = (lin.projection.reshape(n_frames * 2, 3) @ system.expression_sum).reshape(n_frames, 2, n_e)
    h_e_t = h_e_t * (frame_weight * lin.face_pixels)[:, None, None]
    h_pe = jnp.concatenate([h_e_rs, h_e_t], 1)  # (F, 6, n_e)
    jacobian = (lin.pose_jacobian * system.available[:, None, None]).reshape(n_frames, -1, POSE_SIZE)
    h_pp = frame_weight[:, None, None] * jnp.einsum("fkp,fkq->fpq", jacobian, lin.pose_jacobian.reshape(n_frames, -1, POSE_SIZE))
    shift = jnp.concatenate(
        [jnp.broadcast_to(diag_e[:, None], (n_frames, n_e)), jnp.broadcast_to(diag_p[:, None], (n_frames, POSE_SIZE))], -1
    )
    summed_metric = jnp.sum(data_scale[:, None, None] * lin.view_metric, 0).reshape(9)
    identity = (summed_metric @ system.identity_gram.reshape(9, -1)).reshape(system.n_identity, system.n_identity)
    identity += (config.identity_prior_weight + config.damping) * jnp.eye(system.n_identity, dtype=dtype)
    return _Blocks(
        metric=metric,
        border=h_pe,
        corner=h_pp,
        shift=shift,
        identity=identity,
        frame_weight=frame_weight,
        data_scale=data_scale,
        temporal=temporal,
    )


def frame_blocks(params, system, points, weights, exists, face_pixels, config, majorise: bool = False):
    """Per-frame normal blocks ``(F, n_e + 6, n_e + 6)`` and the identity block ``(n_i, n_i)``.

    Half the Gauss–Newton Hessian of :func:`video_energy` restricted to each
    frame (identity and neighbours fixed), with the diagonal of the temporal
    terms (or of their majoriser). Landmarks missing from a usable frame are
    imputed (see the module docstring).
    """
    lin = _linearise(params, system, points, weights, face_pixels)
    blocks = _blocks(params, system, lin, weights, exists, _landmark_weight(config, face_pixels), config, majorise)
    return blocks.frames(system.expression_gram), blocks.identity


def _expression_parts(params, system, weights, exists, face_pixels, config):
    """``(metric (F, 9), gram, shift (F, n_e))``: :func:`expression_blocks` for :mod:`fitting.spd_blocks`."""
    n_frames = params.expression.shape[0]
    rows = axis_angle_to_matrix(params.rotation)[:, :2]
    has_data = jnp.any(weights > 0, axis=-1).astype(rows.dtype)
    data_scale = _landmark_weight(config, face_pixels) * has_data * jnp.exp(2.0 * params.log_scale)
    metric = data_scale[:, None, None] * jnp.sum(rows[:, :, :, None] * rows[:, :, None, :], 1)
    diagonal = (
        config.expression_prior_weight * exists
        + temporal_diagonal(exists, config.expression_velocity_weight, config.expression_acceleration_weight, False)
        + config.damping
    )
    return metric.reshape(n_frames, 9), system.expression_gram, jnp.broadcast_to(diagonal[:, None], params.expression.shape)


def expression_blocks(params, system, weights, exists, face_pixels, config) -> jax.Array:
    """``(F, n_e, n_e)`` half the Hessian of the energy in each frame's expression alone.

    Data term from the Gram matrices (``s² Σ_ab M_ab G_ab``), prior, and the
    diagonal of the temporal terms: the expression normal block with pose,
    identity and neighbouring frames fixed.
    """
    metric, gram, shift = _expression_parts(params, system, weights, exists, face_pixels, config)
    return spd_blocks.gram_blocks(metric, gram, shift=shift)


def expression_factor(params, system, weights, exists, face_pixels, config) -> jax.Array:
    """``(F, n_e, n_e)`` Cholesky factors of :func:`expression_blocks`, without forming the blocks."""
    metric, gram, shift = _expression_parts(params, system, weights, exists, face_pixels, config)
    return spd_blocks.factor_gram(metric, gram, shift=shift)


def _cross(system, lin: _Linearisation, blocks: _Blocks, vectors: jax.Array) -> jax.Array:
    """``C_f v`` for identity vectors ``(n_i, k)`` → ``(F, n_e + 6, k)``."""
    n_frames = lin.residual.shape[0]
    n_landmarks = system.mean.shape[0]
    k = vectors.shape[-1]
    offsets = (_flat(system.identity) @ vectors).reshape(n_landmarks, 3, k)  # A v, shared by all frames
    # Σ_k B_k[a]ᵀ (A v)_k[b], shared: the per-frame part is nine scalars.
    shared = jnp.einsum("lan,lbk->abnk", system.expression, offsets).reshape(9, -1)
    metric = (blocks.data_scale[:, None, None] * lin.view_metric).reshape(n_frames, 9)
    expression = (metric @ shared).reshape(n_frames, -1, k)
    # P_f (A v)_k for every frame and landmark as one (F·2, 3) × (3, L·k) product.
    columns = jnp.transpose(offsets * system.available[:, None, None], (1, 0, 2)).reshape(3, -1)
    projected = (lin.projection.reshape(n_frames * 2, 3) @ columns).reshape(n_frames, 2, n_landmarks, k)
    projected = jnp.transpose(projected, (0, 2, 1, 3)).reshape(n_frames, -1, k)
    pose = jnp.einsum("fxp,fxk->fpk", lin.pose_jacobian.reshape(n_frames, -1, POSE_SIZE), projected)
    return jnp.concatenate([expression, blocks.frame_weight[:, None, None] * pose], 1)


def _cross_transpose(system, lin: _Linearisation, blocks: _Blocks, frames: jax.Array) -> jax.Array:
    """``Σ_f C_fᵀ y_f`` for frame vectors ``(F, n_e + 6, k)`` → ``(n_i, k)``."""
    n_frames, _, k = frames.shape
    n_e = system.n_expression
    n_landmarks = system.mean.shape[0]
    moved = jnp.einsum("fnk,xn->fxk", frames[:, :n_e], _flat(system.expression)).reshape(n_frames, n_landmarks, 3, k)
    image = jnp.sum(lin.projection[:, None, :, :, None] * moved[:, :, None, :, :], 3)  # (F, L, 2, k)
    image = image + jnp.einsum("flcp,fpk->flck", lin.pose_jacobian, frames[:, n_e:])
    weighted = blocks.frame_weight[:, None, None] * lin.projection
    back = jnp.sum(jnp.sum(weighted[:, None, :, :, None] * image[:, :, :, None, :], 2), 0)  # (L, 3, k)
    return _flat(system.identity).T @ back.reshape(-1, k)


def _sample_frames(has_data: jax.Array, count: int):
    """Up to ``count`` usable frames spread evenly by rank, with weights summing to the usable count.

    Depends only on the usable frames (not on padding), so padded and unpadded
    videos pick the same frames.
    """
    valid = has_data > 0
    n_valid = jnp.sum(valid)
    cumulative = jnp.cumsum(valid.astype(jnp.int32))
    slot = jnp.arange(count)
    rank = jnp.where(
        n_valid > count, jnp.floor((slot + 0.5) * n_valid / count).astype(jnp.int32), slot.astype(jnp.int32)
    )
    index = jnp.clip(jnp.searchsorted(cumulative, rank + 1, side="left"), 0, has_data.shape[0] - 1)
    weight = jnp.where(slot < jnp.minimum(n_valid, count), jnp.maximum(n_valid / count, 1.0), 0.0)
    return index, weight.astype(has_data.dtype)


def _sampled_schur(system, lin, blocks: _Blocks, factor_of, free, g_frames, samples: int, identity_prior, anchor: bool):
    """Schur complement and reduced gradient of the global unknowns, estimated on a frame sample.

    The global unknowns are the identity step and, with ``anchor``, the
    temporal anchor ``c`` (see :func:`_newton_step`). Frame ``f`` couples to
    them through ``B_f = [C_f, −T_f]`` (``T_f`` the diagonal temporal
    majoriser). Returns ``S ≈ Σ_f (G_f − B_fᵀ D_f⁻¹ B_f) + prior`` — a weighted
    sum of per-frame positive semi-definite terms — and ``Σ_f B_fᵀ D_f⁻¹ g_f``:
    ``n_i + n_z + 1`` right-hand sides per sampled frame, the expensive part,
    so the sample size is fixed. ``factor_of(index)`` gives the Cholesky
    factors ``(K, n_z, n_z)`` of the frames ``index``.
    """
    index, weight = _sample_frames(blocks.frame_weight, samples)
    n_samples = index.shape[0]
    n_e, n_i = system.n_expression, system.n_identity
    n_z = n_e + POSE_SIZE
    data_scale = blocks.data_scale[index]
    metric = lin.view_metric[index]
    scaled_metric = (data_scale[:, None, None] * metric).reshape(n_samples, 9)
    cross_e = (scaled_metric @ system.cross_gram.reshape(9, -1)).reshape(n_samples, n_e, n_i)
    # Σ_l J_jlᵀ P_j A_l: pull P_j onto the (small) pose Jacobian first, then one plain
    # (K·6, 3L) × (3L, n_i) product with the shared basis.
    pulled = jnp.einsum("jlcp,jci->jpli", lin.pose_jacobian[index], lin.projection[index])
    cross_p = (pulled.reshape(n_samples * POSE_SIZE, -1) @ _flat(system.identity)).reshape(n_samples, POSE_SIZE, n_i)
    cross_p = cross_p * blocks.frame_weight[index][:, None, None]
    sample_free = free[index]
    coupling = [jnp.concatenate([cross_e, cross_p], 1) * sample_free[..., None]]
    own_metric = jnp.sum((weight * data_scale)[:, None, None] * metric, 0).reshape(9)
    own = [(own_metric @ system.identity_gram.reshape(9, -1)).reshape(n_i, n_i)]
    if anchor:
        temporal = blocks.temporal[index]
        coupling.append(-(temporal * sample_free)[..., None] * jnp.eye(n_z, dtype=temporal.dtype))
        own.append(jnp.diag(jnp.sum(weight[:, None] * temporal, 0)))
    coupling = jnp.concatenate(coupling, -1)  # (K, n_z, n_g)
    n_global = coupling.shape[-1]
    rhs = jnp.concatenate([coupling, (g_frames * free)[index][..., None]], -1)
    # Bᵀ D⁻¹ [B, g] = (L⁻¹ B)ᵀ (L⁻¹ [B, g]): one forward substitution per sampled frame.
    reduced = spd_blocks.solve_lower(factor_of(index), rhs)
    weighted = weight[:, None, None] * reduced[..., :n_global]
    eliminated = weighted.reshape(-1, n_global).T @ reduced.reshape(-1, n_global + 1)
    schur = jax.scipy.linalg.block_diag(*own) - eliminated[:, :n_global]
    prior = jnp.concatenate([jnp.full((n_i,), identity_prior), jnp.zeros((n_global - n_i,))]).astype(schur.dtype)
    schur = 0.5 * (schur + schur.T) + jnp.diag(prior)
    return schur, eliminated[:, n_global]


def _spd_factor(matrix: jax.Array) -> jax.Array:
    """Cholesky factor with a relative ridge so a semi-definite matrix still factorises."""
    n = matrix.shape[-1]
    ridge = 1e-7 * jnp.trace(matrix, axis1=-2, axis2=-1) / n + _TINY
    return jnp.linalg.cholesky(matrix + ridge[..., None, None] * jnp.eye(n, dtype=matrix.dtype))


def _small_spd_solve(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve a batch of small SPD systems ``(..., k, k) x = (..., k)`` by Cholesky in ``fori_loop`` loops.

    For the handful of unknowns of the bound correction: elementwise over the
    batch, which beats ``k``-sized LAPACK calls per frame and compiles small.
    """
    k = matrix.shape[-1]
    position = jnp.arange(k)

    def factor_column(j, lower):
        row = jnp.take(lower, j, axis=-2)  # L[j, :], zero beyond column j
        s = jnp.take(matrix, j, axis=-1) - jnp.sum(lower * row[..., None, :], -1)
        pivot = jnp.sqrt(jnp.maximum(jnp.take(s, j, axis=-1), 1e-30))
        column = jnp.where(position > j, s / pivot[..., None], jnp.where(position == j, pivot[..., None], 0.0))
        return jnp.where(position == j, column[..., :, None], lower)

    lower = jax.lax.fori_loop(0, k, factor_column, jnp.zeros_like(matrix))
    diagonal = jnp.diagonal(lower, axis1=-2, axis2=-1)

    def forward(j, y):
        value = (jnp.take(rhs, j, axis=-1) - jnp.sum(jnp.take(lower, j, axis=-2) * y, -1)) / jnp.take(diagonal, j, axis=-1)
        return jnp.where(position == j, value[..., None], y)

    def backward(step, x):
        j = k - 1 - step
        value = (jnp.take(y, j, axis=-1) - jnp.sum(jnp.take(lower, j, axis=-1) * x, -1)) / jnp.take(diagonal, j, axis=-1)
        return jnp.where(position == j, value[..., None], x)

    y = jax.lax.fori_loop(0, k, forward, jnp.zeros_like(rhs))
    return jax.lax.fori_loop(0, k, backward, jnp.zeros_like(rhs))


def _active_bounds(expression, gradient_e, system):
    """Projected-Newton active set: at a bound with the gradient pushing outwards."""
    at_lower = (expression <= system.lower + _BOUND_EPSILON) & (gradient_e > 0)
    at_upper = (expression >= system.upper - _BOUND_EPSILON) & (gradient_e < 0)
    return at_lower | at_upper


def _unit(v: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(v)
    return jnp.where(norm > _TINY, v / jnp.where(norm > _TINY, norm, 1.0), 0.0)


def _newton_step(params, system, lin, blocks, g_identity, g_frames, previous_global_step, config):
    """The step of the bound-constrained majorised quadratic model; see the module docstring.

    The temporal terms ``½ δzᵀ T δz`` (``δz`` all frame steps) are bounded by
    ``½ Σ_f (δz_f − c)ᵀ T_f (δz_f − c)`` with ``T_f`` the diagonal majoriser and
    any per-video constant ``c`` (an "anchor": ``T`` annihilates constants). The
    anchor is a global unknown next to the identity step: without it the
    majoriser would penalise moving all frames together — e.g. the scale of
    every frame against the identity's size, or the mean expression against
    the identity — and those directions would crawl.

    One Cholesky factorisation and one triangular-solve pair per frame: the
    right-hand sides are the gradient, the two global directions' couplings and
    the unit vectors of the ``bound_corrections`` free coefficients nearest a
    bound (the ones a coupled step pushes out of the box).

    Returns:
      ``(identity_step (n_i,), frame_step (F, n_z), global_step (n_i [+ n_z]))``.
    """
    n_e, n_i = system.n_expression, system.n_identity
    n_frames, n_z = g_frames.shape
    dtype = g_frames.dtype
    anchor = config.temporal_anchor
    held = _active_bounds(params.expression, g_frames[:, :n_e], system)
    free = jnp.concatenate([~held, jnp.ones((n_frames, POSE_SIZE), bool)], -1).astype(dtype)
    factor = blocks.factor(system.expression_gram, free)
    g_frames = g_frames * free

    schur, eliminated = _sampled_schur(
        system,
        lin,
        blocks,
        lambda index: spd_blocks.take_interleaved(factor, index),
        free,
        g_frames,
        config.schur_samples,
        config.identity_prior_weight,
        anchor,
    )
    global_gradient = jnp.concatenate([g_identity, jnp.zeros((n_z,), dtype)]) if anchor else g_identity
    direction = jax.scipy.linalg.cho_solve((_spd_factor(schur), True), eliminated - global_gradient)
    basis = jnp.stack([_unit(direction), _unit(previous_global_step)], -1)  # (n_g, 2)
    coupled = _cross(system, lin, blocks, basis[:n_i]) * free[..., None]  # B_f W, (F, n_z, 2)
    own = basis[:n_i].T @ blocks.identity @ basis[:n_i]
    if anchor:
        temporal = blocks.temporal * free
        coupled = coupled - temporal[..., None] * basis[None, n_i:]
        own = own + basis[n_i:].T @ (jnp.sum(blocks.temporal, 0)[:, None] * basis[n_i:])
    rhs = [g_frames[..., None], coupled]
    corrections = min(config.bound_corrections, n_e)
    if corrections > 0:
        # Candidates: the free coefficients closest to a bound (those the coupled step pushes out).
        room = jnp.minimum(params.expression - system.lower, system.upper - params.expression)
        _, candidates = jax.lax.top_k(jnp.where(free[:, :n_e] > 0, -room, -jnp.inf), corrections)
        rhs.append(jnp.swapaxes(jax.nn.one_hot(candidates, n_z, dtype=dtype), 1, 2))
    solved = spd_blocks.solve_interleaved(factor, jnp.concatenate(rhs, -1))
    frame_part, solved_basis = solved[..., 0], solved[..., 1:3]
    # Exact minimisation over global steps W α, the frames eliminated: (Wᵀ S W) α = Wᵀ r.
    reduced = basis[:n_i].T @ (-g_identity) + jnp.einsum("fzk,fz->k", coupled, frame_part)
    small = own - jnp.einsum("fzk,fzl->kl", coupled, solved_basis)
    small = 0.5 * (small + small.T)
    small += (1e-6 * jnp.trace(small) + _TINY) * jnp.eye(2, dtype=dtype)
    coefficients = jnp.linalg.solve(small, reduced)
    global_step = basis @ coefficients
    frame_step = -(frame_part + solved_basis @ coefficients) * free
    if corrections > 0:
        frame_step = _bound_correction(params, system, free, frame_step, candidates, solved[..., 3:])
    return global_step[:n_i], frame_step, global_step


def _bound_correction(params, system, free, frame_step, candidates, columns):
    """Put the candidate coefficients the step pushes past a bound on it and re-optimise their frame.

    With ``E`` selecting those coordinates and ``t`` the move that puts them
    on the bound, the frame step becomes ``δ + D⁻¹E μ`` with
    ``(Eᵀ D⁻¹ E) μ = t − Eᵀ δ``: the minimiser of the frame's model with those
    coordinates fixed (global step unchanged). ``columns = D⁻¹ E`` come from
    the same solve as the step.

    Args:
      candidates: ``(F, k)`` expression indices; columns: ``(F, n_z, k)``.
    """
    n_e = system.n_expression
    dtype = frame_step.dtype
    count = candidates.shape[-1]
    target = params.expression + frame_step[:, :n_e]
    clipped = jnp.clip(target, system.lower, system.upper)
    needed = jnp.take_along_axis(clipped - target, candidates, axis=1)
    used = ((needed != 0) & (jnp.take_along_axis(free[:, :n_e], candidates, axis=1) > 0)).astype(dtype)
    gram = jnp.take_along_axis(columns, candidates[:, :, None], axis=1)  # Eᵀ D⁻¹ E, (F, k, k)
    eye = jnp.eye(count, dtype=dtype)
    gram = gram * used[:, :, None] * used[:, None, :] + (1.0 - used)[:, :, None] * eye
    multiplier = _small_spd_solve(gram, needed * used)
    corrected = frame_step + jnp.einsum("fzc,fc->fz", columns, multiplier)
    ok = jnp.all(jnp.isfinite(corrected), -1, keepdims=True)
    return jnp.where(ok, corrected, frame_step) * free


def block_preconditioner(params, system, points, weights, exists, face_pixels, config, free_expression):
    """An approximate inverse of the energy's Hessian built from the solver's blocks.

    Block LDLᵀ of the Gauss–Newton matrix without the temporal off-diagonal
    coupling: per-frame Cholesky blocks (true temporal diagonal) and the exact
    identity Schur complement over all usable frames (100 right-hand sides per
    frame, so meant for occasional use such as the implicit gradient).

    Args:
      params, system, points, weights, exists, face_pixels, config: as in :func:`video_energy`.
      free_expression: ``(F, n_e)`` 1 for free expression coefficients, 0 for held ones.

    Returns:
      A function mapping a :class:`VideoParameters`-shaped vector ``v`` to ``≈ (∇²E)⁻¹ v``.
    """
    n_e = system.n_expression
    n_frames = params.expression.shape[0]
    dtype = params.expression.dtype
    lin = _linearise(params, system, points, weights, face_pixels)
    blocks = _blocks(params, system, lin, weights, exists, _landmark_weight(config, face_pixels), config, False)
    free = jnp.concatenate([free_expression, jnp.ones((n_frames, POSE_SIZE), dtype)], -1)
    factor = blocks.factor(system.expression_gram, free, interleaved=False)
    schur, _ = _sampled_schur(
        system,
        lin,
        blocks,
        lambda index: factor[index],
        free,
        jnp.zeros_like(free),
        n_frames,
        config.identity_prior_weight + config.damping,
        anchor=False,
    )
    schur_factor = _spd_factor(schur)

    def apply(tree: VideoParameters) -> VideoParameters:
        frames = jnp.concatenate([tree.expression, tree.pose()], -1) * free
        first = jax.scipy.linalg.cho_solve((factor, True), frames[..., None])
        identity = jax.scipy.linalg.cho_solve(
            (schur_factor, True), tree.identity - _cross_transpose(system, lin, blocks, first)[:, 0]
        )
        correction = jax.scipy.linalg.cho_solve(
            (factor, True), _cross(system, lin, blocks, identity[:, None]) * free[..., None]
        )
        frames = (first - correction)[..., 0] * free
        # The blocks are half the Hessian of the energy.
        return VideoParameters(
            identity=0.5 * identity,
            expression=0.5 * frames[:, :n_e],
            rotation=0.5 * frames[:, n_e : n_e + 3],
            log_scale=0.5 * frames[:, n_e + 3],
            translation=0.5 * frames[:, n_e + 4 :],
        )

    return apply


def _apply_step(params, system, identity_step, frame_step, length):
    n_e = system.n_expression
    return params.replace(
        identity=params.identity + length * identity_step,
        expression=jnp.clip(params.expression + length * frame_step[:, :n_e], system.lower, system.upper),
    ).with_pose(params.pose() + length * frame_step[:, n_e:])


def gauss_newton(
    params: VideoParameters,
    system: LandmarkSystem,
    points: jax.Array,
    weights: jax.Array,
    exists: jax.Array,
    face_pixels: jax.Array,
    config: "VideoFitConfig",
    iterations: int | None = None,
) -> tuple[VideoParameters, SolverDiagnostics]:
    """Minimise :func:`video_energy` from ``params`` (see the module docstring).

    Args:
      params: starting point (e.g. :func:`fitting.video_init.initialise`).
      system, points, weights, exists, face_pixels: as in :func:`video_energy`.
      config: weights and solver settings.
      iterations: maximum iterations (default ``config.iterations``).

    Returns:
      ``(params, diagnostics)``; iterations stop early once an accepted step
      lowers the energy by less than ``config.tolerance`` (relative), or when no
      step along the Newton direction lowers it (converged at float precision).
    """
    max_iterations = config.iterations if iterations is None else iterations
    landmark_weight = _landmark_weight(config, face_pixels)

    def energy(p):
        return video_energy(p, system, points, weights, exists, face_pixels, config)

    def iterate(state):
        params, current, previous_step, iteration, _ = state
        lin = _linearise(params, system, points, weights, face_pixels)
        g_identity, g_frames = _gradient(params, system, lin, exists, landmark_weight, config)
        blocks = _blocks(params, system, lin, weights, exists, landmark_weight, config, majorise=True)
        identity_step, frame_step, global_step = _newton_step(
            params, system, lin, blocks, g_identity, g_frames, previous_step, config
        )

        def search_step(search):
            length, _, tries = search
            length = jnp.where(tries > 0, 0.5 * length, length)
            return length, energy(_apply_step(params, system, identity_step, frame_step, length)), tries + 1

        def keep_searching(search):
            _, trial, tries = search
            return (tries == 0) | (~(trial <= current) & (tries <= config.max_backtracks))

        start = (jnp.asarray(1.0, current.dtype), jnp.asarray(jnp.inf, current.dtype), 0)
        length, trial, _ = jax.lax.while_loop(keep_searching, search_step, start)
        accepted = trial <= current
        candidate = _apply_step(params, system, identity_step, frame_step, length)
        new_params = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), candidate, params)
        new_energy = jnp.where(accepted, trial, current)
        small = (current - new_energy) <= config.tolerance * jnp.abs(current)
        return (
            new_params,
            new_energy,
            jnp.where(accepted, length * global_step, 0.0 * global_step),
            iteration + 1,
            small | ~accepted,
        )

    def keep_going(state):
        return (state[3] < max_iterations) & ~state[4]

    start = energy(params)
    n_global = system.n_identity + (system.n_expression + POSE_SIZE if config.temporal_anchor else 0)
    state = (params, start, jnp.zeros((n_global,), start.dtype), jnp.asarray(0, jnp.int32), jnp.asarray(False))
    params, final, _, count, converged = jax.lax.while_loop(keep_going, iterate, state)
    return params, SolverDiagnostics(iterations=count, converged=converged, energy=final)
