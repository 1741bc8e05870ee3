"""Cameras and the one projection used everywhere.

Frames and units:
  * **model frame**: the model's own units (``model.units``), x to image right
    for a frontal face, y up, z towards the camera;
  * **camera frame** (perspective): the camera at the origin looking down −z,
    y up (OpenGL convention); a face in front of the camera has z < 0;
  * **image**: pixels, origin at the top-left corner of the top-left pixel's
    centre (pixel (0, 0) is the first pixel), x right, y **down**.

Cameras are pytrees whose fields may carry leading batch dimensions (one camera
per frame, per video, ...). Rotation is axis-angle (see :mod:`morphable.rotation`).

* :class:`OrthographicCamera` — ``u = (R X)_x + t_x, v = −(R X)_y + t_y``
  (one pixel per model unit).
* :class:`WeakPerspectiveCamera` (scaled orthographic) — as above with a scale
  ``s`` in pixels per model unit.
* :class:`PerspectiveCamera` — pinhole with focal length ``f`` (pixels) and
  principal point ``c``: ``X_c = R X + t``, ``u = c_x + f X_c/(−Z_c)``,
  ``v = c_y − f Y_c/(−Z_c)``.

As a perspective camera moves away (``t_z → −∞`` with ``f/|t_z|`` fixed) it
tends to the weak-perspective camera :func:`weak_perspective_limit` returns.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
from flax import struct

from morphable.rotation import axis_angle_to_matrix

__all__ = [
    "OrthographicCamera",
    "WeakPerspectiveCamera",
    "PerspectiveCamera",
    "Camera",
    "project",
    "to_camera_frame",
    "weak_perspective_limit",
    "depth",
]

_MIN_DEPTH = 1e-6


@struct.dataclass
class OrthographicCamera:
    """Orthographic camera, one pixel per model unit.

    Attributes:
      rotation: ``(..., 3)`` axis-angle, radians.
      translation: ``(..., 2)`` image position of the model origin, pixels.
    """

    rotation: jax.Array
    translation: jax.Array


@struct.dataclass
class WeakPerspectiveCamera:
    """Scaled-orthographic camera.

    Attributes:
      rotation: ``(..., 3)`` axis-angle, radians.
      scale: ``(...)`` pixels per model unit.
      translation: ``(..., 2)`` image position of the model origin, pixels.
    """

    rotation: jax.Array
    scale: jax.Array
    translation: jax.Array


@struct.dataclass
class PerspectiveCamera:
    """Pinhole camera.

    Attributes:
      rotation: ``(..., 3)`` axis-angle, radians (model → camera frame).
      translation: ``(..., 3)`` model origin in the camera frame, model units
        (``translation[..., 2] < 0`` puts the face in front of the camera).
      focal: ``(...)`` focal length, pixels.
      principal_point: ``(..., 2)`` pixels.
    """

    rotation: jax.Array
    translation: jax.Array
    focal: jax.Array
    principal_point: jax.Array


Camera = Union[OrthographicCamera, WeakPerspectiveCamera, PerspectiveCamera]


def _rotate(rotation: jax.Array, points: jax.Array) -> jax.Array:
    matrix = axis_angle_to_matrix(rotation)
    return jnp.einsum("...ij,...pj->...pi", matrix, points)


def to_camera_frame(camera: Camera, points: jax.Array) -> jax.Array:
    """Rigidly transform model points into the camera's frame.

    For orthographic and weak-perspective cameras this is the rotation only
    (their translation lives in the image plane).

    Args:
      camera: any camera; its batch dims broadcast with ``points``' leading dims.
      points: ``(..., P, 3)`` model units.

    Returns:
      ``(..., P, 3)`` points in the camera frame.
    """
    rotated = _rotate(camera.rotation, jnp.asarray(points))
    if isinstance(camera, PerspectiveCamera):
        return rotated + camera.translation[..., None, :]
    return rotated


def depth(camera: Camera, points: jax.Array) -> jax.Array:
    """Distance in front of the camera along its axis, ``(..., P)``.

    For a perspective camera ``−Z_c`` (positive in front of the camera); for the
    affine cameras the rotated ``z`` (larger is nearer the viewer).
    """
    cam = to_camera_frame(camera, points)
    return -cam[..., 2] if isinstance(camera, PerspectiveCamera) else cam[..., 2]


def project(camera: Camera, points: jax.Array) -> jax.Array:
    """Project model points to pixel coordinates (origin top-left, y down).

    Args:
      camera: :class:`OrthographicCamera`, :class:`WeakPerspectiveCamera` or
        :class:`PerspectiveCamera` with batch dims ``(...)``.
      points: ``(..., P, 3)`` in model units.

    Returns:
      ``(..., P, 2)`` pixels. For a perspective camera, points at or behind the
      camera are projected as if at a tiny positive depth (finite, never NaN).

    Examples:
      >>> import jax.numpy as jnp
      >>> cam = WeakPerspectiveCamera(rotation=jnp.zeros(3), scale=jnp.array(2.0),
      ...                             translation=jnp.array([100.0, 50.0]))
      >>> project(cam, jnp.array([[1.0, 1.0, 0.0]])).tolist()
      [[102.0, 48.0]]
    """
    points = jnp.asarray(points)
    if isinstance(camera, PerspectiveCamera):
        cam = to_camera_frame(camera, points)
        z = jnp.maximum(-cam[..., 2], _MIN_DEPTH)
        f = jnp.asarray(camera.focal)[..., None]
        u = camera.principal_point[..., None, 0] + f * cam[..., 0] / z
        v = camera.principal_point[..., None, 1] - f * cam[..., 1] / z
        return jnp.stack([u, v], axis=-1)
    if not isinstance(camera, (OrthographicCamera, WeakPerspectiveCamera)):
        raise TypeError(f"camera: unsupported type {type(camera).__name__}")
    rotated = _rotate(camera.rotation, points)
    if isinstance(camera, WeakPerspectiveCamera):
        rotated = rotated * jnp.asarray(camera.scale)[..., None, None]
    flip = jnp.array([1.0, -1.0], dtype=rotated.dtype)
    return rotated[..., :2] * flip + camera.translation[..., None, :]


def weak_perspective_limit(camera: PerspectiveCamera) -> WeakPerspectiveCamera:
    """The weak-perspective camera a perspective camera tends to far away.

    Scale ``f / d`` with ``d = −t_z`` the distance of the model origin, and the
    image of the model origin as translation.
    """
    d = -camera.translation[..., 2]
    scale = camera.focal / d
    translation = camera.principal_point + scale[..., None] * camera.translation[..., :2] * jnp.array(
        [1.0, -1.0], dtype=camera.translation.dtype
    )
    return WeakPerspectiveCamera(rotation=camera.rotation, scale=scale, translation=translation)
