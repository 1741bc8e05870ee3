"""``deepexp3d predict``: emotions of the faces in a photo, or of the main face of a video, frame by frame.

Photo: detect every face and its 68 landmarks, fit the model to each
(:func:`fitting.faces.fit_faces`), classify each fitted expression, and write
``predictions.json`` and ``overlay.png``.

Video: detect, track and smooth the landmarks of the main face
(:func:`fitting.landmark_pipeline.detect_video`), fit one identity and a
per-frame expression and camera to all frames jointly
(:func:`fitting.video.fit_video`), classify each frame's expression, and write
``predictions.csv``, ``predictions.json`` and ``timeline.png``. Frames where
the detector found no face are reported as missing: they get no label, no
probabilities and no landmark error (the video fit bridges them for its
temporal terms, but nothing is reported for them).

The emotion classifier is the label-free EMFACS prior built for the model's
expression names (:func:`classifier.emfacs.emfacs_prior_classifier`) unless a
saved classifier is given (:func:`classifier.persistence.load_classifier`); a
classifier trained on another expression basis is refused.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np

from classifier.ecoc import TrainedClassifier, predict_proba
from classifier.persistence import expression_basis_id, load_classifier
from fitting.detection import LandmarkDetector
from fitting.faces import FaceFit
from morphable.model import MorphableModel

__all__ = [
    "PRIOR",
    "ImagePrediction",
    "VideoPrediction",
    "emotion_classifier",
    "emotion_probabilities",
    "face_summary",
    "draw_faces",
    "plot_emotion_bars",
    "is_image_file",
    "predict",
    "predict_image",
    "predict_video",
]

PRIOR = "emfacs-prior"
"""How ``predictions.json`` names the default classifier (the EMFACS prior)."""

ClassifierSource = Union[str, os.PathLike, TrainedClassifier, None]

# Fixed colours for the seven basic emotions, so every picture uses the same ones.
_EMOTION_COLORS = {
    "neutral": "#9e9e9e",
    "happy": "#f2b01e",
    "sad": "#3b73c8",
    "fearful": "#8a4fbf",
    "angry": "#d63a2f",
    "surprised": "#f07f1d",
    "disgusted": "#3f9b46",
}


def _noop(*args, **kwargs) -> None:
    return None


# --- the classifier -----------------------------------------------------------------------------


def emotion_classifier(model: MorphableModel, classifier: ClassifierSource = None) -> tuple[TrainedClassifier, str]:
    """The emotion classifier for a model's expression coefficients, and a name for reports.

    Args:
      model: the model whose expression coefficients will be classified.
      classifier: ``None`` for the EMFACS prior of this model's fitted faces
        (trained on synthetic faces fitted like photos: up to a minute the first
        time, then read from ``$DEEPEXP3D_CACHE/emfacs-prior``), a path given to
        :func:`classifier.persistence.save_classifier`, or a trained classifier.

    Returns:
      ``(trained, source)``: ``source`` is :data:`PRIOR`, the path, or ``"given"``.

    Raises:
      FileNotFoundError: the classifier files do not exist.
      ValueError: the classifier was trained on another expression basis or
        another number of features; or (prior) the model's expression components
        are not ARKit-named blendshapes.
    """
    basis = expression_basis_id(model)
    if classifier is None:
        from classifier.emfacs import emfacs_prior_classifier
        from morphable.paths import cache_dir

        prior = emfacs_prior_classifier(
            model.expression_names, basis_id=basis, model=model, cache=cache_dir() / "emfacs-prior"
        )
        return prior, PRIOR
    if isinstance(classifier, TrainedClassifier):
        trained, source = classifier, "given"
        if trained.basis_id is not None and trained.basis_id != basis:
            raise ValueError(
                f"classifier: trained on expression basis {trained.basis_id!r}, not this model's {basis!r}; "
                "retrain it on this basis"
            )
    else:
        trained, source = load_classifier(classifier, basis_id=basis), str(classifier)
    if trained.n_features != model.n_expression:
        raise ValueError(
            f"classifier {source}: expects {trained.n_features} features, but model {model.name!r} has "
            f"{model.n_expression} expression coefficients"
        )
    return trained, source


def emotion_probabilities(trained: TrainedClassifier, model: MorphableModel, expression) -> np.ndarray:
    """Class probabilities of expression coefficients.

    Args:
      trained: an emotion classifier (see :func:`emotion_classifier`).
      model: the model the coefficients belong to (its basis id is checked).
      expression: ``(..., n_e)`` expression coefficients.

    Returns:
      ``(..., K) float64`` probabilities in ``trained.class_names`` order, each
      row summing to 1.
    """
    probabilities = predict_proba(trained, np.asarray(expression, np.float32), basis_id=expression_basis_id(model))
    probabilities = np.asarray(probabilities, np.float64)
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


# --- pictures -----------------------------------------------------------------------------------


def _emotion_color(name: str, k: int):
    import matplotlib

    return _EMOTION_COLORS.get(name, matplotlib.colormaps["tab10"](k % 10))


def _overlay_triangles(model: MorphableModel) -> np.ndarray:
    """The triangles worth drawing on a photo: ICT's narrow face area, else all."""
    from morphable.io.ict import ICT_REGIONS

    triangles = np.asarray(model.triangles)
    if model.name.startswith("ict-facekit"):
        stop = ICT_REGIONS["narrow_face"][1]
        inside = np.all(triangles < stop, axis=1)
        if inside.any():
            return triangles[inside]
    return triangles


