"""Splits too large for the device budget stay in host memory, each batch copied over one step ahead: the
same batches and transforms, so the same record (bit-identical on CPU) but for `environment.data_placement`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from run_outcome import outcome

from benchmark import cli
from benchmark.errors import UserError
from benchmark.placement import data_budget

RECIPE = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 2, "batch_size": 8, "augment": "tutorial"}


def run(tmp_path, name: str) -> dict:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "placement", "data_root": "bundled", "datasets": ["retinamnist"],
                                     "models": [{"name": "vit_tiny", "recipe": RECIPE}]}))
    assert cli.main(["run", "--suite", str(suite), "--output", str(tmp_path / name), "--limit", "40", "--quiet"]) == 0
    (path,) = (tmp_path / name / "runs" / "placement").glob("*.json")
    return json.loads(path.read_text())


def test_host_resident_splits_give_the_device_resident_record(tmp_path, monkeypatch):
    on_device = run(tmp_path, "device")
    monkeypatch.setenv("BENCHMARK_DATA_BUDGET", "1K")  # far below the 3 × 40 × 28 × 28 × 3 bytes of the splits
    on_host = run(tmp_path, "host")
    assert on_device["environment"]["data_placement"] == "device"
    assert on_host["environment"]["data_placement"] == "host"
    assert on_device["environment"]["torch_threads"] == torch.get_num_threads()  # part of what a run reproduces under
    assert on_host["config_hash"] == on_device["config_hash"]
    assert outcome(on_host) == outcome(on_device)


def test_the_budget_reads_sizes_and_rejects_garbage(monkeypatch):
    cpu = torch.device("cpu")
    assert data_budget(cpu) == float("inf")
    for text, value in (("0", 0), ("500M", 500 * 2**20), ("1.5G", 1.5 * 2**30), ("8GiB", 8 * 2**30)):
        monkeypatch.setenv("BENCHMARK_DATA_BUDGET", text)
        assert data_budget(cpu) == value
    monkeypatch.setenv("BENCHMARK_DATA_BUDGET", "lots")
    with pytest.raises(UserError, match="BENCHMARK_DATA_BUDGET"):
        data_budget(cpu)
