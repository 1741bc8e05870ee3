"""DeepExp3D's network: a Flax (linen) ResNet-50 with an ``n_e``-way linear regression head.

The architecture is torchvision's ResNet-50 "v1.5" (the stride of a
downsampling bottleneck sits on its 3×3 convolution), written as the flax
``examples/imagenet`` ResNet but with torchvision's symmetric padding of the
strided 3×3 convolutions and of the max-pool (flax's example pads them
``"SAME"``, i.e. (0, 1) on even inputs), so that torchvision/timm ImageNet
weights (:mod:`regressor.imagenet`) reproduce torchvision's outputs. The
1000-way classifier is replaced by a linear layer of ``n_e`` outputs (paper
§III-C: 28). With the standard stages (3, 4, 6, 3) and 64 base filters it has
25,557,032 parameters with a 1000-way head — exactly torchvision's
``resnet50`` — and 23,565,404 with a 28-way head (the head shrinks from
2048·1000 + 1000 to 2048·28 + 28). Batch-norm running statistics
are in the ``batch_stats`` collection, not counted as parameters (torchvision's
buffers are not either).

Input: ``(B, H, W, 3)`` RGB aligned crops, uint8 or float in [0, 255]; the
ImageNet mean/std normalisation happens inside the model so training and
inference cannot disagree on it. Output: ``(B, n_e) float32`` expression
coefficients. ``dtype=jnp.bfloat16`` runs convolutions and batch norm in
bfloat16 on accelerators with float32 parameters; the head and the output stay
float32 because the targets are small real numbers (paper MSE 0.007).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "BottleneckBlock",
    "ResNetRegressor",
    "resnet50_regressor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET50_STAGES",
    "count_parameters",
]

ModuleDef = Any

RESNET50_STAGES = (3, 4, 6, 3)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class BottleneckBlock(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (strided) → 1×1 (4× filters), projection shortcut when shapes change.

    Attributes:
      filters: width of the two inner convolutions (output has ``4·filters`` channels).
      conv, norm: convolution and batch-norm constructors (dtype and train mode bound).
      activation: non-linearity.
      strides: stride of the 3×3 convolution and of the projection.
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    activation: Callable = nn.relu
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.activation(self.norm()(y))
        # Symmetric padding, as torchvision: "SAME" would pad a strided 3×3 convolution
        # of an even-sized input by (0, 1), shifting every window by a pixel.
        y = self.conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(y)
        y = self.activation(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        # Zero-initialised last scale: each block starts as the identity, which
        # lets deep ResNets train from the first step (Goyal et al. 2017).
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.activation(residual + y)


class ResNetRegressor(nn.Module):
    """ResNet with bottleneck stages and a linear regression head.

    Attributes:
      n_outputs: ``n_e`` (paper: 28).
      stage_sizes: blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
      num_filters: base width (64 for ResNet-50; small values for tests).
      dtype: computation dtype of the trunk (``jnp.float32`` or ``jnp.bfloat16``).
      head_bias_init: initial value of the head's bias (e.g. the training
        targets' mean, so the first predictions are the predict-the-mean baseline).
    """

    n_outputs: int = 28
    stage_sizes: Sequence[int] = RESNET50_STAGES
    num_filters: int = 64
    dtype: Any = jnp.float32
    head_bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """``(B, H, W, 3)`` RGB in [0, 255] → ``(B, n_outputs) float32``.

        ``train=True`` uses batch statistics and updates ``batch_stats`` (pass
        ``mutable=["batch_stats"]``); ``train=False`` uses the running averages.
        """
        x = (jnp.asarray(images, jnp.float32) - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = x.astype(self.dtype)
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        # Symmetric (−∞) padding, as torchvision's MaxPool2d(3, 2, padding=1); see BottleneckBlock.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, block_count in enumerate(self.stage_sizes):
            for j in range(block_count):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = BottleneckBlock(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
        # Global average pooling in float32: a mean over 49 positions loses bits in bf16.
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # A zero head starts every run at its bias (with the targets' mean as bias:
        # exactly the predict-the-mean baseline); the trunk gets gradients from step 2 on.
        head = nn.Dense(self.n_outputs, dtype=jnp.float32, kernel_init=nn.initializers.zeros_init(),
                        bias_init=self.head_bias_init, name="head")
        return head(features)


def resnet50_regressor(n_outputs: int = 28, *, dtype=jnp.float32, head_bias=None) -> ResNetRegressor:
    """The paper's network: ResNet-50 with an ``n_outputs``-way linear head.

    Args:
      n_outputs: ``n_e``.
      dtype: trunk computation dtype.
      head_bias: optional ``(n_outputs,)`` initial head bias.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> model = resnet50_regressor(28)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
      >>> count_parameters(shapes["params"])
      23565404
    """
    init = nn.initializers.zeros_init() if head_bias is None else _constant_init(head_bias)
    return ResNetRegressor(n_outputs=n_outputs, stage_sizes=RESNET50_STAGES, num_filters=64, dtype=dtype,
                           head_bias_init=init)


def _constant_init(value) -> Callable:
    value = np.asarray(value, np.float32)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != value.shape:
            raise ValueError(f"head_bias: expected shape {tuple(shape)}, got {value.shape}")
        return jnp.asarray(value, dtype)

    return init


def count_parameters(params) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``ShapeDtypeStruct``s)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
