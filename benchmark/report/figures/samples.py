"""Image grids: test images per class (per suite), and a run's predictions on them."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from benchmark.report.figures.style import PALETTE, new_figure, record_class_names, record_predictions, run_title, short, wrap

logger = logging.getLogger(__name__)


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


def sample_size(records: Sequence[dict], dataset: str, size: int) -> int:
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
    fig = new_figure(w, h, layout=None)
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
        axes[i, 0].set_ylabel(wrap(names[i], 18, 3), rotation=0, ha="right", va="center", fontsize=6, labelpad=4)
    fig.suptitle(f"{dataset}: test images per class ({size}×{size} px)", fontsize=7.5, y=1 - 0.04 / h, va="top",
                 x=(label_w + ncols * cell / 2) / w)
    return fig


def sample_predictions(rec: dict) -> tuple[list[str], list[list[tuple[np.ndarray, int, float]]]]:
    """(class names, per true class the stored test images with (image, predicted class, confidence)).

    `record["samples"]` holds the first test images of each class in test-set order and `test_predictions`
    holds every test image in that order, so the j-th sample of class c is the j-th test image labelled c."""
    labels, probs = record_predictions(rec)
    s = rec.get("samples")
    if not isinstance(s, dict) or not isinstance(s.get("per_class"), list) or not any(s["per_class"]):
        raise ValueError("record has no samples")
    names = record_class_names(rec, probs.shape[1])
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
    short_names = max(len(n) for n in names) <= 9
    cell, label_w = 0.42, 0.95
    w = label_w + ncols * cell + 0.1
    h = 0.5 + k * (cell + 0.12)
    fig = new_figure(w, h, layout=None)
    axes = np.atleast_2d(fig.subplots(k, ncols, squeeze=False))
    fig.subplots_adjust(left=label_w / w, right=1 - 0.05 / w, top=1 - 0.42 / h, bottom=0.04 / h,
                        wspace=0.08, hspace=0.35)
    ok, bad = PALETTE[2], PALETTE[3]
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
            ax.set_title(f"{short(names[pred], 9) if short_names else pred} {conf:.2f}", fontsize=5, color=color, pad=1.5)
            if pred != i:
                for sp in ax.spines.values():
                    sp.set_visible(True)
                    sp.set_color(bad)
                    sp.set_linewidth(1.2)
        axes[i, 0].set_ylabel(wrap(f"{i}: {names[i]}" if not short_names else names[i], 18, 3), rotation=0, ha="right",
                              va="center", fontsize=6, labelpad=4)
    fig.suptitle(f"{run_title(rec, two_lines=True)}\nrows: true class · above: predicted class, confidence · "
                 "framed: wrong", fontsize=6.5, y=1 - 0.03 / h, va="top", x=(label_w + ncols * cell / 2) / w)
    return fig
