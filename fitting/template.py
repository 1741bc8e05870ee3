"""Template alignment: warp a face to the 224×224 frame the regressor sees (paper §III-C).

The paper registers every frame to a template before the network: "the frame
aligned to a 224×224 template whose 68 points are the mean face's landmarks
projected into the image". Here:

* **The template** (:func:`make_template`) — the model's 68 mean-face landmarks
  (identity = 0, expression = 0) projected **frontally** (orthographic, no
  rotation: ``u = X``, ``v = −Y``), then scaled and centred so that the larger
  side of their bounding box spans ``1 − 2·margin`` of the crop (default margin
  0.15: 157 of 224 pixels for the ICT model) with the box centred
  horizontally and its centre ``vertical_offset·size`` below the crop centre
  (default 0.05: 11 px, so the crop keeps a little more forehead above the
  brows than neck below the chin). The 68 points span brows to chin, so the
  margin holds the forehead, the ears' roots and a little background, which the
  translation/scale jitter of the input pipeline needs.
* **The similarity** (:func:`similarity_to_template`) — the 2D similarity
  (rotation, uniform scale, translation; no reflection or shear, so the face's
  proportions — which carry the expression — are preserved) that maps the image
  landmarks onto the template points in the weighted least-squares sense.
* **The warp** (:func:`align_face`) — OpenCV ``warpAffine`` of the image by that
  matrix into the ``size × size`` crop; :func:`transform_points` maps landmarks
  and :func:`warp_camera` maps a weak-perspective camera the same way, so fits
  made in the original frame can be stored in crop coordinates.

Coordinates are pixels with the origin at the centre of the top-left pixel, x
right, y down (the convention of :func:`morphable.camera.project` and of OpenCV's
``warpAffine``), so no half-pixel shift appears anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import cv2
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from morphable.camera import WeakPerspectiveCamera
from morphable.model import MorphableModel, landmark_mask, landmarks

__all__ = [
    "TEMPLATE_SIZE",
    "N_TEMPLATE_POINTS",
    "Template",
    "make_template",
    "similarity_to_template",
    "align_face",
    "transform_points",
    "invert_similarity",
    "compose_similarity",
    "warp_camera",
]

TEMPLATE_SIZE = 224
"""Side of the aligned crop in pixels (the ResNet input of the paper)."""

N_TEMPLATE_POINTS = 68
"""iBUG / Multi-PIE 68-point markup."""

_BORDER_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}
_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """The aligned-crop frame: 68 target points in a ``size × size`` crop.

    Attributes:
      points: ``(68, 2) float64`` template landmark positions, crop pixels.
      weights: ``(68,) float64`` weight of each point in the similarity fit
        (0 for landmarks the model has no vertex for, e.g. SFM's jaw contour).
      size: crop side, pixels.
    """

    points: np.ndarray
    weights: np.ndarray
    size: int = TEMPLATE_SIZE

    def __post_init__(self):
        points = np.array(self.points, dtype=np.float64)
        weights = np.array(self.weights, dtype=np.float64)
        if points.shape != (N_TEMPLATE_POINTS, 2):
            raise ValueError(f"points: expected shape (68, 2), got {points.shape}")
        if weights.shape != (N_TEMPLATE_POINTS,):
            raise ValueError(f"weights: expected shape (68,), got {weights.shape}")
        if not (np.all(np.isfinite(points)) and np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise ValueError("points/weights: must be finite, weights non-negative")
        if int(np.sum(weights > 0)) < 2:
            raise ValueError("weights: at least two template points must have positive weight")
        if int(self.size) < 1:
            raise ValueError(f"size: must be positive, got {self.size}")
        points.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "size", int(self.size))

    @property
    def digest(self) -> str:
        """Short content hash (points rounded to 1e-4 px, weights, size), to check that two
        datasets or a dataset and a trained model use the same template."""
        payload = np.round(np.concatenate([self.points.ravel(), self.weights]), 4).tobytes()
        return hashlib.sha1(payload + str(self.size).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored in shard metadata and training run folders)."""
        return {"size": self.size, "points": self.points.tolist(), "weights": self.weights.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Template":
        """Inverse of :meth:`to_dict`."""
        return cls(points=np.asarray(data["points"]), weights=np.asarray(data["weights"]), size=int(data["size"]))

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Template)
            and other.size == self.size
            and np.array_equal(other.points, self.points)
            and np.array_equal(other.weights, self.weights)
        )

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Template(size={self.size}, points={int(np.sum(self.weights > 0))}/68, digest={self.digest})"


