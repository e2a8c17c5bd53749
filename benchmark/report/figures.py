"""Figures drawn from run records alone into `results/figures/<suite>/` (per-run figures in its `runs/`).

Reads records only: no torch, no `benchmark.data` / `benchmark.models` / `benchmark.train`. Every figure is a
standalone `matplotlib.figure.Figure` on an Agg canvas (never pyplot, so no GUI backend and no global
figure state), styled with one seaborn theme (whitegrid, "paper" context, colour-blind palette) and sized
for a paper: 3.5 in wide (single column) or 7 in (double column), fonts 6-8 pt.

Per completed run (`<suite>/runs/<run_id>_<kind>.<fmt>`):
    confusion   counts and row-normalised confusion matrices (from record["test_predictions"])
    roc         ROC curve per class, AUC in the legend (binary: the positive class only)
    confidence  histogram of the max class probability, correct vs incorrect
    curves      training loss / validation loss and validation metrics per epoch, best epoch marked
                (also drawn for failed runs that have a history)
Per suite (`<suite>/<kind>.<fmt>`):
    heatmap_<metric>              model x dataset heatmap of each headline metric (best per column boxed)
    per_class_recall_<dataset>    per-class recall bars per model (mean ± std over seeds)
    resolution_acc                test ACC vs dataset image size (28/64/128/224) per model, one panel per dataset
    avg_rank                      average rank across datasets per model, for each headline metric
    samples_<dataset>-<size>      grid of test images per class (from record["samples"], when present)
plus `<suite>/index.md` listing the files. Every number drawn comes from `benchmark.report.aggregate`.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from benchmark.errors import UserError
from benchmark.metrics import ECE_BINS, calibration_metrics
from benchmark.records import atomic_write_bytes, group_key, records_frame, test_set
from benchmark.report.aggregate import (
    HEADLINE_METRICS,
    METRIC_LABELS,
    expected_seeds,
    headline,
)
from benchmark.report.load import SuiteData, SuitePlan, load_suites

logger = logging.getLogger(__name__)

SINGLE = 3.5  # in, one paper column
DOUBLE = 7.0  # in, two columns
FORMATS = ("png", "pdf", "svg")
STANDARD_SIZES = (28, 64, 128, 224)

_RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper"),
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 6.5,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.edgecolor": "0.8",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "axes.prop_cycle": mpl.cycler(color=sns.color_palette("colorblind")),
}
_PALETTE = sns.color_palette("colorblind")


def _palette(n: int) -> list:
    return list(_PALETTE) if n <= len(_PALETTE) else sns.color_palette("husl", n)


def _wrap(text: object, width: int = 16, max_lines: int = 3) -> str:
    s = re.sub(r"(?<=\w)\(", " (", " ".join(str(text).split()))  # "granulocytes(myelocytes" can break
    return textwrap.fill(s, width=width, max_lines=max_lines, placeholder="…", break_long_words=True) or s


def _short(text: object, n: int = 26) -> str:
    s = re.sub(r"(?<=\w)\(", " (", " ".join(str(text).split()))
    return s if len(s) <= n else s[: n - 1] + "…"


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "figure"


def _new_figure(w: float, h: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(w, h), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str], dpi: int) -> list[Path]:
    paths = []
    for fmt in formats:
        p = out_dir / f"{stem}.{fmt}"
        meta = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                "svg": {"Creator": None, "Date": None}}[fmt]
        # constrained-layout figures already fit their canvas; only manual layouts need a tight box
        tight = {} if fig.get_layout_engine() is not None else {"bbox_inches": "tight", "pad_inches": 0.03}
        fig.savefig(p, format=fmt, dpi=dpi, metadata=meta, **tight)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------------------
# Record access
# ----------------------------------------------------------------------------------------------------------
def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _class_names(rec: dict, k: int) -> list[str]:
    names = list((rec.get("dataset") or {}).get("class_names") or [])
    if len(names) < k:
        names += [str(i) for i in range(len(names), k)]
    return [str(n) for n in names[:k]]


def _predictions(rec: dict) -> tuple[np.ndarray, np.ndarray]:
    tp = rec.get("test_predictions")
    if not isinstance(tp, dict) or "labels" not in tp or "probs" not in tp:
        raise ValueError("record has no test_predictions")
    labels = np.asarray(tp["labels"], dtype=int).reshape(-1)
    probs = np.asarray(tp["probs"], dtype=float)
    if probs.ndim == 1 or (probs.ndim == 2 and probs.shape[1] == 1):  # P(positive) only
        p1 = probs.reshape(-1)
        probs = np.stack([1 - p1, p1], axis=1)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"test_predictions shapes do not match: labels {labels.shape}, probs {probs.shape}")
    k = max(probs.shape[1], len((rec.get("dataset") or {}).get("class_names") or []), int(labels.max()) + 1)
    if probs.shape[1] < k:
        probs = np.pad(probs, ((0, 0), (0, k - probs.shape[1])))
    return labels, probs


def _run_title(rec: dict, two_lines: bool = False) -> str:
    d = rec["dataset"]
    first = f"{d['name']} ({d['size']} px)"
    second = f"{rec['model']['name']} · {rec.get('scheme') or '—'} · seed {rec['seed']}"
    return f"{first}\n{second}" if two_lines else f"{first} · {second}"


# ----------------------------------------------------------------------------------------------------------
# Per-run figures
# ----------------------------------------------------------------------------------------------------------
def plot_confusion(rec: dict) -> Figure:
    labels, probs = _predictions(rec)
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    names = _class_names(rec, k)
    # many / long names: indices on x, "i: name" on y (not when the names are short codes like "0".."4")
    use_index = (k > 4 or max(len(n) for n in names) > 24) and max(len(n) for n in names) > 3
    fs = 7 if k <= 4 else 6 if k <= 8 else 5
    ylab_w = 22 if use_index else 14
    y_labels = [f"{i}: {_wrap(n, ylab_w, 2)}" if use_index else _wrap(n, ylab_w) for i, n in enumerate(names)]
    x_labels = [str(i) for i in range(k)] if use_index else [_wrap(n, 12) for n in names]
    h = min(6.0, max(2.6, 1.2 + 0.3 * k))
    fig = _new_figure(DOUBLE, h)
    ax1, ax2 = fig.subplots(1, 2)
    annot_c = [[str(v) for v in row] for row in cm]
    annot_n = [["–" if np.isnan(v) else f"{v:.2f}" for v in row] for row in norm]
    cbar = _heatmap(ax1, cm.astype(float), annot_c, "Blues", 0, max(1, int(cm.max())), "Test images", fs,
                    square=True)
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    _heatmap(ax2, norm, annot_n, "Blues", 0, 1, "Fraction of true class", fs, square=True)
    for ax, title in ((ax1, "Counts"), (ax2, "Row-normalised (diagonal = recall)")):
        ax.set_title(title)
        ax.set_xlabel("Predicted class" + (" (index)" if use_index else ""))
        ax.set_xticks(np.arange(k) + 0.5, x_labels, rotation=0)
        ax.tick_params(length=0)
    ax1.set_ylabel("True class")
    ax1.set_yticks(np.arange(k) + 0.5, y_labels, rotation=0, va="center")
    ax2.set_ylabel("True class (index)" if use_index else "True class")
    ax2.set_yticks(np.arange(k) + 0.5, [str(i) for i in range(k)] if use_index else y_labels, rotation=0,
                   va="center")
    fig.suptitle(_run_title(rec))
    return fig


def plot_roc(rec: dict) -> Figure:
    from sklearn.metrics import auc as _auc
    from sklearn.metrics import roc_curve

    labels, probs = _predictions(rec)
    k = probs.shape[1]
    names = _class_names(rec, k)
    classes = [1] if k == 2 else list(range(k))
    many = len(classes) > 3
    fig = _new_figure(SINGLE, 3.3 + (0.16 * math.ceil(len(classes) / 2) if many else 0))
    ax = fig.subplots()
    colors = _palette(len(classes))
    skipped = []
    for c, col in zip(classes, colors):
        y = labels == c
        if y.all() or not y.any():
            skipped.append(names[c])
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        ax.plot(fpr, tpr, color=col, lw=1.1, label=f"{_short(names[c], 22)} ({_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.7, color="0.6", label="chance (0.5)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_aspect("equal")
    what = f"positive class: {_short(names[1], 30)}" if k == 2 else "one-vs-rest per class"
    ax.set_title(f"{_run_title(rec, two_lines=True)}\nROC, {what}")
    if many:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=6,
                   title="Class (AUC)", columnspacing=1.0, handlelength=1.5)
    else:
        ax.legend(loc="lower right", title="Class (AUC)")
    if skipped:
        ax.text(0.98, 0.02 if many else 0.3, "no ROC (one class only): " + ", ".join(_short(s, 18) for s in skipped),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=5.5, color="0.4")
    return fig


def plot_confidence(rec: dict) -> Figure:
    labels, probs = _predictions(rec)
    k = probs.shape[1]
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.linspace(1.0 / k, 1.0, 16)
    fig = _new_figure(SINGLE, 2.5)
    ax = fig.subplots()
    c_ok, c_bad = _PALETTE[2], _PALETTE[3]
    for sel, col, name in ((correct, c_ok, "correct"), (~correct, c_bad, "incorrect")):
        ax.hist(conf[sel], bins=bins, color=col, alpha=0.45, histtype="stepfilled", label=f"{name} (n = {sel.sum()})")
        ax.hist(conf[sel], bins=bins, color=col, histtype="step", lw=1.0)
    ax.set(xlim=(1.0 / k - 0.01, 1.01), xlabel="Confidence (max. predicted class probability)",
           ylabel="Test images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.08)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    ax.set_title(f"{_run_title(rec, two_lines=True)}\naccuracy {correct.mean():.3f} · mean confidence "
                 f"{conf.mean():.3f}")
    return fig


def _reliability(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    labels, probs = _predictions(rec)
    conf, acc, count = _reliability(labels, probs)
    fig = _new_figure(SINGLE, 2.8)
    ax = fig.subplots()
    _reliability_axes(ax)
    ax.bar((np.arange(ECE_BINS) + 0.5) / ECE_BINS, np.nan_to_num(acc), width=1 / ECE_BINS, color=_PALETTE[0],
           alpha=0.35, edgecolor=_PALETTE[0], label="accuracy per bin")
    ax.scatter(conf, acc, s=8 + 40 * count / max(count.max(), 1), color=_PALETTE[0], zorder=3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{_run_title(rec, two_lines=True)}\nECE {calibration_metrics(labels, probs)['ece']:.3f}")
    return fig


def plot_reliability_suite(records: Sequence[dict], suite: str) -> Figure | None:
    """Reliability diagrams of a suite: one panel per dataset, one line per model (its seeds' predictions pooled)."""
    pooled: dict[str, dict[str, list]] = {}
    for rec in records:
        if rec["status"] == "completed" and isinstance(rec.get("test_predictions"), dict):
            labels, probs = _predictions(rec)
            model = f"{rec['model']['name']} ({rec['dataset']['size']})"
            pooled.setdefault(test_set(rec), {}).setdefault(model, []).append((labels, probs))
    if not pooled:
        return None
    fig = _new_figure(min(DOUBLE, SINGLE * len(pooled)), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(pooled), sharey=True))
    for ax, (dataset, models) in zip(axes, sorted(pooled.items())):
        _reliability_axes(ax)
        for colour, (model, runs) in zip(_palette(len(models)), sorted(models.items())):
            labels = np.concatenate([r[0] for r in runs])
            probs = np.concatenate([r[1] for r in runs])
            conf, acc, _ = _reliability(labels, probs)
            keep = ~np.isnan(acc)
            ece = calibration_metrics(labels, probs)["ece"]
            ax.plot(conf[keep], acc[keep], marker="o", ms=3, color=colour, label=f"{_short(model)} ECE {ece:.3f}")
        ax.set_title(_short(dataset))
        ax.legend(loc="upper left", fontsize="x-small")
    fig.suptitle(f"Suite {suite}: reliability (seeds pooled)")
    return fig


