"""ImageNet initialisation: a torchvision/timm ResNet state dict → the Flax ResNet's variables.

torchvision's ``resnet50`` and timm's ``resnet50`` checkpoints share one naming
scheme (``conv1``, ``bn1``, ``layer{1..4}.{j}.conv{1,2,3}`` / ``bn{1,2,3}``,
``layer{i}.0.downsample.{0,1}``, ``fc``) and the architecture of
:class:`regressor.models.ResNetRegressor` (ResNet "v1.5", symmetric padding),
so a state dict maps onto the Flax variables tensor by tensor:

| PyTorch | Flax |
|---|---|
| ``conv1.weight (O, I, kh, kw)`` | ``params/conv_init/kernel (kh, kw, I, O)`` |
| ``bn1.weight``, ``bias`` | ``params/bn_init/scale``, ``bias`` |
| ``bn1.running_mean``, ``running_var`` | ``batch_stats/bn_init/mean``, ``var`` |
| ``layer{i+1}.{j}.conv{c+1}``, ``bn{c+1}`` | ``BottleneckBlock_{k}/Conv_{c}``, ``BatchNorm_{c}`` |
| ``layer{i+1}.0.downsample.0``, ``.1`` | ``BottleneckBlock_{k}/conv_proj``, ``norm_proj`` |
| ``fc.weight (n, 2048)``, ``fc.bias`` | ``params/head/kernel (2048, n)``, ``bias`` |

with ``k`` the block's index counted over all stages. The ``fc`` classifier is
converted only when the model's head has its shape (a 1000-way model); a
regression head keeps its initial value (zero kernel, the model's
``head_bias_init`` bias). ``num_batches_tracked`` counters are not needed
(batch norm here uses a fixed momentum). Every other tensor must be used
exactly once: missing and unexpected keys and shape mismatches raise one
``ValueError`` naming all of them.

Reading ``.pth``/``.pt`` files needs PyTorch (``pip install 'deepexp3d[torch]'``);
``.npz`` files and in-memory dicts of NumPy arrays do not.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from regressor.models import ResNetRegressor

__all__ = ["ConvertedResNet", "load_torch_state_dict", "convert_torch_resnet", "imagenet_variables"]

_IGNORED_SUFFIX = ".num_batches_tracked"
_WRAPPER_KEYS = ("state_dict", "model", "module")


@dataclasses.dataclass(frozen=True)
class ConvertedResNet:
    """The result of :func:`convert_torch_resnet`.

    Attributes:
      variables: ``{"params", "batch_stats"}`` of the Flax model, float32 NumPy arrays.
      head_converted: whether ``fc`` became the model's head.
      ignored_keys: state-dict keys not used (``num_batches_tracked``, and ``fc.*``
        when the head was not converted).
    """

    variables: dict
    head_converted: bool
    ignored_keys: tuple[str, ...]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly half precision or on a GPU
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _unwrap(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    # Training checkpoints nest the weights ({"state_dict": ...}, {"model": ...});
    # DataParallel prefixes every key with "module.".
    for key in _WRAPPER_KEYS:
        if key in state and isinstance(state[key], Mapping):
            return _unwrap(state[key], source)
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{source}: expected a non-empty mapping of tensor names to tensors")
    keys = list(state)
    if all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ResNet state dict from a ``.pth``/``.pt`` (PyTorch) or ``.npz`` file.

    PyTorch files are read with ``torch.load(..., weights_only=True)`` (no code
    runs); a checkpoint that nests the weights under ``"state_dict"`` or
    ``"model"``, or prefixes them with ``"module."``, is unwrapped. Floating
    tensors come back as float32.

    Args:
      path: the file.

    Returns:
      ``{name: array}``.

    Raises:
      FileNotFoundError: the file does not exist.
      ImportError: a PyTorch file without PyTorch installed.
      ValueError: the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            state = {k: archive[k] for k in archive.files}
    else:
        try:
            import torch
        except ImportError as error:
            raise ImportError(f"{path}: reading PyTorch weights needs torch: pip install 'deepexp3d[torch]'") \
                from error
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a PyTorch state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k: _to_numpy(v) for k, v in _unwrap(state, str(path)).items()}


def _abstract_variables(model: ResNetRegressor) -> dict:
    # Parameter shapes do not depend on the input size; 32×32 is the smallest a 5-stage ResNet takes.
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))


def _torch_names(model: ResNetRegressor) -> dict[tuple[str, ...], str]:
    """Flax module path → torch module prefix, for every convolution and batch norm."""
    names = {("conv_init",): "conv1", ("bn_init",): "bn1"}
    k = 0
    for i, count in enumerate(model.stage_sizes):
        for j in range(count):
            flax_block, torch_block = f"BottleneckBlock_{k}", f"layer{i + 1}.{j}"
            for c in range(3):
                names[(flax_block, f"Conv_{c}")] = f"{torch_block}.conv{c + 1}"
                names[(flax_block, f"BatchNorm_{c}")] = f"{torch_block}.bn{c + 1}"
            names[(flax_block, "conv_proj")] = f"{torch_block}.downsample.0"
            names[(flax_block, "norm_proj")] = f"{torch_block}.downsample.1"
            k += 1
    return names


def convert_torch_resnet(
    state_dict: Mapping[str, Any], model: ResNetRegressor, *, head: str = "auto"
) -> ConvertedResNet:
    """Convert a torchvision/timm ResNet state dict into ``model``'s variables.

    Args:
      state_dict: ``{name: tensor}`` (torch tensors or NumPy arrays), torchvision naming.
      model: the Flax network; its ``stage_sizes`` and ``num_filters`` must match the
        checkpoint (ResNet-50: ``(3, 4, 6, 3)`` and 64).
      head: ``"auto"`` converts ``fc`` when its shape matches the model's head and
        ignores it otherwise; ``"drop"`` always ignores it; ``"convert"`` requires it.

    Returns:
      :class:`ConvertedResNet`.

    Raises:
      ValueError: naming every missing key, unexpected key and shape mismatch.

    Examples:
      >>> import numpy as np
      >>> from regressor.models import ResNetRegressor
      >>> model = ResNetRegressor(n_outputs=3, stage_sizes=(1,), num_filters=2)
      >>> rng = np.random.default_rng(0)
      >>> state = {"conv1.weight": rng.normal(size=(2, 3, 7, 7)), "layer1.0.downsample.0.weight": rng.normal(
      ...     size=(8, 2, 1, 1))}
      >>> for c, (o, i, k) in enumerate([(2, 2, 1), (2, 2, 3), (8, 2, 1)], 1):
      ...     state[f"layer1.0.conv{c}.weight"] = rng.normal(size=(o, i, k, k))
      >>> for name, n in [("bn1", 2), ("layer1.0.bn1", 2), ("layer1.0.bn2", 2), ("layer1.0.bn3", 8),
      ...                 ("layer1.0.downsample.1", 8)]:
      ...     for field in ("weight", "bias", "running_mean", "running_var"):
      ...         state[f"{name}.{field}"] = np.ones(n)
      >>> converted = convert_torch_resnet(state, model)
      >>> converted.variables["params"]["conv_init"]["kernel"].shape, converted.head_converted
      ((7, 7, 3, 2), False)
    """
    if head not in ("auto", "drop", "convert"):
        raise ValueError(f"head: expected 'auto', 'drop' or 'convert', got {head!r}")
    state = {k: _to_numpy(v) for k, v in _unwrap(state_dict, "state_dict").items()}
    abstract = _abstract_variables(model)
    params: dict = {}
    batch_stats: dict = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []

    def take(key: str, shape: tuple[int, ...], transform=lambda a: a) -> np.ndarray | None:
        if key not in state:
            missing.append(key)
            return None
        used.add(key)
        value = transform(np.asarray(state[key], np.float32))
        if value.shape != tuple(shape):
            mismatched.append(f"{key}: {tuple(state[key].shape)} gives {value.shape}, the model needs {tuple(shape)}")
            return None
        return value

    def put(tree: dict, path: tuple[str, ...], leaf: str, value: np.ndarray | None) -> None:
        if value is None:
            return
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def node_of(tree: dict, path: tuple[str, ...]) -> dict | None:
        for part in path:
            if not isinstance(tree, Mapping) or part not in tree:
                return None
            tree = tree[part]
        return tree

    for path, prefix in _torch_names(model).items():
        shapes = node_of(abstract["params"], path)
        if shapes is None:  # a projection the model does not have (identity shortcut)
            continue
        if "kernel" in shapes:
            put(params, path, "kernel", take(f"{prefix}.weight", shapes["kernel"].shape,
                                             lambda w: np.transpose(w, (2, 3, 1, 0))))  # OIHW → HWIO
        else:
            stats = node_of(abstract["batch_stats"], path)
            put(params, path, "scale", take(f"{prefix}.weight", shapes["scale"].shape))
            put(params, path, "bias", take(f"{prefix}.bias", shapes["bias"].shape))
            put(batch_stats, path, "mean", take(f"{prefix}.running_mean", stats["mean"].shape))
            put(batch_stats, path, "var", take(f"{prefix}.running_var", stats["var"].shape))

    head_shapes = abstract["params"]["head"]
    kernel_shape, bias_shape = tuple(head_shapes["kernel"].shape), tuple(head_shapes["bias"].shape)
    has_fc = "fc.weight" in state and "fc.bias" in state
    fc_fits = has_fc and tuple(state["fc.weight"].shape[::-1]) == kernel_shape and \
        tuple(state["fc.bias"].shape) == bias_shape
    head_converted = head == "convert" or (head == "auto" and fc_fits)
    if head_converted:
        put(params, ("head",), "kernel", take("fc.weight", kernel_shape, np.transpose))
        put(params, ("head",), "bias", take("fc.bias", bias_shape))
    else:
        # The model's own initial head (models.py: zero kernel, head_bias_init bias).
        params["head"] = {
            "kernel": np.zeros(kernel_shape, np.float32),
            "bias": np.asarray(model.head_bias_init(jax.random.key(0), bias_shape, jnp.float32), np.float32),
        }

    ignored = sorted(k for k in state if k not in used and
                     (k.endswith(_IGNORED_SUFFIX) or (not head_converted and re.fullmatch(r"fc\.(weight|bias)", k))))
    unexpected = sorted(k for k in state if k not in used and k not in ignored)
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(
            f"state_dict does not fit ResNetRegressor(stage_sizes={tuple(model.stage_sizes)}, "
            f"num_filters={model.num_filters}, n_outputs={model.n_outputs}): " + "; ".join(problems)
        )
    variables = {"params": params, "batch_stats": batch_stats}
    # Every leaf of the model is filled, with its shape (the mapping covers the architecture).
    if _leaf_shapes(abstract) != _leaf_shapes(variables):
        raise ValueError("state_dict: the converted variables do not cover the model (internal mapping error)")
    return ConvertedResNet(variables=variables, head_converted=head_converted, ignored_keys=tuple(ignored))


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def imagenet_variables(
    source: str | os.PathLike | Mapping[str, Any], model: ResNetRegressor, *, head: str = "auto"
) -> ConvertedResNet:
    """:func:`convert_torch_resnet` of a file (:func:`load_torch_state_dict`) or an in-memory state dict.

    Args:
      source: a ``.pth``/``.pt``/``.npz`` path, or ``{name: tensor}``.
      model: the Flax network.
      head: see :func:`convert_torch_resnet`.
    """
    if isinstance(source, Mapping):
        return convert_torch_resnet(source, model, head=head)
    try:
        return convert_torch_resnet(load_torch_state_dict(source), model, head=head)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
