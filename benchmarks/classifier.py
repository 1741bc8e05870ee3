"""ECOC-SVM classifier: 10-fold CV with Bayesian hyper-parameter search, and prediction throughput.

Data: 10,000 synthetic 28-d vectors (the paper's n_e = 28), 7 classes, each
class a mixture of two Gaussian blobs (so the RBF kernel has something to
gain over the linear one). For each kernel:

* ``classifier_cv_search``: optuna TPE search (20 trials) of C (and γ), every
  trial a stratified 10-fold CV; total time (the first trial includes JIT
  compilation, reported separately), best parameters, CV accuracy mean ± std.
* ``classifier_fit``: final fit on all vectors with the best parameters
  (including the 5-fold probability calibration).
* ``classifier_predict``: throughput of ``predict`` on 10,000 vectors and
  latency on one vector.

Run: ``python benchmarks/classifier.py [--vectors 10000] [--trials 20] [--kernels rbf,linear]``
(prints JSON lines).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

# This script is itself named "classifier", so its folder (sys.path[0]) would
# shadow the package: import the package first, then reach common.py at the end.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from classifier.ecoc import ECOCClassifier, fit, predict  # noqa: E402
from classifier.selection import cross_validate, search_hyperparameters, stratified_kfold  # noqa: E402
from classifier.svm import SVMConfig, uses_exact_kernel  # noqa: E402

sys.path.append(str(_HERE))
from common import best_time, emit, machine  # noqa: E402


def synthetic_expressions(n_vectors: int, n_features: int = 28, n_classes: int = 7, seed: int = 0):
    """``(n, d) float32`` vectors and ``(n,) int32`` labels: two Gaussian blobs per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.5, size=(n_classes, 2, n_features))
    labels = rng.integers(0, n_classes, n_vectors)
    blob = rng.integers(0, 2, n_vectors)
    features = centres[labels, blob] + rng.normal(size=(n_vectors, n_features))
    return features.astype(np.float32), labels.astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--kernels", default="rbf,linear")
    arguments = parser.parse_args()

    import optuna

    # Per-trial INFO lines would interleave with the JSON output.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = machine()
    info["optuna"] = optuna.__version__
    features, labels = synthetic_expressions(arguments.vectors)
    folds = stratified_kfold(labels, arguments.folds, seed=0)

    for kernel in arguments.kernels.split(","):
        config = ECOCClassifier(svm=SVMConfig(kernel=kernel))
        n_train = int(np.sum(folds != 0))
        solver = (
            "linear primal, L-BFGS"
            if kernel == "linear"
            else ("exact kernel, SMO" if uses_exact_kernel(config.svm, arguments.vectors) else
                  f"Nystroem m={config.svm.n_components} + linear primal, L-BFGS")
        )  # fmt: skip
        start = time.perf_counter()
        search = search_hyperparameters(config, features, labels, folds, n_trials=arguments.trials, seed=0)
        search_s = time.perf_counter() - start

        # A second evaluation of the first trial's parameters separates
        # compilation from the first trial's time.
        first = search.trials[0].params
        start = time.perf_counter()
        cross_validate(config.replace(svm=config.svm.replace(**first)), features, labels, folds)
        warm_trial_s = time.perf_counter() - start
        emit(
            {
                "benchmark": "classifier_cv_search",
                "kernel": kernel,
                "solver": solver,
                "vectors": arguments.vectors,
                "features": features.shape[1],
                "classes": 7,
                "folds": arguments.folds,
                "training_vectors_per_fold": n_train,
                "trials": arguments.trials,
                "total_s": search_s,
                "warm_trial_s": warm_trial_s,
                "mean_trial_s": search_s / arguments.trials,
                "best_params": search.best_params,
                "cv_accuracy_mean": search.best.accuracy_mean,
                "cv_accuracy_std": search.best.accuracy_std,
                "start_accuracy": search.trials[0].accuracy_mean,
                **info,
            }
        )

        start = time.perf_counter()
        trained = fit(search.best_config, features, labels, key=jax.random.key(0))
        fit_s = time.perf_counter() - start
        emit(
            {
                "benchmark": "classifier_fit",
                "kernel": kernel,
                "vectors": arguments.vectors,
                "fit_with_calibration_s": fit_s,
                "temperature": float(trained.temperature),
                "training_accuracy": float(np.mean(predict(trained, features) == labels)),
                **info,
            }
        )

        predict(trained, features)
        batch_s = best_time(lambda: predict(trained, features), repeats=5)
        one = features[:1]
        predict(trained, one)
        single_s = best_time(lambda: predict(trained, one), repeats=50)
        emit(
            {
                "benchmark": "classifier_predict",
                "kernel": kernel,
                "batch": arguments.vectors,
                "vectors_per_s": arguments.vectors / batch_s,
                "batch_s": batch_s,
                "single_vector_latency_ms": 1e3 * single_s,
                **info,
            }
        )


if __name__ == "__main__":
    main()
