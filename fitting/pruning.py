"""Pruning failed video fits (paper §III-B, steps 4 and 5).

**Automatic.** Under the morphable model the identity coefficients of a face, in
standard-deviation units, are i.i.d. N(0, 1), so ``‖i‖²`` follows a chi-square
distribution with ``n_i`` degrees of freedom. A video whose fitted identity lies
beyond the ``quantile`` of that distribution is implausible as a face of the model
and is flagged (the paper pruned 5 % of its videos this way, without giving the
threshold). With ``quantile = 0.999`` one face in a thousand drawn from the model
would be flagged. Fitted identities are MAP estimates shrunk towards 0 by the
prior, so on good fits ``‖i‖`` is usually *below* the model's typical radius
``√n_i`` and the test is conservative: it catches fits that the prior could not hold.

**Manual.** A text file lists the ids of videos to drop, one per line; ``#`` starts
a comment and blank lines are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from flax import struct
from scipy.stats import chi2

__all__ = [
    "PruningResult",
    "identity_norm_threshold",
    "prune_by_identity_norm",
    "read_id_list",
    "prune_by_id_list",
]


@struct.dataclass
class PruningResult:
    """Which videos survive a pruning step.

    Attributes:
      keep: ``(V,) bool`` the video is kept.
      video_ids: the ``V`` ids, in input order (``"0"``, ``"1"``, … when none were given).
      norms: ``(V,) float64`` identity norm ``‖i‖`` (std units), or NaN for manual pruning.
      threshold: the norm above which a video is pruned (NaN for manual pruning).
      unknown_ids: ids in a manual list that match no video (likely typos).
    """

    keep: np.ndarray
    video_ids: tuple[str, ...] = struct.field(pytree_node=False)
    norms: np.ndarray
    threshold: float = struct.field(pytree_node=False, default=float("nan"))
    unknown_ids: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def pruned_ids(self) -> tuple[str, ...]:
        """Ids of the videos that are not kept, in input order."""
        return tuple(video_id for video_id, kept in zip(self.video_ids, self.keep) if not kept)

    @property
    def fraction_pruned(self) -> float:
        """Share of videos pruned, in [0, 1] (0 for no videos)."""
        return float(1.0 - np.mean(self.keep)) if self.keep.size else 0.0


def identity_norm_threshold(n_identity: int, quantile: float = 0.999) -> float:
    """The ``quantile`` of ``‖i‖`` for ``i ~ N(0, I_{n_identity})``.

    Args:
      n_identity: number of identity components ``n_i``.
      quantile: in (0, 1).

    Returns:
      ``sqrt(chi2.ppf(quantile, n_identity))``, std units.

    Examples:
      >>> round(identity_norm_threshold(1, 0.95), 3)  # the two-sided 95 % z value
      1.96
    """
    if not isinstance(n_identity, (int, np.integer)) or n_identity < 1:
        raise ValueError(f"n_identity: must be a positive int, got {n_identity!r}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile: must be in (0, 1), got {quantile!r}")
    return float(np.sqrt(chi2.ppf(quantile, n_identity)))


def _ids(video_ids, count: int) -> tuple[str, ...]:
    if video_ids is None:
        return tuple(str(k) for k in range(count))
    video_ids = tuple(str(video_id) for video_id in video_ids)
    if len(video_ids) != count:
        raise ValueError(f"video_ids: expected {count} ids, got {len(video_ids)}")
    return video_ids


def prune_by_identity_norm(
    identities, *, quantile: float = 0.999, video_ids: Sequence[str] | None = None
) -> PruningResult:
    """Flag videos whose fitted identity norm exceeds the chi-square ``quantile``.

    Args:
      identities: ``(V, n_i)`` one identity vector per video, in std units (the
        morphable model's coefficients, ``shape = mean + U (i · identity_std)``).
      quantile: the share of model faces that would pass. Default 0.999.
      video_ids: ``V`` ids for the result (default ``"0"``, ``"1"``, …).

    Returns:
      :class:`PruningResult` with ``norms`` and ``threshold``; a video with a
      non-finite identity is pruned.

    Raises:
      ValueError: ``identities`` is not 2-D, or ``video_ids`` has the wrong length.

    Examples:
      >>> result = prune_by_identity_norm(np.array([[0.5, -1.0], [9.0, 9.0]]), video_ids=["a", "b"])
      >>> result.keep.tolist(), result.pruned_ids, round(result.threshold, 3)
      ([True, False], ('b',), 3.717)
    """
    identities = np.asarray(identities, np.float64)
    if identities.ndim != 2 or identities.shape[1] < 1:
        raise ValueError(f"identities: expected shape (V, n_i), got {identities.shape}")
    threshold = identity_norm_threshold(identities.shape[1], quantile)
    norms = np.linalg.norm(identities, axis=1)
    keep = np.isfinite(norms) & (norms <= threshold)
    return PruningResult(keep=keep, video_ids=_ids(video_ids, len(identities)), norms=norms, threshold=threshold)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read a list of video ids: one per line, ``#`` starts a comment, blank lines skipped.

    Args:
      path: a UTF-8 text file.

    Returns:
      The ids, stripped of surrounding whitespace, in file order (duplicates kept once).

    Raises:
      FileNotFoundError: naming the file.

    Examples:
      >>> import tempfile
      >>> p = tempfile.mkdtemp() + "/bad.txt"
      >>> _ = open(p, "w").write("# failed fits\\nclip_07  # mouth\\n\\nclip_12\\n")
      >>> read_id_list(p)
      ['clip_07', 'clip_12']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video id list not found: {path}")
    ids: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        video_id = line.split("#", 1)[0].strip()
        if video_id and video_id not in ids:
            ids.append(video_id)
    return ids


def prune_by_id_list(video_ids: Sequence[str], excluded: Iterable[str] | str | os.PathLike) -> PruningResult:
    """Drop the videos named in a manual list.

    Args:
      video_ids: the ``V`` ids of the videos.
      excluded: ids to drop, or the path of a file read with :func:`read_id_list`.

    Returns:
      :class:`PruningResult`; ``unknown_ids`` lists excluded ids that match no video.

    Examples:
      >>> prune_by_id_list(["a", "b", "c"], ["b", "z"]).keep.tolist()
      [True, False, True]
    """
    if isinstance(excluded, (str, os.PathLike)):
        excluded = read_id_list(excluded)
    excluded = [str(video_id) for video_id in excluded]
    video_ids = tuple(str(video_id) for video_id in video_ids)
    excluded_set = set(excluded)
    known = set(video_ids)
    return PruningResult(
        keep=np.array([video_id not in excluded_set for video_id in video_ids], bool),
        video_ids=video_ids,
        norms=np.full(len(video_ids), np.nan),
        unknown_ids=tuple(video_id for video_id in dict.fromkeys(excluded) if video_id not in known),
    )