def _projected_mesh(model: MorphableModel, fit) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (N, 2), visible triangles (T, 3))`` of one image fit's mesh."""
    from morphable import project, shape

    pixels = np.asarray(project(fit.camera, shape(model, fit.identity, fit.expression)), np.float64)
    triangles = _overlay_triangles(model)
    corners = pixels[triangles]
    # Signed area in image coordinates (y down): outward-facing triangles turn clockwise.
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    facing = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0] < 0
    return pixels, triangles[facing]


def _fitted_landmarks(model: MorphableModel, fit) -> np.ndarray:
    """The model landmarks the fit used, projected: ``(U, 2)`` pixels."""
    from morphable import project, vertices_at

    used = np.asarray(fit.landmark_vertices)
    points = project(fit.camera, vertices_at(model, np.maximum(used, 0), fit.identity, fit.expression))
    return np.asarray(points)[used >= 0]


def draw_faces(
    image: np.ndarray,
    model: MorphableModel,
    faces: list[FaceFit],
    *,
    labels: list[str] | None = None,
    colors: list | None = None,
    ax=None,
    title: str | None = None,
    crop_margin: float | None = 0.35,
):
    """A photo with, for every face, its box, landmarks, projected mesh and a label.

    Args:
      image: ``(H, W, 3)`` RGB pixels.
      model: the fitted model.
      faces: from :func:`fitting.faces.fit_faces`.
      labels: one text per face, written above its box (e.g. ``"happy 0.93"``).
      colors: one matplotlib colour per face for the box and label.
      ax: matplotlib axes (a new figure if ``None``).
      title: axes title.
      crop_margin: zoom on the faces (the union of their boxes plus this
        fraction of its size), or ``None`` for the whole photo.

    Returns:
      The axes.
    """
    from matplotlib.patches import Rectangle

    from morphable.plot import new_figure

    if ax is None:
        _, (ax,) = new_figure(size=7.0)
    ax.imshow(np.asarray(image))
    for k, face in enumerate(faces):
        color = colors[k] if colors is not None else "yellow"
        pixels, triangles = _projected_mesh(model, face.fit)
        ax.triplot(pixels[:, 0], pixels[:, 1], triangles, color="deepskyblue", linewidth=0.3, alpha=0.45)
        ax.plot(*face.landmarks.T, "o", color="lime", markersize=2.5, label="detected landmarks" if k == 0 else None)
        fitted = _fitted_landmarks(model, face.fit)
        ax.plot(*fitted.T, "x", color="red", markersize=3.5, label="fitted model" if k == 0 else None)
        x0, y0, x1, y1 = (float(v) for v in face.box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        if labels is not None:
            ax.text(
                x0, y0, labels[k], color="black", fontsize=9, va="bottom", ha="left",
                bbox=dict(facecolor=color, edgecolor="none", alpha=0.85, pad=2),
            )  # fmt: skip
    if crop_margin is not None and faces:
        boxes = np.stack([face.box for face in faces]).astype(np.float64)
        points = np.concatenate([boxes[:, :2], boxes[:, 2:], *[face.landmarks for face in faces]])
        low, high = points.min(0), points.max(0)
        pad = (high - low) * crop_margin
        height, width = image.shape[:2]
        ax.set_xlim(max(low[0] - pad[0], -0.5), min(high[0] + pad[0], width - 0.5))
        ax.set_ylim(min(high[1] + pad[1], height - 0.5), max(low[1] - pad[1], -0.5))
    ax.axis("off")
    if faces:
        ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_emotion_bars(probabilities, class_names, *, ax=None, title: str | None = None):
    """Horizontal bar chart of one face's emotion probabilities.

    Args:
      probabilities: ``(K,)`` in ``class_names`` order.
      class_names: ``K`` names.
      ax: matplotlib axes (a new figure if ``None``).
      title: axes title.

    Returns:
      The axes.
    """
    from morphable.plot import new_figure

    values = np.asarray(probabilities, np.float64).reshape(-1)
    if ax is None:
        _, (ax,) = new_figure(size=4.0)
    positions = np.arange(len(values))
    ax.barh(positions, values, color=[_emotion_color(name, k) for k, name in enumerate(class_names)])
    ax.set_yticks(positions)
    ax.set_yticklabels(list(class_names))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    for position, value in zip(positions, values):
        ax.text(min(value + 0.02, 0.85), position, f"{value:.2f}", va="center", fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def _plot_timeline(path: Path, times, probabilities, valid, class_names, expression, expression_std, names, xlabel):
    """Stacked emotion probabilities over time (gaps where no face) above the strongest expression coefficients."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from morphable.plot import plot_expression_timeline

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11.0, 7.0), sharex=True, constrained_layout=True)
    shown = np.where(valid[:, None], probabilities, np.nan)
    lower = np.zeros(len(times))
    for k, name in enumerate(class_names):
        upper = lower + shown[:, k]
        top.fill_between(times, lower, upper, where=valid, color=_emotion_color(name, k), label=name, linewidth=0)
        lower = np.where(valid, upper, 0.0)
    for start, stop in _runs(~valid):
        # Half a step either side, as the expression panel below shades its gaps.
        left = (times[start - 1] + times[start]) / 2 if start > 0 else times[start]
        right = (times[stop - 1] + times[stop]) / 2 if stop < len(times) else times[stop - 1]
        top.axvspan(left, right, color="0.85", linewidth=0, zorder=0)
    top.set_ylim(0, 1)
    top.set_ylabel("emotion probability")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    top.set_title("emotion (stacked probabilities; grey: no face)")
    plot_expression_timeline(
        expression, names, times=times, std=expression_std, valid=valid, top=6, ax=bottom,
        title="strongest expression coefficients (± std)", xlabel=xlabel,
    )  # fmt: skip
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


# --- one face, for reports ----------------------------------------------------------------------


def face_summary(model: MorphableModel, face: FaceFit, probabilities, class_names) -> dict:
    """A JSON-ready description of one fitted, classified face.

    Args:
      model: the fitted model.
      face: from :func:`fitting.faces.fit_faces`.
      probabilities: ``(K,)`` emotion probabilities.
      class_names: ``K`` names.

    Returns:
      ``{"box", "detector_score", "landmark_rmse_px", "landmark_rmse_normalised",
      "fit_valid", "pose_yaw_pitch_roll_degrees", "emotion": {"label",
      "probabilities": {name: p}}, "expression": {name: value}}``.
    """
    from morphable.rotation import axis_angle_to_euler

    probabilities = np.asarray(probabilities, np.float64)
    return {
        "box": [round(float(v), 2) for v in face.box],
        "detector_score": float(face.score),
        "landmark_rmse_px": float(face.fit.rmse),
        "landmark_rmse_normalised": float(face.fit.rmse_normalised),
        "fit_valid": bool(face.fit.valid),
        "pose_yaw_pitch_roll_degrees": np.asarray(axis_angle_to_euler(face.fit.camera.rotation)).tolist(),
        "emotion": {
            "label": str(class_names[int(np.argmax(probabilities))]),
            "probabilities": {str(name): float(p) for name, p in zip(class_names, probabilities)},
        },
        "expression": {str(name): float(v) for name, v in zip(model.expression_names, np.asarray(face.fit.expression))},
    }


# --- photos -------------------------------------------------------------------------------------


@dataclass
class ImagePrediction:
    """What :func:`predict_image` found and wrote.

    Attributes:
      path: the photo.
      class_names: the classifier's K class names.
      faces: one :func:`face_summary` dict per face, most confident first.
      files: ``{"predictions": predictions.json, "overlay": overlay.png}``.
      timings: seconds per step.
    """

    path: Path
    class_names: tuple[str, ...]
    faces: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def predict_image(
    path: str | os.PathLike,
    model: MorphableModel,
    out_dir: str | os.PathLike,
    *,
    classifier: ClassifierSource = None,
    detector: LandmarkDetector | None = None,
    log: Callable[..., None] = _noop,
) -> ImagePrediction:
    """Emotions of every face in a photo.

    Args:
      path: the photo (any format OpenCV decodes).
      model: the morphable model to fit (68 landmark slots).
      out_dir: output folder (created).
      classifier: see :func:`emotion_classifier` (default the EMFACS prior).
      detector: a :class:`fitting.detection.LandmarkDetector`; default dlib's.
      log: called with progress lines.

    Returns:
      :class:`ImagePrediction`; ``predictions.json`` holds the photo, model,
      classifier, class names and per face: box, detector score, landmark RMSE
      (pixels and normalised by the eye-corner distance), pose, the emotion
      label and probabilities, and the named expression coefficients.
      ``overlay.png`` shows the photo with each face's landmarks, projected
      mesh, box and label.

    Raises:
      FileNotFoundError: the photo or the classifier does not exist.
      ValueError: the file is not a readable image (:class:`fitting.media.MediaError`),
        no face was found, or the classifier does not fit the model.
      ImportError: no detector was given and dlib is not installed.
    """
    import matplotlib.pyplot as plt

    from fitting.faces import fit_faces
    from fitting.media import read_image
    from morphable.plot import new_figure

    path = Path(path)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    image = read_image(path)
    timings["read image"] = time.perf_counter() - start

    start = time.perf_counter()
    trained, source = emotion_classifier(model, classifier)
    timings["classifier"] = time.perf_counter() - start
    log(f"classifier: {source} ({', '.join(trained.class_names)})")

    start = time.perf_counter()
    if detector is None:
        from fitting.detection import DlibDetector

        detector = DlibDetector()
    faces = fit_faces(image, model, detector=detector)
    timings["detect and fit"] = time.perf_counter() - start
    if not faces:
        raise ValueError(f"{path}: no face found in the image")
    log(f"{len(faces)} face(s) found")

    start = time.perf_counter()
    probabilities = emotion_probabilities(trained, model, np.stack([np.asarray(face.fit.expression) for face in faces]))
    summaries = [face_summary(model, face, p, trained.class_names) for face, p in zip(faces, probabilities)]
    timings["classify"] = time.perf_counter() - start

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ImagePrediction(path=path, class_names=tuple(trained.class_names), faces=summaries, timings=timings)
    report = {
        "input": str(path),
        "kind": "image",
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model": model.name,
        "classifier": source,
        "basis_id": expression_basis_id(model),
        "class_names": list(trained.class_names),
        "faces": summaries,
    }
    result.files["predictions"] = out / "predictions.json"
    result.files["predictions"].write_text(json.dumps(report, indent=1))

    labels, colors = [], []
    for summary in summaries:
        label = summary["emotion"]["label"]
        labels.append(f"{label} {summary['emotion']['probabilities'][label]:.2f}")
        colors.append(_emotion_color(label, list(trained.class_names).index(label)))
    figure, (ax,) = new_figure(size=7.0)
    draw_faces(image, model, faces, labels=labels, colors=colors, ax=ax, title=f"{path.name}: {len(faces)} face(s)")
    result.files["overlay"] = out / "overlay.png"
    figure.savefig(result.files["overlay"], dpi=150, bbox_inches="tight")
    plt.close(figure)
    timings["write outputs"] = time.perf_counter() - start
    return result


# --- videos -------------------------------------------------------------------------------------


@dataclass
class VideoPrediction:
    """What :func:`predict_video` found and wrote, over the ``T`` frames processed.

    Attributes:
      path: the video.
      class_names: the classifier's K class names.
      frame_indices: ``(T,) int64`` index of each processed frame in the file.
      times: ``(T,) float64`` seconds, ``frame / fps`` with the container's nominal
        (for variable-frame-rate files, average) frame rate; NaN when it is unknown.
      face: ``(T,) bool`` frames with a detected face; the others are missing.
      probabilities: ``(T, K) float64`` emotion probabilities, NaN where missing.
      labels: ``T`` predicted class names, ``None`` where missing.
      landmark_rmse_px: ``(T,) float64`` fit error per frame, pixels, NaN where missing.
      expression: ``(T, n_e) float32`` fitted expression (finite everywhere;
        only meaningful where ``face``).
      files: ``{"csv", "predictions", "timeline"}`` paths.
      timings: seconds per step.
    """

    path: Path
    class_names: tuple[str, ...]
    frame_indices: np.ndarray
    times: np.ndarray
    face: np.ndarray
    probabilities: np.ndarray
    labels: list
    landmark_rmse_px: np.ndarray
    expression: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Frames processed, ``T``."""
        return int(self.frame_indices.shape[0])


class _CountingDetector:
    """A detector wrapper that advances a progress bar once per frame."""

    def __init__(self, detector: LandmarkDetector, progress):
        self.detector = detector
        self.progress = progress

    def detect(self, image):
        detection = self.detector.detect(image)
        self.progress.update(1)
        return detection


def predict_video(
    path: str | os.PathLike,
    model: MorphableModel,
    out_dir: str | os.PathLike,
    *,
    classifier: ClassifierSource = None,
    stride: int = 1,
    max_frames: int | None = None,
    detector: LandmarkDetector | None = None,
    progress: bool = True,
    log: Callable[..., None] = _noop,
) -> VideoPrediction:
    """Emotions of a video's main face, frame by frame.

    The first frame's largest face is followed through the video (a face that
    leaves and comes back near the same place is picked up again); landmarks are
    smoothed over time but never filled in where the face was not detected.
    One identity, and an expression and camera per frame, are fitted to all
    frames jointly (:func:`fitting.video.fit_video`).

    Args:
      path: the video (any container/codec OpenCV's FFmpeg backend reads).
      model: the morphable model to fit.
      out_dir: output folder (created).
      classifier: see :func:`emotion_classifier` (default the EMFACS prior).
      stride: use every ``stride``-th frame.
      max_frames: use at most this many frames (``None``: all).
      detector: a :class:`fitting.detection.LandmarkDetector`; default dlib's.
      progress: show a progress bar over the frames (tqdm).
      log: called with progress lines.

    Returns:
      :class:`VideoPrediction`. ``predictions.csv`` has one row per processed
      frame: ``frame, time_s`` (see :attr:`VideoPrediction.times`), ``face``
      (1/0), ``label``, ``p_<class>`` for each class, ``landmark_rmse_px``
      (empty cells where missing).
      ``predictions.json`` holds the video's metadata, a summary (frames with a
      face, label counts, mean probabilities) and the same per-frame values plus
      the expression coefficients. ``timeline.png`` plots the stacked emotion
      probabilities and the strongest expression coefficients over time.

    Raises:
      FileNotFoundError: the video or the classifier does not exist.
      ValueError: the file is not a readable video, no face was found, too few
        frames had a face for the video fit, a bad ``stride``/``max_frames``, or
        the classifier does not fit the model.
      ImportError: no detector was given and dlib is not installed.
    """
    from fitting.landmark_pipeline import detect_video
    from fitting.media import read_video_info
    from fitting.smoothing import SmoothingConfig
    from fitting.tracking import TrackingConfig
    from fitting.video import VideoFitConfig, fit_video

    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: must be a positive int, got {stride!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1
    ):
        raise ValueError(f"max_frames: must be a positive int or None, got {max_frames!r}")
    path = Path(path)
    timings: dict[str, float] = {}
    info = read_video_info(path)

    start = time.perf_counter()
    trained, source = emotion_classifier(model, classifier)
    timings["classifier"] = time.perf_counter() - start
    log(f"classifier: {source} ({', '.join(trained.class_names)})")

    start = time.perf_counter()
    if detector is None:
        from fitting.detection import DlibDetector

        detector = DlibDetector()
    expected = -(-info.frame_count // stride) if info.frame_count else None
    if max_frames is not None:
        expected = max_frames if expected is None else min(expected, max_frames)
    from tqdm.auto import tqdm

    with tqdm(total=expected, desc="detecting", unit="frame", disable=not progress) as bar:
        # Never drop the video or end the track on a long loss, and fill no gap:
        # a frame without a detected face must stay missing.
        landmarks = detect_video(
            path,
            _CountingDetector(detector, bar),
            stride=int(stride),
            max_frames=max_frames,
            tracking=TrackingConfig(max_lost_frames=2**31 - 1, min_tracked_frames=1),
            smoothing=SmoothingConfig(max_lost_frames=1),
            stop_early=False,
        )
    timings["detect and track"] = time.perf_counter() - start
    if landmarks.status != "ok" or not landmarks.valid.any():
        raise ValueError(f"{path}: no face found in the {landmarks.n_frames} frames processed")
    face = np.asarray(landmarks.valid, bool)
    log(f"{landmarks.n_frames} frames processed, a face in {int(face.sum())}")

    config = VideoFitConfig()
    if int(face.sum()) < config.min_valid_frames:
        raise ValueError(
            f"{path}: a face was found in only {int(face.sum())} of {landmarks.n_frames} frames processed; "
            f"the video fit needs at least {config.min_valid_frames} (use more frames or a smaller stride)"
        )
    start = time.perf_counter()
    fit = fit_video(model, np.where(face[:, None, None], landmarks.landmarks, np.nan), mask=face, config=config)
    expression = np.asarray(fit.expression, np.float32)
    face &= np.asarray(fit.frame_valid, bool)
    if not bool(fit.valid):
        raise ValueError(f"{path}: the video fit failed (too few usable frames or a degenerate face)")
    timings["fit video (incl. compilation)"] = time.perf_counter() - start

    start = time.perf_counter()
    class_names = tuple(trained.class_names)
    probabilities = np.full((landmarks.n_frames, len(class_names)), np.nan)
    probabilities[face] = emotion_probabilities(trained, model, expression[face])
    labels = [class_names[int(np.argmax(row))] if seen else None for row, seen in zip(probabilities, face)]
    rmse = np.where(face, np.asarray(fit.landmark_rmse, np.float64), np.nan)
    fps = info.fps
    frame_indices = np.asarray(landmarks.frame_indices, np.int64)
    times = frame_indices / fps if fps > 0 else np.full(len(frame_indices), np.nan)
    timings["classify"] = time.perf_counter() - start

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = VideoPrediction(
        path=path,
        class_names=class_names,
        frame_indices=frame_indices,
        times=times,
        face=face,
        probabilities=probabilities,
        labels=labels,
        landmark_rmse_px=rmse,
        expression=expression,
        timings=timings,
    )
    result.files["csv"] = _write_csv(out / "predictions.csv", result)
    counts = {name: labels.count(name) for name in class_names}
    report = {
        "input": str(path),
        "kind": "video",
        "fps": fps,
        "width": info.width,
        "height": info.height,
        "frame_count": info.frame_count,
        "stride": int(stride),
        "max_frames": max_frames,
        "frames_processed": result.n_frames,
        "frames_with_face": int(face.sum()),
        "model": model.name,
        "classifier": source,
        "basis_id": expression_basis_id(model),
        "class_names": list(class_names),
        "expression_names": list(model.expression_names),
        "fit": {
            "valid": bool(fit.valid),
            "converged": bool(fit.converged),
            "iterations": int(fit.iterations),
            "identity": np.asarray(fit.identity).tolist(),
            "mean_landmark_rmse_px": float(np.mean(rmse[face])),
        },
        "summary": {
            "label_counts": counts,
            "most_frequent": max(counts, key=counts.get),
            "mean_probabilities": dict(zip(class_names, probabilities[face].mean(axis=0).tolist())),
        },
        "frames": [
            {
                "frame": int(index),
                "time_s": None if not np.isfinite(t) else float(t),
                "face": bool(seen),
                "label": label,
                "probabilities": dict(zip(class_names, row.tolist())) if seen else None,
                "landmark_rmse_px": float(error) if seen else None,
                "expression": coefficients.tolist() if seen else None,
            }
            for index, t, seen, label, row, error, coefficients in zip(
                frame_indices, times, face, labels, probabilities, rmse, expression
            )
        ],
    }
    result.files["predictions"] = out / "predictions.json"
    result.files["predictions"].write_text(json.dumps(report, indent=1))
    use_seconds = fps > 0 and len(times) > 1
    result.files["timeline"] = out / "timeline.png"
    _plot_timeline(
        result.files["timeline"],
        times if use_seconds else frame_indices.astype(np.float64),
        probabilities,
        face,
        class_names,
        expression,
        np.asarray(fit.expression_std),
        model.expression_names,
        "time (s)" if use_seconds else "frame",
    )
    timings["write outputs"] = time.perf_counter() - start
    return result


def _write_csv(path: Path, result: VideoPrediction) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["frame", "time_s", "face", "label", *[f"p_{name}" for name in result.class_names], "landmark_rmse_px"]
        )
        for k in range(result.n_frames):
            seen = bool(result.face[k])
            time_s = f"{result.times[k]:.4f}" if np.isfinite(result.times[k]) else ""
            probabilities = [f"{p:.6f}" for p in result.probabilities[k]] if seen else [""] * len(result.class_names)
            rmse = f"{result.landmark_rmse_px[k]:.4f}" if seen else ""
            label = result.labels[k] or ""
            writer.writerow([int(result.frame_indices[k]), time_s, int(seen), label, *probabilities, rmse])
    return path


# --- either -------------------------------------------------------------------------------------


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file is a still image (by its content, not its suffix).

    Args:
      path: an existing file.

    Returns:
      True when Pillow recognises the file's header as an image format; False
      otherwise (videos, and image formats only OpenCV reads).

    Raises:
      FileNotFoundError: the file does not exist.
    """
    from fitting.media import image_size

    return image_size(path) is not None


def predict(
    path: str | os.PathLike,
    model: MorphableModel,
    out_dir: str | os.PathLike,
    *,
    classifier: ClassifierSource = None,
    stride: int = 1,
    max_frames: int | None = None,
    detector: LandmarkDetector | None = None,
    progress: bool = True,
    log: Callable[..., None] = _noop,
) -> ImagePrediction | VideoPrediction:
    """Emotions in a photo (:func:`predict_image`) or a video (:func:`predict_video`), told apart by content.

    A file Pillow recognises as an image is a photo; anything else is read as a
    video, and, when OpenCV cannot open it as one, as an image once more (formats
    only OpenCV decodes).

    Args:
      path: the photo or video.
      model: the morphable model to fit.
      out_dir: output folder (created).
      classifier: see :func:`emotion_classifier` (default the EMFACS prior).
      stride, max_frames: videos only, see :func:`predict_video`.
      detector: a :class:`fitting.detection.LandmarkDetector`; default dlib's.
      progress: show a progress bar over a video's frames.
      log: called with progress lines.

    Returns:
      :class:`ImagePrediction` or :class:`VideoPrediction`.

    Raises:
      FileNotFoundError: the file (or the classifier) does not exist.
      ValueError: as :func:`predict_image` and :func:`predict_video`; a
        :class:`fitting.media.MediaError` when the file is neither an image nor
        a video.
      ImportError: no detector was given and dlib is not installed.

    Examples:
      >>> from morphable.io import load_ict  # doctest: +SKIP
      >>> result = predict("face.jpg", load_ict(region="face"), "out/")  # doctest: +SKIP
      >>> sorted(path.name for path in result.files.values())  # doctest: +SKIP
      ['overlay.png', 'predictions.json']
    """
    from fitting.media import MediaError, read_video_info

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if is_image_file(path):
        return predict_image(path, model, out_dir, classifier=classifier, detector=detector, log=log)
    try:
        read_video_info(path)
    except MediaError:
        try:
            return predict_image(path, model, out_dir, classifier=classifier, detector=detector, log=log)
        except MediaError:
            raise MediaError(f"{path}: neither an image nor a video that OpenCV can read") from None
    return predict_video(
        path,
        model,
        out_dir,
        classifier=classifier,
        stride=stride,
        max_frames=max_frames,
        detector=detector,
        progress=progress,
        log=log,
    )
