"""Error-correcting output codes (ECOC) over the JAX binary SVMs (paper §III-D).

A coding matrix M ∈ {−1, 0, +1}^{K×L} turns a K-class problem into L binary
ones: learner l is trained to answer +1 on the classes with M[k, l] = +1, −1 on
those with M[k, l] = −1, and never sees the classes with M[k, l] = 0 (their
samples get weight 0, so every learner is solved in one ``vmap``).

Decoding is loss-based (Allwein, Schapire, Singer, JMLR 2000; the rule of
MATLAB's ``fitcecoc`` that the paper used): for scores s ∈ R^L, class k costs

    d_k(s) = Σ_l |M_kl| g(M_kl s_l) / Σ_l |M_kl|

with g the binary loss (``"hinge"``: max(0, 1 − m)/2, ``"exponential"``:
exp(−m)/2, ``"linear"``: (1 − m)/2), and the predicted class is argmin_k d_k.
Zero entries are ignored, so one-vs-one codes decode correctly. With
one-vs-all codes and any of these losses the prediction is the class of the
largest score (d_k is strictly decreasing in s_k), as in scikit-learn's
``OneVsRestClassifier``.

Probabilities: p = softmax(−d / T) with one temperature T fitted by maximum
likelihood on out-of-fold decoding losses (stratified ``calibration_folds``-fold
CV inside :func:`fit`). Temperature scaling (Guo et al., ICML 2017) is used
rather than Platt scaling of every binary learner because it calibrates the
multi-class output directly, keeps the ECOC decision (argmax p = argmin d), and
has one parameter, which the few hundred images of the paper's data sets
support.

Features are standardised (mean / population std of the training rows) and the
statistics are stored in the trained classifier.

Examples:
  >>> import jax, numpy as np
  >>> rng = np.random.default_rng(0)
  >>> x = np.concatenate([rng.normal(c, 0.3, (20, 2)) for c in ([0, 0], [3, 0], [0, 3])])
  >>> y = np.repeat(["a", "b", "c"], 20)
  >>> trained = fit(ECOCClassifier(), x, y, key=jax.random.key(0))
  >>> predict_names(trained, [[3.0, 0.1], [0.1, 3.0]])
  ['b', 'c']
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from flax import struct

from classifier.svm import BinarySVMs, SVMConfig, decision_function, fit_svms, uses_exact_kernel

__all__ = [
    "ECOCClassifier",
    "TrainedClassifier",
    "one_vs_all_coding",
    "one_vs_one_coding",
    "dense_random_coding",
    "coding_matrix",
    "decoding_losses",
    "class_probabilities",
    "encode_labels",
    "fit",
    "fit_arrays",
    "fit_folds",
    "fit_temperature",
    "decision_scores",
    "decoding_loss",
    "predict",
    "predict_proba",
    "predict_names",
    "check_features",
]

Coding = Literal["one_vs_all", "one_vs_one", "dense_random"]
DecodingLoss = Literal["hinge", "exponential", "linear"]

# Temperatures outside this range mean the held-out losses carry no usable
# signal (upper end) or are perfectly separated (lower end); clamping keeps the
# probabilities finite either way.
_TEMPERATURE_BOUNDS = (1e-3, 1e2)


@struct.dataclass
class ECOCClassifier:
    """Configuration of an ECOC-SVM classifier (a pytree: the SVM's C and γ are leaves).

    Attributes:
      svm: :class:`~classifier.svm.SVMConfig` of every binary learner.
      coding: ``"one_vs_all"`` (the paper's), ``"one_vs_one"`` or ``"dense_random"``.
      n_random_columns: columns of the dense random code; ``None`` = ⌈10 log₂ K⌉
        (Allwein et al. 2000).
      coding_seed: seed of the dense random code.
      decoding: binary loss of the decoder (``"hinge"``, ``"exponential"``, ``"linear"``).
      standardize: standardise features with the training mean and std.
      calibration_folds: folds of the out-of-fold predictions the probability
        temperature is fitted on; below 2, no calibration (T = 1).
    """

    svm: SVMConfig = SVMConfig()
    coding: Coding = struct.field(pytree_node=False, default="one_vs_all")
    n_random_columns: Optional[int] = struct.field(pytree_node=False, default=None)
    coding_seed: int = struct.field(pytree_node=False, default=0)
    decoding: DecodingLoss = struct.field(pytree_node=False, default="hinge")
    standardize: bool = struct.field(pytree_node=False, default=True)
    calibration_folds: int = struct.field(pytree_node=False, default=5)

    def __post_init__(self):
        if self.coding not in ("one_vs_all", "one_vs_one", "dense_random"):
            raise ValueError(f"ECOCClassifier.coding: unknown coding {self.coding!r}")
        if self.decoding not in ("hinge", "exponential", "linear"):
            raise ValueError(f"ECOCClassifier.decoding: unknown loss {self.decoding!r}")


@struct.dataclass
class TrainedClassifier:
    """A trained ECOC classifier (a pytree; pass it to ``jax.jit``-ed code freely).

    Attributes:
      coding: ``(K, L) float32`` coding matrix in {−1, 0, +1}.
      feature_mean: ``(d,) float32`` subtracted from the features.
      feature_scale: ``(d,) float32`` the features are divided by.
      learners: the L binary SVMs (:data:`~classifier.svm.BinarySVMs`).
      temperature: ``() float32`` of the probability softmax.
      config: the :class:`ECOCClassifier` it was trained with.
      class_names: K names, index order of the predictions (static).
      basis_id: identifier of the expression basis the features come from, or
        ``None`` (static); see :func:`classifier.persistence.expression_basis_id`.
    """

    coding: jax.Array
    feature_mean: jax.Array
    feature_scale: jax.Array
    learners: BinarySVMs
    temperature: jax.Array
    config: ECOCClassifier
    class_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    basis_id: Optional[str] = struct.field(pytree_node=False, default=None)

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return self.coding.shape[-2]

    @property
    def n_features(self) -> int:
        """Feature dimension d."""
        return self.feature_mean.shape[-1]


# --- coding matrices ----------------------------------------------------------------------------


def one_vs_all_coding(n_classes: int) -> np.ndarray:
    """One-vs-all code: ``(K, K) int8`` with +1 on the diagonal, −1 elsewhere.

    Examples:
      >>> one_vs_all_coding(3).tolist()
      [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    """
    _check_n_classes(n_classes)
    return (2 * np.eye(n_classes, dtype=np.int8) - 1).astype(np.int8)


def one_vs_one_coding(n_classes: int) -> np.ndarray:
    """One-vs-one code: ``(K, K(K−1)/2) int8``; column (a, b) is +1 on a, −1 on b, 0 elsewhere.

    Examples:
      >>> one_vs_one_coding(3).tolist()
      [[1, 1, 0], [-1, 0, 1], [0, -1, -1]]
    """
    _check_n_classes(n_classes)
    columns = []
    for a in range(n_classes):
        for b in range(a + 1, n_classes):
            column = np.zeros(n_classes, np.int8)
            column[a], column[b] = 1, -1
            columns.append(column)
    return np.stack(columns, axis=1)


def dense_random_coding(
    n_classes: int, n_columns: Optional[int] = None, *, seed: int = 0, n_candidates: int = 1000
) -> np.ndarray:
    """Dense random code ``(K, L) int8`` in {−1, +1}.

    A column with one sign only separates nothing and a column equal to ± another
    is a redundant learner, so columns are drawn without replacement from the
    2^{K−1} − 1 valid ones (up to sign) and given a random sign. Of
    ``n_candidates`` such matrices the one with the largest minimum Hamming
    distance between rows is kept (Allwein et al. 2000; MATLAB ``designecoc``).

    Args:
      n_classes: 2 ≤ K ≤ 16 (the valid columns are enumerated).
      n_columns: L; ``None`` = ⌈10 log₂ K⌉, capped at 2^{K−1} − 1.
      seed: NumPy generator seed.
      n_candidates: random matrices compared.

    Examples:
      >>> code = dense_random_coding(4, 6, seed=1)
      >>> code.shape, bool(np.all(np.abs(code) == 1))
      ((4, 6), True)
    """
    _check_n_classes(n_classes)
    if n_classes > 16:
        raise ValueError(f"dense_random_coding: at most 16 classes are supported, got {n_classes}")
    distinct = 2 ** (n_classes - 1) - 1
    if n_columns is None:
        n_columns = min(math.ceil(10 * math.log2(n_classes)), distinct)
    if not 1 <= n_columns <= distinct:
        raise ValueError(
            f"dense_random_coding: n_columns must be in [1, {distinct}] for {n_classes} classes, got {n_columns}"
        )
    # Column j (1 ≤ j < 2^{K−1}): class 0 is +1, class r is −1 where bit r−1 of j is set.
    bits = (np.arange(1, distinct + 1)[None, :] >> np.arange(n_classes - 1)[:, None]) & 1
    valid = np.concatenate([np.ones((1, distinct), np.int8), (1 - 2 * bits).astype(np.int8)])
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_candidates, distinct)), axis=1)[:, :n_columns]
    signs = rng.choice(np.array([-1, 1], np.int8), size=(n_candidates, 1, n_columns))
    candidates = valid[:, chosen].transpose(1, 0, 2) * signs  # (candidates, K, L)
    agreement = np.einsum("ckl,cjl->ckj", candidates.astype(np.int32), candidates.astype(np.int32))
    distance = (n_columns - agreement) // 2
    distance[:, np.arange(n_classes), np.arange(n_classes)] = n_columns + 1
    best = int(np.argmax(distance.min(axis=(1, 2))))
    return candidates[best].astype(np.int8)


def coding_matrix(config: ECOCClassifier, n_classes: int) -> np.ndarray:
    """The ``(K, L) int8`` coding matrix that ``config`` describes."""
    if config.coding == "one_vs_all":
        return one_vs_all_coding(n_classes)
    if config.coding == "one_vs_one":
        return one_vs_one_coding(n_classes)
    return dense_random_coding(n_classes, config.n_random_columns, seed=config.coding_seed)


def _check_n_classes(n_classes: int) -> None:
    if int(n_classes) < 2:
        raise ValueError(f"an ECOC code needs at least 2 classes, got {n_classes}")


# --- decoding and probabilities ----------------------------------------------------------------


def decoding_losses(coding, scores, loss: DecodingLoss = "hinge") -> jax.Array:
    """Loss-based ECOC decoding.

    Args:
      coding: ``(K, L)`` in {−1, 0, +1}.
      scores: ``(..., L)`` binary learner scores.
      loss: ``"hinge"``, ``"exponential"`` or ``"linear"``.

    Returns:
      ``(..., K)`` d_k, the mean binary loss over the columns where class k is
      coded ±1; the prediction is the argmin.

    Examples:
      >>> import jax.numpy as jnp
      >>> code = jnp.array([[1, 1, 0], [-1, 0, 1], [0, -1, -1]])   # one-vs-one, 3 classes
      >>> int(jnp.argmin(decoding_losses(code, jnp.array([-2.0, 0.5, 3.0]))))
      1
    """
    coding = jnp.asarray(coding, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    margin = coding * scores[..., None, :]
    if loss == "hinge":
        per_column = 0.5 * jnp.maximum(0.0, 1.0 - margin)
    elif loss == "exponential":
        # Clamped so a huge score cannot overflow float32 to inf.
        per_column = 0.5 * jnp.exp(jnp.minimum(-margin, 50.0))
    elif loss == "linear":
        per_column = 0.5 * (1.0 - margin)
    else:
        raise ValueError(f"decoding_losses: unknown loss {loss!r}")
    used = jnp.abs(coding)
    return jnp.sum(used * per_column, axis=-1) / jnp.sum(used, axis=-1)


def class_probabilities(losses, temperature) -> jax.Array:
    """Calibrated class probabilities softmax(−d / T).

    Args:
      losses: ``(..., K)`` decoding losses.
      temperature: ``()`` T > 0.

    Returns:
      ``(..., K)`` probabilities summing to 1.
    """
    return jax.nn.softmax(-jnp.asarray(losses) / temperature, axis=-1)


def fit_temperature(losses, labels) -> float:
    """Maximum-likelihood temperature of softmax(−d / T) on held-out predictions.

    A one-dimensional bounded minimisation of the negative log-likelihood over
    log T (``scipy.optimize.minimize_scalar``), in float64.

    Args:
      losses: ``(n, K)`` out-of-fold decoding losses.
      labels: ``(n,)`` true class indices.

    Returns:
      T in [1e-3, 1e2].
    """
    losses = np.asarray(losses, np.float64)
    labels = np.asarray(labels, np.int64)

    def negative_log_likelihood(log_temperature: float) -> float:
        logits = -losses / math.exp(log_temperature)
        logits = logits - logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=-1))
        return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))

    low, high = (math.log(b) for b in _TEMPERATURE_BOUNDS)
    result = scipy.optimize.minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded")
    return float(math.exp(result.x))


# --- validation at the edge --------------------------------------------------------------------


def check_features(features, n_features: Optional[int] = None, what: str = "features") -> np.ndarray:
    """Validate a feature array: ``(..., d)`` finite float32 (d = ``n_features`` if given)."""
    array = np.asarray(features, dtype=np.float32)
    if array.ndim < 1 or array.shape[-1] == 0:
        raise ValueError(f"{what}: expected shape (..., d) with d ≥ 1, got {array.shape}")
    if n_features is not None and array.shape[-1] != n_features:
        raise ValueError(
            f"{what}: the classifier expects {n_features} features per vector, got {array.shape[-1]} "
            f"(shape {array.shape}); were the features computed with another expression basis?"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: contains NaN or inf")
    return array


def encode_labels(labels, class_names: Optional[Sequence[str]] = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices and names from labels.

    Args:
      labels: ``(n,)`` class names (str) or integer indices.
      class_names: the K names in index order; ``None`` = the sorted distinct
        labels (as strings).

    Returns:
      ``(indices (n,) int32, class_names)``.

    Examples:
      >>> encode_labels(["sad", "happy", "sad"])
      (array([1, 0, 1], dtype=int32), ('happy', 'sad'))
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty 1-D array, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.integer):
        if class_names is None:
            values = np.unique(labels)
            names = tuple(str(v) for v in values)
            indices = np.searchsorted(values, labels)
        else:
            names = tuple(str(c) for c in class_names)
            if labels.min() < 0 or labels.max() >= len(names):
                raise ValueError(f"labels: indices must be in [0, {len(names)}), got [{labels.min()}, {labels.max()}]")
            indices = labels
    else:
        labels = labels.astype(str)
        names = tuple(sorted(set(labels.tolist()))) if class_names is None else tuple(str(c) for c in class_names)
        lookup = {name: k for k, name in enumerate(names)}
        unknown = sorted(set(labels.tolist()) - set(lookup))
        if unknown:
            raise ValueError(f"labels: {unknown[:5]} not among class_names {names}")
        indices = np.array([lookup[v] for v in labels.tolist()])
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: duplicate names in {names}")
    return indices.astype(np.int32), names


def _with_components_for(config: ECOCClassifier, n_rows: int, n_training_rows: int) -> ECOCClassifier:
    """Cap the Nyström landmarks at the number of training rows (edge-side, static)."""
    svm = config.svm
    if svm.kernel == "rbf" and not uses_exact_kernel(svm, n_rows) and svm.n_components > n_training_rows:
        return config.replace(svm=svm.replace(n_components=int(n_training_rows)))
    return config


# --- training ----------------------------------------------------------------------------------


@jax.jit
def fit_arrays(config: ECOCClassifier, coding, features, labels, sample_weight, key) -> TrainedClassifier:
    """Train on the rows with positive weight (jitted, pure; vmap it over CV folds).

    Args:
      config: :class:`ECOCClassifier`.
      coding: ``(K, L)`` coding matrix.
      features: ``(n, d) float32``.
      labels: ``(n,) int32`` class indices in [0, K).
      sample_weight: ``(n,) float32 ≥ 0``; 0 = not a training row (e.g. a CV
        test row), which keeps shapes fixed across folds.
      key: PRNG key.

    Returns:
      :class:`TrainedClassifier` with temperature 1 and no class names.
    """
    features = jnp.asarray(features, jnp.float32)
    coding = jnp.asarray(coding, jnp.float32)
    sample_weight = jnp.asarray(sample_weight, jnp.float32)
    if config.standardize:
        total = jnp.sum(sample_weight)
        mean = sample_weight @ features / total
        variance = sample_weight @ jnp.square(features - mean) / total
        scale = jnp.sqrt(variance)
        # A constant feature carries nothing; dividing by ~0 would only blow up noise.
        scale = jnp.where(scale > 1e-6 * (1.0 + jnp.abs(mean)), scale, 1.0)
    else:
        mean = jnp.zeros(features.shape[-1], jnp.float32)
        scale = jnp.ones(features.shape[-1], jnp.float32)
    standardized = (features - mean) / scale
    codes = coding[labels].T  # (L, n)
    learners = fit_svms(config.svm, standardized, codes, jnp.abs(codes) * sample_weight, key)
    return TrainedClassifier(
        coding=coding,
        feature_mean=mean,
        feature_scale=scale,
        learners=learners,
        temperature=jnp.ones((), jnp.float32),
        config=config,
    )


@jax.jit
def fit_folds(config: ECOCClassifier, coding, features, labels, train_weights, keys):
    """Train one classifier per weight row and decode every row with each (jitted).

    Cross-validation folds, the calibration folds and the final model of
    :func:`fit` all go through this one vmapped function, so they share one
    compilation.

    Args:
      config, coding, features, labels: as :func:`fit_arrays`.
      train_weights: ``(F, n)`` training weight of each row in each fold (0 on
        the fold's test rows).
      keys: ``(F,)`` PRNG keys.

    Returns:
      ``(trained, losses)``: a :class:`TrainedClassifier` whose leaves have a
      leading axis F, and ``(F, n, K)`` decoding losses of every row under
      every fold's classifier (the out-of-fold ones are where
      ``train_weights == 0``).
    """

    def one_fold(weight, key):
        trained = fit_arrays(config, coding, features, labels, weight, key)
        return trained, decoding_loss(trained, features)

    return jax.vmap(one_fold)(train_weights, keys)


def fit(
    config: ECOCClassifier,
    features,
    labels,
    *,
    class_names: Optional[Sequence[str]] = None,
    basis_id: Optional[str] = None,
    key: Optional[jax.Array] = None,
) -> TrainedClassifier:
    """Train an ECOC-SVM classifier and calibrate its probabilities.

    Args:
      config: :class:`ECOCClassifier`.
      features: ``(n, d)`` finite feature vectors (e.g. expression coefficients).
      labels: ``(n,)`` class names or indices (see :func:`encode_labels`).
      class_names: K names in index order (default: sorted distinct labels).
      basis_id: expression-basis identifier stored with the classifier.
      key: PRNG key (default ``jax.random.key(0)``).

    Returns:
      :class:`TrainedClassifier`.

    Raises:
      ValueError: bad shapes, non-finite features, a class without samples.
    """
    x = check_features(features)
    if x.ndim != 2:
        raise ValueError(f"features: expected shape (n, d), got {x.shape}")
    indices, names = encode_labels(labels, class_names)
    if indices.shape[0] != x.shape[0]:
        raise ValueError(f"labels: {indices.shape[0]} labels for {x.shape[0]} feature vectors")
    counts = np.bincount(indices, minlength=len(names))
    if np.any(counts == 0):
        missing = [names[k] for k in np.flatnonzero(counts == 0)]
        raise ValueError(f"labels: classes {missing} have no samples")
    key = jax.random.key(0) if key is None else key
    coding = coding_matrix(config, len(names))
    n = x.shape[0]
    n_folds = min(config.calibration_folds, int(counts.min()))
    if n_folds >= 2:
        # Imported here: selection imports this module at its top.
        from classifier.selection import stratified_kfold

        folds = stratified_kfold(indices, n_folds, seed=0)
        held_out = [(folds != f).astype(np.float32) for f in range(n_folds)]
    else:
        folds, held_out = None, []
    # The calibration folds and the final model (last row: every sample) are
    # trained in one vmapped call.
    train_weights = np.stack(held_out + [np.ones(n, np.float32)])
    config = _with_components_for(config, n, int(train_weights.sum(axis=1).min()))
    batch, losses = fit_folds(config, coding, x, indices, train_weights, jax.random.split(key, len(train_weights)))
    trained = jax.tree.map(lambda leaf: leaf[-1], batch)
    temperature = 1.0
    if folds is not None:
        out_of_fold = np.asarray(losses)[folds, np.arange(n)]
        temperature = fit_temperature(out_of_fold, indices)
    return trained.replace(
        temperature=jnp.asarray(temperature, jnp.float32), class_names=names, basis_id=basis_id
    )


# --- prediction --------------------------------------------------------------------------------


def decision_scores(trained: TrainedClassifier, features) -> jax.Array:
    """Binary learner scores ``(..., L)`` for features ``(..., d)`` (pure, jittable)."""
    standardized = (jnp.asarray(features, jnp.float32) - trained.feature_mean) / trained.feature_scale
    return decision_function(trained.learners, standardized)


def decoding_loss(trained: TrainedClassifier, features) -> jax.Array:
    """Decoding losses ``(..., K)`` for features ``(..., d)`` (pure, jittable); lower = more likely."""
    return decoding_losses(trained.coding, decision_scores(trained, features), trained.config.decoding)


@jax.jit
def _predict_indices(trained: TrainedClassifier, features) -> jax.Array:
    return jnp.argmin(decoding_loss(trained, features), axis=-1).astype(jnp.int32)


@jax.jit
def _predict_probabilities(trained: TrainedClassifier, features) -> jax.Array:
    return class_probabilities(decoding_loss(trained, features), trained.temperature)


def _check_prediction_input(trained: TrainedClassifier, features, basis_id: Optional[str]) -> np.ndarray:
    if basis_id is not None and trained.basis_id is not None and basis_id != trained.basis_id:
        raise ValueError(
            f"features come from expression basis {basis_id!r} but the classifier was trained on "
            f"{trained.basis_id!r}; retrain it on this basis or compute the features with the other one"
        )
    return check_features(features, trained.n_features)


def predict(trained: TrainedClassifier, features, *, basis_id: Optional[str] = None) -> np.ndarray:
    """Predicted class indices.

    Args:
      trained: :class:`TrainedClassifier`.
      features: ``(..., d)`` feature vectors.
      basis_id: the expression basis the features come from; a mismatch with
        ``trained.basis_id`` raises (skipped when either is ``None``).

    Returns:
      ``(...,) int32`` indices into ``trained.class_names``.
    """
    return np.asarray(_predict_indices(trained, _check_prediction_input(trained, features, basis_id)))


def predict_proba(trained: TrainedClassifier, features, *, basis_id: Optional[str] = None) -> np.ndarray:
    """Calibrated class probabilities ``(..., K)`` for features ``(..., d)``; see :func:`predict`."""
    return np.asarray(_predict_probabilities(trained, _check_prediction_input(trained, features, basis_id)))


def predict_names(trained: TrainedClassifier, features, *, basis_id: Optional[str] = None) -> list:
    """Predicted class names (nested lists for leading batch dimensions); see :func:`predict`."""
    return np.asarray(trained.class_names, dtype=object)[predict(trained, features, basis_id=basis_id)].tolist()
