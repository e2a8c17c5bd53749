"""Short real runs through the CLI on the shipped real subsets: records, skipping, determinism, reports."""

import json

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.metrics import apply_temperature, calibration_metrics, classification_metrics
from benchmark.records import load_records

pytestmark = pytest.mark.slow  # one 2 x 2 grid trained through the CLI

SUITE = """
name: e2e
data_root: bundled
seeds: [0]
recipes:
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 2, batch_size: 16, augment: none,
       calibrate: temperature}
  vit: {lr: 1.0e-3, epochs: 2, batch_size: 16, augment: tutorial}
datasets:
  - breastmnist
  - {name: breast_ultrasound, size: 28}
models:
  - {name: resnet18_28, recipe: v2}
  - {name: vit_tiny, recipe: vit}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Run the 2 × 2 grid once (at most 48 images per split) for every test in this module."""
    root = tmp_path_factory.mktemp("e2e")
    suite = root / "e2e.yaml"
    suite.write_text(SUITE)
    args = ["run", "--suite", str(suite), "--limit", "48", "--output", str(root / "results"), "--quiet"]
    assert main(args) == 0
    return root, args


def test_every_run_writes_a_complete_consistent_record(finished):
    root, _ = finished
    records = load_records(root / "results", "e2e")
    assert sorted((r["dataset"]["name"], r["model"]["name"]) for r in records) == [
        ("breast_ultrasound", "resnet18_28"), ("breast_ultrasound", "vit_tiny"),
        ("breastmnist", "resnet18_28"), ("breastmnist", "vit_tiny"),
    ]
    for r in records:
        assert r["status"] == "completed" and r["schema_version"] == 1 and r["error"] is None
        n_test = {"breastmnist": 48, "breast_ultrasound": 24}[r["dataset"]["name"]]  # shipped subset: 24 test images
        assert r["dataset"]["n_train"] == 48 and r["dataset"]["n_test"] == n_test
        assert [h["epoch"] for h in r["history"]] == [1, 2]
        aucs = [h["val"]["auc"] for h in r["history"]]
        assert r["best_epoch"] == 1 + int(np.argmax(aucs))
        labels, probs = r["test_predictions"]["labels"], np.array(r["test_predictions"]["probs"])
        assert probs.shape == (n_test, len(r["dataset"]["class_names"]))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        recomputed = classification_metrics(np.array(labels), probs, r["dataset"]["task"])
        for key in ("acc", "auc", "f1_macro", "balanced_acc"):
            assert r["test"][key] == pytest.approx(recomputed[key], abs=1e-12)
        for key in ("mcc", "ece", "brier", "nll", "sensitivity", "specificity"):
            assert r["test"][key] == pytest.approx(recomputed[key], abs=1e-12)
        if r["model"]["name"] == "resnet18_28":  # calibrate: temperature, fitted on validation
            block = r["calibration"]
            assert block["method"] == "temperature" and block["temperature"] > 0
            assert block["before"] == pytest.approx(calibration_metrics(np.array(labels), probs))
            assert block["after"] == pytest.approx(
                calibration_metrics(np.array(labels), apply_temperature(probs, block["temperature"])))
        else:
            assert "calibration" not in r
        if r["dataset"]["name"] == "breast_ultrasound":
            assert r["dataset"]["split"]["kind"] == "grouped" and len(r["dataset"]["split"]["sha256"]) == 64
        assert r["timing"]["train_images_per_second"] > 0
        assert r["environment"]["versions"]["torch"]
        assert r["model"]["n_params"] > 0
        assert sum(map(len, r["samples"]["per_class"])) > 0
        assert r["scheme"] == "from_scratch"
        assert r["run_id"].startswith(f"{r['dataset']['name']}-{r['dataset']['size']}-{r['model']['name']}-s0-")


def test_rerun_skips_finished_runs_and_keeps_records(finished, capsys):
    root, args = finished
    runs = sorted((root / "results" / "runs" / "e2e").glob("*.json"))
    before = {p: p.read_bytes() for p in runs}
    assert main(args) == 0
    assert "0 completed, 4 skipped" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in runs} == before
    assert all(sorted(p.name for p in d.iterdir()) == ["best.pt"]
               for d in (root / "results" / "checkpoints" / "e2e").iterdir())


def test_same_seed_same_result_on_cpu(finished, tmp_path):
    root, args = finished
    again = tmp_path / "again"
    assert main([*args[:-3], "--output", str(again), "--quiet", "--models", "vit_tiny",
                 "--datasets", "breastmnist"]) == 0
    [second] = load_records(again, "e2e")
    [first] = [r for r in load_records(root / "results", "e2e") if r["run_id"] == second["run_id"]]
    assert first["test_predictions"] == second["test_predictions"]
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]


def test_status_leaderboard_and_figures_from_records(finished, capsys):
    root, _ = finished
    suite = str(root / "e2e.yaml")
    assert main(["status", "--suite", suite, "--limit", "48", "--output", str(root / "results")]) == 0
    assert "e2e: 4 done, 0 failed, 0 pending" in capsys.readouterr().out
    assert main(["leaderboard", "--runs", str(root / "results" / "runs"), "--output", str(root / "results")]) == 0
    table = (root / "results" / "leaderboard.md").read_text()
    assert "resnet18_28" in table and "vit_tiny" in table
    assert main(["figures", "--runs", str(root / "results" / "runs"), "--output", str(root / "figs"),
                 "--format", "png", "--dpi", "60"]) == 0
    assert len(list((root / "figs").rglob("*.png"))) >= 4 * 4


def test_dry_run_prints_the_full_medmnist_grid(capsys):
    assert main(["run", "--suite", "medmnist", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "60 runs in suite 'medmnist'" in out
    assert json.dumps("bloodmnist-28-vit_b16-s0")[1:-1] in out
