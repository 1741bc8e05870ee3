"""Training DeepExp3D: L2 regression of the expression vector, data-parallel, resumable.

One run = one :class:`regressor.configs.default.TrainConfig` and one working
directory::

    WORKDIR/config.json            the config (a run is fully described by it)
    WORKDIR/dataset.json           expression basis id and names, template (for inference)
    WORKDIR/checkpoints/<step>/    orbax checkpoints: train state + grain iterator state
    WORKDIR/train_metrics.csv      step, loss, mse, grad_norm, learning_rate, images_per_second,
                                   elapsed_seconds (since this invocation started)
    WORKDIR/eval_metrics.csv       step, split, count, mse, baseline_mse, mse_<component>…
    WORKDIR/synthetic/             renders, when the config asks for synthetic data

**Loss.** ``mean_{b,k} w_bk (ŷ_bk − y_bk)²`` — the paper's L2 loss on the
coefficients, with ``w = 1`` or, with ``uncertainty_weighting``, the
per-coefficient weights of :func:`regressor.input_pipeline.loss_weights`.
**Optimiser.** optax AdamW or SGD + Nesterov momentum with linear warm-up and
cosine decay, decoupled weight decay on kernels only, global-norm clipping.

**Initialisation.** Random (the head's bias at the training targets' mean),
another run's checkpoint (``init_checkpoint``, fine-tuning) or a
torchvision/timm ImageNet ResNet (``init_imagenet``, :mod:`regressor.imagenet`);
see :func:`initial_variables`.

**Resumption.** Every ``checkpoint_every`` steps orbax saves the full train
state (step, parameters, batch statistics, optimiser state) and the grain
iterator's position. Saves are atomic (orbax writes a temporary directory and
renames it), so a run killed at any moment restarts from its last complete
checkpoint with bit-identical parameters, optimiser state and data order, and
continues exactly as the uninterrupted run would have. Metric rows written
after that checkpoint are dropped on resume.

**Data parallelism.** A 1-D mesh over all devices (axis ``"data"``): the batch
is sharded along its first dimension, parameters and optimiser state are
replicated, and ``jax.jit`` inserts the gradient all-reduce (batch-norm
statistics are computed over the global batch, so the result does not depend
on the device count up to floating-point summation order). ``batch_size`` is
the global batch and must divide by the device count.

**Multiple hosts.** Start the same program on every host and call
``jax.distributed.initialize()`` (coordinator address, process count and id —
automatic on Cloud TPU and SLURM) before anything else touches JAX; then
``jax.devices()`` lists every host's devices and the mesh spans them. Each
process reads a disjoint part of the shards (grain ``ShardByJaxProcess``),
builds its ``batch_size / process_count`` slice and
``jax.make_array_from_process_local_data`` assembles the global batch; orbax
writes one checkpoint collectively (the data iterator state per process). The
working directory must be on a file system all hosts share; synthetic data
generation is single-host only. Evaluation splits the validation frames across
processes the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fitting.shards import ShardDataset
from regressor.configs.default import ModelConfig, OptimizerConfig, TrainConfig, to_dict
from regressor.input_pipeline import annotation_shards, eval_batches, train_loader
from regressor.models import ResNetRegressor

__all__ = [
    "TrainState",
    "TrainResult",
    "create_model",
    "make_schedule",
    "make_optimizer",
    "make_mesh",
    "create_train_state",
    "train_step",
    "make_train_step",
    "make_eval_step",
    "shard_batch",
    "evaluate",
    "load_variables",
    "initial_variables",
    "flatten_parameters",
    "train",
]

logger = logging.getLogger(__name__)

_TRAIN_FIELDS = ("step", "loss", "mse", "grad_norm", "learning_rate", "images_per_second", "elapsed_seconds")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` (step, params, optimiser state) plus the batch-norm statistics."""

    batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      workdir: the run directory.
      step: the step reached.
      state: the final :class:`TrainState` (replicated on the mesh).
      train_metrics: the last logged training row (dict), or None.
      eval_metrics: the last evaluation (see :func:`evaluate`), or None.
      resumed_from: the checkpoint step the run restarted from (None for a fresh run).
    """

    workdir: Path
    step: int
    state: TrainState
    train_metrics: dict | None
    eval_metrics: dict | None
    resumed_from: int | None


@functools.lru_cache(maxsize=16)
def create_model(model_config: ModelConfig) -> ResNetRegressor:
    """The network of a :class:`ModelConfig` (head bias zero; :func:`create_train_state` sets it).

    Cached per (hashable, frozen) config so that every run of one process shares
    one module object, hence one compiled step function.
    """
    if model_config.dtype not in _DTYPES:
        raise ValueError(f"model.dtype: expected one of {sorted(_DTYPES)}, got {model_config.dtype!r}")
    return ResNetRegressor(
        n_outputs=model_config.n_outputs,
        stage_sizes=tuple(model_config.stage_sizes),
        num_filters=model_config.num_filters,
        dtype=_DTYPES[model_config.dtype],
    )


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then cosine decay to ``final_fraction·peak`` at ``steps``."""
    return _schedule(config.optimizer, config.steps)


