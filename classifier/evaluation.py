"""Train and evaluate the emotion classifier on labelled images (paper §III-D protocol).

From a CSV of labelled images (:func:`classifier.features.read_labels_csv`):

1. expression features of every image (:func:`classifier.features.expression_features`:
   detect, fit, keep the expression of the most confident face); images without
   a usable face are listed, never silently dropped;
2. classes with fewer than ``min_per_class`` usable images are excluded (and
   listed): a handful of examples gives neither a trained learner nor a
   meaningful per-class accuracy;
3. stratified 10-fold cross-validation — subject-disjoint
   (:func:`classifier.selection.stratified_group_kfold`) when the CSV has a
   ``subject`` column, because photos of one person in both the training and
   the test folds measure recognition of the person — with Bayesian
   optimisation of C (and γ for the RBF kernel) by optuna
   (:func:`classifier.selection.search_hyperparameters`);
4. accuracy (mean ± std over folds and over all out-of-fold predictions),
   per-class accuracy, the confusion matrix (JSON and a row-normalised,
   annotated PNG), against chance (the majority-class rate and 1/K) and the
   label-free EMFACS prior (:func:`classifier.emfacs.emfacs_prior_classifier`)
   on the same images.

The cross-validated accuracy is the best of the search's trials on the same
folds, so it is optimistic for new data, as in the paper's Table III.

Everything below :func:`evaluate_images` and :func:`train_from_images` works on
arrays, so features from another source (e.g. the DeepExp3D regressor) can be
evaluated the same way; both image-level functions also take an
``extract_features`` callable with the signature of
:func:`~classifier.features.expression_features`.

Examples:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> labels = np.repeat(["happy", "sad", "anger"], 20)
  >>> centres = {"happy": [2.0, 0.0], "sad": [0.0, 2.0], "anger": [-2.0, -2.0]}
  >>> x = np.array([centres[l] for l in labels]) + rng.normal(0, 0.3, (60, 2))
  >>> result = cross_validated_evaluation(x, labels, config=EvaluationConfig(kernel="linear", n_trials=2, n_folds=5))
  >>> result.scores.accuracy > 0.9, result.chance.uniform  # doctest: +ELLIPSIS
  (True, 0.333...)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import jax
import numpy as np

from classifier.ecoc import ECOCClassifier, TrainedClassifier, check_features, decoding_loss, fit
from classifier.features import LabelledImages, expression_features, read_labels_csv
from classifier.svm import SVMConfig

__all__ = [
    "EMFACS_LABEL_ALIASES",
    "EvaluationConfig",
    "ClassSelection",
    "Chance",
    "ClassificationScores",
    "CrossValidatedEvaluation",
    "PriorEvaluation",
    "emfacs_class",
    "select_classes",
    "chance_levels",
    "classification_scores",
    "cross_validated_evaluation",
    "prior_evaluation",
    "held_out_evaluation",
    "plot_confusion",
    "evaluate_images",
    "train_from_images",
]

Kernel = Literal["linear", "rbf"]
PathLike = Union[str, Path]

EMFACS_LABEL_ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "sad": "sad",
    "sadness": "sad",
    "fear": "fearful",
    "fearful": "fearful",
    "anger": "angry",
    "angry": "angry",
    "surprise": "surprised",
    "surprised": "surprised",
    "disgust": "disgusted",
    "disgusted": "disgusted",
}
"""Data-set label (lower case) → EMFACS class name (:data:`classifier.emfacs.EMOTIONS`)."""


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How a classifier is selected and evaluated.

    Attributes:
      kernel: SVM kernel of the one-vs-all ECOC learners, ``"rbf"`` or ``"linear"``.
      n_trials: optuna trials of the hyper-parameter search (each one a full CV).
      n_folds: cross-validation folds (the paper: 10).
      min_per_class: classes with fewer usable images are excluded.
      seed: seeds the folds, the search and the training.
    """

    kernel: Kernel = "rbf"
    n_trials: int = 20
    n_folds: int = 10
    min_per_class: int = 30
    seed: int = 0

    def __post_init__(self):
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel: expected 'linear' or 'rbf', got {self.kernel!r}")
        if self.n_trials < 1:
            raise ValueError(f"n_trials: must be ≥ 1, got {self.n_trials}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds: must be ≥ 2, got {self.n_folds}")
        if self.min_per_class < 1:
            raise ValueError(f"min_per_class: must be ≥ 1, got {self.min_per_class}")

    def classifier(self) -> ECOCClassifier:
        """The starting :class:`~classifier.ecoc.ECOCClassifier` (one-vs-all, this kernel, C = 1)."""
        return ECOCClassifier(svm=SVMConfig(kernel=self.kernel))


