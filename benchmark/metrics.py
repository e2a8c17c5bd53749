"""Classification metrics from predicted probabilities, with MedMNIST-compatible ACC and AUC.

`acc` and `auc` follow `medmnist.Evaluator` exactly (so numbers compare with published MedMNIST tables):
- binary-class: AUC of the last column's score, ACC with a 0.5 threshold on it;
- multi-class / ordinal-regression: AUC is the mean one-vs-rest AUC over classes, ACC uses argmax.
Everything else comes from scikit-learn on the argmax prediction.

Also here, all pure functions of labels and probabilities (so records written before them get them from their
stored `test_predictions`): calibration (ECE, Brier, NLL) and temperature scaling, MCC, quadratic weighted
kappa, per-class sensitivity / specificity, percentile bootstrap intervals over test images, the mean across
seeds with a t-interval, a paired bootstrap test between two models with Holm's correction, and the
majority-class / class-prior reference predictors.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
from scipy import optimize, stats
from sklearn import metrics as skm

HEADLINE_METRICS = ("acc", "auc", "f1_macro", "balanced_acc")


def predicted_labels(probs: np.ndarray, task: str) -> np.ndarray:
    """Hard predictions as MedMNIST makes them (threshold 0.5 for binary, argmax otherwise)."""
    if task == "binary-class":
        return (probs[:, -1] > 0.5).astype(np.int64)
    return probs.argmax(axis=1)


def medmnist_auc(labels: np.ndarray, probs: np.ndarray, task: str) -> float:
    """AUC as `medmnist.Evaluator` computes it.

    Classes absent from `labels` (possible only on tiny subsets) have no defined one-vs-rest AUC and are
    left out of the mean; with fewer than two classes present the AUC is NaN.
    """
    if len(np.unique(labels)) < 2:
        return float("nan")
    if task == "binary-class":
        return float(skm.roc_auc_score(labels, probs[:, -1]))
    present = [c for c in range(probs.shape[1]) if np.any(labels == c)]
    return float(np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present]))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, task: str) -> dict:
    """All metrics a run record stores for one split.

    labels: (N,) int class indices; probs: (N, n_classes) softmax probabilities. Macro recall averages the classes
    present in `labels`, as balanced accuracy and AUC do; macro F1 and precision the classes in `labels` or in the
    predictions (scikit-learn's default): a class neither true nor predicted in a small subset is left out, not
    counted as 0, and one only predicted counts its precision of 0. `per_class` lists every class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    preds = predicted_labels(probs, task)
    class_ids = list(range(n_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=class_ids, zero_division=0
    )
    present = support > 0
    seen = present | (np.bincount(preds, minlength=n_classes) > 0)
    return {
        "acc": float(skm.accuracy_score(labels, preds)),
        "auc": medmnist_auc(labels, probs, task),
        "balanced_acc": float(skm.balanced_accuracy_score(labels, preds)),
        "f1_macro": float(f1[seen].mean()),
        "precision_macro": float(precision[seen].mean()),
        "recall_macro": float(recall[present].mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=class_ids).tolist(),
        **extra_metrics(labels, probs, task),
    }


# --- calibration, agreement and per-class rates -----------------------------------------------------------

ECE_BINS = 15
CALIBRATION_METRICS = ("ece", "brier", "nll")
#: schemes whose stored "probabilities" are not probabilities, and why: their ECE, Brier and NLL read "n/a"
PROBABILITY_FREE_SCHEMES = {
    "knn": "kNN stores its k neighbours' vote fractions: k + 1 possible values, 0 for a class no neighbour has, so "
           "NLL is set by a clip constant and ECE / Brier score the vote count, not a probability model",
}
CALIBRATIONS = ("none", "temperature")


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017): confidences max_k p_k in `n_bins` equal-width bins ((m-1)/M, m/M];
    the bins' |accuracy - mean confidence| weighted by their share of the images."""
    return float(weighted_metrics(labels, probs, "multi-class", np.ones((1, len(labels))), n_bins)["ece"][0])


def calibration_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """ECE (15 bins, top label), multi-class Brier score (mean over images of sum_k (p_k - y_k)^2, so 0..2;
    for binary tasks twice the one-column Brier score) and NLL (mean -log p of the true class)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # stored float32 softmax rows sum to 1 only within ~1e-7
    class_ids = list(range(probs.shape[1]))
    return {
        "ece": expected_calibration_error(labels, probs),
        "brier": float(skm.brier_score_loss(labels, probs, labels=class_ids, scale_by_half=False)),
        "nll": float(skm.log_loss(labels, probs, labels=class_ids)),
    }


def extra_metrics(labels: np.ndarray, probs: np.ndarray, task: str) -> dict:
    """MCC, quadratic weighted kappa (ordinal tasks), per-class sensitivity / specificity, calibration."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = predicted_labels(probs, task)
    class_ids = list(range(probs.shape[1]))
    matrix = skm.confusion_matrix(labels, preds, labels=class_ids)
    true, predicted, hits, total = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix), matrix.sum()
    negatives = total - true
    out = {
        "mcc": float(skm.matthews_corrcoef(labels, preds)),
        "sensitivity": np.divide(hits, true, out=np.full(len(true), np.nan), where=true > 0).tolist(),
        "specificity": np.divide(negatives - (predicted - hits), negatives, out=np.full(len(true), np.nan),
                                 where=negatives > 0).tolist(),
        **calibration_metrics(labels, probs),
    }
    if task == "ordinal-regression":
        out["qwk"] = float(skm.cohen_kappa_score(labels, preds, labels=class_ids, weights="quadratic"))
    return out


