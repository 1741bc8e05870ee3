"""Tests of the whole-video fitter (fitting.video, fitting.video_init, fitting.video_solve)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import morphable
from fitting import video_init, video_solve
from fitting.batch import fit_video_batch
from fitting.video import VideoFitConfig, fit_video, fit_video_arrays

# One model layout, configuration and video length for the small-model fits, so
# they share a single compiled program; fully converged (fixed 40 iterations) so
# finite differences of the solution are meaningful.
SMALL_FRAMES = 12
SMALL_CONFIG = VideoFitConfig(min_valid_frames=3, iterations=40, tolerance=0.0)


def _small_model(kind: str = "blendshape", seed: int = 0, unavailable=()) -> morphable.MorphableModel:
    """A random face-sized model: 70 vertices, the first 68 are the landmarks (``-1`` for ``unavailable``)."""
    rng = np.random.default_rng(seed)
    indices = [-1 if k in unavailable else k for k in range(68)]
    mean = rng.normal(size=(70, 3)) * np.array([4.0, 5.0, 2.0])
    return morphable.make_model(
        mean,
        rng.normal(size=(70, 3, 5)) * 0.3,
        rng.normal(size=(70, 3, 4)) * 0.3,
        triangles=[[0, 1, 2]],
        landmark_indices=indices,
        expression_kind=kind,
    )


def _small_video(model, n_frames: int = SMALL_FRAMES, seed: int = 1, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    identity = jnp.asarray(rng.normal(size=model.n_identity) * 0.5, jnp.float32)
    phase = np.arange(n_frames)[:, None] * 0.3 + rng.uniform(0, 6, model.n_expression)
    expression = jnp.asarray(0.5 + 0.3 * np.sin(phase), jnp.float32)
    camera = morphable.WeakPerspectiveCamera(
        rotation=jnp.asarray(np.stack([0.1 * np.sin(np.arange(n_frames) * 0.2), 0.2 * np.cos(np.arange(n_frames) * 0.1), np.zeros(n_frames)], -1), jnp.float32),
        scale=jnp.full(n_frames, 12.0),
        translation=jnp.tile(jnp.array([320.0, 240.0]), (n_frames, 1)),
    )
    points = morphable.project(camera, morphable.landmarks(model, identity, expression))
    return np.asarray(points) + noise * rng.normal(size=(n_frames, 68, 2)).astype(np.float32)


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------- edge validation


@pytest.mark.parametrize(
    "field, value",
    [("landmark_weight", 0.0), ("identity_prior_weight", -1.0), ("iterations", -1), ("schur_samples", 0), ("tolerance", float("nan"))],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        VideoFitConfig(**{field: value}).validate()


def test_fit_video_rejects_wrong_shapes():
    model = _small_model()
    with pytest.raises(ValueError, match="landmarks2d"):
        fit_video(model, np.zeros((4, 67, 2)))
    with pytest.raises(ValueError, match="mask"):
        fit_video(model, np.zeros((4, 68, 2)), mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="mask"):
        fit_video(model, np.zeros((4, 68, 2)), mask=np.ones((4, 68)))


def test_fill_gaps_interpolates_and_holds():
    values = jnp.array([[9.0], [0.0], [9.0], [9.0], [3.0], [9.0]])
    valid = jnp.array([False, True, False, False, True, False])
    filled = video_init.fill_gaps(values, valid)[:, 0]
    np.testing.assert_allclose(np.asarray(filled), [0.0, 0.0, 1.0, 2.0, 3.0, 3.0], atol=1e-6)


# ---------------------------------------------------------------- solver structure


def test_structured_gradient_and_blocks_match_autodiff():
    """The Gram-matrix normal blocks and the hand-written gradient against jax.grad / jacfwd."""
    model = _small_model()
    config = SMALL_CONFIG
    points = jnp.asarray(_small_video(model, 5))
    system = video_solve.landmark_system(model)
    exists = jnp.ones(5)

    @jax.jit
    def start(points):
        weights, size = video_init.usable_weights(system, points, jnp.ones((5, 68)), exists, config)
        params = video_init.initialise(system, points, weights, size, config)
        return weights, size, params.replace(rotation=params.rotation + 0.05, expression=params.expression + 0.1)

    weights, size, params = start(points)

    def energy(p):
        return video_solve.video_energy(p, system, points, weights, exists, size, config)

    g_identity, g_frames = jax.jit(video_solve.energy_gradient, static_argnums=6)(
        params, system, points, weights, exists, size, config
    )
    auto = jax.jit(jax.grad(energy))(params)
    auto_frames = jnp.concatenate([auto.expression, auto.pose()], -1)
    np.testing.assert_allclose(2 * g_identity, auto.identity, rtol=1e-3, atol=1e-3 * float(jnp.abs(auto.identity).max()))
    np.testing.assert_allclose(2 * g_frames, auto_frames, rtol=1e-3, atol=1e-3 * float(jnp.abs(auto_frames).max()))

    # Half the Hessian of the data term of frame 2 in its own unknowns, from the Jacobian.
    frame = 2
    weight = config.landmark_weight * (config.reference_face_size / size) ** 2

    def residual(z):
        p = params.replace(expression=params.expression.at[frame].set(z[:4])).with_pose(params.pose().at[frame].set(z[4:]))
        return (jnp.sqrt(weight) * (video_solve.project_landmarks(p, system, size)[frame] - points[frame])).ravel()

    jacobian = jax.jit(jax.jacfwd(residual))(jnp.concatenate([params.expression[frame], params.pose()[frame]]))
    blocks, identity_block = jax.jit(video_solve.frame_blocks, static_argnums=6)(
        params, system, points, weights, exists, size, config
    )
    data_block = jacobian.T @ jacobian
    off_diagonal = (blocks[frame] - data_block) - jnp.diag(jnp.diagonal(blocks[frame] - data_block))
    assert float(jnp.abs(off_diagonal).max()) < 1e-4 * float(jnp.abs(data_block).max())
    assert identity_block.shape == (model.n_identity, model.n_identity)


def _all_shapes(jaxpr):
    """Every intermediate's shape in a (closed) jaxpr, sub-jaxprs included."""
    shapes = []
    for equation in jaxpr.eqns:
        shapes.extend(tuple(v.aval.shape) for v in equation.outvars if hasattr(v.aval, "shape"))
        for param in equation.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes.extend(_all_shapes(inner))
    return shapes


