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
* **Temporal terms** couple neighbouring frames. Each step replaces their
  Hessian by its diagonal majoriser (row sums of absolute values, e.g. 4 for an
  interior first difference, 16 for a second difference), i.e. one majorised
  block-Jacobi sweep per Gauss–Newton iteration: the gradient carries the exact
  coupling, the step keeps the per-frame blocks independent and can only lower
  the quadratic model. Frames without landmarks are filled in by these terms
  (starting from a linear interpolation of their neighbours).
* **Identity.** With the per-frame blocks ``D_f`` (59 × 59 for ICT) factorised
  once per iteration, the frame unknowns are eliminated exactly: the reduced
  identity system is ``S δi = r`` with ``S = H_ii − Σ_f C_fᵀ D_f⁻¹ C_f``. The
  100-right-hand-side terms of ``S`` are computed on a fixed-size sample of
  frames (``schur_samples``, spread evenly over the valid frames and weighted to
  represent all of them), so their cost does not grow with ``F``; ``S`` is only
  used to pick the identity search direction ``S⁻¹ r``. The step then minimises
  the quadratic model exactly over identity steps in the span of that direction
  and the previous identity step (two extra right-hand sides of the per-frame
  solve), with every frame's unknowns at their exact optimum for it.
* **Blendshape bounds** ``lower ≤ e ≤ upper`` by projected Newton (Bertsekas):
  coefficients at a bound whose gradient points outwards are held, the others
  take the Newton step of the reduced system, the result is clipped.
* Each step is accepted with backtracking on the true energy.

