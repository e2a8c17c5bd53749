"""Reliability diagrams: per run, and per suite (one line per model × size × scheme, its seeds' predictions
pooled)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from benchmark.metrics import ECE_BINS, PROBABILITY_FREE_SCHEMES, calibration_metrics
from benchmark.records import group_key, test_set
from benchmark.report.figures.style import (
    DOUBLE,
    PALETTE,
    SINGLE,
    distinct_row_labels,
    new_figure,
    palette,
    record_predictions,
    run_title,
    short,
)


def ece_text(labels: np.ndarray, probs: np.ndarray, scheme: str, pooled: bool = False) -> str:
    """"ECE 0.123" ("pooled ECE 0.123" for several seeds' predictions taken as one set: not the leaderboard's mean
    of the seeds' ECEs), or "ECE n/a" for a scheme without probabilities (kNN's vote fractions), as the leaderboard
    says."""
    if scheme in PROBABILITY_FREE_SCHEMES:
        return "ECE n/a (vote fractions)"
    return f"{'pooled ' if pooled else ''}ECE {calibration_metrics(labels, probs)['ece']:.3f}"


def reliability_bins(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ECE bin (15 equal-width, top label): mean confidence, accuracy and image count (empty bins: NaN)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(conf * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    count = np.bincount(bins, minlength=ECE_BINS).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.bincount(bins, conf, ECE_BINS) / count, np.bincount(bins, correct, ECE_BINS) / count, count)


def _reliability_axes(ax) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (top label, 15 bins)", ylabel="Accuracy")


def plot_reliability(rec: dict) -> Figure:
    """Reliability diagram of one run: accuracy vs mean confidence per ECE bin (marker area = images)."""
    labels, probs = record_predictions(rec)
    conf, acc, count = reliability_bins(labels, probs)
    fig = new_figure(SINGLE, 2.8)
    ax = fig.subplots()
    _reliability_axes(ax)
    ax.bar((np.arange(ECE_BINS) + 0.5) / ECE_BINS, np.nan_to_num(acc), width=1 / ECE_BINS, color=PALETTE[0],
           alpha=0.35, edgecolor=PALETTE[0], label="accuracy per bin")
    ax.scatter(conf, acc, s=8 + 40 * count / max(count.max(), 1), color=PALETTE[0], zorder=3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{run_title(rec, two_lines=True)}\n{ece_text(labels, probs, rec.get('scheme') or '')}")
    return fig


def plot_reliability_suite(records: Sequence[dict], suite: str) -> Figure | None:
    """Reliability diagrams of a suite: one panel per dataset, one line per model × size × scheme (its seeds'
    predictions pooled)."""
    pooled: dict[str, dict[str, list]] = {}
    for rec in records:
        if rec["status"] == "completed" and isinstance(rec.get("test_predictions"), dict):
            labels, probs = record_predictions(rec)
            pooled.setdefault(test_set(rec), {}).setdefault(group_key(rec), []).append((labels, probs))
    if not pooled:
        return None
    fig = new_figure(min(DOUBLE, SINGLE * len(pooled)), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(pooled), sharey=True))
    for ax, (dataset, models) in zip(axes, sorted(pooled.items())):
        _reliability_axes(ax)
        names = distinct_row_labels(models)
        rows = sorted(models.items(), key=lambda item: names[item[0]])
        for colour, (group, runs) in zip(palette(len(rows)), rows):
            labels = np.concatenate([r[0] for r in runs])
            probs = np.concatenate([r[1] for r in runs])
            conf, acc, _ = reliability_bins(labels, probs)
            keep = ~np.isnan(acc)
            ax.plot(conf[keep], acc[keep], marker="o", ms=3, color=colour,
                    label=f"{short(names[group])} {ece_text(labels, probs, group[2], pooled=len(runs) > 1)}")
        ax.set_title(short(dataset))
        ax.legend(loc="upper left", fontsize="x-small")
    fig.suptitle(f"Suite {suite}: reliability (seeds pooled)")
    return fig
