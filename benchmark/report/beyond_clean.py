"""Beyond clean accuracy, from the records alone: corruption robustness (the records' `robustness` blocks,
`benchmark.use.robustness`) and label efficiency (runs on `train_fraction` / `shots_per_class` subsets,
`benchmark.data.subsets`). Tidy frames for the figures, and the leaderboard's / site's tables built from them.

Rows are model × size × scheme as in every other table; a label-efficiency run's scheme carries its subset
(" (5% labels)"), which `base_scheme` strips so that all subsets of one model form one learning curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchmark.metrics import METRIC_RANGES, mean_interval
from benchmark.records import Record, test_set
from benchmark.report.render import Cell, Table, fmt
from benchmark.suites import subset_label

ROBUSTNESS_COLUMNS = ("test_set", "model", "size", "scheme", "seed", "corruption", "severity", "acc", "auc",
                      "balanced_error")
#: balanced errors lie in [0, 1], mCE is a ratio of errors (>= 0); the relative mCE can be negative (a model that
#: does better corrupted than clean)
ROBUSTNESS_RANGES = {"clean": (0.0, 1.0), "corrupted": (0.0, 1.0), "mce": (0.0, np.inf),
                     "relative_mce": (-np.inf, np.inf)}
LEARNING_METRICS = ("acc", "auc", "balanced_acc")
LEARNING_COLUMNS = ("test_set", "model", "size", "scheme", "seed", "kind", "value", "n_train", *LEARNING_METRICS)
CLEAN = "clean"


def _row_key(record: Record) -> dict:
    return {"test_set": test_set(record), "model": str(record["model"]["name"]), "size": int(record["dataset"]["size"]),
            "scheme": str(record.get("scheme") or "")}


def robustness_frame(records: Sequence[Record]) -> pd.DataFrame:
    """One row per run with a robustness block × corruption × severity, plus its clean row (corruption `clean`,
    severity 0): ACC, AUC and balanced error."""
    rows = []
    for record in records:
        block = record.get("robustness")
        if record["status"] != "completed" or not isinstance(block, dict):
            continue
        key = {**_row_key(record), "seed": record["seed"]}
        rows.append({**key, "corruption": CLEAN, "severity": 0, **{m: block["clean"].get(m) for m in
                                                                     ("acc", "auc", "balanced_error")}})
        for name, entry in (block.get("corruptions") or {}).items():
            for cell in entry["severities"]:
                rows.append({**key, "corruption": name, "severity": int(cell["severity"]),
                             **{m: cell.get(m) for m in ("acc", "auc", "balanced_error")}})
    frame = pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))
    for column in ("acc", "auc", "balanced_error"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def robustness_summary(records: Sequence[Record]) -> pd.DataFrame:
    """Per test set and row: seeds, clean balanced error, mean corrupted balanced error, mCE and relative mCE
    (mean and 95 % Student-t interval over the seeds), the corruptions skipped anywhere."""
    per_run = []
    for record in records:
        block = record.get("robustness")
        if record["status"] == "completed" and isinstance(block, dict):
            per_run.append({**_row_key(record), "seed": record["seed"], "clean": block["clean"]["balanced_error"],
                            "corrupted": block.get("mean_balanced_error"), "mce": block.get("mce"),
                            "relative_mce": block.get("relative_mce"),
                            "skipped": ", ".join(sorted(block.get("skipped") or {}))})
    if not per_run:
        return pd.DataFrame()
    frame = pd.DataFrame(per_run)
    out = []
    for key, group in frame.groupby(["test_set", "model", "size", "scheme"], sort=True):
        row = dict(zip(("test_set", "model", "size", "scheme"), key), n=len(group),
                   seeds=",".join(map(str, sorted(group["seed"]))), skipped=", ".join(sorted({
                       s for text in group["skipped"] for s in text.split(", ") if s})))
        for column, bounds in ROBUSTNESS_RANGES.items():
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            row[column], row[f"{column}_low"], row[f"{column}_high"] = mean_interval(values.to_numpy(), bounds=bounds)
        out.append(row)
    return pd.DataFrame(out)


def corruption_errors(frame: pd.DataFrame, test_set_name: str) -> pd.DataFrame:
    """(Model, size, scheme) × corruption: the balanced error averaged over severities, then over seeds; the clean
    error first."""
    rows = frame[frame["test_set"] == test_set_name]
    per_seed = rows.groupby(["model", "size", "scheme", "corruption", "seed"])["balanced_error"].mean().reset_index()
    table = per_seed.groupby(["model", "size", "scheme", "corruption"])["balanced_error"].mean().unstack("corruption")
    return table[[CLEAN, *sorted(c for c in table.columns if c != CLEAN)]]


def _interval(mean: float, low: float, high: float) -> str:
    if not np.isfinite(mean):
        return "—"
    return fmt(mean) if not np.isfinite(low) else f"{fmt(mean)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def robustness_table(records: Sequence[Record], suite: str) -> Table | None:
    """The leaderboard's robustness section: one row per test set × model."""
    summary = robustness_summary(records)
    if summary.empty:
        return None
    rows = [[Cell(r.test_set), Cell(r.model), Cell(str(r.size)), Cell(r.scheme),
             Cell(str(r.n)), Cell(_interval(r.clean, r.clean_low, r.clean_high)),
             Cell(_interval(r.corrupted, r.corrupted_low, r.corrupted_high)),
             Cell(_interval(r.mce, r.mce_low, r.mce_high)),
             Cell(_interval(r.relative_mce, r.relative_mce_low, r.relative_mce_high)), Cell(r.skipped or "—")]
            for r in summary.itertuples()]
    return Table(f"Corruption robustness (MedMNIST-C), suite {suite}",
                 ["Test set", "Model", "Size", "Scheme", "n", "Clean BE", "Corrupted BE", "mCE", "Relative mCE",
                  "Not run"], "llrlrrrrrl", rows,
                 caption=f"Suite {suite}: balanced error (BE) on the clean and the corrupted test split (mean over "
                         f"corruptions and severities 1-5), mCE and relative mCE normalised by MedMNIST-C's AlexNet; "
                         f"seed mean [95 % t-interval].", label=f"tab:robustness-{suite}")


