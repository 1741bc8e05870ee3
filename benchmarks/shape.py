"""Landmarks-only vs full-mesh evaluation throughput on ICT, and model loading time.

Run: ``python benchmarks/shape.py`` (prints JSON lines).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, emit, machine  # noqa: E402

import morphable  # noqa: E402
from morphable.io import load_ict  # noqa: E402


def main() -> None:
    info = machine()
    cache = Path(tempfile.mkdtemp(prefix="deepexp3d-bench-"))
    start = time.perf_counter()
    load_ict(cache_dir=cache)
    convert_s = time.perf_counter() - start
    load_s = best_time(lambda: load_ict(cache_dir=cache), repeats=3)
    emit({"benchmark": "ict_load", "first_load_with_conversion_s": convert_s, "cached_load_s": load_s, **info})

    model = load_ict(cache_dir=cache)
    full_mesh = jax.jit(morphable.shape)
    landmarks_only = jax.jit(morphable.landmarks)
    for batch in (1, 64, 512):
        identity, expression = morphable.sample(model, jax.random.key(0), (batch,))
        block = jax.block_until_ready
        block(full_mesh(model, identity, expression))
        block(landmarks_only(model, identity, expression))
        repeats = 20 if batch < 512 else 5
        t_full = best_time(lambda: full_mesh(model, identity, expression), repeats=repeats, block=block)
        t_landmarks = best_time(lambda: landmarks_only(model, identity, expression), repeats=repeats, block=block)
        emit(
            {
                "benchmark": "shape_vs_landmarks",
                "model": model.name,
                "vertices": model.n_vertices,
                "identity": model.n_identity,
                "expression": model.n_expression,
                "batch": batch,
                "full_mesh_faces_per_s": batch / t_full,
                "landmarks_only_faces_per_s": batch / t_landmarks,
                "landmarks_speedup": t_full / t_landmarks,
                **info,
            }
        )


if __name__ == "__main__":
    main()
