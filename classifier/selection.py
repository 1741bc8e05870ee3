"""Model selection: stratified and subject-disjoint folds, cross-validation, Bayesian search.

* :func:`stratified_kfold` — every class spread evenly over the folds (the paper
  reports 10-fold CV).
* :func:`stratified_group_kfold` — folds that never split a group (subject), as
  balanced in class proportions as the groups allow; the greedy assignment of
  scikit-learn's ``StratifiedGroupKFold`` (scikit-learn is a test oracle only,
  so it is re-implemented here in a few lines of NumPy).
* :func:`repeated_folds` — R independent fold assignments (e.g. the stress
  protocol's 5-fold × 10).
* :func:`cross_validate` — all folds of a repeat are trained in one ``vmap``
  (test rows get weight 0, so shapes do not change across folds) and every
  feature-standardisation statistic is computed on the training rows only.
* :func:`search_hyperparameters` — C (and the RBF width γ) by Bayesian
  optimisation with optuna's TPE sampler (seeded), maximising the CV accuracy on
  fixed folds; the paper used Bayesian optimisation too (MATLAB ``bayesopt``).
  optuna is an optional dependency (``pip install deepexp3d[classifier]``).

Folds are returned as a fold index per sample, ``(n,) int32`` (or ``(R, n)``):
sample i is in the test set of fold ``folds[i]``.

The best CV accuracy of a search is an optimistic estimate of the accuracy on
new data (the folds chose the hyper-parameters); this is also how the paper's
Table III numbers were produced.

Examples:
  >>> import numpy as np
  >>> folds = stratified_kfold(np.repeat([0, 1], 10), 5, seed=0)
  >>> np.bincount(folds).tolist()
  [4, 4, 4, 4, 4]
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np
from flax import struct

from classifier.ecoc import (
    ECOCClassifier,
    _with_components_for,
    check_features,
    coding_matrix,
    encode_labels,
    fit_folds,
)

__all__ = [
    "stratified_kfold",
    "stratified_group_kfold",
    "repeated_folds",
    "CrossValidationResult",
    "cross_validate",
    "TrialSummary",
    "SearchResult",
    "search_hyperparameters",
]


# --- folds -------------------------------------------------------------------------------------


def stratified_kfold(labels, n_folds: int = 10, *, seed: int = 0) -> np.ndarray:
    """Stratified k-fold assignment.

    Each class's samples are shuffled and dealt to the folds in turn, the deal
    continuing where the previous class stopped, so every class count and every
    fold size differ by at most one between folds.

    Args:
      labels: ``(n,)`` class labels (any hashable values).
      n_folds: k, 2 ≤ k ≤ n.
      seed: NumPy generator seed.

    Returns:
      ``(n,) int32`` fold index of every sample.

    Examples:
      >>> folds = stratified_kfold([0, 0, 0, 1, 1, 1], 3, seed=0)
      >>> sorted(np.bincount(folds).tolist())
      [2, 2, 2]
    """
    labels = _check_labels(labels)
    n_folds = _check_n_folds(n_folds, labels.shape[0])
    rng = np.random.default_rng(seed)
    _, classes = np.unique(labels, return_inverse=True)
    folds = np.empty(labels.shape[0], np.int32)
    start = 0
    for k in range(classes.max() + 1):
        members = rng.permutation(np.flatnonzero(classes == k))
        folds[members] = (start + np.arange(members.shape[0])) % n_folds
        start = (start + members.shape[0]) % n_folds
    return folds


def stratified_group_kfold(labels, groups, n_folds: int = 5, *, seed: int = 0) -> np.ndarray:
    """Subject-disjoint, approximately stratified k-fold assignment.

    Groups are visited roughly in order of decreasing unevenness of their class
    histogram (randomly perturbed, see below); each goes to the fold whose
    per-class share of samples it leaves most even (the mean over classes of
    the across-fold standard deviation), ties to the smaller fold. This is
    scikit-learn's ``StratifiedGroupKFold`` greedy assignment, except for the
    visiting order, which there depends on the seed only through ties.

    Args:
      labels: ``(n,)`` class labels.
      groups: ``(n,)`` group (subject) of each sample.
      n_folds: k, 2 ≤ k ≤ number of groups.
      seed: NumPy generator seed.

    Returns:
      ``(n,) int32`` fold index; all samples of a group share one fold.

    Raises:
      ValueError: fewer groups than folds, or mismatched lengths.
    """
    labels = _check_labels(labels)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups: expected shape {labels.shape} like labels, got {groups.shape}")
    _, classes = np.unique(labels, return_inverse=True)
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups, n_classes = group_index.max() + 1, classes.max() + 1
    n_folds = _check_n_folds(n_folds, n_groups, what="groups")
    counts_per_group = np.zeros((n_groups, n_classes), np.int64)
    np.add.at(counts_per_group, (group_index, classes), 1)
    class_totals = counts_per_group.sum(axis=0)

    rng = np.random.default_rng(seed)
    # Uneven groups are hardest to place, so they tend to go first. scikit-learn
    # sorts by unevenness exactly and shuffles only ties, which makes every
    # "shuffled" split identical when the groups' histograms differ; a random
    # factor on the sort key keeps the greedy order mostly hardest-first while
    # repeats (seeds) get different partitions.
    order = rng.permutation(n_groups)  # shuffles ties (e.g. identical histograms)
    unevenness = np.std(counts_per_group[order], axis=1) * rng.uniform(0.25, 1.0, n_groups)
    order = order[np.argsort(-unevenness, kind="stable")]
    counts_per_fold = np.zeros((n_folds, n_classes), np.int64)
    fold_of_group = np.empty(n_groups, np.int32)
    for g in order:
        best_fold, best_score, best_size = 0, np.inf, np.inf
        for f in range(n_folds):
            counts_per_fold[f] += counts_per_group[g]
            score = float(np.mean(np.std(counts_per_fold / class_totals, axis=0)))
            counts_per_fold[f] -= counts_per_group[g]
            size = counts_per_fold[f].sum()
            if score < best_score - 1e-12 or (abs(score - best_score) <= 1e-12 and size < best_size):
                best_fold, best_score, best_size = f, score, size
        counts_per_fold[best_fold] += counts_per_group[g]
        fold_of_group[g] = best_fold
    return fold_of_group[group_index]


def repeated_folds(
    labels, n_folds: int, n_repeats: int, *, groups=None, seed: int = 0
) -> np.ndarray:
    """R independent (group-)stratified fold assignments.

    Args:
      labels: ``(n,)``.
      n_folds: k.
      n_repeats: R.
      groups: ``(n,)`` subjects for subject-disjoint folds, or ``None``.
      seed: repeat r uses seed ``seed + r``.

    Returns:
      ``(R, n) int32``.
    """
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be ≥ 1, got {n_repeats}")
    if groups is None:
        return np.stack([stratified_kfold(labels, n_folds, seed=seed + r) for r in range(n_repeats)])
    return np.stack([stratified_group_kfold(labels, groups, n_folds, seed=seed + r) for r in range(n_repeats)])


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
    return labels


def _check_n_folds(n_folds: int, available: int, what: str = "samples") -> int:
    n_folds = int(n_folds)
    if not 2 <= n_folds <= available:
        raise ValueError(f"n_folds must be in [2, {available}] ({available} {what}), got {n_folds}")
    return n_folds


def _check_folds(folds, n: int) -> np.ndarray:
    folds = np.asarray(folds)
    if folds.ndim == 1:
        folds = folds[None]
    if folds.ndim != 2 or folds.shape[1] != n or not np.issubdtype(folds.dtype, np.integer):
        raise ValueError(f"folds: expected integer fold indices of shape ({n},) or (R, {n}), got {folds.shape}")
    if folds.min() < 0:
        raise ValueError("folds: fold indices must be ≥ 0")
    for r, row in enumerate(folds):
        if np.unique(row).shape[0] != row.max() + 1 or row.max() < 1:
            raise ValueError(f"folds[{r}]: fold indices must be 0..F−1 with F ≥ 2, every fold non-empty")
    return folds.astype(np.int32)


# --- cross-validation --------------------------------------------------------------------------


@struct.dataclass
class CrossValidationResult:
    """Out-of-fold results of :func:`cross_validate` (NumPy arrays; a pytree).

    Attributes:
      fold_accuracy: ``(R, F)`` test accuracy of every fold of every repeat.
      repeat_accuracy: ``(R,)`` accuracy over all out-of-fold predictions of a repeat.
      predictions: ``(R, n) int32`` out-of-fold predicted class of every sample.
      confusion: ``(K, K) int64`` counts, rows = true class, columns =
        predicted, summed over repeats.
      per_class_accuracy: ``(K,)`` recall of every class (from ``confusion``).
      accuracy_mean: mean of ``fold_accuracy``.
      accuracy_std: sample standard deviation (ddof = 1) of ``fold_accuracy``.
      balanced_accuracy: mean of ``per_class_accuracy`` (the paper's
        "per-class mean" for CFEE and RAF-DB).
      class_names: K names (static).
    """

    fold_accuracy: np.ndarray
    repeat_accuracy: np.ndarray
    predictions: np.ndarray
    confusion: np.ndarray
    per_class_accuracy: np.ndarray
    accuracy_mean: float
    accuracy_std: float
    balanced_accuracy: float
    class_names: tuple[str, ...] = struct.field(pytree_node=False, default=())


def cross_validate(
    config: ECOCClassifier,
    features,
    labels,
    folds,
    *,
    class_names: Optional[Sequence[str]] = None,
    key: Optional[jax.Array] = None,
) -> CrossValidationResult:
    """K-fold (repeated) cross-validation of an ECOC-SVM configuration.

    Args:
      config: :class:`~classifier.ecoc.ECOCClassifier`.
      features: ``(n, d)`` finite feature vectors.
      labels: ``(n,)`` class names or indices.
      folds: ``(n,)`` or ``(R, n)`` fold index per sample (from
        :func:`stratified_kfold`, :func:`stratified_group_kfold` or
        :func:`repeated_folds`).
      class_names: K names in index order (default: sorted distinct labels).
      key: PRNG key (default ``jax.random.key(0)``).

    Returns:
      :class:`CrossValidationResult`.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(4, 1, (30, 3))])
      >>> y = np.repeat([0, 1], 30)
      >>> result = cross_validate(ECOCClassifier(), x, y, stratified_kfold(y, 5))
      >>> result.accuracy_mean > 0.95
      True
    """
    x = check_features(features)
    if x.ndim != 2:
        raise ValueError(f"features: expected shape (n, d), got {x.shape}")
    indices, names = encode_labels(labels, class_names)
    if indices.shape[0] != x.shape[0]:
        raise ValueError(f"labels: {indices.shape[0]} labels for {x.shape[0]} feature vectors")
    folds = _check_folds(folds, x.shape[0])
    n, n_classes = x.shape[0], len(names)
    coding = coding_matrix(config, n_classes)
    key = jax.random.key(0) if key is None else key

    fold_accuracy = np.full((folds.shape[0], folds.max() + 1), np.nan)
    predictions = np.empty(folds.shape, np.int32)
    for r, fold_of_row in enumerate(folds):
        n_folds = fold_of_row.max() + 1
        train_weights = np.stack([(fold_of_row != f).astype(np.float32) for f in range(n_folds)])
        repeat_config = _with_components_for(config, n, int(train_weights.sum(axis=1).min()))
        keys = jax.random.split(jax.random.fold_in(key, r), n_folds)
        _, losses = fit_folds(repeat_config, coding, x, indices, train_weights, keys)
        losses = np.asarray(losses)
        predictions[r] = np.argmin(losses[fold_of_row, np.arange(n)], axis=-1)
        correct = predictions[r] == indices
        for f in range(n_folds):
            fold_accuracy[r, f] = correct[fold_of_row == f].mean()

    confusion = np.zeros((n_classes, n_classes), np.int64)
    for row in predictions:
        np.add.at(confusion, (indices, row), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    valid = fold_accuracy[np.isfinite(fold_accuracy)]
    return CrossValidationResult(
        fold_accuracy=fold_accuracy,
        repeat_accuracy=(predictions == indices[None]).mean(axis=1),
        predictions=predictions,
        confusion=confusion,
        per_class_accuracy=per_class,
        accuracy_mean=float(valid.mean()),
        accuracy_std=float(valid.std(ddof=1)) if valid.size > 1 else 0.0,
        balanced_accuracy=float(per_class.mean()),
        class_names=names,
    )


# --- Bayesian hyper-parameter search ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrialSummary:
    """One optuna trial: its parameters and CV accuracy (mean, std, per fold ``(R, F)``)."""

    number: int
    params: dict
    accuracy_mean: float
    accuracy_std: float
    fold_accuracy: np.ndarray


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_hyperparameters`.

    Attributes:
      best_params: ``{"C": ..., "gamma": ...}`` (``gamma`` only for the RBF kernel).
      best_config: the input configuration with the best parameters.
      best: :class:`CrossValidationResult` of the best trial (mean ± std, per
        fold, per class, confusion).
      trials: every trial in order; trial 0 is the input configuration when
        ``include_start`` was set.
    """

    best_params: dict
    best_config: ECOCClassifier
    best: CrossValidationResult
    trials: tuple[TrialSummary, ...]


