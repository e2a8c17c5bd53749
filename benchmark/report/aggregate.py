"""The numbers of every table and figure, computed once from the records frame with pandas.

Each function takes a suite's frame (`benchmark.records.records_frame`, one row per run) and returns a DataFrame
(or a small dataclass of DataFrames); `render` only formats them and `figures` only draws them. To add a column
(an interval, a calibration metric, a significance mark), add it to the frame these functions return, then show
it in `render`.

Conventions: a group (a table row) is (model, size, scheme); a cell is a group × dataset. A cell's value is the
mean and sample standard deviation (ddof=1) over the completed seeds with a finite value; the expected seeds are
the suite file's (`SuitePlan.seeds`), else the distinct seeds among the suite's records.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.errors import UserError
from benchmark.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CALIBRATION_METRICS,
    HEADLINE_METRICS,
    METRIC_RANGES,
    MIN_SEEDS_TO_TEST,
    PROBABILITY_FREE_SCHEMES,
    baseline_probs,
    hierarchical_draws,
    holm,
    mean_interval,
    minimum_detectable_difference,
    paired_pvalue_from_draws,
    resample_counts,
    seed_noise,
    seeds_needed,
    weighted_metrics,
    welch_pvalue,
)
from benchmark.records import data_identity, group_key, parse_protocol, protocol_of, test_set
from benchmark.report.load import PUBLISHED_COLUMNS, SuiteData, SuitePlan

logger = logging.getLogger(__name__)

METRIC_LABELS: dict[str, str] = {"acc": "ACC", "auc": "AUC", "f1_macro": "Macro F1", "balanced_acc": "Balanced ACC"}
#: metrics that get a pairwise-comparison table
PAIRWISE_METRICS: tuple[str, ...] = ("acc", "auc")
GROUP = ["model", "size", "scheme"]
CELL = [*GROUP, "dataset"]
ALL_DATASETS = "ALL (per-dataset means)"


def groups_of(frame: pd.DataFrame) -> list[tuple]:
    return sorted(set(frame[GROUP].itertuples(index=False, name=None)))


def expected_seeds(frame: pd.DataFrame, plan: SuitePlan | None = None) -> list:
    """The seeds every group should have: the plan's, else the distinct seeds among the records (any status)."""
    if plan is not None:
        return list(plan.seeds)
    return sorted(set(frame["seed"]))


