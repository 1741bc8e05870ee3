"""Pose-dependent correspondences for the outer face contour (jawline) landmarks.

The 2D jawline landmarks of iBUG/300-W annotations (1–8 on the subject's right,
10–17 on the left; 1-based) lie on the face's silhouette, which slides over the
mesh as the head turns, so they have no fixed model vertex. As eos's
``contour_correspondence.hpp`` does, each such landmark is matched to the model
contour candidate vertex (``model.contour_right`` / ``model.contour_left``) whose
projection under the current camera and shape is nearest to it in the image.

Which side is matched depends on the yaw, again as eos: for a head turned
towards the subject's left (yaw ≥ 0 in :mod:`morphable.rotation`'s convention)
the subject's right cheek faces the camera and its outline is the model's right
contour, while the left-side landmarks trace the occluding silhouette, which the
candidate vertices do not describe, so they are left out; and vice versa. Below
``frontal_yaw_degrees`` both sides are matched. The chin (iBUG 9) keeps its fixed
vertex.

The matching works on a small table of the only model rows fitting needs (the
fixed landmark vertices and the contour candidates), built once per model layout
from static metadata by :func:`landmark_vertex_table`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from morphable.camera import Camera, project
from morphable.model import MorphableModel, vertices_at
from morphable.rotation import axis_angle_to_euler

__all__ = [
    "N_LANDMARKS",
    "RIGHT_CONTOUR_LANDMARKS",
    "LEFT_CONTOUR_LANDMARKS",
    "LandmarkVertexTable",
    "landmark_vertex_table",
    "match_contour",
    "contour_correspondences",
]

N_LANDMARKS = 68
RIGHT_CONTOUR_LANDMARKS = tuple(range(0, 8))
"""0-based indices of iBUG landmarks 1–8 (the subject's right jawline)."""
LEFT_CONTOUR_LANDMARKS = tuple(range(9, 17))
"""0-based indices of iBUG landmarks 10–17 (the subject's left jawline)."""


@dataclasses.dataclass(frozen=True)
class LandmarkVertexTable:
    """The model rows landmark fitting uses, and where each landmark may map (NumPy, static).

    Attributes:
      vertices: ``(K,) int`` sorted distinct vertex indices: every fixed
        landmark vertex and every contour candidate.
      fixed: ``(68,) int`` position in ``vertices`` of each landmark's fixed
        vertex, ``-1`` where the model has none.
      right, left: ``(R,)``, ``(Q,) int`` positions in ``vertices`` of the
        right / left contour candidates (empty when the model has none).
    """

    vertices: np.ndarray
    fixed: np.ndarray
    right: np.ndarray
    left: np.ndarray

    @property
    def has_contour(self) -> bool:
        """Whether the model ships contour candidates on at least one side."""
        return bool(self.right.size or self.left.size)


def landmark_vertex_table(model: MorphableModel) -> LandmarkVertexTable:
    """Build the :class:`LandmarkVertexTable` of a model (from static metadata only).

    Raises:
      ValueError: if the model does not have 68 landmark slots (iBUG order).

    Examples:
      >>> import numpy as np
      >>> from morphable import make_model
      >>> m = make_model(np.zeros((5, 3)), np.zeros((5, 3, 1)), np.zeros((5, 3, 0)),
      ...                triangles=[[0, 1, 2]], landmark_indices=[4] + [-1] * 67,
      ...                contour_right=[1, 2], contour_left=[3])
      >>> t = landmark_vertex_table(m)
      >>> t.vertices.tolist(), t.fixed[:2].tolist(), t.right.tolist(), t.left.tolist()
      ([1, 2, 3, 4], [3, -1], [0, 1], [2])
    """
    fixed_vertices = np.asarray(model.landmark_indices, dtype=np.int64)
    if fixed_vertices.shape != (N_LANDMARKS,):
        raise ValueError(
            f"model: expected {N_LANDMARKS} landmark slots (iBUG order), got {fixed_vertices.shape[0]}"
        )
    right = np.asarray(model.contour_right, dtype=np.int64)
    left = np.asarray(model.contour_left, dtype=np.int64)
    vertices = np.unique(np.concatenate([fixed_vertices[fixed_vertices >= 0], right, left]))
    if vertices.size == 0:
        vertices = np.zeros(1, np.int64)  # keeps gathers well-formed; every landmark stays masked
    fixed = np.where(fixed_vertices >= 0, np.searchsorted(vertices, fixed_vertices), -1)
    return LandmarkVertexTable(
        vertices=vertices,
        fixed=fixed,
        right=np.searchsorted(vertices, right),
        left=np.searchsorted(vertices, left),
    )


def _nearest(candidates: np.ndarray, projected: jax.Array, points: jax.Array) -> jax.Array:
    """Positions (from ``candidates``) of the projected candidate nearest to each point."""
    distances = jnp.sum((points[..., :, None, :] - projected[..., candidates, :][..., None, :, :]) ** 2, -1)
    return jnp.asarray(candidates, jnp.int32)[jnp.argmin(distances, axis=-1)]


def match_contour(
    table: LandmarkVertexTable,
    projected: jax.Array,
    landmarks2d: jax.Array,
    weights: jax.Array,
    yaw_degrees: jax.Array,
    frontal_yaw_degrees: float = 10.0,
) -> jax.Array:
    """Contour correspondences on the table's rows (the jittable core).

    Args:
      table: from :func:`landmark_vertex_table`.
      projected: ``(..., K, 2)`` the table's rows projected into the image, pixels.
      landmarks2d: ``(..., 68, 2)`` pixels.
      weights: ``(..., 68)``; landmarks with weight 0 get no correspondence.
      yaw_degrees: ``(...)`` head yaw (:mod:`morphable.rotation` convention).
      frontal_yaw_degrees: below this absolute yaw both sides are matched.

    Returns:
      ``(..., 68) int32`` positions into ``table.vertices``; ``-1`` for no
      correspondence (a side not matched at this yaw, a missing landmark, or a
      landmark the model has no vertex for). Landmarks outside the contour keep
      their fixed vertex.
    """
    batch = jnp.broadcast_shapes(
        projected.shape[:-2], landmarks2d.shape[:-2], weights.shape[:-1], jnp.shape(yaw_degrees)
    )
    positions = jnp.broadcast_to(jnp.asarray(table.fixed, jnp.int32), (*batch, N_LANDMARKS))
    for side, landmark_ids, use in (
        (table.right, RIGHT_CONTOUR_LANDMARKS, yaw_degrees >= -frontal_yaw_degrees),
        (table.left, LEFT_CONTOUR_LANDMARKS, yaw_degrees < frontal_yaw_degrees),
    ):
        if side.size == 0:
            continue
        ids = np.asarray(landmark_ids)
        nearest = _nearest(side, projected, landmarks2d[..., ids, :])
        chosen = jnp.where(jnp.asarray(use)[..., None], nearest, -1)
        positions = positions.at[..., ids].set(jnp.broadcast_to(chosen, (*batch, ids.size)))
    return jnp.where(weights > 0, positions, -1)


@functools.partial(jax.jit, static_argnames=("frontal_yaw_degrees",))
def contour_correspondences(
    model: MorphableModel,
    camera: Camera,
    identity: jax.Array,
    expression: jax.Array,
    landmarks2d: jax.Array,
    weights: jax.Array | None = None,
    frontal_yaw_degrees: float = 10.0,
) -> jax.Array:
    """Vertex index of every landmark for the current camera and shape.

    Args:
      model: the morphable model (68 landmark slots, iBUG order).
      camera: any :mod:`morphable.camera` camera with batch dims ``(...)``.
      identity: ``(..., n_i)``; expression: ``(..., n_e)`` coefficients.
      landmarks2d: ``(..., 68, 2)`` image landmarks, pixels; NaN = missing.
      weights: ``(..., 68)``, 0 = missing; default ones.
      frontal_yaw_degrees: below this absolute yaw both contour sides are
        matched (0 reproduces eos: one side only).

    Returns:
      ``(..., 68) int32`` model vertex indices; ``-1`` where a landmark has no
      correspondence (see :func:`match_contour`).

    Examples:
      >>> import numpy as np, jax.numpy as jnp
      >>> from morphable import make_model, WeakPerspectiveCamera
      >>> mean = np.array([[-1.0, 0, 0], [-2.0, 0, 0], [0, -1, 0]])
      >>> m = make_model(mean, np.zeros((3, 3, 1)), np.zeros((3, 3, 0)), triangles=[[0, 1, 2]],
      ...                landmark_indices=[-1] * 8 + [2] + [-1] * 59, contour_right=[0, 1])
      >>> cam = WeakPerspectiveCamera(jnp.zeros(3), jnp.array(10.0), jnp.array([50.0, 50.0]))
      >>> y = jnp.full((68, 2), 50.0).at[0].set([31.0, 50.0])
      >>> contour_correspondences(m, cam, jnp.zeros(1), jnp.zeros(0), y)[:9].tolist()
      [1, 0, 0, 0, 0, 0, 0, 0, 2]
    """
    table = landmark_vertex_table(model)
    landmarks2d = jnp.asarray(landmarks2d)
    finite = jnp.all(jnp.isfinite(landmarks2d), -1)
    weights = jnp.ones(landmarks2d.shape[:-1]) if weights is None else jnp.asarray(weights)
    weights = jnp.where(finite, weights, 0.0)
    landmarks2d = jnp.where(finite[..., None], landmarks2d, 0.0)
    rows = vertices_at(model, table.vertices, identity, expression)
    projected = project(camera, rows)
    yaw = axis_angle_to_euler(camera.rotation)[..., 0]
    positions = match_contour(table, projected, landmarks2d, weights, yaw, frontal_yaw_degrees)
    vertices = jnp.asarray(table.vertices, jnp.int32)
    return jnp.where(positions >= 0, vertices[jnp.maximum(positions, 0)], -1)
