"""Benchmark of the whole-video fitter (:mod:`fitting.video`, :mod:`fitting.batch`).

Prints one JSON object per line:

* ``fit_image`` (two lines, contour fitting on and off) — eos-py ms/image vs
  ours one image per call and batched on SFM-3448 and the LFPW photos, with
  both landmark errors: ``benchmarks/fit_image.py`` run in the same process
  (skip with ``--no-eos``; a ``fit_image_skipped`` line says why when eos-py
  or the photos are missing);
* ``video_fit`` — frames/s of :func:`fitting.video.fit_video` on synthetic
  ICT-FaceKit videos (100 identity, 53 expression components, 68 landmarks,
  exactly ``iterations`` Gauss–Newton iterations: tolerance 0), for each length
  in ``--frames`` (default 2,000 and 8,000), measured after compilation, best of
  ``--repeats`` runs;
* ``video_fit_scaling`` — the time ratio of the longest to the shortest video
  (target ≤ 4.4 for 8k/2k: linear in frames);
* ``video_fit_batch`` — frames/s of :func:`fitting.batch.fit_videos` on a batch
  of videos of one bucket;
* ``video_fit_lapack`` — the same fit of the shortest video with the per-frame
  factorisations on ``jax.lax.linalg`` (LAPACK) instead of the compiled kernel
  of :mod:`fitting.spd_blocks` (a subprocess with ``DEEPEXP3D_NATIVE_KERNELS=0``,
  same machine, same run), and the speed-up ratio.

Every line carries the machine (platform, CPU count, load average, versions,
JAX backend and devices) and the solver structure. OpenBLAS, which runs the
per-frame LAPACK factorisations, is limited to one thread unless
``OPENBLAS_NUM_THREADS`` is already set: on tiny per-frame matrices its worker
threads only add overhead (and spin when other processes share the cores).

Usage::

    python benchmarks/fit.py                 # eos vs ours; 2k and 8k frames, a batch of 8 × 1,000
    python benchmarks/fit.py --frames 500 --batch-videos 2 --batch-frames 200 --repeats 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy/SciPy/jaxlib load OpenBLAS

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402

import morphable  # noqa: E402
from fitting import spd_blocks  # noqa: E402
from fitting.batch import bucket_length, fit_videos  # noqa: E402
from fitting.video import STRUCTURE, VideoFitConfig, _fit_video_jit  # noqa: E402


def machine() -> dict:
    """The machine and library versions, for every JSON line."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "native_kernels": spd_blocks.native_available(),
    }