@dataclasses.dataclass(frozen=True)
class ClassSelection:
    """Which classes have enough usable images.

    Attributes:
      class_names: the kept classes, sorted.
      counts: usable images per kept class.
      excluded: usable images per excluded class (below the minimum).
      rows: ``(n,) bool`` usable rows of a kept class.
    """

    class_names: tuple[str, ...]
    counts: dict[str, int]
    excluded: dict[str, int]
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class Chance:
    """Accuracy of label-blind guessing.

    Attributes:
      majority_class: the most frequent class.
      majority_rate: accuracy of always answering it.
      uniform: 1/K, the expected accuracy of a uniform random guess.
    """

    majority_class: str
    majority_rate: float
    uniform: float


@dataclasses.dataclass(frozen=True)
class ClassificationScores:
    """Predictions scored against labels.

    Attributes:
      class_names: K class names, the order of ``confusion``.
      confusion: ``(K, K) int64`` counts, rows = true class, columns = predicted.
      accuracy: correct / all.
      per_class_accuracy: ``(K,)`` recall of every class (NaN for a class
        without images).
      balanced_accuracy: mean of the finite per-class accuracies.
    """

    class_names: tuple[str, ...]
    confusion: np.ndarray
    accuracy: float
    per_class_accuracy: np.ndarray
    balanced_accuracy: float


@dataclasses.dataclass(frozen=True)
class CrossValidatedEvaluation:
    """Result of :func:`cross_validated_evaluation`.

    Attributes:
      scores: :class:`ClassificationScores` of the out-of-fold predictions of the
        best trial.
      accuracy_mean: mean test accuracy over the folds.
      accuracy_std: its standard deviation over the folds (ddof = 1).
      fold_accuracy: ``(F,)`` test accuracy of every fold.
      folds: ``(n,) int32`` test fold of every row.
      predictions: ``(n,)`` out-of-fold predicted class names.
      subject_grouped: the folds never split a subject.
      best_params: the chosen ``{"C": ..., "gamma": ...}``.
      best_config: the :class:`~classifier.ecoc.ECOCClassifier` with them.
      trials: every trial's parameters and mean accuracy, in order.
      chance: :class:`Chance` of the evaluated labels.
    """

    scores: ClassificationScores
    accuracy_mean: float
    accuracy_std: float
    fold_accuracy: np.ndarray
    folds: np.ndarray
    predictions: np.ndarray
    subject_grouped: bool
    best_params: dict
    best_config: ECOCClassifier
    trials: tuple[dict, ...]
    chance: Chance


@dataclasses.dataclass(frozen=True)
class PriorEvaluation:
    """The EMFACS prior (no training labels) on labelled features.

    Attributes:
      scores: :class:`ClassificationScores` over the data set's classes that
        have an EMFACS counterpart (names as in the data set).
      emfacs_classes: the EMFACS class each of ``scores.class_names`` maps to.
      unmapped_classes: data-set classes without an EMFACS counterpart (not scored).
      rows: ``(n,) bool`` rows that were scored.
      predictions: ``(n,)`` predicted data-set class names ("" for unscored rows).
    """

    scores: ClassificationScores
    emfacs_classes: tuple[str, ...]
    unmapped_classes: tuple[str, ...]
    rows: np.ndarray
    predictions: np.ndarray


# --- array-level building blocks ----------------------------------------------------------------


def emfacs_class(label: str) -> Optional[str]:
    """The EMFACS class of a data-set label (case-insensitive), or ``None``.

    Examples:
      >>> emfacs_class("Anger"), emfacs_class("contempt")
      ('angry', None)
    """
    return EMFACS_LABEL_ALIASES.get(str(label).strip().lower())


