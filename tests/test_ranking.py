"""Rankings across datasets (`benchmark.report.ranking`): the numbers are those of the tests they name, too few
datasets are said, and the leaderboard builds without the `rank` extra."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from record_factory import make_grid
from scipy import stats

from benchmark.report import ranking, render
from benchmark.report.leaderboard import build_leaderboard
from benchmark.report.load import by_suite


def table(n_datasets: int, seed: int = 0) -> pd.DataFrame:
    """Datasets × 4 models: A leads B by 0.05 everywhere, C and D trail with noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.8, n_datasets)
    return pd.DataFrame({"A": base + 0.05, "B": base, "C": base - 0.03 + rng.normal(0, 0.02, n_datasets),
                         "D": base - 0.04 + rng.normal(0, 0.02, n_datasets)},
                        index=[f"d{i}" for i in range(n_datasets)])


def test_mean_ranks_friedman_and_critical_difference_are_demsars() -> None:
    values = table(12)
    r = ranking.rank(values, "unit", "Unit", "acc")
    ranks = values.rank(axis=1, ascending=False).mean()
    pd.testing.assert_series_equal(r.mean_rank, ranks.sort_values(), check_names=False)
    assert r.test == "friedman"
    assert r.pvalue == pytest.approx(stats.friedmanchisquare(*values.T.to_numpy()).pvalue)
    k, n = values.shape[1], values.shape[0]
    q = stats.studentized_range.ppf(1 - ranking.ALPHA, k, np.inf) / np.sqrt(2)  # Demšar 2006, eq. for CD
    assert r.cd == pytest.approx(q * np.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)
    assert list(r.bayes["other"]) == list(r.mean_rank.index[1:])
    a_vs_b = r.bayes.set_index("other").loc["B"]
    assert a_vs_b["p_better"] > 0.95  # 0.05 ahead on every dataset, beyond the ±0.01 rope
    assert a_vs_b["p_better"] + a_vs_b["p_rope"] + a_vs_b["p_worse"] == pytest.approx(1)
    text = render.markdown(render.ranking_table(r))
    assert "**A**" in text and "Nemenyi p vs #1" in text


def test_equal_models_are_practically_equivalent_under_the_rope() -> None:
    values = table(10)
    values["B"] = values["A"] + 0.001
    r = ranking.rank(values[["A", "B", "C"]], "unit", "Unit", "acc")
    row = r.bayes.set_index("other").loc["A"]
    assert row["p_rope"] > 0.9


def test_too_few_datasets_are_ranked_but_not_tested() -> None:
    r = ranking.rank(table(ranking.MIN_DATASETS - 1), "unit", "Unit", "acc")
    assert not r.tested and r.bayes is None and "need at least 5" in r.note
    rendered = render.ranking_table(r)
    assert "Untested" in rendered.caption and "**" not in render.markdown(rendered)


def test_published_medmnist_plus_rankings_ship_with_the_package() -> None:
    rankings = {r.key: r for r in ranking.medmnist_plus_rankings()}
    assert set(rankings) == {"medmnist-plus-end_to_end-acc", "medmnist-plus-linear_probe-acc", "medmnist-plus-knn-acc",
                             "medmnist-plus-all-acc", "medmnist-plus-all-auc"}
    end_to_end = rankings["medmnist-plus-end_to_end-acc"]
    # 4 datasets, each one row (its model's mean over 4 sizes; 12 size x scheme blocks over all schemes, 8 on AUC,
    # which kNN lacks): too few to test (the 16 / 48 blocks were tested as independent datasets, p < 1e-10)
    assert [(r.values.shape, r.n_blocks) for r in rankings.values()] == [((4, 10), 16)] * 3 + [((4, 10), 48),
                                                                                                ((4, 10), 32)]
    assert not any(r.tested for r in rankings.values())
    published = ranking.load_medmnist_plus()
    vgg = published[(published["model"] == "VGG16") & (published["scheme"] == "end_to_end")]
    assert end_to_end.values["VGG16"].tolist() == pytest.approx((vgg.groupby("dataset")["acc_mean"].mean() / 100).tolist())
    assert end_to_end.mean_rank.index[0] == "VGG16"
    assert rankings["medmnist-plus-linear_probe-acc"].mean_rank.index[0] == "DINO ViT-B/16"
    caption = render.ranking_table(end_to_end).caption
    assert "Untested: 4 dataset(s)" in caption and "mean over its 16 blocks" in caption


