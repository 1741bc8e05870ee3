"""Fixtures of the regressor tests: a synthetic-face generator and small shard sets rendered once per session."""

from __future__ import annotations

import dataclasses

import pytest

from regressor.configs import tiny
from regressor.configs.default import DataConfig, TrainConfig


@pytest.fixture(scope="session")
def synthetic_faces(ict_face_model):
    """:class:`regressor.synthetic.SyntheticFaces` over the ICT face area."""
    from regressor.synthetic import SyntheticFaces

    return SyntheticFaces(ict_face_model)


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_faces, tmp_path_factory):
    """``{"train": dir, "validation": dir}``: 48 training renders in two shards, 16 validation renders."""
    from regressor.synthetic import write_synthetic_shards

    root = tmp_path_factory.mktemp("synthetic-shards")
    write_synthetic_shards(synthetic_faces, root / "train", 48, seed=0, shard_size=32)
    write_synthetic_shards(synthetic_faces, root / "validation", 16, seed=1, shard_size=16)
    return {"train": root / "train", "validation": root / "validation"}


@pytest.fixture(scope="session")
def tiny_config(synthetic_shards) -> TrainConfig:
    """The tiny config reading the session's synthetic shards: 60 steps, checkpoints every 20, no augmentation.

    Every training test uses this one configuration so that the process
    compiles its train step once (the step functions are cached per config).
    """
    config = tiny.get_config()
    return dataclasses.replace(
        config,
        data=DataConfig(train=(str(synthetic_shards["train"]),), validation=(str(synthetic_shards["validation"]),),
                        worker_count=0),
        augmentation=dataclasses.replace(config.augmentation, enabled=False),
        steps=60,
        checkpoint_every=20,
        eval_every=60,
        log_every=1,
        keep_checkpoints=5,
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """An uninterrupted tiny training run (:class:`regressor.train.TrainResult`)."""
    from regressor.train import train

    return train(tiny_config, tmp_path_factory.mktemp("tiny-run"))
