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
    rotvec[0] = [0.0, 0.0, np.pi / 2]  # checked by hand below
    # Quaternions of any norm, some with w < 0 (the same rotation as −q).
    quaternion = rng.normal(size=(80, 4)) * rng.uniform(0.2, 5.0, size=(80, 1))
    quaternion[:10, 0] = -np.abs(quaternion[:10, 0])
    euler = rng.uniform([-179.0, -85.0, -179.0], [179.0, 85.0, 179.0], size=(80, 3))
    euler[:3] = 90.0 * np.eye(3)  # pure yaw, pitch, roll: checked by hand below
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


def test_axis_angle_to_matrix_is_right_handed(ours):
    # A quarter turn about +z takes +x to +y (scipy agrees, but check the sign by hand too).
    matrix = ours["axis_angle_to_matrix"][0]
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


def test_euler_angles_turn_the_head_as_documented(ours):
    # Yaw 90° turns the face normal (+z) to +x; pitch 90° turns +z to −y; roll 90° turns +x to +y.
    matrices = ours["euler_to_matrix"][:3]
    np.testing.assert_allclose(matrices[0] @ [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrices[1] @ [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrices[2] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)


def _assert_angles_close(actual, expected, atol):
    """Degrees, compared modulo 360 (±180° are the same yaw or roll)."""
    difference = (np.asarray(actual) - np.asarray(expected) + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(difference, 0.0, atol=atol)


def test_matrix_to_euler_matches_scipy_away_from_gimbal_lock(ours):
    # The standard matrices are rotvec rotations: some have pitch near ±90°.
    expected = Rotation.from_matrix(INPUTS["matrix"]).as_euler("YXZ", degrees=True)
    away = np.abs(expected[:, 1]) < 85.0
    assert away.sum() > 50
    _assert_angles_close(ours["matrix_to_euler"][away], expected[away], atol=5e-3)
    # Pitch lies in [−90, 90] everywhere.
    assert np.all(np.abs(ours["matrix_to_euler"][:, 1]) <= 90.0)


def test_axis_angle_euler_conversions_match_scipy(ours):
    expected = Rotation.from_rotvec(INPUTS["rotvec"]).as_euler("YXZ", degrees=True)
    away = np.abs(expected[:, 1]) < 85.0
    _assert_angles_close(ours["axis_angle_to_euler"][away], expected[away], atol=5e-3)
    expected = Rotation.from_euler("YXZ", INPUTS["euler"], degrees=True).as_rotvec()
    np.testing.assert_allclose(ours["euler_to_axis_angle"], expected, atol=3e-5)


# ---------------------------------------------------------------------------
# Round trips (our own conversions fed back through the same jitted function)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def round_trip(ours) -> dict[str, np.ndarray]:
    # rotvec → matrix, quaternion → matrix, matrix (ours, from rotvec) → ..., Euler → ...
    return _run(
        rotvec=ours["matrix_to_axis_angle"],
        quaternion=ours["axis_angle_to_quaternion"],
        matrix=ours["axis_angle_to_matrix"],
        euler=ours["matrix_to_euler"],
    )


def test_round_trip_axis_angle_matrix_axis_angle(ours, round_trip):
    rotvec = INPUTS["rotvec"]
    # matrix(ours) → axis-angle recovers the vector away from π ...
    np.testing.assert_allclose(round_trip["matrix_to_axis_angle"][~NEAR_PI], rotvec[~NEAR_PI], atol=2e-5)
    # ... and the rotation everywhere (the axis sign flips at π).
    np.testing.assert_allclose(round_trip["axis_angle_to_matrix"], ours["axis_angle_to_matrix"], atol=2e-5)


def test_round_trip_axis_angle_quaternion_axis_angle(round_trip):
    rotvec = INPUTS["rotvec"]
    result = round_trip["quaternion_to_axis_angle"]
    np.testing.assert_allclose(result[~NEAR_PI], rotvec[~NEAR_PI], atol=2e-5)
    np.testing.assert_allclose(
        Rotation.from_rotvec(result).as_matrix(), Rotation.from_rotvec(rotvec).as_matrix(), atol=2e-5
    )


def test_round_trip_quaternion_matrix_quaternion(ours, round_trip):
    np.testing.assert_allclose(round_trip["quaternion_to_matrix"], ours["axis_angle_to_matrix"], atol=ATOL32)
    quaternion = ours["axis_angle_to_quaternion"]
    result = round_trip["matrix_to_quaternion"]
    sign = np.where(np.sum(result * quaternion, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    assert np.all(sign[~NEAR_PI] > 0)
    np.testing.assert_allclose(result, sign * quaternion, atol=2e-6)


def test_round_trip_matrix_euler_matrix(ours, round_trip):
    # Euler angles are unique only away from gimbal lock, the rotation always.
    np.testing.assert_allclose(round_trip["euler_to_matrix"], ours["axis_angle_to_matrix"], atol=5e-5)
    np.testing.assert_allclose(
        Rotation.from_rotvec(round_trip["euler_to_axis_angle"]).as_matrix(),
        ours["axis_angle_to_matrix"],
        atol=5e-5,
    )


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

def _generators() -> np.ndarray:
    """``K_k = skew(e_k)``, ``(3, 3, 3)``: the derivative of R(r) at r = 0 along r_k."""
    out = np.zeros((3, 3, 3))
    for k, (i, j) in enumerate([(2, 1), (0, 2), (1, 0)]):
        out[k, i, j], out[k, j, i] = 1.0, -1.0
    return out


@jax.jit
def _derivatives_at(rotvec):
    """Derivatives of the conversions at one ``(3,)`` float32 rotation (one compilation)."""
    point, target = jnp.array([0.3, -1.2, 0.7]), jnp.array([0.1, 0.2, 0.3])
    quaternion = rot.axis_angle_to_quaternion(rotvec)
    return {
        "jacobian": jax.jacfwd(rot.axis_angle_to_matrix)(rotvec),
        "hessian": jax.hessian(rot.axis_angle_to_matrix)(rotvec),
        "loss": jax.grad(lambda r: jnp.sum((rot.axis_angle_to_matrix(r) @ point - target) ** 2))(rotvec),
        "to_quaternion": jax.jacfwd(rot.axis_angle_to_quaternion)(rotvec),
        "from_quaternion": jax.jacrev(rot.quaternion_to_axis_angle)(quaternion),
        "matrix_round_trip": jax.jacfwd(lambda r: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(r)))(rotvec),
    }


def test_gradients_at_identity_are_finite_and_analytic():
    derivatives = {k: np.asarray(v) for k, v in _derivatives_at(jnp.zeros(3)).items()}
    for name, value in derivatives.items():
        assert np.all(np.isfinite(value)), name
    generators = _generators()
    expected = np.moveaxis(generators, 0, -1)  # [i, j, k] = ∂R_ij/∂r_k = (K_k)_ij
    np.testing.assert_allclose(derivatives["jacobian"], expected, atol=1e-7)
    # R = I + K + K²/2 + O(θ³): the Hessian (forward over reverse) is the symmetrised
    # product of generators.
    products = np.einsum("aij,bjl->ilab", generators, generators)
    np.testing.assert_allclose(derivatives["hessian"], 0.5 * (products + products.swapaxes(-1, -2)), atol=1e-6)
    # Reverse mode: d/dr |R(r) p − t|² at r = 0 is 2 p × (p − t).
    point, target = np.array([0.3, -1.2, 0.7]), np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(derivatives["loss"], 2.0 * np.cross(point, point - target), atol=1e-6)
    # q = (cos θ/2, sin(θ/2) axis): ∂q/∂r = [0; I/2] at 0, and its inverse [0, 2 I].
    to_quaternion = np.vstack([np.zeros((1, 3)), 0.5 * np.eye(3)])
    np.testing.assert_allclose(derivatives["to_quaternion"], to_quaternion, atol=1e-7)
    from_quaternion = np.hstack([np.zeros((3, 1)), 2.0 * np.eye(3)])
    np.testing.assert_allclose(derivatives["from_quaternion"], from_quaternion, atol=1e-6)
    # matrix → axis-angle undoes axis-angle → matrix to first order at r = 0.
    np.testing.assert_allclose(derivatives["matrix_round_trip"], np.eye(3), atol=1e-6)


@pytest.mark.parametrize("angle", [1e-5, 1e-4, 1e-3, 1e-1, np.pi - 1e-3])
def test_jacobian_is_accurate_in_float32_at_small_and_large_angles(angle):
    # Oracle: central differences of scipy's Rodrigues in float64.
    rotvec, step = GENERIC_AXIS * angle, 1e-6

    def matrix(r):
        return Rotation.from_rotvec(r).as_matrix()

    columns = [(matrix(rotvec + step * e) - matrix(rotvec - step * e)) / (2 * step) for e in np.eye(3)]
    expected = np.stack(columns, axis=-1)
    result = np.asarray(_derivatives_at(jnp.asarray(rotvec, jnp.float32))["jacobian"])
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_check_grads_axis_angle_to_matrix_at_random_points():
    rng = np.random.default_rng(1)
    axis = rng.normal(size=(4, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    points = np.concatenate(
        [axis * rng.uniform(0.1, np.pi - 0.05, size=(4, 1)), [[1e-3, -2e-3, 5e-4], [0.0, 0.0, 0.0]]]
    )
    with jax.enable_x64(True):
        # Each row is an independent rotation, so one batched check covers all six points.
        # Second order in forward mode, first order in reverse mode: the full
        # second-order check in both modes triples the compile time; reverse mode
        # under a second derivative is covered by the Hessian test at the identity.
        function, points = jax.jit(rot.axis_angle_to_matrix), jnp.asarray(points, jnp.float64)
        check_grads(function, (points,), order=2, modes=("fwd",))
        check_grads(function, (points,), order=1, modes=("rev",))


# ---------------------------------------------------------------------------
# Batch shapes
# ---------------------------------------------------------------------------


@jax.jit
def _primary_conversions(rotvec, quaternion, matrix, euler):
    """The conversions that are not compositions of others (axis-angle ↔ Euler and
    matrix → axis-angle are), to keep the per-shape compilations small."""
    return {
        "axis_angle_to_matrix": rot.axis_angle_to_matrix(rotvec),
        "axis_angle_to_quaternion": rot.axis_angle_to_quaternion(rotvec),
        "quaternion_to_matrix": rot.quaternion_to_matrix(quaternion),
        "quaternion_to_axis_angle": rot.quaternion_to_axis_angle(quaternion),
        "matrix_to_quaternion": rot.matrix_to_quaternion(matrix),
        "matrix_to_euler": rot.matrix_to_euler(matrix),
        "euler_to_matrix": rot.euler_to_matrix(euler),
    }


OUT_SHAPES = {
    "axis_angle_to_matrix": (3, 3),
    "axis_angle_to_quaternion": (4,),
    "quaternion_to_matrix": (3, 3),
    "quaternion_to_axis_angle": (3,),
    "matrix_to_quaternion": (4,),
    "matrix_to_euler": (3,),
    "euler_to_matrix": (3, 3),
}


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)], ids=str)
def test_batch_shapes_match_the_unbatched_rows(ours, batch):
    count = int(np.prod(batch, dtype=int))
    rows = np.arange(64 - count, 64)  # generic rotations
    inputs = {k: jnp.asarray(v[rows].reshape(*batch, *v.shape[1:]), jnp.float32) for k, v in INPUTS.items()}
    batched = {k: np.asarray(v) for k, v in _primary_conversions(**inputs).items()}
    assert set(batched) == set(OUT_SHAPES)
    for name, out_shape in OUT_SHAPES.items():
        assert batched[name].shape == (*batch, *out_shape), name
        np.testing.assert_allclose(
            batched[name].reshape(count, *out_shape), ours[name][rows], atol=1e-5, err_msg=name
        )
