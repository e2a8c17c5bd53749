"""Corruption robustness figures (MedMNIST-C, from the records' `robustness` blocks): severity curves per
corruption and a model × corruption heatmap, one of each per test set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from benchmark.report.beyond_clean import CLEAN, corruption_errors, robustness_frame
from benchmark.report.figures.style import DOUBLE, distinct_row_labels, draw_heatmap, new_figure, palette, row_labels, short

METRIC_LABELS = {"balanced_error": "Balanced error", "acc": "ACC", "auc": "AUC"}


def robustness_test_sets(records: Sequence[dict]) -> list[str]:
    frame = robustness_frame(records)
    return sorted(frame["test_set"].unique())


def plot_severity_curves(records: Sequence[dict], test_set_name: str, suite: str,
                         metric: str = "balanced_error") -> Figure | None:
    """One panel per corruption: `metric` vs severity (0 = clean), one line per model × size × scheme (mean over
    seeds), the band spanning the seeds' lowest and highest value."""
    frame = robustness_frame(records)
    frame = frame[frame["test_set"] == test_set_name]
    corruptions = sorted(set(frame["corruption"]) - {CLEAN})
    if not corruptions:
        return None
    frame = frame.assign(row=row_labels(frame))
    rows = sorted(frame["row"].unique())
    n_cols = min(4, len(corruptions))
    n_rows = -(-len(corruptions) // n_cols)
    fig = new_figure(DOUBLE, 1.7 * n_rows + 0.5)
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, sharex=True, sharey=True)).ravel()
    clean = frame[frame["corruption"] == CLEAN]
    for ax, name in zip(axes, corruptions):
        cells = frame[frame["corruption"] == name]
        for colour, row in zip(palette(len(rows)), rows):
            points = (cells[cells["row"] == row].groupby("severity")[metric].agg(["mean", "min", "max"])
                      .combine_first(clean[clean["row"] == row].groupby("severity")[metric]
                                     .agg(["mean", "min", "max"])).sort_index())
            ax.plot(points.index, points["mean"], marker="o", color=colour, label=short(row, 30))
            ax.fill_between(points.index, points["min"], points["max"], color=colour, alpha=0.2, linewidth=0)
        ax.set_title(name.replace("_", " "))
        ax.set_xticks(range(0, 6))
    for ax in axes[len(corruptions):]:
        ax.set_visible(False)
    for ax in axes[::n_cols]:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    for ax in axes[:len(corruptions)][-n_cols:]:
        ax.set_xlabel("Severity (0 = clean)")
    axes[0].legend(loc="best", fontsize="x-small")
    seeds = frame.groupby("row")["seed"].nunique()
    count = f"{seeds.min()}–{seeds.max()}" if seeds.min() != seeds.max() else f"{seeds.min()}"
    fig.suptitle(f"{suite} · {test_set_name}: MedMNIST-C corruptions\nline: seed mean; band: seed min–max ({count} "
                 f"seed(s))")
    return fig


def plot_robustness_heatmap(records: Sequence[dict], test_set_name: str, suite: str) -> Figure | None:
    """Model × corruption: balanced error averaged over severities 1-5 and seeds, the clean error first."""
    frame = robustness_frame(records)
    if test_set_name not in set(frame["test_set"]):
        return None
    table = corruption_errors(frame, test_set_name)
    data = table.to_numpy(dtype=float)
    fig = new_figure(DOUBLE, 1.9 + 0.3 * len(table))
    ax = fig.subplots()
    annot = [[("—" if not np.isfinite(v) else f"{v:.3f}") for v in row] for row in data]
    draw_heatmap(ax, data, annot, "rocket_r", 0.0, max(0.5, float(np.nanmax(data))), "Balanced error", 6)
    ax.set_xticks(np.arange(data.shape[1]) + 0.5, [c.replace("_", " ") for c in table.columns], rotation=30,
                  ha="right")
    names = distinct_row_labels(table.index)
    ax.set_yticks(np.arange(data.shape[0]) + 0.5, [short(names[key], 34) for key in table.index])
    ax.set_title(f"{suite} · {test_set_name}: balanced error per corruption\n(mean over severities 1-5 and seeds)")
    return fig