@functools.lru_cache(maxsize=16)
def _schedule(opt: OptimizerConfig, steps: int) -> optax.Schedule:
    # Cached so the same configuration gives the same function object (jit caches by identity).
    warmup = min(opt.warmup_steps, max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=opt.learning_rate * opt.final_fraction,
    )


def _decay_mask(params):
    # Decay convolution and dense kernels only: decaying biases and batch-norm
    # scales/offsets only fights the normalisation.
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax chain of ``config.optimizer`` (clipping → AdamW or SGD with decoupled decay)."""
    return _optimizer(config.optimizer, config.steps)


@functools.lru_cache(maxsize=16)
def _optimizer(opt: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    # Cached like create_model: one transformation object per configuration.
    schedule = _schedule(opt, steps)
    parts = []
    if opt.gradient_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.gradient_clip_norm))
    if opt.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=opt.weight_decay, mask=_decay_mask))
    elif opt.name == "sgd":
        parts.append(optax.add_decayed_weights(opt.weight_decay, mask=_decay_mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum, nesterov=True))
    else:
        raise ValueError(f"optimizer.name: expected 'adamw' or 'sgd', got {opt.name!r}")
    return optax.chain(*parts)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def create_train_state(
    config: TrainConfig, seed: int, mesh: jax.sharding.Mesh, *, head_bias=None, variables=None
) -> TrainState:
    """Initialise parameters, batch statistics and optimiser state, replicated over ``mesh``.

    Parameters are drawn with an ``rbg`` PRNG key (XLA's RngBitGenerator): on
    CPU its initialisation program compiles about three times faster than
    threefry's for the ~160 differently-shaped initialisers of a ResNet. The
    state is computed on one device and then replicated, so it does not depend
    on the mesh.

    Args:
      config: the run config.
      seed: parameter initialisation seed.
      mesh: the device mesh.
      head_bias: optional ``(n_e,)`` initial head bias (e.g. the targets' mean).
      variables: optional ``{"params", "batch_stats"}`` to start from (fine-tuning).
    """
    model = create_model(config.model)
    tx = make_optimizer(config)
    bias = jnp.zeros(config.model.n_outputs, jnp.float32) if head_bias is None else jnp.asarray(head_bias, jnp.float32)
    if variables is None:
        state = _initial_state(model, tx, config.model.image_size)(jax.random.key(seed, impl="rbg"), bias)
    else:
        state = _state_from_variables(model, tx)(jax.tree_util.tree_map(jnp.asarray, variables))
    return jax.device_put(state, NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=16)
def _initial_state(model: ResNetRegressor, tx: optax.GradientTransformation, size: int) -> Callable:
    def init(key, bias):
        initial = model.init(key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
        params = dict(initial["params"])
        params["head"] = {**params["head"], "bias": bias}
        state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=initial["batch_stats"])
        # A strongly typed step: a restored checkpoint's step is, and a weak/strong
        # mismatch would compile the train step twice.
        return state.replace(step=jnp.zeros((), jnp.int32))

    return jax.jit(init)


@functools.lru_cache(maxsize=16)
def _state_from_variables(model: ResNetRegressor, tx: optax.GradientTransformation) -> Callable:
    def init(variables):
        state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                  batch_stats=variables["batch_stats"])
        return state.replace(step=jnp.zeros((), jnp.int32))

    return jax.jit(init)


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimisation step on a (global) batch; pure, to be jitted (see :func:`make_train_step`).

    Args:
      state: the train state.
      batch: ``image (B, S, S, 3) uint8``, ``expression (B, n_e)``, ``weight (B, n_e)``.

    Returns:
      ``(new_state, metrics)`` with scalar ``loss`` (weighted), ``mse``
      (unweighted) and ``grad_norm``.
    """

    def loss_fn(params):
        predictions, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        squared = (predictions - batch["expression"]) ** 2
        return jnp.mean(batch["weight"] * squared), (updates["batch_stats"], jnp.mean(squared))

    (loss, (batch_stats, mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state, {"loss": loss, "mse": mse, "grad_norm": optax.tree.norm(grads)}


@functools.lru_cache(maxsize=16)
def make_train_step(mesh: jax.sharding.Mesh, schedule: optax.Schedule | None = None) -> Callable:
    """:func:`train_step` jitted for ``mesh``: batch sharded over ``"data"``, state replicated, state donated.

    With a ``schedule`` the metrics also hold the ``learning_rate`` of the step.
    """
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                   donate_argnums=0)


@functools.lru_cache(maxsize=16)
def make_eval_step(mesh: jax.sharding.Mesh) -> Callable:
    """Jitted ``(state, batch) -> (squared-error sums (n_e,), frame count)`` over the unmasked frames."""
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))

    def step(state, batch):
        predictions = state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
        )
        mask = batch["mask"].astype(jnp.float32)[:, None]
        return jnp.sum(mask * (predictions - batch["expression"]) ** 2, axis=0), jnp.sum(batch["mask"])

    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=replicated)


