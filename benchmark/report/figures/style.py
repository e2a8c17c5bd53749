"""The figures' shared look (one seaborn theme, paper sizes, colour-blind palette), file saving, and record access.

PNGs are the web's copies (the site's pages, a README). A PNG is saved as a palette image of at most 256 colours
when that moves no pixel by more than 16 levels (of 255) and the image by half a level on average (`compact_png`):
plots pass, at about 40 % of the bytes; grids of colour photographs (RetinaMNIST samples) and smooth colour bars
that would band do not, and keep their full colours, so images of the data are never altered. PDF (and SVG) are
the vector copies for papers, saved as drawn."""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

SINGLE = 3.5  # in, one paper column
DOUBLE = 7.0  # in, two columns
FORMATS = ("png", "pdf", "svg")
PNG_COLOURS = 256
PNG_PALETTE_MAX_ERROR = 16  # levels of 255 a palette may move any pixel's channel; more: the PNG keeps its colours
STANDARD_SIZES = (28, 64, 128, 224)

RC = {
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
PALETTE = sns.color_palette("colorblind")


def palette(n: int) -> list:
    return list(PALETTE) if n <= len(PALETTE) else sns.color_palette("husl", n)


def wrap(text: object, width: int = 16, max_lines: int = 3) -> str:
    s = re.sub(r"(?<=\w)\(", " (", " ".join(str(text).split()))  # "granulocytes(myelocytes" can break
    return textwrap.fill(s, width=width, max_lines=max_lines, placeholder="…", break_long_words=True) or s


def short(text: object, n: int = 26) -> str:
    s = re.sub(r"(?<=\w)\(", " (", " ".join(str(text).split()))
    return s if len(s) <= n else s[: n - 1] + "…"


def safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "figure"


def new_figure(w: float, h: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(w, h), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str], dpi: int) -> list[Path]:
    paths = []
    for fmt in formats:
        p = out_dir / f"{stem}.{fmt}"
        meta = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
                "svg": {"Creator": None, "Date": None}}[fmt]
        # constrained-layout figures already fit their canvas; only manual layouts need a tight box
        tight = {} if fig.get_layout_engine() is not None else {"bbox_inches": "tight", "pad_inches": 0.03}
        if fmt == "png":
            drawn = io.BytesIO()
            fig.savefig(drawn, format=fmt, dpi=dpi, metadata=meta, **tight)
            with Image.open(drawn) as image:
                compact_png(image).save(p, format="PNG", optimize=True)
        else:
            fig.savefig(p, format=fmt, dpi=dpi, metadata=meta, **tight)
        paths.append(p)
    return paths


def compact_png(image: Image.Image) -> Image.Image:
    """`image` as a palette image of at most 256 colours, or in its full colours where the palette would change
    how it looks (a pixel off by more than PNG_PALETTE_MAX_ERROR levels, or half a level on average).

    The palette comes from an octree (no dithering); each entry is then set to the exact colour most of its
    pixels have, so white stays white and a flat colour keeps its value."""
    rgb = image.convert("RGB")
    palette = rgb.quantize(PNG_COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    pixels = np.asarray(rgb, np.int64).reshape(-1, 3)
    codes = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    entries = np.asarray(palette, np.int64).reshape(-1)
    pairs, counts = np.unique((entries << 24) | codes, return_counts=True)
    order = np.lexsort((counts, pairs >> 24))  # by entry, then count: each entry's most frequent colour last
    most = pairs[order][np.r_[np.diff(pairs[order] >> 24) != 0, True]]
    colours = np.zeros((PNG_COLOURS, 3), np.int64)
    colour = most & 0xFFFFFF
    colours[most >> 24] = np.stack([colour >> 16, (colour >> 8) & 255, colour & 255], axis=1)
    palette.putpalette(colours.astype(np.uint8).reshape(-1).tolist())
    error = np.abs(pixels - colours[entries])
    return palette if error.max() <= PNG_PALETTE_MAX_ERROR and error.mean() <= 0.5 else rgb


def finite_or_none(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def record_class_names(rec: dict, k: int) -> list[str]:
    names = list((rec.get("dataset") or {}).get("class_names") or [])
    if len(names) < k:
        names += [str(i) for i in range(len(names), k)]
    return [str(n) for n in names[:k]]


def record_predictions(rec: dict) -> tuple[np.ndarray, np.ndarray]:
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


PLAIN_TRAINING = ("", "from_scratch", "fine_tune")  # the records' schemes of plain training


def distinct_row_labels(keys: Iterable[tuple[str, int, str]]) -> dict[tuple[str, int, str], str]:
    """Each (model, size, scheme) row as the figures name it: "model (size)", plus " · scheme" for any scheme but
    plain training, and for plain training too where one model and size has runs of both kinds (from scratch and
    fine-tuned), so that no two keys share a label (figures group by it)."""
    keys = list(dict.fromkeys(keys))
    plain = Counter((model, size) for model, size, scheme in keys if scheme in PLAIN_TRAINING)
    return {(model, size, scheme): f"{model} ({size})" + ("" if scheme in PLAIN_TRAINING and plain[model, size] == 1
                                                         else f" · {scheme or '—'}")
            for model, size, scheme in keys}


def row_labels(frame) -> list[str]:
    """The distinct row label of each row of a frame with model, size and scheme columns."""
    keys = list(zip(frame["model"], frame["size"], frame["scheme"]))
    labels = distinct_row_labels(keys)
    return [labels[key] for key in keys]


def run_title(rec: dict, two_lines: bool = False) -> str:
    d = rec["dataset"]
    first = f"{d['name']} ({d['size']} px)"
    second = f"{rec['model']['name']} · {rec.get('scheme') or '—'} · seed {rec['seed']}"
    return f"{first}\n{second}" if two_lines else f"{first} · {second}"

def draw_heatmap(ax, data: np.ndarray, annot: list[list[str]], cmap: str, vmin: float, vmax: float, cbar_label: str,
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
