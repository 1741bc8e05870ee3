"""ECOC codes, loss-based decoding, calibration, and agreement with scikit-learn's one-vs-rest SVC."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from classifier.ecoc import (
    ECOCClassifier,
    class_probabilities,
    decoding_losses,
    dense_random_coding,
    encode_labels,
    fit,
    fit_temperature,
    one_vs_all_coding,
    one_vs_one_coding,
    predict,
    predict_names,
    predict_proba,
)
from classifier.selection import cross_validate, stratified_kfold
from classifier.svm import SVMConfig


# --- decoding on hand-made codes ----------------------------------------------------------------


def test_hinge_decoding_of_a_hand_made_code():
    code = np.array([[1, 1, -1], [-1, 1, 1], [1, -1, 1], [-1, -1, -1]])
    scores = np.array([0.8, -1.5, 0.9])  # codeword of class 2 up to the magnitudes
    losses = np.asarray(decoding_losses(code, scores, "hinge"))
    # Hand computed: g(m) = max(0, 1 − m)/2, mean over the three columns.
    expected = np.array(
        [(0.1 + 1.25 + 0.95) / 3, (0.9 + 1.25 + 0.05) / 3, (0.1 + 0.0 + 0.05) / 3, (0.9 + 0.0 + 0.95) / 3]
    )
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert int(np.argmin(losses)) == 2


def test_zero_entries_are_ignored():
    code = one_vs_one_coding(3)  # columns (0,1), (0,2), (1,2)
    scores = np.array([-0.5, -3.0, 1.0])
    losses = np.asarray(decoding_losses(code, scores, "hinge"))
    # Each class averages over its two columns only; counting the 0 entry as a
    # margin of 0 (loss 0.5) would give [1.083, 0.25, 0.5] instead.
    expected = np.array([(0.75 + 2.0) / 2, (0.25 + 0.0) / 2, (0.0 + 1.0) / 2])
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert int(np.argmin(losses)) == 1


@pytest.mark.parametrize("loss", ["hinge", "exponential", "linear"])
def test_one_vs_all_decoding_picks_the_largest_score(loss):
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=2.0, size=(500, 7))
    losses = np.asarray(decoding_losses(one_vs_all_coding(7), scores, loss))
    np.testing.assert_array_equal(np.argmin(losses, axis=-1), np.argmax(scores, axis=-1))


def test_exponential_decoding_values():
    code = np.array([[1, -1], [-1, 0]])
    losses = np.asarray(decoding_losses(code, np.array([2.0, 1.0]), "exponential"))
    np.testing.assert_allclose(losses, [(np.exp(-2.0) + np.exp(1.0)) / 4, np.exp(2.0) / 2], rtol=1e-6)


# --- coding matrices ----------------------------------------------------------------------------


def test_coding_matrices():
    np.testing.assert_array_equal(one_vs_all_coding(3), [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    ovo = one_vs_one_coding(4)
    assert ovo.shape == (4, 6)
    assert np.all(np.sum(ovo == 1, axis=0) == 1) and np.all(np.sum(ovo == -1, axis=0) == 1)
    pairs = {(int(np.flatnonzero(c == 1)[0]), int(np.flatnonzero(c == -1)[0])) for c in ovo.T}
    assert pairs == {(a, b) for a in range(4) for b in range(a + 1, 4)}


def test_dense_random_coding_rejects_degenerate_columns():
    code = dense_random_coding(7, seed=3)
    assert code.shape == (7, 29)  # ⌈10 log2 7⌉
    assert set(np.unique(code)) == {-1, 1}
    assert np.all(np.abs(code.sum(axis=0)) < 7)  # both signs in every column
    canonical = {tuple(c * c[0]) for c in code.T}
    assert len(canonical) == code.shape[1]  # no duplicate or complementary columns
    np.testing.assert_array_equal(code, dense_random_coding(7, seed=3))
    assert not np.array_equal(code, dense_random_coding(7, seed=4))
    rows = code.astype(int)
    assert min(np.sum(rows[a] != rows[b]) for a in range(7) for b in range(a + 1, 7)) >= 10
    with pytest.raises(ValueError, match="n_columns"):
        dense_random_coding(3, 4)  # only 3 distinct non-degenerate columns exist


# --- calibration ---------------------------------------------------------------------------------


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.0, 1.0, size=(4000, 5))
    true_temperature = 0.2
    probabilities = np.asarray(class_probabilities(losses, true_temperature), np.float64)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in probabilities])
    assert abs(fit_temperature(losses, labels) / true_temperature - 1.0) < 0.1


# --- training and prediction --------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0]], np.float32)  # shapes shared with test_persistence
    x = np.concatenate([rng.normal(c, 1.0, (40, 4)) for c in centres]).astype(np.float32)
    y = np.repeat(np.array(["angry", "happy", "sad"]), 40)
    return x, y


@pytest.fixture(scope="module")
def trained(blobs):
    x, y = blobs
    return fit(ECOCClassifier(), x, y, basis_id="toy:n_e=4:0", key=jax.random.key(0))


def test_fit_predict_and_calibrated_probabilities(blobs, trained):
    x, y = blobs
    assert trained.class_names == ("angry", "happy", "sad")
    accuracy = np.mean(np.asarray(predict_names(trained, x)) == y)
    assert accuracy > 0.9
    probabilities = predict_proba(trained, x)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(probabilities, axis=-1), predict(trained, x))
    # Overlapping blobs (Bayes error ~5 %): calibrated confidence is below 1 and
    # tracks the accuracy instead of saturating.
    confidence = probabilities.max(axis=-1).mean()
    assert 0.75 < confidence < 0.995
    # Leading batch dimensions are kept.
    assert predict(trained, x.reshape(3, 40, 4)).shape == (3, 40)
    np.testing.assert_allclose(trained.feature_mean, x.mean(axis=0), atol=1e-5)


def test_prediction_input_is_validated(trained):
    with pytest.raises(ValueError, match="expects 4 features"):
        predict(trained, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        predict(trained, np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="expression basis"):
        predict(trained, np.zeros((1, 4)), basis_id="other:n_e=4:1")


def test_fit_validation():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="no samples"):
        fit(ECOCClassifier(), x, [0, 0, 1, 1], class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="4 feature vectors"):
        fit(ECOCClassifier(), x, [0, 1, 1])
    with pytest.raises(ValueError, match="not among"):
        encode_labels(["a", "z"], ["a", "b"])


@pytest.mark.slow  # test_persistence checks one-vs-one training accuracy in the default run
def test_one_vs_one_training_uses_only_its_two_classes(blobs):
    x, y = blobs
    folds = stratified_kfold(y, 5, seed=0)
    result = cross_validate(ECOCClassifier(coding="one_vs_one"), x, y, folds)
    assert result.accuracy_mean > 0.85


# --- agreement with scikit-learn ----------------------------------------------------------------

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is the test oracle (pip install scikit-learn)")


def _sklearn_one_vs_rest(x, y, folds, C, gamma):
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    predictions = np.empty_like(y)
    for f in range(folds.max() + 1):
        train, test = folds != f, folds == f
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(SVC(C=C, gamma=gamma)))
        predictions[test] = model.fit(x[train], y[train]).predict(x[test])
    return predictions


def _compare_with_sklearn(x, y, C, gamma):
    folds = stratified_kfold(y, 10, seed=0)
    config = ECOCClassifier(svm=SVMConfig(kernel="rbf", loss="hinge", C=C, gamma=gamma, approximation="exact"))
    ours = cross_validate(config, x, y, folds)
    theirs = _sklearn_one_vs_rest(x, y, folds, C, gamma)
    their_accuracy = np.mean(theirs == y)
    assert abs(ours.repeat_accuracy[0] - their_accuracy) <= 0.01, (ours.repeat_accuracy[0], their_accuracy)
    assert np.mean(ours.predictions[0] == theirs) >= 0.98
    return ours.repeat_accuracy[0], their_accuracy


def test_one_vs_all_matches_sklearn_on_wine():
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    _compare_with_sklearn(x.astype(np.float32), y, C=1.0, gamma=1.0 / x.shape[1])


@pytest.mark.slow
def test_one_vs_all_matches_sklearn_on_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    _compare_with_sklearn(x.astype(np.float32), y, C=10.0, gamma=0.01)