def shard_batch(batch: dict, mesh: jax.sharding.Mesh, keys=None) -> dict:
    """Assemble this process's batch slice into global arrays sharded over the mesh's ``"data"`` axis.

    Args:
      batch: dict of NumPy arrays with leading dimension ``B_local`` (this process's share).
      mesh: the device mesh.
      keys: the entries to transfer (default: all).

    Returns:
      dict of ``jax.Array`` with leading dimension ``B_local · process_count``.
    """
    sharding = NamedSharding(mesh, P("data"))
    out = {}
    for key in batch if keys is None else keys:
        local = np.asarray(batch[key])
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def evaluate(
    state: TrainState,
    dataset: ShardDataset,
    *,
    batch_size: int,
    image_size: int,
    mesh: jax.sharding.Mesh,
    eval_step: Callable | None = None,
    baseline: np.ndarray | None = None,
) -> dict:
    """Expression MSE of the model on every frame of ``dataset`` (no augmentation).

    Args:
      state: the train state.
      dataset: evaluation shards.
      batch_size: global evaluation batch size (divisible by the device count).
      image_size: network input side.
      mesh: device mesh.
      eval_step: a :func:`make_eval_step` function (made here if None).
      baseline: ``(n_e,)`` constant prediction to compare with (e.g. the
        training targets' mean: the predict-the-mean baseline).

    Returns:
      ``{"count", "mse", "mse_per_component" (n_e,)}`` and, with a baseline,
      ``"baseline_mse"`` and ``"baseline_mse_per_component"``. MSE is averaged
      over frames and components (the paper's metric).
    """
    eval_step = eval_step or make_eval_step(mesh)
    local = batch_size // jax.process_count()
    sums = np.zeros(dataset.n_expression)
    count = 0
    for batch in eval_batches(dataset, batch_size=local, image_size=image_size,
                              process_index=jax.process_index(), process_count=jax.process_count()):
        batch_sums, batch_count = eval_step(state, shard_batch(batch, mesh, ("image", "expression", "mask")))
        sums += np.asarray(batch_sums, np.float64)
        count += int(batch_count)
    per_component = sums / max(count, 1)
    result = {"count": count, "mse": float(per_component.mean()), "mse_per_component": per_component}
    if baseline is not None:
        targets = dataset.column("expression").astype(np.float64)
        base = np.mean((targets - np.asarray(baseline, np.float64)) ** 2, axis=0)
        result["baseline_mse"] = float(base.mean())
        result["baseline_mse_per_component"] = base
    return result


class _CsvLog:
    """Append-only CSV whose rows after a resumed step are dropped first."""

    def __init__(self, path: Path, fields: tuple[str, ...], resume_step: int | None):
        self.path = path
        self.fields = fields
        rows = []
        if path.exists() and resume_step is not None:
            with open(path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        # Rewritten whole (small files): rows after the restored checkpoint
        # belong to the part of the killed run that is being redone.
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})


