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


@pytest.fixture
def shared_data() -> Path:
    """The full real data beside the checkout (developer machines and CI); tests skip without it."""
    if not (SHARED_DATA / "medmnist" / "breastmnist.npz").exists():
        pytest.skip("full real data (../shared/data) not present")
    return SHARED_DATA


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
