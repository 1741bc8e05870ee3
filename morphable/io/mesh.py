"""Mesh export (OBJ, PLY, and whatever else trimesh writes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["export_mesh"]


def export_mesh(vertices, triangles, path: str | os.PathLike, *, colors=None) -> Path:
    """Write a triangle mesh; the format follows the suffix (``.obj``, ``.ply``, ``.stl``, ...).

    Args:
      vertices: ``(N, 3)`` positions (e.g. ``morphable.shape(...)``), model units.
      triangles: ``(T, 3)`` 0-based vertex indices (e.g. ``model.triangles``).
      path: output file; parent folders are created.
      colors: optional ``(N, 3)`` or ``(N, 4)`` uint8 vertex colours (PLY keeps them).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Examples:
      >>> import tempfile, os, numpy as np
      >>> p = export_mesh(np.eye(3), [[0, 1, 2]], os.path.join(tempfile.mkdtemp(), "t.obj"))
      >>> "f 1 2 3" in p.read_text()
      True
    """
    import trimesh  # imported lazily: it is only needed for export

    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected shape (N, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles: expected shape (T, 3), got {triangles.shape}")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError(f"triangles: vertex index out of range [0, {len(vertices)})")
    if not np.all(np.isfinite(vertices)):
        raise ValueError("vertices: contains NaN or infinite values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, vertex_colors=colors, process=False)
    mesh.export(path)
    return path
