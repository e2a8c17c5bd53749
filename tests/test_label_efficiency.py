"""Label-efficiency subsets: nested, stratified and seeded on the shipped subsets; in the run hash only when set;
and a tiny grid end to end (records, leaderboard section, learning-curve figure)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.config import load_suite
from benchmark.data import load_dataset
from benchmark.data.subsets import ids_hash, labelled_subset, subset_indices
from benchmark.errors import UserError
from benchmark.records import load_records
from benchmark.report.figures.learning import plot_learning_curves

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
SHOTS = (1, 5, 10, 25)


@pytest.mark.parametrize("dataset", ["breastmnist", "retinamnist"])
def test_subsets_are_nested_stratified_and_seeded(dataset):
    labels = load_dataset(dataset, data_root="bundled").train.labels
    counts = np.bincount(labels)
    for seed in (0, 1):
        chosen = [set(subset_indices(labels, seed, train_fraction=f)) for f in FRACTIONS]
        assert all(small <= large for small, large in zip(chosen, chosen[1:]))  # nested
        assert chosen[-1] == set(range(len(labels)))
        for fraction, subset in zip(FRACTIONS, chosen):
            per_class = np.bincount(labels[sorted(subset)], minlength=len(counts))
            assert per_class.tolist() == [max(1, round(fraction * n)) for n in counts]  # stratified
        shots = [set(subset_indices(labels, seed, shots_per_class=k)) for k in SHOTS]
        assert all(small <= large for small, large in zip(shots, shots[1:]))
        for k, subset in zip(SHOTS, shots):
            assert np.bincount(labels[sorted(subset)], minlength=len(counts)).tolist() == [min(k, n) for n in counts]
        # one order per class: k shots lie inside any fraction that keeps at least k of every class
        assert shots[0] <= chosen[0]
    assert np.array_equal(subset_indices(labels, 3, 0.1), subset_indices(labels, 3, 0.1))
    assert not np.array_equal(subset_indices(labels, 0, 0.1), subset_indices(labels, 1, 0.1))


def test_only_the_training_split_is_cut_and_described():
    data = load_dataset("breastmnist", data_root="bundled")
    cut = labelled_subset(data, seed=2, train_fraction=0.25)
    assert cut.val is data.val and cut.test is data.test
    indices = subset_indices(data.train.labels, 2, 0.25)
    assert np.array_equal(cut.train.images, data.train.images[indices])
    block = cut.summary()["train_subset"]
    assert block == {"kind": "train_fraction", "value": 0.25, "seed": 2, "n_train": len(indices),
                     "n_train_full": len(data.train), "sha256": ids_hash(data.train, indices)}
    assert cut.summary()["n_train"] == len(indices)
    assert labelled_subset(data, seed=2) is data and "train_subset" not in data.summary()


def test_the_subset_enters_the_hash_only_when_set(tmp_path):
    (spec,) = load_suite("medmnist-v2", datasets=["breastmnist"], models=["resnet18_28"], seeds=[0]).runs
    assert spec.run_id == "breastmnist-28-resnet18_28-s0-00849d17"  # the committed record's id, from before the axis
    fraction, shots = replace(spec, train_fraction=0.1), replace(spec, shots_per_class=5)
    assert len({spec.config_hash, fraction.config_hash, shots.config_hash}) == 3
    assert "-f0.1-s0-" in fraction.run_id and "-k5-s0-" in shots.run_id
    suite = tmp_path / "bad.yaml"
    for axis, message in (("train_fractions: [0]", "train_fraction must be in"),
                          ("shots_per_class: [-1]", "shots_per_class must be an integer"),
                          ("shots_per_class: [0, 5]", r"shots_per_class must be an integer >= 1 \(got 0\)")):
        suite.write_text(f"datasets: [breastmnist]\nmodels: [resnet18_28]\n{axis}\n")
        with pytest.raises(UserError, match=message):
            load_suite(str(suite))


LE_SUITE = """
name: le-tiny
data_root: bundled
seeds: [0]
recipes:
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 1, batch_size: 32, augment: none}
datasets: [breastmnist]
models:
  - {name: resnet18_28, recipe: v2}
train_fractions: [0.25, 1.0]
shots_per_class: [2]
"""


@pytest.mark.slow
def test_tiny_label_efficiency_grid_end_to_end(tmp_path):
    (tmp_path / "le-tiny.yaml").write_text(LE_SUITE)
    results = tmp_path / "results"
    assert main(["run", "--suite", str(tmp_path / "le-tiny.yaml"), "--limit", "48", "--output", str(results),
                 "--quiet"]) == 0
    records = {r["run_id"]: r for r in (json.loads(p.read_text()) for p in (results / "runs" / "le-tiny").glob("*.json"))}
    assert len(records) == 3
    full = next(r for r in records.values() if "train_subset" not in r["dataset"])
    plain = LE_SUITE.replace("train_fractions: [0.25, 1.0]\nshots_per_class: [2]\n", "")
    (tmp_path / "plain.yaml").write_text(plain.replace("name: le-tiny", "name: plain"))
    (same,) = load_suite(str(tmp_path / "plain.yaml"), limit=48).runs
    assert full["config_hash"] == same.config_hash  # the 100 % run is the run without the axis
    labels = load_dataset("breastmnist", data_root="bundled", limit=48).train
    for record in records.values():
        subset = record["dataset"].get("train_subset")
        if subset is None:
            continue
        kwargs = ({"shots_per_class": 2} if subset["kind"] == "shots_per_class" else {"train_fraction": 0.25})
        indices = subset_indices(labels.labels, 0, **kwargs)
        assert subset["n_train"] == record["dataset"]["n_train"] == len(indices)
        assert subset["sha256"] == ids_hash(labels, indices)
        assert record["dataset"]["n_test"] == full["dataset"]["n_test"] == 48  # test untouched
    assert main(["leaderboard", "--runs", str(results), "--output", str(tmp_path)]) == 0
    board = (tmp_path / "leaderboard.md").read_text()
    assert "### Label efficiency" in board and "| 2 per class |" in board and "| 25% " in board
    assert main(["figures", "--runs", str(results), "--output", str(tmp_path / "figures"), "--format", "png",
                 "--dpi", "40"]) == 0
    assert (tmp_path / "figures" / "le-tiny" / "learning_curve_auc.png").is_file()
    assert main(["report", "--runs", str(results), "--output", str(tmp_path / "site"), "--figures",
                 str(tmp_path / "figures"), "--dpi", "40", "--quiet"]) == 0
    pages = {name: (tmp_path / "site" / name).read_text() for name in ("index.html", "learning.html")}
    assert "learning_curve_auc.png" in pages["learning.html"]  # on its own page, not twice
    assert "learning_curve_" not in pages["index.html"]


def test_learning_curve_ticks_are_the_subset_sizes():
    """One labelled tick per subset size on the log axis, no minor labels (they collided: 2×10¹ 3×10¹ 4×10¹ …)."""
    runs = Path(__file__).resolve().parents[1] / "results" / "runs" / "label-efficiency-busi"
    fig = plot_learning_curves(load_records(sorted(runs.glob("*.json"))), "label-efficiency-busi")
    fig.canvas.draw()
    (ax,) = fig.axes
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert shown == ["23", "47", "118", "234", "468"]  # the committed BUSI subsets' training images
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
