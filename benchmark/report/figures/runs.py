"""Per-run figures: confusion matrices, ROC curves, confidence histograms and training curves."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from benchmark.report.aggregate import METRIC_LABELS
from benchmark.report.figures.style import (
    DOUBLE,
    PALETTE,
    SINGLE,
    draw_heatmap,
    finite_or_none,
    new_figure,
    palette,
    record_class_names,
    record_predictions,
    run_title,
    short,
    wrap,
)


def plot_confusion(rec: dict) -> Figure:
    labels, probs = record_predictions(rec)
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    names = record_class_names(rec, k)
    # many / long names: indices on x, "i: name" on y (not when the names are short codes like "0".."4")
    use_index = (k > 4 or max(len(n) for n in names) > 24) and max(len(n) for n in names) > 3
    fs = 7 if k <= 4 else 6 if k <= 8 else 5
    ylab_w = 22 if use_index else 14
    y_labels = [f"{i}: {wrap(n, ylab_w, 2)}" if use_index else wrap(n, ylab_w) for i, n in enumerate(names)]
    x_labels = [str(i) for i in range(k)] if use_index else [wrap(n, 12) for n in names]
    h = min(6.0, max(2.6, 1.2 + 0.3 * k))
    fig = new_figure(DOUBLE, h)
    ax1, ax2 = fig.subplots(1, 2)
    annot_c = [[str(v) for v in row] for row in cm]
    annot_n = [["–" if np.isnan(v) else f"{v:.2f}" for v in row] for row in norm]
    cbar = draw_heatmap(ax1, cm.astype(float), annot_c, "Blues", 0, max(1, int(cm.max())), "Test images", fs,
                    square=True)
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    draw_heatmap(ax2, norm, annot_n, "Blues", 0, 1, "Fraction of true class", fs, square=True)
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
    fig.suptitle(run_title(rec))
    return fig


def plot_roc(rec: dict) -> Figure:
    from sklearn.metrics import auc as _auc
    from sklearn.metrics import roc_curve

    labels, probs = record_predictions(rec)
    k = probs.shape[1]
    names = record_class_names(rec, k)
    classes = [1] if k == 2 else list(range(k))
    many = len(classes) > 3
    fig = new_figure(SINGLE, 3.3 + (0.16 * math.ceil(len(classes) / 2) if many else 0))
    ax = fig.subplots()
    colors = palette(len(classes))
    skipped = []
    for c, col in zip(classes, colors):
        y = labels == c
        if y.all() or not y.any():
            skipped.append(names[c])
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        ax.plot(fpr, tpr, color=col, lw=1.1, label=f"{short(names[c], 22)} ({_auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.7, color="0.6", label="chance (0.5)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_aspect("equal")
    what = f"positive class: {short(names[1], 30)}" if k == 2 else "one-vs-rest per class"
    ax.set_title(f"{run_title(rec, two_lines=True)}\nROC, {what}")
    if many:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=6,
                   title="Class (AUC)", columnspacing=1.0, handlelength=1.5)
    else:
        ax.legend(loc="lower right", title="Class (AUC)")
    if skipped:
        ax.text(0.98, 0.02 if many else 0.3, "no ROC (one class only): " + ", ".join(short(s, 18) for s in skipped),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=5.5, color="0.4")
    return fig


def plot_confidence(rec: dict) -> Figure:
    labels, probs = record_predictions(rec)
    k = probs.shape[1]
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.linspace(1.0 / k, 1.0, 16)
    fig = new_figure(SINGLE, 2.5)
    ax = fig.subplots()
    c_ok, c_bad = PALETTE[2], PALETTE[3]
    for sel, col, name in ((correct, c_ok, "correct"), (~correct, c_bad, "incorrect")):
        ax.hist(conf[sel], bins=bins, color=col, alpha=0.45, histtype="stepfilled", label=f"{name} (n = {sel.sum()})")
        ax.hist(conf[sel], bins=bins, color=col, histtype="step", lw=1.0)
    ax.set(xlim=(1.0 / k - 0.01, 1.01), xlabel="Confidence (max. predicted class probability)",
           ylabel="Test images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.08)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    ax.set_title(f"{run_title(rec, two_lines=True)}\naccuracy {correct.mean():.3f} · mean confidence "
                 f"{conf.mean():.3f}")
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
                v = finite_or_none(get(h))
            except (KeyError, TypeError):
                v = None
            out.append(np.nan if v is None else v)
        return np.array(out, dtype=float)

    sel = str(rec.get("selection_metric") or "auc")
    metrics = [sel] + [m for m in ("acc", "auc") if m != sel]
    fig = new_figure(DOUBLE, 2.5)
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
            ax2.plot(ep, v, marker=marker, ms=2.5, color=PALETTE[2 + i],
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
            ax.axvline(fail_epoch, ls=":", lw=1.2, color=PALETTE[3],
                       label=f"failed in epoch {fail_epoch}" if ax is ax2 else None)
    if best is not None and best in ep:
        y = series(lambda h: h["val"][sel])[list(ep).index(best)]
        if np.isfinite(y):
            ax2.plot([best], [y], marker="*", ms=9, color="0.15", zorder=5, ls="none")
    ax1.legend(loc="best")
    ax2.legend(loc="best")
    title = run_title(rec)
    if failed:
        title += f" — FAILED in epoch {fail_epoch if fail_epoch is not None else '?'}"
    fig.suptitle(title)
    return fig
