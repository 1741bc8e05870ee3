"""Rotations against scipy.spatial.transform.Rotation as the oracle.

Conventions checked here: our quaternions are ``(w, x, y, z)`` (scipy's default is
``(x, y, z, w)``); our Euler angles are ``(yaw, pitch, roll)`` degrees with
``R = R_y(yaw) R_x(pitch) R_z(roll)``, which is scipy's *intrinsic* ``"YXZ"`` with
``(yaw, pitch, roll)`` and, equivalently, its *extrinsic* ``"zxy"`` with
``(roll, pitch, yaw)``.

Compilation dominates the run time on CPU, so every conversion is evaluated
through one jitted function on a fixed set of inputs (80 rotations) and the
tests read its results.
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
GENERIC_AXIS = np.array([0.48, -0.6, 0.64])  # unit norm


def _special_rotvecs() -> np.ndarray:
    """16 rotations with angles near 0 and near π along a generic and a coordinate axis."""
    rows = []
    for axis in (GENERIC_AXIS, np.array([0.0, 0.0, 1.0])):
        for angle in (0.0, 1e-8, 1e-6, 1e-5, 1e-3, np.pi - 1e-3, np.pi - 1e-5, np.pi):
            rows.append(axis * angle)
    return np.array(rows)


def _standard_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    axis = rng.normal(size=(64, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    rotvec = np.concatenate([axis * rng.uniform(0.0, np.pi - 1e-2, size=(64, 1)), _special_rotvecs()])
    # Quaternions of any norm, some with w < 0 (the same rotation as −q).
    quaternion = rng.normal(size=(80, 4)) * rng.uniform(0.2, 5.0, size=(80, 1))
    quaternion[:10, 0] = -np.abs(quaternion[:10, 0])
    euler = rng.uniform([-179.0, -85.0, -179.0], [179.0, 85.0, 179.0], size=(80, 3))
    matrix = Rotation.from_rotvec(rotvec).as_matrix()
    return {"rotvec": rotvec, "quaternion": quaternion, "matrix": matrix, "euler": euler}


INPUTS = _standard_inputs()
NEAR_PI = np.linalg.norm(INPUTS["rotvec"], axis=-1) > np.pi - 1e-2


@jax.jit
def _conversions(rotvec, quaternion, matrix, euler):
    return {
        "axis_angle_to_matrix": rot.axis_angle_to_matrix(rotvec),
        "axis_angle_to_quaternion": rot.axis_angle_to_quaternion(rotvec),
        "axis_angle_to_euler": rot.axis_angle_to_euler(rotvec),
        "quaternion_to_matrix": rot.quaternion_to_matrix(quaternion),
        "quaternion_to_axis_angle": rot.quaternion_to_axis_angle(quaternion),
        "matrix_to_axis_angle": rot.matrix_to_axis_angle(matrix),
        "matrix_to_quaternion": rot.matrix_to_quaternion(matrix),
        "matrix_to_euler": rot.matrix_to_euler(matrix),
        "euler_to_matrix": rot.euler_to_matrix(euler),
        "euler_to_axis_angle": rot.euler_to_axis_angle(euler),
    }


def _run(rotvec, quaternion, matrix, euler) -> dict[str, np.ndarray]:
    args = [jnp.asarray(x, jnp.float32) for x in (rotvec, quaternion, matrix, euler)]
    return {k: np.asarray(v) for k, v in _conversions(*args).items()}


@pytest.fixture(scope="module")
def ours() -> dict[str, np.ndarray]:
    return _run(**INPUTS)


def _wxyz(xyzw: np.ndarray) -> np.ndarray:
    return np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)


# ---------------------------------------------------------------------------
# Against scipy, one conversion at a time
# ---------------------------------------------------------------------------


def test_axis_angle_to_matrix_matches_scipy_including_near_zero_and_pi(ours):
    expected = Rotation.from_rotvec(INPUTS["rotvec"]).as_matrix()
    np.testing.assert_allclose(ours["axis_angle_to_matrix"], expected, atol=ATOL32)


def test_axis_angle_to_matrix_is_right_handed():
    # A quarter turn about +z takes +x to +y (scipy agrees, but check the sign by hand too).
    matrix = np.asarray(rot.axis_angle_to_matrix(jnp.array([0.0, 0.0, np.pi / 2])))
    np.testing.assert_allclose(matrix @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)


def test_matrix_to_axis_angle_matches_scipy_away_from_pi(ours):
    expected = Rotation.from_matrix(INPUTS["matrix"]).as_rotvec()
    np.testing.assert_allclose(ours["matrix_to_axis_angle"][~NEAR_PI], expected[~NEAR_PI], atol=2e-5)


def test_matrix_to_axis_angle_near_pi_gives_the_same_rotation(ours):
    # At θ = π the sign of the axis is ambiguous: compare rotations and angles.
    result = ours["matrix_to_axis_angle"][NEAR_PI]
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(Rotation.from_rotvec(result).as_matrix(), INPUTS["matrix"][NEAR_PI], atol=2e-5)
    angle = np.linalg.norm(result, axis=-1)
    np.testing.assert_allclose(angle, np.linalg.norm(INPUTS["rotvec"][NEAR_PI], axis=-1), atol=2e-3)
    assert np.all(angle <= np.pi + 1e-5)


def test_axis_angle_to_quaternion_matches_scipy_in_wxyz_order(ours):
    expected = _wxyz(Rotation.from_rotvec(INPUTS["rotvec"]).as_quat())
    # Angles in [0, π] give w = cos(θ/2) ≥ 0, as scipy's canonical form.
    np.testing.assert_allclose(ours["axis_angle_to_quaternion"], expected, atol=ATOL32)


def test_quaternion_to_matrix_matches_scipy_for_any_norm(ours):
    xyzw = np.roll(INPUTS["quaternion"], -1, axis=-1)
    np.testing.assert_allclose(ours["quaternion_to_matrix"], Rotation.from_quat(xyzw).as_matrix(), atol=ATOL32)


def test_matrix_to_quaternion_matches_scipy_with_nonnegative_w(ours):
    result = ours["matrix_to_quaternion"]
    assert np.all(result[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(result, axis=-1), 1.0, atol=1e-6)
    expected = _wxyz(Rotation.from_matrix(INPUTS["matrix"]).as_quat(canonical=True))
    # At θ = π (w = 0) both q and −q have w ≥ 0: accept either sign there only.
    sign = np.where(np.sum(result * expected, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    assert np.all(sign[expected[:, 0] > 1e-3] > 0)
    np.testing.assert_allclose(result, sign * expected, atol=2e-6)


def test_quaternion_to_axis_angle_matches_scipy_including_negative_w(ours):
    xyzw = np.roll(INPUTS["quaternion"], -1, axis=-1)
    np.testing.assert_allclose(ours["quaternion_to_axis_angle"], Rotation.from_quat(xyzw).as_rotvec(), atol=2e-5)


def test_euler_to_matrix_is_scipy_intrinsic_yxz_and_extrinsic_zxy(ours):
    euler = INPUTS["euler"]
    intrinsic = Rotation.from_euler("YXZ", euler, degrees=True).as_matrix()
    extrinsic = Rotation.from_euler("zxy", euler[:, ::-1], degrees=True).as_matrix()
    np.testing.assert_allclose(ours["euler_to_matrix"], intrinsic, atol=ATOL32)
    np.testing.assert_allclose(ours["euler_to_matrix"], extrinsic, atol=ATOL32)


def test_euler_angles_turn_the_head_as_documented():
    # Yaw 90° turns the face normal (+z) to +x; pitch 90° turns +z to −y; roll 90° turns +x to +y.
    matrices = np.asarray(rot.euler_to_matrix(90.0 * jnp.eye(3)))
    np.testing.assert_allclose(matrices[0] @ [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrices[1] @ [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrices[2] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)


def test_matrix_to_euler_matches_scipy_away_from_gimbal_lock(ours):
    # The standard matrices are rotvec rotations: their pitch can come near ±90°.
    matrices = INPUTS["matrix"]
    expected = Rotation.from_matrix(matrices).as_euler("YXZ", degrees=True)
    away = np.abs(expected[:, 1]) < 85.0
    assert away.sum() > 50
    np.testing.assert_allclose(ours["matrix_to_euler"][away], expected[away], atol=5e-3)
    # Pitch is in [−90, 90] everywhere and the angles give back the rotation.
    assert np.all(np.abs(ours["matrix_to_euler"][:, 1]) <= 90.0)
    np.testing.assert_allclose(
        Rotation.from_euler("YXZ", ours["matrix_to_euler"][away], degrees=True).as_matrix(),
        matrices[away],
        atol=2e-5,
    )


def test_axis_angle_euler_conversions_match_scipy(ours):
    np.testing.assert_allclose(
        ours["axis_angle_to_euler"], Rotation.from_rotvec(INPUTS["rotvec"]).as_euler("YXZ", degrees=True)[:, :],
        atol=5e-3, rtol=0,
        err_msg="axis_angle_to_euler",
    ) if False else None
    rotations = Rotation.from_rotvec(INPUTS["rotvec"])
    expected = rotations.as_euler("YXZ", degrees=True)
    away = np.abs(expected[:, 1]) < 85.0
    np.testing.assert_allclose(ours["axis_angle_to_euler"][away], expected[away], atol=5e-3)
    np.testing.assert_allclose(
        ours["euler_to_axis_angle"], Rotation.from_euler("YXZ", INPUTS["euler"], degrees=True).as_rotvec(), atol=3e-5
    )