def make_template(
    model: MorphableModel,
    *,
    size: int = TEMPLATE_SIZE,
    margin: float = 0.15,
    vertical_offset: float = 0.05,
) -> Template:
    """The template of the paper: the mean face's 68 landmarks projected frontally.

    Args:
      model: a morphable model with 68 landmarks (ICT: all fixed vertices).
        Landmarks without a vertex get weight 0 (and a placeholder position).
      size: crop side, pixels (default 224).
      margin: fraction of ``size`` left on each side of the larger side of the
        landmarks' bounding box, ``0 ≤ margin < 0.5``.
      vertical_offset: downward shift of the bounding-box centre from the crop
        centre, as a fraction of ``size``.

    Returns:
      The :class:`Template` (points in crop pixels, origin at the top-left pixel
      centre, y down).

    Examples:
      >>> import numpy as np
      >>> from morphable.model import make_model
      >>> corners = np.array([[-1.0, 1, 0], [1, 1, 0], [1, -1, 0], [-1, -1, 0]])
      >>> mean = corners[np.arange(68) % 4]
      >>> m = make_model(mean, np.zeros((68, 3, 1)), np.zeros((68, 3, 0)),
      ...                triangles=[[0, 1, 2]], landmark_indices=range(68))
      >>> t = make_template(m, size=100, margin=0.1, vertical_offset=0.0)
      >>> t.points[:4].tolist()
      [[9.5, 9.5], [89.5, 9.5], [89.5, 89.5], [9.5, 89.5]]
    """
    if len(model.landmark_indices) != N_TEMPLATE_POINTS:
        raise ValueError(f"model: expected 68 landmarks, got {len(model.landmark_indices)}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin: must be in [0, 0.5), got {margin}")
    mask = landmark_mask(model)
    points3 = np.asarray(landmarks(model, np.zeros(model.n_identity), np.zeros(model.n_expression)), np.float64)
    # Frontal orthographic projection into image axes (model y is up, image y down).
    frontal = np.stack([points3[:, 0], -points3[:, 1]], axis=1)
    valid = frontal[mask]
    low, high = valid.min(axis=0), valid.max(axis=0)
    extent = float(np.max(high - low))
    if extent <= 0:
        raise ValueError("model: the mean-face landmarks are degenerate (zero extent)")
    scale = (1.0 - 2.0 * margin) * size / extent
    # Pixel centres run from 0 to size − 1, so the crop's centre is (size − 1) / 2.
    centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0 + vertical_offset * size])
    points = (frontal - (low + high) / 2.0) * scale + centre
    points[~mask] = centre
    return Template(points=points, weights=mask.astype(np.float64), size=size)


def _landmark_array(landmarks_2d, what: str = "landmarks") -> np.ndarray:
    points = np.asarray(landmarks_2d, dtype=np.float64)
    if points.ndim < 2 or points.shape[-2:] != (N_TEMPLATE_POINTS, 2):
        raise ValueError(f"{what}: expected shape (..., 68, 2), got {points.shape}")
    return points


