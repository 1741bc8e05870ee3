"""The face model: an additive identity + expression 3D Morphable Model as a JAX pytree.

Shape evaluation (:func:`shape`, :func:`landmarks`), sampling, cameras and
rotations, model editing and model I/O (ICT-FaceKit, eos/SFM, BFM, FLAME, LSFM,
native ``.npz``).

Examples:
  >>> import numpy as np, jax.numpy as jnp
  >>> import morphable
  >>> m = morphable.make_model(np.zeros((3, 3)), np.ones((3, 3, 2)), np.ones((3, 3, 1)),
  ...                          triangles=[[0, 1, 2]], landmark_indices=[0])
  >>> morphable.shape(m, jnp.zeros(2), jnp.zeros(1)).shape
  (3, 3)
"""

from morphable.model import (
    MorphableModel,
    Topology,
    landmark_mask,
    landmarks,
    make_model,
    sample,
    shape,
    vertices_at,
)
from morphable.camera import (
    Camera,
    OrthographicCamera,
    PerspectiveCamera,
    WeakPerspectiveCamera,
    depth,
    project,
    to_camera_frame,
    weak_perspective_limit,
)
from morphable import rotation
from morphable.paths import cache_dir, data_dir

__all__ = [
    "MorphableModel",
    "Topology",
    "make_model",
    "shape",
    "landmarks",
    "vertices_at",
    "sample",
    "landmark_mask",
    "Camera",
    "OrthographicCamera",
    "WeakPerspectiveCamera",
    "PerspectiveCamera",
    "project",
    "to_camera_frame",
    "depth",
    "weak_perspective_limit",
    "rotation",
    "data_dir",
    "cache_dir",
]