# --- every metric at once for many resamples (bootstrap) ---------------------------------------------------

def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
                     where=denominator > 0)


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC (ties count 1/2) of `scores` for each row of image weights (B, N); NaN without both classes."""
    _, level = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), level.max() + 1))
    onehot[np.arange(len(scores)), level] = 1.0
    pos = (weights * positive) @ onehot  # (B, U) positive weight per distinct score, ascending
    neg = (weights * ~positive) @ onehot
    below = np.cumsum(neg, axis=1) - neg
    return _safe_divide(np.sum(pos * (below + 0.5 * neg), axis=1), pos.sum(axis=1) * neg.sum(axis=1))


def weighted_metrics(labels: np.ndarray, probs: np.ndarray, task: str, weights: np.ndarray,
                     n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Test metrics with images weighted by each row of `weights` (B, N) (bootstrap counts; ones = the plain
    metric). The same definitions as `classification_metrics` / `extra_metrics` (tested equal at weight 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n, k = probs.shape
    preds = predicted_labels(probs, task)
    pair = np.zeros((n, k * k))
    pair[np.arange(n), labels * k + preds] = 1.0
    matrix = (weights @ pair).reshape(-1, k, k)  # weighted confusion matrices (B, K, K)
    true, predicted = matrix.sum(axis=2), matrix.sum(axis=1)
    hits = np.diagonal(matrix, axis1=1, axis2=2)
    total = matrix.sum(axis=(1, 2))
    recall = _safe_divide(hits, true)
    f1 = np.divide(2 * hits, true + predicted, out=np.zeros_like(hits), where=(true + predicted) > 0)
    f1[(true + predicted) == 0] = np.nan  # classes neither true nor predicted: left out of the macro mean
    covariance = hits.sum(axis=1) * total - np.sum(true * predicted, axis=1)
    spread = np.sqrt((total ** 2 - np.sum(predicted ** 2, axis=1)) * (total ** 2 - np.sum(true ** 2, axis=1)))
    if task == "binary-class":
        auc = _weighted_auc(probs[:, -1], labels == 1, weights)
    else:
        per_class = np.stack([_weighted_auc(probs[:, c], labels == c, weights) for c in range(k)])
        auc = np.full(len(weights), np.nan)
        defined = ~np.all(np.isnan(per_class), axis=0)
        auc[defined] = np.nanmean(per_class[:, defined], axis=0)
    confidence = probs[np.arange(n), preds]
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.zeros((n, n_bins))
    gap[np.arange(n), bins] = (preds == labels) - confidence
    true_prob = np.clip(probs[np.arange(n), labels], np.finfo(np.float64).eps, 1.0)
    onehot = np.eye(k)[labels]
    out = {
        "acc": hits.sum(axis=1) / total,
        "auc": auc,
        "balanced_acc": np.nanmean(recall, axis=1),
        "f1_macro": np.nanmean(f1, axis=1),
        "mcc": np.divide(covariance, spread, out=np.zeros_like(covariance), where=spread > 0),
        "ece": np.abs(weights @ gap).sum(axis=1) / total,
        "brier": weights @ np.sum((probs - onehot) ** 2, axis=1) / total,
        "nll": weights @ -np.log(true_prob) / total,
    }
    if task == "ordinal-regression":
        distance = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
        expected = true[:, :, None] * predicted[:, None, :] / total[:, None, None]
        observed_cost = np.sum(distance * matrix, axis=(1, 2))
        expected_cost = np.sum(distance * expected, axis=(1, 2))
        out["qwk"] = 1 - _safe_divide(observed_cost, expected_cost)
    return out


#: the values each metric can take; a seed interval is clipped to them (with 3 seeds a t-interval is wide
#: enough to pass 1 for an accuracy near 1, which no model can reach)
METRIC_RANGES = {
    "acc": (0.0, 1.0), "auc": (0.0, 1.0), "balanced_acc": (0.0, 1.0), "f1_macro": (0.0, 1.0), "mcc": (-1.0, 1.0),
    "qwk": (-1.0, 1.0), "ece": (0.0, 1.0), "brier": (0.0, 2.0), "nll": (0.0, np.inf),
}

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def resample_counts(n: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(n_resamples, n) counts: how often each of n images is drawn in each resample (with replacement)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    offsets = (draws + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(offsets, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, task: str, *, level: float = 0.95,
                        n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, list]:
    """Percentile bootstrap interval over test images for every metric of `weighted_metrics`: metric ->
    [low, high]. Seeded, so the same predictions always give the same interval."""
    values = weighted_metrics(labels, probs, task, resample_counts(len(labels), n_resamples, seed))
    tail = 100 * (1 - level) / 2
    return {name: np.nanpercentile(draws, [tail, 100 - tail]).tolist() for name, draws in values.items()}


def mean_interval(values, level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)
                  ) -> tuple[float, float, float]:
    """Mean across seeds and its Student-t interval, clipped to the values the quantity can take (`bounds`,
    e.g. METRIC_RANGES[metric]); NaN bounds for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, float(max(mean - half, bounds[0])), float(min(mean + half, bounds[1]))


