"""SYNTHETIC MedMNIST-layout files for tests. Never real data.

The real files for bloodmnist, pathmnist and every 64/128/224 size are not available offline, so the tests
exercise those code paths with random pixels and random labels written in exactly medmnist's npz layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from medmnist import INFO

from benchmark.data.medmnist_npz import npz_filename, save_npz
from benchmark.data.registry import SPLIT_NAMES, Split


def write_synthetic_medmnist(root: Path | str, flag: str, size: int, n_per_split: int = 12, seed: int = 0) -> Path:
    """Write `<root>/<flag>.npz` (or `<flag>_<size>.npz`) filled with SYNTHETIC random noise, never real data.

    Same layout as medmnist's files: keys `{train,val,test}_{images,labels}`, images uint8 of shape
    (N, size, size) for one channel or (N, size, size, 3), labels (N, 1) uint8 covering every class of
    `medmnist.INFO[flag]`. The file also holds a `synthetic` marker array, so loaded data reports
    `synthetic=True`; its MD5 never matches medmnist's, so load it with `verify=False`.
    """
    info = INFO[flag]
    n_classes = len(info["label"])
    rng = np.random.default_rng(seed)
    splits = {
        split: Split(images=rng.integers(0, 256, (n_per_split, size, size, info["n_channels"]), dtype=np.uint8),
                     labels=rng.permutation(np.arange(n_per_split) % n_classes))
        for split in SPLIT_NAMES
    }
    path = Path(root) / npz_filename(flag, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_npz(path, splits, synthetic=True)