def _values(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per run, NaN where it is missing, not finite, or the run failed."""
    if metric not in frame:
        return pd.Series(np.nan, index=frame.index)
    values = pd.to_numeric(frame[metric], errors="coerce").where(frame["status"] == "completed")
    return values.where(np.isfinite(values))


def _seed_tuple(seeds: pd.Series) -> tuple:
    return tuple(sorted(seeds))


def cell_stats(frame: pd.DataFrame, metric: str, plan: SuitePlan | None = None) -> pd.DataFrame:
    """One row per recorded cell (model, size, scheme, dataset): mean, std, n (completed seeds with a value),
    seeds, failed_seeds, done_seeds (every completed seed), n_expected and n_planned (the expected seeds among
    `seeds`: a seed the plan does not name counts in n and the mean, never towards completeness)."""
    runs = frame.assign(value=_values(frame, metric))
    measured = runs.dropna(subset=["value"]).sort_values("seed")
    out = pd.DataFrame(index=pd.MultiIndex.from_frame(runs[CELL].drop_duplicates().sort_values(CELL)))
    out = out.join(measured.groupby(CELL)["value"].agg(mean="mean", std="std", n="size"))
    out = out.join(measured.groupby(CELL)["seed"].agg(_seed_tuple).rename("seeds"))
    for status, column in (("failed", "failed_seeds"), ("completed", "done_seeds")):
        out = out.join(runs[runs["status"] == status].groupby(CELL)["seed"].agg(_seed_tuple).rename(column))
    for column in ("seeds", "failed_seeds", "done_seeds"):
        out[column] = [v if isinstance(v, tuple) else () for v in out[column]]
    out["n"] = out["n"].fillna(0).astype(int)
    expected = set(expected_seeds(frame, plan))
    out["n_expected"] = len(expected)
    out["n_planned"] = [len(expected & set(seeds)) for seeds in out["seeds"]]
    return out.reset_index()


@dataclass
class MetricTable:
    """The numbers behind one headline-metric table of one suite (also drawn by the figures).

    `cells`: one row per group × column dataset (the whole grid) with mean, std, n, n_expected, seeds,
    failed_seeds, status (ok / incomplete / failed / missing / not_run / not_planned), best (bool: the highest
    mean, untested), rank (1 = best, ties share the average rank; NaN without a value) and, from `trust`, low /
    high (95 % two-level bootstrap interval: seeds and test images), img_low / img_high (test images only), mark
    ("best", "tie", "untested", "" as in `trust`; "" without stored predictions), vs_baseline ("beats", "no", ""),
    p, mdd and seeds_needed. `rows`: one row per group
    with average (mean of its per-dataset means over the measured datasets), n_average, avg_rank, n_rank.
    `published`: model, size, scheme, source, dataset, value of the published rows shown with the table."""

    metric: str
    suite: str
    datasets: list[str]
    measured_datasets: list[str]
    groups: list[tuple]
    cells: pd.DataFrame
    rows: pd.DataFrame
    published: pd.DataFrame
    n_expected: int
    plan: SuitePlan | None = None

    def cell(self, group: tuple, dataset: str) -> pd.Series:
        return self.cells.loc[(*group, dataset)]

    def row(self, group: tuple) -> pd.Series:
        return self.rows.loc[group]


def _columns_and_published(frame: pd.DataFrame, published: pd.DataFrame,
                           plan: SuitePlan | None) -> tuple[list[str], pd.DataFrame]:
    """The table's dataset columns (sorted) and the published rows shown with them (every metric alike).

    With a plan: the recorded and planned datasets, and the published values on those. Without: the recorded
    datasets plus every dataset of the published rows whose model or dataset occurs in the records."""
    recorded = set(frame["dataset"])
    if plan is None:
        pub = published[published["model"].isin(set(frame["model"])) | published["dataset"].isin(recorded)]
        return sorted(recorded | set(pub["dataset"])), pub
    datasets = sorted(recorded | plan.dataset_names)
    return datasets, published[published["dataset"].isin(datasets)]


def _status(row: pd.Series, expects_run: bool) -> str:
    if not row["recorded"]:
        return "not_run" if expects_run else "not_planned"
    if pd.isna(row["mean"]):
        return "failed" if row["failed_seeds"] else "missing"
    return "ok" if row["n_planned"] >= row["n_expected"] else "incomplete"


def _is_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def headline(frame: pd.DataFrame, metric: str, plan: SuitePlan | None = None,
             published: pd.DataFrame | None = None, suite: str = "", trusted: pd.DataFrame | None = None) -> MetricTable:
    """One headline table of ONE suite's frame on `metric` (a key of the records' `test` block); intervals and
    significance marks come from `trusted` (`trust` of the same suite's records) where given."""
    stats_ = cell_stats(frame, metric, plan)
    n_expected = len(expected_seeds(frame, plan))
    recorded = groups_of(frame)
    planned_only = set() if plan is None else {(m, s, "") for m, s in plan.model_sizes - {g[:2] for g in recorded}}
    groups = sorted(set(recorded) | planned_only)
    if published is None:
        published = pd.DataFrame(columns=PUBLISHED_COLUMNS)
    datasets, pub = _columns_and_published(frame, published, plan)

    grid = pd.DataFrame([(*g, d) for g in groups for d in datasets], columns=CELL)
    cells = grid.merge(stats_, on=CELL, how="left", indicator="recorded")
    cells["recorded"] = cells["recorded"] == "both"
    cells[["n", "n_planned"]] = cells[["n", "n_planned"]].fillna(0).astype(int)
    cells["n_expected"] = n_expected
    for column in ("seeds", "failed_seeds", "done_seeds"):
        cells[column] = [v if isinstance(v, tuple) else () for v in cells[column]]
    cells["status"] = [_status(row, plan is None or plan.planned(tuple(row[GROUP]), row["dataset"]))
                       for _, row in cells.iterrows()]
    cells["rank"] = cells.groupby("dataset")["mean"].rank(method="average", ascending=False)
    column_best = cells.groupby("dataset")["mean"].transform("max")
    cells["best"] = [pd.notna(m) and _is_close(m, b) for m, b in zip(cells["mean"], column_best)]
    cells = cells.merge(_intervals(trusted, metric), on=CELL, how="left")
    cells[["mark", "vs_baseline"]] = cells[["mark", "vs_baseline"]].fillna("")
    measured = sorted(set(cells.loc[cells["mean"].notna(), "dataset"]))

    on_measured = cells[cells["dataset"].isin(measured)]
    rows = pd.DataFrame(index=pd.MultiIndex.from_tuples(groups, names=GROUP))
    rows = rows.join(on_measured.groupby(GROUP)["mean"].agg(average="mean", n_average="count"))
    rows = rows.join(on_measured.groupby(GROUP)["rank"].agg(avg_rank="mean", n_rank="count"))
    rows[["n_average", "n_rank"]] = rows[["n_average", "n_rank"]].fillna(0).astype(int)

    pub = pub[pub["metric"] == metric]
    pub = pub[["model", "size", "scheme", "source", "dataset", "value"]].astype({"size": int})
    pub = pub.sort_values(["model", "size", "scheme", "source", "dataset"]).reset_index(drop=True)
    return MetricTable(metric, suite, datasets, measured, groups, cells.set_index(CELL, drop=False), rows, pub,
                       n_expected, plan)


def _intervals(trusted: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """Per cell, from a `trust` frame (empty without one): low / high (seeds and images), img_low / img_high
    (images only), mark, vs_baseline, p (Holm-corrected, best rows only), mdd and seeds_needed of `metric`."""
    names = {"low": "low", "high": "high", "img_low": "img_low", "img_high": "img_high", "mark": "mark",
             "vs_baseline": "vs_baseline", "p": "p", "mdd": "mdd", "seeds_needed": "seeds_needed"}
    columns = {f"{metric}_{suffix}": name for suffix, name in names.items()}
    if trusted is None or f"{metric}_low" not in trusted:
        return pd.DataFrame(columns=[*CELL, *names.values()])
    measured = trusted[~trusted["baseline"]].rename(columns={"test_set": "dataset"})
    out = measured[[*CELL, *columns]].rename(columns=columns)
    return out.astype({"size": int, "mark": object, "vs_baseline": object})


def suite_tables(data: SuiteData, published: pd.DataFrame | None = None,
                 known_counts: dict[tuple, list[int]] | None = None) -> tuple[dict[str, MetricTable], pd.DataFrame]:
    """A suite's headline tables (one per `HEADLINE_METRICS`, with intervals and marks) and its `trust` frame:
    what the leaderboard and the site show, computed once."""
    trusted = trust(data.records, known_counts)
    tables = {metric: headline(data.frame, metric, data.plan, published, data.suite, trusted)
              for metric in HEADLINE_METRICS}
    return tables, trusted


def per_class(per_class_runs: pd.DataFrame, frame: pd.DataFrame, plan: SuitePlan | None = None) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support per dataset and group: means over the completed seeds
    (`per_class_runs` is `records_frame.per_class_frame`), with n (runs), n_planned (the expected seeds among
    them, as `cell_stats`) and n_expected."""
    if per_class_runs.empty:
        return pd.DataFrame(columns=["dataset", *GROUP, "class_index", "class_name", "precision", "recall", "f1",
                                     "support", "n", "n_planned", "n_expected"])
    expected = set(expected_seeds(frame, plan))
    keys = ["dataset", *GROUP]
    names = per_class_runs.groupby(["dataset", "class_index"])["class_name"].first()
    out = per_class_runs.groupby([*keys, "class_index"])[["precision", "recall", "f1", "support"]].mean()
    out = out.join(per_class_runs.groupby(keys)["run_id"].nunique().rename("n"), on=keys)
    planned = per_class_runs.groupby(keys)["seed"].agg(lambda seeds: len(expected & set(seeds))).rename("n_planned")
    out = out.join(planned, on=keys).reset_index()
    out["class_name"] = [names[(d, i)] for d, i in zip(out["dataset"], out["class_index"])]
    out["n_expected"] = len(expected)
    return out.sort_values([*keys, "class_index"]).reset_index(drop=True)


def failed_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per failed run: run_id, dataset, size, model, scheme, seed, epoch, error_type, message."""
    failed = frame[frame["status"] == "failed"].sort_values("run_id")
    return pd.DataFrame({
        "run_id": failed["run_id"], "dataset": failed["dataset"], "size": failed["size"],
        "model": failed["model"], "scheme": failed["scheme"], "seed": failed["seed"], "epoch": failed["error_epoch"],
        "error_type": failed["error_type"].fillna("error").replace("", "error"),
        "message": [one_line(m or "(no message recorded)") for m in failed["error_message"]],
    }).reset_index(drop=True)


def incomplete_groups(frame: pd.DataFrame, plan: SuitePlan | None = None) -> pd.DataFrame:
    """Recorded cells with fewer completed seeds than expected: done, failed and missing seeds."""
    seeds = expected_seeds(frame, plan)
    cells = cell_stats(frame, "acc", plan)
    cells = cells[[not set(seeds) <= set(done) for done in cells["done_seeds"]]].copy()
    cells["missing_seeds"] = [tuple(s for s in seeds if s not in set(done) | set(failed))
                              for done, failed in zip(cells["done_seeds"], cells["failed_seeds"])]
    return cells.sort_values(CELL).reset_index(drop=True)


def one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------------------
# Paired comparisons
# ----------------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = ["suite", "dataset", "size", "scheme_a", "scheme_b", "n", "seeds", "mean_a", "mean_b", "mean_diff",
                   "std_diff", "t_pvalue", "wilcoxon_pvalue", "note"]


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
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


def _compare_row(a: np.ndarray, b: np.ndarray, **identity) -> dict:
    t_p, w_p, note = paired_tests(a, b)
    d = a - b
    return dict(identity, n=len(d), mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=float(d.mean()),
                std_diff=float(d.std(ddof=1)) if len(d) > 1 else float("nan"), t_pvalue=t_p, wilcoxon_pvalue=w_p,
                note=note if "note" not in identity else (identity["note"] + "; " + note).rstrip("; "))


def compare_models(frame: pd.DataFrame, model_a: str, model_b: str, metric: str = "acc") -> pd.DataFrame:
    """Paired comparison of two models on `metric` over the frame's runs (any suites).

    One row per (suite, dataset, size, scheme_a, scheme_b) where both models completed runs with the same seed:
    n paired seeds, means, mean and sample std of the difference a - b, paired t-test and Wilcoxon signed-rank
    p-values (NaN for n < 2; the note says how small n limits the Wilcoxon p-value). Then, for each (suite, size,
    scheme_a, scheme_b) with >= 2 datasets, one `dataset == ALL_DATASETS` row: the tests over the per-dataset means
    (MedMNIST+ style), each dataset counted once. Failed
    runs never enter. Raises `UserError` when either model has no completed run."""
    done = frame[frame["status"] == "completed"]
    for name in (model_a, model_b):
        if not (done["model"] == name).any():
            known = ", ".join(sorted(set(done["model"])))
            raise UserError(f"no completed runs of model {name!r} to compare; models with results: {known}")
    runs = frame.assign(value=_values(frame, metric)).dropna(subset=["value"])
    runs = runs[runs["model"].isin([model_a, model_b])]
    rows = []
    for (suite, dataset, size), cell in runs.groupby(["suite", "dataset", "size"], sort=True):
        side_a, side_b = cell[cell["model"] == model_a], cell[cell["model"] == model_b]
        for scheme_a, a in side_a.groupby("scheme", sort=True):
            for scheme_b, b in side_b.groupby("scheme", sort=True):
                paired = a.set_index("seed")["value"].to_frame("a").join(b.set_index("seed")["value"].rename("b"),
                                                                         how="inner").sort_index()
                if paired.empty:
                    continue
                rows.append(_compare_row(paired["a"].to_numpy(float), paired["b"].to_numpy(float), suite=suite,
                                         dataset=dataset, size=size, scheme_a=scheme_a, scheme_b=scheme_b,
                                         seeds=",".join(map(str, paired.index))))
    per = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    # one row per dataset in each test: the same size and the same pair of schemes
    summary = [_compare_row(g["mean_a"].to_numpy(float), g["mean_b"].to_numpy(float), suite=suite,
                            dataset=ALL_DATASETS, size=size, scheme_a=scheme_a, scheme_b=scheme_b, seeds="",
                            note="over datasets")
               for (suite, size, scheme_a, scheme_b), g in per.groupby(["suite", "size", "scheme_a", "scheme_b"], sort=True)
               if len(g) >= 2]
    if not summary:
        return per.reset_index(drop=True)
    return pd.concat([per, pd.DataFrame(summary, columns=COMPARE_COLUMNS)], ignore_index=True)


def pairwise(frame: pd.DataFrame, metric: str) -> list[tuple[str, str, pd.DataFrame]]:
    """`compare_models` for every pair of models with completed runs (sorted): (model a, model b, rows)."""
    models = sorted(set(frame.loc[frame["status"] == "completed", "model"]))
    out = []
    for a, b in combinations(models, 2):
        rows = compare_models(frame, a, b, metric)
        if not rows.empty:
            out.append((a, b, rows))
    return out


def protocol_difference(measured: dict[str, str], published: dict[str, str]) -> str:
    """How a measured protocol differs from a published one, field by field ("3 epochs vs 100; schedule cosine vs
    multistep"), fields the source does not state last; "" when they agree."""
    differ, unstated = [], []
    for field in dict.fromkeys([*measured, *published]):
        ours, theirs = measured.get(field), published.get(field)
        if theirs is None:
            unstated.append(field)
        elif ours != theirs:
            differ.append(f"{ours or 'unknown'} epochs vs {theirs}" if field == "epochs" else
                          f"{field.replace('_', ' ')} {ours or 'unknown'} vs {theirs}")
    return "; ".join(differ + ([f"not stated by the source: {', '.join(unstated)}"] if unstated else []))


def cell_protocols(records) -> dict[tuple, dict[str, str]]:
    """(model, size, scheme, dataset) → the protocol its completed records share (`records.protocol_of`); a cell
    whose seeds followed different protocols gets {"protocol": "mixed"}."""
    out: dict[tuple, dict[str, str]] = {}
    for record in records:
        if record["status"] != "completed":
            continue
        key = (*group_key(record), test_set(record))
        protocol = protocol_of(record)
        out[key] = protocol if out.get(key, protocol) == protocol else {"protocol": "mixed"}
    return out


def published_gap(frame: pd.DataFrame, published: pd.DataFrame, plan: SuitePlan | None,
                  records=None) -> pd.DataFrame:
    """Measured vs published for every (model, size, dataset, metric) with a published value and a measured or
    planned run: published, mean, std, n, n_expected, gap (mean − published), protocol (how the measured runs'
    protocol differs from the published row's, "" when the same; `protocol_difference`) and gap / std — only
    between rows of the same protocol (NaN otherwise, or without `records` to read the protocol from). A
    published row that names its scheme (MedMNIST+: fine_tune, linear_probe, knn) is compared with that scheme's
    runs only; one without with the model's first scheme. A model that the suite file marks `published_as: <model>`
    (another build of the published model) is compared with its rows."""
    aliases = dict(plan.published_as) if plan is not None else {}
    protocols = cell_protocols(records or [])
    rows = []
    for metric in ("acc", "auc"):
        cells = cell_stats(frame, metric, plan)
        # the first scheme's whole cell (groupby.first would take each column's first non-null: another scheme's std)
        first = cells.sort_values(CELL).drop_duplicates(["model", "size", "dataset"]).set_index(["model", "size", "dataset"])
        by_scheme = cells.set_index(["model", "size", "dataset", "scheme"]).sort_index()
        pub = published[published["metric"] == metric]
        for published_model, size, dataset, scheme, value, protocol, source in sorted(
                zip(pub["model"], pub["size"], pub["dataset"], pub["scheme"], pub["value"], pub["protocol"],
                    pub["source"])):
            for model in [str(published_model), *sorted(m for m, p in aliases.items() if p == published_model)]:
                key = (model, int(size), str(dataset))
                table, lookup = (by_scheme, (*key, str(scheme))) if scheme else (first, key)
                planned = plan is not None and plan.planned((model, int(size), ""), str(dataset))
                if lookup not in table.index and not planned:
                    continue
                cell = table.loc[lookup] if lookup in table.index else None
                mean = cell["mean"] if cell is not None else np.nan
                std = cell["std"] if cell is not None else np.nan
                measured = protocols.get((model, int(size), cell["scheme"] if cell is not None and not scheme
                                          else str(scheme), str(dataset)))
                difference = ("" if measured is None else protocol_difference(measured, parse_protocol(protocol)))
                rows.append(dict(model=model, size=int(size), scheme=str(scheme), dataset=str(dataset),
                                 metric=metric, published=float(value), mean=mean, std=std,
                                 n=int(cell["n"]) if cell is not None else 0,
                                 n_expected=int(cell["n_expected"]) if cell is not None else 0,
                                 gap=mean - float(value), source=str(source),
                                 same_protocol=measured is not None and not difference, protocol=difference))
    out = pd.DataFrame(rows, columns=["model", "size", "scheme", "dataset", "metric", "published", "mean", "std",
                                      "n", "n_expected", "gap", "source", "same_protocol", "protocol"])
    out["gap_in_stds"] = (out["gap"] / out["std"].where(out["std"] > 0)).where(out["same_protocol"].astype(bool))
    return out


# ----------------------------------------------------------------------------------------------------------
# Trust: intervals over seeds and test images, calibration, baselines, and whether the best cell is best
# ----------------------------------------------------------------------------------------------------------
TRUST_METRICS: tuple[str, ...] = (*HEADLINE_METRICS, "mcc", "qwk", "ece", "brier", "nll")
#: metrics whose best cell gets a significance test against the runner-up (Holm across a suite's test sets)
SIGNIFICANCE_METRICS: tuple[str, ...] = HEADLINE_METRICS
SIGNIFICANCE_LEVEL = 0.05
#: the difference the "seeds needed" column asks about, in the metric's units (0.01 = one point of ACC)
DIFFERENCE_OF_INTEREST = 0.01


def _percentiles(draws: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    """The 95 % percentile interval of `draws`, kept within the metric's `bounds` (a t draw can leave them)."""
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(max(low, bounds[0])), float(min(high, bounds[1]))


def trust(records, known_counts: dict[tuple, list[int]] | None = None) -> pd.DataFrame:
    """One row per (test set, model, size, scheme) with completed records holding predictions, plus majority /
    prior baseline rows where the training class counts are known: stored in a record (`dataset.class_counts`)
    or, for older records, in `known_counts` (`benchmark.records.training_class_counts` of any records of the
    same data).

    For each metric of `TRUST_METRICS` (qwk on ordinal tasks only): `<m>` = mean over seeds; `<m>_low/_high` =
    the 95 % interval of that seed mean from a two-level bootstrap (the test images resampled, the seed mean's
    training noise drawn from Student's t; `metrics.hierarchical_draws`), which holds the training variance as
    well as the test-image noise;
    `<m>_img_low/_img_high` = the test-image-only interval (the trained models held fixed); `<m>_t_low/_t_high` =
    the Student-t interval across seeds; `<m>_std` = the seed std; `<m>_mdd` = the smallest difference the cell's
    seeds detect (`metrics.minimum_detectable_difference`). Calibration metrics of a scheme without proper
    probabilities (`metrics.PROBABILITY_FREE_SCHEMES`: kNN) are NaN, with `not_applicable` saying why.

    For `SIGNIFICANCE_METRICS`, on every measured row: `<m>_vs_baseline` = "beats" when a one-sided paired
    two-level bootstrap against each baseline of its test set gives p < `SIGNIFICANCE_LEVEL` (`<m>_baseline_p`, the
    largest), "no" when not, "" without a baseline. On each test set's highest measured row, `<m>_mark`:
    - "" when a baseline scores higher;
    - "untested" when it or the runner-up has fewer than `MIN_SEEDS_TO_TEST` seeds;
    - "best" when, against the runner-up, both Welch's t-test on the per-seed values (`<m>_p_seeds`) and the
      paired bootstrap over the test images (`<m>_p_images`), each two-sided (the direction was read off the data)
      and Holm-corrected over the suite's test sets, give p < `SIGNIFICANCE_LEVEL` (`<m>_p`, the larger), and the
      row beats the baselines; "tie" otherwise.
    `<m>_runner_up` names the runner-up and `<m>_seeds_needed` the seeds per model a t-test would need to detect a
    `DIFFERENCE_OF_INTEREST` between the two at their pooled seed std. Baseline rows are never marked."""
    cells: dict[tuple, dict] = {}
    for record in records:
        predictions = record.get("test_predictions") or {}
        if record["status"] != "completed" or not predictions.get("labels"):
            continue
        key = (test_set(record), record["model"]["name"], int(record["dataset"]["size"]), record.get("scheme") or "")
        cell = cells.setdefault(key, {"task": record["dataset"].get("task", "multi-class"), "labels": None,
                                      "probs": [], "counts": None})
        labels = np.asarray(predictions["labels"], dtype=np.int64)
        if cell["labels"] is not None and not np.array_equal(cell["labels"], labels):
            logger.warning("%s: test labels differ from the other seeds' of %s; left out", record["run_id"], key)
            continue
        cell["labels"] = labels
        cell["probs"].append(np.asarray(predictions["probs"], dtype=np.float64))
        known = (known_counts or {}).get(data_identity(record))
        cell["counts"] = (record["dataset"].get("class_counts") or {}).get("train") or known or cell["counts"]

    for (tested_on, _, size, _), cell in list(cells.items()):  # reference predictors, one pair per test set
        if cell["counts"] is None or any(k[0] == tested_on and k[3] == "baseline" for k in cells):
            continue
        train_labels = np.repeat(np.arange(len(cell["counts"])), cell["counts"])
        for kind in ("majority", "prior"):
            probs = baseline_probs(train_labels, len(cell["counts"]), len(cell["labels"]), kind)
            cells[(tested_on, kind, size, "baseline")] = {**cell, "probs": [probs]}

    rows = []
    for key, cell in sorted(cells.items()):
        tested_on, model, size, scheme = key
        counts = resample_counts(len(cell["labels"]), BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        noise = seed_noise(len(cell["probs"]), "|".join(map(str, key)))
        ones = np.ones((1, len(cell["labels"])))
        point = [weighted_metrics(cell["labels"], p, cell["task"], ones) for p in cell["probs"]]
        draws = [weighted_metrics(cell["labels"], p, cell["task"], counts) for p in cell["probs"]]
        not_applicable = PROBABILITY_FREE_SCHEMES.get(scheme, "")
        row = {"test_set": tested_on, "model": model, "size": size, "scheme": scheme, "n": len(cell["probs"]),
               "n_test": len(cell["labels"]), "baseline": scheme == "baseline", "not_applicable": not_applicable}
        # per metric: the seed mean on each resample (both kinds) and each seed's own value
        cell["draws"], cell["image_draws"], cell["values"] = {}, {}, {}
        for metric in TRUST_METRICS:
            if metric not in point[0]:
                continue
            if not_applicable and metric in CALIBRATION_METRICS:
                row.update({metric: np.nan, f"{metric}_low": np.nan, f"{metric}_high": np.nan})
                continue
            per_seed = np.stack([d[metric] for d in draws])
            values = cell["values"][metric] = [float(p[metric][0]) for p in point]
            mean, t_low, t_high = mean_interval(values, bounds=METRIC_RANGES[metric])
            std = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
            cell["draws"][metric] = hierarchical_draws(per_seed, noise)
            cell["image_draws"][metric] = per_seed.mean(axis=0)
            low, high = _percentiles(cell["draws"][metric], METRIC_RANGES[metric])
            img_low, img_high = _percentiles(cell["image_draws"][metric], METRIC_RANGES[metric])
            row.update({metric: mean, f"{metric}_low": low, f"{metric}_high": high, f"{metric}_img_low": img_low,
                        f"{metric}_img_high": img_high, f"{metric}_t_low": t_low, f"{metric}_t_high": t_high,
                        f"{metric}_std": std, f"{metric}_mdd": minimum_detectable_difference(std, len(values))})
        rows.append(row)
    if not rows:  # no predictions: an empty frame that still has the columns every reader selects on
        return pd.DataFrame(columns=["test_set", *GROUP, "n", "n_test", "baseline"]).astype({"baseline": bool})
    frame = pd.DataFrame(rows)

    def draws_of(index, kind: str = "draws") -> dict:
        row = frame.loc[index]
        return cells[(row["test_set"], row["model"], row["size"], row["scheme"])][kind]

    for metric in SIGNIFICANCE_METRICS:
        frame[f"{metric}_mark"], frame[f"{metric}_vs_baseline"], frame[f"{metric}_runner_up"] = "", "", ""
        for column in ("p", "p_seeds", "p_images", "baseline_p", "seeds_needed"):
            frame[f"{metric}_{column}"] = np.nan
        tests = []  # (row index of the best, raw p over seeds, raw p over images)
        for _, part in frame.groupby("test_set"):
            measured, baselines = part[~part["baseline"]], part[part["baseline"]]
            for index in measured.index:
                if baselines.empty or pd.isna(frame.loc[index, metric]):
                    continue
                p = max(paired_pvalue_from_draws(draws_of(index)[metric], draws_of(b)[metric], metric)
                        for b in baselines.index)
                frame.loc[index, f"{metric}_baseline_p"] = p
                frame.loc[index, f"{metric}_vs_baseline"] = "beats" if p < SIGNIFICANCE_LEVEL else "no"
            ranked = measured.sort_values(metric, ascending=False)
            if len(ranked) < 2 or ranked[metric].isna().any():
                continue
            best, runner_up = ranked.index[0], ranked.index[1]
            frame.loc[best, f"{metric}_runner_up"] = " · ".join(map(str, frame.loc[runner_up, GROUP]))
            pooled = np.sqrt((frame.loc[best, f"{metric}_std"] ** 2 + frame.loc[runner_up, f"{metric}_std"] ** 2) / 2)
            if np.isfinite(pooled):  # NaN: a seed spread unknown; inf: more seeds than seeds_needed looks at
                frame.loc[best, f"{metric}_seeds_needed"] = seeds_needed(DIFFERENCE_OF_INTEREST, pooled) or np.inf
            if not baselines.empty and baselines[metric].max() >= frame.loc[best, metric]:
                continue  # a baseline scores at least as high: nothing is best
            if min(frame.loc[best, "n"], frame.loc[runner_up, "n"]) < MIN_SEEDS_TO_TEST:
                frame.loc[best, f"{metric}_mark"] = "untested"
                continue
            # both two-sided: which of the two is "best" was read off these same numbers
            tests.append((best, welch_pvalue(draws_of(best, "values")[metric], draws_of(runner_up, "values")[metric]),
                          paired_pvalue_from_draws(draws_of(best, "image_draws")[metric],
                                                   draws_of(runner_up, "image_draws")[metric], metric,
                                                   alternative="two-sided")))
        if tests:
            indices_ = [index for index, _, _ in tests]
            frame.loc[indices_, f"{metric}_p_seeds"] = holm([p for _, p, _ in tests])
            frame.loc[indices_, f"{metric}_p_images"] = holm([p for _, _, p in tests])
            # best only when retraining and resampling the test images would both keep it on top
            frame.loc[indices_, f"{metric}_p"] = frame.loc[indices_, [f"{metric}_p_seeds", f"{metric}_p_images"]].max(axis=1)
            for index in indices_:
                significant = frame.loc[index, f"{metric}_p"] < SIGNIFICANCE_LEVEL
                above_baselines = frame.loc[index, f"{metric}_vs_baseline"] in ("beats", "")
                frame.loc[index, f"{metric}_mark"] = "best" if significant and above_baselines else "tie"
    return frame
