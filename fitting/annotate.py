"""Pseudo-ground-truth annotation: a folder of face videos → cleaned fits → training shards (paper §III-B/C).

Per video: detect landmarks → clean them (tracking, spline smoothing, gap
filling; :mod:`fitting.landmark_pipeline`) → align every kept frame to the
224×224 template (:mod:`fitting.template`) → fit the whole video
(one identity, per-frame expression and camera; many videos at once with
:func:`fitting.batch.fit_videos`) → prune implausible identities (‖i‖ above a
χ² quantile, :mod:`fitting.pruning`) → write one shard per video
(:mod:`fitting.shards`).

Output folder::

    settings.json      the settings of the run (a rerun must use the same ones)
    manifest.jsonl     one line per finished video: status ok / pruned:<reason> /
                       failed:<reason>, counts, identity norm, errors, timings
    shards/<video>/    the training frames of each kept video (atomic directories)
    splits.json        train/validation/test video ids (by video, or by subject)
    report.json, report_*.png   the summary report

**Crash safety.** The manifest is the source of truth. A video counts as done
only once its manifest line is written (after its shard was renamed into
place), and that line is flushed and fsync'ed. A rerun skips the videos in the
manifest, deletes half-written shard directories and shards without a manifest
line, and redoes those videos (including any that were prepared and waiting for
their fit batch when the run stopped); every step is deterministic, so a killed
and resumed run produces the same dataset as an uninterrupted one.

**Splits.** A video's split is decided by a hash of its subject id (or its video
id when the subject is unknown) and the seed, so it never depends on which
other videos exist, were pruned or finished first, and one subject's videos
always share a split. Proportions are 70/15/15 in expectation (exact for large
sets, approximate for a handful of videos).

**Parallelism and batching.** Detection, cleaning and cropping
(:func:`prepare_video`, the CPU-heavy part) run per video in worker processes
(``engine="process"``) or as Ray tasks (``engine="ray"``). Fitting runs in the
calling process, on all its local devices (the accelerator when there is one):
prepared videos wait in one queue per length bucket
(:func:`fitting.batch.bucket_length`), and as soon as a queue holds
``fit_batch_size`` videos they are fitted together by
:func:`fitting.batch.fit_videos` (one compiled program per bucket, the batch
split over the devices); the queues are emptied once every video is prepared.
Each video of a fitted batch is then written (shard, then manifest line). The
queued videos hold their encoded crops in memory (≈ 15 KB a frame as JPEG), so
``fit_batch_size`` × the bucket length bounds that memory per bucket.

**Ray.** ``engine="ray"`` needs ``pip install 'deepexp3d[cluster]'``. When Ray
is already initialised (``ray.init(...)`` before calling :func:`annotate`) the
run uses that instance; otherwise it connects to ``ray_address`` (or the
``RAY_ADDRESS`` environment variable) when one is given, and else starts a
local instance with ``workers`` CPUs and shuts it down at the end. On a
cluster, every node needs this package installed and must see the videos under
the same paths (a shared file system); the calling process fits and writes the
output.

**Timings.** Every manifest record has ``seconds`` per stage: ``setup``
(creating the detector, once per worker process), ``decode`` (reading frames,
both passes), ``detect`` (the detector), ``track`` and ``smooth`` (cleaning),
``crop`` (warping to the template and encoding), ``fit`` (the video's share of
its batch's fit, in proportion to its frames; the batch itself is in
``fit_batch``) and ``write`` (the shard). ``report.json`` sums them over the
run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from fitting.batch import DEFAULT_BUCKETS, bucket_length, fit_videos
from fitting.detection import LandmarkDetector
from fitting.landmark_pipeline import detect_video
from fitting.media import iterate_video
from fitting.pruning import identity_norm_threshold, read_id_list
from fitting.shards import ShardWriter, camera_to_vector, encode_image, expression_basis_id, remove_partial_shards
from fitting.smoothing import SmoothingConfig
from fitting.template import Template, align_face, make_template, transform_points, warp_camera
from fitting.tracking import TrackingConfig
from fitting.video import VideoFitConfig, VideoFitResult
from morphable.model import MorphableModel

__all__ = [
    "AnnotateConfig",
    "PreparedVideo",
    "AnnotationSummary",
    "VIDEO_SUFFIXES",
    "find_videos",
    "prepare_video",
    "annotate",
    "read_manifest",
    "apply_prune_list",
    "split_of",
    "write_splits",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MANIFEST = "manifest.jsonl"
SETTINGS = "settings.json"
SPLITS = "splits.json"
SHARDS = "shards"


@dataclass(frozen=True)
class AnnotateConfig:
    """Settings of an annotation run (all recorded in ``settings.json``).

    Attributes:
      stride: use every ``stride``-th frame. Default 1.
      max_frames: at most this many frames per video (``None``: all).
      detector_upsample: dlib HOG upsampling (1 finds faces down to ~40 px).
      tracking: false-detection rules (paper: K = 5, F = 2000, margin ½).
      smoothing: spline smoothing (default: fills gaps shorter than K).
      fit: whole-video fit settings. The default trusts detected landmarks to
        σ = 3 px on a face 100 px between the eye corners (dlib's NME is ≈ 2.8 %
        on 300-W) and weighs the identity prior as 64 frames' worth of evidence:
        a detector's errors are correlated across the frames of a video, so
        treating every frame as independent evidence lets the small identity
        modes absorb its systematic errors (‖i‖ ≈ 25 on the shared clips with
        the solver's defaults, against ≈ 2–4 with these settings, below the χ²
        pruning threshold of ≈ 12 for 100 components).
      prune_quantile: ‖i‖² above this χ²(n_i) quantile is pruned (default 0.999).
      min_frames: fewest frames with landmarks for a video to be fitted.
      image_encoding, jpeg_quality: how crops are stored.
      splits: (train, validation, test) fractions. Default 70/15/15 (paper).
      seed: seed of the split assignment.
    """

    stride: int = 1
    max_frames: int | None = None
    detector_upsample: int = 1
    tracking: TrackingConfig = TrackingConfig()
    smoothing: SmoothingConfig | None = None
    fit: VideoFitConfig = VideoFitConfig(landmark_weight=1.0 / 9.0, identity_prior_weight=64.0)
    prune_quantile: float = 0.999
    min_frames: int = 10
    image_encoding: str = "jpeg"
    jpeg_quality: int = 95
    splits: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-serialisable description (nested configs as dicts of their fields)."""

        def plain(value):
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        return plain(self)

    def validate(self) -> "AnnotateConfig":
        """Raise ``ValueError`` naming the offending field; return ``self``."""
        if self.stride < 1:
            raise ValueError(f"AnnotateConfig.stride: must be ≥ 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"AnnotateConfig.max_frames: must be ≥ 1 or None, got {self.max_frames}")
        if not 0.0 < self.prune_quantile < 1.0:
            raise ValueError(f"AnnotateConfig.prune_quantile: must be in (0, 1), got {self.prune_quantile}")
        if len(self.splits) != 3 or any(s < 0 for s in self.splits) or abs(sum(self.splits) - 1.0) > 1e-6:
            raise ValueError(f"AnnotateConfig.splits: three non-negative fractions summing to 1, got {self.splits}")
        self.fit.validate()
        return self


@dataclass
class PreparedVideo:
    """A video after detection, cleaning and cropping (the worker's output).

    Attributes:
      video_id, path: ids.
      status: ``"ok"`` or ``"failed"``; reason: why it failed (``no_face``,
        ``face_lost``, ``unreadable``, ``too_few_frames``, ...); message: details.
      frame_indices: ``(T,)`` frame numbers processed (also when the video
        failed after detection).
      landmarks: ``(T, 68, 2)`` cleaned landmarks, frame pixels (NaN = none).
      valid: ``(T,)`` frames with landmarks.
      crops: encoded 224×224 crops of the valid frames, in order.
      alignment: ``(T, 2, 3)`` frame → crop similarities (NaN for invalid frames).
      seconds: time per stage, s (``setup``, ``decode``, ``detect``, ``track``,
        ``smooth``, ``crop``; see the module docs).
    """

    video_id: str
    path: str
    status: str
    reason: str = ""
    message: str = ""
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 68, 2), np.float32))
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    crops: list = field(default_factory=list)
    alignment: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    seconds: dict = field(default_factory=dict)


