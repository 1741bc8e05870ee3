"""Tests of the linear weak-perspective camera estimate (Gold-Standard affine camera)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import morphable
from fitting.camera_estimate import estimate_weak_perspective


def _random_cameras(rng, batch):
    yaw_pitch_roll = rng.uniform([-60, -30, -20], [60, 30, 20], size=(batch, 3))
    return morphable.WeakPerspectiveCamera(
        rotation=morphable.rotation.euler_to_axis_angle(jnp.asarray(yaw_pitch_roll, jnp.float32)),
        scale=jnp.asarray(rng.uniform(0.5, 8.0, batch), jnp.float32),
        translation=jnp.asarray(rng.uniform(50, 900, (batch, 2)), jnp.float32),
    )


def _face_like_points(rng, batch, n=68):
    # A flattened ellipsoid cloud, like landmarks: wide in x/y, shallower in z.
    return jnp.asarray(rng.normal(size=(batch, n, 3)) * np.array([60.0, 70.0, 25.0]), jnp.float32)


def test_recovers_known_camera_noiseless():
    rng = np.random.default_rng(1)
    truth = _random_cameras(rng, 16)
    points3d = _face_like_points(rng, 16)
    points2d = morphable.project(truth, points3d)
    camera, valid = jax.jit(estimate_weak_perspective)(points3d, points2d)
    assert camera.scale.shape == (16,) and camera.translation.shape == (16, 2)
    assert bool(jnp.all(valid))
    np.testing.assert_allclose(camera.scale, truth.scale, rtol=1e-4)
    matrices = morphable.rotation.axis_angle_to_matrix(camera.rotation)
    expected = morphable.rotation.axis_angle_to_matrix(truth.rotation)
    np.testing.assert_allclose(matrices, expected, atol=1e-4)
    # Translation relative to the image extent of the points (pixels).
    extent = np.asarray(truth.scale)[:, None] * 70.0
    assert np.all(np.abs(np.asarray(camera.translation - truth.translation)) < 1e-4 * extent)


def test_noisy_points_give_close_camera():
    rng = np.random.default_rng(2)
    truth = _random_cameras(rng, 8)
    points3d = _face_like_points(rng, 8)
    points2d = morphable.project(truth, points3d) + rng.normal(size=(8, 68, 2)).astype(np.float32)
    camera, valid = estimate_weak_perspective(points3d, points2d)
    assert bool(jnp.all(valid))
    # 1 px noise on ~68 points spread over >= 35 px: a few per cent in scale.
    np.testing.assert_allclose(camera.scale, truth.scale, rtol=0.05)
    residual = morphable.project(camera, points3d) - points2d
    assert float(jnp.sqrt(jnp.mean(residual**2))) < 1.5


def test_zero_weight_garbage_points_are_ignored():
    rng = np.random.default_rng(3)
    truth = _random_cameras(rng, 4)
    points3d = _face_like_points(rng, 4)
    points2d = morphable.project(truth, points3d)
    weights = np.ones((4, 68), np.float32)
    weights[:, :20] = 0.0
    garbage2d = np.asarray(points2d).copy()
    garbage2d[:, :10] = 1e6
    garbage2d[:, 10:20] = np.nan
    garbage3d = np.asarray(points3d).copy()
    garbage3d[:, 15] = np.inf
    camera, valid = estimate_weak_perspective(garbage3d, garbage2d, weights)
    assert bool(jnp.all(valid))
    np.testing.assert_allclose(camera.scale, truth.scale, rtol=1e-4)
    np.testing.assert_allclose(
        morphable.rotation.axis_angle_to_matrix(camera.rotation),
        morphable.rotation.axis_angle_to_matrix(truth.rotation),
        atol=1e-4,
    )
    # Without the weights the garbage must change the answer (the test can fail).
    finite2d = np.where(np.isfinite(garbage2d), garbage2d, 0.0)
    unweighted, _ = estimate_weak_perspective(np.where(np.isfinite(garbage3d), garbage3d, 0.0), finite2d)
    assert not np.allclose(unweighted.scale, truth.scale, rtol=1e-2)


def test_weights_scale_the_least_squares():
    rng = np.random.default_rng(4)
    truth = _random_cameras(rng, 1)
    points3d = _face_like_points(rng, 1)[0]
    points2d = morphable.project(truth, points3d)[0] + rng.normal(size=(68, 2)).astype(np.float32)
    # Integer weights equal repeating points.
    weights = rng.integers(1, 4, size=68)
    repeated3d = np.repeat(np.asarray(points3d), weights, axis=0)
    repeated2d = np.repeat(np.asarray(points2d), weights, axis=0)
    weighted, _ = estimate_weak_perspective(points3d, points2d, weights.astype(np.float32))
    repeated, _ = estimate_weak_perspective(repeated3d, repeated2d)
    np.testing.assert_allclose(weighted.scale, repeated.scale, rtol=1e-4)
    np.testing.assert_allclose(weighted.translation, repeated.translation, atol=1e-2)


@pytest.mark.parametrize(
    "case",
    ["collinear2d", "collinear3d", "all_equal2d", "all_equal3d", "three_points", "all_missing"],
)
def test_degenerate_input_is_flagged_and_finite(case):
    rng = np.random.default_rng(5)
    points3d = np.asarray(_face_like_points(rng, 1)[0])
    points2d = rng.uniform(0, 500, size=(68, 2)).astype(np.float32)
    weights = np.ones(68, np.float32)
    t = np.linspace(0.0, 1.0, 68, dtype=np.float32)[:, None]
    if case == "collinear2d":
        points2d = 100.0 + t * np.array([[300.0, 120.0]], np.float32)
    elif case == "collinear3d":
        points3d = t * np.array([[10.0, 20.0, 5.0]], np.float32)
    elif case == "all_equal2d":
        points2d = np.full((68, 2), 321.0, np.float32)
    elif case == "all_equal3d":
        points3d = np.full((68, 3), 4.0, np.float32)
    elif case == "three_points":
        weights[3:] = 0.0
    elif case == "all_missing":
        points2d[:] = np.nan
    camera, valid = jax.jit(estimate_weak_perspective)(points3d, points2d, weights)
    assert not bool(valid)
    for leaf in jax.tree_util.tree_leaves(camera):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(camera.scale) > 0


def test_batch_matches_single_calls():
    rng = np.random.default_rng(6)
    truth = _random_cameras(rng, 6)
    points3d = _face_like_points(rng, 6)
    points2d = morphable.project(truth, points3d) + rng.normal(size=(6, 68, 2)).astype(np.float32)
    batched, _ = estimate_weak_perspective(points3d.reshape(2, 3, 68, 3), points2d.reshape(2, 3, 68, 2))
    assert batched.rotation.shape == (2, 3, 3)
    for k in range(6):
        single, _ = estimate_weak_perspective(points3d[k], points2d[k])
        np.testing.assert_allclose(batched.scale.reshape(6)[k], single.scale, rtol=1e-5)
        np.testing.assert_allclose(batched.translation.reshape(6, 2)[k], single.translation, atol=1e-3)


def test_projection_convention_y_down():
    # A point above the model origin (y up) must land above the origin's image (smaller v).
    points3d = np.array([[0, 0, 0], [0, 10, 0], [10, 0, 0], [0, 0, 10], [5, 5, 5]], np.float32)
    truth = morphable.WeakPerspectiveCamera(
        rotation=jnp.zeros(3), scale=jnp.array(2.0), translation=jnp.array([100.0, 200.0])
    )
    points2d = morphable.project(truth, points3d)
    assert float(points2d[1, 1]) < 200.0
    camera, valid = estimate_weak_perspective(points3d, points2d)
    assert bool(valid)
    np.testing.assert_allclose(camera.rotation, np.zeros(3), atol=1e-5)
    np.testing.assert_allclose(camera.translation, [100.0, 200.0], atol=1e-3)
