"""The one record loader and the records frame, on the committed records and factory-built ones; the committed
leaderboard.csv is what the committed records give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from record_factory import make_grid, write_records

from benchmark import cli
from benchmark.errors import UserError
from benchmark.records import load_records, per_class_frame, records_frame

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "results"


def test_one_loader_for_results_runs_suite_folders_and_files():
    files = sorted(RESULTS.glob("runs/*/*.json"))
    ids = [json.loads(f.read_text())["run_id"] for f in files]  # sorted by (suite, run_id), as the loader
    assert [r["run_id"] for r in load_records(RESULTS)] == ids
    assert [r["run_id"] for r in load_records(RESULTS / "runs")] == ids
    suite = files[0].parent
    in_suite = sorted(f.stem for f in suite.glob("*.json"))
    assert [r["run_id"] for r in load_records(suite)] == in_suite
    assert [r["run_id"] for r in load_records(RESULTS, suite.name)] == in_suite
    assert [r["run_id"] for r in load_records(files[:2])] == ids[:2]
    with pytest.raises(UserError, match="does not exist"):
        load_records(RESULTS / "nowhere")
    with pytest.raises(UserError, match="no records for suite 'nope'"):
        load_records(RESULTS, "nope")


def test_frame_has_one_row_per_run_with_the_records_numbers():
    records = load_records(RESULTS)
    frame = records_frame(records)
    assert list(frame["run_id"]) == [r["run_id"] for r in records]
    for metric in ("acc", "auc", "f1_macro", "balanced_acc", "loss"):
        # NaN equals NaN here: a kNN record has no loss
        np.testing.assert_array_equal(frame[metric].to_numpy(float), [r["test"][metric] for r in records])
    assert list(frame["seed"]) == [r["seed"] for r in records]
    assert list(frame["best_epoch"]) == [r["best_epoch"] for r in records]
    long = per_class_frame(records)
    first = records[0]
    rows = long[long["run_id"] == first["run_id"]]
    assert list(rows["recall"]) == first["test"]["per_class"]["recall"]
    assert list(rows["class_name"]) == first["dataset"]["class_names"]


def test_failed_runs_are_rows_without_metrics_and_with_their_error():
    frame = records_frame(make_grid(suite="unit"))
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 1 and np.isnan(failed["acc"].iloc[0]) and failed["error_message"].iloc[0]


def test_leaderboard_takes_the_folder_given_to_run_output(tmp_path, capsys):
    write_records(make_grid(suite="unit"), tmp_path / "results" / "runs")
    for runs in (tmp_path / "results", tmp_path / "results" / "runs", tmp_path / "results" / "runs" / "unit"):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert cli.main(["leaderboard", "--runs", str(runs), "--output", str(tmp_path / "out")]) == 0
        assert "resnet18_28" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_import_benchmark_gives_the_records_api_without_torch():
    import subprocess
    import sys

    code = ("import sys, benchmark; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "frame = benchmark.records_frame(benchmark.load_records('results')); assert len(frame) > 0; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT)
