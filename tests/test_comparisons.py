"""Claims the leaderboard makes about comparisons, tested on the aggregation itself: the ✓ mark survives seed
variance only when it should, baselines take part, too few seeds are said, the ECE bins and the significance level
are pinned, and the "seeds needed" numbers are those of the t-test they name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from record_factory import make_record

from benchmark import metrics
from benchmark.records import (
    load_records,
    parse_protocol,
    per_class_frame,
    protocol_of,
    protocol_text,
    records_frame,
)
from benchmark.report import aggregate, render
from benchmark.report.load import SuitePlan, by_suite, load_published

N_TEST = 400
LABELS = np.random.default_rng(7).permutation(np.r_[np.zeros(120, int), np.ones(280, int)])  # 70 % class 1


def record(model: str, seed: int, correct: np.ndarray, scheme: str | None = None) -> dict:
    """A BreastMNIST-shaped record whose seed gets exactly the images in `correct` right (confidence 0.8)."""
    rec = make_record(dataset="breastmnist", model=model, seed=seed, n_test=N_TEST, with_samples=False, scheme=scheme)
    predicted = np.where(correct, LABELS, 1 - LABELS)
    probs = np.where(predicted[:, None] == np.arange(2)[None, :], 0.8, 0.2)
    rec["test_predictions"] = {"labels": LABELS.tolist(), "probs": probs.tolist()}
    rec["dataset"]["class_counts"] = {"train": [150, 350], "val": [20, 50], "test": [120, 280]}
    return rec


def right_on(fraction: float, seed: int) -> np.ndarray:
    """A seeded random set of images, `fraction` of the test set, that a seed gets right."""
    chosen = np.random.default_rng(seed).permutation(N_TEST)[: round(fraction * N_TEST)]
    return np.isin(np.arange(N_TEST), chosen)


def best_row(table, metric: str = "acc"):
    measured = table[~table["baseline"]]
    return measured.loc[measured[metric].idxmax()]


def test_a_runner_up_whose_seeds_disagree_is_a_tie_not_a_win() -> None:
    """The `imbalance-cpu` case: the runner-up's two good seeds beat the leader, its third collapsed. The images
    alone call the leader significantly best; retraining (Welch's t over the seeds) does not, so the mark must be
    a tie, and its p is the larger of the two."""
    leader = [record("resnet18_28", s, right_on(0.85, 100 + s)) for s in range(3)]
    runner_up = [record("vit_b16", s, right_on(acc, 200 + s)) for s, acc in enumerate((0.87, 0.88, 0.60))]
    table = aggregate.trust(leader + runner_up)
    best = best_row(table)
    assert best["model"] == "resnet18_28"
    assert best["acc_p_images"] < 0.01  # what the mark used to rest on
    assert best["acc_p_seeds"] == pytest.approx(metrics.welch_pvalue([0.85] * 3, [0.87, 0.88, 0.60]))
    assert best["acc_p"] == best["acc_p_seeds"] > 0.05
    assert best["acc_mark"] == "tie"
    assert best["acc_runner_up"] == "vit_b16 · 28 · fine_tune"


def test_a_consistent_lead_is_best_and_its_p_value_is_two_sided() -> None:
    """Every seed scores the same, so retraining cannot reorder them (p over seeds 0); the images' paired bootstrap
    finds no resample of 1,000 where the runner-up is ahead: one-sided p 1/1001, two-sided 2/1001, as the best
    row was chosen by looking."""
    leader = [record("resnet18_28", s, right_on(0.93, 100 + s)) for s in range(3)]
    runner_up = [record("vit_b16", s, right_on(0.84, 200 + s)) for s in range(3)]
    table = aggregate.trust(leader + runner_up)
    best = best_row(table)
    assert best["acc_p_seeds"] == 0.0
    assert best["acc_p"] == best["acc_p_images"] == pytest.approx(2 / 1001)
    assert best["acc_mark"] == "best" and best["acc_vs_baseline"] == "beats"


def test_equal_models_are_marked_best_at_most_as_often_as_the_level_says() -> None:
    """400 experiments where two models are equally good (3 seeds each, a seed spread that dominates): the mark's
    test (Welch over seeds and the two-sided paired image bootstrap, the larger p) says "best" in 1.25 % of them,
    within the 5 % level. The one-sided two-level bootstrap it replaces (seeds drawn with replacement) said it in
    14.75 %, the same two tests one-sided after picking the higher row in 7.25 %, the images alone in 51 %."""
    rng = np.random.default_rng(11)
    n_images, counts = 200, metrics.resample_counts(200)
    marked = 0
    for _ in range(400):
        difficulty = rng.normal(0, 1.0, n_images)  # shared by both models and every seed
        cells = []
        for _model in range(2):
            correct = np.array([1.0 + rng.normal(0, 0.3) + difficulty + rng.normal(0, 1.1, n_images) > 0
                                for _seed in range(3)], dtype=float)
            cells.append((correct.mean(), correct.mean(axis=1), (counts @ correct.T).T.mean(axis=0) / n_images))
        (_, seeds_a, images_a), (_, seeds_b, images_b) = sorted(cells, key=lambda cell: -cell[0])
        p = max(metrics.welch_pvalue(seeds_a, seeds_b),
                metrics.paired_pvalue_from_draws(images_a, images_b, "acc", alternative="two-sided"))
        marked += p < aggregate.SIGNIFICANCE_LEVEL
    assert marked / 400 <= aggregate.SIGNIFICANCE_LEVEL


def test_the_significance_level_is_pinned() -> None:
    assert aggregate.SIGNIFICANCE_LEVEL == 0.05 and metrics.MIN_SEEDS_TO_TEST == 3


def test_nothing_at_or_below_a_baseline_is_marked_best_and_such_cells_are_flagged() -> None:
    """Two models that both trail the majority class (ACC 0.70): no ✓, no ≈, both flagged ▾ in the table."""
    a = [record("resnet18_28", s, right_on(0.66, 100 + s)) for s in range(3)]
    b = [record("vit_b16", s, right_on(0.55, 200 + s)) for s in range(3)]
    table = aggregate.trust(a + b)
    measured = table[~table["baseline"]]
    assert set(measured["acc_mark"]) == {""}
    assert set(measured["acc_vs_baseline"]) == {"no"}
    assert (measured["acc_baseline_p"] > 0.05).all()
    text = render.markdown(render.trust_table(table, "unit"))
    acc_cells = [line.split("|")[6] for line in text.splitlines() if line.startswith("| breastmnist")]
    assert all("✓" not in cell and "≈" not in cell for cell in acc_cells)
    assert sum(render.BELOW_BASELINE in cell for cell in acc_cells) == 2


def test_a_best_row_that_beats_the_runner_up_but_not_the_baseline_is_not_best() -> None:
    """Leader at 0.72 vs majority 0.70 on 400 images: above it, not significantly; the runner-up far behind."""
    leader = [record("resnet18_28", s, right_on(0.72, 100 + s)) for s in range(3)]
    runner_up = [record("vit_b16", s, right_on(0.50, 200 + s)) for s in range(3)]
    best = best_row(aggregate.trust(leader + runner_up))
    assert best["acc_p"] < 0.05 and best["acc_vs_baseline"] == "no" and best["acc_mark"] == "tie"


def test_too_few_seeds_to_test_says_so_instead_of_marking() -> None:
    leader = [record("resnet18_28", s, right_on(0.95, 100 + s)) for s in range(2)]
    runner_up = [record("vit_b16", s, right_on(0.80, 200 + s)) for s in range(3)]
    tables, trusted = aggregate.suite_tables(by_suite(leader + runner_up)["unit"])
    best = best_row(trusted)
    assert best["acc_mark"] == "untested" and np.isnan(best["acc_p"])
    text = render.markdown(render.compact_table("unit", tables, trusted))
    assert "?" in text and "✓" not in text.split("|---")[-1]


def test_two_level_draws_add_t_distributed_seed_noise_to_the_shared_image_resample() -> None:
    per_seed = np.array([[0.8, 0.9, 0.7, 0.8], [0.6, 0.9, 0.8, 0.8], [0.7, 0.6, 0.9, 0.8]])  # 3 seeds x 4 resamples
    noise = np.array([0.0, 1.0, -2.0, 5.0])
    expected = [per_seed[:, b].mean() + per_seed[:, b].std(ddof=1) / np.sqrt(3) * noise[b] for b in range(4)]
    np.testing.assert_allclose(metrics.hierarchical_draws(per_seed, noise), expected)
    np.testing.assert_allclose(metrics.hierarchical_draws(per_seed[:1], noise), per_seed[0])  # one seed: no spread
    first = metrics.seed_noise(3, "cell a")
    assert np.array_equal(first, metrics.seed_noise(3, "cell a"))  # deterministic
    assert not np.array_equal(first, metrics.seed_noise(3, "cell b"))  # independent across cells
    assert first.shape == (metrics.BOOTSTRAP_RESAMPLES,) and not metrics.seed_noise(1, "cell a").any()
    # t with 2 degrees of freedom: 4.30 at the 97.5th percentile, where a normal is at 1.96
    assert 3.3 < np.percentile(np.abs(first), 95) < 5.5


def test_intervals_widen_when_the_seeds_disagree() -> None:
    agree = [record("resnet18_28", s, right_on(0.8, 100)) for s in range(3)]  # identical seeds
    disagree = [record("vit_b16", s, right_on(acc, 200 + s)) for s, acc in enumerate((0.9, 0.8, 0.7))]
    table = aggregate.trust(agree + disagree).set_index("model")
    same, spread = table.loc["resnet18_28"], table.loc["vit_b16"]
    assert (same["acc_low"], same["acc_high"]) == (same["acc_img_low"], same["acc_img_high"])
    assert spread["acc_high"] - spread["acc_low"] > 2 * (spread["acc_img_high"] - spread["acc_img_low"])


def test_ece_uses_fifteen_bins() -> None:
    """Confidences 0.91 (right) and 0.95 (wrong) share the bin (0.9, 1.0] at 10 bins but not at 15:
    15 bins give (0.09 + 0.95) / 2 = 0.52, 10 bins |0.5 - 0.93| = 0.43."""
    labels = np.array([1, 0])
    probs = np.array([[0.09, 0.91], [0.05, 0.95]])
    assert metrics.ECE_BINS == 15
    assert metrics.expected_calibration_error(labels, probs) == pytest.approx(0.52)
    assert metrics.calibration_metrics(labels, probs)["ece"] == pytest.approx(0.52)
    assert metrics.weighted_metrics(labels, probs, "binary-class", np.ones((1, 2)))["ece"][0] == pytest.approx(0.52)


def test_knn_calibration_reads_not_applicable() -> None:
    knn = [record("resnet18_28", s, right_on(0.8, 100 + s), scheme="knn") for s in range(3)]
    table = aggregate.trust(knn)
    row = table[~table["baseline"]].iloc[0]
    assert row["not_applicable"].startswith("kNN") and np.isnan(row["nll"]) and np.isnan(row["ece"])
    assert not np.isnan(row["auc"])
    text = render.markdown(render.trust_table(table, "unit"))
    assert text.count(render.NOT_APPLICABLE) == 3


def test_seeds_needed_and_detectable_difference_are_those_of_the_two_sample_t_test() -> None:
    """Values of statsmodels' TTestIndPower (two-sided, alpha 0.05, power 0.8) for seed std 0.038."""
    assert metrics.minimum_detectable_difference(0.038, 3) == pytest.approx(0.116694, rel=1e-4)
    assert metrics.seeds_needed(0.01, 0.038) == 228  # statsmodels: 227.64 per arm
    assert metrics.t_test_power(0.01, 0.038, 228) >= 0.8 > metrics.t_test_power(0.01, 0.038, 227)
    assert metrics.minimum_detectable_difference(0.0, 3) == 0.0 and np.isnan(metrics.minimum_detectable_difference(1, 1))


def test_seeds_needed_lands_on_the_best_row_from_the_pooled_seed_std() -> None:
    leader = [record("resnet18_28", s, right_on(acc, 100 + s)) for s, acc in enumerate((0.84, 0.86, 0.85))]
    runner_up = [record("vit_b16", s, right_on(acc, 200 + s)) for s, acc in enumerate((0.80, 0.83, 0.82))]
    best = best_row(aggregate.trust(leader + runner_up))
    pooled = np.sqrt((np.std([0.84, 0.86, 0.85], ddof=1) ** 2 + np.std([0.80, 0.83, 0.82], ddof=1) ** 2) / 2)
    assert best["acc_seeds_needed"] == metrics.seeds_needed(0.01, pooled)
    assert best["acc_mdd"] == pytest.approx(metrics.minimum_detectable_difference(0.01, 3))


def test_seeds_needed_reads_unknown_for_one_seed_and_over_ten_thousand_only_when_it_is() -> None:
    """One seed each: no seed std, so the seeds needed are unknown (—), not "> 10,000"; a seed std near 0.28 needs
    more than 10,000 per model to detect 0.01."""
    one_seed = aggregate.trust([record("resnet18_28", 0, right_on(0.9, 100)), record("vit_b16", 0, right_on(0.8, 200))])
    assert np.isnan(best_row(one_seed)["acc_seeds_needed"])
    spread = [record("resnet18_28", s, right_on(acc, 100 + s)) for s, acc in enumerate((0.99, 0.45, 0.72))]
    spread += [record("vit_b16", s, right_on(acc, 200 + s)) for s, acc in enumerate((0.98, 0.40, 0.70))]
    wide = aggregate.trust(spread)
    assert best_row(wide)["acc_seeds_needed"] == np.inf

    def shown(table) -> list[str]:
        lines = render.markdown(render.seeds_table(table, "unit")).splitlines()
        return [line.split("|")[-2].strip() for line in lines if line.startswith("| breastmnist | resnet18_28")]

    needed = {"one": shown(one_seed), "wide": shown(wide)}
    assert needed == {"one": ["—"], "wide": ["> 10,000"]}


def test_the_over_datasets_comparison_counts_each_dataset_once() -> None:
    """Two datasets, both models trained with two schemes: four per-dataset scheme pairs per dataset, and one
    "all datasets" row per scheme pair over the two datasets' means — n = 2, never the 8 rows pooled (which gave a
    p of 3e-5 from two datasets)."""
    runs = [make_record(dataset=dataset, model=model, seed=seed, scheme=scheme, skill=skill + 0.01 * seed,
                        with_samples=False)
            for dataset in ("breastmnist", "retinamnist") for seed in range(3)
            for model, skill in (("resnet18_28", 1.5), ("vit_b16", 1.0)) for scheme in ("knn", "linear_probe")]
    rows = aggregate.compare_models(records_frame(runs), "resnet18_28", "vit_b16")
    per, over = rows[rows["dataset"] != aggregate.ALL_DATASETS], rows[rows["dataset"] == aggregate.ALL_DATASETS]
    assert len(per) == 8 and len(over) == 4
    assert set(over["n"]) == {2} and set(zip(over["scheme_a"], over["scheme_b"])) == set(zip(per["scheme_a"], per["scheme_b"]))
    knn = over[(over["scheme_a"] == "knn") & (over["scheme_b"] == "knn")].iloc[0]
    means = per[(per["scheme_a"] == "knn") & (per["scheme_b"] == "knn")]
    assert knn["mean_diff"] == pytest.approx((means["mean_a"] - means["mean_b"]).mean())


def test_a_published_row_without_a_scheme_is_compared_with_one_whole_cell() -> None:
    """MedMNIST v2's ResNet-18 (28) row names no scheme: it meets the model's first scheme (from_scratch). When that
    cell has one seed, or only failed runs, its std / mean stay unknown — never the next scheme's numbers."""
    published = load_published()
    published = published[(published["model"] == "resnet18_28") & (published["dataset"] == "breastmnist")
                          & (published["scheme"] == "") & (published["metric"] == "acc")]
    probe = [make_record(model="resnet18_28", seed=s, scheme="linear_probe", skill=1.0 + 0.3 * s) for s in range(3)]
    for first, n in (([make_record(model="resnet18_28", seed=0, scheme="from_scratch")], 1),
                     ([make_record(model="resnet18_28", seed=s, scheme="from_scratch", status="failed")
                       for s in range(3)], 0)):
        records = first + probe
        row = aggregate.published_gap(records_frame(records), published, None, records).iloc[0]
        assert row["n"] == n and np.isnan(row["std"])
        assert np.isnan(row["mean"]) if n == 0 else row["mean"] == first[0]["test"]["acc"]


def test_a_seed_outside_the_plan_does_not_make_up_for_a_missing_planned_one() -> None:
    """The suite plans seeds 0, 1, 2; seeds 0, 1 and 7 ran. Seed 7 counts in the mean, but the group is
    incomplete: 2/3 planned seeds, seed 2 listed as missing (it read "n=3", complete, before)."""
    plan = SuitePlan("unit.yaml", ("vit_b16",), (("breastmnist", 28),), (0, 1, 2))
    runs = [make_record(model="vit_b16", seed=seed, skill=1.0 + 0.2 * seed, with_samples=False) for seed in (0, 1, 7)]
    frame = records_frame(runs)
    cell = aggregate.headline(frame, "acc", plan).cells.iloc[0]
    assert (cell["n"], cell["n_planned"], cell["status"]) == (3, 2, "incomplete")
    assert cell["mean"] == pytest.approx(np.mean([r["test"]["acc"] for r in runs]))
    assert render.cell_display(cell)[1] == "(2/3 seeds)†"
    missing = aggregate.incomplete_groups(frame, plan)
    assert list(missing["missing_seeds"]) == [(2,)]
    classes = aggregate.per_class(per_class_frame(runs), frame, plan)
    assert set(zip(classes["n"], classes["n_planned"])) == {(3, 2)}
    table = render.markdown(render.per_class_tables(classes, "unit")[0])
    assert "2/3†" in table and "3/3" not in table


def test_twins_are_never_best() -> None:
    base = [record("resnet18_28", s, right_on(0.8, 100 + s)) for s in range(3)]
    twin = copy.deepcopy(base)
    for rec in twin:
        rec["model"]["name"] = "vit_b16"
    assert "best" not in set(aggregate.trust(base + twin)["acc_mark"])


# --- protocols ----------------------------------------------------------------------------------------------
COMMITTED = Path(__file__).resolve().parents[1] / "results" / "runs"


def committed_record(suite: str, model: str) -> dict:
    (path, *_) = sorted((COMMITTED / suite).glob(f"breastmnist-28-{model}-s0-*.json"))
    return json.loads(path.read_text())


def test_a_record_without_a_stored_protocol_gets_it_from_its_config() -> None:
    old = committed_record("imbalance-cpu", "resnet18_28")
    assert "protocol" not in old  # written before the key existed
    protocol = protocol_of(old)
    assert protocol["epochs"] == "3" and protocol["schedule"] == "cosine" and protocol["init"] == "scratch"
    assert protocol["split"] == "official" and protocol["scheme"] == "from_scratch"
    balanced = protocol_of(committed_record("imbalance-cpu", "resnet18_28_balanced_loss"))
    assert balanced["imbalance"] == "class_weights balanced" and protocol["imbalance"] == "none"
    knn = protocol_of(committed_record("schemes-cpu", "resnet18_28-knn"))
    assert knn["k"] == "11" and "epochs" not in knn  # nothing trains: the recipe is not kNN's protocol
    assert parse_protocol(protocol_text(protocol)) == protocol
    assert protocol_of({**old, "protocol": {"scheme": "stored"}}) == {"scheme": "stored"}


def test_delta_in_seed_stds_only_between_rows_of_one_protocol() -> None:
    """The committed 3-epoch imbalance-cpu runs next to MedMNIST v2's 100-epoch rows: Δ shown, Δ / std not, the
    difference named; the committed 100-epoch medmnist-v2 runs follow the published protocol: Δ / std shown."""
    published = load_published()
    short = load_records(COMMITTED / "imbalance-cpu")
    gap = aggregate.published_gap(records_frame(short), published, None, short)
    row = gap[(gap["model"] == "resnet18_28") & (gap["metric"] == "acc")].iloc[0]
    assert row["protocol"] == "3 epochs vs 100; schedule cosine vs multistep"
    assert not row["same_protocol"] and np.isnan(row["gap_in_stds"]) and row["gap"] < -0.1
    full = load_records(COMMITTED / "medmnist-v2")
    gap = aggregate.published_gap(records_frame(full), published, None, full)
    row = gap[(gap["model"] == "resnet18_28") & (gap["dataset"] == "breastmnist") & (gap["metric"] == "acc")].iloc[0]
    assert row["same_protocol"] and row["gap_in_stds"] == pytest.approx(row["gap"] / row["std"])
    assert aggregate.protocol_difference({"epochs": "3"}, {}) == "not stated by the source: epochs"


def test_site_pages_show_knn_calibration_as_not_applicable() -> None:
    from benchmark.report.site import _metric_text

    assert _metric_text("knn", "nll", 4.958) == "n/a (kNN stores its k neighbours' vote fractions)"
    assert _metric_text("knn", "auc", 0.7051) == "0.7051"
    assert _metric_text("from_scratch", "nll", 0.4123) == "0.4123"
