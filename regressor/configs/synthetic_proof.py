"""The learning proof on synthetic renders, sized for a 2-core CPU (about ten minutes of training).

A four-block, 16-filter bottleneck ResNet on 96×96 inputs (the 224 crops
resized), trained on a few thousand renders of :mod:`regressor.synthetic` and
evaluated on held-out renders against the predict-the-mean baseline; run by
``benchmarks/regressor_learning.py``, which points ``data.train`` /
``data.validation`` at the rendered shards. On an accelerator, use ``default``
(ResNet-50, 224×224) with more renders instead.
"""

from __future__ import annotations

from regressor.configs.default import AugmentationConfig, DataConfig, ModelConfig, OptimizerConfig, TrainConfig


def get_config() -> TrainConfig:
    """The learning-proof configuration (renders 3,000 + 500 faces when no shards are given)."""
    return TrainConfig(
        name="synthetic_proof",
        model=ModelConfig(stage_sizes=(1, 1, 1, 1), num_filters=16, image_size=96),
        data=DataConfig(synthetic_train=3000, synthetic_validation=500, worker_count=1, worker_buffer_size=4),
        optimizer=OptimizerConfig(name="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_steps=100,
                                  gradient_clip_norm=1.0),
        augmentation=AugmentationConfig(translate=0.02, scale=0.03, rotate_degrees=3.0, noise_std=2.0),
        batch_size=32,
        eval_batch_size=100,
        steps=2000,
        log_every=50,
        eval_every=500,
        checkpoint_every=250,
        keep_checkpoints=2,
    )
