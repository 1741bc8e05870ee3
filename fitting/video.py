"""Whole-video 3DMM fitting: the paper's pseudo-ground-truth fitter (§III-A).

One identity for the video, an expression and a weak-perspective camera per
frame, all frames solved jointly from their 68 "3D-aware" landmarks (the jaw
points are projections of fixed model vertices, ``model.landmark_indices``).

Composition (one file per step):

* :mod:`fitting.video_init` — usable frames, face size, the paper's
  3DMM-constrained rigid initialisation, per-frame linear expression solve;
* :mod:`fitting.video_solve` — the structured Gauss–Newton solver (linear in
  the number of frames);
* this module — configuration, result, :func:`fit_video` and its implicit
  gradient.

Examples:
  >>> import numpy as np, jax.numpy as jnp
  >>> import morphable
  >>> from fitting.video import fit_video, VideoFitConfig
  >>> rng = np.random.default_rng(0)
  >>> model = morphable.make_model(rng.normal(size=(68, 3)), rng.normal(size=(68, 3, 4)) * 0.1,
  ...                              rng.normal(size=(68, 3, 3)) * 0.1, triangles=[[0, 1, 2]],
  ...                              landmark_indices=range(68))
  >>> camera = morphable.WeakPerspectiveCamera(rotation=jnp.zeros((5, 3)), scale=jnp.full(5, 40.0),
  ...                                         translation=jnp.tile(jnp.array([320.0, 240.0]), (5, 1)))
  >>> truth = morphable.landmarks(model, jnp.zeros(4), jnp.zeros((5, 3)))
  >>> result = fit_video(model, morphable.project(camera, truth))
  >>> bool(result.valid), result.expression.shape, float(result.landmark_rmse.max()) < 0.1
  (True, (5, 3), True)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fitting import spd_blocks
from fitting.video_init import initialise, usable_weights
from fitting.video_solve import (
    OUTER_EYE_CORNERS,
    LandmarkSystem,
    VideoParameters,
    block_preconditioner,
    expression_factor,
    gauss_newton,
    landmark_system,
    project_landmarks,
    video_energy,
)
from morphable.camera import WeakPerspectiveCamera
from morphable.model import MorphableModel

__all__ = ["VideoFitConfig", "VideoFitResult", "fit_video", "fit_video_arrays", "STRUCTURE"]

STRUCTURE = (
    "Gauss-Newton, one jitted while_loop, time and memory linear in frames; only the 68 landmark rows of the "
    "bases; per-frame expression normal blocks from 9 precomputed Gram matrices G_ab (and identity blocks with "
    "frame scalars summed first; expression x rotation/scale coupling from G_ab and the frame's expression); "
    "per-frame (n_e+6)^2 blocks assembled and factorised every iteration inside one batched SIMD Cholesky kernel "
    "(XLA FFI on CPU, 16 frames per AVX lane group, LAPACK/cuSOLVER elsewhere) + one substitution pass with "
    "11 right-hand sides; identity (and a temporal anchor) by exact elimination of the frames over a 2-D global "
    "subspace whose direction comes from the 100-right-hand-side Schur complement computed on a fixed sample of "
    "64 frames (forward substitution only); temporal terms through a diagonal majoriser centred on the anchor "
    "(one majorised block-Jacobi sweep per iteration, no block-tridiagonal solve); projected Newton with a "
    "low-rank bound correction for blendshape bounds; backtracking line search; batches: shard_map over devices, "
    "videos of a CPU shard one after another"
)
"""One-line description of the solver's structure (reported by ``benchmarks/fit.py``)."""