def similarity_to_template(landmarks_2d, template: Template, weights=None) -> np.ndarray:
    """Least-squares 2D similarity taking image landmarks onto the template points.

    Minimises ``Σ_k w_k ‖A x_k + t − p_k‖²`` over ``A = [[a, −b], [b, a]]`` (a
    rotation times a scale) and ``t``, in closed form (Umeyama 1991 restricted to
    2D): with weighted centroids removed, ``a = Σ w x·p / Σ w|x|²`` and
    ``b = Σ w (x × p) / Σ w|x|²``. It is written out instead of calling OpenCV's
    ``estimateAffinePartial2D`` because that function is a robust (RANSAC/LMedS)
    estimator without per-point weights; here missing points must simply not
    count, and the result must be the exact least-squares solution.

    Args:
      landmarks_2d: ``(..., 68, 2)`` image landmarks, pixels. NaN points are
        treated as missing (weight 0).
      template: the target :class:`Template`.
      weights: optional ``(..., 68)`` non-negative per-point weights (e.g.
        detector confidences), multiplied with the template's weights.

    Returns:
      ``(..., 2, 3) float64`` matrix ``[A | t]`` mapping image pixels to crop
      pixels (``crop = A @ image_point + t``), the form ``cv2.warpAffine`` takes.

    Raises:
      ValueError: on a wrong shape, negative weights, or fewer than two usable
        points (or all usable points coincident).

    Examples:
      >>> import numpy as np
      >>> t = Template(points=np.random.default_rng(0).uniform(0, 224, (68, 2)), weights=np.ones(68))
      >>> m = similarity_to_template((t.points - 10.0) / 2.0, t)
      >>> np.round(m, 6).tolist()
      [[2.0, -0.0, 10.0], [0.0, 2.0, 10.0]]
    """
    points = _landmark_array(landmarks_2d)
    target = template.points
    w = np.broadcast_to(template.weights, points.shape[:-1]).copy()
    if weights is not None:
        extra = np.asarray(weights, dtype=np.float64)
        if extra.shape[-1:] != (N_TEMPLATE_POINTS,) or np.any(extra < 0) or not np.all(np.isfinite(extra)):
            raise ValueError(f"weights: expected finite non-negative values of shape (..., 68), got {extra.shape}")
        w = w * extra
    missing = ~np.all(np.isfinite(points), axis=-1)
    w = np.where(missing, 0.0, w)
    points = np.where(missing[..., None], 0.0, points)
    total = w.sum(axis=-1)
    if np.any(np.sum(w > 0, axis=-1) < 2):
        raise ValueError("landmarks: fewer than two usable (finite, positive-weight) points")
    mean_x = np.einsum("...k,...kc->...c", w, points) / total[..., None]
    mean_p = np.einsum("...k,kc->...c", w, target) / total[..., None]
    x = points - mean_x[..., None, :]
    p = target - mean_p[..., None, :]
    spread = np.einsum("...k,...kc,...kc->...", w, x, x)
    if np.any(spread <= 1e-12 * np.maximum(total, 1e-300)):
        raise ValueError("landmarks: the usable points all coincide; no similarity is defined")
    a = np.einsum("...k,...kc,...kc->...", w, x, p) / spread
    b = np.einsum("...k,...k->...", w, x[..., 0] * p[..., 1] - x[..., 1] * p[..., 0]) / spread
    linear = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)
    translation = mean_p - np.einsum("...ij,...j->...i", linear, mean_x)
    return np.concatenate([linear, translation[..., None]], axis=-1)


def transform_points(points, matrix) -> np.ndarray:
    """Apply a ``(..., 2, 3)`` affine matrix to ``(..., P, 2)`` points (pixels → pixels).

    Examples:
      >>> transform_points([[1.0, 2.0]], [[2.0, 0.0, 1.0], [0.0, 2.0, -1.0]]).tolist()
      [[3.0, 3.0]]
    """
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    if points.shape[-1:] != (2,) or matrix.shape[-2:] != (2, 3):
        raise ValueError(f"points/matrix: expected (..., P, 2) and (..., 2, 3), got {points.shape}, {matrix.shape}")
    return np.einsum("...ij,...pj->...pi", matrix[..., :, :2], points) + matrix[..., None, :, 2]


