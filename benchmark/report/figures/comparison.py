"""Per-suite comparisons of models: metric heatmaps, per-class recall, ACC vs resolution, average rank."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from benchmark.records import group_key, records_frame, test_set
from benchmark.report.aggregate import HEADLINE_METRICS, METRIC_LABELS, expected_seeds, headline
from benchmark.report.figures.style import (
    DOUBLE,
    PALETTE,
    SINGLE,
    STANDARD_SIZES,
    draw_heatmap,
    finite_or_none,
    new_figure,
    palette,
    record_class_names,
    wrap,
)
from benchmark.report.load import SuitePlan


def _group_tick(g: tuple) -> str:
    model, size, scheme = g
    return f"{model}\n{size} px · {scheme}" if scheme else f"{model}\n{size} px"


def plot_heatmap(records: Sequence[dict], metric: str, suite: str, plan: SuitePlan | None = None
                 ) -> Figure | None:
    mt = headline(records_frame(records), metric, plan, None, suite)
    ds = mt.measured_datasets
    cells = mt.cells[mt.cells["recorded"]]
    groups = [g for g in mt.groups if any((*g, d) in cells.index for d in ds)]  # all-failed groups show "failed"
    if not ds or not groups:
        return None
    data = np.full((len(groups), len(ds)), np.nan)
    annot = np.full(data.shape, "", dtype=object)
    for i, g in enumerate(groups):
        for j, d in enumerate(ds):
            c = mt.cell(g, d)
            if c["status"] in ("not_run", "not_planned") or pd.isna(c["mean"]):
                annot[i, j] = "not run" if not c["recorded"] else "failed"
                continue
            data[i, j] = c["mean"]
            annot[i, j] = f"{c['mean']:.3f}" + ("" if c["status"] == "ok" else f"\n{c['n']}/{c['n_expected']}†")
    rot = 0 if len(ds) <= 3 and max(len(d) for d in ds) <= 14 else 30
    w = min(DOUBLE, max(SINGLE, 1.7 + 0.75 * len(ds)))
    # rotated dataset names hang below the axes (~0.05 in per character at 6.5 pt, times sin 30°)
    fig = new_figure(w, 1.0 + 0.36 * len(groups) + (0.025 * max(len(d) for d in ds) if rot else 0.0))
    ax = fig.subplots()
    finite = data[np.isfinite(data)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    draw_heatmap(ax, data, annot.tolist(), "viridis", lo, hi, f"Test {METRIC_LABELS.get(metric, metric)}", 6)
    for j in range(len(ds)):  # box the best per dataset
        col = data[:, j]
        if np.isfinite(col).any():
            for i in np.flatnonzero(np.isclose(col, np.nanmax(col), rtol=1e-12, atol=1e-15)):
                ax.add_patch(Rectangle((j + 0.04, i + 0.04), 0.92, 0.92, fill=False, lw=1.4, ec="black"))
    ax.set_xticks(np.arange(len(ds)) + 0.5, ds, rotation=rot, ha="right" if rot else "center",
                  rotation_mode="anchor")
    ax.set_yticks(np.arange(len(groups)) + 0.5, [_group_tick(g) for g in groups], rotation=0, va="center")
    ax.tick_params(length=0)
    ax.set(xlabel="Dataset", ylabel="")
    incomplete = bool((mt.cells["status"] == "incomplete").any())
    fig.suptitle(f"Suite {suite}: test {METRIC_LABELS.get(metric, metric)}, mean over seeds\n(box = best per "
                 f"dataset{f'; † = fewer than {mt.n_expected} seeds' if incomplete else ''})")
    return fig


def _recall_by_group(records: Sequence[dict], dataset: str) -> tuple[list[str], dict]:
    per: dict[tuple, list[list[float]]] = {}
    names: list[str] = []
    for rec in records:
        if rec["status"] != "completed" or test_set(rec) != dataset:
            continue
        rc = ((rec.get("test") or {}).get("per_class") or {}).get("recall")
        if not isinstance(rc, list) or not rc:
            continue
        names = names or record_class_names(rec, len(rc))
        per.setdefault(group_key(rec), []).append([np.nan if finite_or_none(x) is None else float(x) for x in rc])
    return names, per


def plot_per_class_recall(records: Sequence[dict], dataset: str, suite: str, plan: SuitePlan | None = None
                          ) -> Figure | None:
    names, per = _recall_by_group(records, dataset)
    if not per:
        return None
    k = len(names)
    groups = sorted(per)
    n_g = len(groups)
    n_exp = len(expected_seeds(records_frame(records), plan))
    wide = k * n_g > 12
    w = DOUBLE if wide else SINGLE
    ncol = 1 if not wide else min(3, n_g)
    fig = new_figure(w, 2.4 + 0.12 * math.ceil(n_g / ncol))
    ax = fig.subplots()
    colors = palette(n_g)
    x = np.arange(k)
    bar_w = 0.82 / n_g
    for gi, (g, col) in enumerate(zip(groups, colors)):
        arr = np.array([r[:k] + [np.nan] * (k - len(r[:k])) for r in per[g]], dtype=float)
        mean = np.nanmean(arr, axis=0)
        std = np.nanstd(arr, axis=0, ddof=1) if len(arr) > 1 else None
        model, size, scheme = g
        n = f"{len(arr)}" if len(arr) >= n_exp else f"{len(arr)}/{n_exp}"
        ax.bar(x - 0.41 + bar_w * (gi + 0.5), mean, width=bar_w * 0.9, color=col, yerr=std,
               error_kw={"elinewidth": 0.6, "capsize": 1.2, "ecolor": "0.2"},
               label=f"{model} · {size} px · {scheme} (n = {n})" if scheme else f"{model} · {size} px (n = {n})")
    per_class_in = (w - 0.8) / k  # horizontal room per class, inches
    chars = max(6, int(per_class_in / 0.055))
    ax.set_xticks(x, [wrap(n, chars, 3) for n in names])
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Recall (mean ± std over seeds)")
    ax.set_xlabel("True class")
    ax.grid(axis="x", visible=False)
    ax.set_title(f"Suite {suite}: per-class test recall on {dataset}")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=ncol, fontsize=6)
    return fig


def plot_resolution(records: Sequence[dict], suite: str, metric: str = "acc", plan: SuitePlan | None = None
                    ) -> Figure | None:
    # (dataset) -> (model, scheme) -> size -> [values]
    data: dict[str, dict[tuple[str, str], dict[int, list[float]]]] = {}
    for rec in records:
        if rec["status"] != "completed":
            continue
        v = finite_or_none((rec.get("test") or {}).get(metric))
        if v is None:
            continue
        key = (str(rec["model"]["name"]), str(rec.get("scheme") or ""))
        data.setdefault(test_set(rec), {}).setdefault(key, {}).setdefault(
            int(rec["dataset"]["size"]), []).append(v)
    if not data:
        return None
    n_exp = len(expected_seeds(records_frame(records), plan))
    datasets = sorted(data)
    lines = sorted({k for d in data.values() for k in d})
    colors = dict(zip(lines, palette(len(lines))))
    markers = dict(zip(lines, "osD^vP*Xph<>"))
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = new_figure(SINGLE if ncols == 1 else DOUBLE, 0.5 + 2.1 * nrows + 0.12 * math.ceil(len(lines) / 2))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    sizes_all = sorted({s for d in data.values() for v in d.values() for s in v})
    ticks = sorted(set(STANDARD_SIZES) | set(sizes_all))
    dodge = {key: 2.0 ** (0.07 * (i - (len(lines) - 1) / 2)) for i, key in enumerate(lines)}  # log-x offset
    for ax, ds in zip(axes, datasets):
        for key in lines:
            if key not in data[ds]:
                continue
            pts = data[ds][key]
            sizes = sorted(pts)
            xs = [s * dodge[key] for s in sizes]
            means = np.array([np.mean(pts[s]) for s in sizes])
            stds = np.array([np.std(pts[s], ddof=1) if len(pts[s]) > 1 else 0.0 for s in sizes])
            ax.errorbar(xs, means, yerr=stds, color=colors[key], lw=1.0, capsize=2, elinewidth=0.7, ls="-",
                        marker="none")
            for x, m, s in zip(xs, means, sizes):
                full = len(pts[s]) >= n_exp
                ax.plot([x], [m], marker=markers[key], color=colors[key], ms=4, ls="none",
                        mfc=colors[key] if full else "white", mew=1.0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
        ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
        ax.set_title(ds)
        ax.set_xlabel("Input resolution (px)")
        ax.set_ylabel(f"Test {METRIC_LABELS.get(metric, metric)}")
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[k], marker=markers[k], lw=1.0, ms=4,
                      label=f"{k[0]} · {k[1]}" if k[1] else k[0]) for k in lines]
    if any(len(v) < n_exp for d in data.values() for pts in d.values() for v in pts.values()):
        handles.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", ms=4,
                              label=f"open marker: < {n_exp} seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=6)
    fig.suptitle(f"Suite {suite}: test {METRIC_LABELS.get(metric, metric)} vs input resolution"
                 + ("\n" if ncols == 1 else " ") + "(mean ± std over seeds)")
    return fig


def plot_avg_rank(records: Sequence[dict], suite: str, plan: SuitePlan | None = None) -> Figure | None:
    frame = records_frame(records)
    tables = {m: headline(frame, m, plan, None, suite) for m in HEADLINE_METRICS}
    primary = tables["acc"]
    groups = [g for g in primary.groups if any(pd.notna(t.row(g)["avg_rank"]) for t in tables.values())]
    if not groups or not primary.measured_datasets:
        return None
    n_ds = len(primary.measured_datasets)
    groups.sort(key=lambda g: (primary.row(g)["avg_rank"] if pd.notna(primary.row(g)["avg_rank"]) else math.inf, g))
    n_g = len(groups)
    fig = new_figure(SINGLE, 1.1 + 0.34 * n_g)
    ax = fig.subplots()
    markers = dict(zip(HEADLINE_METRICS, "oDs^"))
    offs = np.linspace(-0.24, 0.24, len(HEADLINE_METRICS))
    for (m, t), off, col in zip(tables.items(), offs, PALETTE):
        xs, ys = [], []
        for i, g in enumerate(groups):
            r = t.row(g)["avg_rank"]
            if pd.notna(r):
                xs.append(r)
                ys.append(i + off)
        ax.plot(xs, ys, ls="none", marker=markers[m], color=col, ms=4, label=METRIC_LABELS[m])
    labels = []
    for g in groups:
        k = primary.row(g)["n_rank"]
        labels.append(_group_tick(g) + ("" if k == n_ds else f" ({k}/{n_ds} ds)"))
    ax.set_yticks(np.arange(n_g), labels)
    ax.invert_yaxis()
    ax.set_ylim(n_g - 0.5, -0.5)
    ax.set_xlim(0.5, n_g + 0.5)
    if n_g <= 20:
        ax.set_xticks(range(1, n_g + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"Average rank over {n_ds} dataset{'s' if n_ds != 1 else ''} (1 = best)")
    fig.suptitle(f"Suite {suite}: average rank (lower is better)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=6,
               handletextpad=0.2, columnspacing=0.8)
    return fig