@struct.dataclass(frozen=True)
class VideoFitConfig:
    """Energy weights and solver settings of :func:`fit_video` (all static, hashable).

    The energy, over identity ``i``, per-frame expression ``e_f`` and pose
    ``p_f = (ω_f, log s_f, t_f / face)``:

        E = landmark_weight · Σ_f Σ_k w_fk ‖c (π_fk − y_fk)‖²
            + identity_prior_weight · ‖i‖²
            + expression_prior_weight · Σ_f ‖e_f‖²        (+ lower ≤ e ≤ upper for blendshapes)
            + expression_velocity_weight · Σ_f ‖e_f − e_{f−1}‖²
            + expression_acceleration_weight · Σ_f ‖e_{f+1} − 2 e_f + e_{f−1}‖²
            + pose_velocity_weight · Σ_f ‖p_f − p_{f−1}‖²
            + pose_acceleration_weight · Σ_f ‖p_{f+1} − 2 p_f + p_{f−1}‖²

    ``π_fk`` is the projected model landmark, ``y_fk`` the detected one (pixels),
    ``w_fk`` 1 for an observed landmark of a usable frame. ``c`` rescales pixels
    to a face whose outer eye corners are ``reference_face_size`` pixels apart
    (the face size is measured once per video, see
    :func:`fitting.video_init.usable_weights`), so the weights mean the same at any
    resolution — the convention of :class:`fitting.config.ImageFitConfig`.
    Pose differences are in radians (axis-angle), log-scale and translation in
    face sizes. Read as ``E = −2 log posterior``: ``landmark_weight = 1/σ²`` for
    landmark noise ``σ`` in reference pixels and each prior weight ``1/σ²`` of
    its Gaussian; the expression uncertainty of the result follows this reading.

    Attributes:
      landmark_weight: per reference pixel². Default 1 (σ = 1 px on a face with
        100 px between the outer eye corners — typical of a good detector).
      reference_face_size: outer-eye-corner distance, pixels, the residuals are
        rescaled to. Default 100.
      identity_prior_weight: Gaussian prior on identity (std units). Default 10,
        as :class:`fitting.config.ImageFitConfig`. The expression prior is
        counted once per frame, so with the model's N(0, I) (weight 1) the
        video's mean expression — which 68 landmarks cannot tell from an
        identity offset — would be pushed into the identity (on synthetic ICT
        videos the fitted expression then loses to independent per-frame fits);
        a firmer identity prior keeps it in the expression.
      expression_prior_weight: Gaussian prior of a PCA expression basis (std
        units) or the L2 prior of blendshape weights. Default 10 (as
        :class:`fitting.config.ImageFitConfig`; σ ≈ 0.3): many of ICT's 53
        blendshapes barely move the 68 landmarks or move them like another one
        (e.g. smile vs dimple), and a weaker prior lets landmark noise leak into
        them, while a mouth-opening unit still costs ~100× its prior in misfit.
      expression_velocity_weight, expression_acceleration_weight: temporal
        smoothness of the expression (first and second differences). Defaults
        1 and 10 (σ 1 and 0.3 per frame): a blink (0 → 1 in ~3 frames) still
        fits, landmark jitter on weak blendshapes is damped.
      pose_velocity_weight, pose_acceleration_weight: the same for the pose.
        Defaults 100 and 100 (σ 0.1 rad or 0.1 face per frame).
      iterations: maximum Gauss–Newton iterations. Default 10.
      init_iterations: rounds of the rigid initialisation (cameras ↔ identity).
        Default 3.
      min_landmarks: fewest observed landmarks for a usable frame. Default 6.
      min_face_size: smallest RMS distance of a frame's landmarks to their
        centroid, pixels, for a usable frame (a zero-size face is unusable).
        Default 2.
      min_valid_frames: fewest usable frames for a valid result. Default 5.
      tolerance: stop when an accepted step lowers the energy by less than this
        fraction. Default 1e-6; 0 runs all ``iterations``.
      max_backtracks: step halvings before a step is rejected. Default 4.
      damping: added to the normal matrix's diagonal (dimensionless units);
        keeps frames without any information solvable. Default 1e-6.
      schur_samples: frames sampled to estimate the identity Schur complement
        each iteration (all valid frames when there are fewer). Default 64.
      bound_corrections: per frame and iteration, how many blendshape
        coefficients the Newton step pushes past a bound are put on it with the
        rest of the frame re-optimised (a low-rank update of the factorisation);
        0 is plain projected Newton (clipping). Default 8.
      temporal_anchor: centre the diagonal temporal majoriser on a per-video
        constant solved with the identity, so moving all frames together (the
        scale against the identity's size, the mean expression against the
        identity) is not slowed by the majoriser. Default True.
      implicit_iterations: conjugate-gradient iterations of the implicit
        gradient. Default 100.
      implicit_tolerance: their relative residual tolerance. Default 1e-6.
    """

    landmark_weight: float = struct.field(pytree_node=False, default=1.0)
    reference_face_size: float = struct.field(pytree_node=False, default=100.0)
    identity_prior_weight: float = struct.field(pytree_node=False, default=10.0)
    expression_prior_weight: float = struct.field(pytree_node=False, default=10.0)
    expression_velocity_weight: float = struct.field(pytree_node=False, default=1.0)
    expression_acceleration_weight: float = struct.field(pytree_node=False, default=10.0)
    pose_velocity_weight: float = struct.field(pytree_node=False, default=100.0)
    pose_acceleration_weight: float = struct.field(pytree_node=False, default=100.0)
    iterations: int = struct.field(pytree_node=False, default=10)
    init_iterations: int = struct.field(pytree_node=False, default=3)
    min_landmarks: int = struct.field(pytree_node=False, default=6)
    min_face_size: float = struct.field(pytree_node=False, default=2.0)
    min_valid_frames: int = struct.field(pytree_node=False, default=5)
    tolerance: float = struct.field(pytree_node=False, default=1e-6)
    max_backtracks: int = struct.field(pytree_node=False, default=4)
    damping: float = struct.field(pytree_node=False, default=1e-6)
    schur_samples: int = struct.field(pytree_node=False, default=64)
    bound_corrections: int = struct.field(pytree_node=False, default=8)
    temporal_anchor: bool = struct.field(pytree_node=False, default=True)
    implicit_iterations: int = struct.field(pytree_node=False, default=100)
    implicit_tolerance: float = struct.field(pytree_node=False, default=1e-6)

    def validate(self) -> "VideoFitConfig":
        """Raise ``ValueError`` naming the offending field; return ``self`` when consistent."""
        for name in ("landmark_weight", "reference_face_size"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"VideoFitConfig.{name}: must be positive, got {getattr(self, name)!r}")
        for name in (
            "identity_prior_weight",
            "expression_prior_weight",
            "expression_velocity_weight",
            "expression_acceleration_weight",
            "pose_velocity_weight",
            "pose_acceleration_weight",
            "min_face_size",
            "tolerance",
            "damping",
            "implicit_tolerance",
        ):
            value = getattr(self, name)
            if not (np.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"VideoFitConfig.{name}: must be finite and non-negative, got {value!r}")
        for name in (
            "iterations",
            "init_iterations",
            "min_landmarks",
            "min_valid_frames",
            "max_backtracks",
            "bound_corrections",
            "implicit_iterations",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"VideoFitConfig.{name}: must be a non-negative int, got {value!r}")
        if not isinstance(self.schur_samples, int) or self.schur_samples < 1:
            raise ValueError(f"VideoFitConfig.schur_samples: must be a positive int, got {self.schur_samples!r}")
        if self.identity_prior_weight + self.damping <= 0:
            raise ValueError("VideoFitConfig: identity_prior_weight + damping must be positive")
        return self


