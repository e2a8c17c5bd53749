"""The list of figure jobs of a suite, and the entry points that draw them into files.

Each job names its inputs' digest (`FigureJob.inputs`: the suite's records and plan for a suite figure, the run's
record for a per-run one, with a hash of the figure code); a folder's `.inputs.json` keeps the digest each of its files
was drawn from, so a caller that reuses drawn files (the site) redraws exactly those whose inputs changed."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from benchmark.errors import UserError
from benchmark.records import atomic_write_bytes, test_set
from benchmark.report.aggregate import HEADLINE_METRICS
from benchmark.report.figures.calibration import plot_reliability, plot_reliability_suite
from benchmark.report.figures.comparison import plot_avg_rank, plot_heatmap, plot_per_class_recall, plot_resolution
from benchmark.report.figures.efficiency import plot_efficiency
from benchmark.report.figures.learning import METRIC_LABELS as LEARNING_METRICS
from benchmark.report.figures.learning import plot_learning_curves
from benchmark.report.figures.ranking import plot_published_critical_difference, plot_suite_critical_difference
from benchmark.report.figures.robustness import plot_robustness_heatmap, plot_severity_curves, robustness_test_sets
from benchmark.report.figures.runs import plot_confidence, plot_confusion, plot_curves, plot_roc
from benchmark.report.figures.samples import plot_predictions, plot_samples, sample_sets, sample_size
from benchmark.report.figures.style import FORMATS, RC, safe_stem, save_figure
from benchmark.report.load import SuiteData, load_suites

logger = logging.getLogger(__name__)

RANKING_FOLDER = "ranking"  # <figures>/ranking/: the published rankings' diagrams
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
    inputs: str = ""  # digest of what it is drawn from ("": unknown, never reused)


MANIFEST = ".inputs.json"  # stem -> the inputs digest its files were drawn from


def digest(*parts) -> str:
    """SHA-256 of JSON-able parts and of the figure code (another version of it may draw differently)."""
    text = json.dumps([figure_code(), *parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def figure_code() -> str:
    """SHA-256 of the figure modules' source (this package)."""
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes())
    return code.hexdigest()


def figure_jobs(data: SuiteData) -> list[FigureJob]:
    """Every figure of one suite, per-suite figures first, then per run (sorted by run id)."""
    recs, plan, suite_name = data.records, data.plan, data.suite
    record_inputs = [digest(rec) for rec in recs]  # each record serialised once, for its figures and the suite's
    suite_inputs = digest(suite_name, repr(plan), record_inputs)
    jobs = [FigureJob(f"heatmap_{m}", f"heatmap {m}", f"heatmap_{m}", partial(plot_heatmap, recs, m, suite_name, plan))
            for m in HEADLINE_METRICS]
    for ds in sorted({test_set(r) for r in recs}):
        jobs.append(FigureJob(f"per_class_recall_{safe_stem(ds)}", f"per-class recall {ds}", "per_class_recall",
                              partial(plot_per_class_recall, recs, ds, suite_name, plan)))
    for ds in sorted({test_set(r) for r in recs if r["status"] == "completed" and r.get("compute")}):
        jobs.append(FigureJob(f"efficiency_{safe_stem(ds)}", f"ACC vs compute {ds}", "efficiency",
                              partial(plot_efficiency, recs, ds, suite_name)))
    jobs.append(FigureJob("resolution_acc", "ACC vs resolution", "resolution_acc",
                          partial(plot_resolution, recs, suite_name, "acc", plan)))
    jobs.append(FigureJob("avg_rank", "average rank", "avg_rank", partial(plot_avg_rank, recs, suite_name, plan)))
    jobs.append(FigureJob("reliability", "reliability", "reliability", partial(plot_reliability_suite, recs, suite_name)))
    jobs += [FigureJob(f"critical_difference_{m}", f"critical difference {m}", "critical_difference",
                       partial(plot_suite_critical_difference, data, m)) for m in ("acc", "auc")]
    for ts in robustness_test_sets(recs):
        jobs.append(FigureJob(safe_stem(f"robustness_severity_{ts}"), f"severity curves {ts}", "robustness_severity",
                              partial(plot_severity_curves, recs, ts, suite_name)))
        jobs.append(FigureJob(safe_stem(f"robustness_heatmap_{ts}"), f"robustness heatmap {ts}", "robustness_heatmap",
                              partial(plot_robustness_heatmap, recs, ts, suite_name)))
    jobs += [FigureJob(f"learning_curve_{m}", f"learning curve {m}", f"learning_curve_{m}",
                       partial(plot_learning_curves, recs, suite_name, m)) for m in LEARNING_METRICS]
    for (ds, size), (names, imgs) in sorted(sample_sets(recs).items()):
        jobs.append(FigureJob(safe_stem(f"samples_{ds}-{size}"), f"samples {ds} {size}px", "samples",
                              partial(plot_samples, ds, sample_size(recs, ds, size), names, imgs, suite_name)))
    for rec, inputs in zip(recs, record_inputs):
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
            jobs.append(FigureJob(f"runs/{safe_stem(f'{rid}_{kind}')}", f"{rid} {kind}", kind,
                                  partial(RUN_FIGURES[kind], rec), rid, inputs))
    return [job if job.run_id else replace(job, inputs=suite_inputs) for job in jobs]


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
    return _draw(figure_jobs(data), folder, _check_args(formats, dpi), dpi, reuse, f"Figures for suite `{data.suite}`")