@dataclass
class AnnotationSummary:
    """Counts of a run (also written to ``report.json``)."""

    videos: int
    ok: int
    pruned: int
    failed: int
    frames_kept: int
    reasons: dict
    out_dir: Path
    seconds: dict


def find_videos(video_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(video_id, path)`` of every video file under ``video_dir``, sorted.

    The id is the path relative to ``video_dir`` without suffix, ``/`` replaced
    by ``__`` (unique and usable as a directory name).
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith("."):
            relative = path.relative_to(root).with_suffix("")
            found.append(("__".join(relative.parts), path))
    return found


@functools.lru_cache(maxsize=4)
def _default_detector(upsample: int) -> LandmarkDetector:
    """One dlib detector per worker process and setting.

    Loading the shape predictor takes seconds, more than a short clip's
    detection; the detector keeps no state between images, so reusing it does
    not change any result.
    """
    from fitting.detection import DlibDetector

    return DlibDetector(upsample=upsample)


def prepare_video(
    path: str | os.PathLike,
    video_id: str,
    config: AnnotateConfig,
    template: Template,
    detector: LandmarkDetector | None = None,
) -> PreparedVideo:
    """Detect, clean and crop one video (the part that runs in workers or Ray tasks).

    Never raises for a bad video: failures come back as ``status="failed"``.

    Args:
      path: the video file; video_id: its id.
      config: the run's settings; template: the alignment template.
      detector: a landmark detector (default: dlib, created once per process).

    Returns:
      :class:`PreparedVideo` with the time of each stage in ``seconds``.

    Raises:
      ImportError, FileNotFoundError: the default detector cannot be created
        (dlib or its model file missing): no video could be prepared, so the run
        stops instead of recording every video as failed.
    """
    path = str(path)
    seconds: dict[str, float] = {}
    if detector is None:
        started = time.perf_counter()
        detector = _default_detector(config.detector_upsample)
        seconds["setup"] = time.perf_counter() - started
    try:
        track = detect_video(
            path,
            detector,
            stride=config.stride,
            max_frames=config.max_frames,
            tracking=config.tracking,
            smoothing=config.smoothing,
        )
    except FileNotFoundError as error:
        return PreparedVideo(video_id, path, "failed", "missing", str(error), seconds=seconds)
    except Exception as error:  # one bad video must never stop the run
        return PreparedVideo(video_id, path, "failed", "unreadable", f"{type(error).__name__}: {error}", seconds=seconds)
    seconds.update(track.stage_seconds)
    frame_indices = np.asarray(track.frame_indices, np.int64)
    if track.status != "ok":
        return PreparedVideo(
            video_id, path, "failed", track.reason or track.status, track.message, frame_indices=frame_indices,
            seconds=seconds,
        )
    valid = np.asarray(track.valid, bool)
    if int(valid.sum()) < config.min_frames:
        return PreparedVideo(
            video_id,
            path,
            "failed",
            "too_few_frames",
            f"{int(valid.sum())} frames with landmarks, fewer than min_frames={config.min_frames}",
            frame_indices=frame_indices,
            seconds=seconds,
        )
    wanted = {int(index): t for t, index in enumerate(track.frame_indices) if valid[t]}
    last_wanted = max(wanted)
    alignment = np.full((len(valid), 2, 3), np.nan)
    crops: dict[int, np.ndarray] = {}
    crop_seconds = 0.0
    try:
        frames = iterate_video(path, stride=config.stride, max_frames=config.max_frames)
        while True:
            before = time.perf_counter()
            item = next(frames, None)
            decoded = time.perf_counter()
            seconds["decode"] += decoded - before
            if item is None:
                break
            index, frame = item
            t = wanted.get(int(index))
            if t is not None:
                crop, matrix = align_face(frame, track.landmarks[t], template)
                alignment[t] = matrix
                crops[t] = encode_image(crop, config.image_encoding, quality=config.jpeg_quality)
                crop_seconds += time.perf_counter() - decoded
            if index >= last_wanted:  # nothing later is kept: stop decoding
                break
    except Exception as error:
        return PreparedVideo(
            video_id, path, "failed", "unreadable", f"while cropping: {type(error).__name__}: {error}",
            frame_indices=frame_indices, seconds=seconds,
        )
    seconds["crop"] = crop_seconds
    missing = [t for t in wanted.values() if t not in crops]
    valid = valid.copy()
    valid[missing] = False  # frames that did not decode the second time round
    return PreparedVideo(
        video_id=video_id,
        path=path,
        status="ok",
        frame_indices=frame_indices,
        landmarks=np.asarray(track.landmarks, np.float32),
        valid=valid,
        crops=[crops[t] for t in range(len(valid)) if valid[t]],
        alignment=alignment,
        seconds=seconds,
    )


# ----------------------------------------------------------------- manifest


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict]:
    """The manifest as ``{video_id: record}`` (a torn last line from a crash is ignored)."""
    path = Path(out_dir) / MANIFEST
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["video_id"]] = record
    return records


