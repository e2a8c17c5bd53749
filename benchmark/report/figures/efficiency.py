"""Accuracy against compute: one figure per test set, each model × size × scheme a point, the Pareto front drawn.

x (log): the training FLOPs of the records' compute blocks when every point of the test set has them, else the
training device-seconds (which every compute block has: a linear probe or kNN run has no training FLOPs); y: test
ACC. A point is the seed mean of both over the runs with a compute block, with the seed range as error bars. The
front joins the points that no other point beats on both axes (less compute and at least the same ACC). Test
sets without any compute block get no figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.report.compute import compute_frame
from benchmark.report.figures.style import SINGLE, new_figure, palette, short

AXES = {"train_flops": "training FLOPs (fwd + bwd)", "device_seconds": "training device-seconds"}


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points not dominated by another (lower-or-equal x and higher-or-equal y, one of them strictly), by x."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    front, best = [], -np.inf
    for index, row in ordered.iterrows():
        if row[y] > best:
            front.append(index)
            best = row[y]
    return ordered.loc[front]


def efficiency_points(records: Sequence[dict], dataset: str) -> tuple[pd.DataFrame, str | None]:
    """(per group: x and ACC seed means and ranges; which x) for one test set; empty without compute blocks."""
    frame = compute_frame(records)
    frame = frame[(frame["dataset"] == dataset) & frame["has_compute"] & frame["acc"].notna()]
    if frame.empty:
        return frame, None
    x = "train_flops" if frame["train_flops"].notna().all() else "device_seconds"
    frame = frame[frame[x].notna() & (frame[x] > 0)]
    groups = frame.groupby(["model", "size", "scheme"], sort=True)
    points = groups.agg(x=(x, "mean"), x_low=(x, "min"), x_high=(x, "max"), acc=("acc", "mean"),
                        acc_low=("acc", "min"), acc_high=("acc", "max"), n=("acc", "size")).reset_index()
    return points, x


def plot_efficiency(records: Sequence[dict], dataset: str, suite: str) -> Figure | None:
    points, x = efficiency_points(records, dataset)
    if x is None or points.empty:
        return None
    fig = new_figure(SINGLE, 2.6 + 0.16 * (len(points) + 1))  # the legend goes below the axes
    ax = fig.subplots()
    colors = palette(len(points))
    for color, row in zip(colors, points.itertuples(index=False)):
        label = short(f"{row.model} {row.size}px {row.scheme}", 34)
        ax.errorbar([row.x], [row.acc], xerr=[[row.x - row.x_low], [row.x_high - row.x]],
                    yerr=[[row.acc - row.acc_low], [row.acc_high - row.acc]], fmt="o", ms=4, color=color, lw=0.8,
                    capsize=2, label=f"{label} (n={row.n})")
    front = pareto_front(points, "x", "acc")
    ax.step(front["x"], front["acc"], where="post", color="0.3", lw=0.9, ls="--", zorder=0, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(AXES[x])
    ax.set_ylabel("test ACC")
    ax.set_title(f"{suite}: {dataset} — ACC vs compute", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0.0, -0.22), frameon=False)
    return fig