def _labels(labels, n: Optional[int] = None, what: str = "labels") -> np.ndarray:
    array = np.asarray(labels).astype(str)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{what}: expected {n} entries (one per feature row), got {array.shape[0]}")
    return array


def select_classes(labels, usable=None, *, min_per_class: int = 30) -> ClassSelection:
    """Keep the classes with at least ``min_per_class`` usable rows.

    Args:
      labels: ``(n,)`` class names.
      usable: ``(n,) bool`` rows that can be used (e.g. a face was found);
        default all.
      min_per_class: the minimum count.

    Returns:
      :class:`ClassSelection`.

    Raises:
      ValueError: fewer than two classes remain.

    Examples:
      >>> selection = select_classes(["a"] * 5 + ["b"] * 5 + ["c"] * 2, min_per_class=3)
      >>> selection.class_names, selection.excluded
      (('a', 'b'), {'c': 2})
    """
    labels = _labels(labels)
    usable = np.ones(labels.shape, bool) if usable is None else np.asarray(usable, bool)
    if usable.shape != labels.shape:
        raise ValueError(f"usable: expected shape {labels.shape} like labels, got {usable.shape}")
    names, counts = np.unique(labels[usable], return_counts=True)
    all_names = np.unique(labels)
    count_of = {str(name): int(count) for name, count in zip(names, counts)}
    kept = tuple(str(name) for name in all_names if count_of.get(str(name), 0) >= min_per_class)
    excluded = {str(name): count_of.get(str(name), 0) for name in all_names if str(name) not in kept}
    if len(kept) < 2:
        raise ValueError(
            f"fewer than 2 classes have at least {min_per_class} usable images "
            f"(usable images per class: {count_of}); lower min_per_class or add images"
        )
    rows = usable & np.isin(labels, kept)
    return ClassSelection(
        class_names=kept, counts={name: count_of[name] for name in kept}, excluded=excluded, rows=rows
    )


def chance_levels(labels) -> Chance:
    """Majority-class rate and 1/K of a label vector.

    Examples:
      >>> chance_levels(["a", "a", "a", "b"])
      Chance(majority_class='a', majority_rate=0.75, uniform=0.5)
    """
    labels = _labels(labels)
    names, counts = np.unique(labels, return_counts=True)
    best = int(np.argmax(counts))
    return Chance(
        majority_class=str(names[best]),
        majority_rate=float(counts[best] / labels.size),
        uniform=1.0 / len(names),
    )


def classification_scores(true_labels, predicted_labels, class_names: Sequence[str]) -> ClassificationScores:
    """Accuracy, per-class accuracy and confusion matrix of predicted class names.

    Args:
      true_labels: ``(n,)`` class names.
      predicted_labels: ``(n,)`` class names.
      class_names: the K classes, the order of the confusion matrix; every
        label must be one of them.

    Returns:
      :class:`ClassificationScores`.

    Examples:
      >>> s = classification_scores(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
      >>> s.confusion.tolist(), s.accuracy, s.per_class_accuracy.tolist()  # doctest: +ELLIPSIS
      ([[1, 1], [0, 1]], 0.666..., [0.5, 1.0])
    """
    names = tuple(str(c) for c in class_names)
    true_labels = _labels(true_labels, what="true_labels")
    predicted_labels = _labels(predicted_labels, true_labels.shape[0], what="predicted_labels")
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted(set(true_labels.tolist()) - set(names)) + sorted(set(predicted_labels.tolist()) - set(names))
    if unknown:
        raise ValueError(f"labels {sorted(set(unknown))} are not among class_names {names}")
    truth = np.array([index[label] for label in true_labels])
    predicted = np.array([index[label] for label in predicted_labels])
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, confusion.diagonal() / totals, np.nan)
    finite = per_class[np.isfinite(per_class)]
    return ClassificationScores(
        class_names=names,
        confusion=confusion,
        accuracy=float(np.mean(truth == predicted)),
        per_class_accuracy=per_class,
        balanced_accuracy=float(finite.mean()) if finite.size else math.nan,
    )


