"""3D rotations: axis-angle (the library's parametrisation), matrices, quaternions, Euler angles.

All functions are pure, jittable, differentiable (including at the identity
rotation) and accept leading batch dimensions.

Conventions:
  * axis-angle ``(..., 3)``: unit axis times angle in radians (right-hand rule);
  * quaternion ``(..., 4)``: ``(w, x, y, z)``, scalar first, unit norm;
  * Euler angles ``(..., 3)``: ``(yaw, pitch, roll)`` in **degrees**, with
    ``R = R_y(yaw) @ R_x(pitch) @ R_z(roll)`` in the model frame (x to the
    subject's left as seen by the camera, i.e. image right; y up; z towards the
    camera). Yaw turns the head left/right, pitch nods, roll tilts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "axis_angle_to_quaternion",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "euler_to_matrix",
    "matrix_to_euler",
    "axis_angle_to_euler",
    "euler_to_axis_angle",
]

_SMALL = 1e-6


def _safe_norm(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Norm with a gradient that stays finite at zero; also returns a 'small' mask."""
    sq = jnp.sum(v * v, axis=-1)
    small = sq < _SMALL**2
    norm = jnp.sqrt(jnp.where(small, 1.0, sq))
    return jnp.where(small, 0.0, norm), small


def _skew(v: jax.Array) -> jax.Array:
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack(
        [jnp.stack([o, -z, y], -1), jnp.stack([z, o, -x], -1), jnp.stack([-y, x, o], -1)], -2
    )


def axis_angle_to_matrix(rotation: jax.Array) -> jax.Array:
    """Rodrigues' formula.

    Args:
      rotation: ``(..., 3)`` axis-angle, radians.

    Returns:
      ``(..., 3, 3)`` rotation matrix.

    Examples:
      >>> import jax.numpy as jnp
      >>> R = axis_angle_to_matrix(jnp.array([0.0, 0.0, jnp.pi / 2]))
      >>> jnp.allclose(R @ jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0]), atol=1e-6).item()
      True
    """
    rotation = jnp.asarray(rotation)
    theta, small = _safe_norm(rotation)
    theta2 = jnp.sum(rotation * rotation, axis=-1)
    safe_theta = jnp.where(small, 1.0, theta)
    # sin(θ)/θ and (1−cos θ)/θ², with Taylor series near zero for finite gradients.
    # (1−cos θ)/θ² is evaluated as ½·(sin(θ/2)/(θ/2))²: the direct form cancels
    # catastrophically in float32 for small θ (its derivative is off by ~1e-4 at θ≈1e-4).
    a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(safe_theta) / safe_theta)
    half_sinc = jnp.sin(safe_theta / 2) / (safe_theta / 2)
    b = jnp.where(small, 0.5 - theta2 / 24.0, 0.5 * half_sinc * half_sinc)
    k = _skew(rotation)
    eye = jnp.broadcast_to(jnp.eye(3, dtype=rotation.dtype), k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(rotation: jax.Array) -> jax.Array:
    """``(..., 3)`` axis-angle → ``(..., 4)`` unit quaternion ``(w, x, y, z)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> axis_angle_to_quaternion(jnp.zeros(3)).tolist()
      [1.0, 0.0, 0.0, 0.0]
    """
    rotation = jnp.asarray(rotation)
    theta, small = _safe_norm(rotation)
    theta2 = jnp.sum(rotation * rotation, axis=-1)
    safe_theta = jnp.where(small, 1.0, theta)
    half_sinc = jnp.where(small, 0.5 - theta2 / 48.0, jnp.sin(safe_theta / 2) / safe_theta)
    w = jnp.cos(theta / 2)
    return jnp.concatenate([w[..., None], half_sinc[..., None] * rotation], axis=-1)


def quaternion_to_axis_angle(quaternion: jax.Array) -> jax.Array:
    """``(..., 4)`` quaternion ``(w, x, y, z)`` (any norm) → ``(..., 3)`` axis-angle with angle in [0, π].

    Examples:
      >>> import jax.numpy as jnp
      >>> q = axis_angle_to_quaternion(jnp.array([0.1, -0.2, 0.3]))
      >>> jnp.allclose(quaternion_to_axis_angle(q), jnp.array([0.1, -0.2, 0.3]), atol=1e-6).item()
      True
    """
    q = jnp.asarray(quaternion)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    q = jnp.where(q[..., :1] < 0, -q, q)  # the same rotation, angle in [0, π]
    w, v = q[..., 0], q[..., 1:]
    s, small = _safe_norm(v)
    angle = 2.0 * jnp.arctan2(s, w)
    safe_s = jnp.where(small, 1.0, s)
    # near zero: angle/s ≈ 2/w
    factor = jnp.where(small, 2.0 / w, angle / safe_s)
    return factor[..., None] * v


def quaternion_to_matrix(quaternion: jax.Array) -> jax.Array:
    """``(..., 4)`` quaternion ``(w, x, y, z)`` → ``(..., 3, 3)`` rotation matrix.

    Examples:
      >>> import jax.numpy as jnp
      >>> quaternion_to_matrix(jnp.array([1.0, 0, 0, 0])).tolist()
      [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    q = jnp.asarray(quaternion)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quaternion(matrix: jax.Array) -> jax.Array:
    """``(..., 3, 3)`` rotation matrix → ``(..., 4)`` unit quaternion with ``w ≥ 0``.

    Uses the numerically stable branch (largest diagonal term) of Shepperd's method.

    Examples:
      >>> import jax.numpy as jnp
      >>> matrix_to_quaternion(jnp.eye(3)).tolist()
      [1.0, 0.0, 0.0, 0.0]
    """
    m = jnp.asarray(matrix)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = jnp.stack(
        [
            jnp.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            jnp.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            jnp.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            jnp.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )
    trace_terms = jnp.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    best = jnp.argmax(trace_terms, axis=-1)
    q = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return jnp.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: jax.Array) -> jax.Array:
    """``(..., 3, 3)`` rotation matrix → ``(..., 3)`` axis-angle, angle in [0, π].

    Examples:
      >>> import jax.numpy as jnp
      >>> r = jnp.array([0.3, 0.2, -0.1])
      >>> jnp.allclose(matrix_to_axis_angle(axis_angle_to_matrix(r)), r, atol=1e-5).item()
      True
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def _rot_x(a):
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([i, o, o], -1), jnp.stack([o, c, -s], -1), jnp.stack([o, s, c], -1)], -2)


