"""Cameras against hand-written NumPy projections (rotations from scipy), the
far-distance limit, gradients and batching.

Compilation dominates the run time on CPU, so the three camera types are
projected together through one jitted function wherever the shapes allow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

from morphable.camera import (
    OrthographicCamera,
    PerspectiveCamera,
    WeakPerspectiveCamera,
    depth,
    project,
    to_camera_frame,
    weak_perspective_limit,
)

N_POINTS = 5


# ---------------------------------------------------------------------------
# NumPy references (float64), one camera and one point set at a time
# ---------------------------------------------------------------------------


def _rotate(rotation, points):
    return Rotation.from_rotvec(np.asarray(rotation, np.float64)).as_matrix() @ np.asarray(points, np.float64).T


def reference_orthographic(rotation, translation, points):
    x, y, _ = _rotate(rotation, points)
    return np.stack([x + translation[0], -y + translation[1]], axis=-1)  # image y points down


def reference_weak_perspective(rotation, scale, translation, points):
    x, y, _ = _rotate(rotation, points)
    return np.stack([scale * x + translation[0], -scale * y + translation[1]], axis=-1)


def reference_perspective(rotation, translation, focal, principal_point, points):
    x, y, z = _rotate(rotation, points) + np.asarray(translation, np.float64)[:, None]
    # The camera looks down −z with y up; the image has y down.
    return np.stack([principal_point[0] + focal * x / -z, principal_point[1] - focal * y / -z], axis=-1)


def _cameras(seed: int, batch=()):
    """Random cameras of the three kinds with batch dims ``batch`` (float32)."""
    rng = np.random.default_rng(seed)

    def field(*trailing, low=-1.0, high=1.0):
        return rng.uniform(low, high, size=(*batch, *trailing)).astype(np.float32)

    orthographic = OrthographicCamera(rotation=field(3), translation=field(2, low=50, high=150))
    weak = WeakPerspectiveCamera(
        rotation=field(3), scale=field(low=2, high=10), translation=field(2, low=50, high=150)
    )
    perspective = PerspectiveCamera(
        rotation=field(3),
        translation=np.concatenate([field(2, low=-0.5, high=0.5), field(1, low=-12, high=-6)], axis=-1),
        focal=field(low=500, high=1500),
        principal_point=field(2, low=100, high=200),
    )
    return jax.tree.map(jnp.asarray, (orthographic, weak, perspective))


def _points(seed: int, batch=()):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1.0, 1.0, size=(*batch, N_POINTS, 3)), jnp.float32)


def _references(cameras, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy projections for unbatched cameras and points ``(P, 3)``."""
    orthographic, weak, perspective = jax.tree.map(lambda x: np.asarray(x, np.float64), cameras)
    return (
        reference_orthographic(orthographic.rotation, orthographic.translation, points),
        reference_weak_perspective(weak.rotation, weak.scale, weak.translation, points),
        reference_perspective(
            perspective.rotation, perspective.translation, perspective.focal, perspective.principal_point, points
        ),
    )


@jax.jit
def _project_all(cameras, points):
    return tuple(project(camera, points) for camera in cameras)


# ---------------------------------------------------------------------------
# Against the references
# ---------------------------------------------------------------------------


def test_project_matches_numpy_reference_for_each_camera_type():
    cameras, points = _cameras(0), _points(1)
    for name, ours, expected in zip(("orthographic", "weak", "perspective"), _project_all(cameras, points),
                                    _references(cameras, np.asarray(points))):
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=2e-4, err_msg=name)


def test_image_y_points_down_and_perspective_centre_is_the_principal_point():
    identity = np.zeros(3)
    cameras = (
        OrthographicCamera(rotation=identity, translation=np.array([10.0, 20.0])),
        WeakPerspectiveCamera(rotation=identity, scale=np.array(3.0), translation=np.array([10.0, 20.0])),
        PerspectiveCamera(
            rotation=identity,
            translation=np.array([0.0, 0.0, -10.0]),
            focal=np.array(100.0),
            principal_point=np.array([50.0, 40.0]),
        ),
    )
    # Same shapes and dtypes as _cameras(): reuses the compiled projection.
    cameras = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), cameras)
    # Origin, one unit up (+y), one unit right (+x): up is smaller v, right is larger u.
    points = np.zeros((N_POINTS, 3), np.float32)
    points[1, 1] = points[2, 0] = 1.0
    orthographic, weak, perspective = map(np.asarray, _project_all(cameras, points))
    np.testing.assert_allclose(orthographic[:3], [[10, 20], [10, 19], [11, 20]], atol=1e-5)
    np.testing.assert_allclose(weak[:3], [[10, 20], [10, 17], [13, 20]], atol=1e-5)
    np.testing.assert_allclose(perspective[:3], [[50, 40], [50, 30], [60, 40]], atol=1e-4)


def test_orthographic_equals_weak_perspective_with_unit_scale():
    orthographic, _, _ = _cameras(2, (3, 2))
    weak = WeakPerspectiveCamera(
        rotation=orthographic.rotation, scale=jnp.ones((3, 2)), translation=orthographic.translation
    )
    perspective = _cameras(2, (3, 2))[2]
    points = _points(3, (3, 2))
    ours_orthographic, ours_weak, _ = _project_all((orthographic, weak, perspective), points)
    np.testing.assert_allclose(np.asarray(ours_orthographic), np.asarray(ours_weak), rtol=0, atol=1e-5)


@jax.jit
def _frames_and_depths(orthographic, perspective, points):
    return to_camera_frame(perspective, points), depth(perspective, points), depth(orthographic, points)