def test_no_intermediate_couples_frames_quadratically():
    """Memory is linear in frames: no array has two frame-sized axes, none outgrows F × (per-frame size).

    A dense Gauss–Newton matrix over all frames would show up as an
    ``(F·p, F·p)`` or ``(F, p, F, p)`` array. 211 frames (more than every
    model dimension) make frame-sized axes recognisable.
    """
    model = _small_model()
    n_frames = 211
    jaxpr = jax.make_jaxpr(fit_video_arrays, static_argnums=(4,))(
        model, jnp.zeros((n_frames, 68, 2)), jnp.ones((n_frames, 68), bool), jnp.ones(n_frames, bool), SMALL_CONFIG
    )
    shapes = _all_shapes(jaxpr.jaxpr)
    assert any(n_frames in shape for shape in shapes)
    for shape in shapes:
        assert len([d for d in shape if d >= n_frames]) <= 1, shape
        size = int(np.prod(shape)) if shape else 1
        assert size <= n_frames * 68 * 2 * 16, shape


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_model():
    """A PCA model (no bounds) with two jaw landmarks without a model vertex (index −1),
    as in models that ship no fixed contour."""
    return _small_model("pca", seed=3, unavailable=(0, 16))


def test_all_missing_video_is_flagged_and_finite(small_model):
    result = fit_video(small_model, np.full((SMALL_FRAMES, 68, 2), np.nan, np.float32), config=SMALL_CONFIG)
    assert not bool(result.valid)
    assert not np.any(np.asarray(result.frame_valid))
    assert _all_finite(result)


def test_missing_rows_frames_and_masks(small_model):
    landmarks = _small_video(small_model)
    landmarks[2] = np.nan  # a whole frame missing
    landmarks[5, :20] = np.nan  # some landmarks of a frame missing
    landmarks[7, 3, 0] = np.inf  # one non-finite coordinate
    landmarks[:, [0, 16]] = 1e4  # landmarks without a model vertex must be ignored
    mask = np.ones(SMALL_FRAMES, bool)
    mask[9] = False  # a frame masked out
    result = fit_video(small_model, landmarks, mask=mask, config=SMALL_CONFIG)
    assert bool(result.valid)
    assert _all_finite(result)
    expected = np.ones(SMALL_FRAMES, bool)
    expected[[2, 9]] = False
    np.testing.assert_array_equal(np.asarray(result.frame_valid), expected)
    rmse = np.asarray(result.landmark_rmse)
    assert rmse[2] == 0 and rmse[9] == 0
    # Noise σ = 0.5 px per coordinate: a 2-D residual RMS of ≈ 0.7 px, less the fitted degrees of freedom.
    assert 0.3 < float(np.sqrt(np.mean(rmse[expected] ** 2))) < 1.0