def test_blocks_of_one_dataset_are_one_row_and_a_model_missing_one_dataset_keeps_its_place() -> None:
    """Five sizes of one dataset are not five datasets (they were ranked and tested as such); a model without a
    value on one of eight datasets leaves that dataset out, not itself (it was dropped from all eight)."""
    sizes = table(5)
    sizes.index = [f"breastmnist ({size}px)" for size in (28, 64, 128, 224, 256)]
    one = ranking.rank(sizes, "unit", "Unit", "acc", {block: "breastmnist" for block in sizes.index})
    assert one.values.shape == (1, 4) and one.n_blocks == 5 and not one.tested
    assert one.values["A"].iloc[0] == pytest.approx(sizes["A"].mean())
    partly = sizes.copy()
    partly.loc["breastmnist (64px)", "D"] = np.nan  # D lacks one size: no mean for it on that dataset
    assert np.isnan(ranking.per_dataset(partly, {block: "breastmnist" for block in sizes.index}).loc["breastmnist", "D"])
    eight = table(8)
    eight.loc["d3", "A"] = np.nan
    r = ranking.rank(eight, "unit", "Unit", "acc")
    assert r.dropped == [] and r.dropped_datasets == ["d3"] and r.mean_rank.index[0] == "A" and r.tested
    assert "Datasets left out (not every model has a value): d3" in render.ranking_table(r).caption
    five = table(5)
    five.loc["d0", "C"] = np.nan  # leaving d0 out keeps more values but only 4 datasets: C is left out instead
    r = ranking.rank(five, "unit", "Unit", "acc")
    assert r.dropped == ["C"] and r.values.shape == (5, 3) and r.tested


def test_the_leaderboard_builds_without_the_rank_extra_and_says_which_extra(monkeypatch) -> None:
    ranking.medmnist_plus_rankings.cache_clear()
    for name in ("autorank", "baycomp", "scikit_posthocs"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when not installed
    try:
        records = make_grid(suite="unit", missing=(), failed=())
        markdown, _, _ = build_leaderboard(by_suite(records))
        section = markdown.split("## Across datasets")[1].split("## How to read")[0]
        assert "`rank` extra" in section and "pip install 'medmnist-benchmark[rank]'" in section
        assert "MedMNIST+ (published), end-to-end: ranking on ACC" in section
        assert "Nemenyi p vs #1" not in section  # the tested columns
    finally:
        ranking.medmnist_plus_rankings.cache_clear()  # the next caller gets the tested rankings again


def test_a_suite_ranking_is_in_the_leaderboard_with_its_note() -> None:
    records = make_grid(suite="unit", missing=(), failed=())
    data = by_suite(records)["unit"]
    (acc, auc) = ranking.suite_rankings(data)
    assert acc.values.shape[0] == len({r["dataset"]["name"] for r in records}) < ranking.MIN_DATASETS
    markdown, _, _ = build_leaderboard(by_suite(records))
    assert "#### Suite unit: ranking on ACC" in markdown and acc.note in markdown


def test_a_suite_of_five_datasets_is_tested_and_drawn_as_a_critical_difference_diagram() -> None:
    from benchmark.report.figures.jobs import figure_jobs

    datasets = ("breastmnist", "retinamnist", "bloodmnist", "dermamnist", "breast_ultrasound")
    records = make_grid(suite="unit", datasets=datasets, models=("resnet18_28", "resnet50_28", "vit_b16"),
                        seeds=(0,), missing=(), failed=())
    data = by_suite(records)["unit"]
    acc = [r for r in ranking.suite_rankings(data) if r.metric == "acc"][0]
    assert acc.tested and acc.values.shape == (5, 3) and acc.test == "friedman"
    (job,) = [j for j in figure_jobs(data) if j.stem == "critical_difference_acc"]
    figure = job.draw()
    labels = {t.get_text() for ax in figure.axes for t in ax.texts}
    assert set(acc.values.columns) <= labels and "CD" in labels  # "model · scheme": the suite has two schemes
    assert "vit_b16 · fine_tune" in acc.values.columns