@struct.dataclass
class VideoFitResult:
    """The fit of one video (a pytree; all fields finite).

    Attributes:
      identity: ``(n_i,)`` identity coefficients (model units, e.g. std units).
      expression: ``(F, n_e)`` expression coefficients per frame.
      cameras: :class:`morphable.WeakPerspectiveCamera` with batch ``(F,)``:
        rotation axis-angle (radians), scale (pixels per model unit),
        translation (pixels).
      landmark_rmse: ``(F,)`` RMS landmark reprojection error over the frame's
        observed landmarks, pixels (0 on unusable frames).
      landmark_nme: ``(F,)`` the same divided by the outer-eye-corner distance
        (iBUG 37–46, 0-based 36 and 45) of the detected landmarks, or of the
        fitted ones when a corner is missing (0 on unusable frames).
      expression_std: ``(F, n_e)`` expression uncertainty: square root of the
        diagonal of the inverse per-frame expression normal block (data, prior
        and temporal diagonal; pose, identity and neighbouring frames fixed),
        i.e. the Laplace posterior std given those, under the reading of
        :class:`VideoFitConfig`.
      frame_valid: ``(F,)`` bool, frames that had usable landmarks; the others
        are filled in by the temporal terms.
      face_size: ``()`` outer-eye-corner distance of the face, pixels.
      energy: ``()`` final energy.
      iterations: ``()`` Gauss–Newton iterations run.
      converged: ``()`` bool, the tolerance was reached before ``iterations``.
      valid: ``()`` bool, at least ``min_valid_frames`` usable frames and a
        finite solution; when False the parameters are finite placeholders.
    """

    identity: jax.Array
    expression: jax.Array
    cameras: WeakPerspectiveCamera
    landmark_rmse: jax.Array
    landmark_nme: jax.Array
    expression_std: jax.Array
    frame_valid: jax.Array
    face_size: jax.Array
    energy: jax.Array
    iterations: jax.Array
    converged: jax.Array
    valid: jax.Array


# ---------------------------------------------------------------- implicit gradient