def base_scheme(record: Record) -> str:
    """The record's scheme without its label-subset suffix."""
    scheme = str(record.get("scheme") or "")
    subset = record["dataset"].get("train_subset")
    if subset:
        label = subset_label(**({"shots_per_class": subset["value"]} if subset["kind"] == "shots_per_class"
                                else {"train_fraction": subset["value"]}))
        scheme = scheme.removesuffix(label)
    return scheme


def learning_frame(records: Sequence[Record]) -> pd.DataFrame:
    """One row per completed run of a suite that has label-subset runs: the labelled images it trained on
    (`n_train`), the subset (kind `train_fraction` / `shots_per_class`, or `full`) and its test metrics."""
    suites = {r["suite"] for r in records if r["dataset"].get("train_subset")}
    rows = []
    for record in records:
        if record["status"] != "completed" or record["suite"] not in suites:
            continue
        subset = record["dataset"].get("train_subset") or {"kind": "full", "value": 1.0}
        test = record.get("test") or {}
        rows.append({**_row_key(record), "scheme": base_scheme(record), "seed": record["seed"],
                     "kind": subset["kind"], "value": float(subset["value"]),
                     "n_train": int(subset.get("n_train", record["dataset"].get("n_train", 0))),
                     **{m: test.get(m) for m in LEARNING_METRICS}})
    frame = pd.DataFrame(rows, columns=list(LEARNING_COLUMNS))
    for column in LEARNING_METRICS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def learning_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per test set, row and subset: labelled images (mean over seeds; the per-class rounding makes it equal
    across seeds) and each metric's seed mean with its 95 % t-interval."""
    out = []
    keys = ["test_set", "model", "size", "scheme", "kind", "value"]
    for key, group in frame.groupby(keys, sort=True):
        row = dict(zip(keys, key), n=len(group), n_train=float(group["n_train"].mean()))
        for metric in LEARNING_METRICS:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean_interval(
                group[metric].dropna().to_numpy(), bounds=METRIC_RANGES[metric])
        out.append(row)
    return pd.DataFrame(out)


def learning_table(records: Sequence[Record], suite: str) -> Table | None:
    """The leaderboard's label-efficiency section: one row per test set × model × subset, smallest first."""
    frame = learning_frame(records)
    if frame.empty:
        return None
    summary = learning_summary(frame).sort_values(["test_set", "model", "size", "scheme", "n_train"])
    rows = [[Cell(r.test_set), Cell(r.model), Cell(str(r.size)), Cell(r.scheme),
             Cell("all" if r.kind == "full" else f"{r.value * 100:g}%" if r.kind == "train_fraction"
                  else f"{r.value:g} per class"), Cell(f"{r.n_train:g}"), Cell(str(r.n)),
             *[Cell(_interval(getattr(r, m), getattr(r, f"{m}_low"), getattr(r, f"{m}_high")))
               for m in LEARNING_METRICS]] for r in summary.itertuples()]
    return Table(f"Label efficiency, suite {suite}",
                 ["Test set", "Model", "Size", "Scheme", "Labels", "Train images", "n", "ACC", "AUC", "Balanced ACC"],
                 "llrllrrrrr", rows,
                 caption=f"Suite {suite}: test metrics by labelled training images (stratified, nested subsets); "
                         f"seed mean [95 % t-interval].", label=f"tab:label-efficiency-{suite}")


ROBUSTNESS_NOTE = ("Each run's best weights on the MedMNIST-C corruptions of its test split (5 severities each; "
                   "`benchmark robustness`). BE = balanced error, 1 − balanced accuracy; *Corrupted BE*: mean over "
                   "the corruptions and severities; *mCE* = mean over corruptions of the run's mean BE divided by "
                   "MedMNIST-C's AlexNet BE, *relative mCE* the same for the increase over the clean BE (1 = "
                   "AlexNet's degradation). Cells: seed mean [95 % t-interval over seeds].")
LEARNING_NOTE = ("Runs trained on stratified, seeded, nested subsets of the training split (`train_fractions` / "
                 "`shots_per_class`), validated and tested on the full splits. Cells: seed mean [95 % t-interval "
                 "over seeds]; *Train images* = labelled images of the subset.")


def leaderboard_sections(records: Sequence[Record], suite: str) -> list[tuple[str, str, Table]]:
    """(title, note, table) of the sections this suite's records call for (none for most suites)."""
    sections = []
    table = robustness_table(records, suite)
    if table is not None:
        sections.append(("Corruption robustness (MedMNIST-C)", ROBUSTNESS_NOTE, table))
    table = learning_table(records, suite)
    if table is not None:
        sections.append(("Label efficiency", LEARNING_NOTE, table))
    return sections
