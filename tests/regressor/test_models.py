"""The ResNet-50 regressor: parameter count against torchvision's, head, dtypes, normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from regressor.models import ResNetRegressor, count_parameters, resnet50_regressor

# torchvision.models.resnet50(): 25,557,032 parameters with its 1000-way classifier
# (the figure on torchvision's model page, "25.6M"); batch-norm running
# statistics are buffers there and batch_stats here, counted by neither.
TORCHVISION_RESNET50_PARAMETERS = 25_557_032


def _shapes(model, size=224) -> dict:
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_resnet50_has_torchvisions_parameter_count_and_an_n_e_head():
    classifier = _shapes(ResNetRegressor(n_outputs=1000))
    assert count_parameters(classifier["params"]) == TORCHVISION_RESNET50_PARAMETERS
    # Replacing the 2048 -> 1000 classifier by a 2048 -> 28 regressor.
    expected_28 = TORCHVISION_RESNET50_PARAMETERS - (2048 * 1000 + 1000) + (2048 * 28 + 28)
    shapes = _shapes(resnet50_regressor(28))
    assert count_parameters(shapes["params"]) == expected_28 == 23_565_404
    # Mean and variance of every batch-norm channel, the same for both heads.
    assert count_parameters(shapes["batch_stats"]) == count_parameters(classifier["batch_stats"]) == 53_120
    assert shapes["params"]["head"]["kernel"].shape == (2048, 28)
    convolutions = [path for path, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
                    if "Conv" in jax.tree_util.keystr(path) or "conv" in jax.tree_util.keystr(path)]
    assert len(convolutions) == 53  # 1 stem + 16 blocks x 3 + 4 projections


def _jitted(model):
    # Whole-model programs (eager op-by-op dispatch would compile every layer
    # separately); the tests use rbg keys, whose initialisers compile fastest on CPU.
    return jax.jit(model.init), jax.jit(model.apply, static_argnames=("train", "mutable"))


def test_tiny_model_output_dtype_normalisation_and_initial_head():
    model = ResNetRegressor(n_outputs=7, stage_sizes=(1,), num_filters=4)
    init, apply = _jitted(model)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    variables = init(jax.random.key(1, impl="rbg"), images)
    # The zero head predicts its bias (zero here) before training (a non-zero bias:
    # test_train's weighted-loss test).
    assert np.array_equal(np.asarray(apply(variables, images)), np.zeros((3, 7), np.float32))
    # A non-zero head: uint8 and float input agree; bf16 compute stays close and returns float32.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["head"]["kernel"] = np.random.default_rng(2).standard_normal(params["head"]["kernel"].shape, np.float32)
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    out = np.asarray(apply(variables, images))
    assert out.shape == (3, 7) and out.dtype == np.float32 and np.abs(out).max() > 0
    assert np.allclose(apply(variables, images.astype(np.float32)), out)
    bf16 = ResNetRegressor(n_outputs=7, stage_sizes=(1,), num_filters=4, dtype=jnp.bfloat16)
    out_bf16 = np.asarray(_jitted(bf16)[1](variables, images))
    assert out_bf16.dtype == np.float32
    assert np.abs(out_bf16 - out).max() < 0.05 * np.abs(out).max()
    # Train mode uses batch statistics and returns updated running averages.
    _, updates = apply(variables, images, train=True, mutable=("batch_stats",))
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
