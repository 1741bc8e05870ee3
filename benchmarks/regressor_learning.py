"""Learning proof: a ResNet trained on synthetic renders beats the predict-the-mean baseline on held-out renders.

Renders ``--train`` + ``--validation`` faces with exact expression targets
(:mod:`regressor.synthetic`, different seeds, so no face is shared), trains the
``synthetic_proof`` config (or ``--config``) on the first set and evaluates the
expression MSE on the second, next to the MSE of predicting the training
targets' mean. Run:

    python benchmarks/regressor_learning.py --workdir runs/synthetic_proof [--train 3000 --validation 500 --steps 2000]

The run is resumable (rerun the same command after an interruption). Prints
JSON lines: ``render`` (renders/s), then ``learning`` with both MSEs, their
ratio, the training time and the per-component figures; writes a sample grid
of training crops to ``WORKDIR/samples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit, machine  # noqa: E402

from fitting.shards import ShardDataset  # noqa: E402
from regressor.cli_train import load_config  # noqa: E402
from regressor.synthetic import load_synthetic_faces, save_sample_grid, write_synthetic_shards  # noqa: E402
from regressor.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/synthetic_proof")
    parser.add_argument("--config", default="synthetic_proof")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--steps", type=int, default=None, help="override the config's step count")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    parser.add_argument("--cache-dir", default=None, help="ICT model cache")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    info = {**machine(), "load_average_1min": os.getloadavg()[0]}

    faces = load_synthetic_faces(args.cache_dir)
    start = time.perf_counter()
    write_synthetic_shards(faces, workdir / "data" / "train", args.train, seed=0, workers=args.workers)
    write_synthetic_shards(faces, workdir / "data" / "validation", args.validation, seed=1, workers=args.workers)
    render_seconds = time.perf_counter() - start
    emit({"benchmark": "render", "examples": args.train + args.validation, "seconds": render_seconds,
          "renders_per_second": (args.train + args.validation) / render_seconds, "workers": args.workers, **info})
    train_set = ShardDataset(workdir / "data" / "train")
    save_sample_grid(workdir / "samples.png", np.stack([train_set.image(k) for k in range(16)]), columns=8)

    overrides = {"data.train": [str(workdir / "data" / "train")],
                 "data.validation": [str(workdir / "data" / "validation")]}
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = load_config(args.config, overrides)
    start = time.perf_counter()
    result = train(config, workdir / "run")
    train_seconds = time.perf_counter() - start
    evaluation = result.eval_metrics
    names = train_set.expression_names
    per_component = evaluation["mse_per_component"]
    baseline = evaluation["baseline_mse_per_component"]
    emit({
        "benchmark": "learning",
        "config": config.name,
        "model": dataclasses.asdict(config.model),
        "train_examples": len(train_set),
        "validation_examples": evaluation["count"],
        "steps": result.step,
        "batch_size": config.batch_size,
        "resumed_from": result.resumed_from,
        "train_seconds_this_invocation": train_seconds,
        "validation_mse": evaluation["mse"],
        "predict_the_mean_mse": evaluation["baseline_mse"],
        "mse_ratio": evaluation["mse"] / evaluation["baseline_mse"],
        "per_component_mse": {n: float(v) for n, v in zip(names, per_component)},
        "per_component_baseline_mse": {n: float(v) for n, v in zip(names, baseline)},
        "per_component_ratio": {n: float(v / b) for n, v, b in zip(names, per_component, baseline)},
        **info,
    })


if __name__ == "__main__":
    main()