def _checkpoint_manager(workdir: Path, config: TrainConfig, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def load_variables(run: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
    """``({"params", "batch_stats"}, step)`` of a run's checkpoint (latest when ``step`` is None).

    ``run`` is a run directory (holding ``checkpoints/``) or its ``checkpoints/`` folder.
    Arrays come back as host NumPy arrays; used for inference and fine-tuning.
    """
    run = Path(run)
    directory = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"run: no checkpoint in {directory}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    manager.close()
    return jax.tree_util.tree_map(np.asarray, variables), step


def _check_init(config: TrainConfig) -> None:
    if config.init_checkpoint and config.init_imagenet:
        raise ValueError("config: init_checkpoint and init_imagenet are exclusive; set at most one")


def initial_variables(config: TrainConfig, *, head_bias=None) -> dict | None:
    """The ``{"params", "batch_stats"}`` a fresh run starts from, or None for a random initialisation.

    ``config.init_checkpoint`` (fine-tuning) gives another run's variables as
    they are; ``config.init_imagenet`` gives a converted torchvision/timm ResNet
    (:func:`regressor.imagenet.imagenet_variables`) whose head, unless the
    checkpoint's classifier fits it, is the model's initial head with
    ``head_bias`` as its bias.

    Args:
      config: the run config.
      head_bias: optional ``(n_e,)`` initial head bias (e.g. the training targets' mean).

    Raises:
      ValueError: both sources set, or weights that do not fit ``config.model``.
    """
    _check_init(config)
    if config.init_checkpoint:
        variables, step = load_variables(config.init_checkpoint)
        logger.info("fine-tuning from %s (step %d)", config.init_checkpoint, step)
        return variables
    if config.init_imagenet:
        from regressor.imagenet import imagenet_variables

        converted = imagenet_variables(config.init_imagenet, create_model(config.model))
        variables = converted.variables
        if not converted.head_converted and head_bias is not None:
            head = {**variables["params"]["head"], "bias": np.asarray(head_bias, np.float32)}
            variables = {**variables, "params": {**variables["params"], "head": head}}
        logger.info("initialised the trunk from %s (head %s)", config.init_imagenet,
                    "converted" if converted.head_converted else "new")
        return variables
    return None


def _prepare_data(config: TrainConfig, workdir: Path) -> tuple[ShardDataset, ShardDataset | None]:
    data = config.data
    train_paths, validation_paths = list(data.train), list(data.validation)
    if not train_paths and data.annotation_dir:
        train_paths = [str(p) for p in annotation_shards(data.annotation_dir, data.train_split)]
        if not validation_paths:
            validation_paths = [str(p) for p in annotation_shards(data.annotation_dir, data.validation_split)]
        if not train_paths:
            raise ValueError(f"config.data.annotation_dir: no {data.train_split!r} shards in {data.annotation_dir}")
    if not train_paths:
        if data.synthetic_train <= 0:
            raise ValueError("config.data: give training shards (data.train or data.annotation_dir) or a "
                             "synthetic_train count")
        from regressor.synthetic import load_synthetic_faces, write_synthetic_shards

        faces = load_synthetic_faces(data.model_cache_dir)
        workers = data.synthetic_workers or os.cpu_count() or 1
        root = workdir / "synthetic"
        logger.info("rendering %d + %d synthetic faces into %s", data.synthetic_train, data.synthetic_validation, root)
        write_synthetic_shards(faces, root / "train", data.synthetic_train, seed=data.synthetic_seed, workers=workers)
        train_paths = [str(root / "train")]
        if data.synthetic_validation > 0 and not validation_paths:
            write_synthetic_shards(faces, root / "validation", data.synthetic_validation,
                                   seed=data.synthetic_seed + 1, workers=workers)
            validation_paths = [str(root / "validation")]
    train_set = ShardDataset(train_paths)
    validation_set = ShardDataset(validation_paths, expression_basis=train_set.expression_basis) \
        if validation_paths else None
    if train_set.n_expression != config.model.n_outputs:
        raise ValueError(
            f"config.model.n_outputs = {config.model.n_outputs} but the shards hold {train_set.n_expression} "
            "expression components"
        )
    return train_set, validation_set


def _check_batch(config: TrainConfig, n_devices: int) -> None:
    for name in ("batch_size", "eval_batch_size"):
        value = getattr(config, name)
        if value <= 0 or value % n_devices or value % jax.process_count():
            raise ValueError(f"config.{name} = {value} must be a positive multiple of the device count {n_devices}")


def train(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    stop_at_step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Train (or resume training) a regressor; see the module docstring for the layout.

    Args:
      config: the run.
      workdir: the run directory (created; an existing run is resumed from its
        latest checkpoint).
      stop_at_step: stop after this step **without** a final checkpoint, as if
        killed there (for tests and time-sliced jobs); None runs to ``config.steps``.
      mesh: device mesh (default: all devices, :func:`make_mesh`).

    Returns:
      A :class:`TrainResult`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or make_mesh()
    _check_batch(config, mesh.size)
    _check_init(config)
    config_file = workdir / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()) != json.loads(json.dumps(to_dict(config))):
        logger.warning("%s: the config differs from the one this run started with; continuing with the new one",
                       workdir)
    if jax.process_index() == 0:
        config_file.write_text(json.dumps(to_dict(config), indent=1))
    train_set, validation_set = _prepare_data(config, workdir)
    if jax.process_index() == 0:
        template = train_set.template
        (workdir / "dataset.json").write_text(json.dumps({
            "expression_basis": train_set.expression_basis,
            "expression_names": list(train_set.expression_names),
            "template": None if template is None else template.to_dict(),
            "train_frames": len(train_set),
            "validation_frames": 0 if validation_set is None else len(validation_set),
        }, indent=1))
    # Targets' mean: the head's initial bias and the predict-the-mean baseline.
    target_mean = train_set.column_mean("expression")

    manager = _checkpoint_manager(workdir, config)
    resumed_from = manager.latest_step()
    head_bias = target_mean if config.head_bias_from_data else None
    # A resumed run restores everything from its checkpoint: the initial weights are not read again.
    init_variables = None if resumed_from is not None else initial_variables(config, head_bias=head_bias)
    state = create_train_state(config, config.seed, mesh, head_bias=head_bias, variables=init_variables)

    loader = train_loader(
        train_set,
        batch_size=config.batch_size // jax.process_count(),
        image_size=config.model.image_size,
        augmentation=config.augmentation,
        seed=config.seed,
        uncertainty_floor=config.uncertainty_floor if config.uncertainty_weighting else None,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
    )
    iterator = iter(loader)
    if resumed_from is not None:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(
            resumed_from,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                    data=grain.checkpoint.CheckpointRestore(iterator)),
        )
        state = restored["state"]
        logger.info("resumed %s at step %d", workdir, resumed_from)
    start_step = int(jax.device_get(state.step))

    train_log = _CsvLog(workdir / "train_metrics.csv", _TRAIN_FIELDS, start_step)
    eval_fields = ("step", "split", "count", "mse", "baseline_mse",
                   *(f"mse_{name}" for name in train_set.expression_names))
    eval_log = _CsvLog(workdir / "eval_metrics.csv", eval_fields, start_step)

    step_fn = make_train_step(mesh, _schedule(config.optimizer, config.steps))
    eval_step = make_eval_step(mesh)
    last_train, last_eval = None, None
    final_step = config.steps if stop_at_step is None else min(config.steps, stop_at_step)

    def run_eval(step: int, log: bool = True) -> dict | None:
        if validation_set is None:
            return None
        result = evaluate(state, validation_set, batch_size=config.eval_batch_size,
                          image_size=config.model.image_size, mesh=mesh, eval_step=eval_step, baseline=target_mean)
        if not log:
            return result
        row = {"step": step, "split": "validation", "count": result["count"], "mse": result["mse"],
               "baseline_mse": result["baseline_mse"]}
        row.update({f"mse_{n}": v for n, v in zip(validation_set.expression_names, result["mse_per_component"])})
        if jax.process_index() == 0:
            eval_log.write(row)
        logger.info("step %d: validation MSE %.5f (predict-the-mean %.5f)", step, result["mse"],
                    result["baseline_mse"])
        return result

    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    step = start_step
    while step < final_step:
        batch = shard_batch(next(iterator), mesh, ("image", "expression", "weight"))
        state, metrics = step_fn(state, batch)
        step += 1
        window_steps += 1
        if step % config.log_every == 0 or step == final_step:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            last_train = {"step": step, **metrics,
                          "images_per_second": window_steps * config.batch_size / max(now - window_start, 1e-9),
                          "elapsed_seconds": now - started}
            if jax.process_index() == 0:
                train_log.write(last_train)
            logger.info("step %d: loss %.5f", step, metrics["loss"])
            window_start, window_steps = time.perf_counter(), 0
        is_last = step == config.steps
        if step % config.eval_every == 0 or is_last:
            last_eval = run_eval(step)
        if step % config.checkpoint_every == 0 or is_last:
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       data=grain.checkpoint.CheckpointSave(iterator)))
        if step % config.eval_every == 0 or step % config.checkpoint_every == 0:
            # Throughput windows measure training only, not evaluation or saving.
            window_start, window_steps = time.perf_counter(), 0
    if step == start_step == config.steps:
        # Rerun of a finished run: report its evaluation (already logged) again.
        last_eval = run_eval(step, log=False)
    manager.wait_until_finished()
    manager.close()
    return TrainResult(workdir=workdir, step=step, state=state, train_metrics=last_train, eval_metrics=last_eval,
                       resumed_from=resumed_from)


def flatten_parameters(state_or_params) -> dict[str, np.ndarray]:
    """``{"path/to/param": array}`` of a state's parameters and batch statistics (host copies; for comparisons)."""
    tree = state_or_params
    if isinstance(state_or_params, TrainState):
        tree = {"params": state_or_params.params, "batch_stats": state_or_params.batch_stats}
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}
