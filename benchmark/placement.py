"""Where a dataset's splits live during training: on the device when they fit, else in host memory.

Every split is uint8. When all three fit the device budget (half the device's free memory, the other half left
for the model and activations; $BENCHMARK_DATA_BUDGET overrides it, e.g. `8G`, `500M`, or `0` for always host)
they are copied whole to the device (`DeviceSplit`). Otherwise they stay in host memory (`HostSplit`), the
loaded array itself (no second full host copy), and each batch is gathered on the host (page-locked on CUDA,
so its copy is asynchronous) and copied to the device one step ahead, on a side stream on CUDA, while
the current step computes. The batches, their order and the transforms are the same either way, so the
numbers are too (bit-identical on CPU). The record's `environment.data_placement` says which was used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np
import torch

from benchmark.data import DatasetSplits, Split
from benchmark.errors import UserError
from benchmark.train import DeviceSplit

BUDGET_ENV = "BENCHMARK_DATA_BUDGET"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def data_budget(device: torch.device) -> float:
    """Bytes of split data that may live on `device`."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, flags=re.IGNORECASE)
        if not match:
            raise UserError(f"${BUDGET_ENV}={text!r} is not a size like 8G, 500M or 0; fix or unset it")
        return float(match.group(1)) * UNITS[match.group(2).upper()]
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / 2
    return float("inf")  # the CPU's "device" memory is host memory: the splits are there either way


class HostSplit:
    """A split kept in host memory; `batches` copies each batch to the device one step ahead."""

    def __init__(self, split: Split, device: torch.device):
        self.device = device
        self.images = torch.from_numpy(np.ascontiguousarray(split.images))  # NHWC, shares the loaded array
        self.labels = torch.from_numpy(split.labels).to(device)
        self.index_device = torch.device("cpu")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.labels)

    def _copy(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self.images.index_select(0, indices.cpu())
        if self._stream is None:
            return batch.to(self.device).permute(0, 3, 1, 2).contiguous()
        batch = batch.pin_memory()  # the gathered batch, page-locked so the copy does not block the host
        with torch.cuda.stream(self._stream):
            return batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()

    def batches(self, index_batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index_batches = list(index_batches)
        upcoming = self._copy(index_batches[0]) if index_batches else None
        for position, indices in enumerate(index_batches):
            current = upcoming
            if self._stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(self._stream)
                current.record_stream(torch.cuda.current_stream(self.device))
            if position + 1 < len(index_batches):
                upcoming = self._copy(index_batches[position + 1])
            yield indices, current


def place_splits(data: DatasetSplits, device: torch.device) -> tuple[dict, str]:
    """The train/val/test splits on `device` when they fit its budget, else in host memory; and which."""
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    size = sum(split.images.nbytes for split in splits.values())
    if size <= data_budget(device):
        return {name: DeviceSplit.from_split(split, device) for name, split in splits.items()}, "device"
    return {name: HostSplit(split, device) for name, split in splits.items()}, "host"