def test_zero_size_face_is_flagged_and_finite(small_model):
    landmarks = np.tile(np.array([[320.0, 240.0]], np.float32), (SMALL_FRAMES, 68, 1))
    result = fit_video(small_model, landmarks, config=SMALL_CONFIG)
    assert not bool(result.valid)
    assert not np.any(np.asarray(result.frame_valid))
    assert _all_finite(result)


def test_collinear_landmarks_make_frames_unusable(small_model):
    landmarks = _small_video(small_model)
    line = np.linspace(0.0, 100.0, 68, dtype=np.float32)
    landmarks[[1, 4]] = np.stack([200 + line, 100 + 0.5 * line], -1)
    result = fit_video(small_model, landmarks, config=SMALL_CONFIG)
    assert bool(result.valid)
    assert _all_finite(result)
    frame_valid = np.asarray(result.frame_valid)
    assert not frame_valid[1] and not frame_valid[4] and frame_valid.sum() == SMALL_FRAMES - 2


# ---------------------------------------------------------------- implicit gradient


def test_implicit_gradient_matches_finite_differences(small_model):
    """d(Σ w ⊙ expression)/d(landmarks) by implicit differentiation vs central differences.

    A PCA model (no bounds), twelve frames, fully converged (40 iterations).
    The four landmark coordinates with the largest gradient are perturbed by
    ±0.5 px; in float32 the difference quotient is good to ~1 %.
    """
    landmarks = jnp.asarray(_small_video(small_model, noise=1.0, seed=4))
    loss_weights = jnp.asarray(np.random.default_rng(5).normal(size=(SMALL_FRAMES, small_model.n_expression)), jnp.float32)

    def loss(points):
        return jnp.sum(loss_weights * fit_video(small_model, points, config=SMALL_CONFIG).expression)

    gradient = np.asarray(jax.grad(loss)(landmarks))
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 1e-3
    assert np.all(gradient[:, [0, 16]] == 0)  # landmarks without a model vertex do not matter
    for index in np.argsort(-np.abs(gradient).ravel())[:4]:
        direction = np.zeros(gradient.size, np.float32)
        direction[index] = 0.5
        direction = direction.reshape(gradient.shape)
        finite_difference = float(loss(landmarks + direction) - loss(landmarks - direction))
        assert finite_difference == pytest.approx(float(gradient.ravel()[index]), rel=0.03)


# ---------------------------------------------------------------- recovery on ICT


