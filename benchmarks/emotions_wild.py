"""Emotion recognition in the wild from fitted 3D expression: CV accuracy vs chance vs the EMFACS prior.

Data: ``$DEEPEXP3D_DATA/emotions-wild`` (1,120 web face crops, 160 per class,
7 classes; ``labels.csv`` with ``file,label,subject``). Pipeline, as in the
paper's §III-D but with the landmark fitter in place of the network: dlib HOG
face + 68 landmarks → :func:`fitting.image.fit_image` of the ICT-FaceKit face
model → the 53 expression blendshape weights of the most confident face
(:func:`classifier.features.expression_features`) → one-vs-all ECOC-SVM.

Measured in the same run, on the same images:

* ``emotions_wild_features``: images, how many had no detected face (or a
  failed fit), extraction time (or how many rows came from the feature cache);
* ``emotions_wild_cv``, one line per kernel: subject-disjoint stratified
  10-fold CV with an optuna search of C (and γ) — accuracy mean ± std over
  folds, out-of-fold accuracy, per-class accuracy, confusion matrix, chance
  (majority class rate and 1/K), the EMFACS prior's accuracy and the ratios;
* ``emotions_wild_prior``, one line per variant of the label-free EMFACS prior
  (:func:`classifier.emfacs.emfacs_prior_classifier`), each built with every
  seed of ``--prior-seeds``: accuracy per seed, mean ± std, per-class accuracy
  and confusion matrix (first seed, and per-class means), build time:

  - ``prototype``: trained on the clean EMFACS vectors (no model);
  - ``fitted``: trained on synthetic faces fitted like the photos (fitter in
    the loop), no reference faces;
  - ``fitted_reference``: ``fitted`` minus the fitter's response to the shared
    annotated faces (the default of ``predict``, ``demo`` and ``evaluate``);
  - ``fitted_adapted``: ``fitted`` with its input standardisation re-estimated
    on this data set's features (:func:`classifier.emfacs.adapt_to_unlabelled`;
    no labels, but it sees the whole test set and assumes its classes are
    about balanced).

The labels are noisy web annotations (see the data set's README), so the
accuracy is far below the paper's lab data sets; the comparison with chance
and with the prior is the point.

Run: ``python benchmarks/emotions_wild.py [--out DIR] [--kernels rbf,linear]
[--trials 20] [--folds 10] [--prior-seeds 0,1,2] [--no-cache]``. Prints JSON
lines and writes them to ``DIR/results.jsonl`` with ``DIR/confusion_<kernel>.png``
and ``DIR/confusion_prior_<variant>.png`` (first seed; default ``DIR``:
``/tmp/deepexp3d-benchmarks/emotions-wild``). The priors are built afresh (no
prior cache), so their build times are measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit, machine  # noqa: E402

from classifier.evaluation import (  # noqa: E402
    EvaluationConfig,
    chance_levels,
    cross_validated_evaluation,
    plot_confusion,
    prior_evaluation,
    select_classes,
)
from classifier.emfacs import adapt_to_unlabelled, emfacs_prior_classifier  # noqa: E402
from classifier.features import expression_features, read_labels_csv  # noqa: E402
from classifier.persistence import expression_basis_id  # noqa: E402
from fitting.detection import DlibDetector  # noqa: E402
from morphable.io import load_ict  # noqa: E402
from morphable.paths import cache_dir, data_dir  # noqa: E402


def _per_class(scores) -> dict:
    return {name: float(value) for name, value in zip(scores.class_names, scores.per_class_accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="the emotions-wild folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/deepexp3d-benchmarks/emotions-wild"))
    parser.add_argument("--kernels", default="rbf,linear")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--min-per-class", type=int, default=30)
    parser.add_argument("--prior-seeds", default="0,1,2", help="seeds of the EMFACS priors (comma-separated)")
    parser.add_argument("--no-cache", action="store_true", help="extract every feature afresh (timing)")
    arguments = parser.parse_args()

    folder = arguments.data or data_dir() / "emotions-wild"
    labels_csv = folder / "labels.csv"
    if not labels_csv.is_file():
        sys.exit(f"emotions-wild labels not found: {labels_csv} (set DEEPEXP3D_DATA)")
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def record(line: dict) -> None:
        emit(line)
        lines.append(line)

    info = machine()
    for package in ("optuna", "dlib-bin"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None

    labelled = read_labels_csv(labels_csv)
    model = load_ict(region="face")
    detector = DlibDetector()
    cache = None if arguments.no_cache else cache_dir() / "features"
    start = time.perf_counter()
    extracted = expression_features(labelled.paths, model, detector=detector, cache=cache)
    feature_seconds = time.perf_counter() - start
    labels = np.asarray(labelled.labels).astype(str)
    no_face = ~extracted.detected
    record(
        {
            "benchmark": "emotions_wild_features",
            "model": model.name,
            "basis_id": extracted.basis_id,
            "detector": repr(detector),
            "images": len(labelled),
            "images_with_face": int(extracted.found.sum()),
            "images_without_face": int(no_face.sum()),
            "images_fit_failed": int((extracted.detected & ~extracted.found).sum()),
            "without_face_per_class": {c: int(np.sum(no_face & (labels == c))) for c in np.unique(labels)},
            "without_face": [p.name for p, missing in zip(labelled.paths, no_face) if missing],
            "rows_from_cache": int(extracted.cached.sum()),
            "seconds": feature_seconds,
            "ms_per_computed_image": 1e3 * feature_seconds / max(int((~extracted.cached).sum()), 1),
            "median_rmse_normalised": float(np.nanmedian(extracted.rmse_normalised)),
            **info,
        }
    )

    selection = select_classes(labels, extracted.found, min_per_class=arguments.min_per_class)
    rows = selection.rows
    x, y = extracted.features[rows], labels[rows]
    subjects = np.asarray(labelled.subjects)[rows] if labelled.subjects is not None else None
    chance = chance_levels(y)

    seeds = [int(seed) for seed in arguments.prior_seeds.split(",")]
    basis_id = expression_basis_id(model)
    no_reference = np.zeros((0, 68, 2), np.float32)
    built = {}

    def build_prior(variant: str, seed: int):
        if variant == "prototype":
            return emfacs_prior_classifier(model.expression_names, seed=seed, basis_id=basis_id)
        if variant == "fitted_adapted":
            return adapt_to_unlabelled(built["fitted", seed], x)
        reference = no_reference if variant == "fitted" else None
        return emfacs_prior_classifier(
            model.expression_names, seed=seed, basis_id=basis_id, model=model, reference_landmarks=reference
        )

    priors = {}
    for variant in ("prototype", "fitted", "fitted_reference", "fitted_adapted"):
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            built[variant, seed] = build_prior(variant, seed)
            ready = time.perf_counter()
            evaluation = prior_evaluation(x, y, extracted.expression_names, prior=built[variant, seed])
            runs.append((evaluation, ready - start, time.perf_counter() - ready))
        first = runs[0][0]
        accuracies = np.array([run[0].scores.accuracy for run in runs])
        priors[variant] = first
        plot_confusion(first.scores, out / f"confusion_prior_{variant}.png", title=(
            f"emotions-wild, EMFACS prior ({variant}, seed {seeds[0]}): accuracy {100 * first.scores.accuracy:.1f}%"
        ))  # fmt: skip
        record(
            {
                "benchmark": "emotions_wild_prior",
                "variant": variant,
                "images": int(first.rows.sum()),
                "classes": list(first.scores.class_names),
                "emfacs_classes": list(first.emfacs_classes),
                "seeds": seeds,
                "accuracy": first.scores.accuracy,
                "accuracy_per_seed": accuracies.tolist(),
                "accuracy_mean": float(accuracies.mean()),
                "accuracy_std": float(accuracies.std(ddof=1)) if len(seeds) > 1 else None,
                "balanced_accuracy": first.scores.balanced_accuracy,
                "per_class_accuracy": _per_class(first.scores),
                "per_class_accuracy_mean": {
                    name: float(value)
                    for name, value in zip(
                        first.scores.class_names, np.mean([run[0].scores.per_class_accuracy for run in runs], axis=0)
                    )
                },
                "confusion": first.scores.confusion.tolist(),
                "predicted_per_class": dict(zip(first.scores.class_names, first.scores.confusion.sum(0).tolist())),
                "chance_majority": chance.majority_rate,
                "chance_uniform": 1.0 / len(first.scores.class_names),
                "accuracy_over_chance_uniform": first.scores.accuracy * len(first.scores.class_names),
                # fitted_adapted: the adaptation only (its fitted prior is the "fitted" line's).
                "build_seconds_per_seed": [run[1] for run in runs],
                "seconds": runs[0][2],
                **info,
            }
        )
    prior = priors["fitted_reference"]

    for kernel in arguments.kernels.split(","):
        config = EvaluationConfig(
            kernel=kernel, n_trials=arguments.trials, n_folds=arguments.folds, min_per_class=arguments.min_per_class
        )
        start = time.perf_counter()
        result = cross_validated_evaluation(x, y, subjects=subjects, config=config)
        seconds = time.perf_counter() - start
        plot_confusion(result.scores, out / f"confusion_{kernel}.png", title=(
            f"emotions-wild, {arguments.folds}-fold CV ({kernel}): "
            f"{100 * result.accuracy_mean:.1f} ± {100 * result.accuracy_std:.1f}%"
        ))  # fmt: skip
        record(
            {
                "benchmark": "emotions_wild_cv",
                "kernel": kernel,
                "folds": arguments.folds,
                "subject_disjoint": result.subject_grouped,
                "trials": arguments.trials,
                "images": int(rows.sum()),
                "classes": list(selection.class_names),
                "excluded_classes": selection.excluded,
                "best_params": result.best_params,
                "accuracy_mean": result.accuracy_mean,
                "accuracy_std": result.accuracy_std,
                "accuracy_out_of_fold": result.scores.accuracy,
                "balanced_accuracy": result.scores.balanced_accuracy,
                "end_to_end_accuracy": float(
                    np.trace(result.scores.confusion) / np.isin(labels, selection.class_names).sum()
                ),
                "per_class_accuracy": _per_class(result.scores),
                "confusion": result.scores.confusion.tolist(),
                "chance_majority": chance.majority_rate,
                "chance_uniform": chance.uniform,
                "prior_variant": "fitted_reference",
                "prior_accuracy": prior.scores.accuracy,
                "accuracy_over_chance_majority": result.accuracy_mean / chance.majority_rate,
                "accuracy_over_prior": result.accuracy_mean / prior.scores.accuracy,
                "seconds": seconds,
                **info,
            }
        )

    with (out / "results.jsonl").open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
