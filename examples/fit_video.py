"""Fit a whole video with the ICT face model and plot its expression over time.

    python examples/fit_video.py [VIDEO] [--out DIR] [--stride N] [--max-frames N]

Without ``VIDEO`` it reads ``$DEEPEXP3D_DATA/videos/WolfgangLanger_Pexels.mp4``
(472 frames, 640×360, a woman crying, then laughing). The stages:

1. **Landmarks** — dlib's face detector and 68-point predictor on every
   ``stride``-th frame, the first frame's face followed through the video, the
   tracks smoothed with cubic splines; gaps shorter than 5 frames are filled,
   longer ones stay gaps (:func:`fitting.landmark_pipeline.detect_video`).
2. **Fit** — one identity for the whole video, an expression and a camera per
   frame, all frames solved jointly (:func:`fitting.video.fit_video`), with the
   settings the annotation pipeline uses for dlib landmarks.
3. **Outputs** in ``--out`` (default ``out/fit-video``):

   * ``expressions.png`` — the strongest named expression coefficients over
     time, each with its ±1 std uncertainty band; frames without a face are
     gaps (shaded grey);
   * ``rmse.png`` — the landmark reprojection error of each frame, pixels;
   * ``fit.npz`` — every per-frame array (landmarks, expression, its std,
     cameras, errors, validity) and the identity;
   * ``fit.json`` — a summary: the video, frame counts, fit diagnostics, the
     strongest coefficients and the wall time of each stage.

Progress lines go to stdout, one per stage with its wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_VIDEO = "videos/WolfgangLanger_Pexels.mp4"
"""The default clip, relative to the shared data folder."""

MAX_GAP = 5
"""Gaps of fewer frames than this are filled by the spline smoother (the paper's K)."""


def fit_config():
    """The whole-video fit settings for dlib landmarks.

    The same as the annotation pipeline's (:class:`fitting.annotate.AnnotateConfig`):
    landmarks trusted to σ = 3 px on a face 100 px between the outer eye corners,
    and the identity prior weighed as 64 frames' worth of evidence, because a
    detector's errors are correlated from frame to frame.
    """
    from fitting.video import VideoFitConfig

    return VideoFitConfig(landmark_weight=1.0 / 9.0, identity_prior_weight=64.0)


def detect_landmarks(video: Path, *, stride: int, max_frames: int | None, upsample: int):
    """Detect, track and smooth the main face's 68 landmarks in every ``stride``-th frame.

    The annotation pipeline drops a video whose face is lost for 5 frames: a
    clean training set matters more than any one video. Here the one video is
    all there is, so the tracker follows the face through losses of any length
    (it looks for it where it was last seen), and only gaps shorter than
    :data:`MAX_GAP` frames are filled; longer ones stay missing.

    Returns:
      :class:`fitting.landmark_pipeline.VideoLandmarks` with status ``"ok"``.

    Raises:
      ValueError: no face in the whole video, or the file is not a readable video.
    """
    from fitting.detection import DlibDetector
    from fitting.landmark_pipeline import detect_video
    from fitting.smoothing import SmoothingConfig
    from fitting.tracking import TrackingConfig

    track = detect_video(
        video,
        DlibDetector(upsample=upsample),
        stride=stride,
        max_frames=max_frames,
        tracking=TrackingConfig(max_lost_frames=2**31 - 1),
        smoothing=SmoothingConfig(max_lost_frames=MAX_GAP),
    )
    if track.status != "ok":
        raise ValueError(f"{video}: {track.message}")
    return track


def frame_times(track) -> tuple[np.ndarray, str]:
    """Time of each processed frame in seconds, or its frame number when the frame rate is unknown."""
    fps = track.info.fps if track.info is not None else 0.0
    if fps > 0:
        return track.frame_indices / fps, "time (s)"
    return track.frame_indices.astype(np.float64), "frame"


def plot_expressions(path: Path, model, fit, track, valid: np.ndarray, top: int) -> list[str]:
    """Write ``expressions.png``, one panel per coefficient; return their names, strongest first."""
    import matplotlib.pyplot as plt

    from morphable.plot import new_figure, plot_expression_timeline, strongest_coefficients

    times, xlabel = frame_times(track)
    expression = np.asarray(fit.expression)
    chosen = strongest_coefficients(expression, valid, top=top)
    figure, _ = new_figure()
    figure.clear()
    axes = figure.subplots(len(chosen), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    figure.set_size_inches(11.0, 0.4 + 1.1 * len(chosen))
    for ax, k in zip(axes, chosen):
        plot_expression_timeline(
            expression,
            model.expression_names,
            times=times,
            std=np.asarray(fit.expression_std),
            valid=valid,
            indices=[k],
            ax=ax,
            xlabel=xlabel,
        )
        ax.get_legend().remove()
        ax.set_ylabel(model.expression_names[k], rotation=0, horizontalalignment="right", verticalalignment="center")
        ax.label_outer()
    if model.expression_kind == "blendshape":
        axes[0].set_ylim(-0.2, 1.1)
    axes[0].set_title(
        f"{Path(track.path).name}: the {len(chosen)} strongest expression coefficients "
        f"({'blendshape weights' if model.expression_kind == 'blendshape' else 'std units'}; band ±1 std)"
    )
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return [model.expression_names[k] for k in chosen]


def plot_rmse(path: Path, fit, track, valid: np.ndarray) -> None:
    """Write ``rmse.png``: per-frame landmark RMSE, pixels, with its median."""
    import matplotlib.pyplot as plt

    from morphable.plot import new_figure

    times, xlabel = frame_times(track)
    rmse = np.where(valid, np.asarray(fit.landmark_rmse, np.float64), np.nan)
    figure, (ax,) = new_figure(size=3.5)
    figure.set_size_inches(11.0, 3.5)
    ax.plot(times, rmse, color="tab:blue", linewidth=1.0, label="per frame")
    if valid.any():
        median = float(np.nanmedian(rmse))
        ax.axhline(median, color="tab:red", linestyle="--", linewidth=1.0, label=f"median {median:.2f} px")
    ax.set_xlim(times[0], times[-1] if len(times) > 1 else times[0] + 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("landmark RMSE (px)")
    ax.set_title(
        f"{Path(track.path).name}: landmark reprojection error "
        f"(face {float(fit.face_size):.0f} px between the outer eye corners)"
    )
    ax.legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def run(
    video: str | Path | None = None,
    out_dir: str | Path = "out/fit-video",
    *,
    stride: int = 1,
    max_frames: int | None = None,
    upsample: int = 1,
    top: int = 8,
    log=print,
) -> dict:
    """Detect, fit and plot one video; return the summary written to ``fit.json``.

    Args:
      video: the video file (default: the sample clip in the shared data folder).
      out_dir: output folder (created).
      stride: process every ``stride``-th frame.
      max_frames: process at most this many frames (``None``: all).
      upsample: dlib face-detector upsampling (1 finds faces from ≈ 40 px; 0 is
        about four times faster and finds faces from ≈ 80 px).
      top: how many expression coefficients ``expressions.png`` shows.
      log: where the progress lines go.

    Returns:
      The summary: inputs, frame counts, fit diagnostics, the strongest
      coefficients, output files and ``seconds`` per stage.

    Raises:
      FileNotFoundError: the video does not exist.
      ValueError: the video cannot be read, has no face, or too few frames with
        one for a valid fit.
    """
    import jax

    from fitting.video import fit_video
    from morphable.io import load_ict
    from morphable.paths import data_dir

    video = Path(video) if video is not None else data_dir() / DEFAULT_VIDEO
    if not video.is_file():
        raise FileNotFoundError(f"video not found: {video} (set DEEPEXP3D_DATA or pass a video)")
    out = Path(out_dir)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    model = load_ict(region="face")
    seconds["load model"] = time.perf_counter() - start
    log(f"load model        {seconds['load model']:6.1f} s  {model.name}: {model.n_expression} expression blendshapes")

    start = time.perf_counter()
    track = detect_landmarks(video, stride=stride, max_frames=max_frames, upsample=upsample)
    seconds["detect landmarks"] = time.perf_counter() - start
    n_frames = track.n_frames
    log(
        f"detect landmarks  {seconds['detect landmarks']:6.1f} s  {n_frames} frames "
        f"({seconds['detect landmarks'] / max(n_frames, 1) * 1000:.0f} ms each), "
        f"{int(track.valid.sum())} with a face, {int(track.filled.sum())} filled by the spline"
    )

    start = time.perf_counter()
    config = fit_config()
    fit = jax.block_until_ready(fit_video(model, track.landmarks, mask=track.valid, config=config))
    seconds["fit (incl. compilation)"] = time.perf_counter() - start
    if not bool(fit.valid):
        raise ValueError(f"{video}: the fit is invalid (fewer than {config.min_valid_frames} frames with a face)")
    valid = np.asarray(track.valid) & np.asarray(fit.frame_valid)
    rmse = np.asarray(fit.landmark_rmse)[valid]
    log(
        f"fit               {seconds['fit (incl. compilation)']:6.1f} s  {int(fit.iterations)} Gauss-Newton "
        f"iterations, median landmark RMSE {np.median(rmse):.2f} px, |identity| {np.linalg.norm(fit.identity):.2f}"
    )

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("expressions.png", "rmse.png", "fit.npz", "fit.json")}
    drawn = plot_expressions(files["expressions.png"], model, fit, track, valid, top)
    plot_rmse(files["rmse.png"], fit, track, valid)
    times, _ = frame_times(track)
    cameras = fit.cameras
    np.savez_compressed(
        files["fit.npz"],
        frame_indices=track.frame_indices,
        times=times,
        landmarks=track.landmarks,
        landmarks_valid=track.valid,
        landmarks_filled=track.filled,
        frame_valid=valid,
        identity=np.asarray(fit.identity),
        expression=np.asarray(fit.expression),
        expression_std=np.asarray(fit.expression_std),
        expression_names=np.asarray(model.expression_names),
        rotation=np.asarray(cameras.rotation),
        scale=np.asarray(cameras.scale),
        translation=np.asarray(cameras.translation),
        landmark_rmse=np.asarray(fit.landmark_rmse),
        landmark_nme=np.asarray(fit.landmark_nme),
    )
    expression = np.asarray(fit.expression)[valid]
    index = {name: k for k, name in enumerate(model.expression_names)}
    seconds["write outputs"] = time.perf_counter() - start
    summary = {
        "video": str(video),
        "model": model.name,
        "stride": stride,
        "frames_processed": n_frames,
        "frames_with_face": int(valid.sum()),
        "frames_filled": int(track.filled.sum()),
        "frame_rate": track.info.fps if track.info is not None else 0.0,
        "fit": {
            "valid": bool(fit.valid),
            "converged": bool(fit.converged),
            "iterations": int(fit.iterations),
            "energy": float(fit.energy),
            "identity_norm": float(np.linalg.norm(fit.identity)),
            "face_size_px": float(fit.face_size),
            "landmark_rmse_px_median": float(np.median(rmse)),
            "landmark_rmse_px_p95": float(np.percentile(rmse, 95)),
            "landmark_nme_median": float(np.median(np.asarray(fit.landmark_nme)[valid])),
        },
        "strongest_expressions": {
            name: {
                "rms": float(np.sqrt(np.mean(expression[:, index[name]] ** 2))),
                "max": float(expression[:, index[name]].max()),
                "mean_std": float(np.asarray(fit.expression_std)[valid, index[name]].mean()),
            }
            for name in drawn
        },
        "files": {name: str(path) for name, path in files.items()},
        "seconds": seconds,
    }
    files["fit.json"].write_text(json.dumps(summary, indent=1))
    log(f"write outputs     {seconds['write outputs']:6.1f} s  {', '.join(str(p) for p in files.values())}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", nargs="?", default=None, help=f"video file (default: $DEEPEXP3D_DATA/{DEFAULT_VIDEO})")
    parser.add_argument("--out", metavar="DIR", default="out/fit-video", help="output folder (default: out/fit-video)")
    parser.add_argument("--stride", metavar="N", type=int, default=1, help="process every N-th frame (default: 1)")
    parser.add_argument(
        "--max-frames", metavar="N", type=int, default=None, help="process at most N frames (default: all)"
    )
    parser.add_argument(
        "--upsample",
        metavar="N",
        type=int,
        default=1,
        help="face-detector upsampling; 0 is faster, for faces over 80 px (default: 1)",
    )
    parser.add_argument("--top", metavar="N", type=int, default=8, help="expression coefficients to plot (default: 8)")
    args = parser.parse_args(argv)
    for name in ("stride", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1, got {getattr(args, name)}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames: must be at least 1, got {args.max_frames}")
    if args.upsample < 0:
        parser.error(f"--upsample: must be non-negative, got {args.upsample}")
    try:
        run(args.video, args.out, stride=args.stride, max_frames=args.max_frames, upsample=args.upsample, top=args.top)
    except (FileNotFoundError, ValueError) as error:  # bad input: a message, not a traceback
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
