"""The leaderboard's intervals / calibration / significance table, from records alone."""

from __future__ import annotations

import copy

import numpy as np
from record_factory import make_record

from benchmark.metrics import bootstrap_intervals, calibration_metrics
from benchmark.records import training_class_counts
from benchmark.report import aggregate, render
from benchmark.report.load import by_suite


def runs(model: str, skill: float, n_test: int = 200) -> list[dict]:
    return [make_record(dataset="breastmnist", model=model, seed=seed, skill=skill, n_test=n_test, with_samples=False)
            for seed in (0, 1, 2)]


def test_identical_predictions_are_a_tie_and_a_clearly_better_model_a_significant_win() -> None:
    base = runs("resnet18_28", skill=1.0)
    twin = copy.deepcopy(base)
    for record in twin:
        record["model"]["name"] = "vit_b16"
    tied = aggregate.trust(base + twin)
    assert list(tied["acc_mark"]) .count("tie") == 1 and "best" not in set(tied["acc_mark"])
    assert tied["acc_p_images"].dropna().iloc[0] == 1.0  # the same images score identical seeds identically
    assert tied["acc_p_seeds"].dropna().iloc[0] == 1.0  # the same per-seed values: retraining cannot order them
    assert tied["acc_p"].dropna().iloc[0] == 1.0

    strong = runs("vit_b16", skill=4.0)
    table = aggregate.trust(base + strong).set_index("model")
    assert table.loc["vit_b16", "acc_mark"] == "best" and table.loc["vit_b16", "acc_p"] < 0.01
    assert table.loc["resnet18_28", "acc_mark"] == ""
    markdown = render.markdown(render.trust_table(table.reset_index(), "unit"))
    assert "✓" in markdown and "≈" not in markdown.split("|---")[-1].split("\n", 1)[1]


def test_trust_numbers_come_from_the_stored_predictions() -> None:
    records = runs("resnet18_28", skill=1.0, n_test=120)[:1]
    row = aggregate.trust(records).iloc[0]
    labels = np.array(records[0]["test_predictions"]["labels"])
    probs = np.array(records[0]["test_predictions"]["probs"])
    assert row["acc"] == records[0]["test"]["acc"] and row["n"] == 1 and np.isnan(row["acc_t_low"])
    assert [row["acc_low"], row["acc_high"]] == bootstrap_intervals(labels, probs, "binary-class")["acc"]
    assert row["ece"] == calibration_metrics(labels, probs)["ece"]


def test_baseline_rows_from_training_class_counts_are_never_marked() -> None:
    records = runs("resnet18_28", skill=0.5) + runs("vit_b16", skill=0.6)
    for record in records:
        record["dataset"]["class_counts"] = {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    table = aggregate.trust(records)
    baselines = table[table["baseline"]].set_index("model")
    assert list(baselines.index) == ["majority", "prior"]
    labels = np.array(records[0]["test_predictions"]["labels"])
    assert baselines.loc["majority", "acc"] == np.mean(labels == 1)  # the larger training class
    assert baselines.loc["prior", "auc"] == 0.5
    assert set(baselines["acc_mark"]) == {""}


def test_a_random_split_is_its_own_test_set_in_every_table() -> None:
    grouped = runs("resnet18_28", skill=1.0)
    random = copy.deepcopy(grouped)
    for record, kind in [(r, "grouped") for r in grouped] + [(r, "random") for r in random]:
        record["dataset"]["split"] = {"kind": kind, "seed": 0, "sha256": kind}
        record["config_hash"] = record["run_id"] = f"{record['run_id']}-{kind}"
    from benchmark.records import _one_record_per_seed, records_frame

    assert len(_one_record_per_seed(grouped + random)) == 6  # the two arms never replace each other
    assert sorted(set(aggregate.trust(grouped + random)["test_set"])) == ["breastmnist", "breastmnist (random split)"]
    assert sorted(set(records_frame(grouped + random)["dataset"])) == ["breastmnist", "breastmnist (random split)"]


def test_older_records_get_baselines_from_a_record_of_the_same_data() -> None:
    older = runs("resnet18_28", skill=0.5)  # written before `dataset.class_counts` existed
    newer = runs("vit_b16", skill=0.6)[:1]
    newer[0]["suite"] = "another"
    newer[0]["dataset"]["class_counts"] = {"train": [400, 200], "val": [40, 20], "test": [130, 70]}
    known = training_class_counts(older + newer)
    assert list(known.values()) == [[400, 200]]
    baselines = aggregate.trust(older, known).set_index("model")
    labels = np.array(older[0]["test_predictions"]["labels"])
    assert baselines.loc["majority", "acc"] == np.mean(labels == 0)  # class 0 is the larger training class
    other_data = copy.deepcopy(older)
    for record in other_data:
        record["dataset"]["n_train"] += 1  # a different cut of the data: its counts are unknown
    assert not aggregate.trust(other_data, known)["baseline"].any()


def test_compact_headline_shows_intervals_marks_and_baselines() -> None:
    records = runs("resnet18_28", skill=1.0) + runs("vit_b16", skill=4.0)
    for record in records:
        record["dataset"]["class_counts"] = {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    data = by_suite(records)["unit"]
    tables, trusted = aggregate.suite_tables(data)
    text = render.markdown(render.compact_table("unit", tables, trusted))
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| breastmnist")}
    strong = trusted.set_index("model").loc["vit_b16"]
    assert rows["vit_b16"][4] == f"**{strong['acc']:.3f} [{strong['acc_low']:.2f}, {strong['acc_high']:.2f}]** ✓"
    assert "✓" not in rows["resnet18_28"][4] and "≈" not in rows["resnet18_28"][4]
    assert rows["*majority*"][3] == "*baseline*" and rows["*prior*"][-1] == "—"
    cells = tables["acc"].cells
    assert list(cells.loc[cells["model"] == "vit_b16", "mark"]) == ["best"]


def test_compact_headline_marks_a_tie_without_bold() -> None:
    base = runs("resnet18_28", skill=1.0)
    twin = copy.deepcopy(base)
    for record in twin:
        record["model"]["name"] = "vit_b16"
    tables, trusted = aggregate.suite_tables(by_suite(base + twin)["unit"])
    text = render.markdown(render.compact_table("unit", tables, trusted))
    body = [line for line in text.splitlines() if line.startswith("| breastmnist")]
    assert len(body) == 2 and "**" not in "".join(body)
    assert [line.count("≈") for line in body] == [4, 0]  # the first of two equal rows carries the tie mark
