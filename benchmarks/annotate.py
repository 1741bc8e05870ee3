"""Benchmark of the annotation pipeline (:func:`fitting.annotate.annotate`) on a folder of real videos.

Runs the whole pipeline — detect → clean (track, smooth) → crop → batched fit →
prune → write shards — on ``$DEEPEXP3D_DATA/videos`` (or ``--videos``) into a
fresh output folder, and prints one JSON object per line:

* ``annotate_warmup`` — seconds spent compiling the batched fit for the length
  buckets the run can use (``--no-warmup`` skips it, and the compilation then
  counts as fitting time, as in a real run's first batches);
* ``annotate`` — frames processed per second of wall time (all frames decoded
  and run through the detector, including those of videos that failed later),
  the statuses, and where the time went. The stage times come from the
  pipeline's own timers (the ``seconds`` of every manifest record, see
  :mod:`fitting.annotate`): ``decode``, ``detect``, ``track``, ``smooth``,
  ``crop``, ``fit``, ``write`` and ``setup``. They are summed over videos, so
  worker time and main-process time add up (``busy_seconds`` exceeds the wall
  time when workers run in parallel); ``shares`` divides each group by that sum:

  - ``detection``: the landmark detector (``detect``);
  - ``cleaning``: tracking and spline smoothing (``track`` + ``smooth``);
  - ``fitting``: the batched whole-video fits (``fit``);
  - ``writing``: warping and encoding the crops, writing the shards (``crop`` + ``write``);
  - ``decoding``: reading the frames, both passes (``decode``), and
  - ``setup``: loading the detector, once per worker process (``setup``),
    reported apart from the four stages above.

Every line carries the machine (platform, CPU count, load average before and
after the run, versions, JAX backend and devices). The load average matters:
on a shared machine other processes take CPU time from the workers.

Usage::

    python benchmarks/annotate.py                              # every frame, one worker per CPU
    python benchmarks/annotate.py --stride 3 --max-frames 60   # a quick run
    python benchmarks/annotate.py --engine ray --workers 2     # detection as Ray tasks
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as benchmarks/fit.py: tiny per-frame LAPACK calls

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from common import emit, machine  # noqa: E402

from fitting.annotate import AnnotateConfig, annotate, find_videos, read_manifest  # noqa: E402
from fitting.batch import DEFAULT_BUCKETS, bucket_length, fit_videos  # noqa: E402
from fitting.media import read_video_info  # noqa: E402

STAGE_GROUPS = {
    "detection": ("detect",),
    "cleaning": ("track", "smooth"),
    "fitting": ("fit",),
    "writing": ("crop", "write"),
    "decoding": ("decode",),
    "setup": ("setup",),
}
"""How the pipeline's stage timers are grouped in the report."""