def _ict_video(model, n_frames: int, seed: int):
    """A talking head: identity 0.7·N(0, 1); eight blendshapes following sinusoids in [0, 1];
    yaw ±20°, pitch ±12°, roll ±5°; ~116 px between the outer eye corners in a 640×480
    frame; 1 px Gaussian landmark noise; 10 % of frames missing."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / 30.0
    identity = 0.7 * rng.normal(size=model.n_identity)
    expression = np.zeros((n_frames, model.n_expression))
    names = list(model.expression_names)
    for name in ("jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "browInnerUp_R", "eyeBlink_L", "eyeBlink_R", "mouthFunnel"):
        amplitude = rng.uniform(0.5, 1.0)
        expression[:, names.index(name)] = amplitude * 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6)))
    angles = np.stack(
        [20 * np.sin(2 * np.pi * 0.15 * t + rng.uniform(0, 6)), 12 * np.sin(2 * np.pi * 0.23 * t + rng.uniform(0, 6)), 5 * np.sin(2 * np.pi * 0.1 * t)],
        -1,
    )
    scale = 13.0 * (1 + 0.1 * np.sin(2 * np.pi * 0.05 * t))
    camera = morphable.WeakPerspectiveCamera(
        rotation=morphable.rotation.euler_to_axis_angle(jnp.asarray(angles, jnp.float32)),
        scale=jnp.asarray(scale, jnp.float32),
        translation=jnp.asarray(np.stack([320 + 30 * np.sin(2 * np.pi * 0.07 * t), 240 + 20 * np.sin(2 * np.pi * 0.11 * t)], -1), jnp.float32),
    )
    points = morphable.landmarks(model, jnp.asarray(identity, jnp.float32), jnp.asarray(expression, jnp.float32))
    landmarks = np.asarray(morphable.project(camera, points)) + rng.normal(size=(n_frames, 68, 2))
    missing = rng.random(n_frames) < 0.1
    landmarks[missing] = np.nan
    return landmarks.astype(np.float32), expression, angles, scale, missing


def test_recovery_on_synthetic_ict_video(ict_model):
    """Known identity / expression / pose trajectories, 1 px noise, 10 % missing frames.

    Tolerances (measured values in brackets, default configuration, 10 iterations):
    * landmark RMS error on valid frames ≈ the noise: a 2-D residual of σ = 1 px
      per coordinate has RMS √2 ≈ 1.41 px, less what the 159 + 53·F unknowns
      absorb → 1.1–1.4 px [1.25];
    * expression coefficients (all 53, valid frames) RMSE < 0.13 [≈ 0.095] —
      the active coefficients span [0, 1]; many blendshapes barely move the
      landmarks or move them like others, which limits recovery at 1 px noise;
    * filled-in (missing) frames: finite, RMSE < 0.16 (interpolated by the
      temporal terms);
    * the video fit beats independent per-frame fits of the same frames (the
      same solver, one frame per video, own identity) by ≥ 10 % [≈ 24 %];
    * head yaw within 3° on valid frames.
    """
    landmarks, expression, angles, scale, missing = _ict_video(ict_model, 60, seed=0)
    valid = ~missing
    config = VideoFitConfig()
    result = fit_video(ict_model, landmarks, config=config)
    assert bool(result.valid)
    assert _all_finite(result)
    np.testing.assert_array_equal(np.asarray(result.frame_valid), valid)

    rmse = np.asarray(result.landmark_rmse)
    assert 1.1 < float(np.sqrt(np.mean(rmse[valid] ** 2))) < 1.4
    assert np.all(np.asarray(result.landmark_nme)[valid] < 0.02)

    error = np.asarray(result.expression) - expression
    video_rmse = float(np.sqrt(np.mean(error[valid] ** 2)))
    assert video_rmse < 0.13
    assert float(np.sqrt(np.mean(error[missing] ** 2))) < 0.16
    lower, upper = np.asarray(ict_model.expression_lower), np.asarray(ict_model.expression_upper)
    assert np.all(np.asarray(result.expression) >= lower - 1e-6) and np.all(np.asarray(result.expression) <= upper + 1e-6)
    std = np.asarray(result.expression_std)
    assert np.all(std > 0) and np.all(std < 1)

    yaw = np.asarray(morphable.rotation.axis_angle_to_euler(result.cameras.rotation))[:, 0]
    assert float(np.max(np.abs(yaw - angles[:, 0])[valid])) < 3.0

    stacked = jnp.asarray(landmarks)[:, None]
    per_frame = fit_video_batch(
        ict_model,
        stacked,
        jnp.ones(stacked.shape[:3], bool),
        jnp.ones(stacked.shape[:2], bool),
        config=config.replace(min_valid_frames=1),
        devices=jax.local_devices()[:1],
    )
    per_frame_error = np.asarray(per_frame.expression[:, 0]) - expression
    per_frame_rmse = float(np.sqrt(np.mean(per_frame_error[valid] ** 2)))
    assert video_rmse < 0.9 * per_frame_rmse, (video_rmse, per_frame_rmse)


def test_model_without_expressions_fits_rigid_video():
    """A model with no expression components (identity only) fits a rigid face exactly."""
    rng = np.random.default_rng(0)
    model = morphable.make_model(
        rng.normal(size=(70, 3)) * [4.0, 5.0, 2.0],
        rng.normal(size=(70, 3, 5)) * 0.3,
        np.zeros((70, 3, 0)),
        triangles=[[0, 1, 2]],
        landmark_indices=range(68),
    )
    identity = jnp.asarray(rng.normal(size=5) * 0.5, jnp.float32)
    points = np.asarray(morphable.landmarks(model, identity, jnp.zeros(0)))[:, :2] * 12.0 + 300.0
    result = fit_video(model, np.repeat(points[None], 8, 0).astype(np.float32))
    assert bool(result.valid)
    assert result.expression.shape == (8, 0)
    assert float(np.max(np.asarray(result.landmark_rmse))) < 0.05