def _rot_y(a):
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([c, o, s], -1), jnp.stack([o, i, o], -1), jnp.stack([-s, o, c], -1)], -2)


def _rot_z(a):
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([c, -s, o], -1), jnp.stack([s, c, o], -1), jnp.stack([o, o, i], -1)], -2)


def euler_to_matrix(yaw_pitch_roll_degrees: jax.Array) -> jax.Array:
    """``(..., 3)`` (yaw, pitch, roll) in degrees → ``(..., 3, 3)``, ``R = R_y(yaw) R_x(pitch) R_z(roll)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> R = euler_to_matrix(jnp.array([90.0, 0.0, 0.0]))
      >>> jnp.allclose(R @ jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 0.0]), atol=1e-6).item()
      True
    """
    a = jnp.deg2rad(jnp.asarray(yaw_pitch_roll_degrees))
    return _rot_y(a[..., 0]) @ _rot_x(a[..., 1]) @ _rot_z(a[..., 2])


def matrix_to_euler(matrix: jax.Array) -> jax.Array:
    """``(..., 3, 3)`` → ``(..., 3)`` (yaw, pitch, roll) in degrees, pitch in [−90, 90].

    Inverse of :func:`euler_to_matrix` away from pitch = ±90° (gimbal lock).

    Examples:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([20.0, -10.0, 5.0])
      >>> jnp.allclose(matrix_to_euler(euler_to_matrix(a)), a, atol=1e-4).item()
      True
    """
    m = jnp.asarray(matrix)
    # R = Ry Rx Rz: R[1,2] = -sin(pitch), R[0,2] = sin(yaw)cos(pitch), R[2,2] = cos(yaw)cos(pitch),
    # R[1,0] = cos(pitch)sin(roll), R[1,1] = cos(pitch)cos(roll).
    pitch = jnp.arcsin(jnp.clip(-m[..., 1, 2], -1.0, 1.0))
    yaw = jnp.arctan2(m[..., 0, 2], m[..., 2, 2])
    roll = jnp.arctan2(m[..., 1, 0], m[..., 1, 1])
    return jnp.rad2deg(jnp.stack([yaw, pitch, roll], axis=-1))


def axis_angle_to_euler(rotation: jax.Array) -> jax.Array:
    """``(..., 3)`` axis-angle → ``(..., 3)`` (yaw, pitch, roll) degrees."""
    return matrix_to_euler(axis_angle_to_matrix(rotation))


def euler_to_axis_angle(yaw_pitch_roll_degrees: jax.Array) -> jax.Array:
    """``(..., 3)`` (yaw, pitch, roll) degrees → ``(..., 3)`` axis-angle."""
    return matrix_to_axis_angle(euler_to_matrix(yaw_pitch_roll_degrees))
