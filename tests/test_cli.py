"""First contact and the Python API under the CLI: --help, the inputs a grid needs checked before its first run,
messages through `logging` (--quiet / --verbose), `--track tensorboard`, a torch-free `import benchmark`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import need, pythonpath

import benchmark
from benchmark import cli

PROJECT = Path(__file__).resolve().parents[1]
TINY = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 2, "batch_size": 8, "augment": "none"}


def write_suite(folder: Path, datasets=("breastmnist",), models=None, data_root="bundled") -> Path:
    models = models or [{"name": "vit_tiny", "recipe": TINY}]
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "data_root": data_root, "seeds": [0], "datasets": list(datasets),
                                    "models": models}))
    return path


def test_help_says_what_the_tool_does(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "Train and compare image classifiers on MedMNIST" in out
    assert all(verb in out for verb in ("run", "list", "status", "leaderboard", "figures", "perf"))
    assert "Command line: parse" not in out  # not the module's developer docstring


def test_medmnist_suite_without_data_lists_every_missing_file_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    output = tmp_path / "results"
    status = cli.main(["run", "--suite", "medmnist", "--data-root", str(empty), "--models", "resnet18_28,resnet18_224",
                       "--output", str(output)])
    err = capsys.readouterr().err.splitlines()
    assert status == 2
    assert err == [f"error: {empty}/{flag}.npz not found; pass --download to fetch it, or point --data-root at a "
                   f"folder holding it" for flag in ("bloodmnist", "breastmnist", "pathmnist", "retinamnist")] + [
        f"error: {empty}: no class folders; expected <class>/ subfolders of images (benign/, malignant/, normal/ "
        f"for BUSI)"]
    assert not output.exists()


def test_a_missing_local_model_directory_is_found_before_the_first_run(tmp_path, capsys):
    ghost = tmp_path / "my-vit"
    suite = write_suite(tmp_path, datasets=["breastmnist", "bloodmnist"],
                        models=[{"name": "vit_tiny", "recipe": TINY}, {"name": "mine", "source": str(ghost)}])
    status = cli.main(["run", "--suite", str(suite), "--output", str(tmp_path / "results"), "--quiet"])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: bloodmnist.npz is not bundled (the package ships breastmnist.npz, retinamnist.npz); point --data-root "
        "at a folder holding it, or leave --data-root unset and pass --download",
        f"error: model 'mine': local directory {ghost} not found; point `source:` at a folder made with "
        f"save_pretrained"]
    assert not (tmp_path / "results").exists()


def test_import_benchmark_does_not_import_torch():
    code = "import sys, benchmark; assert 'torch' not in sys.modules; print(benchmark.__all__)"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": pythonpath()},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {"load_suite", "run_suite", "run_perf", "PerfConfig"} <= set(eval(done.stdout))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, module_logs):
    """One tiny run through the API with tensorboard tracking, its messages captured from the logger."""
    need("tensorboard", extra="track")
    root = tmp_path_factory.mktemp("tracked")
    suite = benchmark.load_suite(str(write_suite(root)), limit=32)
    logging.getLogger("benchmark").setLevel(logging.INFO)  # what a notebook user sets to see the messages
    summary = benchmark.run_suite(suite, root / "results", quiet=True, track="tensorboard")
    (record_file,) = (root / "results" / "runs" / "cli").glob("*.json")
    return root, summary, json.loads(record_file.read_text()), list(module_logs.messages)


def test_run_suite_returns_the_summary_and_logs_its_messages(tracked):
    _, summary, record, messages = tracked
    assert summary.completed == [record["run_id"]] and not summary.failed and not summary.skipped
    assert messages[0] == f"[1/1] {record['run_id']}: running"
    for entry in record["history"]:
        assert (f"{record['run_id']} epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, "
                f"val auc {entry['val']['auc']:.4f}") in messages


def test_track_tensorboard_logs_each_epochs_metrics_and_learning_rate(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, record, _ = tracked
    events = EventAccumulator(str(root / "results" / "tensorboard" / "cli" / record["run_id"]))
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    history = record["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    expected = {"train/loss": [e["train_loss"] for e in history], "lr": [e["lr"] for e in history],
                **{f"val/{name}": [e["val"][name] for e in history] for name in ("loss", "acc", "auc")}}
    for tag, values in expected.items():
        assert [step for step, _ in logged[tag]] == [1, 2], tag
        assert [value for _, value in logged[tag]] == pytest.approx(values, rel=1e-6), tag
    assert history[0]["lr"] != history[1]["lr"]  # the cosine schedule moves: a wrong epoch's lr would show


def test_quiet_and_verbose_set_what_the_cli_prints(tracked, capsys):
    root, _, record, _ = tracked
    argv = ["run", "--suite", str(root / "suite.yaml"), "--limit", "32", "--output", str(root / "results")]
    assert cli.main([*argv, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "0 completed, 1 skipped" in quiet.out
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == f"[1/1] {record['run_id']}: done already, skipped\n"


def test_a_library_user_silences_or_redirects_the_messages(tracked, caplog):
    root, *_ = tracked
    logger = logging.getLogger("benchmark")
    logger.setLevel(logging.WARNING)
    benchmark.run_suite(str(root / "suite.yaml"), root / "results", limit=32)
    assert not [r for r in caplog.records if r.name.startswith("benchmark")]
    logger.setLevel(logging.INFO)
    benchmark.run_suite(str(root / "suite.yaml"), root / "results", limit=32)
    assert [r.getMessage() for r in caplog.records if r.name == "benchmark.runner"] == [
        f"[1/1] {tracked[2]['run_id']}: done already, skipped"]
    logger.setLevel(logging.NOTSET)


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`benchmark list | head -1`: the pipe closes before the listing ends; the verb stops quietly (status 1)."""
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    reader = subprocess.Popen([sys.executable, "-m", "benchmark", "list"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
    reader.stdout.close()  # as `head -1` does once it has its line: every write of the listing finds no reader
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