def _free_mask(params: VideoParameters, system: LandmarkSystem) -> jax.Array:
    """``(F, n_e)`` 1 for expression coefficients strictly inside their bounds.

    Coefficients on a bound are held there by the constraint, so they do not
    move with the landmarks (one-sided derivative 0).
    """
    at_bound = (params.expression <= system.lower + 1e-6) | (params.expression >= system.upper - 1e-6)
    return (~at_bound).astype(params.expression.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(config, system, points, weights, exists, size):
    return _solve_forward(config, system, points, weights, exists, size)[0]


def _solve_forward(config, system, points, weights, exists, size):
    start = initialise(system, points, weights, size, config)
    params, diagnostics = gauss_newton(start, system, points, weights, exists, size, config)
    return (params, diagnostics), (system, points, weights, exists, size, params)


def _solve_backward(config, residuals, cotangents):
    """Implicit differentiation at the solution: ``ȳ = −(∂²E/∂y∂x)ᵀ (∂²E/∂x²)⁻¹ x̄``.

    ``y`` are the landmarks and the face size (which the caller differentiates
    further through its own formula). The Hessian is applied matrix-free
    (forward-over-reverse: exact second derivatives, not the Gauss–Newton
    approximation) and inverted by conjugate gradients preconditioned with the
    solver's block structure (per-frame Cholesky blocks, identity Schur
    complement over all usable frames). Coefficients held on a blendshape bound
    are excluded (their derivative is 0).
    """
    system, points, weights, exists, size, params = residuals
    params_bar = cotangents[0]
    free = _free_mask(params, system)

    def project(tree):
        return tree.replace(expression=tree.expression * free)

    def gradient(p, y, s):
        return jax.grad(video_energy)(p, system, y, weights, exists, s, config)

    def hessian_vector(v):
        return project(jax.jvp(lambda p: gradient(p, points, size), (params,), (project(v),))[1])

    precondition = block_preconditioner(params, system, points, weights, exists, size, config, free)
    multiplier, _ = jax.scipy.sparse.linalg.cg(
        hessian_vector,
        project(params_bar),
        M=lambda v: project(precondition(project(v))),
        tol=config.implicit_tolerance,
        maxiter=config.implicit_iterations,
    )
    _, pullback = jax.vjp(lambda y, s: gradient(params, y, s), points, size)
    points_bar, size_bar = pullback(jax.tree.map(lambda m: -m, project(multiplier)))
    return None, points_bar, None, None, size_bar


_solve.defvjp(_solve_forward, _solve_backward)


# ---------------------------------------------------------------- result


def _safe_sqrt(x):
    positive = x > 0
    return jnp.sqrt(jnp.where(positive, x, 1.0)) * positive


def _expression_std(params, system, weights, exists, size, config):
    """``(F, n_e)`` sqrt of the diagonal of the inverse expression normal block of each frame."""
    variance = spd_blocks.factor_inverse_diagonal(expression_factor(params, system, weights, exists, size, config))
    return _safe_sqrt(jnp.where(jnp.isfinite(variance), variance, 0.0))


def fit_video_arrays(
    model: MorphableModel,
    landmarks2d: jax.Array,
    mask: jax.Array,
    exists: jax.Array,
    config: VideoFitConfig,
) -> VideoFitResult:
    """The jittable, ``vmap``-able core of :func:`fit_video` (no input validation).

    Args:
      model: the morphable model.
      landmarks2d: ``(F, L, 2)`` pixels; non-finite entries are missing.
      mask: ``(F, L)`` bool, False marks a landmark as missing.
      exists: ``(F,)`` bool, False for padding frames after the end of the video
        (they take no part in any term).
      config: :class:`VideoFitConfig`.

    Returns:
      :class:`VideoFitResult` (padding frames: zeros / invalid).
    """
    system = landmark_system(model)
    dtype = system.mean.dtype
    landmarks2d = jnp.asarray(landmarks2d, dtype)
    exists_f = jnp.asarray(exists).astype(dtype)
    finite = jnp.all(jnp.isfinite(landmarks2d), -1)
    observed = finite & jnp.asarray(mask, bool) & (system.available > 0) & (exists_f[:, None] > 0)
    points = jnp.where(observed[..., None], landmarks2d, 0.0)
    weights, size = usable_weights(system, points, observed.astype(dtype), exists_f, config)
    params, diagnostics = _solve(config, system, points, weights, exists_f, size)

    frame_valid = jnp.any(weights > 0, -1)
    projected = project_landmarks(params, system, size)
    squared = jnp.sum(weights * jnp.sum((projected - points) ** 2, -1), -1)
    count = jnp.sum(weights, -1)
    rmse = _safe_sqrt(squared / jnp.maximum(count, 1.0))
    right, left = OUTER_EYE_CORNERS
    if landmarks2d.shape[1] > left:
        corners_seen = (weights[:, right] > 0) & (weights[:, left] > 0)
        detected = jnp.where(corners_seen[:, None], points[:, right] - points[:, left], projected[:, right] - projected[:, left])
        eye_distance = _safe_sqrt(jnp.sum(detected**2, -1))
    else:
        eye_distance = jnp.broadcast_to(size, rmse.shape)
    nme = jnp.where(eye_distance > 0, rmse / jnp.where(eye_distance > 0, eye_distance, 1.0), 0.0)
    expression_std = _expression_std(params, system, weights, exists_f, size, config)

    def finite_tree(tree):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))

    solution_finite = finite_tree(params) & jnp.isfinite(size) & jnp.isfinite(diagnostics.energy)
    valid = (jnp.sum(frame_valid) >= config.min_valid_frames) & solution_finite

    def clean(x):
        return jnp.where(jnp.isfinite(x), x, 0.0)

    exists_mask = exists_f > 0
    cameras = WeakPerspectiveCamera(
        rotation=clean(params.rotation) * exists_f[:, None],
        scale=jnp.where(exists_mask & jnp.isfinite(params.log_scale), jnp.exp(clean(params.log_scale)), 1.0),
        translation=clean(params.translation * size) * exists_f[:, None],
    )
    return VideoFitResult(
        identity=clean(params.identity),
        expression=clean(params.expression) * exists_f[:, None],
        cameras=cameras,
        landmark_rmse=clean(rmse) * frame_valid,
        landmark_nme=clean(nme) * frame_valid,
        expression_std=clean(expression_std) * exists_f[:, None],
        frame_valid=frame_valid,
        face_size=clean(size),
        energy=clean(diagnostics.energy),
        iterations=diagnostics.iterations,
        converged=diagnostics.converged,
        valid=valid,
    )