def paired_bootstrap_pvalue(labels: np.ndarray, probs_a: list, probs_b: list, task: str, metric: str, *,
                            n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
    """One-sided p-value that model A beats model B on `metric`, from a paired bootstrap over the shared test
    images: each resample draws images once and scores every seed of both models on them; the statistic is
    the difference of the seed means. p = (1 + #resamples with difference <= 0) / (1 + n_resamples).
    For a loss-like metric (ece, brier, nll) lower is better and the sign is flipped."""
    counts = resample_counts(len(labels), n_resamples, seed)

    def seed_mean(runs: list) -> np.ndarray:
        return np.mean([weighted_metrics(labels, probs, task, counts)[metric] for probs in runs], axis=0)

    return paired_pvalue_from_draws(seed_mean(probs_a), seed_mean(probs_b), metric)


def paired_pvalue_from_draws(draws_a: np.ndarray, draws_b: np.ndarray, metric: str,
                             alternative: str = "greater") -> float:
    """`paired_bootstrap_pvalue` from the two models' seed-mean `metric` on the same resamples (one value each).
    `alternative="two-sided"` when the direction was chosen by looking at the data (the higher of two rows):
    twice the smaller one-sided p."""
    sign = -1.0 if metric in CALIBRATION_METRICS else 1.0
    difference = sign * (np.asarray(draws_a) - np.asarray(draws_b))
    greater = (1 + np.sum(~(difference > 0))) / (1 + len(difference))
    if alternative == "greater":
        return float(greater)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    less = (1 + np.sum(~(difference < 0))) / (1 + len(difference))
    return float(min(1.0, 2 * min(greater, less)))


# --- training variance: seed noise as well as test images -------------------------------------------------

#: fewer completed seeds than this: the seed spread is not estimated well enough to test a cell (it says so)
MIN_SEEDS_TO_TEST = 3


def seed_noise(n_seeds: int, key: str, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(n_resamples,) Student-t draws with n_seeds - 1 degrees of freedom (zeros below 2 seeds: no spread to scale).
    Seeded by `seed` and `key` (the cell's identity), so a cell always gets the same draws, and two cells' draws
    are independent of each other."""
    if n_seeds < 2:
        return np.zeros(n_resamples)
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))]).standard_t(n_seeds - 1, size=n_resamples)


def hierarchical_draws(per_seed: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The seed mean of a metric on each resample of a two-level bootstrap: `per_seed` (S, B) holds every seed's
    metric on the B image resamples (`weighted_metrics` with `resample_counts`), `noise` (B,) Student-t draws
    (`seed_noise`). Resample b is the mean of the S seeds on image resample b plus the training noise of that
    mean: their std on resample b over sqrt(S), times a t draw with S - 1 degrees of freedom.

    Why not draw the seeds with replacement: with 3 seeds that bootstrap sees (S-1)/S of their variance and
    none of the t distribution's tails; its 95 % interval covered 82 % in `scripts/significance_check.py`, this
    one 97 %. The image resample stays shared by every seed and every model of the test set, so comparisons
    against a baseline stay paired over images."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    mean = per_seed.mean(axis=0)
    if per_seed.shape[0] < 2:
        return mean
    return mean + per_seed.std(axis=0, ddof=1) / np.sqrt(per_seed.shape[0]) * np.asarray(noise)


def welch_pvalue(values_a, values_b) -> float:
    """Two-sided Welch t-test p that two cells' per-seed values have the same mean (retraining would reorder them).
    Seeds that all agree (no spread on either side) are exact: p 0 when the means differ, 1 when they do not."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if min(len(a), len(b)) < 2:
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] != b[0] else 1.0
    with np.errstate(all="ignore"), warnings.catch_warnings():  # one side without spread: exact, scipy still warns
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


#: what the "seeds needed" numbers assume: two-sided two-sample t-test on per-seed values, this level and power
DETECTION_ALPHA = 0.05
DETECTION_POWER = 0.8


def t_test_power(difference: float, std: float, n: int, alpha: float = DETECTION_ALPHA) -> float:
    """Power of a two-sided two-sample t-test (n per arm, equal std) to detect `difference` (noncentral t)."""
    if n < 2:
        return float("nan")
    if std <= 0:
        return 1.0 if difference != 0 else alpha
    df = 2 * (n - 1)
    shift = abs(difference) / std * np.sqrt(n / 2)
    critical = stats.t.ppf(1 - alpha / 2, df)
    wrong_side = np.nan_to_num(stats.nct.cdf(-critical, df, shift), nan=0.0)  # NaN far in the tail: 0
    return float(stats.nct.sf(critical, df, shift) + wrong_side)


def minimum_detectable_difference(std: float, n: int, alpha: float = DETECTION_ALPHA,
                                  power: float = DETECTION_POWER) -> float:
    """The smallest difference of means that n seeds per arm detect with `power` at `alpha` (two-sided two-sample
    t-test on per-seed values, both arms with seed std `std`); NaN for n < 2, 0 when the seeds do not vary."""
    if n < 2 or not np.isfinite(std):
        return float("nan")
    if std <= 0:
        return 0.0
    return float(optimize.brentq(lambda d: t_test_power(d, std, n, alpha) - power, 1e-12 * std, 20 * std))


def seeds_needed(difference: float, std: float, alpha: float = DETECTION_ALPHA, power: float = DETECTION_POWER,
                 most: int = 10_000) -> int | None:
    """Seeds per arm a two-sided two-sample t-test needs to detect `difference` with `power` at `alpha` when each
    arm's seed std is `std`; None when more than `most` (or the std is unknown)."""
    if not np.isfinite(std):
        return None
    if t_test_power(difference, std, most, alpha) < power:
        return None
    low, high = 1, most  # power grows with n: bisect for the smallest n that reaches it
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if t_test_power(difference, std, middle, alpha) >= power else (middle, high)
    return high


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control over the comparisons given)."""
    pvalues = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(pvalues)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(pvalues) - np.arange(len(pvalues))) * pvalues[order]))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


# --- reference predictors ----------------------------------------------------------------------------------

BASELINES = ("majority", "prior")


def baseline_probs(train_labels, n_classes: int, n_images: int, kind: str) -> np.ndarray:
    """Predictions of a model that ignores the image, fitted on the training labels: `majority` puts all
    probability on the most frequent training class, `prior` predicts the training class frequencies."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if kind == "majority":
        row = np.eye(n_classes)[counts.argmax()]
    elif kind == "prior":
        row = counts / counts.sum()
    else:
        raise ValueError(f"unknown baseline {kind!r}; one of {BASELINES}")
    return np.tile(row, (n_images, 1))


# --- temperature scaling -----------------------------------------------------------------------------------

def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), from probabilities: log p differs from the logits by a per-image constant."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of `probs` (validation predictions)."""
    labels = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        scaled = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-300, 1.0))))

    result = optimize.minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def temperature_calibration(val_labels, val_probs, test_labels, test_probs) -> dict:
    """Temperature fitted on validation; test calibration metrics before and after (the record's block)."""
    temperature = fit_temperature(val_labels, val_probs)
    return {"method": "temperature", "temperature": temperature,
            "before": calibration_metrics(test_labels, test_probs),
            "after": calibration_metrics(test_labels, apply_temperature(test_probs, temperature))}
