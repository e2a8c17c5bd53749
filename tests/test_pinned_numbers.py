"""Tests that pin the numbers a refactor must not move: which weights score the test split, resume with
randomness in the model, best-epoch selection and early stopping, what enters the run hash, average ranks with
ties, and the numbers a figure draws."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from checkpoint_spy import keep_checkpoints
from record_factory import make_record
from sklearn.metrics import confusion_matrix

from benchmark import cli, train
from benchmark.config import load_suite
from benchmark.data import load_dataset
from benchmark.models import build_model
from benchmark.records import completed_hashes, protocol_of

PROJECT = Path(__file__).resolve().parents[1]
SUITE = "pinned"
RECIPE = {"optimizer": "adamw", "lr": 1.0e-3, "schedule": "cosine", "epochs": 2, "batch_size": 8,
          "augment": "tutorial"}


def write_suite(folder: Path, model: dict, recipe: dict = RECIPE) -> Path:
    suite = {"name": SUITE, "data_root": "bundled", "seeds": [0], "datasets": ["breastmnist"],
             "models": [{**model, "recipe": recipe}]}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def arguments(suite: Path, output: Path) -> list[str]:
    return ["run", "--suite", str(suite), "--output", str(output), "--limit", "32", "--quiet"]


def only_record(output: Path) -> dict:
    (path,) = sorted((output / "runs" / SUITE).glob("*.json"))
    return json.loads(path.read_text())


def test_the_test_split_is_scored_with_the_best_epochs_weights(tmp_path, monkeypatch):
    """Validation scores scripted so that epoch 1 is best and epochs 2-3 are worse (patience 2 stops after 3):
    the record's test probabilities are best.pt's predictions, not the last weights'."""
    suite = write_suite(tmp_path, {"name": "vit_tiny"}, {**RECIPE, "epochs": 4, "early_stopping_patience": 2})
    scripted = iter([0.9, 0.1, 0.2, 0.95])
    monkeypatch.setattr(train, "selection_score", lambda metrics, metric: next(scripted))
    saved = keep_checkpoints(monkeypatch)
    output = tmp_path / "results"
    assert cli.main(arguments(suite, output)) == 0
    record = only_record(output)
    assert (record["best_epoch"], record["stopped_early"], len(record["history"])) == (1, True, 3)
    assert sorted(saved) == [1, 2, 3]

    spec = load_suite(str(suite), limit=32).runs[0]
    data = load_dataset(spec.dataset, size=spec.size, data_root=spec.data_root, limit=spec.limit)
    accelerator = Accelerator(mixed_precision="no")
    test_split = train.DeviceSplit.from_split(data.test, accelerator.device)

    def probabilities(weights: dict) -> np.ndarray:
        built = build_model(spec.model, data.class_names, data.train.images.shape[-1])
        built.module.load_state_dict(weights)
        _, probs = train.predict(built.module, test_split, train.BatchTransform.for_model(built), 16, accelerator,
                                 train.autocast_dtype(spec.recipe, accelerator.device), train.uses_channels_last(built),
                                 data.n_classes)
        return probs

    best = torch.load(output / "checkpoints" / SUITE / record["run_id"] / "best.pt", weights_only=False)
    assert best["epoch"] == 1
    last = torch.load(io.BytesIO(saved[3]["last.pt"]), weights_only=False)["model"]
    recorded = np.asarray(record["test_predictions"]["probs"])
    assert record["test_predictions"]["labels"] == data.test.labels.tolist()
    # the run's own device and precision: bit-equal on a CPU; a GPU's kernel choices may move the last bits
    tolerance = 1e-6 if accelerator.device.type == "cpu" else 1e-4
    np.testing.assert_allclose(recorded, probabilities(best["weights"]), rtol=0, atol=tolerance)
    assert np.abs(recorded - probabilities(last)).max() > 1e-3


