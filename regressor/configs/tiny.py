"""A seconds-long CPU run: a four-block, 8-filter bottleneck ResNet on 64×64 inputs, trained on synthetic renders.

Used by the tests and as a smoke test of the whole path (rendering, shards,
grain pipeline, training, checkpoints, evaluation): ``deepexp3d train tiny``.
"""

from __future__ import annotations

import dataclasses

from regressor.configs.default import AugmentationConfig, DataConfig, ModelConfig, OptimizerConfig, TrainConfig


def get_config() -> TrainConfig:
    """The tiny configuration (renders 96 training and 32 validation faces on first use)."""
    return TrainConfig(
        name="tiny",
        model=ModelConfig(stage_sizes=(1, 1, 1, 1), num_filters=8, image_size=64),
        data=DataConfig(synthetic_train=96, synthetic_validation=32, worker_count=0),
        optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4, warmup_steps=2),
        augmentation=dataclasses.replace(AugmentationConfig(), noise_std=1.0),
        batch_size=16,
        eval_batch_size=16,
        steps=20,
        log_every=1,
        eval_every=10,
        checkpoint_every=10,
        keep_checkpoints=2,
    )