_fit_video_jit = jax.jit(fit_video_arrays, static_argnames=("config",))


def _checked_inputs(model: MorphableModel, landmarks2d, mask, name: str = "landmarks2d"):
    """Validate at the edge: shapes and the mask dtype; NaN is allowed (missing).

    JAX arrays (including tracers, so :func:`fit_video` can be differentiated)
    are passed through after the shape checks.
    """
    points = landmarks2d if isinstance(landmarks2d, jax.Array) else np.asarray(landmarks2d, dtype=np.float32)
    n_landmarks = len(model.landmark_indices)
    if points.ndim != 3 or tuple(points.shape[1:]) != (n_landmarks, 2):
        raise ValueError(f"{name}: expected shape (F, {n_landmarks}, 2), got {tuple(points.shape)}")
    if points.shape[0] < 1:
        raise ValueError(f"{name}: the video has no frames")
    n_frames = points.shape[0]
    if mask is None:
        return points, np.ones((n_frames, n_landmarks), bool)
    full = mask if isinstance(mask, jax.Array) else np.asarray(mask)
    if full.dtype != bool:
        raise ValueError(f"mask: expected a bool array, got dtype {full.dtype}")
    if tuple(full.shape) == (n_frames,):
        full = jnp.repeat(jnp.asarray(full)[:, None], n_landmarks, axis=1)
    elif tuple(full.shape) != (n_frames, n_landmarks):
        raise ValueError(f"mask: expected shape ({n_frames}, {n_landmarks}) or ({n_frames},), got {tuple(full.shape)}")
    return points, full


def fit_video(
    model: MorphableModel,
    landmarks2d,
    *,
    mask=None,
    config: VideoFitConfig = VideoFitConfig(),
) -> VideoFitResult:
    """Fit one identity, per-frame expressions and cameras to a video's landmarks.

    Args:
      model: the morphable model (its ``landmark_indices`` give the fixed
        vertex of every landmark; ``-1`` landmarks are ignored).
      landmarks2d: ``(F, L, 2)`` pixels (origin top-left, y down), ``L =
        len(model.landmark_indices)`` (68, iBUG order). NaN/inf = missing.
      mask: ``(F, L)`` or ``(F,)`` bool, False = missing landmark / frame.
      config: :class:`VideoFitConfig`.

    Returns:
      :class:`VideoFitResult`. Differentiable with respect to ``landmarks2d``
      by implicit differentiation at the solution (see :func:`_solve_backward`):
      exact when the fit has converged (``result.converged``; raise
      ``config.iterations`` or lower ``tolerance`` for gradients that matter);
      held blendshape coefficients (on a bound) get derivative 0. Compiled once
      per (model layout, number of frames, config).

    Raises:
      ValueError: on a wrong shape or mask dtype, or an inconsistent config.
    """
    config.validate()
    points, full = _checked_inputs(model, landmarks2d, mask)
    exists = jnp.ones(points.shape[0], bool)
    return _fit_video_jit(model, points, full, exists, config)
