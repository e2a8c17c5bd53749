"""ACC and AUC must equal medmnist.Evaluator's for the same predictions (binary, ordinal, multi-class)."""

import numpy as np
import pytest
from medmnist import Evaluator
from sklearn.metrics import f1_score, precision_score
from synthetic import write_synthetic_medmnist

from benchmark.data import load_dataset
from benchmark.data.medmnist_npz import save_npz
from benchmark.metrics import classification_metrics, medmnist_auc, predicted_labels


def random_probs(n: int, n_classes: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """Scores that are informative but imperfect, like a half-trained model's."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("flag", ["breastmnist", "retinamnist"])
def test_acc_auc_equal_medmnist_evaluator_on_real_test_labels(tmp_path, flag):
    data = load_dataset(flag, data_root="bundled")
    save_npz(tmp_path / f"{flag}.npz", {"train": data.train, "val": data.val, "test": data.test})
    probs = random_probs(len(data.test), len(data.class_names), data.test.labels, seed=1)

    expected = Evaluator(flag, "test", root=str(tmp_path)).evaluate(probs)
    ours = classification_metrics(data.test.labels, probs, data.task)

    assert data.task == {"breastmnist": "binary-class", "retinamnist": "ordinal-regression"}[flag]
    assert ours["acc"] == pytest.approx(expected.ACC, abs=1e-12)
    assert ours["auc"] == pytest.approx(expected.AUC, abs=1e-12)
    assert 0.5 < ours["auc"] < 1.0  # informative but imperfect: the comparison is not trivial


@pytest.mark.parametrize("flag", ["bloodmnist", "pathmnist"])
def test_acc_auc_equal_medmnist_evaluator_multiclass_synthetic(tmp_path, flag):
    path = write_synthetic_medmnist(tmp_path, flag, 28, n_per_split=64)
    labels = np.load(path)["test_labels"].ravel()
    probs = random_probs(len(labels), int(labels.max()) + 1, labels, seed=2)
    expected = Evaluator(flag, "test", root=str(tmp_path)).evaluate(probs)
    ours = classification_metrics(labels, probs, "multi-class")
    assert ours["acc"] == pytest.approx(expected.ACC, abs=1e-12)
    assert ours["auc"] == pytest.approx(expected.AUC, abs=1e-12)


def test_binary_threshold_and_sklearn_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5], [0.2, 0.8], [0.3, 0.7]])
    # p1 > 0.5 is class 1; exactly 0.5 is class 0, as medmnist thresholds it.
    assert predicted_labels(probs, "binary-class").tolist() == [0, 1, 0, 1, 1]
    m = classification_metrics(labels, probs, "binary-class")
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["per_class"]["recall"] == pytest.approx([1 / 2, 2 / 3])
    assert m["per_class"]["precision"] == pytest.approx([1 / 2, 2 / 3])
    assert m["balanced_acc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["f1_macro"] == pytest.approx(f1_score(labels, [0, 1, 0, 1, 1], average="macro"))
    # AUC: positives' scores (0.5, 0.8, 0.7) vs negatives' (0.1, 0.6): 5 of 6 pairs ordered right.
    assert m["auc"] == pytest.approx(5 / 6)


def test_auc_undefined_with_one_class_and_skips_absent_classes():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    assert np.isnan(medmnist_auc(np.array([1, 1, 1]), probs, "multi-class"))
    # class 2 never occurs: the mean runs over the classes present (0 and 1), each perfectly ranked here.
    assert medmnist_auc(np.array([0, 1, 0]), probs, "multi-class") == pytest.approx(1.0)


def test_macro_averages_run_over_the_classes_present_as_balanced_accuracy_does():
    """Class 2 is absent from a small test subset: F1, precision and recall average classes 0 and 1 (recall then
    equals balanced accuracy; it counted class 2 as 0 before: 0.5 vs 0.75), in the record and in the bootstrap."""
    from benchmark.metrics import weighted_metrics

    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 1, 1, 1]] * 0.9 + 0.1 / 3
    m = classification_metrics(labels, probs, "multi-class")
    assert m["recall_macro"] == m["balanced_acc"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["per_class"]["f1"][2] == 0 and m["per_class"]["support"][2] == 0  # every class still listed
    assert weighted_metrics(labels, probs, "multi-class", np.ones((1, 4)))["f1_macro"][0] == pytest.approx(m["f1_macro"])
    # a class predicted but never true counts (its precision is 0), as in scikit-learn's default macro average
    labels, preds = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 2, 1, 1, 2])
    m = classification_metrics(labels, np.eye(3)[preds] * 0.9 + 0.1 / 3, "multi-class")
    assert m["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))  # 0.533, not 0.8
    assert m["precision_macro"] == pytest.approx(precision_score(labels, preds, average="macro", zero_division=0))
    assert m["recall_macro"] == m["balanced_acc"] == pytest.approx(2 / 3)
    weighted = weighted_metrics(labels, np.eye(3)[preds] * 0.9 + 0.1 / 3, "multi-class", np.ones((1, 6)))
    assert weighted["f1_macro"][0] == pytest.approx(m["f1_macro"])
