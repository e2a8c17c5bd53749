"""Datasets as uint8 splits: one registry (`registry.py`), MedMNIST npz files and breast-ultrasound images."""

from benchmark.data import medmnist_npz, ultrasound  # noqa: F401  (importing them registers their datasets)
from benchmark.data.registry import (
    DatasetSplits,
    Split,
    data_variant,
    dataset_sizes,
    dataset_split_kinds,
    list_datasets,
    load_dataset,
    missing_data,
    register_dataset,
)

__all__ = ["DatasetSplits", "Split", "data_variant", "dataset_sizes", "dataset_split_kinds", "list_datasets", "load_dataset",
           "missing_data", "register_dataset"]