def test_resume_restores_the_random_state_of_a_model_with_dropout(tmp_path, monkeypatch):
    """A ViT with dropout draws from torch's global generator every step: resumed after epoch 1, the run is
    bit-identical (on CPU) to the uninterrupted one only when the checkpoint's RNG state is restored."""
    model_dir = tmp_path / "vit-dropout"
    shutil.copytree(PROJECT / "benchmark" / "bundled" / "models" / "vit-tiny", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    (model_dir / "config.json").write_text(json.dumps(config))
    suite = write_suite(tmp_path, {"name": "vit_dropout", "source": str(model_dir), "pretrained": False})

    saved = keep_checkpoints(monkeypatch)
    assert cli.main(arguments(suite, tmp_path / "reference")) == 0
    monkeypatch.undo()
    reference = only_record(tmp_path / "reference")

    output = tmp_path / "resumed"
    checkpoints = output / "checkpoints" / SUITE / reference["run_id"]
    checkpoints.mkdir(parents=True)
    for name, content in saved[1].items():
        (checkpoints / name).write_bytes(content)
    torch.manual_seed(12345)  # whatever state the process is in must not matter
    assert cli.main(arguments(suite, output)) == 0
    resumed = only_record(output)
    assert resumed["resumed_from_epoch"] == 1
    for key in ("best_epoch", "test", "test_predictions"):
        assert resumed[key] == reference[key], key

    def strip(history):
        return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]

    assert strip(resumed["history"]) == strip(reference["history"])


def select(scores: list[dict], metric: str, patience: int = 0) -> tuple[int, int, bool]:
    """(best epoch, last epoch trained, stopped early) for a scripted sequence of validation metrics."""
    state = train.LoopState()
    for epoch, metrics in enumerate(scores, start=1):
        state.observe(epoch, train.selection_score(metrics, metric), patience)
        if state.stopped_early:
            break
    return state.best_epoch, state.epoch, state.stopped_early


@pytest.mark.parametrize("metric, values, patience, expected", [
    ("auc", [0.6, 0.8, 0.7, 0.9], 0, (4, 4, False)),
    ("loss", [0.9, 0.5, 0.7, 0.6], 0, (2, 4, False)),  # the lowest loss, never the highest
    ("acc", [0.6, 0.8, 0.8, 0.7], 0, (2, 4, False)),  # a tie keeps the earlier epoch
    ("loss", [0.5, 0.4, 0.4, 0.3], 0, (4, 4, False)),
    ("auc", [0.6, 0.8, 0.7, 0.75, 0.9], 2, (2, 4, True)),  # stops after exactly `patience` epochs without gain
    ("auc", [0.6, 0.8, 0.7, 0.85, 0.8, 0.8], 2, (4, 6, True)),  # a gain resets the count; a tie is no gain
    ("auc", [0.6, 0.8, 0.7, 0.75], 3, (2, 4, False)),
    ("auc", [float("nan"), 0.5, float("nan")], 0, (2, 3, False)),  # an undefined AUC never wins...
    ("auc", [float("nan"), float("nan")], 0, (1, 2, False)),  # ...but the first epoch is kept when none is defined
])
def test_best_epoch_selection_and_early_stopping(metric, values, patience, expected):
    assert select([{"loss": v, "auc": v, "acc": v} for v in values], metric, patience) == expected


def test_every_setting_that_changes_results_changes_the_run_hash(tmp_path):
    suite = write_suite(tmp_path, {"name": "vit_tiny"})
    base = load_suite(str(suite)).runs[0]
    other = tmp_path / "other"
    other.mkdir()
    changed = {
        "limit": load_suite(str(suite), limit=32).runs[0],
        "epochs": load_suite(str(suite), epochs=3).runs[0],
        "seed": load_suite(str(suite), seeds=[1]).runs[0],
        "full data": load_suite(str(suite), data_root="/data").runs[0],
        "lr": load_suite(str(write_suite(other, {"name": "vit_tiny"}, {**RECIPE, "lr": 2.0e-3}))).runs[0],
    }
    hashes = {name: spec.config_hash for name, spec in changed.items()}
    assert len({base.config_hash, *hashes.values()}) == 1 + len(changed), hashes
    assert load_suite(str(suite), data_root="bundled").runs[0].config_hash == base.config_hash


def test_a_limited_run_does_not_count_as_the_full_run_done(tmp_path):
    suite = write_suite(tmp_path, {"name": "vit_tiny"}, {**RECIPE, "epochs": 1})
    output = tmp_path / "results"
    assert cli.main(arguments(suite, output)) == 0
    done = completed_hashes(output, SUITE)
    assert done == {load_suite(str(suite), limit=32).runs[0].config_hash}
    record = only_record(output)  # new records store their protocol, the same that older ones get from the config
    assert record["protocol"] == protocol_of({key: value for key, value in record.items() if key != "protocol"})
    assert (record["protocol"]["epochs"], record["protocol"]["limit"]) == ("1", "32")
    assert load_suite(str(suite)).runs[0].config_hash not in done


