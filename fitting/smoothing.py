"""Temporal smoothing of landmark trajectories with cubic smoothing splines (paper §III-B, step 2).

Each of the 136 coordinate trajectories (68 points × x, y) of a tracked face is
replaced by the cubic smoothing spline of its valid samples, which also fills
gaps shorter than K frames; longer gaps split the video into segments that are
smoothed separately and stay missing, as do frames before the first and after
the last valid frame (no extrapolation).

Why :func:`scipy.interpolate.make_smoothing_spline` (the penalised natural cubic
spline minimising ``Σ (y_t − f(t))² + λ ∫ f''(t)² dt``) rather than
``UnivariateSpline``: its smoothness is set by one number λ with a known
frequency response, instead of FITPACK's residual budget ``s`` whose right value
depends on the unknown noise level and whose adaptively placed knots differ from
one trajectory to the next. For equally spaced frames the smoother acts as the
low-pass filter ``H(f) = 1 / (1 + λ (2π f)⁴)`` (f in cycles per frame), so λ is
chosen from a cutoff frequency where the amplitude is halved:
``λ = (2π · cutoff_hz / frame_rate)⁻⁴``. With one λ for all 136 columns, a whole
segment is a single banded solve (≈ 0.3 s for 20,000 frames). Its automatic
choice of λ by generalised cross-validation is not used: SciPy computes it with
Python loops, ≈ 0.3 s per 500-frame trajectory, i.e. a minute per video.

The default cutoff, 6 Hz, keeps what faces do — speech articulation and most
expressions move mostly below ≈ 4 Hz (gain ≥ 0.8 there) — and removes most detector
jitter, which is close to white noise (its standard deviation falls to ≈ 0.6× at
30 fps).
"""

from __future__ import annotations

import numpy as np
from flax import struct
from scipy.interpolate import make_smoothing_spline

__all__ = ["SmoothingConfig", "SmoothedLandmarks", "smooth_landmarks", "spline_lambda", "valid_runs"]

_MIN_SPLINE_POINTS = 5
"""make_smoothing_spline needs at least five samples."""


@struct.dataclass(frozen=True)
class SmoothingConfig:
    """Settings of :func:`smooth_landmarks`.

    Attributes:
      max_lost_frames: K; gaps of fewer than K consecutive invalid frames are
        filled by the spline, gaps of K or more stay invalid. Default 5 (the
        tracker's K).
      cutoff_hz: frequency at which the smoother halves a sinusoid's amplitude,
        in Hz of the sequence's frame rate. Default 6.
      lam: the spline's λ in frames⁴ (overrides ``cutoff_hz`` when set; 0
        interpolates the valid samples exactly).
    """

    max_lost_frames: int = struct.field(pytree_node=False, default=5)
    cutoff_hz: float = struct.field(pytree_node=False, default=6.0)
    lam: float | None = struct.field(pytree_node=False, default=None)

    def validate(self) -> SmoothingConfig:
        """Raise ``ValueError`` naming the offending field; return ``self`` when consistent."""
        if not isinstance(self.max_lost_frames, (int, np.integer)) or self.max_lost_frames < 1:
            raise ValueError(f"SmoothingConfig.max_lost_frames: must be a positive int, got {self.max_lost_frames!r}")
        if not float(self.cutoff_hz) > 0:
            raise ValueError(f"SmoothingConfig.cutoff_hz: must be positive, got {self.cutoff_hz!r}")
        if self.lam is not None and not float(self.lam) >= 0:
            raise ValueError(f"SmoothingConfig.lam: must be non-negative or None, got {self.lam!r}")
        return self


@struct.dataclass
class SmoothedLandmarks:
    """Smoothed landmarks over ``T`` frames.

    Attributes:
      landmarks: ``(T, 68, 2) float32`` smoothed points, pixels; NaN where invalid.
      valid: ``(T,) bool`` observed or filled frames.
      filled: ``(T,) bool`` frames that had no observation and were filled by the
        spline (a gap shorter than K).
    """

    landmarks: np.ndarray
    valid: np.ndarray
    filled: np.ndarray


