"""Shared test setup: offline, quiet, deterministic; paths to the shipped data and the optional full data."""

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# A checkpoint at the end of every epoch (not by elapsed time), so that kills and resumes are deterministic;
# tests of the time-based default set it themselves.
os.environ.setdefault("BENCHMARK_CHECKPOINT_EVERY", "0")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FINISHED_RUNS_SUITE = """
name: use
data_root: bundled
seeds: [0]
recipes:
  v2: {optimizer: adam, lr: 1.0e-3, schedule: multistep, epochs: 1, batch_size: 16, augment: none}
  vit: {lr: 1.0e-3, epochs: 1, batch_size: 16, augment: none}
datasets: [breastmnist]
models:
  - {name: resnet18_28, recipe: v2}
  - {name: vit_tiny, recipe: vit}
"""


@pytest.fixture
def shared_data() -> Path:
    """The full real data beside the checkout (developer machines and CI); tests skip without it."""
    if not (SHARED_DATA / "medmnist" / "breastmnist.npz").exists():
        pytest.skip("full real data (../shared/data) not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def benchmark_logger_restored():
    """Each test ends with the `benchmark` logger as it began: `cli.main` installs its stderr handler and sets the
    level (INFO without --quiet), which would otherwise print a later test's log lines into its stderr."""
    logger = logging.getLogger("benchmark")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


class LogLines(logging.Handler):
    """The messages logged under `benchmark` while installed (`.text`: one per line)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture(scope="module")
def module_logs():
    """`caplog` for module-scoped fixtures: the package's log messages during the whole module."""
    handler, logger = LogLines(), logging.getLogger("benchmark")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """One tiny real run per model (resnet18_28, vit_tiny: BreastMNIST subset, 32 images per split, one epoch) and
    PNGs of the run's test images: (results folder, PNG folder). Shared by every module that uses finished runs:
    read it, write anything else elsewhere."""
    import numpy as np
    from PIL import Image

    from benchmark.cli import main
    from benchmark.use import load_run

    root = tmp_path_factory.mktemp("finished-runs")
    (root / "use.yaml").write_text(FINISHED_RUNS_SUITE)
    assert main(["run", "--suite", str(root / "use.yaml"), "--limit", "32", "--output", str(root / "results"),
                 "--quiet"]) == 0
    test = load_run("breastmnist-28-resnet18_28", root / "results").dataset_split("test")
    pngs = root / "pngs"
    pngs.mkdir()
    for i, image in enumerate(test.images):
        Image.fromarray(np.asarray(image)[..., 0]).save(pngs / f"{i:03d}.png")
    return root / "results", pngs
