"""The leaderboard document: `leaderboard.md`, `.csv` and `.tex` from run records and each suite's planned grid.

load (records → frame, plan) → aggregate (the numbers) → render (md / tex / csv). The markdown opens with one
compact table per suite, then each suite's detailed tables (per metric with published rows, measured vs
published, incomplete groups, failed runs, per-class metrics, paired comparisons), then how to read them, once.
Everything is sorted and formatted with fixed precision and nothing time-dependent is written, so the same
records give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from benchmark.records import Record, atomic_write_bytes, training_class_counts
from benchmark.report import aggregate, beyond_clean, render
from benchmark.report.load import SuiteData, by_suite, load_published, load_suites

HOW_TO_READ = f"""## How to read these tables

- **The headline** (one compact table per suite) has a block of rows per test set: a test set is a dataset at
  its split ("(random split)": an image folder cut at random, not by the default grouped split). Each metric
  cell is the mean over the completed seeds with its 95 % percentile bootstrap interval over the test images,
  `0.831 [0.80, 0.86]` (1,000 seeded resamples; every seed is scored on the same resampled images, so the
  interval is that of the seed mean). The interval conditions on the trained models: it is test-image noise, not
  the spread of retraining, which the detailed tables' ± std shows. ECE: top-label, 15 equal-width bins.
  A cell whose records store no test predictions shows mean ± std instead.
- **✓ (bold)** = the highest value of its column (test set) and significantly better than the runner-up: a
  one-sided paired bootstrap on the same test images across all seeds of both rows, Holm-corrected over the
  suite's test sets for that metric, p < 0.05. **≈** = highest, but not significantly better than the runner-up:
  a tie within the noise. A column with one measured row gets no mark. The same marks appear in the detailed
  tables; nothing else is bold.
- **Baselines** (italic rows, scheme `baseline`): the majority-class predictor and the class-prior predictor,
  fitted on the training labels of the same split. The counts come from a record's `dataset.class_counts`, or,
  for records written before that key existed, from any record of the same data (same data file md5, split
  sizes and split hash). Never marked; they say what a model that ignores the image scores.
- **Detailed tables** (per suite, per metric): cells are the mean ± sample standard deviation (ddof=1) over the
  completed seeds, with n = seeds. The expected seeds of a group are those the suite file
  (`suites/<suite>.yaml`) lists; a group with fewer is marked `k/N seeds †` and its cell is the mean over the
  seeds that exist. `failed (0/N seeds)` = every run of the group failed; `{render.NOT_RUN}` = planned but no run
  recorded; `{render.DASH}` = not planned. Without a suite file the plan is unknown: the expected seeds are the
  distinct seeds among the suite's records (completed or failed), the columns also include the datasets of the
  published rows shown, and every cell without records reads `{render.NOT_RUN}` (each suite's section says which
  applies).
- **Rows** are model × image size × scheme; columns are the datasets measured or planned in the suite file; a
  planned model × size without records still gets a row. *Average* = mean of the row's per-dataset means over
  the measured datasets; *Avg. rank* = mean of the row's per-dataset ranks (1 = best, ties share the average
  rank); neither is tested, so neither is marked. Rows missing datasets are annotated `(k/N datasets)`.
- *Published* rows are copied from the literature (values as fractions), not measured here, and never take part
  in marks, averages or ranks. *Measured vs published*: Δ = measured mean − published value; Δ / seed std is the
  gap in units of the seed standard deviation (|Δ / std| > 2: beyond seed noise).
- *Per-class metrics*: test precision / recall / F1 per class, mean over the completed seeds (support = test
  images of the class).
- *Failed runs* stopped with an error (epoch = the epoch it failed in) and contribute no numbers to any table.
- *Paired comparisons*: per dataset, runs paired by seed (n = seeds both models completed); paired t-test and
  Wilcoxon signed-rank p-values, two-sided, no correction for multiple comparisons. With a handful of seeds these
  tests have little power (Wilcoxon cannot go below 2^(1-n)): read them as indicative. "all datasets" = the tests
  over the per-dataset means (MedMNIST+ style).
- *Intervals, calibration and significance*: per test set and row, ACC and AUC as in the headline, then MCC, QWK
  (ordinal sets), top-label ECE (15 bins), multi-class Brier and NLL (seed means), baselines in italics.
  `leaderboard.csv` carries every headline cell's interval (`ci_low`, `ci_high`), its mark (`significance`) and
  `best` (the highest mean, untested), and the baseline rows (`kind` = baseline).
"""


def _plan_note(data: SuiteData) -> list[str]:
    """Where a suite's columns, "not yet run" cells and expected seeds come from."""
    plan, seeds = data.plan, aggregate.expected_seeds(data.frame, data.plan)
    listed = f"{len(seeds)} ({', '.join(map(str, seeds))})"
    if plan is None:
        return [f"Expected seeds per group: {listed}.", "",
                f"No suite file `{data.suite}.yaml` was found (in `suites/` here or in the project), so the plan is "
                f"unknown: columns are the datasets of the records and of the published rows shown, every cell "
                f"without records reads `{render.NOT_RUN}`, and the expected seeds are {render.seed_rule(plan)}.", ""]
    sizes = ", ".join(f"{name} ({size}px)" for name, size in plan.datasets)
    return [f"Expected seeds per group: {listed}, {render.seed_rule(plan)}.", "",
            f"Planned grid (`{plan.file}`): {len(plan.models)} model(s) ({', '.join(plan.models)}) × "
            f"{len(plan.datasets)} dataset(s) ({sizes}) × {len(plan.seeds)} seed(s).", ""]


