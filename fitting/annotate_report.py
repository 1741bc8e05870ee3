"""The summary report of an annotation run: counts, reasons, identity norms, fit errors (JSON + PNG)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["write_report", "PAPER_PRUNING"]

PAPER_PRUNING = {"tracking": 0.167, "automatic": 0.05, "manual": 0.04}
"""Fractions of videos the paper removed at each stage (§III-B), for comparison."""


def write_report(out_dir: str | os.PathLike, *, seconds: dict | None = None):
    """Summarise ``manifest.jsonl`` into ``report.json``, ``report_identity_norm.png`` and ``report_rmse.png``.

    ``report.json`` holds the counts, reasons and fractions (beside the paper's),
    frames processed and kept, the identity norms with the pruning threshold,
    the per-frame RMSE/NME distribution, and the seconds of each pipeline stage
    summed over all videos (``stage_seconds``; worker and fitting time add up,
    so the sum exceeds the wall time when workers run in parallel) with each
    stage's share of that sum (``stage_shares``).

    Args:
      out_dir: an annotation output folder (with ``manifest.jsonl``).
      seconds: wall times of this invocation to record (e.g. ``{"run": s}``).

    Returns:
      :class:`fitting.annotate.AnnotationSummary`.
    """
    from fitting.annotate import AnnotationSummary, read_manifest

    out = Path(out_dir)
    records = read_manifest(out)
    statuses = Counter(r["status"] for r in records.values())
    reasons = Counter(f"{r['status']}:{r['reason']}" for r in records.values() if r["status"] != "ok")
    frames_kept = int(sum(r.get("frames_kept", 0) for r in records.values() if r["status"] == "ok"))
    norms = np.array([r["identity_norm"] for r in records.values() if "identity_norm" in r], dtype=float)
    thresholds = [r["identity_norm_threshold"] for r in records.values() if "identity_norm_threshold" in r]
    rmse = np.array([v for r in records.values() if r["status"] == "ok" for v in r.get("rmse_px", [])], dtype=float)
    nme = np.array([v for r in records.values() if r["status"] == "ok" for v in r.get("nme", [])], dtype=float)
    stage_seconds: Counter = Counter()
    for record in records.values():
        stage_seconds.update(record.get("seconds", {}))
    busy = sum(stage_seconds.values())
    frames_processed = int(sum(r.get("frames_processed", 0) for r in records.values()))
    total = max(len(records), 1)
    tracking_failures = sum(n for k, n in reasons.items() if k.startswith("failed:"))
    report = {
        "videos": len(records),
        "ok": statuses.get("ok", 0),
        "pruned": statuses.get("pruned", 0),
        "failed": statuses.get("failed", 0),
        "reasons": dict(sorted(reasons.items())),
        "fractions": {
            "failed (tracking, unreadable, fit)": tracking_failures / total,
            "pruned automatically (identity norm)": reasons.get("pruned:identity_norm", 0) / total,
            "pruned manually": reasons.get("pruned:manual", 0) / total,
        },
        "paper_fractions": PAPER_PRUNING,
        "frames_kept": frames_kept,
        "identity_norm": {
            "values": norms.tolist(),
            "threshold": float(thresholds[0]) if thresholds else None,
        },
        "rmse_px": _describe(rmse),
        "nme": _describe(nme),
        "frames_processed": frames_processed,
        "stage_seconds": dict(stage_seconds),
        "stage_shares": {k: v / busy for k, v in stage_seconds.items()} if busy > 0 else {},
        "run_seconds": seconds or {},
    }
    partial = out / "report.json.part"
    partial.write_text(json.dumps(report, indent=1))
    os.replace(partial, out / "report.json")
    _plots(out, norms, report["identity_norm"]["threshold"], rmse, nme)
    return AnnotationSummary(
        videos=report["videos"],
        ok=report["ok"],
        pruned=report["pruned"],
        failed=report["failed"],
        frames_kept=frames_kept,
        reasons=report["reasons"],
        out_dir=out,
        seconds=report["stage_seconds"],
    )


def _describe(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": float(values.max()),
    }


def _plots(out: Path, norms, threshold, rmse, nme) -> None:
    import matplotlib.pyplot as plt

    from morphable.plot import new_figure

    figure, (ax,) = new_figure(size=5.0)
    if norms.size:
        ax.hist(norms, bins=max(5, min(50, norms.size)), color="tab:blue", alpha=0.8, label="videos")
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"χ² threshold {threshold:.1f}")
    ax.set_xlabel("‖identity‖ (std units)")
    ax.set_ylabel("videos")
    ax.set_title("Identity norm of the video fits")
    if norms.size or threshold is not None:
        ax.legend(fontsize=8)
    figure.savefig(out / "report_identity_norm.png", dpi=110, bbox_inches="tight")
    plt.close(figure)

    figure, axes = new_figure(2, size=4.5)
    if rmse.size:
        axes[0].hist(rmse, bins=50, color="tab:green")
    axes[0].set_xlabel("landmark RMSE per frame (px)")
    axes[0].set_ylabel("frames")
    if nme.size:
        axes[1].hist(100 * nme, bins=50, color="tab:purple")
    axes[1].set_xlabel("landmark RMSE / outer-eye distance (%)")
    figure.suptitle("Fit quality of the kept frames")
    figure.savefig(out / "report_rmse.png", dpi=110, bbox_inches="tight")
    plt.close(figure)