def plot_curves(rec: dict) -> Figure:
    hist = [h for h in (rec.get("history") or []) if isinstance(h, dict) and "epoch" in h]
    if not hist:
        raise ValueError("record has no history")
    ep = np.array([h["epoch"] for h in hist], dtype=float)

    def series(get):
        out = []
        for h in hist:
            try:
                v = _finite(get(h))
            except (KeyError, TypeError):
                v = None
            out.append(np.nan if v is None else v)
        return np.array(out, dtype=float)

    sel = str(rec.get("selection_metric") or "auc")
    metrics = [sel] + [m for m in ("acc", "auc") if m != sel]
    fig = _new_figure(DOUBLE, 2.5)
    ax1, ax2 = fig.subplots(1, 2)
    marker = "o" if len(ep) <= 40 else None
    ax1.plot(ep, series(lambda h: h["train_loss"]), marker=marker, ms=2.5, label="train loss")
    vl = series(lambda h: h["val"]["loss"])
    if np.isfinite(vl).any():
        ax1.plot(ep, vl, marker=marker, ms=2.5, label="validation loss")
    ax1.set(xlabel="Epoch", ylabel="Loss (cross-entropy)", title="Loss")
    for i, m in enumerate(metrics):
        v = series(lambda h, m=m: h["val"][m])
        if np.isfinite(v).any():
            ax2.plot(ep, v, marker=marker, ms=2.5, color=_PALETTE[2 + i],
                     label=f"validation {METRIC_LABELS.get(m, m)}" + (" (selection)" if m == sel else ""))
    ax2.set(xlabel="Epoch", ylabel="Validation metric", title="Validation metrics")
    best = rec.get("best_epoch")
    failed = rec.get("status") == "failed"
    fail_epoch = (rec.get("error") or {}).get("epoch") if failed else None
    last = int(max([ep.max()] + [e for e in (best, fail_epoch) if isinstance(e, (int, float))]))
    for ax in (ax1, ax2):
        ax.margins(y=0.1)
        ax.set_xlim(0.5, last + 0.5)
        if last <= 15:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            ax.axvline(best, ls="--", lw=0.8, color="0.25", label=f"best epoch ({best})" if ax is ax2 else None)
        if isinstance(fail_epoch, (int, float)):
            ax.axvline(fail_epoch, ls=":", lw=1.2, color=_PALETTE[3],
                       label=f"failed in epoch {fail_epoch}" if ax is ax2 else None)
    if best is not None and best in ep:
        y = series(lambda h: h["val"][sel])[list(ep).index(best)]
        if np.isfinite(y):
            ax2.plot([best], [y], marker="*", ms=9, color="0.15", zorder=5, ls="none")
    ax1.legend(loc="best")
    ax2.legend(loc="best")
    title = _run_title(rec)
    if failed:
        title += f" — FAILED in epoch {fail_epoch if fail_epoch is not None else '?'}"
    fig.suptitle(title)
    return fig