def ranking_figures(folder: Path | str, formats: Sequence[str] = ("png", "pdf"), dpi: int = 200,
                    reuse: Sequence[str] = ()) -> list[tuple[FigureJob, list[Path]]]:
    """Draw the critical-difference diagrams of the published MedMNIST+ rankings into `folder` (with an
    `index.md`), as `suite_figures` does a suite's."""
    from benchmark.report.ranking import MEDMNIST_PLUS_CSV, medmnist_plus_rankings

    inputs = digest(MEDMNIST_PLUS_CSV.read_text(encoding="utf-8"))
    jobs = [FigureJob(f"critical_difference_{r.key}", f"critical difference: {r.title} ({r.metric})",
                      "critical_difference", partial(plot_published_critical_difference, r.key), inputs=inputs)
            for r in medmnist_plus_rankings()]
    return _draw(jobs, folder, _check_args(formats, dpi), dpi, reuse, "Rankings across datasets (published MedMNIST+)")


def _draw(jobs: list[FigureJob], folder: Path | str, fmts: tuple[str, ...], dpi: int, reuse: Sequence[str],
          heading: str) -> list[tuple[FigureJob, list[Path]]]:
    folder = Path(folder)
    drawn_from = _read_manifest(folder)
    out: list[tuple[FigureJob, list[Path]]] = []
    for job in jobs:
        base = folder / job.stem
        current = job.inputs and drawn_from.get(job.stem) == job.inputs
        if not (current and any(base.with_name(f"{base.name}.{f}").is_file() for f in reuse)):
            drawn_from.pop(job.stem, None)
            with mpl.rc_context(RC), _warnings_logged(base.name):
                try:
                    fig = job.draw()
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    logger.warning(f"skipping figure {base.name}: {exc}")
                    continue
                if fig is None:
                    continue
                base.parent.mkdir(parents=True, exist_ok=True)
                save_figure(fig, base.parent, base.name, fmts, int(dpi))
                if job.inputs:
                    drawn_from[job.stem] = job.inputs
        paths = [base.with_name(f"{base.name}.{f}") for f in FORMATS if base.with_name(f"{base.name}.{f}").is_file()]
        out.append((job, paths))
    folder.mkdir(parents=True, exist_ok=True)
    drawn_from = {job.stem: drawn_from[job.stem] for job in jobs if job.stem in drawn_from}
    atomic_write_bytes(folder / MANIFEST, (json.dumps(drawn_from, indent=0, sort_keys=True) + "\n").encode())
    lines = [f"# {heading}", ""]
    for job, paths in out:
        lines.append(f"- {job.label}: " + ", ".join(f"[{p.suffix[1:]}]({p.relative_to(folder).as_posix()})"
                                                    for p in paths))
    atomic_write_bytes(folder / "index.md", ("\n".join(lines) + "\n").encode("utf-8"))
    return out


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        drawn_from = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return drawn_from if isinstance(drawn_from, dict) else {}


def write_figures(runs: Path | str = "results", output: Path | str = "results/figures", suite: str | None = None,
                  formats=("png", "pdf"), dpi: int = 200, suites_dir: Path | str | None = None) -> list[Path]:
    """Draw every per-suite figure into `output/<suite>/` and every per-run figure into `output/<suite>/runs/`,
    from the records under `runs` (a results folder, a runs folder, a suite folder or record files).

    Seeds expected per group come from `<suite>.yaml` (in `suites_dir`, else ./suites/ or the shipped suites), as
    in the leaderboard, so a group short of the suite's seeds is marked even when every record has fewer.

    Without `suite`, also the critical-difference diagrams of the published MedMNIST+ rankings into
    `output/ranking/`. Returns the written paths (figures in each format, then one `index.md` per folder)."""
    fmts = _check_args(formats, dpi)
    written: list[Path] = []
    for suite_name, data in load_suites(runs, suite, suites_dir).items():
        folder = Path(output) / safe_stem(suite_name)
        for _, paths in suite_figures(data, folder, fmts, dpi):
            written += [p for p in paths if p.suffix[1:] in fmts]
        written.append(folder / "index.md")
    if suite is None:  # the published rankings belong to no suite: drawn with all of them
        folder = Path(output) / RANKING_FOLDER
        for _, paths in ranking_figures(folder, fmts, dpi):
            written += [p for p in paths if p.suffix[1:] in fmts]
        written.append(folder / "index.md")
    return written
