"""Calibration, bootstrap intervals, paired tests, baselines and temperature scaling (benchmark.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.metrics import (
    METRIC_RANGES,
    apply_temperature,
    baseline_probs,
    bootstrap_intervals,
    calibration_metrics,
    classification_metrics,
    fit_temperature,
    holm,
    mean_interval,
    paired_bootstrap_pvalue,
    resample_counts,
    temperature_calibration,
    weighted_metrics,
)

# Five binary predictions, confidences 0.90, 0.92 (one bin: 13), 0.62 (bin 9), 0.70 (bin 10), 0.75 (bin 11).
LABELS = np.array([0, 1, 1, 0, 0])
PROBS = np.array([[0.9, 0.1], [0.08, 0.92], [0.62, 0.38], [0.3, 0.7], [0.75, 0.25]])


def simulated(n: int, rng: np.random.Generator, k: int = 3, signal: float = 1.5, sharpness: float = 1.0):
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(sharpness * logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_calibration_metrics_equal_hand_computed_values() -> None:
    got = calibration_metrics(LABELS, PROBS)
    # bin 13: |2 correct - (0.90 + 0.92)| ; bins 9, 10: wrong at 0.62, 0.70 ; bin 11: right at 0.75
    assert got["ece"] == pytest.approx((0.18 + 0.62 + 0.70 + 0.25) / 5)
    assert got["brier"] == pytest.approx((0.02 + 0.0128 + 2 * 0.62 ** 2 + 2 * 0.7 ** 2 + 2 * 0.25 ** 2) / 5)
    assert got["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.92) + math.log(0.38) + math.log(0.3)
                                         + math.log(0.75)) / 5)
    perfect = calibration_metrics(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == perfect["brier"] == 0 and perfect["nll"] == pytest.approx(0, abs=1e-12)


def test_mcc_sensitivity_specificity_and_qwk_by_hand() -> None:
    got = classification_metrics(LABELS, PROBS, "binary-class")  # predictions 0, 1, 0, 1, 0
    assert got["sensitivity"] == pytest.approx([2 / 3, 1 / 2]) and got["specificity"] == pytest.approx([1 / 2, 2 / 3])
    assert got["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    labels = np.array([0, 1, 2, 3])
    off_by_one = np.eye(4)[[1, 1, 2, 2]]  # ordinal: near misses
    far = np.eye(4)[[3, 1, 2, 0]]
    assert classification_metrics(labels, off_by_one, "ordinal-regression")["qwk"] > 0.5
    assert classification_metrics(labels, far, "ordinal-regression")["qwk"] < 0
    assert "qwk" not in classification_metrics(labels, far, "multi-class")


@pytest.mark.parametrize("task,k", [("binary-class", 2), ("multi-class", 4), ("ordinal-regression", 5)])
def test_weighted_metrics_at_unit_weight_equal_the_record_metrics(task: str, k: int) -> None:
    labels, probs = simulated(120, np.random.default_rng(k), k=k)
    reference = classification_metrics(labels, probs, task)
    for name, values in weighted_metrics(labels, probs, task, np.ones((1, len(labels)))).items():
        assert values[0] == pytest.approx(reference[name], abs=1e-12), name
    counts = resample_counts(len(labels), 50, seed=3)
    assert counts.shape == (50, 120) and np.all(counts.sum(axis=1) == 120)
    resampled = np.repeat(np.arange(120), counts[7].astype(int))  # one resample, scored as a plain test set
    again = classification_metrics(labels[resampled], probs[resampled], task)
    for name, values in weighted_metrics(labels, probs, task, counts).items():
        assert values[7] == pytest.approx(again[name], abs=1e-12), name


def test_bootstrap_intervals_cover_the_true_value_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    truth = 0.75  # each image is classified correctly with this probability
    covered = []
    for _ in range(60):
        labels = rng.integers(0, 2, 80)
        correct = rng.random(80) < truth
        confidence = rng.uniform(0.55, 0.95, 80)
        p1 = np.where(correct == (labels == 1), confidence, 1 - confidence)
        low, high = bootstrap_intervals(labels, np.column_stack([1 - p1, p1]), "binary-class")["acc"]
        covered.append(low <= truth <= high)
    assert 0.88 <= np.mean(covered) <= 0.99  # nominal 0.95 (measured here: 0.93)


def test_bootstrap_is_deterministic_and_shrinks_with_more_images() -> None:
    rng = np.random.default_rng(1)
    labels, probs = simulated(400, rng)
    first = bootstrap_intervals(labels, probs, "multi-class")
    assert first == bootstrap_intervals(labels, probs, "multi-class")
    assert first != bootstrap_intervals(labels, probs, "multi-class", seed=1)
    small = bootstrap_intervals(labels[:50], probs[:50], "multi-class")
    for name in ("acc", "auc", "f1_macro", "mcc", "ece", "brier", "nll"):
        assert first[name][1] - first[name][0] < small[name][1] - small[name][0], name
        point = weighted_metrics(labels, probs, "multi-class", np.ones((1, 400)))[name][0]
        assert first[name][0] <= point <= first[name][1], name


def test_mean_interval_is_a_t_interval() -> None:
    mean, low, high = mean_interval([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert high - mean == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert np.isnan(mean_interval([0.8])[1])


def test_paired_test_ties_identical_models_and_finds_a_clear_winner() -> None:
    rng = np.random.default_rng(2)
    labels, weak = simulated(150, rng, signal=0.5)
    strong = [simulated(150, np.random.default_rng(seed), signal=0.5)[1] for seed in (10, 11)]
    for probs in strong:  # the strong model: same noise, much more signal on the true class
        probs[np.arange(150), labels] += 2.0
        probs /= probs.sum(axis=1, keepdims=True)
    assert paired_bootstrap_pvalue(labels, [weak, weak], [weak, weak], "multi-class", "acc") == 1.0
    assert paired_bootstrap_pvalue(labels, strong, [weak, weak], "multi-class", "acc") < 0.01
    assert paired_bootstrap_pvalue(labels, strong, [weak, weak], "multi-class", "nll") < 0.01  # lower is better
    assert paired_bootstrap_pvalue(labels, [weak, weak], strong, "multi-class", "acc") > 0.99
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_baselines_come_from_the_training_labels() -> None:
    train = np.repeat([0, 1], [147, 399])  # BreastMNIST's training labels
    test = np.repeat([0, 1], [42, 114])
    majority = classification_metrics(test, baseline_probs(train, 2, len(test), "majority"), "binary-class")
    assert majority["acc"] == pytest.approx(114 / 156) and majority["balanced_acc"] == 0.5
    prior = baseline_probs(train, 2, len(test), "prior")
    np.testing.assert_allclose(prior[0], [147 / 546, 399 / 546])
    assert classification_metrics(test, prior, "binary-class")["auc"] == 0.5


def test_temperature_scaling_lowers_nll_on_held_out_images() -> None:
    rng = np.random.default_rng(4)
    labels, probs = simulated(600, rng, signal=1.0, sharpness=4.0)  # overconfident
    val, test = slice(0, 300), slice(300, 600)
    temperature = fit_temperature(labels[val], probs[val])
    assert temperature > 2
    block = temperature_calibration(labels[val], probs[val], labels[test], probs[test])
    assert block["temperature"] == pytest.approx(temperature)
    assert block["after"]["nll"] < block["before"]["nll"] - 0.1
    assert block["after"]["ece"] < block["before"]["ece"]
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)
    np.testing.assert_array_equal(apply_temperature(probs, 3.0).argmax(axis=1), probs.argmax(axis=1))


def test_mean_interval_is_clipped_to_what_the_metric_can_take() -> None:
    """Three seeds near 1: the raw t-interval passes 1, which no accuracy can reach."""
    values = [0.97, 0.99, 1.0]
    _, raw_low, raw_high = mean_interval(values)
    assert raw_high > 1.0
    _, low, high = mean_interval(values, bounds=METRIC_RANGES["acc"])
    assert high == 1.0 and low == pytest.approx(raw_low)
    assert mean_interval([0.0, 0.01, 0.05], bounds=METRIC_RANGES["ece"])[1] == 0.0
