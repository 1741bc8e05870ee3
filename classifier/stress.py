"""Stress-recognition protocol of the paper (§IV-B, Table IV; SRD'15 data).

Per-frame expression features with a binary label (stress vs neutral), a
subject and an experimental phase (SRD'15: emotional recall, stressful images,
stressful videos) are classified with subject-disjoint 5-fold cross-validation
repeated 10 times; the accuracy is reported per phase (over that phase's
out-of-fold frames) as mean ± std over the repeats, and the paper's "average"
is the mean of the phase accuracies.

Subject-disjoint folds matter: frames of one subject are strongly correlated,
so mixing a subject's frames across training and test sets measures
identification of the person, not of the stress.

Examples:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> subjects = np.repeat(np.arange(10), 40)
  >>> labels = np.tile(np.repeat([0, 1], 20), 10)
  >>> phases = np.tile(np.repeat(["recall", "images"], 10), 20)
  >>> features = rng.normal(size=(400, 4)) + 2.0 * labels[:, None]
  >>> result = stress_protocol(features, labels, subjects, phases, n_repeats=2)
  >>> result.average > 0.9
  True
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from flax import struct

from classifier.ecoc import ECOCClassifier, check_features, encode_labels
from classifier.selection import cross_validate, repeated_folds

__all__ = ["StressResult", "stress_protocol"]


@struct.dataclass
class StressResult:
    """Results of :func:`stress_protocol` (NumPy arrays; a pytree).

    Attributes:
      phase_accuracy: ``(R, P)`` accuracy over each phase's out-of-fold frames,
        per repeat.
      phase_mean: ``(P,)`` mean over repeats.
      phase_std: ``(P,)`` standard deviation over repeats (ddof = 1; 0 for one repeat).
      average: mean of ``phase_mean`` (Table IV's "average").
      overall_accuracy: ``(R,)`` accuracy over all frames per repeat.
      fold_accuracy: ``(R, F)`` accuracy of every test fold.
      folds: ``(R, n) int32`` the subject-disjoint fold of every frame.
      predictions: ``(R, n) int32`` out-of-fold predicted class index.
      phase_names: P phase names (static).
      class_names: the two class names (static).
    """

    phase_accuracy: np.ndarray
    phase_mean: np.ndarray
    phase_std: np.ndarray
    average: float
    overall_accuracy: np.ndarray
    fold_accuracy: np.ndarray
    folds: np.ndarray
    predictions: np.ndarray
    phase_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    class_names: tuple[str, ...] = struct.field(pytree_node=False, default=())


def stress_protocol(
    features,
    labels,
    subjects,
    phases,
    *,
    config: Optional[ECOCClassifier] = None,
    n_folds: int = 5,
    n_repeats: int = 10,
    phase_names: Optional[Sequence[str]] = None,
    seed: int = 0,
    key: Optional[jax.Array] = None,
) -> StressResult:
    """Subject-disjoint k-fold × R stress classification, accuracy per phase.

    Args:
      features: ``(n, d)`` per-frame feature vectors (e.g. expression coefficients).
      labels: ``(n,)`` binary labels (two distinct values, e.g. 0/1 or
        "neutral"/"stress").
      subjects: ``(n,)`` subject of each frame (folds never split a subject).
      phases: ``(n,)`` experimental phase of each frame.
      config: classifier; default one-vs-one ECOC (a single binary SVM) with
        the default RBF SVM (exact kernel up to 2,000 frames, Nyström beyond).
      n_folds: folds per repeat (paper: 5).
      n_repeats: repeats with different subject partitions (paper: 10).
      phase_names: order of the phases in the result (default: sorted).
      seed: repeat r partitions the subjects with seed ``seed + r``.
      key: PRNG key of the training (default ``jax.random.key(0)``).

    Returns:
      :class:`StressResult`.

    Raises:
      ValueError: not exactly two classes, fewer subjects than folds,
        mismatched lengths.
    """
    x = check_features(features)
    if x.ndim != 2:
        raise ValueError(f"features: expected shape (n, d), got {x.shape}")
    indices, class_names = encode_labels(labels)
    if len(class_names) != 2:
        raise ValueError(f"labels: the stress protocol needs exactly 2 classes, got {class_names}")
    subjects, phases = np.asarray(subjects), np.asarray(phases)
    for name, array in (("labels", indices), ("subjects", subjects), ("phases", phases)):
        if array.shape != (x.shape[0],):
            raise ValueError(f"{name}: expected shape ({x.shape[0]},), got {array.shape}")
    phases = phases.astype(str)
    names = tuple(sorted(set(phases.tolist()))) if phase_names is None else tuple(str(p) for p in phase_names)
    unknown = sorted(set(phases.tolist()) - set(names))
    if unknown:
        raise ValueError(f"phases: {unknown} not among phase_names {names}")
    if config is None:
        config = ECOCClassifier(coding="one_vs_one")

    folds = repeated_folds(indices, n_folds, n_repeats, groups=subjects, seed=seed)
    result = cross_validate(config, x, indices, folds, class_names=class_names, key=key)
    correct = result.predictions == indices[None]
    phase_accuracy = np.stack(
        [correct[:, phases == p].mean(axis=1) if np.any(phases == p) else np.full(n_repeats, np.nan) for p in names],
        axis=1,
    )
    phase_mean = phase_accuracy.mean(axis=0)
    phase_std = phase_accuracy.std(axis=0, ddof=1) if n_repeats > 1 else np.zeros(len(names))
    return StressResult(
        phase_accuracy=phase_accuracy,
        phase_mean=phase_mean,
        phase_std=phase_std,
        average=float(np.nanmean(phase_mean)),
        overall_accuracy=correct.mean(axis=1),
        fold_accuracy=result.fold_accuracy,
        folds=folds,
        predictions=result.predictions,
        phase_names=names,
        class_names=class_names,
    )