def _heatmap(ax, data: np.ndarray, annot: list[list[str]], cmap: str, vmin: float, vmax: float, cbar_label: str,
             fontsize: float, square: bool = False):
    """Annotated heatmap (cell (i, j) centred at (j + .5, i + .5), row 0 on top); NaN cells grey with their text.

    Drawn with pcolormesh rather than seaborn.heatmap, which forces an extra full draw per call."""
    n_r, n_c = data.shape
    cm = mpl.colormaps[cmap]
    norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
    mesh = ax.pcolormesh(np.ma.masked_invalid(data), cmap=cm, norm=norm, edgecolors="white", linewidth=0.6)
    ax.set_facecolor("0.92")
    ax.set_xlim(0, n_c)
    ax.set_ylim(n_r, 0)
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_visible(False)
    if square:
        ax.set_aspect("equal")
    for i in range(n_r):
        for j in range(n_c):
            v = data[i, j]
            if np.isfinite(v):
                r, g, b, _ = cm(norm(v))
                color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "0.1"
            else:
                color = "0.35"
            ax.text(j + 0.5, i + 0.5, annot[i][j], ha="center", va="center", fontsize=fontsize, color=color)
    cbar = ax.figure.colorbar(mesh, ax=ax, shrink=0.85 if square else 0.9)
    cbar.set_label(cbar_label)
    cbar.outline.set_visible(False)
    return cbar



