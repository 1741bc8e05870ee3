"""Tests of the linear weak-perspective camera estimate (Gold-Standard affine camera).

The ground truth is built with NumPy and SciPy's rotations (an independent
oracle for the projection convention ``u = s·(R X)_x + t_x, v = −s·(R X)_y + t_y``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fitting.camera_estimate import estimate_weak_perspective


def _random_cameras(rng, batch):
    rotvec = Rotation.from_euler("YXZ", rng.uniform([-60, -30, -20], [60, 30, 20], size=(batch, 3)), degrees=True)
    return rotvec.as_matrix(), rng.uniform(0.5, 8.0, batch), rng.uniform(50, 900, (batch, 2))


def _project(matrices, scales, translations, points3d):
    rotated = np.einsum("bij,bpj->bpi", matrices, points3d)
    return (scales[:, None, None] * rotated[..., :2] * np.array([1.0, -1.0]) + translations[:, None, :]).astype(
        np.float32
    )


def _face_like_points(rng, batch, n=68):
    # A flattened ellipsoid cloud, like landmarks: wide in x/y, shallower in z.
    return (rng.normal(size=(batch, n, 3)) * np.array([60.0, 70.0, 25.0])).astype(np.float32)


def _matrices(camera):
    return Rotation.from_rotvec(np.asarray(camera.rotation, np.float64).reshape(-1, 3)).as_matrix()


def test_recovers_known_camera_noiseless():
    rng = np.random.default_rng(1)
    matrices, scales, translations = _random_cameras(rng, 16)
    points3d = _face_like_points(rng, 16)
    points2d = _project(matrices, scales, translations, points3d)
    camera, valid = estimate_weak_perspective(points3d, points2d)
    assert camera.scale.shape == (16,) and camera.translation.shape == (16, 2)
    assert bool(np.all(valid))
    np.testing.assert_allclose(camera.scale, scales, rtol=1e-4)
    np.testing.assert_allclose(_matrices(camera), matrices, atol=1e-4)
    # Translation relative to the image extent of the points (pixels).
    extent = scales[:, None] * 70.0
    assert np.all(np.abs(np.asarray(camera.translation) - translations) < 1e-4 * extent)


def test_noisy_points_give_close_camera():
    rng = np.random.default_rng(2)
    matrices, scales, translations = _random_cameras(rng, 8)
    points3d = _face_like_points(rng, 8)
    points2d = _project(matrices, scales, translations, points3d) + rng.normal(size=(8, 68, 2)).astype(np.float32)
    camera, valid = estimate_weak_perspective(points3d, points2d)
    assert bool(np.all(valid))
    # 1 px noise on 68 points spread over >= 35 px: a few per cent in scale.
    np.testing.assert_allclose(camera.scale, scales, rtol=0.05)
    fitted = _project(_matrices(camera), np.asarray(camera.scale), np.asarray(camera.translation), points3d)
    assert float(np.sqrt(np.mean((fitted - points2d) ** 2))) < 1.5


def test_zero_weight_garbage_points_are_ignored():
    rng = np.random.default_rng(3)
    matrices, scales, translations = _random_cameras(rng, 4)
    points3d = _face_like_points(rng, 4)
    points2d = _project(matrices, scales, translations, points3d)
    weights = np.ones((4, 68), np.float32)
    weights[:, :20] = 0.0
    garbage2d = points2d.copy()
    garbage2d[:, :10] = 1e6
    garbage2d[:, 10:20] = np.nan
    garbage3d = points3d.copy()
    garbage3d[:, 15] = np.inf
    camera, valid = estimate_weak_perspective(garbage3d, garbage2d, weights)
    assert bool(np.all(valid))
    np.testing.assert_allclose(camera.scale, scales, rtol=1e-4)
    np.testing.assert_allclose(_matrices(camera), matrices, atol=1e-4)
    # Without the weights the garbage must change the answer (so the test can fail).
    unweighted, _ = estimate_weak_perspective(
        np.where(np.isfinite(garbage3d), garbage3d, 0.0), np.where(np.isfinite(garbage2d), garbage2d, 0.0)
    )
    assert not np.allclose(unweighted.scale, scales, rtol=1e-2)


def test_weights_act_like_repeated_points():
    rng = np.random.default_rng(4)
    matrices, scales, translations = _random_cameras(rng, 1)
    points3d = _face_like_points(rng, 1)
    points2d = _project(matrices, scales, translations, points3d) + rng.normal(size=(1, 68, 2)).astype(np.float32)
    weights = rng.integers(1, 4, size=68)
    weighted, _ = estimate_weak_perspective(points3d[0], points2d[0], weights.astype(np.float32))
    repeated, _ = estimate_weak_perspective(
        np.repeat(points3d[0], weights, axis=0), np.repeat(points2d[0], weights, axis=0)
    )
    np.testing.assert_allclose(weighted.scale, repeated.scale, rtol=1e-4)
    np.testing.assert_allclose(weighted.translation, repeated.translation, atol=1e-2)
    uniform, _ = estimate_weak_perspective(points3d[0], points2d[0])
    assert not np.allclose(uniform.translation, weighted.translation, atol=1e-3)


@pytest.mark.parametrize(
    "case", ["collinear2d", "collinear3d", "all_equal2d", "all_equal3d", "three_points", "all_missing"]
)
def test_degenerate_input_is_flagged_and_finite(case):
    rng = np.random.default_rng(5)
    points3d = _face_like_points(rng, 1)[0]
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
    camera, valid = estimate_weak_perspective(points3d, points2d, weights)
    assert not bool(valid)
    for leaf in jax.tree_util.tree_leaves(camera):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(camera.scale) > 0


def test_batch_matches_single_calls():
    rng = np.random.default_rng(6)
    matrices, scales, translations = _random_cameras(rng, 6)
    points3d = _face_like_points(rng, 6)
    points2d = _project(matrices, scales, translations, points3d) + rng.normal(size=(6, 68, 2)).astype(np.float32)
    batched, _ = estimate_weak_perspective(points3d.reshape(2, 3, 68, 3), points2d.reshape(2, 3, 68, 2))
    assert batched.rotation.shape == (2, 3, 3)
    for k in range(6):
        single, _ = estimate_weak_perspective(points3d[k], points2d[k])
        np.testing.assert_allclose(np.asarray(batched.scale).reshape(6)[k], single.scale, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(batched.translation).reshape(6, 2)[k], single.translation, atol=1e-3)


def test_projection_convention_y_down():
    # A point above the model origin (y up) lands above the origin's image (smaller v).
    points3d = np.array([[0, 0, 0], [0, 10, 0], [10, 0, 0], [0, 0, 10], [5, 5, 5]], np.float32)
    points2d = _project(np.eye(3)[None], np.array([2.0]), np.array([[100.0, 200.0]]), points3d[None])[0]
    assert points2d[1, 1] < 200.0
    camera, valid = estimate_weak_perspective(points3d, points2d)
    assert bool(valid)
    np.testing.assert_allclose(camera.rotation, np.zeros(3), atol=1e-5)
    np.testing.assert_allclose(camera.scale, 2.0, rtol=1e-5)
    np.testing.assert_allclose(camera.translation, [100.0, 200.0], atol=1e-3)