def spline_lambda(cutoff_hz: float, frame_rate: float) -> float:
    """λ of the smoothing spline whose amplitude response is ½ at ``cutoff_hz``.

    Args:
      cutoff_hz: cutoff frequency, Hz.
      frame_rate: samples per second of the trajectory, Hz (video fps / stride).

    Returns:
      λ in frames⁴ for :func:`scipy.interpolate.make_smoothing_spline` with
      abscissae in frames.

    Examples:
      >>> round(spline_lambda(3.0, 30.0) ** -0.25 / (2 * np.pi), 6)  # 0.1 cycles per frame
      0.1
    """
    if not frame_rate > 0:
        raise ValueError(f"frame_rate: must be positive, got {frame_rate!r}")
    if not cutoff_hz > 0:
        raise ValueError(f"cutoff_hz: must be positive, got {cutoff_hz!r}")
    return float((2.0 * np.pi * cutoff_hz / frame_rate) ** -4)


def valid_runs(valid, max_gap: int) -> list[tuple[int, int]]:
    """Segments ``[start, stop)`` of frames joined across gaps of at most ``max_gap`` frames.

    Each segment starts and ends on a valid frame; the gaps between segments are
    longer than ``max_gap``.

    Args:
      valid: ``(T,) bool``.
      max_gap: longest run of invalid frames that does not split a segment.

    Returns:
      ``[(start, stop), ...]`` frame ranges, in order.

    Examples:
      >>> valid_runs(np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0], bool), max_gap=2)
      [(1, 6), (9, 10)]
    """
    indices = np.flatnonzero(np.asarray(valid, bool))
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) - 1 > max_gap)
    starts = np.r_[indices[0], indices[breaks + 1]]
    stops = np.r_[indices[breaks], indices[-1]] + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def smooth_landmarks(
    landmarks, valid=None, config: SmoothingConfig = SmoothingConfig(), *, frame_rate: float = 30.0
) -> SmoothedLandmarks:
    """Smooth each landmark trajectory with a cubic smoothing spline and fill short gaps.

    Args:
      landmarks: ``(T, P, 2)`` points per frame, pixels (P = 68 for iBUG);
        NaN where missing.
      valid: ``(T,) bool`` usable frames; default: frames whose points are all
        finite. A frame marked valid with a non-finite point is treated as invalid.
      config: gap length and smoothness.
      frame_rate: frames per second of this sequence (the video's fps divided by
        the frame stride); converts ``config.cutoff_hz`` to frames. Default 30.

    Returns:
      :class:`SmoothedLandmarks`: smoothed points in every valid frame, spline
      values in gaps shorter than ``config.max_lost_frames``, NaN elsewhere.
      Segments with fewer than five valid frames are not smoothed; their short
      gaps are filled by linear interpolation.

    Raises:
      ValueError: wrong shapes.

    Examples:
      >>> t = np.arange(40.0)
      >>> track = np.stack([t, 2 * t], -1)[:, None, :].repeat(68, 1)  # straight-line motion
      >>> track[[10, 11, 30, 31, 32, 33, 34]] = np.nan                # gaps of 2 and 5 frames
      >>> out = smooth_landmarks(track)
      >>> out.valid[[10, 11, 30]].tolist(), float(out.landmarks[10, 0, 0].round(3))
      ([True, True, False], 10.0)
    """
    config.validate()
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise ValueError(f"landmarks: expected shape (T, P, 2), got {landmarks.shape}")
    frames, points = landmarks.shape[:2]
    finite = np.isfinite(landmarks).all(axis=(1, 2))
    if valid is None:
        observed = finite
    else:
        valid = np.asarray(valid, bool)
        if valid.shape != (frames,):
            raise ValueError(f"valid: expected shape ({frames},), got {valid.shape}")
        observed = valid & finite
    lam = config.lam if config.lam is not None else spline_lambda(config.cutoff_hz, frame_rate)

    smoothed = np.full((frames, points, 2), np.nan)
    covered = np.zeros(frames, bool)
    for start, stop in valid_runs(observed, config.max_lost_frames - 1):
        positions = np.arange(start, stop, dtype=np.float64)
        kept = np.flatnonzero(observed[start:stop]) + start
        samples = landmarks[kept].reshape(len(kept), -1)
        if len(kept) >= _MIN_SPLINE_POINTS:
            # One λ for every column: a single banded solve for all 2P trajectories.
            spline = make_smoothing_spline(kept.astype(np.float64), samples, lam=float(lam))
            values = spline(positions)
        else:
            values = np.stack([np.interp(positions, kept, column) for column in samples.T], axis=1)
        smoothed[start:stop] = values.reshape(stop - start, points, 2)
        covered[start:stop] = True
    return SmoothedLandmarks(
        landmarks=smoothed.astype(np.float32),
        valid=covered,
        filled=covered & ~observed,
    )
