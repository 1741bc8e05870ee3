"""Pictures of models and fits (matplotlib, no display needed).

* :func:`render_mesh` — a shaded picture of a mesh (Lambert shading, painter's
  order), good enough to compare a neutral and a fitted face side by side;
* :func:`draw_overlay` — an image with 2D landmarks and a projected wireframe;
* :func:`plot_coefficients` — a bar chart of coefficients with their names;
* :func:`plot_expression_timeline` — named coefficients of a video over time,
  with an uncertainty band and gaps where a frame has no face
  (:func:`strongest_coefficients` picks which).

Each function draws into a given matplotlib ``Axes`` (or a new figure) and
returns the ``Axes``; saving is the caller's choice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "render_mesh",
    "draw_overlay",
    "plot_coefficients",
    "plot_expression_timeline",
    "strongest_coefficients",
    "new_figure",
]


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


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def strongest_coefficients(expression, valid=None, *, top: int | None = None) -> np.ndarray:
    """Indices of the coefficients with the largest root mean square over time, strongest first.

    Args:
      expression: ``(T, K)`` coefficients per frame; NaN entries are left out.
      valid: ``(T,)`` bool, the frames to rank over (default all).
      top: how many indices to return (``None``: all ``K``).

    Returns:
      ``(min(top, K),) int64`` indices; ties keep their original order.

    Raises:
      ValueError: ``expression`` is not 2-D or ``valid`` is not a ``(T,)`` bool array.

    Examples:
      >>> strongest_coefficients(np.array([[0.1, -0.9, 0.5], [0.1, 0.8, np.nan]]), top=2).tolist()
      [1, 2]
    """
    values = np.asarray(expression, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expression: expected shape (T, K), got {values.shape}")
    seen = np.isfinite(values)
    if valid is not None:
        keep = np.asarray(valid)
        if keep.shape != values.shape[:1] or keep.dtype != bool:
            raise ValueError(f"valid: expected a ({values.shape[0]},) bool array, got {keep.dtype} {keep.shape}")
        seen &= keep[:, None]
    strength = np.sqrt(np.sum(np.where(seen, values, 0.0) ** 2, axis=0) / np.maximum(seen.sum(axis=0), 1))
    order = np.argsort(-strength, kind="stable")
    return order if top is None else order[: max(int(top), 0)]


def plot_expression_timeline(
    expression,
    names: Sequence[str] | None = None,
    *,
    times=None,
    std=None,
    valid=None,
    top: int | None = 8,
    indices: Sequence[int] | None = None,
    ax=None,
    title: str | None = None,
    xlabel: str = "frame",
):
    """Expression coefficients of a video over time, one line per coefficient.

    The coefficients drawn are ``indices`` when given, else the ``top`` ones with
    the largest root mean square over the valid frames, strongest first
    (:func:`strongest_coefficients`). Frames where ``valid`` is False or the
    coefficient is NaN are gaps in the lines and bands (matplotlib breaks a line
    at NaN); runs of invalid frames are also shaded grey.

    Args:
      expression: ``(T, K)`` coefficients per frame (model units: blendshape
        weights or std units).
      names: ``K`` labels (default ``"0" .. "K-1"``), used in the legend.
      times: ``(T,)`` increasing x positions, e.g. seconds or frame numbers
        (default ``0 .. T-1``).
      std: ``(T, K)`` non-negative uncertainty per coefficient and frame (e.g.
        ``VideoFitResult.expression_std``), drawn as a ``±std`` band.
      valid: ``(T,)`` bool, False for frames without a fit (default all True).
      top: how many coefficients to draw when ``indices`` is ``None``
        (``None``: all).
      indices: the coefficients to draw, in legend order.
      ax: matplotlib axes (a new figure if ``None``).
      title: axes title; xlabel: x-axis label.

    Returns:
      The axes. ``ax.get_lines()`` holds one line per drawn coefficient, labelled
      with its name, with NaN at the gaps; the bands are ``ax.collections``.

    Raises:
      ValueError: naming the argument whose shape or values are wrong.

    Examples:
      >>> t = np.arange(50) / 25.0
      >>> expression = np.stack([np.sin(t), 0.1 * t, np.zeros_like(t)], axis=1)
      >>> valid = np.arange(50) % 20 < 15
      >>> ax = plot_expression_timeline(expression, ["a", "b", "c"], times=t, valid=valid, top=2)
      >>> [line.get_label() for line in ax.get_lines()]
      ['a', 'b']
      >>> int(np.isnan(ax.get_lines()[0].get_ydata()).sum())
      10
    """
    values = np.array(expression, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expression: expected shape (T, K), got {values.shape}")
    n_frames, n_coefficients = values.shape
    names = [str(k) for k in range(n_coefficients)] if names is None else list(names)
    if len(names) != n_coefficients:
        raise ValueError(f"names: expected {n_coefficients} labels, got {len(names)}")
    x = np.arange(n_frames, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if x.shape != (n_frames,):
        raise ValueError(f"times: expected shape ({n_frames},), got {x.shape}")
    if not np.all(np.isfinite(x)) or not np.all(np.diff(x) > 0):
        raise ValueError("times: must be finite and increasing")
    keep = np.ones(n_frames, bool) if valid is None else np.asarray(valid)
    if keep.shape != (n_frames,) or keep.dtype != bool:
        raise ValueError(f"valid: expected a ({n_frames},) bool array, got {keep.dtype} {keep.shape}")
    spread = None
    if std is not None:
        spread = np.asarray(std, dtype=np.float64)
        if spread.shape != values.shape:
            raise ValueError(f"std: expected shape {values.shape}, got {spread.shape}")
        if np.any(spread[np.isfinite(spread)] < 0):
            raise ValueError("std: must be non-negative")
    values[~keep] = np.nan
    if indices is None:
        chosen = strongest_coefficients(values, top=top)
    else:
        chosen = np.asarray(indices, dtype=np.int64).reshape(-1)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= n_coefficients):
            raise ValueError(f"indices: out of range for {n_coefficients} coefficients: {chosen.tolist()}")

    if ax is None:
        figure, (ax,) = new_figure(size=4.5)
        figure.set_size_inches(11.0, 4.5)
    colors = _timeline_colors(len(chosen))
    for color, k in zip(colors, chosen):
        ax.plot(x, values[:, k], color=color, linewidth=1.2, label=names[k])
        if spread is not None:
            band = np.where(keep, spread[:, k], np.nan)
            low, high = values[:, k] - band, values[:, k] + band
            finite = np.isfinite(low) & np.isfinite(high)
            ax.fill_between(x, low, high, where=finite, color=color, alpha=0.2, linewidth=0)
    for start, stop in _spans(~keep):
        # Shade from half a step before the first missing frame to half a step after the last.
        left = x[start] - (x[start] - x[start - 1]) / 2 if start > 0 else x[start]
        right = x[stop - 1] + (x[stop] - x[stop - 1]) / 2 if stop < n_frames else x[stop - 1]
        ax.axvspan(left, right, color="0.85", linewidth=0, zorder=0)
    if n_frames > 1:
        ax.set_xlim(x[0], x[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("coefficient")
    if len(chosen):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def _timeline_colors(count: int) -> list:
    """``count`` distinguishable colours (tab10, then tab20 for more)."""
    import matplotlib

    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(k % palette.N) for k in range(count)]