# ----------------------------------------------------------------------------------------------------------
# Per-suite figures
# ----------------------------------------------------------------------------------------------------------
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
    fig = _new_figure(w, 1.0 + 0.36 * len(groups) + (0.025 * max(len(d) for d in ds) if rot else 0.0))
    ax = fig.subplots()
    finite = data[np.isfinite(data)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    _heatmap(ax, data, annot.tolist(), "viridis", lo, hi, f"Test {METRIC_LABELS.get(metric, metric)}", 6)
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
        if rec["status"] != "completed" or str(rec["dataset"]["name"]) != dataset:
            continue
        rc = ((rec.get("test") or {}).get("per_class") or {}).get("recall")
        if not isinstance(rc, list) or not rc:
            continue
        names = names or _class_names(rec, len(rc))
        per.setdefault(group_key(rec), []).append([np.nan if _finite(x) is None else float(x) for x in rc])
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
    fig = _new_figure(w, 2.4 + 0.12 * math.ceil(n_g / ncol))
    ax = fig.subplots()
    colors = _palette(n_g)
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
    ax.set_xticks(x, [_wrap(n, chars, 3) for n in names])
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
        v = _finite((rec.get("test") or {}).get(metric))
        if v is None:
            continue
        key = (str(rec["model"]["name"]), str(rec.get("scheme") or ""))
        data.setdefault(str(rec["dataset"]["name"]), {}).setdefault(key, {}).setdefault(
            int(rec["dataset"]["size"]), []).append(v)
    if not data:
        return None
    n_exp = len(expected_seeds(records_frame(records), plan))
    datasets = sorted(data)
    lines = sorted({k for d in data.values() for k in d})
    colors = dict(zip(lines, _palette(len(lines))))
    markers = dict(zip(lines, "osD^vP*Xph<>"))
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = _new_figure(SINGLE if ncols == 1 else DOUBLE, 0.5 + 2.1 * nrows + 0.12 * math.ceil(len(lines) / 2))
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
    fig = _new_figure(SINGLE, 1.1 + 0.34 * n_g)
    ax = fig.subplots()
    markers = dict(zip(HEADLINE_METRICS, "oDs^"))
    offs = np.linspace(-0.24, 0.24, len(HEADLINE_METRICS))
    for (m, t), off, col in zip(tables.items(), offs, _PALETTE):
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


def _decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64, validate=False))) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "LA") else "L")
        return np.asarray(im)


