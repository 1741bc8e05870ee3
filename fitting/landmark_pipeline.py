"""Videos → clean landmark tracks: detection, tracking, smoothing (paper §III-B, steps 1–2).

:func:`detect_video` streams a video's frames through a detector
(:mod:`fitting.detection`), follows the first frame's face
(:mod:`fitting.tracking`, which stops the stream as soon as the video is dropped)
and smooths the kept landmarks with cubic splines, filling short gaps
(:mod:`fitting.smoothing`). :func:`detect_videos` does that for many videos and
never raises for one bad video: a file that cannot be read, or any error in one
video, becomes a ``"skipped"`` result with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from flax import struct

from fitting.detection import N_LANDMARKS, FaceDetection, LandmarkDetector
from fitting.media import MediaError, VideoInfo, iterate_video, read_video_info
from fitting.smoothing import SmoothingConfig, smooth_landmarks
from fitting.tracking import TrackingConfig, TrackResult, track_faces

__all__ = ["VideoLandmarks", "detect_video", "detect_videos", "summarize"]

_FALLBACK_FPS = 30.0
"""Frame rate assumed for smoothing when the container declares none."""


@struct.dataclass
class VideoLandmarks:
    """The cleaned landmark track of one video over the ``T`` frames processed.

    Attributes:
      path: the video file.
      status: ``"ok"`` (usable), ``"dropped"`` (the tracking rules rejected it) or
        ``"skipped"`` (it could not be processed).
      reason: ``""`` when ok; ``"no_face"`` or ``"face_lost"`` when dropped;
        ``"missing"``, ``"unreadable"`` or ``"error"`` when skipped.
      message: what happened, in words.
      frame_indices: ``(T,) int64`` index in the file of each processed frame
        (``0, stride, 2·stride, …``).
      landmarks: ``(T, 68, 2) float32`` smoothed landmarks, 0-based pixels; NaN
        where invalid.
      valid: ``(T,) bool`` frames with landmarks (tracked, or filled gaps shorter than K).
      filled: ``(T,) bool`` frames whose landmarks were interpolated.
      track: the raw :class:`fitting.tracking.TrackResult` (unsmoothed landmarks,
        boxes, face counts), ``None`` when skipped.
      info: :class:`fitting.media.VideoInfo`, ``None`` when the file is unreadable.
      seconds: wall time spent on the video, s.
      decode_seconds: of which reading and decoding frames (and the container header), s.
      detect_seconds: of which the detector's calls, s.
      track_seconds: of which the tracking rules, s.
      smooth_seconds: of which spline smoothing and gap filling, s.
    """

    frame_indices: np.ndarray
    landmarks: np.ndarray
    valid: np.ndarray
    filled: np.ndarray
    track: TrackResult | None
    path: str = struct.field(pytree_node=False, default="")
    status: str = struct.field(pytree_node=False, default="ok")
    reason: str = struct.field(pytree_node=False, default="")
    message: str = struct.field(pytree_node=False, default="")
    info: VideoInfo | None = struct.field(pytree_node=False, default=None)
    seconds: float = struct.field(pytree_node=False, default=0.0)
    decode_seconds: float = struct.field(pytree_node=False, default=0.0)
    detect_seconds: float = struct.field(pytree_node=False, default=0.0)
    track_seconds: float = struct.field(pytree_node=False, default=0.0)
    smooth_seconds: float = struct.field(pytree_node=False, default=0.0)

    @property
    def n_frames(self) -> int:
        """Frames processed, ``T``."""
        return int(self.frame_indices.shape[0])

    @property
    def stage_seconds(self) -> dict[str, float]:
        """``{"decode", "detect", "track", "smooth": seconds}``: where :attr:`seconds` went."""
        return {
            "decode": self.decode_seconds,
            "detect": self.detect_seconds,
            "track": self.track_seconds,
            "smooth": self.smooth_seconds,
        }


def _skipped(path, reason: str, message: str, info: VideoInfo | None, seconds: float) -> VideoLandmarks:
    return VideoLandmarks(
        frame_indices=np.zeros(0, np.int64),
        landmarks=np.zeros((0, N_LANDMARKS, 2), np.float32),
        valid=np.zeros(0, bool),
        filled=np.zeros(0, bool),
        track=None,
        path=str(path),
        status="skipped",
        reason=reason,
        message=message,
        info=info,
        seconds=seconds,
    )


def detect_video(
    path: str | os.PathLike,
    detector: LandmarkDetector,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    tracking: TrackingConfig = TrackingConfig(),
    smoothing: SmoothingConfig | None = None,
    stop_early: bool = True,
) -> VideoLandmarks:
    """Detect, track and smooth the landmarks of the main face of one video.

    Args:
      path: the video file.
      detector: any :class:`fitting.detection.LandmarkDetector`.
      stride: process every ``stride``-th frame (K and F then count processed frames).
      max_frames: process at most this many frames (``None``: all).
      tracking: the false-detection rules (paper defaults K = 5, F = 2000, margin ½).
      smoothing: spline settings; default ``SmoothingConfig`` with the tracker's K.
      stop_early: stop decoding and detecting once the video is dropped (or its
        track has ended), so ``T`` can be shorter than the video.

    Returns:
      :class:`VideoLandmarks` with status ``"ok"`` or ``"dropped"``.

    Raises:
      FileNotFoundError: the file does not exist.
      fitting.media.MediaError: the file is not a readable video.

    Examples:
      >>> from fitting.detection import DlibDetector
      >>> result = detect_video("clip.mp4", DlibDetector(), stride=2)  # doctest: +SKIP
      >>> result.status, result.landmarks.shape  # doctest: +SKIP
      ('ok', (236, 68, 2))
    """
    started = time.perf_counter()
    tracking.validate()
    smoothing = smoothing if smoothing is not None else SmoothingConfig(max_lost_frames=tracking.max_lost_frames)
    smoothing.validate()
    info = read_video_info(path)
    frame_indices: list[int] = []
    # Decoding and detection happen inside the generator the tracker pulls from, so
    # they are timed there; the tracker's own time is what remains of its call.
    decode_seconds = time.perf_counter() - started
    detect_seconds = 0.0

    def detections() -> Iterator[FaceDetection]:
        nonlocal decode_seconds, detect_seconds
        frames = iterate_video(path, stride=stride, max_frames=max_frames)
        while True:
            before = time.perf_counter()
            item = next(frames, None)
            decoded = time.perf_counter()
            decode_seconds += decoded - before
            if item is None:
                return
            index, frame = item
            frame_indices.append(index)
            detection = detector.detect(frame)
            detect_seconds += time.perf_counter() - decoded
            yield detection

    header_seconds = decode_seconds
    tracking_started = time.perf_counter()
    track = track_faces(detections(), tracking, stop_early=stop_early)
    smoothing_started = time.perf_counter()
    pulled_seconds = (decode_seconds - header_seconds) + detect_seconds
    track_seconds = max(smoothing_started - tracking_started - pulled_seconds, 0.0)
    frame_rate = (info.fps if info.fps > 0 else _FALLBACK_FPS) / stride
    smoothed = smooth_landmarks(track.landmarks, track.tracked, smoothing, frame_rate=frame_rate)
    finished = time.perf_counter()
    return VideoLandmarks(
        frame_indices=np.asarray(frame_indices[: track.n_frames], np.int64),
        landmarks=smoothed.landmarks,
        valid=smoothed.valid,
        filled=smoothed.filled,
        track=track,
        path=str(path),
        status=track.status,
        reason=track.reason,
        message=track.message,
        info=info,
        seconds=finished - started,
        decode_seconds=decode_seconds,
        detect_seconds=detect_seconds,
        track_seconds=track_seconds,
        smooth_seconds=finished - smoothing_started,
    )


def detect_videos(
    paths: Iterable[str | os.PathLike],
    detector: LandmarkDetector,
    *,
    progress: bool = False,
    on_result: Callable[[VideoLandmarks], None] | None = None,
    **options,
) -> list[VideoLandmarks]:
    """:func:`detect_video` over many videos, recording instead of raising per-video failures.

    Args:
      paths: video files.
      detector: any :class:`fitting.detection.LandmarkDetector`.
      progress: show a progress bar (tqdm).
      on_result: called with each result as soon as it is ready (e.g. to save it).
      **options: passed to :func:`detect_video` (``stride``, ``max_frames``,
        ``tracking``, ``smoothing``, ``stop_early``).

    Returns:
      One :class:`VideoLandmarks` per path, in order. A missing file is
      ``"skipped"`` with reason ``"missing"``, an unreadable one ``"unreadable"``,
      and any other exception raised while processing a video ``"error"`` (the
      message holds the exception). ``KeyboardInterrupt`` still stops the batch.

    Examples:
      >>> results = detect_videos(["no/such/clip.mp4"], detector=None)
      >>> results[0].status, results[0].reason
      ('skipped', 'missing')
    """
    paths = list(paths)
    if progress:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc="videos", unit="video")
    results = []
    for path in paths:
        started = time.perf_counter()
        try:
            result = detect_video(path, detector, **options)
        except FileNotFoundError as error:
            result = _skipped(path, "missing", str(error), None, time.perf_counter() - started)
        except MediaError as error:
            result = _skipped(path, "unreadable", str(error), None, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 — one bad video must not stop a batch of thousands
            result = _skipped(path, "error", f"{type(error).__name__}: {error}", None, time.perf_counter() - started)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def summarize(results: Sequence[VideoLandmarks]) -> dict:
    """Counts of a batch's outcomes, for reports.

    Args:
      results: from :func:`detect_videos`.

    Returns:
      ``{"videos": V, "ok": n, "dropped": n, "skipped": n, "fraction_dropped": x,
      "reasons": {reason: n}, "frames": processed frames, "valid_frames": n}``;
      ``fraction_dropped`` counts dropped among the videos that could be read.

    Examples:
      >>> summarize([])["videos"]
      0
    """
    statuses = [result.status for result in results]
    reasons: dict[str, int] = {}
    for result in results:
        if result.reason:
            reasons[result.reason] = reasons.get(result.reason, 0) + 1
    readable = statuses.count("ok") + statuses.count("dropped")
    return {
        "videos": len(results),
        "ok": statuses.count("ok"),
        "dropped": statuses.count("dropped"),
        "skipped": statuses.count("skipped"),
        "fraction_dropped": statuses.count("dropped") / readable if readable else 0.0,
        "reasons": reasons,
        "frames": int(sum(result.n_frames for result in results)),
        "valid_frames": int(sum(int(np.count_nonzero(result.valid)) for result in results)),
    }
