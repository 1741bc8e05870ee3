"""Where the library finds shared data and keeps its caches.

* ``DEEPEXP3D_DATA`` — folder of the shared data sets (``ict-facekit/``,
  ``eos-sfm/``, ``landmark-images/``, ``videos/``, ``emotions-wild/``).
  Default: ``../shared/data`` relative to the current directory, else relative
  to the source checkout.
* ``DEEPEXP3D_CACHE`` — folder for downloaded and converted models.
  Default: ``$XDG_CACHE_HOME/deepexp3d`` or ``~/.cache/deepexp3d``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "cache_dir", "DATA_ENV", "CACHE_ENV"]

DATA_ENV = "DEEPEXP3D_DATA"
CACHE_ENV = "DEEPEXP3D_CACHE"


def data_dir() -> Path:
    """The shared data folder (may not exist; callers check the files they need).

    Examples:
      >>> isinstance(data_dir(), Path)
      True
    """
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


def cache_dir() -> Path:
    """The cache folder for downloaded and converted models (created on demand by writers)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "deepexp3d"
