"""Binary SVMs in JAX against scikit-learn's liblinear/LIBSVM, masks, vmap, Nyström.

Every fit trains two problems in one call: problem 0 ignores every third row
(weight 0), problem 1 uses all rows. Each is compared with scikit-learn trained
on exactly those rows, which checks the solver, the sample masks and the
independence of vmapped problems at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classifier.svm import (
    KernelSVMs,
    LinearSVMs,
    NystroemSVMs,
    SVMConfig,
    decision_function,
    fit_svms,
    nystroem_map,
    rbf_kernel,
    uses_exact_kernel,
)

pytest.importorskip("sklearn", reason="scikit-learn is the test oracle (pip install scikit-learn)")
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC, LinearSVC  # noqa: E402


@pytest.fixture(scope="module")
def binary_data():
    x, y = make_classification(
        n_samples=300, n_features=8, n_informative=5, flip_y=0.05, class_sep=0.8, random_state=0
    )
    x = StandardScaler().fit_transform(x).astype(np.float32)
    keep = np.arange(x.shape[0]) % 3 != 0
    return x, y, np.where(y == 1, 1.0, -1.0).astype(np.float32), keep


def _fit_masked_and_full(config, x, t, keep):
    weights = np.stack([keep, np.ones_like(keep)]).astype(np.float32)
    svms = fit_svms(config, x, np.stack([t, t]), weights, jax.random.key(0))
    return svms, np.asarray(decision_function(svms, x))


def _assert_agree(ours, theirs, atol, min_sign_agreement=1.0):
    assert np.max(np.abs(ours - theirs)) < atol, np.max(np.abs(ours - theirs))
    assert np.mean(np.sign(ours) == np.sign(theirs)) >= min_sign_agreement


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_linear_squared_hinge_matches_liblinear(binary_data, C):
    x, y, t, keep = binary_data
    config = SVMConfig(kernel="linear", loss="squared_hinge", C=C, gradient_tol=1e-5)
    svms, ours = _fit_masked_and_full(config, x, t, keep)
    assert isinstance(svms, LinearSVMs)
    for p, rows in enumerate([keep, np.ones_like(keep)]):
        reference = LinearSVC(C=C, loss="squared_hinge", tol=1e-8, max_iter=100_000).fit(x[rows], y[rows])
        # Same objective (liblinear's, the bias a regularised constant feature):
        # the float32 L-BFGS optimum agrees with liblinear's float64 one.
        _assert_agree(ours[:, p], reference.decision_function(x), atol=2e-3)
        np.testing.assert_allclose(np.asarray(svms.weights[p]), reference.coef_[0], atol=2e-3)


def test_linear_hinge_matches_liblinear(binary_data):
    x, y, t, keep = binary_data
    config = SVMConfig(kernel="linear", loss="hinge", C=0.1, tol=1e-4, max_iter=5000)
    svms, ours = _fit_masked_and_full(config, x, t, keep)
    assert bool(np.all(svms.converged))
    for p, rows in enumerate([keep, np.ones_like(keep)]):
        reference = LinearSVC(C=0.1, loss="hinge", tol=1e-8, max_iter=100_000).fit(x[rows], y[rows])
        _assert_agree(ours[:, p], reference.decision_function(x), atol=5e-3, min_sign_agreement=0.99)


@pytest.mark.parametrize("C, gamma", [(1.0, 0.125), (10.0, 0.05)])
def test_rbf_exact_matches_libsvm(binary_data, C, gamma):
    x, y, t, keep = binary_data
    config = SVMConfig(kernel="rbf", loss="hinge", C=C, gamma=gamma, approximation="exact")
    svms, ours = _fit_masked_and_full(config, x, t, keep)
    assert isinstance(svms, KernelSVMs) and bool(np.all(svms.converged))
    for p, rows in enumerate([keep, np.ones_like(keep)]):
        reference = SVC(C=C, gamma=gamma, tol=1e-3).fit(x[rows], y[rows])
        # Both stop at a KKT gap of 1e-3, so the scores agree to about that.
        _assert_agree(ours[:, p], reference.decision_function(x), atol=1e-2, min_sign_agreement=0.99)
        dual = np.zeros(x.shape[0])
        dual[np.flatnonzero(rows)[reference.support_]] = reference.dual_coef_[0]
        # Dual coefficients at a gap of 1e-3 are close but not equal entry-wise.
        difference = np.linalg.norm(np.asarray(svms.dual_coef[p]) - dual) / np.linalg.norm(dual)
        assert difference < 0.03, difference
        assert abs(float(svms.bias[p]) - reference.intercept_[0]) < 1e-2
    assert np.all(np.asarray(svms.dual_coef[0])[~keep] == 0.0)


def test_rbf_squared_hinge_satisfies_optimality(binary_data):
    """L2-SVM optimum: α_i = 2 C ξ_i with ξ_i = max(0, 1 − y_i f(x_i)) (LIBSVM has no L2-SVM to compare with)."""
    x, _, t, keep = binary_data
    C = 2.0
    svms, scores = _fit_masked_and_full(SVMConfig(kernel="rbf", C=C, approximation="exact", tol=1e-4), x, t, keep)
    for p, rows in enumerate([keep, np.ones_like(keep)]):
        alpha = np.asarray(svms.dual_coef[p]) * t
        slack = np.maximum(0.0, 1.0 - t * scores[:, p])
        assert np.all(alpha >= 0) and np.all(alpha[~rows] == 0)
        np.testing.assert_allclose(alpha[rows], 2.0 * C * slack[rows], atol=2e-3)
        assert abs(float(np.sum(alpha * t))) < 1e-3  # equality constraint of the unregularised bias


def test_nystroem_reproduces_the_kernel():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(60, 4)).astype(np.float32))
    gamma = 0.2
    mapped = rbf_kernel(x, x, gamma) @ nystroem_map(x, gamma)
    # With every row a landmark the map is exact: φ(x)·φ(z) = k(x, z).
    np.testing.assert_allclose(np.asarray(mapped @ mapped.T), np.asarray(rbf_kernel(x, x, gamma)), atol=2e-3)


def test_nystroem_accuracy_close_to_exact(binary_data):
    x, _, t, keep = binary_data
    exact, exact_scores = _fit_masked_and_full(
        SVMConfig(kernel="rbf", C=2.0, approximation="exact", tol=1e-4), x, t, keep
    )
    approximate, approximate_scores = _fit_masked_and_full(
        SVMConfig(kernel="rbf", C=2.0, approximation="nystroem", n_components=150), x, t, keep
    )
    assert isinstance(approximate, NystroemSVMs) and approximate.landmarks.shape == (150, 8)
    # Landmarks are drawn from training rows only (rows some problem uses: all here).
    exact_accuracy = np.mean(np.sign(exact_scores[:, 1]) == t)
    approximate_accuracy = np.mean(np.sign(approximate_scores[:, 1]) == t)
    assert exact_accuracy > 0.9
    assert abs(exact_accuracy - approximate_accuracy) < 0.03


def test_exact_or_approximate_kernel_choice():
    config = SVMConfig(kernel="rbf", exact_max_samples=100)
    assert uses_exact_kernel(config, 100) and not uses_exact_kernel(config, 101)
    assert uses_exact_kernel(config.replace(approximation="exact"), 10_000)
    assert not uses_exact_kernel(config.replace(approximation="nystroem"), 10)
    assert not uses_exact_kernel(SVMConfig(kernel="linear"), 10)


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="kernel"):
        SVMConfig(kernel="poly")
    with pytest.raises(ValueError, match="loss"):
        SVMConfig(loss="logistic")