def _append_manifest(out_dir: Path, record: dict) -> None:
    path = out_dir / MANIFEST
    # A torn last line (crash mid-write) would glue onto this record: start on a new line.
    needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as handle:
        handle.write(("\n" if needs_newline else "") + json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _rewrite_manifest(out_dir: Path, records: dict[str, dict]) -> None:
    path = out_dir / MANIFEST
    partial = path.with_name(MANIFEST + ".part")
    with open(partial, "w") as handle:
        for record in records.values():
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


# ------------------------------------------------------------------- splits


def split_of(key: str, seed: int, fractions: Sequence[float] = (0.70, 0.15, 0.15)) -> str:
    """The split (``train``/``validation``/``test``) of a video or subject id.

    A seeded SHA-256 of the id, mapped to [0, 1): stable whatever other videos
    exist.

    Examples:
      >>> split_of("video-1", 0) in ("train", "validation", "test")
      True
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def write_splits(out_dir: str | os.PathLike, config: AnnotateConfig) -> dict[str, list[str]]:
    """Assign every ``ok`` video of the manifest to a split and write ``splits.json``."""
    out = Path(out_dir)
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for video_id, record in sorted(read_manifest(out).items()):
        if record["status"] == "ok":
            key = record.get("subject_id") or video_id
            splits[split_of(key, config.seed, config.splits)].append(video_id)
    partial = out / (SPLITS + ".part")
    partial.write_text(json.dumps(splits, indent=1))
    os.replace(partial, out / SPLITS)
    return splits


def apply_prune_list(out_dir: str | os.PathLike, prune_list) -> list[str]:
    """Manually prune videos after the fact, without refitting.

    Marks the listed videos ``pruned:manual`` in the manifest (their shards stay
    on disk but leave the splits) and rewrites ``splits.json``.

    Args:
      out_dir: an annotation output folder.
      prune_list: a file with one video id per line (``#`` comments) or a list of ids.

    Returns:
      The ids that were pruned now (ids not in the manifest are ignored).
    """
    out = Path(out_dir)
    ids = read_id_list(prune_list) if isinstance(prune_list, (str, os.PathLike)) else list(prune_list)
    records = read_manifest(out)
    pruned = []
    for video_id in ids:
        record = records.get(video_id)
        if record is not None and record["status"] == "ok":
            record["status"] = "pruned"
            record["reason"] = "manual"
            pruned.append(video_id)
    _rewrite_manifest(out, records)
    write_splits(out, AnnotateConfig(**_load_settings(out)["split_settings"]))
    return pruned


# --------------------------------------------------------------------- engine


class _InlineEngine:
    """Runs the per-video work in this process (tests, injected detectors, workers=0)."""

    def __init__(self, detector):
        self.detector = detector

    def run(self, jobs, config, template) -> Iterator[PreparedVideo]:
        for video_id, path in jobs:
            yield prepare_video(path, video_id, config, template, detector=self.detector)

    def close(self):
        pass


class _ProcessEngine:
    """Worker processes (spawned: JAX and forked processes do not mix)."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        self.workers = workers

    def run(self, jobs, config, template) -> Iterator[PreparedVideo]:
        jobs = list(jobs)
        pending = set()
        cursor = 0
        # Keep a bounded number of videos in flight so prepared crops do not pile up in memory.
        while cursor < len(jobs) or pending:
            while cursor < len(jobs) and len(pending) < 2 * self.workers:
                video_id, path = jobs[cursor]
                pending.add(self.pool.submit(prepare_video, str(path), video_id, config, template))
                cursor += 1
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def close(self):
        self.pool.shutdown(cancel_futures=True)


class _RayEngine:
    """Ray tasks, one CPU each, on the running Ray instance, a cluster address, or a local instance.

    Args:
      workers: CPUs of a local instance started here (``None``: all); also
        bounds the tasks in flight (default: twice the instance's CPUs).
      address: a cluster to connect to when Ray is not initialised yet
        (default ``$RAY_ADDRESS``; none: start a local instance).
    """

    def __init__(self, workers: int | None, address: str | None):
        try:
            import ray
        except ImportError as error:
            raise ImportError("engine='ray' needs Ray: pip install 'deepexp3d[cluster]'") from error
        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            with warnings.catch_warnings():
                # Ray starts its processes with fork + exec, which JAX's fork warning cannot tell from a bare fork.
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started_here = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.in_flight = 2 * max(workers or cpus, 1)
        self.remote = ray.remote(num_cpus=1)(prepare_video)
        self.pending: list = []

    def run(self, jobs, config, template) -> Iterator[PreparedVideo]:
        jobs = list(jobs)
        config_ref, template_ref = self.ray.put(config), self.ray.put(template)
        cursor = 0
        # A bounded number of videos in flight, so prepared crops do not pile up in the object store.
        while cursor < len(jobs) or self.pending:
            while cursor < len(jobs) and len(self.pending) < self.in_flight:
                video_id, path = jobs[cursor]
                self.pending.append(self.remote.remote(str(path), video_id, config_ref, template_ref))
                cursor += 1
            done, self.pending = self.ray.wait(self.pending, num_returns=1)
            for ref in done:
                yield self.ray.get(ref)

    def close(self):
        for ref in self.pending:  # a run stopped early leaves nothing running on a shared cluster
            self.ray.cancel(ref, force=True)
        self.pending = []
        if self.started_here:
            self.ray.shutdown()


# ------------------------------------------------------------------ the run


def _load_settings(out: Path) -> dict:
    return json.loads((out / SETTINGS).read_text())


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS
    if path.is_file():
        previous = _load_settings(out)
        if previous != settings:
            raise ValueError(
                f"{path}: this folder was annotated with different settings; use a new output folder "
                "(a resumed run must use the same model and settings to produce the same dataset)"
            )
    else:
        partial = path.with_name(SETTINGS + ".part")
        partial.write_text(json.dumps(settings, indent=1, sort_keys=True))
        os.replace(partial, path)


def _failure_record(prepared: PreparedVideo, subject_id: str, reason: str, message: str) -> dict:
    record = {
        "video_id": prepared.video_id,
        "path": prepared.path,
        "subject_id": subject_id,
        "status": "failed",
        "reason": reason,
        "message": message,
        "seconds": dict(prepared.seconds),
    }
    if len(prepared.frame_indices):
        record["frames_processed"] = int(len(prepared.frame_indices))
    return record


def _fit_batch(
    model: MorphableModel,
    batch: Sequence[PreparedVideo],
    config: AnnotateConfig,
    bucket_sizes: Sequence[int],
    batch_size: int,
) -> list[VideoFitResult | Exception]:
    """Fit prepared videos together; per video its result (NumPy leaves) or the error that stopped it."""
    try:
        fits = fit_videos(
            model,
            [p.landmarks for p in batch],
            masks=[p.valid for p in batch],
            config=config.fit,
            bucket_sizes=bucket_sizes,
            batch_size=batch_size,
        )
        return list(jax.device_get(fits))
    except Exception:  # one video broke the batch: fit them one by one to record only that one
        outcomes: list[VideoFitResult | Exception] = []
        for prepared in batch:
            try:
                fit = fit_videos(
                    model,
                    [prepared.landmarks],
                    masks=[prepared.valid],
                    config=config.fit,
                    bucket_sizes=bucket_sizes,
                    batch_size=batch_size,
                )[0]
                outcomes.append(jax.device_get(fit))
            except Exception as error:
                outcomes.append(error)
        return outcomes


def _write_video(
    prepared: PreparedVideo,
    fit: VideoFitResult,
    seconds: dict,
    model: MorphableModel,
    config: AnnotateConfig,
    template: Template,
    shards: Path,
    threshold: float,
    subject_id: str,
) -> dict:
    """Prune or write one fitted video's shard; returns its manifest record (without ``fit_batch``)."""
    record = {"video_id": prepared.video_id, "path": prepared.path, "subject_id": subject_id}
    seconds = dict(seconds)
    identity = np.asarray(fit.identity)
    expression = np.asarray(fit.expression)
    norm = float(np.linalg.norm(identity))
    valid = prepared.valid & np.asarray(fit.frame_valid)
    record.update(
        frames_processed=int(len(prepared.valid)),
        frames_with_landmarks=int(prepared.valid.sum()),
        identity_norm=norm,
        identity_norm_threshold=threshold,
        fit_valid=bool(fit.valid),
        fit_iterations=int(fit.iterations),
        rmse_px=[float(v) for v in np.asarray(fit.landmark_rmse)[valid]],
        nme=[float(v) for v in np.asarray(fit.landmark_nme)[valid]],
    )
    if not bool(fit.valid):
        record.update(status="failed", reason="fit_invalid", message="the video fit was flagged invalid", seconds=seconds)
        return record
    if norm > threshold:
        record.update(
            status="pruned",
            reason="identity_norm",
            message=f"‖i‖ = {norm:.2f} above the χ² threshold {threshold:.2f}",
            seconds=seconds,
        )
        return record
    start = time.perf_counter()
    cameras = fit.cameras
    std = np.asarray(fit.expression_std)
    rmse = np.asarray(fit.landmark_rmse)
    crop_iter = iter(prepared.crops)
    target = shards / prepared.video_id
    if target.exists():  # left by a run killed before its manifest line: redo
        shutil.rmtree(target)
    with ShardWriter(
        target,
        expression_names=model.expression_names,
        expression_basis=expression_basis_id(model),
        n_identity=model.n_identity,
        image_encoding=config.image_encoding,
        jpeg_quality=config.jpeg_quality,
        image_size=template.size,
        template=template,
        extra={"video_id": prepared.video_id, "source": prepared.path},
    ) as writer:
        for t in range(len(prepared.valid)):
            if not prepared.valid[t]:
                continue
            encoded = next(crop_iter)
            if not valid[t]:
                continue
            matrix = prepared.alignment[t]
            camera = warp_camera(
                type(cameras)(**{k: np.asarray(getattr(cameras, k))[t] for k in ("rotation", "scale", "translation")}),
                matrix,
            )
            scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
            writer.add(
                encoded_image=encoded,
                expression=expression[t],
                identity=identity,
                camera=camera_to_vector(camera),
                landmarks=transform_points(prepared.landmarks[t], matrix),
                video_id=prepared.video_id,
                frame_index=int(prepared.frame_indices[t]),
                subject_id=subject_id,
                rmse=float(rmse[t]) * scale,
                expression_uncertainty=std[t],
                alignment=matrix,
            )
    seconds["write"] = time.perf_counter() - start
    record.update(status="ok", reason="", frames_kept=int(valid.sum()), seconds=seconds)
    return record


def annotate(
    video_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: MorphableModel | None = None,
    config: AnnotateConfig = AnnotateConfig(),
    workers: int | None = None,
    engine: str = "process",
    ray_address: str | None = None,
    fit_batch_size: int | None = None,
    fit_buckets: Sequence[int] = DEFAULT_BUCKETS,
    detector: LandmarkDetector | None = None,
    subjects: dict[str, str] | None = None,
    progress: bool = True,
    on_video: Callable[[dict], None] | None = None,
) -> AnnotationSummary:
    """Annotate a folder of face videos (resumable; see the module docs).

    Args:
      video_dir: folder searched recursively for videos (:data:`VIDEO_SUFFIXES`).
      out_dir: output folder (created; an existing one is resumed).
      model: the morphable model (default: ICT-FaceKit, face area).
      config: :class:`AnnotateConfig`.
      workers: worker processes (``engine="process"``) or CPUs of a local Ray
        instance for detection/cropping (default: CPU count; 0 runs everything
        in this process).
      engine: ``"process"`` (local worker processes) or ``"ray"`` (Ray tasks).
      ray_address: with ``engine="ray"``, the cluster to connect to when Ray is
        not initialised yet (e.g. ``"auto"`` or ``"ray://head:10001"``; default
        ``$RAY_ADDRESS``, else a local instance).
      fit_batch_size: videos of one length bucket fitted together (default: 8,
        or the local device count when larger; rounded up to a multiple of it).
        Results do not depend on it beyond float rounding.
      fit_buckets: the padded video lengths, frames
        (:func:`fitting.batch.bucket_length`); one compiled fit per bucket used.
      detector: a landmark detector object; when given, work runs in this
        process (detector objects are not shipped to workers).
      subjects: optional ``{video_id: subject_id}``; splits then keep a
        subject's videos together.
      progress: show a progress bar with ETA.
      on_video: called with each manifest record as it is written.

    Returns:
      :class:`AnnotationSummary`; also writes ``splits.json`` and the report.

    Raises:
      ValueError: unknown ``engine``, bad ``fit_batch_size``, or ``out_dir``
        annotated with other settings.
    """
    from morphable.io import load_ict

    config.validate()
    if engine not in ("process", "ray"):
        raise ValueError(f"engine: expected 'process' or 'ray', got {engine!r}")
    n_devices = jax.local_device_count()
    batch_size = max(8, n_devices) if fit_batch_size is None else int(fit_batch_size)
    if batch_size < 1:
        raise ValueError(f"fit_batch_size: must be positive, got {fit_batch_size!r}")
    batch_size = -(-batch_size // n_devices) * n_devices  # as fit_videos rounds it
    bucket_length(1, fit_buckets)  # validates the buckets before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = out / SHARDS
    shards.mkdir(exist_ok=True)
    model = model if model is not None else load_ict(region="face")
    template = make_template(model)
    settings = {
        "config": config.to_dict(),
        "model": model.name,
        "expression_basis": expression_basis_id(model),
        "template": template.to_dict(),
        "split_settings": {"splits": list(config.splits), "seed": config.seed},
    }
    settings = json.loads(json.dumps(settings))  # normalise tuples → lists for the comparison
    _check_settings(out, settings)

    videos = find_videos(video_dir)
    done = read_manifest(out)
    remove_partial_shards(shards)
    for stale in shards.iterdir():
        if stale.is_dir() and stale.name not in done:
            shutil.rmtree(stale)  # renamed shard whose manifest line never got written
    jobs = [(video_id, path) for video_id, path in videos if video_id not in done]
    threshold = identity_norm_threshold(model.n_identity, config.prune_quantile)
    if detector is not None or workers == 0:
        runner = _InlineEngine(detector)
    elif engine == "ray":
        runner = _RayEngine(workers, ray_address)
    else:
        runner = _ProcessEngine((os.cpu_count() or 1) if workers is None else workers)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(videos), initial=len(videos) - len(jobs), unit="video", desc="annotating")

    def finish(record: dict) -> None:
        _append_manifest(out, record)
        if on_video is not None:
            on_video(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{record['video_id']}: {record['status']}")

    queues: dict[int, list[PreparedVideo]] = {}

    def fit_and_write(length: int) -> None:
        batch = queues.pop(length, [])
        if not batch:
            return
        started = time.perf_counter()
        outcomes = _fit_batch(model, batch, config, fit_buckets, batch_size)
        fit_seconds = time.perf_counter() - started
        batch_frames = sum(len(p.valid) for p in batch)
        batch_info = {"videos": len(batch), "bucket": length, "batch_size": batch_size, "seconds": fit_seconds}
        for prepared, outcome in zip(batch, outcomes):
            subject = (subjects or {}).get(prepared.video_id, "")
            seconds = {**prepared.seconds, "fit": fit_seconds * len(prepared.valid) / batch_frames}
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                record = _write_video(prepared, outcome, seconds, model, config, template, shards, threshold, subject)
            except Exception as error:  # a failure in one video is recorded, never fatal
                record = _failure_record(prepared, subject, "error", f"{type(error).__name__}: {error}")
                record["seconds"] = seconds
            record["fit_batch"] = batch_info
            finish(record)

    start = time.perf_counter()
    try:
        for prepared in runner.run(jobs, config, template):
            if prepared.status != "ok":
                subject = (subjects or {}).get(prepared.video_id, "")
                finish(_failure_record(prepared, subject, prepared.reason, prepared.message))
                continue
            length = bucket_length(len(prepared.valid), fit_buckets)
            queues.setdefault(length, []).append(prepared)
            if len(queues[length]) >= batch_size:
                fit_and_write(length)
        for length in sorted(queues):
            fit_and_write(length)
    finally:
        runner.close()
        if bar is not None:
            bar.close()
    write_splits(out, config)
    from fitting.annotate_report import write_report

    return write_report(out, seconds={"run": time.perf_counter() - start})
