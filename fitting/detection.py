"""Face and 68-point landmark detection behind one small interface.

A detector is anything with ``detect(image) -> FaceDetection`` (the
:class:`LandmarkDetector` protocol). Two backends:

* :class:`DlibDetector` — dlib's HOG face detector and the 68-point shape predictor
  file shipped by the ``face_recognition_models`` package. Works offline; the
  reference backend of this project (``pip install 'deepexp3d[landmarks]'``). That
  model was trained on the 300-W images, whose annotations are for research use
  only, so dlib's documentation rules out commercial use of it.
* :class:`FaceAlignmentDetector` — an adapter for the ``face-alignment`` package
  (Bulat & Tzimiropoulos' FAN) in its 2D, 2.5D ("3D-aware": the projection of
  fixed 3D points, the landmarks the paper fits) and 3D modes. Its network weights
  download on first use, so it cannot run without internet; the network object is
  injectable, which is how it is tested here.

Landmarks follow the iBUG / Multi-PIE 68-point order, in 0-based pixel
coordinates (origin top-left, x right, y down), as :func:`fitting.pts.read_pts`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from flax import struct

__all__ = [
    "FaceDetection",
    "LandmarkDetector",
    "DlibDetector",
    "FaceAlignmentDetector",
    "check_image",
    "dlib_predictor_path",
    "N_LANDMARKS",
]

N_LANDMARKS = 68
"""Points per face in the iBUG / Multi-PIE markup."""

_LANDMARKS_EXTRA = "pip install 'deepexp3d[landmarks]'"


@struct.dataclass
class FaceDetection:
    """The faces found in one image, most confident first.

    Attributes:
      boxes: ``(K, 4) float32`` face boxes ``x0, y0, x1, y1``, pixels.
      landmarks: ``(K, 68, 2) float32`` iBUG-ordered points, 0-based pixels.
      scores: ``(K,) float32`` detector confidence (backend-specific scale: the
        HOG SVM margin for dlib, the face detector's probability for face-alignment);
        higher is more confident.
      depth: ``(K, 68) float32`` relative depth of each point, pixels (larger is
        farther, face-alignment's 3D mode), or ``None`` when the backend gives none.
    """

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    depth: np.ndarray | None = None

    @property
    def n_faces(self) -> int:
        """Number of faces ``K``."""
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> FaceDetection:
        """No face (``K = 0``).

        Examples:
          >>> FaceDetection.empty().n_faces
          0
        """
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            landmarks=np.zeros((0, N_LANDMARKS, 2), np.float32),
            scores=np.zeros((0,), np.float32),
        )

    @classmethod
    def create(cls, boxes, landmarks, scores, depth=None, *, sort: bool = True) -> FaceDetection:
        """Validate shapes, convert to ``float32`` and order the faces by decreasing score.

        Args:
          boxes: ``(K, 4)`` ``x0, y0, x1, y1`` pixels.
          landmarks: ``(K, 68, 2)`` pixels.
          scores: ``(K,)``.
          depth: ``(K, 68)`` or ``None``.
          sort: order faces by decreasing score (stable).

        Returns:
          :class:`FaceDetection`.

        Raises:
          ValueError: naming the argument whose shape is wrong.

        Examples:
          >>> d = FaceDetection.create([[0, 0, 10, 10], [5, 5, 9, 9]], np.zeros((2, 68, 2)), [0.25, 0.75])
          >>> d.scores.tolist(), d.boxes[0].tolist()
          ([0.75, 0.25], [5.0, 5.0, 9.0, 9.0])
        """
        boxes = np.asarray(boxes, np.float32)
        landmarks = np.asarray(landmarks, np.float32)
        scores = np.asarray(scores, np.float32).reshape(-1)
        count = scores.shape[0]
        if count == 0 and boxes.size == 0 and landmarks.size == 0:
            return cls.empty()
        if boxes.shape != (count, 4):
            raise ValueError(f"boxes: expected shape ({count}, 4), got {boxes.shape}")
        if landmarks.shape != (count, N_LANDMARKS, 2):
            raise ValueError(f"landmarks: expected shape ({count}, {N_LANDMARKS}, 2), got {landmarks.shape}")
        if depth is not None:
            depth = np.asarray(depth, np.float32)
            if depth.shape != (count, N_LANDMARKS):
                raise ValueError(f"depth: expected shape ({count}, {N_LANDMARKS}), got {depth.shape}")
        if sort and count > 1:
            order = np.argsort(-scores, kind="stable")
            boxes, landmarks, scores = boxes[order], landmarks[order], scores[order]
            depth = None if depth is None else depth[order]
        return cls(boxes=boxes, landmarks=landmarks, scores=scores, depth=depth)


@runtime_checkable
class LandmarkDetector(Protocol):
    """Anything that finds faces and their 68 landmarks in an RGB image."""

    def detect(self, image: np.ndarray) -> FaceDetection:
        """Detect faces in ``image``: ``(H, W, 3) uint8`` RGB → :class:`FaceDetection`."""
        ...


def check_image(image, name: str = "image") -> np.ndarray:
    """Validate a detector's input and return it as a C-contiguous ``(H, W, 3) uint8`` array.

    Greyscale ``(H, W)`` or ``(H, W, 1)`` input is repeated to three channels.

    Args:
      image: ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` ``uint8`` pixels, RGB.
      name: what to call it in error messages.

    Raises:
      ValueError: wrong dtype, shape or an empty image.

    Examples:
      >>> check_image(np.zeros((4, 5), np.uint8)).shape
      (4, 5, 3)
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels (use fitting.media.read_image), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3) RGB, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def _import_dlib():
    try:
        return importlib.import_module("dlib")
    except ImportError as error:
        raise ImportError(
            f"DlibDetector needs dlib: {_LANDMARKS_EXTRA} (installs the dlib-bin wheel and "
            "face_recognition_models, which ships the 68-point model)"
        ) from error


def dlib_predictor_path() -> Path:
    """The 68-point shape predictor file shipped by ``face_recognition_models``.

    The file is located without importing the package, whose ``__init__`` needs
    ``pkg_resources`` (removed from recent setuptools).

    Returns:
      Path of ``shape_predictor_68_face_landmarks.dat`` (≈ 100 MB).

    Raises:
      ImportError: the package is not installed, naming the extra to install.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the dlib 68-point model comes from face_recognition_models: {_LANDMARKS_EXTRA}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise ImportError(f"face_recognition_models is installed but {path} is missing; reinstall it")
    return path


class DlibDetector:
    """dlib's HOG frontal face detector followed by its 68-point shape predictor.

    HOG's cost grows with the pixel count (≈ 0.2 s for a 1280×720 frame, ×4 per
    upsampling), so images whose longer side exceeds ``max_detection_side`` are
    downscaled for the face search only; the shape predictor always runs on the
    full-resolution image.

    Args:
      upsample: times the detector doubles the image before searching (HOG finds
        faces of ≈ 80 px and larger; each upsampling halves that). Default 1, the
        setting of the data set's reference numbers.
      max_detection_side: longer side, pixels, of the image the face search sees;
        ``None`` searches at full resolution. Default 1280.
      min_score: drop detections whose HOG score is below this (the detector's own
        threshold is 0; raise it to trade recall for fewer false faces). Default 0.
      predictor_path: a 68-point ``shape_predictor`` file; default
        :func:`dlib_predictor_path`.

    Raises:
      ImportError: dlib or the model package is missing, naming the extra.

    Examples:
      >>> detector = DlibDetector()  # doctest: +SKIP
      >>> detector.detect(read_image("face.jpg")).landmarks.shape  # doctest: +SKIP
      (1, 68, 2)
    """

    def __init__(
        self,
        *,
        upsample: int = 1,
        max_detection_side: int | None = 1280,
        min_score: float = 0.0,
        predictor_path: str | os.PathLike | None = None,
    ):
        if not isinstance(upsample, int) or upsample < 0:
            raise ValueError(f"upsample: must be a non-negative int, got {upsample!r}")
        if max_detection_side is not None and max_detection_side < 32:
            raise ValueError(f"max_detection_side: must be ≥ 32 pixels or None, got {max_detection_side!r}")
        dlib = _import_dlib()
        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        if not path.is_file():
            raise FileNotFoundError(f"predictor_path: shape predictor file not found: {path}")
        self.upsample = upsample
        self.max_detection_side = max_detection_side
        self.min_score = float(min_score)
        self.predictor_path = path
        self._dlib = dlib
        self._face_detector = dlib.get_frontal_face_detector()
        self._shape_predictor = dlib.shape_predictor(str(path))

    def __repr__(self) -> str:
        return (
            f"DlibDetector(upsample={self.upsample}, max_detection_side={self.max_detection_side}, "
            f"min_score={self.min_score})"
        )

    def detect(self, image: np.ndarray) -> FaceDetection:
        """Faces and 68 landmarks in one image.

        Args:
          image: ``(H, W, 3) uint8`` RGB (greyscale ``(H, W)`` accepted).

        Returns:
          :class:`FaceDetection` with the HOG score as ``scores``, most confident
          first; empty when no face is found.
        """
        import cv2

        image = check_image(image)
        height, width = image.shape[:2]
        scale = 1.0
        search = image
        if self.max_detection_side is not None and max(height, width) > self.max_detection_side:
            scale = self.max_detection_side / max(height, width)
            search = cv2.resize(
                image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
            )
        rectangles, scores, _ = self._face_detector.run(search, self.upsample, 0.0)
        boxes, landmarks, kept_scores = [], [], []
        for rectangle, score in zip(rectangles, scores):
            if score < self.min_score:
                continue
            box = (
                np.array([rectangle.left(), rectangle.top(), rectangle.right(), rectangle.bottom()], np.float64) / scale
            )
            full_resolution = self._dlib.rectangle(*(int(round(v)) for v in box))
            shape = self._shape_predictor(image, full_resolution)
            landmarks.append([(shape.part(k).x, shape.part(k).y) for k in range(N_LANDMARKS)])
            boxes.append(box)
            kept_scores.append(score)
        if not boxes:
            return FaceDetection.empty()
        return FaceDetection.create(np.array(boxes), np.array(landmarks), np.array(kept_scores))


FaceAlignmentMode = Literal["2d", "2.5d", "3d"]

# face-alignment ≥ 1.4 names; TWO_HALF_D are the 3D-aware points (3DFAN without depth).
_FACE_ALIGNMENT_TYPES = {"2d": "TWO_D", "2.5d": "TWO_HALF_D", "3d": "THREE_D"}


def _build_face_alignment_network(mode: FaceAlignmentMode, device: str, **options):
    try:
        face_alignment = importlib.import_module("face_alignment")
    except ImportError as error:
        raise ImportError(
            "FaceAlignmentDetector needs the face-alignment package (and PyTorch): "
            "pip install 'deepexp3d[face-alignment]' or pip install face-alignment; "
            "its network weights download on first use"
        ) from error
    landmarks_type = getattr(face_alignment.LandmarksType, _FACE_ALIGNMENT_TYPES[mode])
    return face_alignment.FaceAlignment(landmarks_type, device=device, **options)


class FaceAlignmentDetector:
    """Adapter for ``face_alignment.FaceAlignment`` (FAN landmarks, any of its face detectors).

    Args:
      mode: ``"2d"`` (points on the visible contour), ``"2.5d"`` (2D projections of
        fixed 3D points — the "3D-aware" landmarks the paper fits; the default) or
        ``"3d"`` (2.5D plus a per-point depth, returned as ``FaceDetection.depth``).
      network: an object with face-alignment's ``get_landmarks_from_image(image,
        detected_faces=None, return_bboxes=False, return_landmark_score=False)``;
        ``None`` builds ``face_alignment.FaceAlignment`` for ``mode`` (downloads
        weights on first use). Injecting it lets tests and callers share a network.
      device: PyTorch device when the network is built (``"cpu"``, ``"cuda"``).
      **options: passed to ``FaceAlignment`` when the network is built
        (e.g. ``face_detector="blazeface"``, ``flip_input=False``).

    Raises:
      ImportError: ``network`` is ``None`` and face-alignment is not installed.
      ValueError: unknown ``mode``, or a ``network`` without ``get_landmarks_from_image``.

    Examples:
      >>> class Fake:
      ...     def get_landmarks_from_image(self, image, detected_faces=None, return_bboxes=False,
      ...                                  return_landmark_score=False):
      ...         return [np.full((68, 2), 5.0)], [np.ones(68)], [np.array([1, 2, 9, 9, 0.99])]
      >>> d = FaceAlignmentDetector(network=Fake()).detect(np.zeros((16, 16, 3), np.uint8))
      >>> d.n_faces, d.boxes[0].tolist(), float(d.scores[0])
      (1, [1.0, 2.0, 9.0, 9.0], 0.9900000095367432)
    """

    def __init__(self, mode: FaceAlignmentMode = "2.5d", *, network=None, device: str = "cpu", **options):
        if mode not in _FACE_ALIGNMENT_TYPES:
            raise ValueError(f"mode: expected one of {sorted(_FACE_ALIGNMENT_TYPES)}, got {mode!r}")
        if network is None:
            network = _build_face_alignment_network(mode, device, **options)
        if not callable(getattr(network, "get_landmarks_from_image", None)):
            raise ValueError("network: expected an object with a get_landmarks_from_image method")
        self.mode = mode
        self.network = network

    def __repr__(self) -> str:
        return f"FaceAlignmentDetector(mode={self.mode!r}, network={type(self.network).__name__})"

    def detect(self, image: np.ndarray) -> FaceDetection:
        """Faces and 68 landmarks in one image.

        Args:
          image: ``(H, W, 3) uint8`` RGB (greyscale ``(H, W)`` accepted).

        Returns:
          :class:`FaceDetection`: boxes and scores from face-alignment's face detector
          (when it gives no score, the mean of the landmark heat-map maxima); in
          ``"3d"`` mode ``depth`` holds the third coordinate. Empty when no face.
        """
        image = check_image(image)
        with warnings.catch_warnings():
            # face-alignment warns on every image without a face; an empty result says it.
            warnings.filterwarnings("ignore", message="No faces were detected")
            output = self.network.get_landmarks_from_image(image, return_bboxes=True, return_landmark_score=True)
        landmarks, point_scores, boxes = output if isinstance(output, tuple) else (output, None, None)
        if landmarks is None or len(landmarks) == 0:
            return FaceDetection.empty()
        points = [np.asarray(face, np.float32).reshape(N_LANDMARKS, -1) for face in landmarks]
        xy = np.stack([face[:, :2] for face in points])
        depth = None
        if self.mode == "3d":
            if points[0].shape[1] < 3:
                raise ValueError("network: 3d mode expects (68, 3) landmarks, got (68, 2)")
            depth = np.stack([face[:, 2] for face in points])
        face_boxes = np.zeros((len(points), 4), np.float32)
        scores = np.full(len(points), np.nan, np.float32)
        for k in range(len(points)):
            box = None if boxes is None or k >= len(boxes) else np.asarray(boxes[k], np.float32).reshape(-1)
            if box is not None and box.size >= 4:
                face_boxes[k] = box[:4]
                if box.size >= 5:
                    scores[k] = box[4]
            else:
                # No box from the network (landmarks given for caller boxes): the points' extent.
                face_boxes[k] = [*xy[k].min(axis=0), *xy[k].max(axis=0)]
            if np.isnan(scores[k]):
                heat = None if point_scores is None or k >= len(point_scores) else np.asarray(point_scores[k])
                scores[k] = float(np.mean(heat)) if heat is not None and heat.size else 1.0
        return FaceDetection.create(face_boxes, xy, scores, depth)
