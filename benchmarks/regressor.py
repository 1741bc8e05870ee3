"""DeepExp3D throughput: inference (batched and single image), training steps, and the input pipeline.

The full ResNet-50 regressor (n_e = 28) on 224×224 crops. Run:

    python benchmarks/regressor.py [--dtype float32|bfloat16] [--inference-batch 32] [--train-batch 16]

Prints one JSON object per line: ``inference`` (images/s of jitted batched
prediction), ``single_image`` (latency of the size-1 program — the paper's
per-image runtime is 20 ms on a V100 for the whole pipeline), ``train_step``
(images/s of a full optimisation step, parameters donated, data already on the
device) and ``input_pipeline`` (images/s of decoding + augmenting JPEG crops
with grain, in-process and with worker processes), so the training figure can be
compared with what the input side delivers. Each line carries the machine, the
library versions and the load average (the figures are wall-clock times of a
possibly shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import best_time, emit, machine  # noqa: E402

from fitting.shards import ShardDataset, ShardWriter  # noqa: E402
from regressor.configs.default import AugmentationConfig, ModelConfig, TrainConfig  # noqa: E402
from regressor.input_pipeline import train_loader  # noqa: E402
from regressor.models import count_parameters  # noqa: E402
from regressor.train import create_model, create_train_state, make_mesh, make_schedule, make_train_step, shard_batch  # noqa: E402


def _info() -> dict:
    return {**machine(), "load_average_1min": os.getloadavg()[0]}


def bench_inference(config: TrainConfig, batch: int, repeats: int) -> None:
    model = create_model(config.model)
    state = create_train_state(config, 0, make_mesh(jax.devices()[:1]))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8))
    single = jnp.asarray(rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8))
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    compile_batch = time.perf_counter() - start
    jax.block_until_ready(forward(variables, single))
    seconds = best_time(lambda: forward(variables, images), repeats=repeats, block=jax.block_until_ready)
    latency = best_time(lambda: forward(variables, single), repeats=max(repeats, 5), block=jax.block_until_ready)
    common = {"model": "resnet50", "n_outputs": config.model.n_outputs, "dtype": config.model.dtype,
              "parameters": count_parameters(state.params), "image_size": 224, **_info()}
    emit({"benchmark": "inference", "batch": batch, "images_per_second": batch / seconds,
          "seconds_per_batch": seconds, "compile_seconds": compile_batch, **common})
    emit({"benchmark": "single_image", "latency_ms": 1000 * latency, "images_per_second": 1 / latency, **common})


def bench_training(config: TrainConfig, batch: int, repeats: int) -> None:
    mesh = make_mesh()
    state = create_train_state(config, 0, mesh)
    step = make_train_step(mesh, make_schedule(config))
    rng = np.random.default_rng(1)
    data = shard_batch({
        "image": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
        "expression": rng.standard_normal((batch, config.model.n_outputs)).astype(np.float32),
        "weight": np.ones((batch, config.model.n_outputs), np.float32),
    }, mesh)
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    best = min(times)
    emit({"benchmark": "train_step", "model": "resnet50", "dtype": config.model.dtype, "batch": batch,
          "mesh_devices": mesh.size, "images_per_second": batch / best, "seconds_per_step": best,
          "median_seconds_per_step": float(np.median(times)), "compile_seconds": compile_seconds, **_info()})


def bench_input_pipeline(batch: int, batches: int) -> None:
    rng = np.random.default_rng(2)
    root = Path(tempfile.mkdtemp(prefix="deepexp3d-bench-shards-"))
    # Smooth random crops encode to realistic JPEG sizes (noise would not compress).
    base = rng.integers(0, 256, (16, 28, 28, 3), dtype=np.uint8)
    with ShardWriter(root / "s0", expression_names=[f"e{k}" for k in range(28)], expression_basis="bench",
                     n_identity=1) as writer:
        for k in range(256):
            crop = cv2.resize(base[k % 16], (224, 224), interpolation=cv2.INTER_CUBIC)
            writer.add(image=crop, expression=np.zeros(28), identity=[0], camera=np.zeros(6),
                       landmarks=np.zeros((68, 2)), video_id="bench", frame_index=k)
    data = ShardDataset(root)
    for workers in (0, 2):
        loader = train_loader(data, batch_size=batch, image_size=224, augmentation=AugmentationConfig(), seed=0,
                              worker_count=workers, worker_buffer_size=2)
        iterator = iter(loader)
        next(iterator)  # workers started, first batch ready
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - start
        emit({"benchmark": "input_pipeline", "workers": workers, "batch": batch, "image_size": 224,
              "augmentation": True, "images_per_second": batch * batches / seconds, **_info()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--inference-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=(), choices=("inference", "train", "input"))
    args = parser.parse_args()
    config = TrainConfig(model=ModelConfig(dtype=args.dtype), batch_size=args.train_batch, steps=1000)
    if "inference" not in args.skip:
        bench_inference(config, args.inference_batch, args.repeats)
    if "train" not in args.skip:
        bench_training(config, args.train_batch, args.repeats)
    if "input" not in args.skip:
        bench_input_pipeline(args.train_batch, batches=8)


if __name__ == "__main__":
    main()
