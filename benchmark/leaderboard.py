"""Leaderboard tables built from run records (`results/runs/<suite>/*.json`) and the suite's planned grid.

Reads records and the suite file as plain YAML only: no torch, no `benchmark.config` / `benchmark.data` /
`benchmark.models` / `benchmark.train`.

The planned grid of a suite comes from `suites/<suite>.yaml` (in the current directory, else the project's
`suites/` folder): its datasets (a name = 28 px, `breast_ultrasound` 224 px; or `{name, size}`), models and
seeds. A planned cell is keyed by (model, dataset, size) -- a model's scheme depends on its preset, so rows
match the plan by (model, size). Without the file the plan is unknown and the tables fall back to what the
records and published rows show.

Output (`write_leaderboard`): `leaderboard.md`, `leaderboard.csv`, `leaderboard.tex` (booktabs). Per suite:

* one table per headline metric (ACC, AUC, macro F1, balanced ACC): rows = model x dataset size x scheme
  (plus one row per planned model x size that has no record yet), columns = the datasets measured or
  planned; each cell is the mean ± sample standard deviation (ddof=1) over the completed seeds, with the
  number of seeds.
* Expected seeds of a group = the seeds the suite file lists (without the file: the distinct seeds among
  *all* the suite's records, completed or failed). A cell with fewer completed seeds is marked "k/N seeds"
  (and † in LaTeX) -- it is the mean over the seeds that exist, never silently presented as complete. A cell
  whose runs all failed reads "failed (0/N seeds)"; a planned cell with no record reads "not yet run", an
  unplanned one "—" (without the file every cell counts as planned).
* Bold = best measured mean per dataset (higher is better for every headline metric; exact ties are all
  bold). "Average" = mean of a row's per-dataset means over the measured datasets; "Avg. rank" = mean of
  the row's per-dataset ranks (1 = best, ties share the average rank). A row that lacks some measured
  datasets is annotated "(k/N datasets)" and is not eligible for bold in those two columns.
* Published reference rows (`benchmark/published.csv`) are listed under the measured rows, marked
  "published", and never take part in bold, averages or ranks. With the suite file they fill only the
  suite's columns; without it they are shown when their model or their dataset occurs in the records, and a
  dataset that only published rows have becomes a column whose measured cells read "not yet run".
* per-class precision / recall / F1 per dataset (mean over completed seeds), failed runs with their error
  and epoch, incomplete groups, and paired model comparisons (`compare_models`).

Everything is sorted and formatted with fixed precision, and nothing time-dependent is written, so the same
records give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from benchmark.errors import UserError
from benchmark.records import atomic_write_bytes, read_record

HEADLINE_METRICS: tuple[str, ...] = ("acc", "auc", "f1_macro", "balanced_acc")
METRIC_LABELS: dict[str, str] = {
    "acc": "ACC",
    "auc": "AUC",
    "f1_macro": "Macro F1",
    "balanced_acc": "Balanced ACC",
}
#: metrics that get a pairwise-comparison section in leaderboard.md / .tex
PAIRWISE_METRICS: tuple[str, ...] = ("acc", "auc")
PUBLISHED_CSV = Path(__file__).with_name("published.csv")
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
#: size of a dataset named in a suite file without one (`benchmark.data`'s defaults; 28 for the others)
DEFAULT_SIZES: dict[str, int] = {"breast_ultrasound": 224}
PUBLISHED_COLUMNS = ["model", "dataset", "size", "scheme", "metric", "value", "source", "reference"]

NOT_RUN = "not yet run"
DASH = "—"


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------
def _created_key(rec: dict) -> tuple:
    raw = rec.get("created_at") or ""
    try:
        ts = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except (ValueError, TypeError, OverflowError):
        ts = float("-inf")
    return (ts, str(raw))


def load_records(runs_dir: Path | str, suite: str | None = None) -> list[dict]:
    """Read `runs_dir/<suite>/*.json` (or every suite's), skipping unreadable / half-written files.

    * `*.tmp` files (atomic-write leftovers) are ignored; a file that fails to parse or is not a schema-1
      record is skipped with a `UserWarning`.
    * Records that share a `config_hash` within a suite (re-runs of the same config) collapse to one: a
      completed record beats a failed one, then the newest `created_at`, then the file name.
    * Records of one group, dataset and seed with different configs (e.g. a trial with other epochs) collapse
      to the newest completed one, with a warning: a seed is never counted twice.
    * Each returned record gets `record["suite"]` filled from its folder when the field is missing.

    Returns records sorted by (suite, run_id).
    """
    runs_dir = Path(runs_dir)
    if suite is not None:
        folder = runs_dir / suite
        if not folder.is_dir():
            raise UserError(f"no records for suite {suite!r}: {folder} does not exist; run the suite first or pass --runs DIR")
        files = sorted(folder.glob("*.json"))
    else:
        if not runs_dir.is_dir():
            raise UserError(f"runs folder {runs_dir} does not exist; run a suite first or pass --runs DIR")
        files = sorted(runs_dir.glob("*/*.json"))

    best: dict[tuple[str, str], tuple[tuple, dict]] = {}
    for path in files:
        rec = read_record(path)
        if rec is None:
            continue
        rec.setdefault("suite", path.parent.name)
        if rec.get("suite") is None:
            rec["suite"] = path.parent.name
        key = (str(rec["suite"]), str(rec.get("config_hash") or rec["run_id"]))
        rank = (rec["status"] == "completed", _created_key(rec), path.name)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, rec)
    return _one_record_per_seed([rec for _, rec in best.values()])


def _one_record_per_seed(records: list[dict]) -> list[dict]:
    kept: dict[tuple, dict] = {}
    for rec in sorted(records, key=lambda r: (r["status"] == "completed", _created_key(r), str(r["run_id"]))):
        key = (str(rec["suite"]), group_key(rec), str(rec["dataset"]["name"]), str(rec["seed"]))
        if key in kept:
            warnings.warn(f"{rec['run_id']} replaces {kept[key]['run_id']} (same model, dataset and seed, other "
                          "config); move the older record away to silence this", UserWarning, stacklevel=3)
        kept[key] = rec
    return sorted(kept.values(), key=lambda r: (str(r["suite"]), str(r["run_id"])))


# ----------------------------------------------------------------------------------------------------------
# Planned grid (the suite file)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuitePlan:
    """What a suite file plans: every model x every dataset (at its size) x every seed."""

    file: str  # the suite file's name, for notes
    models: tuple[str, ...]
    datasets: tuple[tuple[str, int], ...]  # (name, size)
    seeds: tuple[int, ...]
    published_as: tuple[tuple[str, str], ...] = ()  # (model, published model whose rows it reproduces)

    def planned(self, group: GroupKey, dataset: str) -> bool:
        """Whether the plan has a run of this row's model on `dataset` at this row's size (any scheme)."""
        model, size, _ = group
        return model in self.models and (dataset, size) in self.datasets

    @property
    def dataset_names(self) -> set[str]:
        return {name for name, _ in self.datasets}

    @property
    def model_sizes(self) -> set[tuple[str, int]]:
        return {(model, size) for model in self.models for _, size in self.datasets}


def find_suite_file(suite: str, suites_dir: Path | str | None = None) -> Path | None:
    """`<suite>.yaml` in `suites_dir`, else in ./suites/ or the project's suites/ folder; None when absent."""
    folders = [Path(suites_dir)] if suites_dir is not None else [Path("suites"), SUITES_DIR]
    candidates = [folder / f"{suite}.yaml" for folder in folders]
    return next((path for path in candidates if path.is_file()), None)


def _entry_name(item: object, section: str) -> str:
    """The name of a suite-file entry: a string, or a mapping with a string `name:`."""
    name = item.get("name") if isinstance(item, dict) else item
    if not isinstance(name, str):
        raise ValueError(f"{section}: entry {item!r} is neither a name nor a mapping with a `name:`")
    return name


def _planned_dataset(item: object) -> tuple[str, int]:
    """(name, size) of a suite-file dataset entry; a bare name gets the dataset's default size."""
    name = _entry_name(item, "datasets")
    default = DEFAULT_SIZES.get(name, 28)
    size = item.get("size", default) if isinstance(item, dict) else default
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"datasets.{name}: size {size!r} is not an integer")
    return name, size