def _import_optuna():
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "search_hyperparameters needs optuna: pip install 'deepexp3d[classifier]' (or 'optuna>=3.0')"
        ) from error
    return optuna


def search_hyperparameters(
    config: ECOCClassifier,
    features,
    labels,
    folds,
    *,
    n_trials: int = 20,
    C_bounds: tuple[float, float] = (1e-3, 1e3),
    gamma_bounds: tuple[float, float] = (1e-4, 1e1),
    include_start: bool = True,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    key: Optional[jax.Array] = None,
) -> SearchResult:
    """Choose C (and γ for the RBF kernel) by Bayesian optimisation of the CV accuracy.

    optuna's TPE sampler (seeded), log-uniform priors over the bounds; every
    trial is scored by :func:`cross_validate` on the same ``folds``. C and γ are
    traced values of the jitted training, so trials after the first reuse the
    compiled code.

    Args:
      config: starting :class:`~classifier.ecoc.ECOCClassifier`; its other
        settings are kept.
      features: ``(n, d)``.
      labels: ``(n,)``.
      folds: ``(n,)`` or ``(R, n)`` fold indices.
      n_trials: number of CV evaluations (including the starting point).
      C_bounds: log-uniform range of C.
      gamma_bounds: log-uniform range of γ (features are standardised, so
        1/d is the neutral choice).
      include_start: evaluate ``config``'s own C and γ first, so the search
        never returns something worse than the starting point.
      seed: TPE sampler seed.
      class_names, key: as :func:`cross_validate`.

    Returns:
      :class:`SearchResult`.
    """
    optuna = _import_optuna()
    if n_trials < 1:
        raise ValueError(f"n_trials must be ≥ 1, got {n_trials}")
    for name, (low, high) in (("C_bounds", C_bounds), ("gamma_bounds", gamma_bounds)):
        if not 0 < low < high:
            raise ValueError(f"{name}: expected 0 < low < high, got ({low}, {high})")
    x = check_features(features)
    uses_gamma = config.svm.kernel == "rbf"
    results: dict[int, CrossValidationResult] = {}

    def objective(trial) -> float:
        params = {"C": trial.suggest_float("C", *C_bounds, log=True)}
        if uses_gamma:
            params["gamma"] = trial.suggest_float("gamma", *gamma_bounds, log=True)
        trial_config = config.replace(svm=config.svm.replace(**params))
        result = cross_validate(trial_config, x, labels, folds, class_names=class_names, key=key)
        results[trial.number] = result
        return result.accuracy_mean

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    if include_start:
        start = {"C": float(config.svm.C)}
        if uses_gamma:
            start["gamma"] = float(config.svm.gamma) if config.svm.gamma is not None else 1.0 / x.shape[-1]
        # Enqueued values outside the bounds are still evaluated (optuna warns);
        # the start must be scored as given.
        study.enqueue_trial(start, skip_if_exists=False)
    study.optimize(objective, n_trials=n_trials)

    trials = tuple(
        TrialSummary(
            number=t.number,
            params=dict(t.params),
            accuracy_mean=results[t.number].accuracy_mean,
            accuracy_std=results[t.number].accuracy_std,
            fold_accuracy=results[t.number].fold_accuracy,
        )
        for t in study.trials
        if t.number in results
    )
    best = study.best_trial
    best_params = dict(best.params)
    return SearchResult(
        best_params=best_params,
        best_config=config.replace(svm=config.svm.replace(**best_params)),
        best=results[best.number],
        trials=trials,
    )