def sample_sets(records: Sequence[dict]) -> dict[tuple[str, int], tuple[list[str], list[list[np.ndarray]]]]:
    """(dataset, size) -> (class names, decoded images per class) from the first record carrying samples."""
    out: dict[tuple[str, int], tuple[list[str], list[list[np.ndarray]]]] = {}
    for rec in sorted(records, key=lambda r: (r["status"] != "completed", str(r["run_id"]))):
        s = rec.get("samples")
        key = (str(rec["dataset"]["name"]), int(rec["dataset"]["size"]))
        if key in out or not isinstance(s, dict) or not isinstance(s.get("per_class"), list):
            continue
        imgs: list[list[np.ndarray]] = []
        bad = 0
        for cls in s["per_class"]:
            row = []
            for b64 in (cls or [])[:8]:
                try:
                    row.append(_decode_png(b64))
                except Exception:  # noqa: BLE001 - any undecodable entry is skipped, not fatal
                    bad += 1
            imgs.append(row)
        if bad:
            logger.warning(f"{rec['run_id']}: skipped {bad} undecodable sample image(s)")
        if not any(imgs):
            continue
        names = [str(n) for n in (s.get("class_names") or rec["dataset"].get("class_names") or [])]
        names += [str(i) for i in range(len(names), len(imgs))]
        out[key] = (names[: len(imgs)], imgs)
    return out


