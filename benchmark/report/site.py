"""The results site: a static, offline HTML view of the records (`python -m benchmark report`).

load (records → frames, plan) → aggregate (the numbers) → render (their text, the same `Table`s as
`leaderboard.md`) → Jinja2 templates (`site_files/templates/`) → `<output>/`:

    index.html                         per suite: the headline table of each metric (sortable, filterable),
                                       incomplete groups, failed runs, the suite's figures
    compare.html                       measured vs published and the paired comparisons
    <suite>/cells/<group>-<dataset>.html   one table cell: its runs (seeds) with their test metrics
    <suite>/runs/<run_id>.html         one run: metrics, figures, per-class table, config, provenance
    assets/site.css, assets/site.js    shipped with the package; no CDN, no external font or script

Figures are not copied: pages link (relative links) to the files of `benchmark figures` under
`<figures>/<suite>/`, and a figure missing there is drawn first by that same code (`figures.suite_figures`).
Templates only lay out text made here; every number comes from `aggregate` and is formatted by `render`.
Everything is sorted and nothing time-dependent is written, so the same records give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from benchmark.errors import UserError
from benchmark.metrics import CALIBRATION_METRICS, PROBABILITY_FREE_SCHEMES
from benchmark.records import FRAME_COLUMNS, Record, atomic_write_bytes, timing_line, training_class_counts
from benchmark.report import aggregate, beyond_clean, compute, ranking, render
from benchmark.report.load import SuiteData, load_published, load_suites

SITE_FILES = Path(__file__).with_name("site_files")
ASSETS = ("site.css", "site.js")
RUN_FIGURE_TITLES = {"curves": "Training curves", "confusion": "Confusion matrix", "roc": "ROC curves",
                     "confidence": "Confidence histogram", "reliability": "Reliability diagram",
                     "predictions": "Test images with predictions"}
# (page, section kind, title, lead) of the pages beyond clean accuracy
BEYOND_CLEAN_PAGES = (
    ("robustness.html", "robustness", "Robustness: MedMNIST-C corruptions", beyond_clean.ROBUSTNESS_NOTE),
    ("learning.html", "learning", "Label efficiency: learning curves", beyond_clean.LEARNING_NOTE),
)
#: section kind -> prefix of its figure jobs' kinds: these figures live on their page, not in the overview gallery
BEYOND_CLEAN_FIGURES = {"robustness": "robustness_", "learning": "learning_curve_"}
WEB_FORMATS = ("png", "svg")  # what a browser shows in <img>


# ----------------------------------------------------------------------------------------------------------
# Table data for the templates: text only (render's), plus links and sort keys
# ----------------------------------------------------------------------------------------------------------
@dataclass
class HtmlCell:
    text: str
    bold: bool = False
    italic: bool = False
    note: str = ""
    href: str = ""
    sort: str | None = None  # data-sort (a number as text, "" = no value); None: sort by the text
    dataset: str = ""  # set on dataset columns: the dataset filter hides them


@dataclass
class HtmlRow:
    cells: list[HtmlCell]
    kind: str = "measured"  # or "published": never ranked, kept below the measured rows when sorting
    attrs: dict[str, str] = field(default_factory=dict)  # data-* attributes (model, size, scheme) for the filters


@dataclass
class HtmlColumn:
    name: str
    align: str = "l"
    numeric: bool = False
    ascending_first: bool = False  # Avg. rank: lower is better
    dataset: str = ""


@dataclass
class HtmlTable:
    title: str
    columns: list[HtmlColumn]
    rows: list[HtmlRow]
    caption: str = ""
    id: str = ""
    metric: str = ""


def html_table(table: render.Table, id: str = "") -> HtmlTable:
    """A render `Table` (the same text as in leaderboard.md) as template data."""
    columns = [HtmlColumn(name, align) for name, align in zip(table.columns, table.align)]
    rows = [HtmlRow([HtmlCell(c.text, c.bold, c.italic, c.note) for c in row]) for row in table.rows]
    return HtmlTable(table.title, columns, rows, table.caption, id)


def headline_html(mt: aggregate.MetricTable, cell_href) -> HtmlTable:
    """The headline table of one metric with sort keys, filter attributes and links to the cell pages.

    Its text is render.headline_table's (one source with leaderboard.md); the sort keys are the aggregate's
    numbers at the precision of leaderboard.csv."""
    table = html_table(render.headline_table(mt), id=f"{render.slug(mt.suite)}-{render.slug(mt.metric)}")
    table.metric = mt.metric
    names = [c.name for c in table.columns]
    for column in table.columns:
        column.dataset = column.name if column.name in mt.datasets else ""
        column.numeric = bool(column.dataset) or column.name in ("Size", "Average", "Avg. rank")
        column.ascending_first = column.name == "Avg. rank"
    for i, row in enumerate(table.rows):
        group = mt.groups[i] if i < len(mt.groups) else None
        if group is None:
            row.kind = "published"
            model, size, scheme = row.cells[0].text, row.cells[1].text, row.cells[2].text
            row.attrs = {"model": model, "size": size, "scheme": scheme}
        else:
            model, size, scheme = group
            row.attrs = {"model": str(model), "size": str(size), "scheme": str(scheme) or render.DASH}
        row.cells[names.index("Size")].sort = row.attrs["size"]
        for column, cell in zip(table.columns, row.cells):
            cell.dataset = column.dataset
            if group is None:
                continue
            if column.dataset:
                stats = mt.cell(group, column.dataset)
                cell.sort = render.fmt_csv(stats["mean"])
                if stats["recorded"]:
                    cell.href = cell_href(group, column.dataset)
            elif column.name in ("Average", "Avg. rank"):
                summary = mt.row(group)
                cell.sort = render.fmt_csv(summary["average" if column.name == "Average" else "avg_rank"])
    return table


# ----------------------------------------------------------------------------------------------------------
# Pages
# ----------------------------------------------------------------------------------------------------------
def _safe(text: str) -> str:
    """A file name: runs of other characters than letters, digits, '.', '_' and '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "page"


