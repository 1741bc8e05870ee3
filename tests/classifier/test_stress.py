"""Stress protocol runner on synthetic per-frame data with a known signal."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.stress import stress_protocol

PHASES = ("emotional recall", "stressful images", "stressful videos")


@pytest.fixture(scope="module")
def frames():
    """12 subjects × 3 phases × (neutral, stress) × 8 frames of 6-d features.

    Each subject has a large personal offset (identity leaking into the
    features), so only subject-disjoint folds measure stress recognition; the
    stress signal is weaker in the third phase.
    """
    rng = np.random.default_rng(0)
    signal = {"emotional recall": 1.5, "stressful images": 1.5, "stressful videos": 0.9}
    direction = rng.normal(size=6)
    direction /= np.linalg.norm(direction)
    features, labels, subjects, phases = [], [], [], []
    for subject in range(12):
        offset = rng.normal(scale=3.0, size=6)
        for phase in PHASES:
            for label in (0, 1):
                x = offset + rng.normal(size=(8, 6)) + label * 2 * signal[phase] * direction
                # Subject-normalised features, as one would use per video.
                features.append(x)
                labels += [label] * 8
                subjects += [subject] * 8
                phases += [phase] * 8
    features = np.concatenate(features)
    subjects = np.array(subjects)
    for subject in range(12):
        rows = subjects == subject
        features[rows] -= features[rows].mean(axis=0)
    return features.astype(np.float32), np.array(labels), subjects, np.array(phases)


def test_known_signal_is_recognised_per_phase(frames):
    features, labels, subjects, phases = frames
    result = stress_protocol(features, labels, subjects, phases, phase_names=PHASES)
    assert result.phase_names == PHASES and result.phase_accuracy.shape == (10, 3)
    assert result.fold_accuracy.shape == (10, 5)
    for repeat in result.folds:
        for subject in np.unique(subjects):
            assert np.unique(repeat[subjects == subject]).size == 1
    assert not np.array_equal(result.folds[0], result.folds[1])
    assert np.all(result.phase_mean[:2] > 0.9)
    assert result.phase_mean[2] > 0.75 and result.phase_mean[2] < result.phase_mean[0]
    assert result.average == pytest.approx(result.phase_mean.mean())


def test_shuffled_labels_are_at_chance(frames):
    features, labels, subjects, phases = frames
    shuffled = np.random.default_rng(1).permutation(labels)
    result = stress_protocol(features, shuffled, subjects, phases, n_repeats=4)
    assert abs(result.average - 0.5) < 0.1
    assert np.all(np.abs(result.phase_mean - 0.5) < 0.15)


def test_input_validation(frames):
    features, labels, subjects, phases = frames
    with pytest.raises(ValueError, match="exactly 2 classes"):
        stress_protocol(features, labels + (subjects % 3), subjects, phases)
    with pytest.raises(ValueError, match="groups"):
        stress_protocol(features[:96], labels[:96], subjects[:96], phases[:96])