def _sample_size(records: Sequence[dict], dataset: str, size: int) -> int:
    """Side length of the stored sample images (record["samples"]["size"]), else the dataset size."""
    for rec in records:
        s = rec.get("samples")
        if str(rec["dataset"]["name"]) == dataset and int(rec["dataset"]["size"]) == size and isinstance(s, dict):
            try:
                return int(s.get("size") or size)
            except (TypeError, ValueError):
                return size
    return size



def _image_cell(ax) -> None:
    """An axis that shows only an image: no ticks, grid or frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_samples(dataset: str, size: int, names: list[str], imgs: list[list[np.ndarray]], suite: str) -> Figure:
    k = len(imgs)
    ncols = max(1, max(len(r) for r in imgs))
    cell = 0.3  # in per image: 8 images + labels fit one 3.5-in column
    label_w = 0.95
    w = label_w + ncols * cell + 0.1
    h = 0.3 + k * (cell + 0.03)
    fig = _new_figure(w, h, layout=None)
    axes = np.atleast_2d(fig.subplots(k, ncols, squeeze=False))
    fig.subplots_adjust(left=label_w / w, right=1 - 0.05 / w, top=1 - 0.26 / h, bottom=0.02 / h,
                        wspace=0.06, hspace=0.08)
    for i in range(k):
        for j in range(ncols):
            ax = axes[i, j]
            _image_cell(ax)
            if j < len(imgs[i]):
                im = imgs[i][j]
                interp = "nearest" if im.shape[0] <= 64 else "antialiased"  # show small images' real pixels
                if im.ndim == 2:
                    ax.imshow(im, cmap="gray", vmin=0, vmax=255, interpolation=interp)
                else:
                    ax.imshow(im, interpolation=interp)
            elif j == 0:
                ax.text(0.0, 0.5, "(no test images)", fontsize=5.5, color="0.4", va="center")
        axes[i, 0].set_ylabel(_wrap(names[i], 18, 3), rotation=0, ha="right", va="center", fontsize=6, labelpad=4)
    fig.suptitle(f"{dataset}: test images per class ({size}×{size} px)", fontsize=7.5, y=1 - 0.04 / h, va="top",
                 x=(label_w + ncols * cell / 2) / w)
    return fig


def sample_predictions(rec: dict) -> tuple[list[str], list[list[tuple[np.ndarray, int, float]]]]:
    """(class names, per true class the stored test images with (image, predicted class, confidence)).

    `record["samples"]` holds the first test images of each class in test-set order and `test_predictions`
    holds every test image in that order, so the j-th sample of class c is the j-th test image labelled c."""
    labels, probs = _predictions(rec)
    s = rec.get("samples")
    if not isinstance(s, dict) or not isinstance(s.get("per_class"), list) or not any(s["per_class"]):
        raise ValueError("record has no samples")
    names = _class_names(rec, probs.shape[1])
    rows = []
    for c, encoded in enumerate(s["per_class"][: len(names)]):
        encoded = list(encoded or [])[:8]
        index = np.flatnonzero(labels == c)[: len(encoded)]
        if len(index) < len(encoded):
            raise ValueError(f"{len(encoded)} samples of class {c} but {len(index)} test images with that label")
        rows.append([(_decode_png(b64), int(probs[i].argmax()), float(probs[i].max())) for b64, i in zip(encoded, index)])
    return names, rows


def plot_predictions(rec: dict) -> Figure:
    """The record's stored test images per true class (rows), each titled with its predicted class and
    confidence; wrong predictions framed (in the palette's red)."""
    names, rows = sample_predictions(rec)
    k = len(rows)
    ncols = max(1, max(len(r) for r in rows))
    short = max(len(n) for n in names) <= 9
    cell, label_w = 0.42, 0.95
    w = label_w + ncols * cell + 0.1
    h = 0.5 + k * (cell + 0.12)
    fig = _new_figure(w, h, layout=None)
    axes = np.atleast_2d(fig.subplots(k, ncols, squeeze=False))
    fig.subplots_adjust(left=label_w / w, right=1 - 0.05 / w, top=1 - 0.42 / h, bottom=0.04 / h,
                        wspace=0.08, hspace=0.35)
    ok, bad = _PALETTE[2], _PALETTE[3]
    for i in range(k):
        for j in range(ncols):
            ax = axes[i, j]
            _image_cell(ax)
            if j >= len(rows[i]):
                if j == 0:
                    ax.text(0.0, 0.5, "(no test images)", fontsize=5.5, color="0.4", va="center")
                continue
            im, pred, conf = rows[i][j]
            interp = "nearest" if im.shape[0] <= 64 else "antialiased"
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255, interpolation=interp)
            color = ok if pred == i else bad
            ax.set_title(f"{_short(names[pred], 9) if short else pred} {conf:.2f}", fontsize=5, color=color, pad=1.5)
            if pred != i:
                for sp in ax.spines.values():
                    sp.set_visible(True)
                    sp.set_color(bad)
                    sp.set_linewidth(1.2)
        axes[i, 0].set_ylabel(_wrap(f"{i}: {names[i]}" if not short else names[i], 18, 3), rotation=0, ha="right",
                              va="center", fontsize=6, labelpad=4)
    fig.suptitle(f"{_run_title(rec, two_lines=True)}\nrows: true class · above: predicted class, confidence · "
                 "framed: wrong", fontsize=6.5, y=1 - 0.03 / h, va="top", x=(label_w + ncols * cell / 2) / w)
    return fig