def _read_plan(path: Path) -> SuitePlan:
    """Parse a suite file's grid as plain YAML; ValueError when its shape is not a suite's."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("not a YAML mapping")
    sections = {key: raw.get(key) or [] for key in ("datasets", "models")}
    seeds = raw.get("seeds", [0])
    if not all(isinstance(v, list) for v in (*sections.values(), seeds)):
        raise ValueError("datasets, models and seeds must be lists")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds {seeds!r} are not all integers")
    published_as = tuple((m["name"], m["published_as"]) for m in sections["models"]
                         if isinstance(m, dict) and isinstance(m.get("published_as"), str))
    plan = SuitePlan(path.name, tuple(_entry_name(m, "models") for m in sections["models"]),
                     tuple(_planned_dataset(d) for d in sections["datasets"]), tuple(sorted(set(seeds))),
                     published_as)
    if not (plan.models and plan.datasets and plan.seeds):
        raise ValueError("it plans no runs")
    return plan


def load_plan(suite: str, suites_dir: Path | str | None = None) -> SuitePlan | None:
    """The planned grid of `suite` from its suite file (see `find_suite_file`); None when there is no usable
    file (an unreadable one gets a `UserWarning`)."""
    path = find_suite_file(suite, suites_dir)
    if path is None:
        return None
    try:
        return _read_plan(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
        warnings.warn(f"ignoring suite file {path}: {_one_line(exc)}; the leaderboard of suite {suite!r} falls "
                      f"back to the records alone", UserWarning, stacklevel=2)
        return None


# ----------------------------------------------------------------------------------------------------------
# Published reference rows
# ----------------------------------------------------------------------------------------------------------
def load_published(path: Path | str = PUBLISHED_CSV) -> pd.DataFrame:
    """The published reference values: columns model, dataset, size, scheme, metric, value, source, reference."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = list(csv.DictReader(lines))
    df = pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)
    df["size"] = df["size"].astype(int)
    df["value"] = df["value"].astype(float)
    df["scheme"] = df["scheme"].fillna("").astype(str)
    return df.sort_values(["model", "size", "source", "dataset", "metric"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------
GroupKey = tuple  # (model, size, scheme)


def group_key(rec: dict) -> GroupKey:
    return (str(rec["model"]["name"]), int(rec["dataset"]["size"]), str(rec.get("scheme") or ""))


def group_label(key: GroupKey) -> str:
    model, size, scheme = key
    return f"{model} · {size}px · {scheme}" if scheme else f"{model} · {size}px"


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def expected_seeds(records: Sequence[dict], plan: SuitePlan | None = None) -> list:
    """The seeds every group should have: the plan's, else the distinct seeds among the given records
    (completed or failed)."""
    if plan is not None:
        return list(plan.seeds)
    return sorted({r["seed"] for r in records}, key=lambda s: (str(type(s)), s))


def _seed_rule(plan: SuitePlan | None) -> str:
    """Where the expected seeds come from, for notes and captions."""
    return f"the seeds listed in {plan.file}" if plan else "the distinct seeds among the suite's records"


@dataclass
class CellStats:
    """One (group, dataset) cell of a metric table."""

    values: list[float] = field(default_factory=list)  # per completed seed, seed order
    seeds: list = field(default_factory=list)  # completed seeds with a finite value
    failed_seeds: list = field(default_factory=list)
    n_expected: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else None

    @property
    def complete(self) -> bool:
        return self.n >= self.n_expected


def summarize(records: Sequence[dict], metric: str,
              plan: SuitePlan | None = None) -> dict[tuple[GroupKey, str], CellStats]:
    """(group key, dataset name) -> CellStats for one metric, over the given records (one suite)."""
    n_exp = len(expected_seeds(records, plan))
    cells: dict[tuple[GroupKey, str], CellStats] = {}
    for rec in sorted(records, key=lambda r: (str(r["run_id"]))):
        key = (group_key(rec), str(rec["dataset"]["name"]))
        cell = cells.setdefault(key, CellStats(n_expected=n_exp))
        if rec["status"] == "failed":
            cell.failed_seeds.append(rec["seed"])
            continue
        v = _finite((rec.get("test") or {}).get(metric))
        if v is not None:
            cell.seeds.append(rec["seed"])
            cell.values.append(v)
    for cell in cells.values():
        order = sorted(range(len(cell.seeds)), key=lambda i: (str(type(cell.seeds[i])), cell.seeds[i]))
        cell.seeds = [cell.seeds[i] for i in order]
        cell.values = [cell.values[i] for i in order]
        cell.failed_seeds.sort(key=lambda s: (str(type(s)), s))
    return cells


# ----------------------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    s = f"{x:.{digits}f}"
    if float(s) == 0.0:
        s = s.lstrip("-")
    return s


def _fc(x: float | None, digits: int = 6) -> str:
    """CSV number: fixed precision, empty when missing."""
    return "" if x is None or not math.isfinite(x) else _f(x, digits)


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class Cell:
    text: str
    bold: bool = False
    note: str = ""  # rendered after the (possibly bold) text
    italic: bool = False


@dataclass
class Table:
    title: str
    columns: list[str]
    align: str  # one of l/r/c per column (LaTeX), markdown uses l/r
    rows: list[list[Cell]]
    rule_before: set[int] = field(default_factory=set)  # row indices preceded by \midrule
    caption: str = ""
    label: str = ""
    tex_align: str = ""  # LaTeX column spec when it differs from `align` (e.g. p{5cm} for long text)


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_TEX_MAP = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_TEX_UNICODE = {"±": r"$\pm$", "†": r"$^\dagger$", "—": "---", "·": r"$\cdot$", "≥": r"$\geq$", "<": r"$<$",
                ">": r"$>$", "×": r"$\times$", "–": "--", "−": r"$-$", "…": r"\ldots{}"}


def _tex_escape(s: str) -> str:
    out = "".join(_TEX_MAP.get(ch, ch) for ch in s.replace("\n", " "))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    # anything else non-ASCII: keep it ASCII-safe for pdflatex
    return "".join(ch if ord(ch) < 128 else "?" for ch in out)


def _format_cell(c: Cell, escape, bold: str, italic: str) -> str:
    """One cell's text, escaped, in the `bold` / `italic` template (`{}` = the text), with its note after it."""
    text = escape(c.text)
    if c.text and (c.bold or c.italic):
        text = (bold if c.bold else italic).format(text)
    note = escape(c.note) if c.note else ""
    return f"{text} {note}" if text and note else text or note


def _render_md(t: Table) -> str:
    lines = [f"#### {t.title}", ""]
    if t.caption:
        lines += [t.caption, ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else ":---:" if a == "c" else "---" for a in t.align) + "|")
    for row in t.rows:
        cells = [_format_cell(c, _md_escape, "**{}**", "*{}*") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _render_tex(t: Table) -> str:
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\scriptsize",
        rf"\caption{{{_tex_escape(t.title)}{('. ' + _tex_escape(t.caption)) if t.caption else ''}}}",
    ]
    if t.label:
        lines.append(rf"\label{{{t.label}}}")
    lines += [rf"\begin{{tabular}}{{{t.tex_align or t.align}}}", r"\toprule",
              " & ".join(_tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(t.rows):
        if i in t.rule_before:
            lines.append(r"\midrule")
        cells = [_format_cell(c, _tex_escape, r"\textbf{{{}}}", r"\textit{{{}}}") for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()


# ----------------------------------------------------------------------------------------------------------
# Headline tables
# ----------------------------------------------------------------------------------------------------------
def _published_for_suite(published: pd.DataFrame, records: Sequence[dict]) -> pd.DataFrame:
    models = {str(r["model"]["name"]) for r in records}
    datasets = {str(r["dataset"]["name"]) for r in records}
    mask = published["model"].isin(models) | published["dataset"].isin(datasets)
    return published[mask]


def _columns_and_published(cells: dict, records: Sequence[dict], published: pd.DataFrame,
                           plan: SuitePlan | None) -> tuple[list[str], pd.DataFrame]:
    """The table's dataset columns (sorted) and the published rows shown with them, all metrics alike so that
    every metric's table has the same columns.

    With a plan: the measured and planned datasets, and the published values on those. Without: the measured
    datasets plus every dataset of the published rows whose model or dataset occurs in the records."""
    measured_any = {d for _, d in cells}
    if plan is None:
        pub = _published_for_suite(published, records)
        return sorted(measured_any | {str(d) for d in pub["dataset"]}), pub
    datasets = sorted(measured_any | plan.dataset_names)
    return datasets, published[published["dataset"].isin(datasets)]


def _unrecorded_planned_groups(groups: set[GroupKey], plan: SuitePlan | None) -> set[GroupKey]:
    """A row (scheme unknown: "") for each planned model x size that no record has, so the whole plan shows."""
    if plan is None:
        return set()
    have = {(model, size) for model, size, _ in groups}
    return {(model, size, "") for model, size in plan.model_sizes - have}


@dataclass
class MetricTable:
    """Numbers behind one headline-metric table (also used by figures)."""

    metric: str
    suite: str
    datasets: list[str]  # all columns, sorted
    measured_datasets: list[str]  # columns with >= 1 measured completed value
    groups: list[GroupKey]
    cells: dict[tuple[GroupKey, str], CellStats]
    best: dict[str, float]  # dataset -> best measured mean
    ranks: dict[tuple[GroupKey, str], float]
    average: dict[GroupKey, tuple[float | None, int]]  # (mean over datasets, n datasets)
    avg_rank: dict[GroupKey, tuple[float | None, int]]
    published_rows: list[tuple[tuple[str, int, str, str], dict[str, float]]]  # (model,size,scheme,source) -> {ds: v}
    n_expected: int
    plan: SuitePlan | None = None  # the suite file's grid; None = unknown

    def expects_run(self, group: GroupKey, dataset: str) -> bool:
        """Whether a cell without records reads "not yet run" (planned, or no plan known) rather than "—"."""
        return self.plan is None or self.plan.planned(group, dataset)


def metric_table(records: Sequence[dict], metric: str, published: pd.DataFrame | None = None,
                 suite: str = "", plan: SuitePlan | None = None) -> MetricTable:
    """Compute one headline table for the records of ONE suite and its planned grid (None = unknown)."""
    cells = summarize(records, metric, plan)
    recorded = {k for k, _ in cells}
    groups = sorted(recorded | _unrecorded_planned_groups(recorded, plan))
    if published is None:
        published = pd.DataFrame(columns=PUBLISHED_COLUMNS)
    datasets, pub = _columns_and_published(cells, records, published, plan)
    pub_rows: list = []
    pub = pub[pub["metric"] == metric]
    for (model, size, scheme, source), g in pub.groupby(["model", "size", "scheme", "source"], sort=True):
        vals = {str(d): float(v) for d, v in zip(g["dataset"], g["value"])}
        pub_rows.append(((str(model), int(size), str(scheme), str(source)), vals))
    measured = sorted({d for (k, d), c in cells.items() if c.mean is not None})

    best: dict[str, float] = {}
    ranks: dict[tuple[GroupKey, str], float] = {}
    for d in measured:
        entries = [(g, cells[(g, d)].mean) for g in groups if (g, d) in cells and cells[(g, d)].mean is not None]
        means = np.array([m for _, m in entries], dtype=float)
        best[d] = float(means.max())
        r = stats.rankdata(-means, method="average")
        for (g, _), rv in zip(entries, r):
            ranks[(g, d)] = float(rv)
    average: dict[GroupKey, tuple[float | None, int]] = {}
    avg_rank: dict[GroupKey, tuple[float | None, int]] = {}
    for g in groups:
        ms = [cells[(g, d)].mean for d in measured if (g, d) in cells and cells[(g, d)].mean is not None]
        rs = [ranks[(g, d)] for d in measured if (g, d) in ranks]
        average[g] = (float(np.mean(ms)) if ms else None, len(ms))
        avg_rank[g] = (float(np.mean(rs)) if rs else None, len(rs))
    return MetricTable(metric, suite, datasets, measured, groups, cells, best, ranks, average, avg_rank, pub_rows,
                       len(expected_seeds(records, plan)), plan)


def _is_best(value: float | None, best: float | None) -> bool:
    return value is not None and best is not None and math.isclose(value, best, rel_tol=1e-12, abs_tol=1e-15)


def _cell_display(c: CellStats | None, expects_run: bool = True) -> tuple[str, str, str]:
    """(value text, note, status) for a measured cell; `expects_run`: whether a cell without records was planned."""
    if c is None:
        return ("", NOT_RUN, "not_run") if expects_run else (DASH, "", "not_planned")
    if c.mean is None:
        what = "failed" if c.failed_seeds else "no value"
        return "", f"{what} (0/{c.n_expected} seeds)", "failed" if c.failed_seeds else "missing"
    text = _f(c.mean) if c.std is None else f"{_f(c.mean)} ± {_f(c.std)}"
    if c.complete:
        return text, f"(n={c.n})", "ok"
    return text, f"({c.n}/{c.n_expected} seeds)†", "incomplete"


def _missing_rule(plan: SuitePlan | None) -> str:
    """What a cell without records means, for notes and captions."""
    if plan is None:
        return f"'{NOT_RUN}' = no record (the suite file is unknown, so every cell counts as planned)."
    return f"'{NOT_RUN}' = planned in {plan.file} but no record yet; '{DASH}' = not planned."


def _headline_table(mt: MetricTable) -> Table:
    n_meas = len(mt.measured_datasets)
    columns = ["Model", "Size", "Scheme", "Source", *mt.datasets, "Average", "Avg. rank"]
    align = "lrll" + "c" * len(mt.datasets) + "cc"
    full = [g for g in mt.groups if mt.average[g][1] == n_meas and n_meas > 0]
    best_avg = max((mt.average[g][0] for g in full), default=None)
    best_rank = min((mt.avg_rank[g][0] for g in full), default=None)
    rows: list[list[Cell]] = []
    for g in mt.groups:
        model, size, scheme = g
        row = [Cell(model), Cell(str(size)), Cell(scheme or DASH), Cell("measured")]
        for d in mt.datasets:
            c = mt.cells.get((g, d))
            text, note, _ = _cell_display(c, mt.expects_run(g, d))
            bold = c is not None and d in mt.best and _is_best(c.mean, mt.best[d])
            row.append(Cell(text, bold=bold, note=note))
        avg, k = mt.average[g]
        rk, kr = mt.avg_rank[g]
        cov = "" if k == n_meas else f"({k}/{n_meas} datasets)"
        row.append(Cell(_f(avg), bold=(k == n_meas and _is_best(avg, best_avg)), note=cov if avg is not None else ""))
        row.append(Cell(_f(rk, 2), bold=(kr == n_meas and rk is not None and best_rank is not None
                                         and math.isclose(rk, best_rank)),
                        note=("" if kr == n_meas else f"({kr}/{n_meas} datasets)") if rk is not None else ""))
        rows.append(row)
    rule = {len(rows)} if mt.published_rows else set()
    for (model, size, scheme, source), vals in mt.published_rows:
        row = [Cell(model, italic=True), Cell(str(size)), Cell(scheme or DASH), Cell(f"published: {source}", italic=True)]
        row += [Cell(_f(vals[d]) if d in vals else DASH) for d in mt.datasets]
        row += [Cell(DASH), Cell(DASH)]
        rows.append(row)
    label = METRIC_LABELS.get(mt.metric, mt.metric)
    caption = (f"Mean ± sample std over completed seeds (n = seeds; {mt.n_expected} expected = "
               f"{_seed_rule(mt.plan)}). † = incomplete group, averaged over the seeds that exist. "
               f"{_missing_rule(mt.plan)} Bold = best measured value per column. Published rows are copied from "
               f"their source, not measured here, and excluded from bold, Average and Avg. rank.")
    return Table(title=f"Suite {mt.suite}: test {label}", columns=columns, align=align, rows=rows, rule_before=rule,
                 caption=caption, label=f"tab:{_slug(mt.suite)}-{_slug(mt.metric)}")


def _headline_csv_rows(mt: MetricTable) -> list[dict]:
    out = []
    n_meas = len(mt.measured_datasets)
    for g in mt.groups:
        model, size, scheme = g
        base = dict(suite=mt.suite, table="headline", metric=mt.metric, kind="measured", model=model, size=size,
                    scheme=scheme, source="measured", cls="")
        for d in mt.datasets:
            c = mt.cells.get((g, d))
            _, _, status = _cell_display(c, mt.expects_run(g, d))
            out.append({**base, "dataset": d, "mean": _fc(c.mean if c else None, 6), "std": _fc(c.std if c else None, 6),
                        "n_seeds": c.n if c else 0, "n_expected": mt.n_expected, "status": status,
                        "best": int(c is not None and d in mt.best and _is_best(c.mean, mt.best[d])),
                        "rank": _fc(mt.ranks.get((g, d)), 2)})
        avg, k = mt.average[g]
        rk, kr = mt.avg_rank[g]
        out.append({**base, "dataset": "AVERAGE", "mean": _fc(avg, 6), "std": "", "n_seeds": k,
                    "n_expected": n_meas, "status": "ok" if k == n_meas else "incomplete", "best": "", "rank": ""})
        out.append({**base, "dataset": "AVG_RANK", "mean": _fc(rk, 6), "std": "", "n_seeds": kr,
                    "n_expected": n_meas, "status": "ok" if kr == n_meas else "incomplete", "best": "", "rank": ""})
    for (model, size, scheme, source), vals in mt.published_rows:
        for d in sorted(vals):
            out.append(dict(suite=mt.suite, table="headline", metric=mt.metric, kind="published", model=model,
                            size=size, scheme=scheme, source=source, cls="", dataset=d, mean=_fc(vals[d], 6), std="",
                            n_seeds="", n_expected="", status="published", best="", rank=""))
    return out


# ----------------------------------------------------------------------------------------------------------
# Per-class tables
# ----------------------------------------------------------------------------------------------------------
def per_class_summary(records: Sequence[dict]) -> dict[str, dict]:
    """dataset -> {"class_names": [...], "rows": [(group, class_idx, {precision, recall, f1, support}, n)]}.

    Means over the completed seeds of each group (one suite's records)."""
    out: dict[str, dict] = {}
    by: dict[tuple[str, GroupKey], list[dict]] = {}
    for rec in sorted(records, key=lambda r: str(r["run_id"])):
        if rec["status"] != "completed":
            continue
        pc = (rec.get("test") or {}).get("per_class")
        if not isinstance(pc, dict):
            continue
        ds = str(rec["dataset"]["name"])
        names = rec["dataset"].get("class_names")
        if ds not in out:
            out[ds] = {"class_names": list(names) if names else None, "rows": []}
        elif not out[ds]["class_names"] and names:
            out[ds]["class_names"] = list(names)
        by.setdefault((ds, group_key(rec)), []).append(pc)
    for (ds, g), pcs in sorted(by.items()):
        n_cls = max(len(pc.get("recall") or []) for pc in pcs)
        names = out[ds]["class_names"]
        if not names or len(names) < n_cls:
            out[ds]["class_names"] = [str(i) for i in range(n_cls)]
        for i in range(n_cls):
            vals = {}
            for m in ("precision", "recall", "f1", "support"):
                xs = [_finite(pc[m][i]) for pc in pcs if isinstance(pc.get(m), list) and len(pc[m]) > i]
                xs = [x for x in xs if x is not None]
                vals[m] = float(np.mean(xs)) if xs else None
            out[ds]["rows"].append((g, i, vals, len(pcs)))
    return out


def _per_class_tables(records: Sequence[dict], suite: str, plan: SuitePlan | None = None) -> list[Table]:
    n_exp = len(expected_seeds(records, plan))
    tables = []
    for ds, info in sorted(per_class_summary(records).items()):
        names = info["class_names"]
        rows = []
        rule = set()
        prev = None
        for g, i, vals, n in info["rows"]:
            if prev is not None and g != prev:
                rule.add(len(rows))
            prev = g
            model, size, scheme = g
            sup = vals["support"]
            sup_s = DASH if sup is None else (str(int(sup)) if float(sup).is_integer() else _f(sup, 1))
            seeds = f"{n}/{n_exp}" + ("†" if n < n_exp else "")
            rows.append([Cell(model), Cell(str(size)), Cell(scheme or DASH), Cell(str(names[i])),
                         Cell(_f(vals["precision"])), Cell(_f(vals["recall"])), Cell(_f(vals["f1"])),
                         Cell(sup_s), Cell(seeds)])
        tables.append(Table(
            title=f"Suite {suite}: per-class metrics on {ds}",
            columns=["Model", "Size", "Scheme", "Class", "Precision", "Recall", "F1", "Support", "Seeds"],
            align="lrllrrrrr", rows=rows, rule_before=rule,
            caption="Test precision / recall / F1 per class, mean over the completed seeds (support = test images "
                    "of the class). † = fewer seeds than expected.",
            label=f"tab:{_slug(suite)}-perclass-{_slug(ds)}"))
    return tables


def _per_class_csv_rows(records: Sequence[dict], suite: str, plan: SuitePlan | None = None) -> list[dict]:
    n_exp = len(expected_seeds(records, plan))
    out = []
    for ds, info in sorted(per_class_summary(records).items()):
        for g, i, vals, n in info["rows"]:
            model, size, scheme = g
            for m in ("precision", "recall", "f1"):
                out.append(dict(suite=suite, table="per_class", metric=m, kind="measured", model=model, size=size,
                                scheme=scheme, source="measured", dataset=ds, cls=str(info["class_names"][i]),
                                mean=_fc(vals[m], 6), std="", n_seeds=n, n_expected=n_exp,
                                status="ok" if n >= n_exp else "incomplete", best="", rank=""))
    return out


# ----------------------------------------------------------------------------------------------------------
# Failed runs / incomplete groups
# ----------------------------------------------------------------------------------------------------------
def _one_line(s: object, limit: int = 300) -> str:
    text = " ".join(str(s).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failed_runs(records: Sequence[dict]) -> list[dict]:
    """One dict per failed record: run_id, dataset, size, model, scheme, seed, epoch, error_type, message."""
    out = []
    for rec in sorted(records, key=lambda r: str(r["run_id"])):
        if rec["status"] != "failed":
            continue
        err = rec.get("error") or {}
        if not isinstance(err, dict):
            err = {"message": str(err)}
        out.append(dict(run_id=str(rec["run_id"]), dataset=str(rec["dataset"]["name"]), size=int(rec["dataset"]["size"]),
                        model=str(rec["model"]["name"]), scheme=str(rec.get("scheme") or ""), seed=rec["seed"],
                        epoch=err.get("epoch"), error_type=str(err.get("type") or "error"),
                        message=_one_line(err.get("message") or "(no message recorded)")))
    return out


def _failed_table(records: Sequence[dict], suite: str) -> Table | None:
    rows = [[Cell(f["run_id"]), Cell(f["dataset"]), Cell(str(f["size"])), Cell(f["model"]), Cell(f["scheme"] or DASH),
             Cell(str(f["seed"])), Cell(DASH if f["epoch"] is None else str(f["epoch"])),
             Cell(f"{f['error_type']}: {f['message']}")] for f in failed_runs(records)]
    if not rows:
        return None
    return Table(title=f"Suite {suite}: failed runs", columns=["Run", "Dataset", "Size", "Model", "Scheme", "Seed",
                                                                "Epoch", "Error"],
                 align="llrllrrl", tex_align=r"p{3.2cm}lrllrrp{5.5cm}", rows=rows, caption="Runs that stopped with an error (epoch = the epoch it failed in). "
                 "They contribute no numbers to any table.", label=f"tab:{_slug(suite)}-failed")


def _incomplete_table(records: Sequence[dict], suite: str, plan: SuitePlan | None = None) -> Table | None:
    seeds = expected_seeds(records, plan)
    cells = summarize(records, "acc", plan)
    rows = []
    for (g, d), c in sorted(cells.items()):
        have = {r["seed"] for r in records if group_key(r) == g and str(r["dataset"]["name"]) == d
                and r["status"] == "completed"}
        if len(have) >= len(seeds):
            continue
        failed = sorted(set(c.failed_seeds), key=lambda s: (str(type(s)), s))
        missing = [s for s in seeds if s not in have and s not in failed]
        model, size, scheme = g
        rows.append([Cell(d), Cell(model), Cell(str(size)), Cell(scheme or DASH), Cell(f"{len(have)}/{len(seeds)}"),
                     Cell(", ".join(map(str, sorted(have, key=lambda s: (str(type(s)), s)))) or DASH),
                     Cell(", ".join(map(str, failed)) or DASH), Cell(", ".join(map(str, missing)) or DASH)])
    if not rows:
        return None
    return Table(title=f"Suite {suite}: incomplete groups", columns=["Dataset", "Model", "Size", "Scheme",
                                                                     "Completed", "Seeds done", "Failed", "Missing"],
                 align="llrlrlll", rows=rows,
                 caption=f"Groups with fewer completed seeds than the {len(seeds)} expected, {_seed_rule(plan)} "
                         f"({', '.join(map(str, seeds))}); their table cells are means over the completed seeds only.",
                 label=f"tab:{_slug(suite)}-incomplete")


# ----------------------------------------------------------------------------------------------------------
# Paired comparisons
# ----------------------------------------------------------------------------------------------------------
_COMPARE_COLUMNS = ["suite", "dataset", "size", "scheme_a", "scheme_b", "n", "seeds", "mean_a", "mean_b",
                    "mean_diff", "std_diff", "t_pvalue", "wilcoxon_pvalue", "note"]
ALL_DATASETS = "ALL (per-dataset means)"


def _paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    d = a - b
    n = len(d)
    if n < 2:
        return float("nan"), float("nan"), f"n={n}: no test possible"
    if np.allclose(d, 0.0, atol=1e-15):
        return float("nan"), float("nan"), f"n={n}: all differences zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_p = float(stats.ttest_rel(a, b).pvalue)
        try:
            w_p = float(stats.wilcoxon(a, b).pvalue)
        except ValueError:
            w_p = float("nan")
    note = f"n={n}: smallest possible two-sided Wilcoxon p = {2.0 ** (1 - n):.3g}" if n < 6 else ""
    return t_p, w_p, note


def compare_models(records: Sequence[dict], model_a: str, model_b: str, metric: str = "acc") -> pd.DataFrame:
    """Paired comparison of two models (by `record["model"]["name"]`) on `metric` (a key of `record["test"]`).

    One row per (suite, dataset, size, scheme_a, scheme_b) where both models have completed runs with the same
    seed: n paired seeds, means, mean and sample std of the difference a - b, paired t-test and Wilcoxon
    signed-rank p-values (NaN for n < 2; note says how small n limits the Wilcoxon p-value). Then, for a suite
    with >= 2 such rows, one `dataset == "ALL (per-dataset means)"` row: Wilcoxon signed-rank (and paired t)
    over the per-dataset means, as MedMNIST+ reports. Failed runs never enter. Raises `UserError` when either
    model has no completed run.
    """
    for name in (model_a, model_b):
        if not any(r["status"] == "completed" and r["model"]["name"] == name for r in records):
            known = sorted({str(r["model"]["name"]) for r in records if r["status"] == "completed"})
            raise UserError(f"no completed runs of model {name!r} to compare; models with results: {', '.join(known)}")
    table: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        if rec["status"] != "completed" or rec["model"]["name"] not in (model_a, model_b):
            continue
        v = _finite((rec.get("test") or {}).get(metric))
        if v is None:
            continue
        key = (str(rec["suite"]), str(rec["dataset"]["name"]), int(rec["dataset"]["size"]))
        side = "a" if rec["model"]["name"] == model_a else "b"
        table.setdefault(key, {"a": {}, "b": {}})[side].setdefault(str(rec.get("scheme") or ""), {})[rec["seed"]] = v
    rows = []
    for (suite, ds, size), sides in sorted(table.items()):
        for sa in sorted(sides["a"]):
            for sb in sorted(sides["b"]):
                common = sorted(set(sides["a"][sa]) & set(sides["b"][sb]), key=lambda s: (str(type(s)), s))
                if not common:
                    continue
                a = np.array([sides["a"][sa][s] for s in common], dtype=float)
                b = np.array([sides["b"][sb][s] for s in common], dtype=float)
                t_p, w_p, note = _paired_tests(a, b)
                d = a - b
                rows.append(dict(suite=suite, dataset=ds, size=size, scheme_a=sa, scheme_b=sb, n=len(common),
                                 seeds=",".join(map(str, common)), mean_a=float(a.mean()), mean_b=float(b.mean()),
                                 mean_diff=float(d.mean()),
                                 std_diff=float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
                                 t_pvalue=t_p, wilcoxon_pvalue=w_p, note=note))
    per = pd.DataFrame(rows, columns=_COMPARE_COLUMNS)
    summary = []
    for suite, g in per.groupby("suite", sort=True):
        if len(g) < 2:  # one dataset: the per-dataset row says it all
            continue
        a = g["mean_a"].to_numpy(float)
        b = g["mean_b"].to_numpy(float)
        t_p, w_p, note = _paired_tests(a, b)
        d = a - b
        summary.append(dict(suite=suite, dataset=ALL_DATASETS, size=pd.NA, scheme_a="", scheme_b="", n=len(g),
                            seeds="", mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=float(d.mean()),
                            std_diff=float(d.std(ddof=1)) if len(d) > 1 else float("nan"), t_pvalue=t_p,
                            wilcoxon_pvalue=w_p,
                            note=("over datasets; " + note).rstrip("; ") if note else "over datasets"))
    out = pd.concat([per, pd.DataFrame(summary, columns=_COMPARE_COLUMNS)], ignore_index=True) if summary else per
    return out.reset_index(drop=True)


def _pairwise_table(records: Sequence[dict], suite: str, metric: str) -> Table | None:
    models = sorted({str(r["model"]["name"]) for r in records if r["status"] == "completed"})
    rows: list[list[Cell]] = []
    rule = set()
    for a, b in combinations(models, 2):
        df = compare_models(records, a, b, metric)
        if df.empty:
            continue
        if rows:
            rule.add(len(rows))
        for r in df.itertuples(index=False):
            is_all = r.dataset == ALL_DATASETS
            ds = "all datasets" if is_all else f"{r.dataset} ({r.size}px)"
            schemes = "" if is_all else f"{r.scheme_a or DASH} vs {r.scheme_b or DASH}"
            rows.append([Cell(f"{a} − {b}"), Cell(ds, bold=is_all), Cell(schemes or DASH),
                         Cell(str(r.n) + (" datasets" if is_all else "")), Cell(_f(r.mean_a)), Cell(_f(r.mean_b)),
                         Cell(("+" if r.mean_diff > 0 and _f(r.mean_diff) != "0.000" else "") + _f(r.mean_diff)),
                         Cell(_f(r.std_diff)), Cell(_p(r.t_pvalue)), Cell(_p(r.wilcoxon_pvalue)),
                         Cell(r.note or "")])
    if not rows:
        return None
    label = METRIC_LABELS.get(metric, metric)
    return Table(
        title=f"Suite {suite}: paired comparisons on test {label}",
        columns=["A − B", "Dataset", "Schemes", "n", "Mean A", "Mean B", "Diff", "Std diff", "t-test p", "Wilcoxon p",
                 "Note"],
        align="lllrrrrrrrl", tex_align=r"lllrrrrrrrp{3.5cm}", rows=rows, rule_before=rule,
        caption="Per dataset: runs paired by seed (n = seeds both models completed); paired t-test and Wilcoxon "
                "signed-rank p-values, two-sided, no correction for multiple comparisons. With a handful of seeds "
                "these tests have little power (Wilcoxon cannot go below 2^(1-n)): read them as indicative. "
                "'all datasets' = Wilcoxon signed-rank over the per-dataset means (MedMNIST+ style).",
        label=f"tab:{_slug(suite)}-pairwise-{_slug(metric)}")


# ----------------------------------------------------------------------------------------------------------
# Published references list
# ----------------------------------------------------------------------------------------------------------
def _published_gap_table(records: Sequence[dict], suite: str, published: pd.DataFrame,
                         plan: SuitePlan | None) -> Table | None:
    """Measured vs published for every (model, size, dataset, metric) that has both a published value and
    a measured or planned run: the gap, and the gap in units of the seed standard deviation. A model the suite
    file marks `published_as: <model>` (another build of the published model) is compared with its rows too."""
    aliases = dict(plan.published_as) if plan is not None else {}
    rows = []
    for metric in ("acc", "auc"):
        cells = summarize(records, metric, plan)
        by_model_size: dict[tuple[str, int, str], list[CellStats]] = {}
        for ((model, size, _), dataset), cell in cells.items():
            by_model_size.setdefault((model, size, dataset), []).append(cell)
        pub = published[published["metric"] == metric]
        for published_model, size, dataset, value, source in sorted(
                zip(pub["model"], pub["size"], pub["dataset"], pub["value"], pub["source"])):
            for model in [str(published_model), *sorted(m for m, p in aliases.items() if p == published_model)]:
                key = (model, int(size), str(dataset))
                planned = plan is not None and plan.planned((key[0], key[1], ""), key[2])
                if key not in by_model_size and not planned:
                    continue
                cell = by_model_size[key][0] if key in by_model_size else None
                row = [Cell(key[0]), Cell(str(key[1])), Cell(key[2]), Cell(METRIC_LABELS.get(metric, metric)),
                       Cell(_f(float(value)))]
                if cell is None or cell.mean is None:
                    row += [Cell(NOT_RUN), Cell(""), Cell(DASH), Cell(DASH)]
                else:
                    gap = cell.mean - float(value)
                    spread = f"{_f(cell.mean)} ± {_f(cell.std)}" if cell.std is not None else _f(cell.mean)
                    in_stds = _f(gap / cell.std, 1) if cell.std else DASH
                    row += [Cell(spread), Cell(f"{cell.n}/{cell.n_expected}"), Cell(f"{gap:+.3f}"),
                            Cell(in_stds)]
                rows.append(row + [Cell(str(source), italic=True)])
    if not rows:
        return None
    return Table(title=f"Suite {suite}: measured vs published",
                 columns=["Model", "Size", "Dataset", "Metric", "Published", "Measured (mean ± std)", "Seeds",
                          "Δ", "Δ / seed std", "Source"],
                 align="lrllrrrrrl", rows=rows, label=f"tab:{_slug(suite)}-published-gap",
                 caption="Δ = measured mean − published value; Δ / seed std expresses the gap in units of the "
                         "sample standard deviation over seeds (|Δ / std| > 2: a gap beyond seed noise).")


def _references_md(published: pd.DataFrame) -> str:
    lines = ["## Published references", "",
             "Rows marked *published* are copied from these sources (values as fractions), not measured by this "
             "suite:", ""]
    for source, g in published.groupby("source", sort=True):
        refs = sorted(set(g["reference"]))
        lines.append(f"- **{_md_escape(str(source))}**: {_md_escape('; '.join(refs))}")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
_CSV_FIELDS = ["suite", "table", "metric", "kind", "model", "size", "scheme", "source", "dataset", "class", "mean",
               "std", "n_seeds", "n_expected", "status", "best", "rank"]


def by_suite(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(str(r["suite"]), []).append(r)
    return {k: sorted(v, key=lambda r: str(r["run_id"])) for k, v in sorted(out.items())}


def _plan_note(suite: str, plan: SuitePlan | None, seeds: list) -> list[str]:
    """The markdown lines that say where a suite's columns, "not yet run" cells and expected seeds come from."""
    listed = f"{len(seeds)} ({', '.join(map(str, seeds))})"
    if plan is None:
        return [f"Expected seeds per group: {listed}.", "",
                f"No suite file `{suite}.yaml` was found (in `suites/` here or in the project), so the plan is "
                f"unknown: columns are the datasets of the records and of the published rows shown, every cell "
                f"without records reads `{NOT_RUN}`, and the expected seeds are {_seed_rule(plan)}.", ""]
    sizes = ", ".join(f"{name} ({size}px)" for name, size in plan.datasets)
    return [f"Expected seeds per group: {listed}, {_seed_rule(plan)}.", "",
            f"Planned grid (`{plan.file}`): {len(plan.models)} model(s) ({', '.join(plan.models)}) × "
            f"{len(plan.datasets)} dataset(s) ({sizes}) × {len(plan.seeds)} seed(s). `{NOT_RUN}` = planned but "
            f"no record yet; `{DASH}` = not planned.", ""]


def build_leaderboard(records: Sequence[dict], published: pd.DataFrame | None = None,
                      suites_dir: Path | str | None = None) -> tuple[str, str, str]:
    """(markdown, csv, tex) text for the given records (any number of suites); each suite's planned grid is read
    from `<suite>.yaml` in `suites_dir` (None: ./suites/, then the project's suites/)."""
    if published is None:
        published = load_published()
    suites = by_suite(records)
    n_done = sum(r["status"] == "completed" for r in records)
    md = ["# Leaderboard", "",
          f"{len(records)} run records ({n_done} completed, {len(records) - n_done} failed) in "
          f"{len(suites)} suite(s): {', '.join(suites)}.", "",
          "How to read: each cell is the test metric's mean ± sample std (ddof=1) over completed seeds, with "
          "n = seeds. Columns are the datasets measured or planned in the suite file (`suites/<suite>.yaml`); "
          "a planned model × size without records still gets a row. The expected number of seeds for a group is "
          "the number of seeds the suite file lists; groups with fewer are marked `k/N seeds †`, and their cell "
          "is the mean over the seeds that exist. `failed (0/N seeds)` = every run of the group failed; "
          f"`{NOT_RUN}` = planned but no run recorded; `{DASH}` = not planned. Without a suite file the plan is "
          "unknown: the expected seeds are the distinct seeds among the suite's records (completed or failed), "
          f"columns also include the datasets of the published rows shown, and every cell without records reads "
          f"`{NOT_RUN}` (each suite's section says which applies). **Bold** = best measured "
          "value per dataset. Average = mean over the measured datasets; Avg. rank = mean per-dataset rank "
          "(1 = best, ties averaged); rows missing datasets are annotated and not eligible for bold there. "
          "*Published* rows are copied from the literature and excluded from bold, averages and ranks.", ""]
    tex = ["% Generated by benchmark.leaderboard from run records. Requires \\usepackage{booktabs}.",
           "% Wide tables: wrap a tabular in \\resizebox{\\textwidth}{!}{...} (graphicx) or use table*.", ""]
    csv_rows: list[dict] = []
    for suite, recs in suites.items():
        plan = load_plan(suite, suites_dir)
        md += [f"## Suite `{suite}`", "", *_plan_note(suite, plan, expected_seeds(recs, plan))]
        tex.append(f"% ---- suite {suite} ----")
        md += ["### Headline metrics", ""]
        for metric in HEADLINE_METRICS:
            mt = metric_table(recs, metric, published, suite, plan)
            t = _headline_table(mt)
            md.append(_render_md(t))
            tex.append(_render_tex(t))
            csv_rows += _headline_csv_rows(mt)
        for title, tables in (("Measured vs published", [_published_gap_table(recs, suite, published, plan)]),
                              ("Incomplete groups", [_incomplete_table(recs, suite, plan)]),
                              ("Failed runs", [_failed_table(recs, suite)]),
                              ("Per-class metrics", _per_class_tables(recs, suite, plan)),
                              ("Pairwise comparisons", [_pairwise_table(recs, suite, m) for m in PAIRWISE_METRICS])):
            tables = [t for t in tables if t is not None]
            md += [f"### {title}", ""]
            if not tables:
                md += ["None.", ""]
                continue
            for t in tables:
                md.append(_render_md(t))
                tex.append(_render_tex(t))
        csv_rows += _per_class_csv_rows(recs, suite, plan)
    md.append(_references_md(published))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in csv_rows:
        row = {**row, "class": row.get("cls", "")}
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in _CSV_FIELDS})
    return "\n".join(md).rstrip("\n") + "\n", buf.getvalue(), "\n".join(tex).rstrip("\n") + "\n"


def write_leaderboard(runs_dir: Path, out_dir: Path, suite: str | None = None,
                      suites_dir: Path | str | None = None) -> list[Path]:
    """Write `leaderboard.md`, `.csv` and `.tex` under `out_dir` from the records in `runs_dir` and the suite
    files in `suites_dir` (None: ./suites/, then the project's suites/)."""
    records = load_records(runs_dir, suite)
    if not records:
        where = Path(runs_dir) / suite if suite else Path(runs_dir)
        raise UserError(f"no run records found in {where}; run a suite first or pass --runs DIR")
    md, csv_text, tex = build_leaderboard(records, suites_dir=suites_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("leaderboard.md", md), ("leaderboard.csv", csv_text), ("leaderboard.tex", tex)):
        atomic_write_bytes(out_dir / name, text.encode("utf-8"))
        paths.append(out_dir / name)
    return paths
