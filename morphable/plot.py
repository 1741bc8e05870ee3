"""Pictures of models and fits (matplotlib, no display needed).

* :func:`render_mesh` — a shaded picture of a mesh (Lambert shading, painter's
  order), good enough to compare a neutral and a fitted face side by side;
* :func:`draw_overlay` — an image with 2D landmarks and a projected wireframe;
* :func:`plot_coefficients` — a bar chart of coefficients with their names.

Each function draws into a given matplotlib ``Axes`` (or a new figure) and
returns the ``Axes``; saving is the caller's choice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["render_mesh", "draw_overlay", "plot_coefficients", "new_figure"]


def new_figure(n_columns: int = 1, size: float = 4.0):
    """A figure with ``n_columns`` axes, using the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, n_columns, figsize=(size * n_columns, size), squeeze=False)
    return figure, list(axes[0])


def render_mesh(
    vertices,
    triangles,
    *,
    ax=None,
    rotation=None,
    color=(0.85, 0.72, 0.62),
    light=(0.3, 0.4, 1.0),
    title: str | None = None,
):
    """Shaded orthographic view of a mesh, viewed along −z (y up).

    Args:
      vertices: ``(N, 3)`` model units.
      triangles: ``(T, 3)`` vertex indices.
      ax: matplotlib axes (a new figure if ``None``).
      rotation: optional ``(3, 3)`` rotation applied before viewing.
      color: base RGB colour; light: direction towards the light.

    Returns:
      The axes.
    """
    from matplotlib.collections import PolyCollection

    if ax is None:
        _, (ax,) = new_figure()
    v = np.asarray(vertices, dtype=np.float64)
    if rotation is not None:
        v = v @ np.asarray(rotation, dtype=np.float64).T
    tri = np.asarray(triangles, dtype=np.int64)
    corners = v[tri]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    norms = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.where(norms > 0, norms, 1.0)
    facing = normals[:, 2] > 0
    light_dir = np.asarray(light, dtype=np.float64)
    light_dir = light_dir / np.linalg.norm(light_dir)
    shade = 0.25 + 0.75 * np.clip(normals @ light_dir, 0.0, 1.0)
    order = np.argsort(corners[:, :, 2].mean(axis=1))  # far to near
    order = order[facing[order]]
    colors = np.clip(np.asarray(color)[None, :] * shade[order, None], 0, 1)
    polygons = corners[order][:, :, :2]
    # Edges in the face colour close the hairline gaps anti-aliasing leaves between polygons.
    ax.add_collection(PolyCollection(polygons, facecolors=colors, edgecolors=colors, linewidths=0.3))
    ax.set_xlim(v[:, 0].min(), v[:, 0].max())
    ax.set_ylim(v[:, 1].min(), v[:, 1].max())
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def draw_overlay(
    image,
    *,
    landmarks=None,
    fitted_landmarks=None,
    mesh_points=None,
    triangles=None,
    ax=None,
    title: str | None = None,
    crop_margin: float | None = 0.25,
):
    """Image with landmarks and a projected mesh wireframe.

    Args:
      image: ``(H, W, 3)`` RGB uint8 or float image.
      landmarks: ``(L, 2)`` pixels (origin top-left, y down), drawn as green dots.
      fitted_landmarks: ``(L, 2)`` model landmarks projected, drawn as red crosses.
      mesh_points: ``(N, 2)`` projected vertices; with ``triangles`` ``(T, 3)``
        drawn as a thin wireframe.
      crop_margin: zoom on the face (landmark box plus this fraction), or ``None``.

    Returns:
      The axes.
    """
    if ax is None:
        _, (ax,) = new_figure(size=6.0)
    ax.imshow(np.asarray(image))
    if mesh_points is not None and triangles is not None:
        pts = np.asarray(mesh_points, dtype=np.float64)
        ax.triplot(pts[:, 0], pts[:, 1], np.asarray(triangles), color="deepskyblue", linewidth=0.15, alpha=0.6)
    if landmarks is not None:
        lm = np.asarray(landmarks)
        ax.plot(lm[:, 0], lm[:, 1], "o", color="lime", markersize=2.5, label="landmarks")
    if fitted_landmarks is not None:
        fl = np.asarray(fitted_landmarks)
        ax.plot(fl[:, 0], fl[:, 1], "x", color="red", markersize=3.5, label="fitted model")
    if crop_margin is not None and landmarks is not None:
        lm = np.asarray(landmarks)
        lm = lm[np.all(np.isfinite(lm), axis=1)]
        if len(lm):
            low, high = lm.min(0), lm.max(0)
            pad = (high - low) * crop_margin
            ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
            ax.set_ylim(high[1] + pad[1], low[1] - pad[1])
    ax.axis("off")
    if landmarks is not None or fitted_landmarks is not None:
        ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_coefficients(values, names: Sequence[str] | None = None, *, ax=None, title: str | None = None, top: int | None = None):
    """Horizontal bar chart of coefficients, optionally only the ``top`` largest in magnitude.

    Args:
      values: ``(K,)`` coefficients.
      names: ``K`` labels (default ``0..K-1``).

    Returns:
      The axes.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    names = list(names) if names is not None else [str(k) for k in range(len(values))]
    order = np.arange(len(values))
    if top is not None and top < len(values):
        order = np.sort(np.argsort(-np.abs(values))[:top])
    if ax is None:
        _, (ax,) = new_figure(size=max(4.0, 0.18 * len(order)))
    positions = np.arange(len(order))
    ax.barh(positions, values[order], color=["tab:orange" if v < 0 else "tab:blue" for v in values[order]])
    ax.set_yticks(positions)
    ax.set_yticklabels([names[k] for k in order], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", linewidth=0.5)
    if title:
        ax.set_title(title)
    return ax