def _references_md(published: pd.DataFrame) -> str:
    lines = ["## Published references", "",
             "Rows marked *published* are copied from these sources (values as fractions), not measured by this "
             "suite:", ""]
    for source, g in published.groupby("source", sort=True):
        lines.append(f"- **{render.md_escape(str(source))}**: {render.md_escape('; '.join(sorted(set(g['reference']))))}")
    return "\n".join(lines) + "\n"


def build_leaderboard(records: Sequence[Record] | dict[str, SuiteData], published: pd.DataFrame | None = None,
                      suites_dir: Path | str | None = None) -> tuple[str, str, str]:
    """(markdown, csv, tex) text for the given records (any number of suites); each suite's planned grid is read
    from `<suite>.yaml` in `suites_dir` (None: ./suites/, then the shipped suites)."""
    if published is None:
        published = load_published()
    suites = records if isinstance(records, dict) else by_suite(records, suites_dir)
    known_counts = training_class_counts(r for data in suites.values() for r in data.records)
    n_runs = sum(len(d.records) for d in suites.values())
    n_done = sum(int((d.frame["status"] == "completed").sum()) for d in suites.values())
    md = ["# Leaderboard", "",
          f"{n_runs} run records ({n_done} completed, {n_runs - n_done} failed) in {len(suites)} suite(s): "
          f"{', '.join(suites)}. Headline: test metrics, seed mean [95 % bootstrap interval], ✓ = significantly best, "
          f"≈ = best within the noise, italic = baselines; how to read every table: "
          f"[at the end](#how-to-read-these-tables).", "", "## Headline", ""]
    tex = ["% Generated by benchmark.report from run records. Requires \\usepackage{booktabs} and amssymb (\\checkmark).",
           "% Wide tables: wrap a tabular in \\resizebox{\\textwidth}{!}{...} (graphicx) or use table*.", ""]
    details: list[str] = []
    csv_rows: list[dict] = []
    for suite, data in suites.items():
        tables, trusted = aggregate.suite_tables(data, published, known_counts)
        compact = render.compact_table(suite, tables, trusted)
        md.append(render.markdown(compact))
        tex += [f"% ---- suite {suite} ----", render.latex(compact)]
        details += [f"## Suite `{suite}`", "", *_plan_note(data), "### Headline metrics", ""]
        for mt in tables.values():
            table = render.headline_table(mt)
            details.append(render.markdown(table))
            tex.append(render.latex(table))
            csv_rows += render.headline_csv_rows(mt, trusted)
        per_class = aggregate.per_class(data.per_class, data.frame, data.plan)
        seeds = aggregate.expected_seeds(data.frame, data.plan)
        sections = (
            ("Measured vs published",
             [render.published_gap_table(aggregate.published_gap(data.frame, published, data.plan), suite)]),
            ("Incomplete groups",
             [render.incomplete_table(aggregate.incomplete_groups(data.frame, data.plan), suite, seeds, data.plan)]),
            ("Failed runs", [render.failed_table(aggregate.failed_runs(data.frame), suite)]),
            ("Per-class metrics", render.per_class_tables(per_class, suite)),
            ("Intervals, calibration and significance", [render.trust_table(trusted, suite)]),
            ("Pairwise comparisons", [render.pairwise_table(aggregate.pairwise(data.frame, metric), suite, metric)
                                      for metric in aggregate.PAIRWISE_METRICS]),
        )
        for title, section in sections:
            section = [t for t in section if t is not None]
            details += [f"### {title}", ""]
            if not section:
                details += ["None.", ""]
            for table in section:
                details.append(render.markdown(table))
                tex.append(render.latex(table))
        for title, note, table in beyond_clean.leaderboard_sections(data.records, suite):
            details += [f"### {title}", "", note, "", render.markdown(table)]
            tex.append(render.latex(table))
        csv_rows += render.per_class_csv_rows(per_class, suite)
    md += details + [HOW_TO_READ, _references_md(published)]
    return "\n".join(md).rstrip("\n") + "\n", render.csv_text(csv_rows), "\n".join(tex).rstrip("\n") + "\n"


def write_leaderboard(runs: Path | str | Iterable[Path | str] = "results", output: Path | str = "results",
                      suite: str | None = None, suites_dir: Path | str | None = None) -> list[Path]:
    """Write `leaderboard.md`, `.csv` and `.tex` under `output` from the records under `runs` (a results folder,
    a runs folder, a suite folder or record files) and the suite files in `suites_dir` (None: ./suites/, then the
    shipped suites). Returns the three paths."""
    md, csv_text, tex = build_leaderboard(load_suites(runs, suite, suites_dir), suites_dir=suites_dir)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("leaderboard.md", md), ("leaderboard.csv", csv_text), ("leaderboard.tex", tex)):
        atomic_write_bytes(output / name, text.encode("utf-8"))
        paths.append(output / name)
    return paths
