"""Loader for the Large Scale Facial Model (LSFM) ``.mat`` release.

LSFM is licensed and not shipped. The layout is documented in menpo/lsfm's
``MODELS.md`` and read the same way by menpo3d's ``lsfm_model_importer``
(``menpo3d/io/input/lsfm.py``):

  * ``mean`` ``(3N,)`` ordered ``x1, y1, z1, ..., xN, yN, zN``;
  * ``components`` ``(3N, K)`` unit eigenvectors, ordered as the mean;
  * ``eigenvalues`` ``(K,)`` the **variance** of each component (menpo's
    ``PCAModel`` convention);
  * ``trilist`` ``(T, 3)`` **0-based** triangles (the model was written from
    Python);
  * ``n_training_samples``, ``cumulative_explained_variance`` and, in the
    ``*_cropped.mat`` variants, ``map_cropped_to_full``/``map_full_to_cropped``,
    none of which the linear model needs.

The files carry no landmarks (menpo/lsfm keeps its iBUG-68 annotation on the
template, not in the release) and no expression model. ``MODELS.md`` states
no length unit, so the model's ``units`` is ``"unknown"`` rather than a guess.
"""

from __future__ import annotations

import os

import numpy as np

from morphable.io.bfm import (
    _basis_matrix,
    _component_count,
    _existing_file,
    _flat_vector,
    _landmarks_or_missing,
    _orthonormal_columns,
    _read_mat,
    _triangles,
    _vertex_count,
)
from morphable.model import MorphableModel, make_model

__all__ = ["load_lsfm"]


def load_lsfm(path: str | os.PathLike, *, landmark_indices=None, n_identity: int | None = None) -> MorphableModel:
    """Load an LSFM identity model, e.g. ``all_all_all.mat``.

    The coefficients are in standard deviations (``std = sqrt(eigenvalues)``),
    so they are N(0, 1) under the model; there are no expression components.

    Args:
      path: the ``.mat`` file (keys ``mean (3N,)``, ``components (3N, K)``,
        ``eigenvalues (K,)``, ``trilist (T, 3)`` 0-based; N = 53215 for the full
        and 28431 for the cropped models).
      landmark_indices: ``(L,)`` vertex index per landmark, ``-1`` where none;
        default 68 missing landmarks.
      n_identity: keep the first components (default all).

    Returns:
      A model with ``mean (N, 3)``, orthonormal ``identity_basis (N, 3, n_i)``,
      ``identity_std (n_i,)`` in the file's (undocumented) length unit,
      ``units="unknown"``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a readable ``.mat`` file, a required key is missing or
        malformed, negative eigenvalues, or an index out of range.

    Examples:
      >>> model = load_lsfm("all_all_all.mat", n_identity=100)  # doctest: +SKIP
      >>> model.n_vertices, model.n_identity, model.n_expression  # doctest: +SKIP
      (53215, 100, 0)
    """
    path = _existing_file(path)
    content = _read_mat(path, ("mean", "components", "eigenvalues", "trilist"))
    mean = _flat_vector(content["mean"], path, "mean")
    n = _vertex_count(mean, path, "mean")
    components = _basis_matrix(content["components"], 3 * n, path, "components")
    variance = _flat_vector(content["eigenvalues"], path, "eigenvalues")
    if variance.shape[0] != components.shape[1]:
        raise ValueError(
            f"{path}: 'eigenvalues' has {variance.shape[0]} values for {components.shape[1]} columns of 'components'"
        )
    if not np.all(np.isfinite(variance)) or np.any(variance < 0):
        raise ValueError(f"{path}: 'eigenvalues' must hold non-negative variances")
    k = _component_count(n_identity, components.shape[1], "n_identity", path)

    basis, std = _orthonormal_columns(components[:, :k] * np.sqrt(variance[:k]))
    return make_model(
        mean,
        basis,
        np.zeros((3 * n, 0)),
        triangles=_triangles(content["trilist"], n, path, "trilist", one_based=False),
        landmark_indices=_landmarks_or_missing(landmark_indices),
        identity_std=std,
        units="unknown",
        name=f"lsfm:{path.stem}",
    )
