"""Folds (stratified, subject-disjoint, repeated), cross-validation bookkeeping, optuna search."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.ecoc import ECOCClassifier
from classifier.selection import (
    cross_validate,
    repeated_folds,
    search_hyperparameters,
    stratified_group_kfold,
    stratified_kfold,
)
from classifier.svm import SVMConfig


def test_stratified_kfold_balances_every_class():
    labels = np.repeat(np.arange(7), [30, 12, 25, 9, 40, 17, 33])
    folds = stratified_kfold(labels, 10, seed=0)
    assert folds.shape == labels.shape and set(np.unique(folds)) == set(range(10))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for k in range(7):
        per_fold = np.bincount(folds[labels == k], minlength=10)
        assert per_fold.max() - per_fold.min() <= 1
    assert not np.array_equal(folds, stratified_kfold(labels, 10, seed=1))
    np.testing.assert_array_equal(folds, stratified_kfold(labels, 10, seed=0))


def _subjects_data(seed=0):
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for subject in range(40):
        # Uneven subjects: different numbers of frames and class mixes.
        counts = rng.integers(5, 30, size=3) * (rng.random(3) < 0.8)
        for k, c in enumerate(counts):
            subjects += [subject] * int(c)
            labels += [k] * int(c)
    return np.array(labels), np.array(subjects)


def test_grouped_folds_never_share_a_subject_and_are_stratified():
    labels, subjects = _subjects_data()
    for seed in range(3):
        folds = stratified_group_kfold(labels, subjects, 5, seed=seed)
        for subject in np.unique(subjects):
            assert np.unique(folds[subjects == subject]).size == 1
        assert set(np.unique(folds)) == set(range(5))
        overall = np.bincount(labels) / labels.size
        for f in range(5):
            share = np.bincount(labels[folds == f], minlength=3) / np.sum(folds == f)
            assert np.max(np.abs(share - overall)) < 0.06
        sizes = np.bincount(folds)
        assert sizes.min() > 0.6 * sizes.mean()


def test_grouped_folds_at_least_as_stratified_as_sklearn():
    sklearn_model_selection = pytest.importorskip("sklearn.model_selection")
    labels, subjects = _subjects_data(seed=1)
    overall = np.bincount(labels) / labels.size

    def spread(folds):
        shares = [np.bincount(labels[folds == f], minlength=3) / np.sum(folds == f) for f in range(5)]
        return float(np.mean(np.abs(np.array(shares) - overall)))

    ours = np.mean([spread(stratified_group_kfold(labels, subjects, 5, seed=s)) for s in range(5)])
    splitter = sklearn_model_selection.StratifiedGroupKFold(5, shuffle=True, random_state=0)
    theirs_folds = np.empty_like(labels)
    for f, (_, test) in enumerate(splitter.split(np.zeros(labels.size), labels, subjects)):
        theirs_folds[test] = f
    # Same greedy algorithm, different shuffles: comparable balance.
    assert ours < 1.5 * spread(theirs_folds) + 0.005


def test_grouped_folds_validate_their_input():
    with pytest.raises(ValueError, match="groups"):
        stratified_group_kfold([0, 1, 0, 1], [0, 0, 1, 1], 5)
    with pytest.raises(ValueError, match="shape"):
        stratified_group_kfold([0, 1, 0], [0, 1], 2)


def test_repeated_folds_differ_between_repeats():
    labels, subjects = _subjects_data()
    folds = repeated_folds(labels, 5, 3, groups=subjects, seed=0)
    assert folds.shape == (3, labels.size)
    assert not np.array_equal(folds[0], folds[1])
    np.testing.assert_array_equal(folds[2], stratified_group_kfold(labels, subjects, 5, seed=2))


@pytest.fixture(scope="module")
def rings():
    """Three concentric rings in 2-D plus 2 noise dimensions: needs an RBF kernel and a sensible C."""
    rng = np.random.default_rng(0)
    radius = np.repeat([1.0, 2.0, 3.0], 60)
    angle = rng.uniform(0, 2 * np.pi, radius.size)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1) + rng.normal(0, 0.15, (radius.size, 2))
    x = np.concatenate([x, rng.normal(size=(radius.size, 2))], axis=1).astype(np.float32)
    return x, np.repeat([0, 1, 2], 60)


def test_cross_validation_bookkeeping(rings):
    x, y = rings
    folds = stratified_kfold(y, 5, seed=0)
    config = ECOCClassifier(svm=SVMConfig(kernel="rbf", C=10.0, gamma=0.5))
    result = cross_validate(config, x, y, folds)
    assert result.fold_accuracy.shape == (1, 5)
    for f in range(5):
        assert result.fold_accuracy[0, f] == pytest.approx(np.mean(result.predictions[0, folds == f] == y[folds == f]))
    assert result.confusion.sum() == y.size and np.trace(result.confusion) == np.sum(result.predictions[0] == y)
    assert result.accuracy_mean == pytest.approx(result.fold_accuracy.mean())
    assert result.accuracy_mean > 0.8


# The bad start lies outside the search bounds on purpose; optuna warns and evaluates it as given.
@pytest.mark.filterwarnings("ignore:Fixed parameter")
def test_search_improves_over_a_bad_start(rings):
    pytest.importorskip("optuna", reason="hyper-parameter search needs optuna (pip install 'deepexp3d[classifier]')")
    x, y = rings
    folds = stratified_kfold(y, 5, seed=0)
    bad = ECOCClassifier(svm=SVMConfig(kernel="rbf", C=1e-4, gamma=1e-3))
    result = search_hyperparameters(bad, x, y, folds, n_trials=10, seed=0)
    start = result.trials[0]
    assert start.params == pytest.approx({"C": 1e-4, "gamma": 1e-3})
    assert start.accuracy_mean < 0.5  # a nearly constant kernel with tiny C: near chance (1/3)
    assert result.best.accuracy_mean > 0.85
    assert result.best.accuracy_mean == max(t.accuracy_mean for t in result.trials)
    assert result.best_config.svm.C == pytest.approx(result.best_params["C"])
    # Seeded: the same search gives the same trials.
    again = search_hyperparameters(bad, x, y, folds, n_trials=3, seed=0)
    assert [t.params for t in again.trials] == [t.params for t in result.trials[:3]]
