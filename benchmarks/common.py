"""Helpers shared by the benchmark scripts: machine description and timing."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable


def machine() -> dict:
    """Platform, CPU count and library versions, stamped on every JSON line."""
    import jax
    import numpy

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "numpy": numpy.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def best_time(function: Callable[[], object], *, repeats: int = 5, block=None) -> float:
    """Best wall time of ``repeats`` calls (seconds); ``block`` waits for async results."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        if block is not None:
            block(out)
        best = min(best, time.perf_counter() - start)
    return best


def emit(record: dict) -> None:
    """Print one JSON object per line."""
    print(json.dumps(record), flush=True)