Everything is ``jax.numpy`` inside one ``lax.while_loop``: jittable, ``vmap``-able
over videos, compiled once per (model layout, number of frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

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
    """``velocity Σ‖x_f − x_{f−1}‖² + acceleration Σ‖x_{f+1} − 2x_f + x_{f−1}‖²`` over existing frames."""
    first = values[1:] - values[:-1]
    second = values[2:] - 2.0 * values[1:-1] + values[:-2]
    return velocity * jnp.sum(_pair_mask(exists)[:, None] * first**2) + acceleration * jnp.sum(
        _triple_mask(exists)[:, None] * second**2
    )


def temporal_gradient(values: jax.Array, exists: jax.Array, velocity: float, acceleration: float) -> jax.Array:
    """Half the gradient of :func:`temporal_energy`, ``(F, k)``."""
    first = _pair_mask(exists)[:, None] * (values[1:] - values[:-1])
    second = _triple_mask(exists)[:, None] * (values[2:] - 2.0 * values[1:-1] + values[:-2])
    return velocity * (_pad(first, 1, 0) - _pad(first, 0, 1)) + acceleration * (
        _pad(second, 2, 0) - 2.0 * _pad(second, 1, 1) + _pad(second, 0, 2)
    )


def temporal_diagonal(exists: jax.Array, velocity: float, acceleration: float, majorise: bool) -> jax.Array:
    """``(F,)`` diagonal of half the temporal Hessian, or of its diagonal majoriser.

    The majoriser is the row sum of absolute values (Gershgorin), so
    ``diag(majoriser) − Hessian`` is positive semi-definite.
    """
    pairs, triples = _pair_mask(exists), _triple_mask(exists)
    pair_count = _pad(pairs, 1, 0) + _pad(pairs, 0, 1)
    if majorise:
        # |coefficient| · Σ|coefficients|: 1·2 per pair, 1·4 / 2·4 / 1·4 per triple.
        return velocity * 2.0 * pair_count + acceleration * 4.0 * (
            _pad(triples, 2, 0) + 2.0 * _pad(triples, 1, 1) + _pad(triples, 0, 2)
        )
    return velocity * pair_count + acceleration * (_pad(triples, 2, 0) + 4.0 * _pad(triples, 1, 1) + _pad(triples, 0, 2))


# ---------------------------------------------------------------- energy


def _landmark_weight(config: "VideoFitConfig", face_pixels: jax.Array) -> jax.Array:
    """Weight per pixel² of the landmark term: residuals are rescaled to the reference face size."""
    return config.landmark_weight * (config.reference_face_size / face_pixels) ** 2


def project_landmarks(params: VideoParameters, system: LandmarkSystem, face_pixels: jax.Array) -> jax.Array:
    """``(F, L, 2)`` model landmarks projected to pixels."""
    points = _landmark_points(params, system)
    rotation = axis_angle_to_matrix(params.rotation)
    flip = jnp.asarray(_FLIP, points.dtype)
    scale = jnp.exp(params.log_scale)
    image = jnp.einsum("fcj,flj->flc", rotation[:, :2], points) * (scale[:, None, None] * flip)
    return image + face_pixels * params.translation[:, None, :]


def _landmark_points(params: VideoParameters, system: LandmarkSystem) -> jax.Array:
    rigid = system.mean + jnp.einsum("lcn,n->lc", system.identity, params.identity)
    return rigid + jnp.einsum("lcn,fn->flc", system.expression, params.expression)


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
      weights: ``(F, L)`` 1 for an observed landmark of a valid frame, else 0.
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


@struct.dataclass
class _Linearisation:
    """Per-frame quantities at the current parameters (all pixels / model units)."""

    projection: jax.Array  # (F, 2, 3) P_f = s D R[:2]
    view_metric: jax.Array  # (F, 3, 3) M_f = R[:2]ᵀ R[:2] = I − n nᵀ
    pose_jacobian: jax.Array  # (F, L, 2, 6) ∂π/∂pose
    points: jax.Array  # (F, L, 3) X_fk
    rotation_derivative: jax.Array  # (F, 4, 3, 3) R[:2]ᵀ ∂R[:2]/∂ω_j (j < 3) and M (log-scale)
    scale_squared: jax.Array  # (F,)
    residual: jax.Array  # (F, L, 2) weighted residual w (π − y), pixels
    face_pixels: jax.Array  # ()


def _linearise(params, system, points2d, weights, face_pixels) -> _Linearisation:
    dtype = params.expression.dtype
    flip = jnp.asarray(_FLIP, dtype)
    rotation = axis_angle_to_matrix(params.rotation)
    # ∂R/∂ω (F, 3, 3, 3), last axis the axis-angle component: the exact derivative of
    # the parameterisation, so the temporal terms on ω stay quadratic.
    d_rotation = jax.vmap(jax.jacfwd(axis_angle_to_matrix))(params.rotation)
    scale = jnp.exp(params.log_scale)
    points = _landmark_points(params, system)
    rows = rotation[:, :2]
    projection = scale[:, None, None] * flip[None, :, None] * rows
    rotated = jnp.einsum("fcj,flj->flc", rows, points) * flip
    image = scale[:, None, None] * rotated + face_pixels * params.translation[:, None, :]
    residual = weights[..., None] * (image - points2d)
    d_rotated = jnp.einsum("fcjk,flj->flck", d_rotation[:, :2], points) * (scale[:, None, None, None] * flip[:, None])
    n_landmarks = points.shape[1]
    translation_jacobian = jnp.broadcast_to(face_pixels * jnp.eye(2, dtype=dtype), (params.expression.shape[0], n_landmarks, 2, 2))
    pose_jacobian = jnp.concatenate([d_rotated, (scale[:, None, None] * rotated)[..., None], translation_jacobian], -1)
    view_metric = jnp.einsum("fci,fcj->fij", rows, rows)
    rotation_derivative = jnp.concatenate(
        [jnp.einsum("fci,fcjk->fkij", rows, d_rotation[:, :2]), view_metric[:, None]], axis=1
    )
    return _Linearisation(
        projection=projection,
        view_metric=view_metric,
        pose_jacobian=pose_jacobian,
        points=points,
        rotation_derivative=rotation_derivative,
        scale_squared=scale**2,
        residual=residual,
        face_pixels=jnp.asarray(face_pixels, dtype),
    )


def _gradient(params, system, lin: _Linearisation, exists, landmark_weight, config):
    """Half the energy gradient: identity ``(n_i,)``, frames ``(F, n_e + 6)``."""
    n_frames, n_landmarks = lin.points.shape[:2]
    back = jnp.einsum("fci,flc->fli", lin.projection, lin.residual)  # P_fᵀ r_fk
    g_expression = landmark_weight * jnp.einsum("fli,lin->fn", back, system.expression)
    g_expression += config.expression_prior_weight * exists[:, None] * params.expression
    g_expression += temporal_gradient(
        params.expression, exists, config.expression_velocity_weight, config.expression_acceleration_weight
    )
    g_pose = landmark_weight * jnp.einsum("flcp,flc->fp", lin.pose_jacobian, lin.residual)
    g_pose += temporal_gradient(params.pose(), exists, config.pose_velocity_weight, config.pose_acceleration_weight)
    g_identity = landmark_weight * jnp.einsum("li,lin->n", jnp.sum(back, 0), system.identity)
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
    frames: jax.Array  # (F, n_z, n_z) per-frame normal blocks (priors and temporal diagonal included)
    identity: jax.Array  # (n_i, n_i)
    frame_weight: jax.Array  # (F,) landmark_weight · ν_f (ν_f: frame has landmarks)
    data_scale: jax.Array  # (F,) landmark_weight · ν_f · s_f²


def _blocks(params, system, lin: _Linearisation, weights, exists, landmark_weight, config, majorise: bool) -> _Blocks:
    n_frames = lin.points.shape[0]
    n_e = system.n_expression
    dtype = lin.points.dtype
    has_data = jnp.any(weights > 0, axis=-1).astype(dtype)
    frame_weight = landmark_weight * has_data
    data_scale = frame_weight * lin.scale_squared
    # Expression block: s² Σ_ab M_ab G_ab — nine scaled additions per frame.
    h_ee = jnp.einsum("fab,abnm->fnm", data_scale[:, None, None] * lin.view_metric, system.expression_gram)
    # Expression × (rotation, log-scale): s² Σ_k B_kᵀ Q_c X_fk, one (F·4, 3L) × (3L, n_e) product.
    transformed = jnp.einsum("fcij,flj->fcli", lin.rotation_derivative, lin.points) * system.available[:, None]
    h_e_rs = data_scale[:, None, None] * jnp.einsum("fcli,lin->fnc", transformed, system.expression)
    # Expression × translation: face_pixels · (Σ_k B_k)ᵀ P_fᵀ.
    h_e_t = (frame_weight * lin.face_pixels)[:, None, None] * jnp.einsum("an,fca->fnc", system.expression_sum, lin.projection)
    h_ep = jnp.concatenate([h_e_rs, h_e_t], -1)
    h_pp = frame_weight[:, None, None] * jnp.einsum(
        "flcp,flcq,l->fpq", lin.pose_jacobian, lin.pose_jacobian, system.available
    )
    top = jnp.concatenate([h_ee, h_ep], -1)
    bottom = jnp.concatenate([jnp.swapaxes(h_ep, -1, -2), h_pp], -1)
    frames = jnp.concatenate([top, bottom], -2)
    diag_e = config.expression_prior_weight * exists + temporal_diagonal(
        exists, config.expression_velocity_weight, config.expression_acceleration_weight, majorise
    )
    diag_p = temporal_diagonal(exists, config.pose_velocity_weight, config.pose_acceleration_weight, majorise)
    diagonal = jnp.concatenate(
        [jnp.broadcast_to(diag_e[:, None], (n_frames, n_e)), jnp.broadcast_to(diag_p[:, None], (n_frames, POSE_SIZE))],
        -1,
    )
    frames = frames + (diagonal + config.damping)[..., None] * jnp.eye(n_e + POSE_SIZE, dtype=dtype)
    summed_metric = jnp.einsum("f,fab->ab", data_scale, lin.view_metric)
    identity = jnp.einsum("ab,abnm->nm", summed_metric, system.identity_gram)
    identity += (config.identity_prior_weight + config.damping) * jnp.eye(system.n_identity, dtype=dtype)
    return _Blocks(frames=frames, identity=identity, frame_weight=frame_weight, data_scale=data_scale)


def frame_blocks(params, system, points, weights, exists, face_pixels, config, majorise: bool = False):
    """Per-frame normal blocks ``(F, n_e + 6, n_e + 6)`` and the identity block ``(n_i, n_i)``.

    Half the Gauss–Newton Hessian of :func:`video_energy` restricted to each
    frame (identity and neighbours fixed), with the diagonal of the temporal
    terms (or of their majoriser). Landmarks missing from a valid frame are
    imputed (see the module docstring).
    """
    lin = _linearise(params, system, points, weights, face_pixels)
    blocks = _blocks(params, system, lin, weights, exists, _landmark_weight(config, face_pixels), config, majorise)
    return blocks.frames, blocks.identity


def _cross(system, lin: _Linearisation, blocks: _Blocks, vectors: jax.Array) -> jax.Array:
    """``C_f v`` for identity vectors ``(n_i, k)`` → ``(F, n_e + 6, k)``."""
    offsets = jnp.einsum("lcn,nk->lck", system.identity, vectors)  # A v, shared by all frames
    shared = jnp.einsum("lan,lbk->abnk", system.expression, offsets)  # Σ_k B_k[a]ᵀ (A v)_k[b]
    expression = jnp.einsum("fab,abnk->fnk", blocks.data_scale[:, None, None] * lin.view_metric, shared)
    projected = jnp.einsum("fci,lik->flck", lin.projection, offsets)
    pose = blocks.frame_weight[:, None, None] * jnp.einsum(
        "flcp,flck,l->fpk", lin.pose_jacobian, projected, system.available
    )
    return jnp.concatenate([expression, pose], 1)


def _cross_transpose(system, lin: _Linearisation, blocks: _Blocks, frames: jax.Array) -> jax.Array:
    """``Σ_f C_fᵀ y_f`` for frame vectors ``(F, n_e + 6, k)`` → ``(n_i, k)``."""
    n_e = system.n_expression
    moved = jnp.einsum("lcn,fnk->flck", system.expression, frames[:, :n_e])
    image = jnp.einsum("fci,flik->flck", lin.projection, moved) + jnp.einsum(
        "flcp,fpk->flck", lin.pose_jacobian, frames[:, n_e:]
    )
    back = jnp.einsum("fci,flck->lik", blocks.frame_weight[:, None, None] * lin.projection, image)
    return jnp.einsum("lin,lik->nk", system.identity * system.available[:, None, None], back)


def _sample_frames(has_data: jax.Array, count: int):
    """Up to ``count`` valid frames spread evenly by rank, with weights summing to the valid count.

    Depends only on the valid frames (not on padding), so padded and unpadded
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


def _sampled_schur(system, lin, blocks: _Blocks, factor, free, samples: int, identity_prior) -> jax.Array:
    """Identity Schur complement ``λI + Σ_f (H_ii,f − C_fᵀ D_f⁻¹ C_f)`` estimated on a frame sample."""
    index, weight = _sample_frames(blocks.frame_weight, samples)
    data_scale = blocks.data_scale[index]
    metric = lin.view_metric[index]
    cross_e = jnp.einsum("jab,abni->jni", data_scale[:, None, None] * metric, system.cross_gram)
    cross_p = blocks.frame_weight[index][:, None, None] * jnp.einsum(
        "jlcp,jci,lin,l->jpn", lin.pose_jacobian[index], lin.projection[index], system.identity, system.available
    )
    cross = jnp.concatenate([cross_e, cross_p], 1) * free[index][..., None]
    solved = jax.scipy.linalg.cho_solve((factor[index], True), cross)
    own = jnp.einsum("ab,abnm->nm", jnp.einsum("j,jab->ab", weight * data_scale, metric), system.identity_gram)
    eliminated = jnp.einsum("j,jzn,jzm->nm", weight, cross, solved)
    schur = own - eliminated
    schur = 0.5 * (schur + schur.T)
    return schur + identity_prior * jnp.eye(system.n_identity, dtype=schur.dtype)


def _spd_factor(matrix: jax.Array) -> jax.Array:
    """Cholesky factor with a relative ridge so a semi-definite matrix still factorises."""
    n = matrix.shape[-1]
    ridge = 1e-7 * jnp.trace(matrix, axis1=-2, axis2=-1) / n + _TINY
    return jnp.linalg.cholesky(matrix + ridge[..., None, None] * jnp.eye(n, dtype=matrix.dtype))


def _clip_expression(expression, system):
    return jnp.clip(expression, system.lower, system.upper)


def _active_bounds(expression, gradient_e, system):
    """Projected-Newton active set: at a bound with the gradient pushing outwards."""
    at_lower = (expression <= system.lower + _BOUND_EPSILON) & (gradient_e > 0)
    at_upper = (expression >= system.upper - _BOUND_EPSILON) & (gradient_e < 0)
    return at_lower | at_upper


def _factor_blocks(frames: jax.Array, free: jax.Array) -> jax.Array:
    """Cholesky factors of the per-frame blocks with the held coordinates removed.

    Held rows/columns become the identity. A non-finite factor (a block that is
    not positive definite in float32) is replaced by the square root of the
    diagonal: a scaled gradient step for that frame.
    """
    n_z = frames.shape[-1]
    eye = jnp.eye(n_z, dtype=frames.dtype)
    masked = frames * free[:, :, None] * free[:, None, :] + (1.0 - free)[..., None] * eye
    factor = jnp.linalg.cholesky(masked)
    finite = jnp.all(jnp.isfinite(factor), axis=(-2, -1))
    diagonal = jnp.sqrt(jnp.maximum(jnp.diagonal(masked, axis1=-2, axis2=-1), 1e-12))[..., None] * eye
    return jnp.where(finite[:, None, None], factor, diagonal)


def _newton_step(params, system, lin, blocks, g_identity, g_frames, previous_identity_step, config):
    """The step minimising the (majorised) quadratic model; see the module docstring."""
    n_e = system.n_expression
    n_frames, n_z = g_frames.shape
    dtype = g_frames.dtype
    active = _active_bounds(params.expression, g_frames[:, :n_e], system)
    free = jnp.concatenate([~active, jnp.ones((n_frames, POSE_SIZE), bool)], -1).astype(dtype)
    factor = _factor_blocks(blocks.frames, free)

    def frame_solve(rhs):
        return jax.scipy.linalg.cho_solve((factor, True), rhs)

    g_masked = g_frames * free
    frame_part = frame_solve(g_masked[..., None])  # D⁻¹ g_z, (F, n_z, 1)
    reduced = -g_identity + _cross_transpose(system, lin, blocks, frame_part)[:, 0]
    schur = _sampled_schur(system, lin, blocks, factor, free, config.schur_samples, config.identity_prior_weight)
    direction = jax.scipy.linalg.cho_solve((_spd_factor(schur), True), reduced)

    def unit(v):
        norm = jnp.linalg.norm(v)
        return jnp.where(norm > _TINY, v / jnp.where(norm > _TINY, norm, 1.0), 0.0)

    basis = jnp.stack([unit(direction), unit(previous_identity_step)], -1)  # (n_i, 2)
    cross_basis = _cross(system, lin, blocks, basis) * free[..., None]
    solved_basis = frame_solve(cross_basis)
    schur_basis = blocks.identity @ basis - _cross_transpose(system, lin, blocks, solved_basis)
    small = basis.T @ schur_basis
    small = 0.5 * (small + small.T)
    small += (1e-6 * jnp.trace(small) + _TINY) * jnp.eye(2, dtype=dtype)
    coefficients = jnp.linalg.solve(small, basis.T @ reduced)
    identity_step = basis @ coefficients
    frame_step = -(frame_part[..., 0] + solved_basis @ coefficients) * free
    return identity_step, frame_step


def block_preconditioner(params, system, points, weights, exists, face_pixels, config, free_expression):
    """An approximate inverse of the energy's Hessian built from the solver's blocks.

    Block LDLᵀ of the Gauss–Newton matrix without the temporal off-diagonal
    coupling: per-frame Cholesky blocks (true temporal diagonal) and the exact
    identity Schur complement over all valid frames (100 right-hand sides per
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
    factor = _factor_blocks(blocks.frames, free)
    schur = _sampled_schur(system, lin, blocks, factor, free, n_frames, config.identity_prior_weight + config.damping)
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
        expression=_clip_expression(params.expression + length * frame_step[:, :n_e], system),
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
        identity_step, frame_step = _newton_step(
            params, system, lin, blocks, g_identity, g_frames, previous_step, config
        )

        def backtrack(search):
            length, _, tries = search
            length = 0.5 * length
            return length, energy(_apply_step(params, system, identity_step, frame_step, length)), tries + 1

        def worse(search):
            _, trial, tries = search
            return ~(trial <= current) & (tries < config.max_backtracks)

        first = energy(_apply_step(params, system, identity_step, frame_step, 1.0))
        length, trial, _ = jax.lax.while_loop(worse, backtrack, (jnp.asarray(1.0, first.dtype), first, 0))
        accepted = trial <= current
        candidate = _apply_step(params, system, identity_step, frame_step, length)
        new_params = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), candidate, params)
        new_energy = jnp.where(accepted, trial, current)
        small = (current - new_energy) <= config.tolerance * jnp.abs(current)
        return (
            new_params,
            new_energy,
            jnp.where(accepted, length * identity_step, 0.0 * identity_step),
            iteration + 1,
            small | ~accepted,
        )

    def keep_going(state):
        return (state[3] < max_iterations) & ~state[4]

    start = energy(params)
    state = (params, start, jnp.zeros_like(params.identity), jnp.asarray(0, jnp.int32), jnp.asarray(False))
    params, final, _, count, converged = jax.lax.while_loop(keep_going, iterate, state)
    return params, SolverDiagnostics(iterations=count, converged=converged, energy=final)
