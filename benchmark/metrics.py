"""Classification metrics from predicted probabilities, with MedMNIST-compatible ACC and AUC.

`acc` and `auc` follow `medmnist.Evaluator` exactly (so numbers compare with published MedMNIST tables):
- binary-class: AUC of the last column's score, ACC with a 0.5 threshold on it;
- multi-class / ordinal-regression: AUC is the mean one-vs-rest AUC over classes, ACC uses argmax.
Everything else comes from scikit-learn on the argmax prediction.
"""

from __future__ import annotations

import numpy as np
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

    labels: (N,) int class indices; probs: (N, n_classes) softmax probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    preds = predicted_labels(probs, task)
    class_ids = list(range(n_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=class_ids, zero_division=0
    )
    return {
        "acc": float(skm.accuracy_score(labels, preds)),
        "auc": medmnist_auc(labels, probs, task),
        "balanced_acc": float(skm.balanced_accuracy_score(labels, preds)),
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=class_ids).tolist(),
    }