def test_camera_frame_and_depth_match_reference():
    orthographic, _, perspective = _cameras(4)
    points = _points(5)
    frame, perspective_depth, orthographic_depth = map(
        np.asarray, _frames_and_depths(orthographic, perspective, points)
    )
    expected = _rotate(perspective.rotation, points).T + np.asarray(perspective.translation)
    np.testing.assert_allclose(frame, expected, atol=1e-5)
    np.testing.assert_allclose(perspective_depth, -expected[:, 2], atol=1e-5)
    assert np.all(perspective_depth > 0)  # the test cameras look at the points
    np.testing.assert_allclose(orthographic_depth, _rotate(orthographic.rotation, points)[2], atol=1e-5)


def test_project_rejects_an_unknown_camera_type():
    with pytest.raises(TypeError, match="camera"):
        project(object(), jnp.zeros((1, 3)))


# ---------------------------------------------------------------------------
# The far-distance limit
# ---------------------------------------------------------------------------


@jax.jit
def _limit_comparison(perspective, points):
    weak = weak_perspective_limit(perspective)
    origin = project(perspective, jnp.zeros((1, 3), points.dtype))[..., 0, :]
    return weak, origin, project(perspective, points), project(weak, points)


def test_perspective_tends_to_weak_perspective_limit_like_one_over_distance():
    distances = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
    scale = 8.0  # pixels per model unit, fixed: f = scale · d
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        count = len(distances)
        rotation = np.broadcast_to(rng.uniform(-0.5, 0.5, 3), (count, 3))
        translation = np.stack([np.full(count, 0.3), np.full(count, -0.2), -distances], axis=-1)
        perspective = PerspectiveCamera(
            rotation=jnp.asarray(rotation),
            translation=jnp.asarray(translation),
            focal=jnp.asarray(scale * distances),
            principal_point=jnp.asarray(np.broadcast_to([320.0, 240.0], (count, 2))),
        )
        points = jnp.asarray(rng.uniform(-1.0, 1.0, size=(N_POINTS, 3)))
        weak, origin, projected_perspective, projected_weak = jax.tree.map(
            np.asarray, _limit_comparison(perspective, points)
        )
    assert projected_perspective.dtype == np.float64
    np.testing.assert_allclose(weak.scale, scale, rtol=1e-12)
    # The limit camera puts the model origin exactly where the perspective camera does.
    np.testing.assert_allclose(weak.translation, origin, atol=1e-9)
    np.testing.assert_allclose(weak.rotation, rotation, atol=0)
    error = np.abs(projected_perspective - projected_weak).max(axis=(-2, -1))
    assert error[0] > 1e-2  # the two cameras really differ up close
    assert error[-1] < 1e-3
    # One decade further, one decade smaller (first-order error ∝ 1/d).
    ratios = error[:-1] / error[1:]
    assert np.all((ratios > 7.0) & (ratios < 13.0)), ratios


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def test_check_grads_project_wrt_points_and_camera_parameters():
    cameras, points = _cameras(7), _points(8)
    with jax.enable_x64(True):
        cameras, points = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (cameras, points))
        # Points and all camera fields of the three types in one check (one compilation chain).
        check_grads(jax.jit(lambda c, p: _project_all(c, p)), (cameras, points), order=1, modes=("fwd", "rev"))


# ---------------------------------------------------------------------------
# Batch shapes and points behind the camera
# ---------------------------------------------------------------------------

BATCH_CASES = {
    "camera (), points ()": ((), ()),
    "camera (1,), points ()": ((1,), ()),
    "camera (3, 2), points ()": ((3, 2), ()),
    "camera (), points (3, 2)": ((), (3, 2)),
    "camera (1,), points (3, 2)": ((1,), (3, 2)),
    "camera (3, 2), points (3, 2)": ((3, 2), (3, 2)),
}


@pytest.mark.parametrize("camera_batch, points_batch", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batch_shapes_broadcast_cameras_against_points(camera_batch, points_batch):
    cameras, points = _cameras(9, camera_batch), _points(10, points_batch)
    batch = np.broadcast_shapes(camera_batch, points_batch)
    results = [np.asarray(r) for r in _project_all(cameras, points)]
    for result in results:
        assert result.shape == (*batch, N_POINTS, 2)
    # Compare every batch element with the unbatched reference.
    numpy_cameras = jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (*batch, *x.shape[len(camera_batch) :])), cameras
    )
    numpy_points = np.broadcast_to(np.asarray(points), (*batch, N_POINTS, 3))
    for index in np.ndindex(*batch):
        element = jax.tree.map(lambda x: x[index], numpy_cameras)
        for name, result, expected in zip(("orthographic", "weak", "perspective"), results,
                                          _references(element, numpy_points[index])):
            np.testing.assert_allclose(result[index], expected, rtol=1e-5, atol=2e-4, err_msg=f"{name} {index}")


@jax.jit
def _project_and_gradient(camera, points):
    return project(camera, points), jax.grad(lambda p: jnp.sum(project(camera, p) ** 2))(points)


def test_points_behind_or_at_a_perspective_camera_stay_finite():
    _, _, perspective = _cameras(11)
    # Camera-frame z of the model origin is t_z < 0; shift points to z_c = 0 and beyond.
    offsets = np.array([0.0, 1.0, 5.0, 50.0])
    camera = PerspectiveCamera(
        rotation=jnp.zeros(3),
        translation=perspective.translation,
        focal=perspective.focal,
        principal_point=perspective.principal_point,
    )
    t_z = float(np.asarray(perspective.translation)[2])
    points = jnp.asarray(np.stack([np.full(4, 0.3), np.full(4, -0.2), -t_z + offsets], axis=-1), jnp.float32)
    projected, gradient = map(np.asarray, _project_and_gradient(camera, points))
    assert np.all(np.isfinite(projected)) and np.all(np.isfinite(gradient))
