"""run --deterministic: deterministic kernels while the grid's runs train (bit-equal reruns on a GPU), the
process's own settings back afterwards, the same numbers as without on a CPU, and the record says which."""

from __future__ import annotations

import json
import logging
import os
import warnings

import pytest
import torch
import yaml
from run_outcome import outcome

from benchmark import cli, runner
from benchmark.environment import DETERMINISTIC_ENV, deterministic_requested, tf32_in_use
from benchmark.errors import UserError
from benchmark.runner import GridRunner

RECIPE = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 1, "batch_size": 8, "augment": "tutorial"}


def run_records(tmp_path, name: str, *extra: str, seeds: tuple[int, ...] = (0,)) -> list[dict]:
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "determinism", "data_root": "bundled", "datasets": ["breastmnist"],
                                     "seeds": list(seeds), "models": [{"name": "resnet18_28", "recipe": RECIPE}]}))
    assert cli.main(["run", "--suite", str(suite), "--output", str(tmp_path / name), "--limit", "24", "--quiet",
                     *extra]) == 0
    paths = sorted((tmp_path / name / "runs" / "determinism").glob("*.json"))
    return [json.loads(path.read_text()) for path in paths]


def run(tmp_path, name: str, *extra: str) -> dict:
    (record,) = run_records(tmp_path, name, *extra)
    return record


def test_deterministic_kernels_hold_while_the_runs_train_and_change_no_number_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)  # the test session turns it on (conftest)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the numbers compared are a CPU's, on a CUDA machine too
    seen = []
    run_one = GridRunner.run_one

    def spy(self, spec, *args):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return run_one(self, spec, *args)

    monkeypatch.setattr(GridRunner, "run_one", spy)
    torch.backends.cudnn.benchmark = True  # a setting of the caller's that the runs must not see, and get back
    try:
        plain = run(tmp_path, "plain")
        fixed = run(tmp_path, "deterministic", "--deterministic")
        after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                 torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    finally:
        torch.backends.cudnn.benchmark = False
    assert seen == [(False, False, True, None), (True, True, False, ":4096:8")]
    assert after == (False, False, True, None)
    assert [r["environment"]["deterministic_kernels"] for r in (plain, fixed)] == [False, True]
    assert fixed["config_hash"] == plain["config_hash"]  # how it ran, not what it is
    assert outcome(fixed) == outcome(plain)


def test_records_name_the_ops_that_ran_without_a_deterministic_kernel_in_every_run(tmp_path, monkeypatch, caplog):
    """On a CPU, put_ (accumulate=False) has no deterministic kernel: torch warns each time it runs, and each
    run's record must name it, the second run's too (a warning shown once per place would hide it there), with
    --quiet too, while other warnings are shown as before."""
    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)
    run_scheme = runner.run_scheme

    def with_alerts(context):
        torch.zeros(4).put_(torch.tensor([1, 1]), torch.ones(2))  # an op torch alerts for under deterministic kernels
        # a warning of the project's own code (one that --quiet keeps), which must still be shown
        warnings.warn_explicit("a warning of our own", UserWarning, "train.py", 1, module="benchmark.train")
        return run_scheme(context)

    monkeypatch.setattr(runner, "run_scheme", with_alerts)
    with pytest.warns(UserWarning) as shown, caplog.at_level(logging.WARNING, logger="benchmark"):
        fixed = run_records(tmp_path, "deterministic", "--deterministic", seeds=(0, 1))
        plain = run(tmp_path, "plain")
    assert [r["environment"]["nondeterministic_ops"] for r in fixed] == [["put_"], ["put_"]]
    assert plain["environment"]["nondeterministic_ops"] is None  # not asked for: torch did not watch
    assert [str(w.message) for w in shown if "deterministic" not in str(w.message)] == ["a warning of our own"] * 3
    assert not any("does not have a deterministic" in str(w.message) for w in shown)
    assert sum("without a deterministic kernel: put_" in r.getMessage() for r in caplog.records) == 2


def test_the_environment_variable_asks_for_it_too_and_garbage_is_refused(monkeypatch):
    for text, expected in (("1", True), ("yes", True), (" TRUE ", True), ("0", False), ("no", False), ("", False)):
        monkeypatch.setenv(DETERMINISTIC_ENV, text)
        assert deterministic_requested() is expected
    assert deterministic_requested(False) is False  # the caller's choice wins
    monkeypatch.setenv(DETERMINISTIC_ENV, "sometimes")
    with pytest.raises(UserError, match=f"\\${DETERMINISTIC_ENV}='sometimes'"):
        deterministic_requested()


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch before 2.9")
def test_tf32_is_read_from_torchs_precision_settings_whichever_way_they_were_set():
    """Records and perf results say whether fp32 ran in TF32. Once torch's fp32_precision settings are used (as
    transformers' tf32 option and torch.set_float32_matmul_precision do), torch refuses the old allow_tf32 flags:
    reading those would fail the record of a finished run."""
    matmul, cudnn, conv = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.conv
    before = (torch.get_float32_matmul_precision(), matmul.fp32_precision, cudnn.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision, conv.fp32_precision = "ieee", "tf32"
        assert tf32_in_use() == {"matmul": False, "cudnn": True}
        torch.set_float32_matmul_precision("high")
        conv.fp32_precision, cudnn.fp32_precision = "none", "ieee"  # "none" defers to cuDNN's own setting
        assert tf32_in_use() == {"matmul": True, "cudnn": False}
    finally:
        torch.set_float32_matmul_precision(before[0])
        matmul.fp32_precision, cudnn.fp32_precision, conv.fp32_precision = before[1:]