def _ranked_records() -> list[dict]:
    """Three models on two datasets with exact ties: A: m1 = m2 > m3; B: m2 > m1 = m3."""
    values = {("breastmnist", "resnet18_28"): 0.8, ("breastmnist", "resnet50_28"): 0.8,
              ("breastmnist", "vit_b16"): 0.6, ("retinamnist", "resnet18_28"): 0.7,
              ("retinamnist", "resnet50_28"): 0.9, ("retinamnist", "vit_b16"): 0.7}
    records = []
    for (dataset, model), value in values.items():
        record = make_record(suite="ranks", dataset=dataset, model=model, seed=0, with_samples=False)
        record["test"]["acc"] = value
        records.append(record)
    return records


def test_average_ranks_share_ties():
    from benchmark.records import records_frame
    from benchmark.report.aggregate import headline

    table = headline(records_frame(_ranked_records()), "acc", suite="ranks")
    ranks = {(model, dataset): rank for (model, _, _, dataset), rank in table.cells["rank"].items()}
    assert ranks == {("resnet18_28", "breastmnist"): 1.5, ("resnet50_28", "breastmnist"): 1.5,
                     ("vit_b16", "breastmnist"): 3.0, ("resnet18_28", "retinamnist"): 2.5,
                     ("resnet50_28", "retinamnist"): 1.0, ("vit_b16", "retinamnist"): 2.5}
    assert {group[0]: rank for group, rank in table.rows["avg_rank"].items()} == {
        "resnet18_28": 2.0, "resnet50_28": 1.25, "vit_b16": 2.75}


def _mesh(ax) -> np.ndarray:
    (mesh,) = [c for c in ax.collections if hasattr(c, "get_array") and c.get_array() is not None]
    return np.ma.filled(np.asarray(mesh.get_array(), dtype=float).reshape(-1), np.nan)


def test_confusion_figure_draws_true_classes_as_rows():
    from benchmark.report.figures import plot_confusion

    record = make_record(dataset="retinamnist", n_test=60)
    labels = np.asarray(record["test_predictions"]["labels"])
    preds = np.asarray(record["test_predictions"]["probs"]).argmax(1)
    expected = confusion_matrix(labels, preds, labels=range(5))
    assert not np.array_equal(expected, expected.T)  # a transposed matrix would differ
    figure = plot_confusion(record)
    titled = {axis.get_title(): axis for axis in figure.axes}
    counts, normalised = titled["Counts"], titled["Row-normalised (diagonal = recall)"]
    np.testing.assert_array_equal(_mesh(counts).reshape(5, 5), expected)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(_mesh(normalised).reshape(5, 5), expected / expected.sum(1, keepdims=True))
    texts = {(round(t.get_position()[1] - 0.5), round(t.get_position()[0] - 0.5)): t.get_text() for t in counts.texts}
    assert texts == {(i, j): str(expected[i, j]) for i in range(5) for j in range(5)}
    assert counts.get_ylabel() == "True class" and counts.get_xlabel().startswith("Predicted class")


def test_heatmap_figure_draws_the_mean_of_each_cell():
    from benchmark.report.figures import plot_heatmap

    records = _ranked_records()
    figure = plot_heatmap(records, "acc", "ranks")
    axis = figure.axes[0]
    rows = [label.get_text().split("\n")[0] for label in axis.get_yticklabels()]
    columns = [label.get_text() for label in axis.get_xticklabels()]
    expected = {(r["model"]["name"], r["dataset"]["name"]): r["test"]["acc"] for r in records}
    drawn = _mesh(axis).reshape(len(rows), len(columns))
    assert {(m, d): drawn[i, j] for i, m in enumerate(rows) for j, d in enumerate(columns)} == expected


def test_a_compiled_run_writes_the_models_own_weights_and_unfreezes_by_name(tmp_path, monkeypatch):
    """recipe.compile: the checkpoints held the compiled wrapper's names (`_orig_mod.…`), which predict cannot load,
    and gradual unfreezing matched no parameter (every one stayed frozen: "does not require grad")."""
    compile_model = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compile_model(model, backend="eager"))
    suite = write_suite(tmp_path, {"name": "resnet18_28", "scheme": "gradual_unfreeze"}, {**RECIPE, "compile": True})
    assert cli.main(arguments(suite, tmp_path / "results")) == 0
    record = only_record(tmp_path / "results")
    assert record["status"] == "completed" and record["config"]["recipe"]["compile"] is True
    best = torch.load(tmp_path / "results" / "checkpoints" / SUITE / record["run_id"] / "best.pt", weights_only=False)
    assert "conv1.weight" in best["weights"] and not any(k.startswith("_orig_mod") for k in best["weights"])
