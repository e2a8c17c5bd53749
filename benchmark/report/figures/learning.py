"""Label-efficiency figures: test metric vs labelled training images (log x), one line per model, a band over
the seeds, one panel per test set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, StrMethodFormatter

from benchmark.report.beyond_clean import learning_frame, learning_summary
from benchmark.report.figures.style import DOUBLE, SINGLE, new_figure, palette, row_labels, short

METRIC_LABELS = {"acc": "ACC", "auc": "AUC", "balanced_acc": "Balanced ACC"}


def label_image_counts(ax: Axes, counts: Sequence[int], min_ratio: float = 1.35) -> None:
    """Log x with a labelled tick at each subset size that is at least `min_ratio` times the last one ticked (one
    tick per point, not matplotlib's minor labels, which collide at 2×10¹, 3×10¹, …)."""
    ticks: list[int] = []
    for count in sorted({int(c) for c in counts}):
        if not ticks or count >= min_ratio * ticks[-1]:
            ticks.append(count)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_learning_curves(records: Sequence[dict], suite: str, metric: str = "auc") -> Figure | None:
    """`metric` vs labelled training images per test set: seed mean with its 95 % t-interval as a band (fractions
    and shots of one model on one line, ordered by images)."""
    frame = learning_frame(records)
    if frame.empty or frame["kind"].eq("full").all():
        return None
    summary = learning_summary(frame)
    test_sets = sorted(summary["test_set"].unique())
    fig = new_figure(min(DOUBLE, SINGLE * len(test_sets)), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(test_sets)))
    for ax, name in zip(axes, test_sets):
        part = summary[summary["test_set"] == name]
        part = part.assign(row=row_labels(part))
        rows = sorted(part["row"].unique())
        for colour, row in zip(palette(len(rows)), rows):
            line = part[part["row"] == row].sort_values("n_train")
            ax.plot(line["n_train"], line[metric], marker="o", color=colour, label=short(row, 30))
            low, high = line[f"{metric}_low"], line[f"{metric}_high"]
            if np.isfinite(low).any():
                ax.fill_between(line["n_train"], low, high, color=colour, alpha=0.2, linewidth=0)
        label_image_counts(ax, part["n_train"])
        ax.set(xlabel="Labelled training images (log)", ylabel=METRIC_LABELS.get(metric, metric),
               title=short(name, 40))
        ax.legend(loc="lower right", fontsize="x-small")
    n = frame.groupby(["test_set", "model", "kind", "value"])["seed"].nunique()
    seeds = f"{n.min()}–{n.max()}" if n.min() != n.max() else f"{n.min()}"
    fig.suptitle(f"{suite}: label efficiency\nseed mean, 95 % t-interval ({seeds} seeds)")
    return fig