def cell_page(suite: str, group: tuple, dataset: str) -> str:
    model, size, scheme = group
    name = _safe(f"{model}-{size}-{scheme or 'none'}-{dataset}")
    return f"{_safe(suite)}/cells/{name}.html"


def run_page(suite: str, run_id: str) -> str:
    return f"{_safe(suite)}/runs/{_safe(run_id)}.html"


def link(from_page: str, to: str) -> str:
    """A relative link from one site page (a path relative to the site root) to another."""
    return quote(os.path.relpath(to, os.path.dirname(from_page) or ".").replace(os.sep, "/"))


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    """The test metrics of a frame: the headline ones first, then every other scalar of the records' test block."""
    others = sorted(c for c in frame.columns if c not in FRAME_COLUMNS and c not in aggregate.HEADLINE_METRICS)
    return [m for m in aggregate.HEADLINE_METRICS if m in frame.columns] + others


def _label(metric: str) -> str:
    return aggregate.METRIC_LABELS.get(metric, metric.replace("_", " "))


def _flat(block: object, prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict as sorted (dotted key, text) pairs."""
    if not isinstance(block, dict):
        return [(prefix, _text(block))] if prefix else []
    out = []
    for key in sorted(block, key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        value = block[key]
        out += _flat(value, name) if isinstance(value, dict) else [(name, _text(value))]
    return out


def _text(value: object) -> str:
    if value is None:
        return render.DASH
    if isinstance(value, float):
        return render.fmt(value, 4)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or render.DASH
    return str(value)


@dataclass
class Figure:
    title: str
    src: str


class SiteBuilder:
    """Builds every page of the site as text (path relative to the site root → HTML)."""

    def __init__(self, suites: dict[str, SuiteData], published: pd.DataFrame, output: Path, figures: Path,
                 dpi: int = 150):
        self.suites, self.published, self.output, self.figures, self.dpi = suites, published, output, figures, dpi
        self.env = Environment(loader=FileSystemLoader(SITE_FILES / "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               keep_trailing_newline=True)
        self.pages: dict[str, str] = {}
        self.n_records = sum(len(d.records) for d in suites.values())
        self.known_counts = training_class_counts(r for d in suites.values() for r in d.records)
        self.figures_of: dict[str, list[tuple]] = {}  # suite → (job, web file) of its figures, once drawn

    # figures -------------------------------------------------------------------------------------------
    def suite_figures(self, data: SuiteData) -> list[tuple]:
        """(job, web file) of each figure of the suite; missing ones are drawn by `benchmark figures`' code."""
        from benchmark.report import figures

        folder = self.figures / figures.safe_stem(data.suite)  # where `benchmark figures` puts the suite's figures
        out = []
        for job, paths in figures.suite_figures(data, folder, ("png",), self.dpi, reuse=WEB_FORMATS):
            web = [p for p in paths if p.suffix[1:] in WEB_FORMATS]
            if web:
                out.append((job, web[0]))
        return out

    def figure_src(self, page: str, path: Path) -> str:
        page_dir = (self.output / page).parent.resolve()
        return quote(os.path.relpath(path.resolve(), page_dir).replace(os.sep, "/"))

    # rendering -----------------------------------------------------------------------------------------
    def render(self, page: str, template: str, title: str, **context) -> None:
        root = link(page, "index.html").removesuffix("index.html")
        html = self.env.get_template(template).render(
            page=page, title=title, root=root, n_records=self.n_records, suites=list(self.suites), **context)
        self.pages[page] = html

    def build(self) -> dict[str, str]:
        overview = []
        compare = []
        beyond = []
        for suite, data in self.suites.items():
            figures = self.figures_of[suite] = self.suite_figures(data)
            tables, trusted = aggregate.suite_tables(data, self.published, self.known_counts)
            overview.append(self.overview_section(suite, data, tables, trusted, figures))
            beyond.append(self.beyond_clean_section(suite, data, figures))
            compare.append(self.compare_section(suite, data))
            for group, dataset in sorted(set(zip(map(tuple, data.frame[aggregate.GROUP].itertuples(index=False,
                                                                                                   name=None)),
                                                 data.frame["dataset"]))):
                self.cell_pages(suite, data, tables, group, dataset)
            by_run: dict[str, list] = {}
            for job, path in figures:
                if job.run_id is not None:
                    by_run.setdefault(job.run_id, []).append((job, path))
            for record in data.records:
                self.run_page(suite, data, record, by_run.get(str(record["run_id"]), []))
        self.render("index.html", "index.html.j2", "Benchmark results", sections=overview)
        self.render("compare.html", "compare.html.j2", "Compare: measured vs published, paired comparisons",
                    sections=compare)
        self.ranking_page()
        for page, kind, title, lead in BEYOND_CLEAN_PAGES:
            sections = [{**s, "table": s["tables"].get(kind), "figures": s["figures"][kind]} for s in beyond]
            self.render(page, "beyond_clean.html.j2", title, lead=lead,
                        sections=[s for s in sections if s["table"] or s["figures"]])
        return dict(sorted(self.pages.items()))

    def beyond_clean_section(self, suite: str, data: SuiteData, figures: list) -> dict:
        """A suite's robustness and label-efficiency table and figures (pages robustness.html, learning.html)."""
        tables = {("robustness" if "robustness" in title.lower() else "learning"): html_table(table)
                  for title, _, table in beyond_clean.leaderboard_sections(data.records, suite)}
        figs = {kind: [Figure(job.label, self.figure_src(page, path)) for job, path in figures
                       if job.run_id is None and job.kind.startswith(BEYOND_CLEAN_FIGURES[kind])]
                for page, kind, *_ in BEYOND_CLEAN_PAGES}
        return {"suite": suite, "id": render.slug(suite), "tables": tables, "figures": figs}

    def overview_section(self, suite: str, data: SuiteData, tables: dict, trusted: pd.DataFrame,
                         figures: list) -> dict:
        page = "index.html"
        metrics = [headline_html(mt, lambda g, d: link(page, cell_page(suite, g, d))) for mt in tables.values()]
        first = tables[aggregate.HEADLINE_METRICS[0]]
        filters = {
            "dataset": first.datasets,
            "model": sorted({r.attrs["model"] for t in metrics for r in t.rows}),
            "size": sorted({r.attrs["size"] for t in metrics for r in t.rows}, key=int),
            "scheme": sorted({r.attrs["scheme"] for t in metrics for r in t.rows}),
        }
        seeds = aggregate.expected_seeds(data.frame, data.plan)
        extra = [render.incomplete_table(aggregate.incomplete_groups(data.frame, data.plan), suite, seeds, data.plan),
                 render.failed_table(aggregate.failed_runs(data.frame), suite), render.seeds_table(trusted, suite),
                 compute.compute_table(data.records, suite)]
        failed_links = {str(r): link(page, run_page(suite, str(r)))
                        for r in data.frame.loc[data.frame["status"] == "failed", "run_id"]}
        extra_tables = []
        for table in (t for t in extra if t is not None):
            html = html_table(table)
            for row in html.rows:  # a failed run's id opens its page
                if row.cells and row.cells[0].text in failed_links:
                    row.cells[0].href = failed_links[row.cells[0].text]
            extra_tables.append(html)
        suite_figs = [Figure(job.label, self.figure_src(page, path)) for job, path in figures  # beyond-clean
                      if job.run_id is None and not job.kind.startswith(tuple(BEYOND_CLEAN_FIGURES.values()))]
        n_done = int((data.frame["status"] == "completed").sum())
        headline = html_table(render.compact_table(suite, tables, trusted), id=f"{render.slug(suite)}-headline")
        return {"suite": suite, "id": render.slug(suite), "headline": headline, "metrics": metrics, "filters": filters,
                "labels": {m: _label(m) for m in tables}, "extra": extra_tables, "figures": suite_figs,
                "plan": data.plan.file if data.plan else "", "n_runs": len(data.records), "n_done": n_done,
                "seeds": ", ".join(map(str, seeds))}

    def compare_section(self, suite: str, data: SuiteData) -> dict:
        gap = render.published_gap_table(aggregate.published_gap(data.frame, self.published, data.plan,
                                                                  data.records), suite)
        pairwise = [render.pairwise_table(aggregate.pairwise(data.frame, metric), suite, metric)
                    for metric in aggregate.PAIRWISE_METRICS]
        return {"suite": suite, "id": render.slug(suite), "gap": html_table(gap) if gap else None,
                "pairwise": [html_table(t) for t in pairwise if t is not None]}

    def ranking_page(self) -> None:
        """ranking.html: each suite's rankings across datasets, then the published MedMNIST+ ones with their
        critical-difference diagrams (drawn by `benchmark figures`' code into `<figures>/ranking/` when missing)."""
        from benchmark.report import figures

        page = "ranking.html"
        sections = []
        for suite, data in self.suites.items():
            tables = [html_table(render.ranking_table(r)) for r in ranking.suite_rankings(data)]
            if tables:
                found = [Figure(job.label, self.figure_src(page, path)) for job, path in self.figures_of.get(suite, [])
                         if job.kind == "critical_difference"]
                sections.append({"id": render.slug(suite), "title": f"Suite {suite}", "tables": tables,
                                 "figures": found})
        drawn = figures.ranking_figures(self.figures / figures.RANKING_FOLDER, ("png",), self.dpi, reuse=WEB_FORMATS)
        sections.append({"id": "medmnist-plus", "title": "MedMNIST+ (published)",
                         "tables": [html_table(render.ranking_table(r)) for r in ranking.medmnist_plus_rankings()],
                         "figures": [Figure(job.label, self.figure_src(page, paths[0])) for job, paths in drawn
                                     if paths]})
        self.render(page, "ranking.html.j2", "Ranking across datasets", sections=sections,
                    missing=ranking.missing_extra())

    def cell_pages(self, suite: str, data: SuiteData, tables: dict, group: tuple, dataset: str) -> None:
        page = cell_page(suite, group, dataset)
        frame = data.frame
        runs = frame[(frame["model"] == group[0]) & (frame["size"] == group[1]) & (frame["scheme"] == group[2])
                     & (frame["dataset"] == dataset)].sort_values(["seed", "run_id"])
        metrics = _metric_columns(runs.loc[runs["status"] == "completed"].dropna(axis=1, how="all"))
        columns = [HtmlColumn("Seed", "r", True), HtmlColumn("Run"), HtmlColumn("Status"),
                   *(HtmlColumn(_label(m), "r", True) for m in metrics), HtmlColumn("Best epoch", "r", True),
                   HtmlColumn("Epochs", "r", True)]
        rows = []
        for r in runs.itertuples(index=False):
            values = [HtmlCell(_metric_text(r.scheme, m, getattr(r, m) if m in runs.columns else None)) for m in metrics]
            best = render.DASH if pd.isna(r.best_epoch) else str(int(r.best_epoch))
            rows.append(HtmlRow([HtmlCell(str(r.seed)), HtmlCell(r.run_id, href=link(page, run_page(suite, r.run_id))),
                                 HtmlCell(r.status if r.status == "completed" else f"{r.status}: {r.error_type}"),
                                 *values, HtmlCell(best), HtmlCell(str(r.epochs))]))
        model, size, scheme = group
        summary = []
        for metric, mt in tables.items():
            if dataset in mt.datasets:
                text, note = render.cell_display(mt.cell(group, dataset))
                summary.append((_label(metric), text, note))
        self.render(page, "cell.html.j2", f"{model} · {size} px · {scheme or render.DASH} on {dataset}",
                    suite=suite, suite_id=render.slug(suite), dataset=dataset, group=group, summary=summary,
                    runs=HtmlTable("Runs", columns, rows, "Test metrics of each run (best epoch's weights)."))

    def run_page(self, suite: str, data: SuiteData, record: Record, figures: list) -> None:
        run_id = str(record["run_id"])
        page = run_page(suite, run_id)
        row = data.frame[data.frame["run_id"] == run_id].iloc[0]
        group = (row["model"], int(row["size"]), row["scheme"])
        test = [(_label(k), _metric_text(row["scheme"], k, v)) for k, v in _flat_scalars(record.get("test"))]
        per_class_rows = data.per_class[data.per_class["run_id"] == run_id].sort_values("class_index")
        per_class = HtmlTable("Per-class test metrics", [HtmlColumn("Class"), HtmlColumn("Precision", "r"),
                                                         HtmlColumn("Recall", "r"), HtmlColumn("F1", "r"),
                                                         HtmlColumn("Support", "r")],
                              [HtmlRow([HtmlCell(f"{r.class_index}: {r.class_name}"), HtmlCell(render.fmt(r.precision)),
                                        HtmlCell(render.fmt(r.recall)), HtmlCell(render.fmt(r.f1)),
                                        HtmlCell(render.DASH if pd.isna(r.support) else str(int(r.support)))])
                               for r in per_class_rows.itertuples(index=False)])
        order = list(RUN_FIGURE_TITLES)  # curves first; kinds the site does not know yet before the image grid
        figures = sorted(figures, key=lambda f: (order.index(f[0].kind) if f[0].kind in order else len(order) - 1.5,
                                                 f[0].stem))
        figs = [Figure(RUN_FIGURE_TITLES.get(job.kind, job.kind.replace("_", " ").capitalize()),
                       self.figure_src(page, path)) for job, path in figures]
        environment = dict(record.get("environment") or {})
        versions = environment.pop("versions", {}) or {}
        summary = [("Suite", suite), ("Dataset", f"{row['dataset']} ({row['size']} px)"), ("Model", row["model"]),
                   ("Scheme", row["scheme"] or render.DASH), ("Seed", str(row["seed"])), ("Status", row["status"]),
                   ("Selection metric", _text(record.get("selection_metric"))),
                   ("Best epoch", _text(record.get("best_epoch"))),
                   ("Epochs run", str(len(record.get("history") or []))),
                   ("Stopped early", _text(record.get("stopped_early"))),
                   ("Resumed from epoch", _text(record.get("resumed_from_epoch"))),
                   ("Time", timing_line(record.get("timing")) or render.DASH),
                   ("Recorded", _text(record.get("created_at")))]
        self.render(page, "run.html.j2", run_id, suite=suite, suite_id=render.slug(suite), record=record,
                    run_id=run_id, summary=summary, test=test, per_class=per_class, figures=figs,
                    cell_href=link(page, cell_page(suite, group, row["dataset"])),
                    config=json.dumps(record.get("config"), indent=2, sort_keys=True, ensure_ascii=False),
                    config_hash=str(record.get("config_hash")), environment=_flat(environment),
                    versions=_flat(versions), dataset=_flat({k: v for k, v in (record.get("dataset") or {}).items()
                                                             if k != "class_names"}),
                    model=_flat(record.get("model")), timing=_flat(record.get("timing")),
                    error=record.get("error") if record.get("status") == "failed" else None)


def _metric_text(scheme: str, metric: str, value: float | None) -> str:
    """A run's test metric at 4 digits; "n/a" for the calibration metrics of a scheme without probabilities."""
    if metric in CALIBRATION_METRICS and scheme in PROBABILITY_FREE_SCHEMES:
        return f"{render.NOT_APPLICABLE} ({PROBABILITY_FREE_SCHEMES[scheme].split(':')[0]})"
    return render.fmt(value, 4)


def _flat_scalars(block: object) -> list[tuple[str, float]]:
    """The numeric scalars of a record's test block (metrics first in the headline order), sorted."""
    if not isinstance(block, dict):
        return []
    scalars = {k: float(v) for k, v in block.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    first = [m for m in aggregate.HEADLINE_METRICS if m in scalars]
    return [(k, scalars[k]) for k in first + sorted(set(scalars) - set(first))]


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def build_site(suites: dict[str, SuiteData], output: Path | str, figures: Path | str,
               published: pd.DataFrame | None = None, dpi: int = 150) -> dict[str, bytes]:
    """Every file of the site (path relative to `output` → bytes): pages and assets. Draws missing figures
    into `figures/<suite>/` (the pages link there, relative to `output`)."""
    builder = SiteBuilder(suites, load_published() if published is None else published, Path(output), Path(figures),
                          dpi)
    files = {page: html.encode("utf-8") for page, html in builder.build().items()}
    for name in ASSETS:
        files[f"assets/{name}"] = (SITE_FILES / "assets" / name).read_bytes()
    return dict(sorted(files.items()))


def write_site(runs: Path | str | Iterable[Path | str] = "results", output: Path | str = "results/site",
               suite: str | None = None, figures: Path | str | None = None, dpi: int = 150,
               suites_dir: Path | str | None = None) -> list[Path]:
    """Write the static results site under `output` from the records under `runs` (a results, runs or suite
    folder, or record files); pages link to the figures under `figures` (default: `figures/` beside `output`,
    i.e. results/figures for results/site), drawing any that are missing (PNG at `dpi`).

    A folder that already holds a site is updated in place (pages of runs no longer recorded are removed); any
    other non-empty folder is refused. Returns the written paths, sorted."""
    output = Path(output)
    figures = output.parent / "figures" if figures is None else Path(figures)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "index.html").is_file())):
        raise UserError(f"{output} exists and is not a results site (no index.html); pass an empty or new --output")
    suites = load_suites(runs, suite, suites_dir)
    files = build_site(suites, output, figures, dpi=dpi)
    written = []
    for name, data in files.items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        written.append(path)
    for stale in sorted(output.rglob("*.html")):
        if stale.relative_to(output).as_posix() not in files:
            stale.unlink()
    return written
