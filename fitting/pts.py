"""Reading and writing iBUG/300-W ``.pts`` landmark files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["read_pts", "write_pts"]


def read_pts(path: str | os.PathLike, *, one_based: bool = True) -> np.ndarray:
    """Read a ``.pts`` file (``version: 1``, ``n_points: K``, ``{ x y ... }``).

    Args:
      path: the file.
      one_based: the file uses 300-W's 1-based pixel convention (the top-left
        pixel is (1, 1)); subtract one to return the library's 0-based pixels.

    Returns:
      ``(K, 2) float32`` landmarks, pixels, origin top-left, y down.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is malformed (the message names it).

    Examples:
      >>> import tempfile, os
      >>> p = os.path.join(tempfile.mkdtemp(), "a.pts")
      >>> _ = open(p, "w").write("version: 1\\nn_points: 2\\n{\\n1 1\\n10.5 20\\n}")
      >>> read_pts(p).tolist()
      [[0.0, 0.0], [9.5, 19.0]]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    text = path.read_text(errors="replace")
    try:
        header, body = text.split("{", 1)
        body = body.split("}", 1)[0]
        count = next(int(line.split(":")[1]) for line in header.splitlines() if line.strip().startswith("n_points"))
        points = np.array(body.split(), dtype=np.float32).reshape(-1, 2)
    except (ValueError, StopIteration, IndexError) as error:
        raise ValueError(f"{path}: not a valid .pts file ({error})") from error
    if len(points) != count:
        raise ValueError(f"{path}: header says {count} points, found {len(points)}")
    return points - 1.0 if one_based else points


def write_pts(path: str | os.PathLike, points, *, one_based: bool = True) -> Path:
    """Write ``(K, 2)`` 0-based pixel landmarks as a ``.pts`` file (1-based by default)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2) + (1.0 if one_based else 0.0)
    path = Path(path)
    lines = ["version: 1", f"n_points: {len(points)}", "{"]
    lines += [f"{x:.3f} {y:.3f}" for x, y in points]
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    return path
