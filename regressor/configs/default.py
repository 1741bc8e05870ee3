"""The paper's training run, and the configuration types every run is built from.

A run is fully described by one :class:`TrainConfig` (frozen dataclasses, no
ml_collections): :func:`get_config` here is the paper's setting — ResNet-50 on
224×224 template-aligned crops regressing the n_e = 28 orthonormal ICT
expression coefficients with an L2 loss. The paper gives no optimiser settings;
these are a standard from-scratch ResNet-50 recipe (AdamW with linear warm-up
and cosine decay, decoupled weight decay on kernels only, global-norm
clipping), to be tuned at scale.

Other configs import these types and change fields with
``dataclasses.replace``; :func:`override` applies dotted ``"section.field=value"``
overrides, :func:`to_dict`/:func:`from_dict` round-trip through JSON (the
training loop stores ``config.json`` in its working directory).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

__all__ = [
    "ModelConfig",
    "AugmentationConfig",
    "DataConfig",
    "OptimizerConfig",
    "TrainConfig",
    "get_config",
    "to_dict",
    "from_dict",
    "override",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network (:class:`regressor.models.ResNetRegressor`).

    Attributes:
      n_outputs: ``n_e`` (must equal the shards' expression size).
      stage_sizes: bottleneck blocks per stage, ``(3, 4, 6, 3)`` = ResNet-50.
      num_filters: base width (64 = ResNet-50).
      dtype: ``"float32"`` or ``"bfloat16"`` (trunk compute; accelerators).
      image_size: network input side, pixels; the 224 crops are resized when it differs.
    """

    n_outputs: int = 28
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    num_filters: int = 64
    dtype: str = "float32"
    image_size: int = 224


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Training augmentation; every option leaves the expression target valid.

    Geometric jitter is a small similarity about the crop centre (it imitates
    alignment error from noisy landmarks; the 3D expression does not change
    under a 2D similarity); photometric jitter changes only colours.
    Horizontal flipping is **not** offered: a mirrored face has the mirrored
    expression, and the 28 orthonormal components are mixtures of ICT's
    left/right blendshapes whose mirror image is not, in general, inside the
    28-dimensional subspace — so no exact target exists for a flipped crop.

    Attributes:
      enabled: apply augmentation at all (evaluation never does).
      translate: maximum shift, fraction of the crop side (uniform per axis).
      scale: maximum relative zoom (uniform in ``[1 − scale, 1 + scale]``).
      rotate_degrees: maximum in-plane rotation.
      brightness: maximum additive brightness change, fraction of 255.
      contrast: maximum relative contrast change about the mean grey level.
      saturation: maximum relative saturation change.
      color_gain: maximum per-channel relative gain (white-balance jitter).
      grayscale_probability: probability of converting to grey (3 channels kept).
      blur_probability: probability of a Gaussian blur (σ ∈ [0.3, 1.5] px).
      noise_std: maximum std of additive Gaussian pixel noise, grey levels.
    """

    enabled: bool = True
    translate: float = 0.03
    scale: float = 0.05
    rotate_degrees: float = 5.0
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.2
    color_gain: float = 0.05
    grayscale_probability: float = 0.05
    blur_probability: float = 0.1
    noise_std: float = 3.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how they are read.

    Attributes:
      train, validation: shard directories or directories of shards
        (:class:`fitting.shards.ShardDataset`); when given they win over
        ``annotation_dir``.
      annotation_dir: output folder of the annotation pipeline
        (:func:`fitting.annotate.annotate`): the shards of the videos its
        ``splits.json`` assigns to ``train_split`` / ``validation_split``.
      train_split, validation_split: split names in ``splits.json``.
      synthetic_train, synthetic_validation: with neither ``train`` nor ``annotation_dir``, render this
        many synthetic faces (:mod:`regressor.synthetic`) into
        ``WORKDIR/synthetic/{train,validation}`` first (once; reused on resume).
      synthetic_seed: seed of those renders (validation uses ``seed + 1``).
      synthetic_workers: processes rendering them (0 = all CPUs).
      model_cache_dir: cache folder for the ICT model the renderer loads (None = default).
      worker_count: grain worker processes decoding/augmenting (0 = in-process).
      worker_buffer_size: batches each worker prepares ahead.
    """

    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    annotation_dir: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    synthetic_train: int = 0
    synthetic_validation: int = 0
    synthetic_seed: int = 0
    synthetic_workers: int = 0
    model_cache_dir: str | None = None
    worker_count: int = 8
    worker_buffer_size: int = 2


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine decay to ``final_fraction``).

    Attributes:
      name: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
      learning_rate: peak learning rate.
      momentum: SGD momentum (ignored by AdamW).
      weight_decay: decoupled weight decay on convolution/dense kernels
        (biases and batch-norm parameters are not decayed).
      warmup_steps: linear warm-up length.
      final_fraction: final learning rate as a fraction of the peak.
      gradient_clip_norm: global-norm clipping threshold (0 disables).
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_steps: int = 1_000
    final_fraction: float = 0.0
    gradient_clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
      name: run name (default working directory ``runs/<name>``).
      model, data, optimizer, augmentation: the sections above.
      batch_size: global batch size over all devices and hosts (divisible by the device count).
      eval_batch_size: batch size of evaluation (padded at the end; divisible by the device count).
      steps: total optimisation steps (the schedule's length).
      log_every: steps between training-metric rows.
      eval_every: steps between validation evaluations (and at the end).
      checkpoint_every: steps between checkpoints (and at the end).
      keep_checkpoints: checkpoints kept on disk.
      seed: parameter initialisation and data order/augmentation seed.
      uncertainty_weighting: weight each squared error by
        ``floor² / (floor² + u²)`` with ``u`` the shard's per-coefficient fit
        uncertainty, so coefficients the fitter could not pin down count less.
      uncertainty_floor: ``floor`` above, in coefficient units.
      head_bias_from_data: start the head's bias at the training targets' mean
        (the first predictions are then the predict-the-mean baseline).
      init_checkpoint: fine-tuning: a run directory (or its ``checkpoints/<step>``)
        whose parameters and batch statistics initialise this run; the optimiser
        and step start fresh (the paper fine-tunes on 4DFAB this way).
      init_imagenet: ImageNet initialisation: a torchvision/timm ResNet state dict
        (``.pth``/``.pt``, or ``.npz`` of arrays with the same names) whose
        convolutions and batch norms initialise the trunk
        (:mod:`regressor.imagenet`); the regression head starts as usual. The
        architecture must match the checkpoint (ResNet-50: the default model).
        Not combinable with ``init_checkpoint``.
    """

    name: str = "default"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    batch_size: int = 256
    eval_batch_size: int = 256
    steps: int = 100_000
    log_every: int = 100
    eval_every: int = 5_000
    checkpoint_every: int = 1_000
    keep_checkpoints: int = 3
    seed: int = 0
    uncertainty_weighting: bool = False
    uncertainty_floor: float = 0.1
    head_bias_from_data: bool = True
    init_checkpoint: str | None = None
    init_imagenet: str | None = None


def get_config() -> TrainConfig:
    """The paper's run: ResNet-50, 224×224, n_e = 28, on the annotation pipeline's shards.

    ``data.annotation_dir`` is a placeholder for the annotation output folder;
    set it with :func:`override` (``"data.annotation_dir=..."``).
    """
    return TrainConfig(name="default", data=DataConfig(annotation_dir="data/annotations"))


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig, "augmentation": AugmentationConfig}


def to_dict(config: TrainConfig) -> dict:
    """Nested plain dict (JSON-serialisable) of a config."""
    return dataclasses.asdict(config)


def _coerce(name: str, field_type: Any, value: Any) -> Any:
    """``value`` checked against a field's annotation (a string: ``int``, ``str | None``, ``tuple[int, ...]``…).

    Lists become tuples and ints become floats where a float is expected; a value
    of the wrong kind raises ``ValueError`` naming the field.
    """
    text = str(field_type).replace(" ", "")
    if text.endswith("|None"):
        return None if value is None else _coerce(name, text[: -len("|None")], value)
    if text.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config.{name}: expected a list, got {value!r}")
        inner = text[len("tuple["):-1].split(",")
        element = inner[0] if inner[-1] == "..." else None
        if element is None and len(inner) != len(value):
            raise ValueError(f"config.{name}: expected {len(inner)} values, got {value!r}")
        return tuple(_coerce(f"{name}[{k}]", element or inner[k], v) for k, v in enumerate(value))
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
    if text in kinds:
        if not isinstance(value, kinds[text]) or (text != "bool" and isinstance(value, bool)):
            raise ValueError(f"config.{name}: expected {text}, got {value!r}")
        return float(value) if text == "float" else value
    return value


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict`; unknown keys raise ``ValueError``.

    Examples:
      >>> from_dict(to_dict(get_config())) == get_config()
      True
    """
    values = {}
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"config: unknown field {key!r}")
        if key in _SECTIONS:
            section = _SECTIONS[key]
            fields = {f.name: f for f in dataclasses.fields(section)}
            if not isinstance(value, Mapping):
                raise ValueError(f"config.{key}: expected a section (mapping), got {value!r}")
            unknown = set(value) - set(fields)
            if unknown:
                raise ValueError(f"config.{key}: unknown field(s) {sorted(unknown)}")
            values[key] = section(**{k: _coerce(f"{key}.{k}", fields[k].type, v) for k, v in value.items()})
        else:
            values[key] = _coerce(key, known[key].type, value)
    return TrainConfig(**values)