RUN_FIGURES = {"confusion": plot_confusion, "roc": plot_roc, "confidence": plot_confidence,
               "reliability": plot_reliability, "curves": plot_curves, "predictions": plot_predictions}


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def _check_args(formats: Sequence[str], dpi: int) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = ("png", "pdf") if formats == "both" else (formats,)
    fmts = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UserError(f"unsupported figure format(s) {bad or list(formats)}; use png, pdf or both")
    if not isinstance(dpi, (int, np.integer)) or isinstance(dpi, bool) or not 20 <= int(dpi) <= 1200:
        raise UserError(f"--dpi must be an integer between 20 and 1200, got {dpi!r}")
    return fmts


@dataclass(frozen=True)
class FigureJob:
    """One figure of a suite: `stem` is its file name without extension, relative to the suite's folder
    (`runs/<run_id>_<kind>` for a per-run figure); `draw()` returns the figure, or None when there is nothing to
    draw."""

    stem: str
    label: str
    kind: str
    draw: Callable[[], Figure | None]
    run_id: str | None = None


def figure_jobs(data: SuiteData) -> list[FigureJob]:
    """Every figure of one suite, per-suite figures first, then per run (sorted by run id)."""
    recs, plan, suite_name = data.records, data.plan, data.suite
    jobs = [FigureJob(f"heatmap_{m}", f"heatmap {m}", f"heatmap_{m}", partial(plot_heatmap, recs, m, suite_name, plan))
            for m in HEADLINE_METRICS]
    for ds in sorted({str(r["dataset"]["name"]) for r in recs}):
        jobs.append(FigureJob(f"per_class_recall_{_safe(ds)}", f"per-class recall {ds}", "per_class_recall",
                              partial(plot_per_class_recall, recs, ds, suite_name, plan)))
    jobs.append(FigureJob("resolution_acc", "ACC vs resolution", "resolution_acc",
                          partial(plot_resolution, recs, suite_name, "acc", plan)))
    jobs.append(FigureJob("avg_rank", "average rank", "avg_rank", partial(plot_avg_rank, recs, suite_name, plan)))
    jobs.append(FigureJob("reliability", "reliability", "reliability", partial(plot_reliability_suite, recs, suite_name)))
    for (ds, size), (names, imgs) in sorted(sample_sets(recs).items()):
        jobs.append(FigureJob(_safe(f"samples_{ds}-{size}"), f"samples {ds} {size}px", "samples",
                              partial(plot_samples, ds, _sample_size(recs, ds, size), names, imgs, suite_name)))
    for rec in recs:
        rid = str(rec["run_id"])
        has_predictions = isinstance(rec.get("test_predictions"), dict)
        kinds = ["curves"] if rec.get("history") else []
        if rec["status"] == "completed":
            if not has_predictions:
                logger.warning(f"{rid}: no test_predictions in the record; confusion/ROC/confidence figures skipped")
            else:
                kinds = ["confusion", "roc", "confidence", "reliability", *kinds]
                if isinstance(rec.get("samples"), dict):
                    kinds.append("predictions")
        for kind in kinds:
            jobs.append(FigureJob(f"runs/{_safe(f'{rid}_{kind}')}", f"{rid} {kind}", kind,
                                  partial(RUN_FIGURES[kind], rec), rid))
    return jobs