def cross_validated_evaluation(
    features,
    labels,
    *,
    subjects=None,
    config: EvaluationConfig = EvaluationConfig(),
    progress: bool = False,
) -> CrossValidatedEvaluation:
    """Stratified (subject-disjoint when ``subjects`` is given) k-fold CV with a Bayesian search.

    Args:
      features: ``(n, d)`` finite feature vectors (drop rows without a face first).
      labels: ``(n,)`` class names.
      subjects: ``(n,)`` subject of each row; folds then never split a subject.
      config: :class:`EvaluationConfig` (kernel, trials, folds, seed; the class
        minimum is applied by the caller, see :func:`select_classes`).
      progress: log every finished trial (optuna's INFO lines, on stderr);
        otherwise the search is silent.

    Returns:
      :class:`CrossValidatedEvaluation` of the best trial.

    Raises:
      ValueError: bad shapes, non-finite features, fewer rows (or subjects)
        than folds.
    """
    import optuna

    from classifier.selection import search_hyperparameters, stratified_group_kfold, stratified_kfold

    x = check_features(features)
    if x.ndim != 2:
        raise ValueError(f"features: expected shape (n, d), got {x.shape}")
    labels = _labels(labels, x.shape[0])
    class_names = tuple(str(c) for c in np.unique(labels))
    if subjects is not None:
        subjects = _labels(subjects, x.shape[0], what="subjects")
        folds = stratified_group_kfold(labels, subjects, config.n_folds, seed=config.seed)
    else:
        folds = stratified_kfold(labels, config.n_folds, seed=config.seed)
    # optuna's INFO line per trial is the search's progress report; silent
    # unless asked for, since the result carries every trial anyway.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if progress else optuna.logging.WARNING)
    try:
        search = search_hyperparameters(
            config.classifier(),
            x,
            labels,
            folds,
            n_trials=config.n_trials,
            seed=config.seed,
            class_names=class_names,
            key=jax.random.key(config.seed),
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    best = search.best
    predictions = np.asarray(class_names)[best.predictions[0]]
    return CrossValidatedEvaluation(
        scores=classification_scores(labels, predictions, class_names),
        accuracy_mean=float(best.accuracy_mean),
        accuracy_std=float(best.accuracy_std),
        fold_accuracy=np.asarray(best.fold_accuracy[0]),
        folds=folds,
        predictions=predictions,
        subject_grouped=subjects is not None,
        best_params={name: float(value) for name, value in search.best_params.items()},
        best_config=search.best_config,
        trials=tuple(
            {"number": t.number, "params": dict(t.params), "accuracy_mean": t.accuracy_mean} for t in search.trials
        ),
        chance=chance_levels(labels),
    )


def prior_evaluation(
    features,
    labels,
    expression_names: Sequence[str],
    *,
    prior: Optional[TrainedClassifier] = None,
    seed: int = 0,
) -> PriorEvaluation:
    """Score the label-free EMFACS prior on labelled expression vectors.

    Rows whose class has an EMFACS counterpart (:func:`emfacs_class`) are
    classified among those classes only (the prior's decoding losses of the
    other EMFACS classes are ignored), so its accuracy compares with the chance
    level 1/K of the same K classes.

    Args:
      features: ``(n, n_e)`` finite expression coefficients of an ARKit-named
        blendshape model (e.g. ICT-FaceKit).
      labels: ``(n,)`` data-set class names.
      expression_names: the model's ``n_e`` expression names.
      prior: a prior from :func:`~classifier.emfacs.emfacs_prior_classifier`;
        default one built for ``expression_names``.
      seed: seed of the default prior.

    Returns:
      :class:`PriorEvaluation`.

    Raises:
      ValueError: the names are not an ARKit blendshape basis, fewer than two
        classes map to EMFACS classes, bad shapes.
    """
    from classifier.emfacs import emfacs_prior_classifier

    x = check_features(features, len(expression_names))
    labels = _labels(labels, x.shape[0])
    dataset_classes = tuple(str(c) for c in np.unique(labels))
    mapped = tuple(c for c in dataset_classes if emfacs_class(c) is not None)
    unmapped = tuple(c for c in dataset_classes if emfacs_class(c) is None)
    targets = tuple(emfacs_class(c) for c in mapped)
    if len(set(targets)) != len(targets):
        raise ValueError(f"labels: several classes map to one EMFACS class: {dict(zip(mapped, targets))}")
    if len(mapped) < 2:
        raise ValueError(f"labels: fewer than 2 classes map to EMFACS classes (classes: {dataset_classes})")
    if prior is None:
        prior = emfacs_prior_classifier(expression_names, seed=seed)
    columns = np.array([prior.class_names.index(t) for t in targets])
    rows = np.isin(labels, mapped)
    losses = np.asarray(decoding_loss(prior, x[rows]))[:, columns]
    predicted = np.asarray(mapped)[np.argmin(losses, axis=1)]
    predictions = np.full(labels.shape, "", dtype=object)
    predictions[rows] = predicted
    return PriorEvaluation(
        scores=classification_scores(labels[rows], predicted, mapped),
        emfacs_classes=targets,
        unmapped_classes=unmapped,
        rows=rows,
        predictions=predictions.astype(str),
    )


def held_out_evaluation(trained: TrainedClassifier, features, labels, *, basis_id: Optional[str] = None):
    """Score a trained classifier on labelled features it was not trained on.

    Args:
      trained: a :class:`~classifier.ecoc.TrainedClassifier`.
      features: ``(n, d)`` finite feature vectors.
      labels: ``(n,)`` class names, each one of ``trained.class_names``.
      basis_id: expression basis of the features; a mismatch with the
        classifier's raises.

    Returns:
      ``(scores, predictions)``: :class:`ClassificationScores` over the
      classifier's classes and the ``(n,)`` predicted names.
    """
    from classifier.ecoc import predict_names

    x = check_features(features, trained.n_features)
    labels = _labels(labels, x.shape[0])
    predictions = np.asarray(predict_names(trained, x, basis_id=basis_id), dtype=str)
    return classification_scores(labels, predictions, trained.class_names), predictions


def plot_confusion(scores: ClassificationScores, path: PathLike, *, title: str = "") -> Path:
    """Write the row-normalised confusion matrix, annotated with rates and counts, as a PNG.

    Args:
      scores: :class:`ClassificationScores`.
      path: the PNG file (its folder is created).
      title: figure title.

    Returns:
      The path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confusion = scores.confusion.astype(np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
    k = len(scores.class_names)
    size = max(4.0, 0.75 * k + 2.0)
    # A Figure without pyplot: no global figure registry, no backend switch.
    figure = Figure(figsize=(size + 1.0, size))
    ax = figure.add_subplot()
    image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{100 * rates[i, j]:.0f}%\n({int(confusion[i, j])})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), scores.class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{name} ({int(t)})" for name, t in zip(scores.class_names, totals[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    ax.set_title(title or f"accuracy {100 * scores.accuracy:.1f}%", fontsize=10)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


# --- JSON ---------------------------------------------------------------------------------------


def _finite_or_none(value) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def _scores_json(scores: ClassificationScores) -> dict:
    return {
        "classes": list(scores.class_names),
        "accuracy": scores.accuracy,
        "balanced_accuracy": _finite_or_none(scores.balanced_accuracy),
        "per_class_accuracy": {
            name: _finite_or_none(value) for name, value in zip(scores.class_names, scores.per_class_accuracy)
        },
        "class_counts": {name: int(t) for name, t in zip(scores.class_names, scores.confusion.sum(axis=1))},
        "confusion": scores.confusion.tolist(),
    }


def _cv_json(result: CrossValidatedEvaluation, config: EvaluationConfig) -> dict:
    return {
        "protocol": (
            f"{config.n_folds}-fold {'subject-disjoint ' if result.subject_grouped else ''}stratified CV, "
            f"one-vs-all ECOC-SVM ({config.kernel}), optuna TPE search of "
            f"{'C and gamma' if config.kernel == 'rbf' else 'C'} over {config.n_trials} trials"
        ),
        "kernel": config.kernel,
        "folds": config.n_folds,
        "subject_grouped": result.subject_grouped,
        "trials": config.n_trials,
        "best_params": result.best_params,
        "accuracy_mean": result.accuracy_mean,
        "accuracy_std": result.accuracy_std,
        "fold_accuracy": [float(a) for a in result.fold_accuracy],
        **_scores_json(result.scores),
    }


def _chance_json(chance: Chance) -> dict:
    return dataclasses.asdict(chance)


# --- image-level pipeline -----------------------------------------------------------------------


def _extract(labelled, model, extract_features, detector, cache, progress):
    extract = extract_features if extract_features is not None else expression_features
    start = time.perf_counter()
    extracted = extract(labelled.paths, model, detector=detector, cache=cache, progress=progress)
    seconds = time.perf_counter() - start
    if len(extracted) != len(labelled):
        raise ValueError(f"extract_features returned {len(extracted)} rows for {len(labelled)} images")
    return extracted, seconds


def _labelled(labels: Union[PathLike, LabelledImages]) -> LabelledImages:
    return labels if isinstance(labels, LabelledImages) else read_labels_csv(labels)


def _image_summary(labelled, extracted) -> dict:
    no_face = ~extracted.detected
    failed = extracted.detected & ~extracted.found
    return {
        "labels_csv": None if labelled.source is None else str(labelled.source),
        "basis_id": extracted.basis_id,
        "images": len(labelled),
        "images_with_face": int(extracted.found.sum()),
        "images_without_face": int(no_face.sum()),
        "images_fit_failed": int(failed.sum()),
        "without_face": [str(p) for p, missing in zip(labelled.paths, no_face) if missing],
        "fit_failed": [str(p) for p, bad in zip(labelled.paths, failed) if bad],
        "features_from_cache": int(extracted.cached.sum()),
    }


def evaluate_images(
    labels: Union[PathLike, LabelledImages],
    model,
    out_dir: PathLike,
    *,
    classifier: Union[None, PathLike, TrainedClassifier] = None,
    prior_only: bool = False,
    config: EvaluationConfig = EvaluationConfig(),
    detector=None,
    cache: Optional[PathLike] = None,
    progress: bool = True,
    extract_features: Optional[Callable] = None,
) -> dict:
    """Evaluate emotion recognition on labelled images and write a report.

    Three modes:

    * default — cross-validate a new classifier (:func:`cross_validated_evaluation`
      on the classes with at least ``config.min_per_class`` usable images);
    * ``classifier`` given — score that trained classifier on these images
      (a held-out test; images of classes it does not know are excluded and
      listed);
    * ``prior_only`` — no classifier, only the EMFACS prior.

    Every mode also reports chance and, when the model's expression names are
    ARKit blendshapes, the EMFACS prior on the same images.

    Args:
      labels: a labels CSV (see :func:`classifier.features.read_labels_csv`) or
        :class:`~classifier.features.LabelledImages`.
      model: the :class:`~morphable.model.MorphableModel` fitted to the images.
      out_dir: output folder (created): ``report.json``, ``confusion.png``
        (classifier) and ``confusion_prior.png``.
      classifier: a trained classifier or the path it was saved to.
      prior_only: evaluate only the prior.
      config: :class:`EvaluationConfig`.
      detector, cache: passed to the feature extraction.
      progress: a progress bar over the images and a line per search trial.
      extract_features: a callable like
        :func:`~classifier.features.expression_features` (default that one).

    Returns:
      The report (also written to ``out_dir/report.json``).

    Raises:
      FileNotFoundError, ValueError: a bad CSV, missing images or classifier
        files, a classifier trained on another expression basis, too few
        classes.
    """
    from classifier.persistence import expression_basis_id, load_classifier

    if classifier is not None and prior_only:
        raise ValueError("give either a classifier or prior_only, not both")
    labelled = _labelled(labels)
    trained = None
    if classifier is not None:
        basis_id = expression_basis_id(model)
        # Loaded before the slow feature extraction, so a wrong file or basis fails at once.
        if isinstance(classifier, TrainedClassifier):
            trained = classifier
        else:
            trained = load_classifier(classifier, basis_id=basis_id)
        if trained.basis_id is not None and trained.basis_id != basis_id:
            raise ValueError(
                f"the classifier was trained on features of expression basis {trained.basis_id!r}, "
                f"not {basis_id!r} ({model.name}); retrain it on this model"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extracted, feature_seconds = _extract(labelled, model, extract_features, detector, cache, progress)
    report = {"mode": "classifier" if trained is not None else ("prior" if prior_only else "cross-validation")}
    report.update(_image_summary(labelled, extracted))
    report["seconds"] = {"features": feature_seconds}
    labels_array = np.asarray(labelled.labels).astype(str)

    if trained is not None:
        known = np.isin(labels_array, trained.class_names)
        rows = extracted.found & known
        if not rows.any():
            raise ValueError(f"no usable image has one of the classifier's classes {trained.class_names}")
        excluded = {str(c): int(n) for c, n in zip(*np.unique(labels_array[~known], return_counts=True))}
        start = time.perf_counter()
        scores, _ = held_out_evaluation(
            trained, extracted.features[rows], labels_array[rows], basis_id=extracted.basis_id
        )
        report["seconds"]["classifier"] = time.perf_counter() - start
        report["excluded_classes"] = excluded
        report["excluded_reason"] = "not a class of the classifier"
        report["evaluated_images"] = int(rows.sum())
        report["classifier"] = {"protocol": "held-out: trained classifier on these images", **_scores_json(scores)}
        report["classifier"]["end_to_end_accuracy"] = float(
            np.trace(scores.confusion) / max(int(known.sum()), 1)
        )
        report["classifier"]["confusion_png"] = str(plot_confusion(scores, out / "confusion.png", title=(
            f"trained classifier: accuracy {100 * scores.accuracy:.1f}% ({int(rows.sum())} images)"
        )))  # fmt: skip
        # 1/K of the classifier's K classes: that is what it chooses among.
        chance = dataclasses.replace(chance_levels(labels_array[rows]), uniform=1.0 / trained.n_classes)
    else:
        selection = select_classes(labels_array, extracted.found, min_per_class=config.min_per_class)
        rows = selection.rows
        report["min_per_class"] = config.min_per_class
        report["excluded_classes"] = selection.excluded
        report["excluded_reason"] = f"fewer than {config.min_per_class} images with a face"
        report["evaluated_images"] = int(rows.sum())
        chance = chance_levels(labels_array[rows])
        if not prior_only:
            start = time.perf_counter()
            subjects = None if labelled.subjects is None else np.asarray(labelled.subjects)[rows]
            result = cross_validated_evaluation(
                extracted.features[rows], labels_array[rows], subjects=subjects, config=config, progress=progress
            )
            report["seconds"]["classifier"] = time.perf_counter() - start
            report["classifier"] = _cv_json(result, config)
            # Images of the kept classes without a face count as errors here.
            in_kept = np.isin(labels_array, selection.class_names)
            report["classifier"]["end_to_end_accuracy"] = float(
                np.trace(result.scores.confusion) / max(int(in_kept.sum()), 1)
            )
            report["classifier"]["confusion_png"] = str(plot_confusion(result.scores, out / "confusion.png", title=(
                f"{config.n_folds}-fold CV ({config.kernel}): accuracy {100 * result.accuracy_mean:.1f} ± "
                f"{100 * result.accuracy_std:.1f}%"
            )))  # fmt: skip
    report["chance"] = _chance_json(chance)

    start = time.perf_counter()
    try:
        fitted_prior = None
        if extract_features is None:
            # The features are single-image fits: the prior of fitted faces matches them.
            from classifier.emfacs import emfacs_prior_classifier
            from morphable.paths import cache_dir

            fitted_prior = emfacs_prior_classifier(
                extracted.expression_names, seed=config.seed, model=model, cache=cache_dir() / "emfacs-prior"
            )
        prior = prior_evaluation(
            extracted.features[rows],
            labels_array[rows],
            extracted.expression_names,
            prior=fitted_prior,
            seed=config.seed,
        )
    except ValueError as error:
        report["prior"] = None
        report["prior_unavailable"] = str(error)
    else:
        report["prior"] = {
            "protocol": "EMFACS prior (no training labels), classes restricted to the evaluated ones",
            "emfacs_classes": dict(zip(prior.scores.class_names, prior.emfacs_classes)),
            "unmapped_classes": list(prior.unmapped_classes),
            "evaluated_images": int(prior.rows.sum()),
            "chance_uniform": 1.0 / len(prior.scores.class_names),
            **_scores_json(prior.scores),
        }
        report["prior"]["confusion_png"] = str(plot_confusion(prior.scores, out / "confusion_prior.png", title=(
            f"EMFACS prior: accuracy {100 * prior.scores.accuracy:.1f}%"
        )))  # fmt: skip
    report["seconds"]["prior"] = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _classifier_paths(out: PathLike) -> Path:
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".npz", ".json") else out


def train_from_images(
    labels: Union[PathLike, LabelledImages],
    model,
    out: PathLike,
    *,
    config: EvaluationConfig = EvaluationConfig(),
    detector=None,
    cache: Optional[PathLike] = None,
    progress: bool = True,
    extract_features: Optional[Callable] = None,
) -> tuple[TrainedClassifier, dict]:
    """Train an emotion classifier on labelled images and save it.

    Features → class selection → cross-validated search of C (and γ) → a final
    fit on all usable images of the kept classes with the best parameters
    (with probability calibration) → :func:`classifier.persistence.save_classifier`
    (class names, feature normalisation and the model's expression-basis id).

    Args:
      labels: a labels CSV or :class:`~classifier.features.LabelledImages`.
      model: the :class:`~morphable.model.MorphableModel` fitted to the images.
      out: where to save (``OUT.npz`` + ``OUT.json``); the cross-validation
        report goes to ``OUT.report.json`` and ``OUT.confusion.png``.
      config: :class:`EvaluationConfig`.
      detector, cache, progress, extract_features: as :func:`evaluate_images`.

    Returns:
      ``(trained classifier, report)``.
    """
    from classifier.persistence import save_classifier

    labelled = _labelled(labels)
    base = _classifier_paths(out)
    extracted, feature_seconds = _extract(labelled, model, extract_features, detector, cache, progress)
    labels_array = np.asarray(labelled.labels).astype(str)
    selection = select_classes(labels_array, extracted.found, min_per_class=config.min_per_class)
    rows = selection.rows
    subjects = None if labelled.subjects is None else np.asarray(labelled.subjects)[rows]
    start = time.perf_counter()
    result = cross_validated_evaluation(
        extracted.features[rows], labels_array[rows], subjects=subjects, config=config, progress=progress
    )
    cv_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trained = fit(
        result.best_config,
        extracted.features[rows],
        labels_array[rows],
        class_names=selection.class_names,
        basis_id=extracted.basis_id,
        key=jax.random.key(config.seed),
    )
    fit_seconds = time.perf_counter() - start
    npz_path, json_path = save_classifier(base, trained)
    report = {"mode": "train", **_image_summary(labelled, extracted)}
    report.update(
        {
            "classifier_files": [str(npz_path), str(json_path)],
            "classes": list(selection.class_names),
            "min_per_class": config.min_per_class,
            "excluded_classes": selection.excluded,
            "excluded_reason": f"fewer than {config.min_per_class} images with a face",
            "training_images": int(rows.sum()),
            "cross_validation": _cv_json(result, config),
            "chance": _chance_json(result.chance),
            "seconds": {"features": feature_seconds, "cross_validation": cv_seconds, "final_fit": fit_seconds},
        }
    )
    report["cross_validation"]["confusion_png"] = str(
        plot_confusion(result.scores, base.with_name(base.name + ".confusion.png"), title=(
            f"{config.n_folds}-fold CV ({config.kernel}): accuracy {100 * result.accuracy_mean:.1f} ± "
            f"{100 * result.accuracy_std:.1f}%"
        ))
    )  # fmt: skip
    base.with_name(base.name + ".report.json").write_text(json.dumps(report, indent=2))
    return trained, report
