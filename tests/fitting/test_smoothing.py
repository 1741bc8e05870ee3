"""Cubic-spline smoothing of landmark trajectories: jitter removal, short-gap filling, long gaps."""

from __future__ import annotations

import numpy as np
import pytest

from fitting.smoothing import SmoothingConfig, smooth_landmarks, spline_lambda, valid_runs

FPS = 30.0


def clean_track(frames=300, seed=0):
    """Smooth face-like motion: a drifting, nodding head whose points also open and close a mouth.

    ``(T, 68, 2)`` pixels; every point moves with frequencies below 2 Hz at 30 fps.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    base = rng.uniform(100, 300, (68, 2))
    head = np.stack([40 * np.sin(2 * np.pi * 0.3 * t), 15 * np.sin(2 * np.pi * 0.7 * t + 1)], -1)
    mouth = 8 * np.sin(2 * np.pi * 1.8 * t)[:, None] * (np.arange(68) >= 48)[None, :]
    track = base[None] + head[:, None, :]
    track[..., 1] += mouth
    return track


def rms(a, b):
    return float(np.sqrt(np.nanmean(np.sum((a - b) ** 2, axis=-1))))


def test_smoothing_reduces_injected_jitter():
    clean = clean_track()
    noisy = clean + np.random.default_rng(1).normal(0, 2.0, clean.shape)
    result = smooth_landmarks(noisy, frame_rate=FPS)
    before, after = rms(noisy, clean), rms(result.landmarks, clean)
    assert before == pytest.approx(2.0 * np.sqrt(2), rel=0.05)
    assert after < 0.7 * before
    assert result.valid.all() and not result.filled.any()
    # A lower cutoff removes more of the white jitter from this slow motion.
    smoother = smooth_landmarks(noisy, config=SmoothingConfig(cutoff_hz=3.0), frame_rate=FPS)
    assert rms(smoother.landmarks, clean) < after


def test_clean_motion_is_preserved():
    clean = clean_track()
    result = smooth_landmarks(clean, frame_rate=FPS)
    # The fastest motion (1.8 Hz mouth, 8 px) passes a 6 Hz cutoff almost unchanged.
    assert rms(result.landmarks, clean) < 0.15


def test_gaps_shorter_than_k_are_filled_and_longer_ones_stay_missing():
    clean = clean_track()
    noisy = clean + np.random.default_rng(2).normal(0, 1.0, clean.shape)
    valid = np.ones(len(clean), bool)
    short_gaps = [range(50, 54), range(120, 122), range(200, 201)]  # 4, 2, 1 frames (< K = 5)
    long_gaps = [range(80, 85), range(250, 262)]  # 5 and 12 frames (≥ K)
    for gap in short_gaps + long_gaps:
        valid[list(gap)] = False
    observed = np.where(valid[:, None, None], noisy, np.nan)
    result = smooth_landmarks(observed, valid, frame_rate=FPS)

    for gap in short_gaps:
        frames = list(gap)
        assert result.valid[frames].all() and result.filled[frames].all()
        # The spline bridges the gap close to the true motion (noise σ = 1 px).
        assert rms(result.landmarks[frames], clean[frames]) < 1.5
    for gap in long_gaps:
        frames = list(gap)
        assert not result.valid[frames].any() and not result.filled[frames].any()
        assert np.isnan(result.landmarks[frames]).all()
    assert result.valid.sum() == len(clean) - 17
    assert result.filled.sum() == 7


def test_no_extrapolation_before_the_first_or_after_the_last_valid_frame():
    clean = clean_track(60)
    valid = np.zeros(60, bool)
    valid[3:57] = True
    result = smooth_landmarks(np.where(valid[:, None, None], clean, np.nan), valid, frame_rate=FPS)
    assert not result.valid[:3].any() and not result.valid[57:].any()
    assert np.isnan(result.landmarks[:3]).all() and np.isnan(result.landmarks[57:]).all()


def test_k_is_configurable():
    clean = clean_track(80)
    valid = np.ones(80, bool)
    valid[30:37] = False  # 7 frames
    observed = np.where(valid[:, None, None], clean, np.nan)
    assert not smooth_landmarks(observed, valid, frame_rate=FPS).valid[30:37].any()
    wide = smooth_landmarks(observed, valid, SmoothingConfig(max_lost_frames=8), frame_rate=FPS)
    assert wide.filled[30:37].all()


def test_cutoff_halves_a_sinusoid_at_the_cutoff_frequency():
    # The λ ↔ cutoff relation claimed in fitting.smoothing, checked on pure tones.
    t = np.arange(600.0)
    for frequency_hz, expected_gain in [(6.0, 0.5), (3.0, 1 / (1 + 0.5**4)), (9.0, 1 / (1 + 1.5**4))]:
        tone = np.sin(2 * np.pi * frequency_hz / FPS * t)
        track = np.stack([tone, np.zeros_like(tone)], -1)[:, None, :]
        smoothed = smooth_landmarks(track, frame_rate=FPS).landmarks[100:500, 0, 0]
        gain = np.std(smoothed) / np.std(tone[100:500])
        assert gain == pytest.approx(expected_gain, abs=0.02)


def test_lambda_zero_interpolates_exactly():
    rng = np.random.default_rng(3)
    track = rng.normal(size=(30, 68, 2)) * 5
    result = smooth_landmarks(track, config=SmoothingConfig(lam=0.0))
    np.testing.assert_allclose(result.landmarks, track, atol=1e-3)


def test_short_segments_are_linearly_filled_not_smoothed():
    track = np.full((8, 68, 2), np.nan)
    track[0], track[3] = 0.0, 30.0  # two valid frames with a 2-frame gap
    result = smooth_landmarks(track)
    np.testing.assert_allclose(result.landmarks[:4, 0, 0], [0, 10, 20, 30], atol=1e-5)
    assert result.valid.tolist() == [True] * 4 + [False] * 4


def test_a_valid_frame_with_nan_points_is_treated_as_missing():
    clean = clean_track(40)
    track = clean.copy()
    track[20, 5] = np.nan
    result = smooth_landmarks(track, np.ones(40, bool), frame_rate=FPS)
    assert result.filled[20] and np.isfinite(result.landmarks[20]).all()


def test_valid_runs_and_spline_lambda():
    valid = np.array([1, 0, 0, 0, 0, 1, 1, 0, 1], bool)
    assert valid_runs(valid, 4) == [(0, 9)]
    assert valid_runs(valid, 3) == [(0, 1), (5, 9)]
    assert valid_runs(np.zeros(5, bool), 4) == []
    assert spline_lambda(6.0, 30.0) == pytest.approx((2 * np.pi * 0.2) ** -4)
    with pytest.raises(ValueError, match="frame_rate"):
        spline_lambda(6.0, 0.0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="landmarks"):
        smooth_landmarks(np.zeros((10, 68)))
    with pytest.raises(ValueError, match="valid"):
        smooth_landmarks(np.zeros((10, 68, 2)), np.ones(9, bool))
    with pytest.raises(ValueError, match="max_lost_frames"):
        smooth_landmarks(np.zeros((10, 68, 2)), config=SmoothingConfig(max_lost_frames=0))