@contextmanager
def _warnings_logged(figure: str) -> Iterator[None]:
    """Library warnings raised while one figure is drawn and saved (matplotlib's `UserWarning`s, e.g. a layout
    that did not fit the canvas) as log warnings naming the figure, each once; deprecations stay warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    logged = set()
    for warning in caught:
        if not issubclass(warning.category, UserWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in logged:
            logged.add(str(warning.message))
            logger.warning(f"figure {figure}: {warning.message}")


def suite_figures(data: SuiteData, folder: Path | str, formats: Sequence[str] = ("png", "pdf"), dpi: int = 200,
                  reuse: Sequence[str] = ()) -> list[tuple[FigureJob, list[Path]]]:
    """Draw one suite's figures into `folder` (per-run ones into `folder/runs/`) and write `folder/index.md`.

    `reuse`: formats that count as already drawn — a figure with a file in one of them is not drawn again (the
    site draws only what is missing). Returns each figure with its files (every format present on disk); a
    figure that could not be drawn (a warning says why) is left out."""
    fmts = _check_args(formats, dpi)
    folder = Path(folder)
    out: list[tuple[FigureJob, list[Path]]] = []
    for job in figure_jobs(data):
        base = folder / job.stem
        if not any(base.with_name(f"{base.name}.{f}").is_file() for f in reuse):
            with mpl.rc_context(_RC), _warnings_logged(base.name):
                try:
                    fig = job.draw()
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    logger.warning(f"skipping figure {base.name}: {exc}")
                    continue
                if fig is None:
                    continue
                base.parent.mkdir(parents=True, exist_ok=True)
                _save(fig, base.parent, base.name, fmts, int(dpi))
        paths = [base.with_name(f"{base.name}.{f}") for f in FORMATS if base.with_name(f"{base.name}.{f}").is_file()]
        out.append((job, paths))
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# Figures for suite `{data.suite}`", ""]
    for job, paths in out:
        lines.append(f"- {job.label}: " + ", ".join(f"[{p.suffix[1:]}]({p.relative_to(folder).as_posix()})"
                                                    for p in paths))
    atomic_write_bytes(folder / "index.md", ("\n".join(lines) + "\n").encode("utf-8"))
    return out


def write_figures(runs: Path | str = "results", output: Path | str = "results/figures", suite: str | None = None,
                  formats=("png", "pdf"), dpi: int = 200, suites_dir: Path | str | None = None) -> list[Path]:
    """Draw every per-suite figure into `output/<suite>/` and every per-run figure into `output/<suite>/runs/`,
    from the records under `runs` (a results folder, a runs folder, a suite folder or record files).

    Seeds expected per group come from `<suite>.yaml` (in `suites_dir`, else ./suites/ or the shipped suites), as
    in the leaderboard, so a group short of the suite's seeds is marked even when every record has fewer.

    Returns the written paths (figures in each format, then one `index.md` per suite)."""
    fmts = _check_args(formats, dpi)
    written: list[Path] = []
    for suite_name, data in load_suites(runs, suite, suites_dir).items():
        folder = Path(output) / _safe(suite_name)
        for _, paths in suite_figures(data, folder, fmts, dpi):
            written += [p for p in paths if p.suffix[1:] in fmts]
        written.append(folder / "index.md")
    return written
