"""Class-imbalance options of a recipe: a weighted loss and a class-balanced sampler.

- `class_weights: balanced`: cross-entropy weight of class c = n / (n_classes × n_c) over the training labels,
  scikit-learn's `compute_class_weight("balanced")` (the ultrasound guide's formula).
- `sampler: balanced`: each epoch draws as many training indices as the split holds, with replacement, each with
  probability proportional to 1 / n_c of its class, so every class is equally likely; seeded per (seed, epoch)
  like the usual shuffle, and drawn on the CPU, so a seed gives the same batches on every device.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from benchmark.errors import UserError


def _counts(labels: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    if (counts == 0).any():
        missing = ", ".join(str(c) for c in np.flatnonzero(counts == 0))
        raise UserError(f"{what}: class(es) {missing} have no training images, so balanced weights are undefined; "
                        f"raise --limit or drop the balanced option from the recipe")
    return counts


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights (float32, one per class)."""
    _counts(labels, n_classes, "class_weights: balanced")
    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=np.asarray(labels))
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sample_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Per-image sampling weights 1 / n_c (float64, CPU): each class carries the same total weight."""
    counts = _counts(labels, n_classes, "sampler: balanced")
    return torch.from_numpy(1.0 / counts[np.asarray(labels, dtype=np.int64)])


def balanced_order(sample_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch's indices: len(sample_weights) draws with replacement in proportion to the weights."""
    return torch.multinomial(sample_weights, len(sample_weights), replacement=True, generator=generator)
