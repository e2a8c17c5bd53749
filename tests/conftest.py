"""Shared test setup: offline, quiet, deterministic; paths to the shipped data and the optional full data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The full real data beside the checkout (developer machines and CI); tests skip without it."""
    if not (SHARED_DATA / "medmnist" / "breastmnist.npz").exists():
        pytest.skip("full real data (../shared/data) not present")
    return SHARED_DATA
