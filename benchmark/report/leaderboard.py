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

from benchmark.metrics import DETECTION_ALPHA, DETECTION_POWER, ECE_BINS, MIN_SEEDS_TO_TEST
from benchmark.records import NONFINITE, Record, atomic_write_bytes, training_class_counts
from benchmark.report import aggregate, beyond_clean, compute, ranking, render
from benchmark.report.load import SuiteData, by_suite, load_published, load_suites

HOW_TO_READ = f"""## How to read these tables

- **The headline** (one compact table per suite) has a block of rows per test set: a test set is a dataset at
  its split ("(random split)": an image folder cut at random, not by the default grouped split). Each metric
  cell is the mean over the completed seeds with its 95 % interval, `0.831 [0.78, 0.88]`, from a **two-level
  bootstrap**: each of 1,000 seeded resamples draws the test images (one image draw shared by every seed and
  every row of the test set), scores every seed on them, and adds to their mean the training noise of a mean
  of n seeds: their spread on that resample over the square root of n, times a Student-t draw with n − 1
  degrees of freedom. So the interval holds the training variance (which seeds you happened to train) as well
  as the test-image noise. In simulation (`python scripts/significance_check.py`, 3 seeds) it covers the true
  mean 97 % of the time; drawing the 3 seeds with replacement, as earlier versions did, covered it 82 %.
  The images-only interval (the trained models held fixed; what earlier versions printed) is the second figure
  in *Intervals, calibration and significance*. ECE: top-label, {ECE_BINS} equal-width bins; `n/a` where the
  scheme has no probabilities (kNN: vote fractions). A cell whose records store no test predictions shows
  mean ± std instead.
- **✓ (bold)** = the highest value of its column (test set), better than the runner-up in two tests, both
  two-sided (which row is highest was read off the same numbers) and Holm-corrected over the suite's test sets
  for that metric: Welch's t-test on the two rows' per-seed values (would retraining keep the order?) and the
  paired bootstrap over the test images (would other test images?); the larger p < {aggregate.SIGNIFICANCE_LEVEL:g},
  **and** better than every baseline (the two-level bootstrap, one-sided, p < {aggregate.SIGNIFICANCE_LEVEL:g}).
  In the same simulation two equally good models get a ✓ in 4 % of experiments (the level says at most 5 %;
  the one-sided two-level bootstrap of earlier versions: 18.5 %).
  **≈** = highest, but not shown better than the runner-up or a baseline: a tie within the noise. **?** =
  highest, untested: it or the runner-up has fewer than {MIN_SEEDS_TO_TEST} completed seeds, too few to estimate
  the seed spread. A column with one measured row gets no mark; a column where a baseline scores at least as
  high as every model gets none either. The same marks appear in the detailed tables; nothing else is bold.
  `leaderboard.csv` has the p-value (`p`) of each mark.
- **▾** = the cell does not beat the majority-class / class-prior baseline: one-sided paired two-level
  bootstrap against each baseline, p ≥ {aggregate.SIGNIFICANCE_LEVEL:g} for at least one (uncorrected: a flag is a
  warning, not a claim). With one seed the test covers the test images only.
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
  rank); neither is tested, so neither is marked (*Across datasets* tests rankings). Rows missing datasets are
  annotated `(k/N datasets)`.
- *Published* rows are copied from the literature (values as fractions), not measured here, and never take part
  in marks, averages or ranks. *Measured vs published*: Δ = measured mean − published value; Δ / seed std is the
  gap in units of the seed standard deviation (|Δ / std| > 2: beyond seed noise), shown only where the runs
  followed the published row's **protocol** (scheme, init, input size, resize, split and the recipe: epochs,
  optimizer, lr, batch size, schedule, augmentation, imbalance handling, checkpoint selection; a record's
  `protocol`, derived from its config for older records, against published.csv's `protocol` column). Otherwise
  the Protocol column names the differences ("3 epochs vs 100") and Δ compares different experiments.
- *Per-class metrics*: test precision / recall / F1 per class, mean over the completed seeds (support = test
  images of the class).
- *Failed runs* stopped with an error (epoch = the epoch it failed in) and contribute no numbers to any table.
- *Paired comparisons*: per dataset, runs paired by seed (n = seeds both models completed); paired t-test and
  Wilcoxon signed-rank p-values, two-sided, no correction for multiple comparisons. With a handful of seeds these
  tests have little power (Wilcoxon cannot go below 2^(1-n)): read them as indicative. "all datasets" = the tests
  over the per-dataset means (MedMNIST+ style), one row per size and pair of schemes, each dataset counted once.
- *Intervals, calibration and significance*: per test set and row, ACC and AUC with both intervals (seeds and
  images; images only) and the marks, then MCC, QWK (ordinal sets), top-label ECE ({ECE_BINS} bins), multi-class
  Brier and NLL (seed means; `n/a` for kNN, whose vote fractions are not probabilities), baselines in italics.
  `leaderboard.csv` carries every headline cell's intervals (`ci_low`, `ci_high`; `ci_images_low`,
  `ci_images_high`), its mark (`significance`), `p`, `vs_baseline`, `detectable` and `best` (the highest mean,
  untested), and the baseline rows (`kind` = baseline).
- *Seeds needed*: per row, the seed std and the smallest difference of means its seeds could detect (two-sided
  two-sample t-test on per-seed values, α = {DETECTION_ALPHA:g}, power {DETECTION_POWER:g}, as many seeds for the other
  model, the same std); on each test set's highest-ACC row, the seeds per model that test needs to detect a
  {aggregate.DIFFERENCE_OF_INTEREST:g} ACC difference from the runner-up at their pooled seed std.
- *Across datasets*: the rankings over a suite's datasets (and over the published MedMNIST+ table): mean ranks,
  the Friedman test with the Nemenyi critical difference and the Bayesian signed-rank probabilities; each
  table's note says what was tested (at least {ranking.MIN_DATASETS} datasets and the `{ranking.EXTRA}` extra).
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


def _across_datasets_md(tables: list[render.Table]) -> list[str]:
    """The rankings across datasets, each with its caption (what was tested): each suite's, then the published
    MedMNIST+ table's."""
    missing = ranking.missing_extra()
    return ["## Across datasets", "",
            "Which model is best over a whole suite: the datasets are the sample. Friedman test with the Nemenyi "
            f"post-hoc (critical difference, α = {ranking.ALPHA:g}) on the models' ranks per dataset (Demšar 2006) and a "
            f"Bayesian signed-rank test with a ±{ranking.ROPE:g} region of practical equivalence (Benavoli et al. "
            f"2017), each needing at least {ranking.MIN_DATASETS} datasets; the suites' rows are seed means. Then the "
            "published MedMNIST+ table (10 pretrained backbones × 4 datasets × 4 sizes; `benchmark/medmnist_plus.csv`). "
            "Critical-difference diagrams: `figures/ranking/` and each suite's figures.", "",
            *([missing, ""] if missing else []), *(f"{render.markdown(t)}\n{t.caption}\n" for t in tables)]


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
    n_nonfinite = sum(int((d.frame["error_type"] == NONFINITE).sum()) for d in suites.values())
    counts = f"{n_done} completed, {n_runs - n_done - n_nonfinite} failed" + (
        f", {n_nonfinite} with non-finite test results, not scored" if n_nonfinite else "")
    md = ["# Leaderboard", "",
          f"{n_runs} run records ({counts}) in {len(suites)} suite(s): "
          f"{', '.join(suites)}. Headline: test metrics, seed mean [95 % interval over seeds and test images], "
          f"✓ = significantly best, ≈ = best within the noise, ? = too few seeds to test, ▾ = not above the baselines, "
          f"italic = baselines; how to read every table: "
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
             [render.published_gap_table(aggregate.published_gap(data.frame, published, data.plan, data.records),
                                         suite)]),
            ("Incomplete groups",
             [render.incomplete_table(aggregate.incomplete_groups(data.frame, data.plan), suite, seeds, data.plan)]),
            ("Failed runs", [render.failed_table(aggregate.failed_runs(data.frame), suite)]),
            ("Per-class metrics", render.per_class_tables(per_class, suite)),
            ("Intervals, calibration and significance", [render.trust_table(trusted, suite)]),
            ("Seeds needed", [render.seeds_table(trusted, suite)]),
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
        cost = compute.compute_table(data.records, suite)
        if cost is not None:  # only suites with records that hold a compute block
            details += ["### Compute", "", compute.INTRO, "", render.markdown(cost)]
            tex.append(render.latex(cost))
            csv_rows += compute.compute_csv_rows(data.records, suite)
    across = [render.ranking_table(r) for r in ranking.all_rankings(suites)]
    tex += [render.latex(t) for t in across]
    md += details + _across_datasets_md(across) + [HOW_TO_READ, _references_md(published)]
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