def override(config: TrainConfig, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """Copy of ``config`` with dotted fields replaced, e.g. ``{"optimizer.learning_rate": 0.1}``.

    String values (as from a command line) are parsed as JSON when they parse,
    so ``"steps=10"`` gives an int and ``'data.train=["a", "b"]'`` a tuple; a
    text field keeps the string as given (``"name=2024"`` is the name ``"2024"``),
    ``null`` clears an optional field. Values of the wrong kind raise ``ValueError``.

    Examples:
      >>> override(get_config(), {"optimizer.learning_rate": "0.1", "steps": 10}).optimizer.learning_rate
      0.1
    """
    data = to_dict(config)
    for key, value in {**(overrides or {}), **kwargs}.items():
        parts = key.split(".")
        target = data
        for part in parts[:-1]:
            if part not in target or not isinstance(target[part], dict):
                raise ValueError(f"override: unknown section {part!r} in {key!r}")
            target = target[part]
        if parts[-1] not in target:
            raise ValueError(f"override: unknown field {key!r}")
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            text_field = _field_type(parts).replace(" ", "").removesuffix("|None") == "str"
            value = value if text_field and not (parsed is None or isinstance(parsed, str)) else parsed
        target[parts[-1]] = value
    return from_dict(data)


def _field_type(parts: list[str]) -> str:
    """The annotation (a string) of a dotted field of :class:`TrainConfig`."""
    owner = _SECTIONS[parts[0]] if len(parts) == 2 else TrainConfig
    return str({f.name: f.type for f in dataclasses.fields(owner)}[parts[-1]])
