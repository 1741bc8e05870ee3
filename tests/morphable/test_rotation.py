"""Rotations against scipy.spatial.transform.Rotation as the oracle.

Conventions checked here: our quaternions are ``(w, x, y, z)`` (scipy's default is
``(x, y, z, w)``); our Euler angles are ``(yaw, pitch, roll)`` degrees with
``R = R_y(yaw) R_x(pitch) R_z(roll)``, which is scipy's *intrinsic* ``"YXZ"`` with
``(yaw, pitch, roll)`` and, equivalently, its *extrinsic* ``"zxy"`` with
``(roll, pitch, yaw)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

from morphable import rotation as rot

# float32 rotation matrices are good to a few ulps of 1.
ATOL32 = 2e-6


def _random_rotvecs(rng: np.random.Generator, count: int, max_angle: float = np.pi - 1e-2) -> np.ndarray:
    axis = rng.normal(size=(count, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = rng.uniform(0.0, max_angle, size=(count, 1))
    return axis * angle


def _special_rotvecs() -> np.ndarray:
    """Angles near 0 and near π along a generic and a coordinate axis."""
    generic = np.array([0.48, -0.6, 0.64])  # unit norm
    rows = []
    for axis in (generic, np.array([0.0, 0.0, 1.0])):
        for angle in (0.0, 1e-8, 1e-6, 1e-5, 1e-3, np.pi - 1e-3, np.pi - 1e-5, np.pi):
            rows.append(axis * angle)
    return np.array(rows)


def _scipy_quaternion_wxyz(rotations: Rotation) -> np.ndarray:
    xyzw = rotations.as_quat()
    wxyz = np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)
    return np.where(wxyz[..., :1] < 0, -wxyz, wxyz)


# ---------------------------------------------------------------------------
# Against scipy, one conversion at a time
# ---------------------------------------------------------------------------


def test_axis_angle_to_matrix_matches_scipy_including_near_zero_and_pi():
    rotvecs = np.concatenate([_random_rotvecs(np.random.default_rng(0), 64), _special_rotvecs()])
    ours = np.asarray(rot.axis_angle_to_matrix(jnp.asarray(rotvecs, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_rotvec(rotvecs).as_matrix(), atol=ATOL32)


def test_axis_angle_to_matrix_known_rotation_is_right_handed():
    # A quarter turn about +z takes +x to +y.
    matrix = np.asarray(rot.axis_angle_to_matrix(jnp.array([0.0, 0.0, np.pi / 2])))
    np.testing.assert_allclose(matrix @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)


def test_matrix_to_axis_angle_matches_scipy_away_from_pi():
    rotvecs = np.concatenate(
        [_random_rotvecs(np.random.default_rng(1), 64, max_angle=np.pi - 1e-2), _special_rotvecs()[:5]]
    )
    matrices = Rotation.from_rotvec(rotvecs).as_matrix()
    ours = np.asarray(rot.matrix_to_axis_angle(jnp.asarray(matrices, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_matrix(matrices).as_rotvec(), atol=2e-5)


def test_matrix_to_axis_angle_near_pi_gives_the_same_rotation():
    # At θ = π the axis sign is ambiguous; compare the rotation and the angle, not the vector.
    rotvecs = _special_rotvecs()[np.linalg.norm(_special_rotvecs(), axis=-1) > 3.0]
    matrices = Rotation.from_rotvec(rotvecs).as_matrix()
    ours = np.asarray(rot.matrix_to_axis_angle(jnp.asarray(matrices, jnp.float32)))
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(Rotation.from_rotvec(ours).as_matrix(), matrices, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(rotvecs, axis=-1), atol=2e-3)
    assert np.all(np.linalg.norm(ours, axis=-1) <= np.pi + 1e-5)


def test_axis_angle_to_quaternion_matches_scipy_in_wxyz_order():
    rotvecs = np.concatenate([_random_rotvecs(np.random.default_rng(2), 64), _special_rotvecs()])
    ours = np.asarray(rot.axis_angle_to_quaternion(jnp.asarray(rotvecs, jnp.float32)))
    expected = Rotation.from_rotvec(rotvecs).as_quat()  # (x, y, z, w)
    np.testing.assert_allclose(ours[:, 0], expected[:, 3], atol=ATOL32)
    np.testing.assert_allclose(ours[:, 1:], expected[:, :3], atol=ATOL32)


def test_quaternion_to_matrix_matches_scipy_for_any_norm():
    rng = np.random.default_rng(3)
    wxyz = rng.normal(size=(64, 4)) * rng.uniform(0.2, 5.0, size=(64, 1))
    xyzw = np.concatenate([wxyz[:, 1:], wxyz[:, :1]], axis=-1)
    ours = np.asarray(rot.quaternion_to_matrix(jnp.asarray(wxyz, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_quat(xyzw).as_matrix(), atol=ATOL32)


def test_matrix_to_quaternion_matches_scipy_with_nonnegative_w():
    rotvecs = np.concatenate([_random_rotvecs(np.random.default_rng(4), 64, np.pi), _special_rotvecs()])
    rotations = Rotation.from_rotvec(rotvecs)
    ours = np.asarray(rot.matrix_to_quaternion(jnp.asarray(rotations.as_matrix(), jnp.float32)))
    assert np.all(ours[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)
    expected = _scipy_quaternion_wxyz(rotations)
    # At w = 0 (θ = π) q and −q both have w ≥ 0; accept either sign there.
    sign = np.where(np.sum(ours * expected, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    assert np.all(sign[np.abs(expected[:, 0]) > 1e-3] > 0)
    np.testing.assert_allclose(ours, sign * expected, atol=2e-6)


def test_quaternion_to_axis_angle_matches_scipy_including_negative_w():
    rng = np.random.default_rng(5)
    wxyz = rng.normal(size=(64, 4)) * rng.uniform(0.2, 5.0, size=(64, 1))
    wxyz[:8, 0] = -np.abs(wxyz[:8, 0])  # the double cover: −q is the same rotation
    xyzw = np.concatenate([wxyz[:, 1:], wxyz[:, :1]], axis=-1)
    ours = np.asarray(rot.quaternion_to_axis_angle(jnp.asarray(wxyz, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_quat(xyzw).as_rotvec(), atol=2e-5)


def test_euler_to_matrix_is_scipy_intrinsic_yxz_and_extrinsic_zxy():
    rng = np.random.default_rng(6)
    angles = rng.uniform([-180.0, -89.0, -180.0], [180.0, 89.0, 180.0], size=(64, 3))
    ours = np.asarray(rot.euler_to_matrix(jnp.asarray(angles, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_euler("YXZ", angles, degrees=True).as_matrix(), atol=ATOL32)
    np.testing.assert_allclose(
        ours, Rotation.from_euler("zxy", angles[:, ::-1], degrees=True).as_matrix(), atol=ATOL32
    )


def test_euler_angles_turn_the_head_as_documented():
    # Yaw 90° turns the face normal (+z) to +x; pitch 90° turns +z to −y
    # (R_x rotates y towards z); roll 90° turns +x to +y.
    z, x = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    yaw = np.asarray(rot.euler_to_matrix(jnp.array([90.0, 0.0, 0.0])))
    pitch = np.asarray(rot.euler_to_matrix(jnp.array([0.0, 90.0, 0.0])))
    roll = np.asarray(rot.euler_to_matrix(jnp.array([0.0, 0.0, 90.0])))
    np.testing.assert_allclose(yaw @ z, [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(pitch @ z, [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(roll @ x, [0.0, 1.0, 0.0], atol=1e-6)


def test_matrix_to_euler_matches_scipy_away_from_gimbal_lock():
    rng = np.random.default_rng(7)
    angles = rng.uniform([-179.0, -85.0, -179.0], [179.0, 85.0, 179.0], size=(64, 3))
    matrices = Rotation.from_euler("YXZ", angles, degrees=True).as_matrix()
    ours = np.asarray(rot.matrix_to_euler(jnp.asarray(matrices, jnp.float32)))
    np.testing.assert_allclose(ours, Rotation.from_matrix(matrices).as_euler("YXZ", degrees=True), atol=2e-3)
    np.testing.assert_allclose(ours, angles, atol=2e-3)


def test_axis_angle_euler_conversions_match_scipy():
    rng = np.random.default_rng(8)
    angles = rng.uniform([-170.0, -80.0, -170.0], [170.0, 80.0, 170.0], size=(32, 3))
    rotations = Rotation.from_euler("YXZ", angles, degrees=True)
    ours_rotvec = np.asarray(rot.euler_to_axis_angle(jnp.asarray(angles, jnp.float32)))
    np.testing.assert_allclose(ours_rotvec, rotations.as_rotvec(), atol=3e-5)
    ours_angles = np.asarray(rot.axis_angle_to_euler(jnp.asarray(rotations.as_rotvec(), jnp.float32)))
    np.testing.assert_allclose(ours_angles, angles, atol=3e-3)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


def test_round_trips_axis_angle_matrix_quaternion_euler():
    rotvecs = np.concatenate([_random_rotvecs(np.random.default_rng(9), 64, np.pi - 1e-2), _special_rotvecs()[:5]])
    r = jnp.asarray(rotvecs, jnp.float32)
    matrix = rot.axis_angle_to_matrix(r)
    quaternion = rot.axis_angle_to_quaternion(r)
    np.testing.assert_allclose(rot.matrix_to_axis_angle(matrix), rotvecs, atol=2e-5)
    np.testing.assert_allclose(rot.quaternion_to_axis_angle(quaternion), rotvecs, atol=2e-5)
    np.testing.assert_allclose(rot.quaternion_to_matrix(quaternion), matrix, atol=ATOL32)
    np.testing.assert_allclose(rot.matrix_to_quaternion(matrix), quaternion, atol=2e-6)
    # Euler is unique only away from gimbal lock; compare rotations.
    euler = rot.matrix_to_euler(matrix)
    np.testing.assert_allclose(rot.euler_to_matrix(euler), matrix, atol=2e-5)
    np.testing.assert_allclose(
        rot.axis_angle_to_matrix(rot.euler_to_axis_angle(rot.axis_angle_to_euler(r))), matrix, atol=3e-5
    )


def test_round_trip_near_pi_keeps_the_rotation():
    rotvecs = _special_rotvecs()
    matrix = rot.axis_angle_to_matrix(jnp.asarray(rotvecs, jnp.float32))
    back = rot.axis_angle_to_matrix(rot.matrix_to_axis_angle(matrix))
    np.testing.assert_allclose(back, matrix, atol=2e-5)
    back = rot.quaternion_to_matrix(rot.matrix_to_quaternion(matrix))
    np.testing.assert_allclose(back, matrix, atol=2e-6)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def _generators() -> np.ndarray:
    """``K_k = skew(e_k)``: the derivative of R(r) at r = 0 along r_k."""
    out = np.zeros((3, 3, 3))
    for k, (i, j) in enumerate([(2, 1), (0, 2), (1, 0)]):
        out[k, i, j], out[k, j, i] = 1.0, -1.0
    return out


def test_gradients_at_identity_are_finite_and_equal_the_skew_generators():
    zeros = jnp.zeros(3)
    expected = np.moveaxis(_generators(), 0, -1)  # (3, 3, 3): [i, j, k] = ∂R_ij/∂r_k
    for jacobian in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(jacobian(rot.axis_angle_to_matrix)(zeros), expected, atol=1e-7)
    # R = I + K + K²/2 + ...: the Hessian is the symmetrised product of generators.
    generators = _generators()
    second = 0.5 * (np.einsum("aij,bjl->ilab", generators, generators) + np.einsum("bij,ajl->ilab", generators, generators))
    np.testing.assert_allclose(jax.hessian(rot.axis_angle_to_matrix)(zeros), second, atol=1e-6)
    # A scalar loss through the rotation: its gradient at the identity is finite.
    point = jnp.array([0.3, -1.2, 0.7])
    target = jnp.array([0.1, 0.2, 0.3])
    gradient = jax.grad(lambda r: jnp.sum((rot.axis_angle_to_matrix(r) @ point - target) ** 2))(zeros)
    np.testing.assert_allclose(gradient, 2.0 * np.cross(point, np.asarray(point - target)), atol=1e-6)


def test_inverse_conversions_have_finite_gradients_at_identity():
    zeros = jnp.zeros(3)
    np.testing.assert_allclose(
        jax.jacfwd(rot.axis_angle_to_quaternion)(zeros), np.vstack([np.zeros((1, 3)), 0.5 * np.eye(3)]), atol=1e-7
    )
    identity_quaternion = jnp.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        jax.jacrev(rot.quaternion_to_axis_angle)(identity_quaternion),
        np.hstack([np.zeros((3, 1)), 2.0 * np.eye(3)]),
        atol=1e-6,
    )
    # matrix_to_axis_angle ∘ axis_angle_to_matrix is the identity map near r = 0.
    composed = jax.jacrev(lambda r: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(r)))(zeros)
    np.testing.assert_allclose(composed, np.eye(3), atol=1e-6)


@pytest.mark.parametrize("angle", [1e-5, 1e-4, 1e-3, 1e-1])
def test_small_angle_jacobian_is_accurate_in_float32(angle):
    # Oracle: central differences of scipy's Rodrigues in float64.
    rotvec = np.array([0.48, -0.6, 0.64]) * angle
    step = 1e-6
    expected = np.stack(
        [
            (Rotation.from_rotvec(rotvec + step * e).as_matrix() - Rotation.from_rotvec(rotvec - step * e).as_matrix())
            / (2 * step)
            for e in np.eye(3)
        ],
        axis=-1,
    )
    ours = np.asarray(jax.jacfwd(rot.axis_angle_to_matrix)(jnp.asarray(rotvec, jnp.float32)))
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_check_grads_axis_angle_to_matrix_at_random_points():
    rng = np.random.default_rng(10)
    points = np.concatenate(
        [_random_rotvecs(rng, 4, np.pi - 0.05), np.array([[1e-3, -2e-3, 5e-4], [0.0, 0.0, 0.0]])]
    )
    with jax.enable_x64(True):
        for point in points:
            check_grads(rot.axis_angle_to_matrix, (jnp.asarray(point, jnp.float64),), order=2, modes=("fwd", "rev"))
        # Batched input in one call.
        check_grads(rot.axis_angle_to_matrix, (jnp.asarray(points, jnp.float64),), order=1, modes=("fwd", "rev"))


# ---------------------------------------------------------------------------
# Batch shapes
# ---------------------------------------------------------------------------

CONVERSIONS = [
    (rot.axis_angle_to_matrix, (3,), (3, 3)),
    (rot.axis_angle_to_quaternion, (3,), (4,)),
    (rot.axis_angle_to_euler, (3,), (3,)),
    (rot.euler_to_matrix, (3,), (3, 3)),
    (rot.euler_to_axis_angle, (3,), (3,)),
    (rot.quaternion_to_matrix, (4,), (3, 3)),
    (rot.quaternion_to_axis_angle, (4,), (3,)),
    (rot.matrix_to_axis_angle, (3, 3), (3,)),
    (rot.matrix_to_quaternion, (3, 3), (4,)),
    (rot.matrix_to_euler, (3, 3), (3,)),
]


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)], ids=str)
def test_batch_shapes_match_elementwise_results(batch):
    rng = np.random.default_rng(11)
    count = int(np.prod(batch, dtype=int))
    rotvecs = _random_rotvecs(rng, count, np.pi - 0.1)
    inputs = {
        (3,): None,
        (4,): _scipy_quaternion_wxyz(Rotation.from_rotvec(rotvecs)),
        (3, 3): Rotation.from_rotvec(rotvecs).as_matrix(),
    }
    for function, in_shape, out_shape in CONVERSIONS:
        if in_shape == (3,):
            flat = np.rad2deg(rotvecs) / 2 if "euler_to" in function.__name__ else rotvecs
        else:
            flat = inputs[in_shape]
        batched = jnp.asarray(flat.reshape(*batch, *in_shape), jnp.float32)
        result = np.asarray(function(batched))
        assert result.shape == (*batch, *out_shape), function.__name__
        single = np.stack([np.asarray(function(jnp.asarray(x, jnp.float32))) for x in flat])
        np.testing.assert_allclose(result.reshape(count, *out_shape), single, atol=1e-5, err_msg=function.__name__)