def _machine() -> dict:
    info = machine()
    info["load_average"] = os.getloadavg()
    info["openblas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
    return info


def _warm_up(model, config: AnnotateConfig, videos, batch_size: int | None) -> tuple[float, list[int]]:
    """Compile the batched fit for every bucket up to the longest video's; returns (seconds, buckets)."""
    longest = 1
    for _, path in videos:
        try:
            count = read_video_info(path).frame_count
        except Exception:  # noqa: BLE001 — unreadable files are the pipeline's business, not the warm-up's
            continue
        frames = -(-max(count, 1) // config.stride)
        longest = max(longest, min(frames, config.max_frames or frames))
    buckets = sorted({b for b in DEFAULT_BUCKETS if b <= bucket_length(longest)} | {bucket_length(longest)})
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for length in buckets:
        landmarks = (200 + 20 * rng.normal(size=(length, 68, 2))).astype(np.float32)
        fit_videos(model, [landmarks], config=config.fit, batch_size=batch_size)
    return time.perf_counter() - start, buckets


def _summarise(out: Path, wall: float) -> dict:
    records = read_manifest(out)
    stages: dict[str, float] = {}
    for record in records.values():
        for stage, seconds in record.get("seconds", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    busy = sum(stages.values())
    groups = {name: sum(stages.get(s, 0.0) for s in members) for name, members in STAGE_GROUPS.items()}
    frames = sum(r.get("frames_processed", 0) for r in records.values())
    batches = {}
    for record in records.values():
        if "fit_batch" in record:
            batch = record["fit_batch"]
            key = (batch["bucket"], batch["seconds"])
            batches.setdefault(key, []).append(record.get("frames_processed", 0))
    fitted_frames = sum(sum(v) for v in batches.values())
    fit_seconds = sum(seconds for _, seconds in batches)
    statuses: dict[str, int] = {}
    for record in records.values():
        key = record["status"] + (f":{record['reason']}" if record.get("reason") else "")
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "videos": len(records),
        "statuses": dict(sorted(statuses.items())),
        "frames_processed": frames,
        "frames_kept": sum(r.get("frames_kept", 0) for r in records.values() if r["status"] == "ok"),
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(frames / wall, 2) if wall > 0 else None,
        "busy_seconds": round(busy, 2),
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stages.items())},
        "group_seconds": {k: round(v, 3) for k, v in groups.items()},
        "shares": {k: round(v / busy, 4) for k, v in groups.items()} if busy > 0 else {},
        "fit_batches": [
            {"bucket": bucket, "videos": len(members), "frames": sum(members), "seconds": round(seconds, 3)}
            for (bucket, seconds), members in sorted(batches.items())
        ],
        "fit_frames_per_second": round(fitted_frames / fit_seconds, 1) if fit_seconds > 0 else None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default=None, help="video folder (default: $DEEPEXP3D_DATA/videos)")
    parser.add_argument("--out", default=None, help="output folder, replaced (default: a temporary folder)")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=None, help="frames per video after the stride")
    parser.add_argument("--upsample", type=int, default=1, help="dlib face-detector upsampling")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engine", choices=("process", "ray"), default="process")
    parser.add_argument("--fit-batch-size", type=int, default=None)
    parser.add_argument("--no-warmup", action="store_true", help="count the fit's compilation in the run")
    parser.add_argument("--cache-dir", default=os.environ.get("DEEPEXP3D_TEST_CACHE"))
    args = parser.parse_args(argv)

    from morphable.io import load_ict
    from morphable.paths import data_dir

    videos_dir = Path(args.videos) if args.videos else data_dir() / "videos"
    model = load_ict(region="face", cache_dir=args.cache_dir)
    config = AnnotateConfig(stride=args.stride, max_frames=args.max_frames, detector_upsample=args.upsample)
    base = {
        "settings": {
            "videos": str(videos_dir),
            "stride": args.stride,
            "max_frames": args.max_frames,
            "upsample": args.upsample,
            "workers": args.workers,
            "engine": args.engine,
            "fit_batch_size": args.fit_batch_size,
            "fit_iterations": config.fit.iterations,
            "model": f"{model.name}: {model.n_identity} identity, {model.n_expression} expression",
        },
    }
    if not args.no_warmup:
        seconds, buckets = _warm_up(model, config, find_videos(videos_dir), args.fit_batch_size)
        emit({"benchmark": "annotate_warmup", **base, "buckets": buckets, "seconds": round(seconds, 2),
              "machine": _machine()})

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="deepexp3d-annotate-bench-"))
    if out.exists():
        shutil.rmtree(out)
    before = _machine()
    start = time.perf_counter()
    annotate(videos_dir, out, model=model, config=config, workers=args.workers, engine=args.engine,
             fit_batch_size=args.fit_batch_size, progress=False)
    wall = time.perf_counter() - start
    after = _machine()
    emit({"benchmark": "annotate", **base, **_summarise(out, wall), "out": str(out),
          "warmup": not args.no_warmup, "machine": before, "load_average_after": after["load_average"]})


if __name__ == "__main__":
    main()