def invert_similarity(matrix) -> np.ndarray:
    """Inverse of a ``(..., 2, 3)`` affine matrix (crop → image for an alignment matrix).

    Examples:
      >>> invert_similarity([[2.0, 0.0, 4.0], [0.0, 2.0, 6.0]]).tolist()
      [[0.5, 0.0, -2.0], [0.0, 0.5, -3.0]]
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(matrix[..., :, :2])
    return np.concatenate([inverse, -np.einsum("...ij,...j->...i", inverse, matrix[..., :, 2])[..., None]], -1)


def compose_similarity(outer, inner) -> np.ndarray:
    """``outer ∘ inner`` for ``(..., 2, 3)`` affine matrices (apply ``inner`` first).

    Examples:
      >>> compose_similarity([[2.0, 0, 0], [0, 2.0, 0]], [[1.0, 0, 1], [0, 1.0, 1]]).tolist()
      [[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]]
    """
    outer = np.asarray(outer, dtype=np.float64)
    inner = np.asarray(inner, dtype=np.float64)
    linear = outer[..., :, :2] @ inner[..., :, :2]
    translation = np.einsum("...ij,...j->...i", outer[..., :, :2], inner[..., :, 2]) + outer[..., :, 2]
    return np.concatenate([linear, translation[..., None]], axis=-1)


def align_face(
    image: np.ndarray,
    landmarks_2d,
    template: Template,
    *,
    weights=None,
    border: str = "constant",
    border_value: int = 0,
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """Warp one image so its landmarks land on the template (the regressor's input).

    Args:
      image: ``(H, W, 3)`` or ``(H, W)`` uint8 image (any channel order; it is
        kept). A grey image is replicated to three channels.
      landmarks_2d: ``(68, 2)`` landmarks in ``image``, pixels; NaN = missing.
      template: the :class:`Template`.
      weights: optional ``(68,)`` per-landmark weights.
      border: ``"constant"``, ``"replicate"`` or ``"reflect"`` — how pixels
        outside the image are filled.
      border_value: grey level of a constant border.
      interpolation: ``"linear"`` (default), ``"cubic"`` or ``"nearest"``.

    Returns:
      ``(crop (size, size, 3) uint8, matrix (2, 3) float64)`` with ``matrix``
      mapping image pixels to crop pixels (see :func:`similarity_to_template`).

    Examples:
      >>> import numpy as np
      >>> t = Template(points=np.random.default_rng(0).uniform(50, 150, (68, 2)), weights=np.ones(68))
      >>> crop, m = align_face(np.zeros((300, 400, 3), np.uint8), t.points + 20.0, t)
      >>> crop.shape, np.round(m[:, 2], 6).tolist()
      ((224, 224, 3), [-20.0, -20.0])
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected shape (H, W, 3) or (H, W), got {image.shape}")
    if border not in _BORDER_MODES:
        raise ValueError(f"border: expected one of {sorted(_BORDER_MODES)}, got {border!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    points = _landmark_array(landmarks_2d)
    if points.ndim != 2:
        raise ValueError(f"landmarks: expected one face (68, 2), got {points.shape}; align images one at a time")
    matrix = similarity_to_template(points, template, weights)
    crop = cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (template.size, template.size),
        flags=_INTERPOLATIONS[interpolation],
        borderMode=_BORDER_MODES[border],
        borderValue=(border_value,) * 3,
    )
    return crop, matrix


def warp_camera(camera: WeakPerspectiveCamera, matrix) -> WeakPerspectiveCamera:
    """The weak-perspective camera that projects into the warped (aligned) image.

    A similarity ``A = σ·R2(θ)`` (image axes, y down) composed with
    ``u = s·F·(R X)_xy + t`` (``F = diag(1, −1)``) is again weak-perspective:
    since ``R2(θ)·F = F·R2(−θ)`` the new camera has rotation ``Rz(−θ)·R``,
    scale ``σ·s`` and translation ``A t + c``. So ``project(warp_camera(cam, M),
    X) == transform_points(project(cam, X), M)`` exactly.

    Args:
      camera: camera with batch dims ``(...)`` (rotation ``(..., 3)``).
      matrix: ``(..., 2, 3)`` similarity (e.g. from :func:`align_face`); a
        general affine matrix is rejected.

    Returns:
      The camera in the warped image's pixels (float32 leaves; computed in float64).

    Examples:
      >>> import jax.numpy as jnp
      >>> cam = WeakPerspectiveCamera(rotation=jnp.zeros(3), scale=jnp.array(1.0), translation=jnp.zeros(2))
      >>> float(warp_camera(cam, [[2.0, 0.0, 5.0], [0.0, 2.0, 7.0]]).scale)
      2.0
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"matrix: expected shape (..., 2, 3), got {matrix.shape}")
    a, b = matrix[..., 0, 0], matrix[..., 1, 0]
    if not (np.allclose(matrix[..., 1, 1], a, atol=1e-6 * np.abs(a).max(initial=1.0))
            and np.allclose(matrix[..., 0, 1], -b, atol=1e-6 * np.abs(b).max(initial=1.0))):
        raise ValueError("matrix: not a similarity (rotation × uniform scale + translation)")
    sigma = np.hypot(a, b)
    theta = np.arctan2(b, a)
    cos, sin = np.cos(-theta), np.sin(-theta)
    zero, one = np.zeros_like(cos), np.ones_like(cos)
    rz = np.stack(
        [np.stack([cos, -sin, zero], -1), np.stack([sin, cos, zero], -1), np.stack([zero, zero, one], -1)], -2
    )
    rotation_vector = np.asarray(camera.rotation, np.float64)
    batch = np.broadcast_shapes(rotation_vector.shape[:-1], sigma.shape)
    # SciPy's batched rotation conversions (float64, no per-shape compilation as
    # eager JAX would need); same axis-angle convention as morphable.rotation.
    rotation = rz @ Rotation.from_rotvec(rotation_vector.reshape(-1, 3)).as_matrix().reshape(*rotation_vector.shape[:-1], 3, 3)
    rotation = np.broadcast_to(rotation, (*batch, 3, 3)).reshape(-1, 3, 3)
    new_rotation = Rotation.from_matrix(rotation).as_rotvec().reshape(*batch, 3)
    translation = np.einsum("...ij,...j->...i", matrix[..., :, :2], np.asarray(camera.translation, np.float64))
    translation = translation + matrix[..., :, 2]
    return WeakPerspectiveCamera(
        rotation=jnp.asarray(new_rotation, jnp.float32),
        scale=jnp.asarray(sigma * np.asarray(camera.scale, np.float64), jnp.float32),
        translation=jnp.asarray(translation, jnp.float32),
    )
