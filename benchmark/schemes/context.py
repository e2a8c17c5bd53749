"""What every scheme gets to train one run, and to rebuild a completed one for use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from benchmark.checkpoint import RunCheckpoints
from benchmark.config import RunSpec
from benchmark.data import DatasetSplits
from benchmark.models import BuiltModel
from benchmark.schemes.spec import SchemeSpec
from benchmark.train import DeviceSplit


@dataclass
class SchemeContext:
    spec: RunSpec
    built: BuiltModel
    data: DatasetSplits
    device_splits: dict[str, DeviceSplit]
    accelerator: Accelerator
    checkpoints: RunCheckpoints | None  # where and when the run checkpoints, and whether it resumes; None = never
    cache_dir: Path | None  # embeddings of frozen backbones; None = no cache
    quiet: bool = False


@dataclass
class RestoreContext:
    """What every scheme gets to rebuild a completed run's model for use (`benchmark.use.load_run`)."""

    # The run's model as the runner built it: seeded with the run's seed, on CPU. With pretrained=True a
    # pretrained spec loads its hub weights again (from the HF cache offline); else only its config.
    build: Callable[[bool], BuiltModel]
    read_weights: Callable[[], dict]  # best.pt's weights (a one-line UserError when the file is missing)
    scheme: SchemeSpec
    details: dict  # the record's scheme_details
    model_name: str