def synthetic_video(model, n_frames: int, seed: int, noise: float = 1.0, missing: float = 0.1) -> np.ndarray:
    """Landmarks ``(F, 68, 2)`` of a talking head: smooth expression and pose, 1 px noise, missing frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / 30.0
    identity = 0.7 * rng.normal(size=model.n_identity)
    expression = np.zeros((n_frames, model.n_expression))
    for k in rng.choice(model.n_expression, size=min(8, model.n_expression), replace=False):
        expression[:, k] = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6)))
    angles = np.stack(
        [20 * np.sin(2 * np.pi * 0.15 * t), 12 * np.sin(2 * np.pi * 0.23 * t), 5 * np.sin(2 * np.pi * 0.1 * t)], -1
    )
    camera = morphable.WeakPerspectiveCamera(
        rotation=morphable.rotation.euler_to_axis_angle(jnp.asarray(angles, jnp.float32)),
        scale=jnp.asarray(13.0 * (1 + 0.1 * np.sin(2 * np.pi * 0.05 * t)), jnp.float32),
        translation=jnp.asarray(np.stack([320 + 30 * np.sin(t), 240 + 20 * np.cos(t)], -1), jnp.float32),
    )
    points = morphable.landmarks(model, jnp.asarray(identity, jnp.float32), jnp.asarray(expression, jnp.float32))
    landmarks = np.asarray(morphable.project(camera, points)) + noise * rng.normal(size=(n_frames, 68, 2))
    landmarks[rng.random(n_frames) < missing] = np.nan
    return landmarks.astype(np.float32)


def best_time(run, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``run`` (already compiled)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch-videos", type=int, default=8)
    parser.add_argument("--batch-frames", type=int, default=1000)
    parser.add_argument("--cache-dir", default=os.environ.get("DEEPEXP3D_TEST_CACHE"))
    parser.add_argument("--no-lapack-baseline", action="store_true", help="skip the video_fit_lapack line")
    parser.add_argument("--no-eos", action="store_true", help="skip the single-image comparison with eos-py")
    parser.add_argument("--only-video-fit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from morphable.io import load_ict

    model = load_ict(cache_dir=args.cache_dir)
    config = VideoFitConfig(iterations=args.iterations, tolerance=0.0)
    base = {
        "machine": machine(),
        "model": f"{model.name}: {model.n_identity} identity, {model.n_expression} expression, "
        f"{len(model.landmark_indices)} landmarks",
        "iterations": args.iterations,
        "structure": STRUCTURE,
    }

    if not args.no_eos and not args.only_video_fit:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            import fit_image

            fit_image.main([])
        except (ImportError, SystemExit) as error:
            print(json.dumps({**base, "benchmark": "fit_image_skipped", "reason": str(error)}), flush=True)

    seconds = {}
    for n_frames in args.frames:
        landmarks = jnp.asarray(synthetic_video(model, n_frames, seed=n_frames))
        mask = jnp.ones(landmarks.shape[:2], bool)
        exists = jnp.ones(n_frames, bool)
        start = time.perf_counter()
        compiled = _fit_video_jit.lower(model, landmarks, mask, exists, config).compile()
        compile_seconds = time.perf_counter() - start
        result = compiled(model, landmarks, mask, exists)
        elapsed = best_time(lambda: compiled(model, landmarks, mask, exists), args.repeats)
        seconds[n_frames] = elapsed
        valid = np.asarray(result.frame_valid)
        print(
            json.dumps(
                {
                    **base,
                    "benchmark": "video_fit",
                    "frames": n_frames,
                    "seconds": round(elapsed, 4),
                    "frames_per_second": round(n_frames / elapsed, 1),
                    "compile_seconds": round(compile_seconds, 2),
                    "iterations_run": int(result.iterations),
                    "landmark_rmse_px": round(float(np.sqrt(np.mean(np.asarray(result.landmark_rmse)[valid] ** 2))), 3),
                }
            ),
            flush=True,
        )
    if args.only_video_fit:
        return
    if len(seconds) >= 2:
        short, long = min(seconds), max(seconds)
        print(
            json.dumps(
                {
                    **base,
                    "benchmark": "video_fit_scaling",
                    "frames": [short, long],
                    "time_ratio": round(seconds[long] / seconds[short], 3),
                    "frames_ratio": long / short,
                }
            ),
            flush=True,
        )

    if args.batch_videos > 0:
        videos = [synthetic_video(model, args.batch_frames, seed=100 + k) for k in range(args.batch_videos)]
        buckets = (bucket_length(args.batch_frames),)
        fit_videos(model, videos, config=config, bucket_sizes=buckets, batch_size=args.batch_videos)  # compile
        elapsed = best_time(
            lambda: fit_videos(model, videos, config=config, bucket_sizes=buckets, batch_size=args.batch_videos),
            args.repeats,
        )
        total = args.batch_videos * args.batch_frames
        print(
            json.dumps(
                {
                    **base,
                    "benchmark": "video_fit_batch",
                    "videos": args.batch_videos,
                    "frames_per_video": args.batch_frames,
                    "bucket": buckets[0],
                    "seconds": round(elapsed, 4),
                    "frames_per_second": round(total / elapsed, 1),
                }
            ),
            flush=True,
        )

    if not args.no_lapack_baseline and spd_blocks.native_available():
        short = min(args.frames)
        command = [sys.executable, __file__, "--frames", str(short), "--repeats", str(args.repeats)]
        command += ["--iterations", str(args.iterations), "--only-video-fit"]
        if args.cache_dir:
            command += ["--cache-dir", args.cache_dir]
        environment = {**os.environ, spd_blocks.NATIVE_ENV: "0"}
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
        baseline = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            json.dumps(
                {
                    **base,
                    "benchmark": "video_fit_lapack",
                    "frames": short,
                    "lapack_seconds": baseline["seconds"],
                    "lapack_frames_per_second": baseline["frames_per_second"],
                    "kernel_seconds": round(seconds[short], 4),
                    "kernel_frames_per_second": round(short / seconds[short], 1),
                    "speedup": round(baseline["seconds"] / seconds[short], 2),
                    "lapack_landmark_rmse_px": baseline["landmark_rmse_px"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
