"""What every scheme gets to train one run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from benchmark.config import RunSpec
from benchmark.data import DatasetSplits
from benchmark.models import BuiltModel
from benchmark.train import DeviceSplit


@dataclass
class SchemeContext:
    spec: RunSpec
    built: BuiltModel
    data: DatasetSplits
    device_splits: dict[str, DeviceSplit]
    accelerator: Accelerator
    checkpoint_dir: Path | None
    cache_dir: Path | None  # embeddings of frozen backbones; None = no cache
    resume: bool = True
    quiet: bool = False
