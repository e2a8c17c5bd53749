"""What the reports read: run records (as records and as a frame), each suite's planned grid, published values.

Records only, never torch, data or models: `benchmark.records` loads them, `benchmark.suites` reads the plan.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError
from benchmark.records import Record, load_records, per_class_frame, records_frame
from benchmark.suites import read_suite, suite_file

logger = logging.getLogger(__name__)

PUBLISHED_CSV = Path(__file__).resolve().parents[1] / "published.csv"
PUBLISHED_COLUMNS = ["model", "dataset", "size", "scheme", "metric", "value", "protocol", "source", "reference"]


@dataclass(frozen=True)
class SuitePlan:
    """What a suite file plans: every model × every dataset (at its size) × every seed."""

    file: str  # the suite file's name, for notes
    models: tuple[str, ...]
    datasets: tuple[tuple[str, int], ...]  # (name, size)
    seeds: tuple[int, ...]
    published_as: tuple[tuple[str, str], ...] = ()  # (model, published model whose rows it reproduces)

    def planned(self, group: tuple, dataset: str) -> bool:
        """Whether the plan has a run of this row's model on `dataset` at this row's size (any scheme)."""
        model, size, _ = group
        return model in self.models and (dataset, size) in self.datasets

    @property
    def dataset_names(self) -> set[str]:
        return {name for name, _ in self.datasets}

    @property
    def model_sizes(self) -> set[tuple[str, int]]:
        return {(model, size) for model in self.models for _, size in self.datasets}


def load_plan(suite: str, suites_dir: Path | str | None = None) -> SuitePlan | None:
    """The planned grid of `suite` from `<suite>.yaml` in `suites_dir` (None: ./suites/, then the shipped suites);
    None when there is no usable file (an unusable one is logged as a warning: the tables fall back to the records)."""
    path = suite_file(suite, suites_dir)
    if path is None:
        return None
    try:
        parsed = read_suite(path)
        if not (parsed.models and parsed.datasets and parsed.seeds):
            raise UserError("it plans no runs")
    except UserError as err:
        logger.warning(f"ignoring suite file {path}: {err}; the leaderboard of suite {suite!r} falls back to the "
                       f"records alone")
        return None
    return SuitePlan(path.name, parsed.model_names, parsed.dataset_sizes, tuple(sorted(set(parsed.seeds))),
                     parsed.published_as)


def load_published(path: Path | str = PUBLISHED_CSV) -> pd.DataFrame:
    """The published reference values: columns model, dataset, size, scheme, metric, value, protocol (`key=value;
    ...`, see `benchmark.records.protocol_of`), source, reference."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    frame = pd.DataFrame(list(csv.DictReader(lines)), columns=PUBLISHED_COLUMNS)
    frame["size"] = frame["size"].astype(int)
    frame["value"] = frame["value"].astype(float)
    frame["scheme"] = frame["scheme"].fillna("").astype(str)
    frame["protocol"] = frame["protocol"].fillna("").astype(str)
    return frame.sort_values(["model", "size", "source", "dataset", "metric"]).reset_index(drop=True)


@dataclass
class SuiteData:
    """One suite's records, as records (figures need predictions, histories, samples) and as frames."""

    suite: str
    records: list[Record]
    frame: pd.DataFrame  # records_frame
    per_class: pd.DataFrame  # per_class_frame
    plan: SuitePlan | None


def by_suite(records: Sequence[Record], suites_dir: Path | str | None = None) -> dict[str, SuiteData]:
    """Records grouped by suite (sorted by name), each with its frames and planned grid."""
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(str(record["suite"]), []).append(record)
    out = {}
    for suite, recs in sorted(grouped.items()):
        recs = sorted(recs, key=lambda r: str(r["run_id"]))
        out[suite] = SuiteData(suite, recs, records_frame(recs), per_class_frame(recs), load_plan(suite, suites_dir))
    return out


def load_suites(paths: Path | str | Iterable[Path | str], suite: str | None = None,
                suites_dir: Path | str | None = None) -> dict[str, SuiteData]:
    """`load_records(paths, suite)` grouped by suite; a UserError when there are none."""
    records = load_records(paths, suite)
    if not records:
        where = f"{paths}" + (f" (suite {suite})" if suite else "")
        raise UserError(f"no run records found in {where}; run a suite first or pass --runs DIR")
    return by_suite(records, suites_dir)
