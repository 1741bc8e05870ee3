"""From a photo to fitted faces: detect every face, find its 68 landmarks, fit the model to all of them.

:func:`fit_faces` is the one "photo → faces → landmarks → fit" step shared by the
command line's ``predict`` and ``demo``: a detector (:mod:`fitting.detection`,
dlib by default) finds the faces and their iBUG landmarks, and one batched
:func:`fitting.image.fit_image` call fits identity, expression and camera to
each face independently. Read the photo with :func:`fitting.media.read_image`
(RGB ``uint8``, errors that name the file).

The batch is padded to the next power of two (with copies of the first face,
whose fits are discarded), so photos with 1, 2, 3–4, 5–8, … faces reuse one
compiled fitter per bucket instead of compiling one per face count.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fitting.config import ImageFitConfig
from fitting.detection import N_LANDMARKS, FaceDetection, LandmarkDetector, check_image
from fitting.image import ImageFitResult, fit_image
from morphable.model import MorphableModel

__all__ = ["FaceFit", "fit_faces"]


@dataclasses.dataclass(frozen=True)
class FaceFit:
    """One detected face and the model fitted to its landmarks.

    Attributes:
      box: ``(4,) float32`` face box ``x0, y0, x1, y1``, pixels (origin top-left).
      landmarks: ``(68, 2) float32`` detected iBUG points, 0-based pixels.
      score: the detector's confidence (backend-specific scale, higher is more
        confident; the HOG SVM margin for dlib).
      fit: the unbatched :class:`fitting.image.ImageFitResult` of this face
        (identity ``(n_i,)``, expression ``(n_e,)``, camera, ``rmse`` in pixels, …).
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    fit: ImageFitResult


def _bucket(count: int) -> int:
    """Smallest power of two ≥ ``count``: the padded batch size."""
    return 1 << max(count - 1, 0).bit_length()


def fit_faces(
    image: np.ndarray,
    model: MorphableModel,
    *,
    detector: LandmarkDetector | None = None,
    config: ImageFitConfig = ImageFitConfig(),
    max_faces: int | None = None,
) -> list[FaceFit]:
    """Detect the faces of a photo and fit the model to each face's 68 landmarks.

    Args:
      image: ``(H, W, 3) uint8`` RGB pixels (greyscale ``(H, W)`` accepted), e.g.
        from :func:`fitting.media.read_image`.
      model: a :class:`morphable.MorphableModel` with 68 landmark slots.
      detector: any :class:`fitting.detection.LandmarkDetector`; default a new
        :class:`fitting.detection.DlibDetector` (pass one in to reuse it across
        photos: building it loads a 100 MB file).
      config: the single-image fitter's settings.
      max_faces: fit at most this many faces, the most confident ones; ``None``
        fits all.

    Returns:
      One :class:`FaceFit` per face, most confident first; an empty list when the
      detector finds no face. All faces are fitted by one batched
      :func:`fitting.image.fit_image` call; the camera's principal point is the
      image centre.

    Raises:
      ValueError: an image that is not ``uint8`` RGB, a bad ``max_faces``, or a
        detector answer of the wrong shape (each naming the argument).
      ImportError: ``detector`` is ``None`` and dlib is not installed.

    Examples:
      >>> from fitting.media import read_image  # doctest: +SKIP
      >>> from morphable.io import load_ict  # doctest: +SKIP
      >>> faces = fit_faces(read_image("group.jpg"), load_ict(region="face"))  # doctest: +SKIP
      >>> [(round(face.score, 2), float(face.fit.rmse)) for face in faces]  # doctest: +SKIP
      [(1.16, 1.5)]
    """
    image = check_image(image)
    if max_faces is not None and (
        isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 1
    ):
        raise ValueError(f"max_faces: must be a positive int or None, got {max_faces!r}")
    if detector is None:
        from fitting.detection import DlibDetector

        detector = DlibDetector()
    detection = detector.detect(image)
    if not isinstance(detection, FaceDetection):
        raise ValueError(f"detector: detect() must return a FaceDetection, got {type(detection).__name__}")
    # Re-validate and order by score: a detector may build its answer without FaceDetection.create.
    detection = FaceDetection.create(detection.boxes, detection.landmarks, detection.scores)
    count = detection.n_faces if max_faces is None else min(detection.n_faces, int(max_faces))
    if count == 0:
        return []

    landmarks = detection.landmarks[:count]
    padded = np.concatenate([landmarks, np.repeat(landmarks[:1], _bucket(count) - count, axis=0)])
    height, width = image.shape[:2]
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0], np.float32)
    fits = fit_image(model, padded, principal_point=centre, config=config)
    return [
        FaceFit(
            box=detection.boxes[k].copy(),
            landmarks=landmarks[k].reshape(N_LANDMARKS, 2).copy(),
            score=float(detection.scores[k]),
            fit=jax.tree_util.tree_map(lambda leaf, k=k: leaf[k], fits),
        )
        for k in range(count)
    ]
