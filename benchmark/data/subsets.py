"""Label-efficiency subsets of a training split: a fraction of it, or a number of images per class.

Stratified, seeded and nested: one seeded order of each class's images, and every subset takes a prefix of each
class's order (a fraction f keeps round(f × n_c) images of class c, at least one; k shots keep min(k, n_c)). So
for one seed every smaller subset lies inside every larger one, fractions and shots alike, and the class
proportions follow the full split's. Validation and test splits are never touched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np

from benchmark.data.registry import DatasetSplits, Split
from benchmark.errors import UserError


def subset_tag(train_fraction: float = 1.0, shots_per_class: int = 0) -> str:
    """How a subset reads in run ids and table rows: '' (the full split), 'f0.05' or 'k10'."""
    if shots_per_class:
        return f"k{shots_per_class}"
    return "" if train_fraction == 1.0 else f"f{train_fraction:g}"


def check_subset(train_fraction: float, shots_per_class: int, where: str) -> None:
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or not 0 < train_fraction <= 1:
        raise UserError(f"{where}: train_fraction must be in (0, 1] (got {train_fraction!r}); fix it in the suite file")
    if isinstance(shots_per_class, bool) or not isinstance(shots_per_class, int) or shots_per_class < 0:
        raise UserError(f"{where}: shots_per_class must be an integer >= 1 (got {shots_per_class!r}); fix it in "
                        f"the suite file")
    if shots_per_class and train_fraction != 1.0:
        raise UserError(f"{where}: a run takes train_fraction or shots_per_class, not both")


def class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per class, its images' indices in one seeded random order (the same order for every subset size)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [order[labels[order] == c] for c in range(int(labels.max()) + 1)]


def subset_indices(labels: np.ndarray, seed: int, train_fraction: float = 1.0, shots_per_class: int = 0) -> np.ndarray:
    """Sorted indices of the labelled subset (all of them for the full split)."""
    labels = np.asarray(labels)
    if not shots_per_class and train_fraction == 1.0:
        return np.arange(len(labels))
    keep = []
    for members in class_orders(labels, seed):
        if len(members) == 0:
            continue
        n = min(shots_per_class, len(members)) if shots_per_class else max(1, round(train_fraction * len(members)))
        keep.append(members[:n])
    return np.sort(np.concatenate(keep))


def ids_hash(split: Split, indices: np.ndarray) -> str:
    """SHA-256 over the chosen images' ids (the loader's names, else their positions in the full split)."""
    ids = [split.ids[i] for i in indices] if split.ids else [int(i) for i in indices]
    return hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()


def labelled_subset(data: DatasetSplits, seed: int, train_fraction: float = 1.0,
                    shots_per_class: int = 0) -> DatasetSplits:
    """`data` with its training split cut to the subset and described in `train_subset` (the record's
    `dataset.train_subset` block); `data` itself for the full split."""
    if not shots_per_class and train_fraction == 1.0:
        return data
    train = data.train
    indices = subset_indices(train.labels, seed, train_fraction, shots_per_class)
    subset = Split(images=train.images[indices], labels=train.labels[indices],
                   ids=[train.ids[i] for i in indices] if train.ids else None)
    block = {"kind": "shots_per_class" if shots_per_class else "train_fraction",
             "value": shots_per_class or train_fraction, "seed": seed, "n_train": len(indices),
             "n_train_full": len(train), "sha256": ids_hash(train, indices)}
    return replace(data, train=subset, train_subset=block)
