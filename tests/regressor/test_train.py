"""Training: the loss falls, a killed run resumes bit-exactly, 2-device data parallelism equals 1 device."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from regressor.configs.default import from_dict, to_dict
from regressor.train import (
    create_train_state,
    flatten_parameters,
    load_variables,
    make_mesh,
    make_schedule,
    make_train_step,
    shard_batch,
    train,
)

REPO = Path(__file__).parents[2]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tiny_resnet_loss_decreases(tiny_run, tiny_config):
    rows = _rows(tiny_run.workdir / "train_metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, tiny_config.steps + 1))
    losses = np.array([float(r["loss"]) for r in rows])
    assert np.all(np.isfinite(losses))
    # The zero-initialised head starts at the targets' mean: the first losses are
    # the predict-the-mean error of the batch; fitting 48 renders must beat it clearly.
    assert losses[-10:].mean() < 0.6 * losses[:5].mean(), losses
    evaluation = tiny_run.eval_metrics
    assert evaluation["count"] == 16 and np.isfinite(evaluation["mse"])
    assert evaluation["mse_per_component"].shape == (28,)
    # The run directory describes itself.
    assert from_dict(json.loads((tiny_run.workdir / "config.json").read_text())) == tiny_config
    assert json.loads((tiny_run.workdir / "dataset.json").read_text())["train_frames"] == 48
    eval_rows = _rows(tiny_run.workdir / "eval_metrics.csv")
    assert [int(r["step"]) for r in eval_rows] == [60]
    assert np.isclose(float(eval_rows[0]["mse"]), evaluation["mse"])


def test_killed_run_resumes_at_the_same_step_with_the_same_parameters(tiny_run, tiny_config, tmp_path):
    # "Killed" after step 27: the last checkpoint is step 20, steps 21-27 are lost.
    # (That augmentation also resumes exactly is test_input_pipeline's iterator-state test.)
    partial = train(tiny_config, tmp_path, stop_at_step=27)
    assert partial.step == 27 and partial.resumed_from is None
    saved_20, _ = load_variables(tmp_path, 20)
    reference_20, _ = load_variables(tiny_run.workdir, 20)
    for key, value in flatten_parameters(reference_20).items():
        assert np.array_equal(flatten_parameters(saved_20)[key], value), key

    resumed = train(tiny_config, tmp_path)
    assert resumed.resumed_from == 20 and resumed.step == tiny_config.steps
    expected = flatten_parameters(tiny_run.state)
    final = flatten_parameters(resumed.state)
    assert expected.keys() == final.keys()
    for key in expected:
        assert np.array_equal(final[key], expected[key]), key  # bit-exact, parameters and batch statistics
    assert int(resumed.state.step) == int(tiny_run.state.step) == 60
    opt_ref = jax.tree_util.tree_leaves(tiny_run.state.opt_state)
    opt_new = jax.tree_util.tree_leaves(resumed.state.opt_state)
    assert all(np.array_equal(a, b) for a, b in zip(opt_ref, opt_new))
    # Metric rows of the lost steps were replaced, not duplicated, and match the uninterrupted run.
    rows = _rows(tmp_path / "train_metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    reference_rows = _rows(tiny_run.workdir / "train_metrics.csv")
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference_rows]


def test_loss_is_the_uncertainty_weighted_squared_error(tiny_config, tiny_run):
    mesh = make_mesh()
    state = create_train_state(tiny_config, 0, mesh, head_bias=np.linspace(-1, 1, 28))
    rng = np.random.default_rng(0)
    n = tiny_config.batch_size  # the run's batch shape: its compiled step is reused
    batch = {
        "image": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        "expression": rng.standard_normal((n, 28)).astype(np.float32),
        "weight": rng.uniform(0, 1, (n, 28)).astype(np.float32),
    }
    _, metrics = make_train_step(mesh, make_schedule(tiny_config))(state, shard_batch(batch, mesh))
    predictions = np.linspace(-1, 1, 28, dtype=np.float32)  # zero head: the bias
    squared = (predictions - batch["expression"]) ** 2
    assert np.isclose(float(metrics["loss"]), np.mean(batch["weight"] * squared), rtol=1e-5)
    assert np.isclose(float(metrics["mse"]), np.mean(squared), rtol=1e-5)
    assert float(metrics["learning_rate"]) == 0.0  # warm-up starts at zero


def test_fine_tuning_starts_from_another_runs_parameters(tiny_run, tiny_config):
    variables, step = load_variables(tiny_run.workdir)
    assert step == 60
    state = create_train_state(tiny_config, 123, make_mesh(jax.devices()[:1]), variables=variables)
    assert int(state.step) == 0
    for key, value in flatten_parameters(tiny_run.state).items():
        assert np.array_equal(flatten_parameters(state)[key], value), key


_TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from regressor.configs.default import ModelConfig, OptimizerConfig, TrainConfig
    from regressor.train import (create_train_state, flatten_parameters, make_mesh, make_schedule,
                                 make_train_step, shard_batch)

    assert jax.device_count() == 2, jax.devices()
    config = TrainConfig(model=ModelConfig(n_outputs=5, stage_sizes=(1,), num_filters=4, image_size=32),
                         optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0), batch_size=8, steps=10)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                "expression": rng.standard_normal((8, 5)).astype(np.float32),
                "weight": rng.uniform(0.5, 1.0, (8, 5)).astype(np.float32)} for _ in range(3)]
    results = {}
    for n in (1, 2):
        mesh = make_mesh(jax.devices()[:n])
        state = create_train_state(config, 0, mesh)
        initial = flatten_parameters(state)
        step = make_train_step(mesh, make_schedule(config))
        for batch in batches:
            sharded = shard_batch(batch, mesh)
            assert len(sharded["image"].addressable_shards) == n
            assert sharded["image"].addressable_shards[0].data.shape[0] == 8 // n
            if n == 2:
                hlo = step.lower(state, sharded).compile().as_text()
                assert "all-reduce" in hlo  # gradients are summed across the two devices
            state, metrics = step(state, sharded)
        leaves = jax.tree_util.tree_leaves(state.params)
        assert all(leaf.sharding.is_fully_replicated for leaf in leaves)
        assert all(len(leaf.sharding.device_set) == n for leaf in leaves)
        results[n] = (flatten_parameters(state), float(metrics["loss"]))
    one, two = results[1][0], results[2][0]
    moved = max(float(np.abs(one[k] - initial[k]).max()) for k in one)
    worst = max(float(np.abs(one[k] - two[k]).max() / (np.abs(one[k]).max() + 1e-6)) for k in one)
    print("MOVED", moved, "WORST", worst, "LOSS", results[1][1], results[2][1])
    assert moved > 1e-3
    assert worst < 1e-4, worst
    assert abs(results[1][1] - results[2][1]) < 1e-5 * abs(results[1][1])
    print("TWO-DEVICE-OK")
    """
)


def test_two_device_data_parallel_step_equals_one_device_step():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TWO-DEVICE-OK" in result.stdout


@pytest.mark.slow
def test_sigkilled_training_process_resumes_bit_exactly(tiny_run, tiny_config, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(to_dict(tiny_config)))
    workdir = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import json
        from regressor.configs.default import from_dict
        from regressor.train import train
        train(from_dict(json.loads(open({str(config_file)!r}).read())), {str(workdir)!r})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 500
        # Kill as soon as the step-40 checkpoint is committed (orbax renames it into place).
        while not (workdir / "checkpoints" / "40" / "_CHECKPOINT_METADATA").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    resumed = train(tiny_config, workdir)
    assert resumed.resumed_from in (40, 60)
    for key, value in flatten_parameters(tiny_run.state).items():
        assert np.array_equal(flatten_parameters(resumed.state)[key], value), key
