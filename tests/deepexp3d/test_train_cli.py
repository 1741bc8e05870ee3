"""``deepexp3d train``: a tiny run writes checkpoints, a rerun resumes, bad configs exit with a clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
from typer.testing import CliRunner

from deepexp3d.cli import app


def _write_shard(path, frames: int = 16, size: int = 32) -> None:
    """A training shard of random crops and random 28-d targets (the CLI test needs no real faces)."""
    from fitting.shards import ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(path, expression_names=[f"e{k}" for k in range(28)], expression_basis="random-28",
                     n_identity=2, image_size=size, image_encoding="png") as writer:
        for index in range(frames):
            writer.add(image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                       expression=rng.normal(size=28), identity=np.zeros(2), camera=np.zeros(6),
                       landmarks=np.zeros((68, 2)), video_id="random", frame_index=index)


def _tiny_arguments(workdir, shard) -> list[str]:
    # The tiny config cut to one bottleneck block on 32² inputs (a quick compile), 3 steps of 8 crops,
    # a checkpoint after every step, no validation.
    settings = {
        "steps": 3, "checkpoint_every": 1, "keep_checkpoints": 3, "log_every": 1, "batch_size": 8,
        "model.stage_sizes": "[1]", "model.num_filters": 4, "model.image_size": 32, "augmentation.enabled": "false",
        "data.train": json.dumps([str(shard)]),
    }
    arguments = ["train", "tiny", "--workdir", str(workdir)]
    for key, value in settings.items():
        arguments += ["--set", f"{key}={value}"]
    return arguments


def test_train_writes_checkpoints_and_a_rerun_resumes(tmp_path):
    from regressor.train import flatten_parameters, load_variables

    shard = tmp_path / "shard"
    _write_shard(shard)
    workdir = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, _tiny_arguments(workdir, shard))
    assert first.exit_code == 0, first.output
    assert "step 3;" in first.output and "resumed" not in first.output
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2", "3"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["steps"] == 3 and config["model"]["stage_sizes"] == [1] and config["augmentation"]["enabled"] is False
    assert config["data"]["train"] == [str(shard)]
    final, _ = load_variables(workdir, 3)

    # As if killed after the step-2 checkpoint: the same command picks up there and ends where the first run did.
    shutil.rmtree(workdir / "checkpoints" / "3")
    second = runner.invoke(app, _tiny_arguments(workdir, shard))
    assert second.exit_code == 0, second.output
    assert "step 3 (resumed from step 2)" in second.output
    resumed, _ = load_variables(workdir, 3)
    expected = flatten_parameters(final)
    assert expected.keys() == flatten_parameters(resumed).keys()
    for key, value in flatten_parameters(resumed).items():
        assert np.array_equal(value, expected[key]), key


def test_train_rejects_unknown_keys_bad_values_and_configs(tmp_path):
    runner = CliRunner()
    cases = [
        (["train", "tiny", "--set", "optimizer.learning_rat=0.1"], "unknown field 'optimizer.learning_rat'"),
        (["train", "tiny", "--set", "nosection.steps=3"], "unknown section 'nosection'"),
        (["train", "tiny", "--set", "steps=many"], "config.steps: expected int, got 'many'"),
        (["train", "tiny", "--set", "steps"], "expected KEY=VALUE"),
        (["train", "no_such_config"], "no built-in config named 'no_such_config'"),
        (["train", str(tmp_path / "missing.py")], "neither a built-in config name nor an existing"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, arguments + ["--workdir", str(tmp_path / "run")])
        assert result.exit_code == 1, (arguments, result.output)
        assert "error:" in result.output and message in result.output, (arguments, result.output)
    assert not (tmp_path / "run").exists()  # nothing was started
