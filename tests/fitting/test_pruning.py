"""Automatic (chi-square on ‖i‖) and manual pruning of video fits (paper §III-B steps 4–5)."""

from __future__ import annotations

import numpy as np
import pytest

from fitting.pruning import identity_norm_threshold, prune_by_id_list, prune_by_identity_norm, read_id_list


@pytest.mark.parametrize("quantile", [0.9, 0.99, 0.999])
def test_pruned_fraction_of_model_faces_is_one_minus_the_quantile(quantile):
    videos, n_identity = 100_000, 100
    identities = np.random.default_rng(0).standard_normal((videos, n_identity), dtype=np.float32)
    result = prune_by_identity_norm(identities, quantile=quantile)
    expected = 1.0 - quantile
    # Binomial standard error of the pruned fraction; 4 σ.
    tolerance = 4 * np.sqrt(expected * quantile / videos)
    assert result.fraction_pruned == pytest.approx(expected, abs=tolerance)


def test_threshold_agrees_with_a_monte_carlo_quantile():
    # Independent of scipy.stats.chi2: the empirical quantile of ‖z‖ for z ~ N(0, I_157).
    samples = np.random.default_rng(1).standard_normal((100_000, 157), dtype=np.float32)
    norms = np.linalg.norm(samples.astype(np.float64), axis=1)
    for quantile in (0.95, 0.999):
        assert identity_norm_threshold(157, quantile) == pytest.approx(np.quantile(norms, quantile), rel=5e-3)


def test_outliers_are_flagged():
    rng = np.random.default_rng(2)
    good = rng.standard_normal((1000, 100))
    outliers = 3.0 * rng.standard_normal((20, 100))  # failed fits: 3× the model's spread
    identities = np.concatenate([good, outliers])
    ids = [f"good_{k}" for k in range(1000)] + [f"bad_{k}" for k in range(20)]
    result = prune_by_identity_norm(identities, quantile=0.999, video_ids=ids)
    assert not result.keep[1000:].any()
    assert result.keep[:1000].mean() > 0.99
    assert set(result.pruned_ids) >= {f"bad_{k}" for k in range(20)}
    np.testing.assert_allclose(result.norms, np.linalg.norm(identities, axis=1))
    assert np.all(result.norms[~result.keep] > result.threshold)


def test_non_finite_identity_is_pruned():
    identities = np.zeros((3, 10))
    identities[1, 4] = np.nan
    assert prune_by_identity_norm(identities).keep.tolist() == [True, False, True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="identities"):
        prune_by_identity_norm(np.zeros(10))
    with pytest.raises(ValueError, match="video_ids"):
        prune_by_identity_norm(np.zeros((3, 10)), video_ids=["a"])
    with pytest.raises(ValueError, match="quantile"):
        identity_norm_threshold(10, 1.0)


def test_manual_list_with_comments_is_applied(tmp_path):
    path = tmp_path / "failed.txt"
    path.write_text(
        "# visibly failed reconstructions\n"
        "clip_003\n"
        "  clip_007   # jaw collapses\n"
        "\n"
        "clip_003\n"
        "clip_999  # typo: no such video\n"
    )
    assert read_id_list(path) == ["clip_003", "clip_007", "clip_999"]
    ids = [f"clip_{k:03d}" for k in range(10)]
    result = prune_by_id_list(ids, path)
    assert result.pruned_ids == ("clip_003", "clip_007")
    assert result.keep.sum() == 8 and result.fraction_pruned == pytest.approx(0.2)
    assert result.unknown_ids == ("clip_999",)
    assert prune_by_id_list(ids, ["clip_000"]).pruned_ids == ("clip_000",)


def test_missing_id_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.txt"):
        read_id_list(tmp_path / "none.txt")
