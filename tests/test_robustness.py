"""Bad input and failed runs through `run`: one line on stderr that names the problem and the fix, exit
status 2, no traceback (unless --debug), and every result already written left byte-identical.

Every case trains into a copy of one finished output folder (a completed breastmnist record, seed 0) and
uses seed 1, so a run that does start is a new run beside the finished one, never a skipped one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import pythonpath
from medmnist import INFO

from benchmark import cli, runner
from benchmark.data.registry import BUNDLED_DIR, file_md5
from benchmark.errors import UserError

PROJECT = Path(__file__).resolve().parents[1]
SUITE = "robust"
TINY = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 1, "batch_size": 8, "augment": "none"}
MODEL = "vit_tiny"


def write_suite(folder: Path, datasets=("breastmnist",), recipe=None, models=None) -> Path:
    models = models or [{"name": MODEL, "recipe": {**TINY, **(recipe or {})}}]
    suite = {"name": SUITE, "data_root": "bundled", "seeds": [0], "datasets": list(datasets), "models": models}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def run(suite: Path | str, output: Path, *extra: str) -> int:
    return cli.main(["run", "--suite", str(suite), "--output", str(output), "--limit", "32", "--quiet", *extra])


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every result file (not the claims log, which records each attempt by design)."""
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).parts[0] != "claims"}


def records(output: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((output / "runs" / SUITE).glob("*.json"))]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    assert run(write_suite(folder), folder / "results") == 0
    return folder / "results"


@pytest.fixture
def results(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "results")
    return tmp_path / "results"


# --- bad input: each case builds its input under tmp_path and returns the extra `run` arguments ----------

def breastmnist_root(tmp_path: Path, change=None, content: bytes | None = None) -> Path:
    """A data root holding breastmnist.npz: the bundled file's arrays with `change(arrays)` applied, or `content`."""
    root = tmp_path / "data"
    root.mkdir()
    if content is not None:
        (root / "breastmnist.npz").write_bytes(content)
        return root
    with np.load(BUNDLED_DIR / "breastmnist.npz") as raw:
        arrays = dict(raw)
    if change:
        change(arrays)
    np.savez(root / "breastmnist.npz", **arrays)
    return root


def busi_root(tmp_path: Path, damage) -> Path:
    """An image folder of 6 bundled BUSI images per class, then `damage(root)`."""
    root = tmp_path / "busi_images"
    for name in ("benign", "malignant", "normal"):
        (root / name).mkdir(parents=True)
        for image in sorted((BUNDLED_DIR / "busi" / name).glob("*.png"))[:6]:
            shutil.copy(image, root / name / image.name)
    damage(root)
    return root


def npz_case(change=None, content=None):
    return lambda tmp_path, mp: [
        "--suite", str(write_suite(tmp_path)),
        "--data-root", str(breastmnist_root(tmp_path, change, content)),
    ]


def busi_case(damage):
    return lambda tmp_path, mp: [
        "--suite", str(write_suite(tmp_path, datasets=[{"name": "breast_ultrasound", "size": 28}])),
        "--data-root", str(busi_root(tmp_path, damage)),
    ]


def suite_case(**changes):
    return lambda tmp_path, mp: ["--suite", str(write_suite(tmp_path, **changes))]


def yaml_case(text: str):
    def build(tmp_path, mp):
        (tmp_path / "suite.yaml").write_text(text)
        return ["--suite", str(tmp_path / "suite.yaml")]
    return build


def set_key(key: str, value):
    def change(arrays):
        arrays[key] = value(arrays[key])
    return change


def empty_val(arrays):
    arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:0], arrays["val_labels"][:0]


def bad_labels(arrays):
    arrays["train_labels"][3] = 7


def unwritable_output(tmp_path, mp):
    mp.setattr(os, "access", lambda path, mode: False)
    return ["--suite", str(write_suite(tmp_path))]


def output_under_a_file(tmp_path, mp):
    (tmp_path / "a_file").write_text("")
    return ["--suite", str(write_suite(tmp_path)), "--output", str(tmp_path / "a_file" / "results")]


BUNDLED_MD5 = file_md5(BUNDLED_DIR / "breastmnist.npz")
BAD_INPUT = {
    "unknown suite": (lambda tmp_path, mp: ["--suite", "smok"],
                      r"unknown suite 'smok'; did you mean 'smoke'\? available: .* \(or give a YAML path\)"),
    "unknown dataset": (suite_case(datasets=["breastmnst"]),
                        r"suite\.yaml: unknown dataset 'breastmnst'; did you mean 'breastmnist' or 'retinamnist' or "
                        r"'pathmnist'\? \(see `python -m benchmark list`\)"),
    "unknown model": (suite_case(models=[{"name": "vit_tiy"}]),
                      r"unknown model 'vit_tiy'; did you mean 'vit_tiny'\? use a preset from "
                      r"`python -m benchmark list`"),
    "malformed YAML": (yaml_case("name: x\ndatasets: [breastmnist\nmodels: [vit_tiny]\n"),
                       r"suite\.yaml: malformed YAML at line 3, column 7; fix the syntax"),
    "negative lr": (suite_case(recipe={"lr": -0.001}),
                    r"models\.vit_tiny\.recipe\.lr must be > 0 and finite \(got -0\.001\); fix it in the suite file"),
    "unknown size": (suite_case(datasets=[{"name": "breastmnist", "size": 30}]),
                     r"datasets\.breastmnist\.size: '30' is not one of 28, 64, 128, 224"),
    "zero epochs": (suite_case(recipe={"epochs": 0}),
                    r"recipe\.epochs must be > 0 and finite \(got 0\); fix it in the suite file"),
    "batch larger than the split": (suite_case(recipe={"batch_size": 64}),
                                    r"suite\.yaml: models\.vit_tiny \(limit 32\): batch_size 64 is larger than the "
                                    r"32-image train split; pass --batch-size 32 or a larger --limit \(or lower "
                                    r"batch_size in the suite's recipe\)"),
    "unknown key": (suite_case(recipe={"epoch": 2}),
                    r"models\.vit_tiny\.recipe: unknown key 'epoch'; did you mean 'epochs'\?"),
    "not a list": (yaml_case("datasets: breastmnist\nmodels: [vit_tiny]\n"),
                   r"suite\.yaml: `datasets:` must be a list, got str; fix it in the suite file"),
    "missing file, downloads off": (lambda tmp_path, mp: ["--suite", str(write_suite(tmp_path)),
                                                          "--data-root", str(tmp_path)],
                                    r"breastmnist\.npz not found; pass --download to fetch it, or point --data-root "
                                    r"at a folder holding it"),
    "MD5 mismatch": (npz_case(content=(BUNDLED_DIR / "breastmnist.npz").read_bytes()),
                     rf"breastmnist\.npz: MD5 mismatch \(expected {INFO['breastmnist']['MD5']}, got {BUNDLED_MD5}\); "
                     r".*delete it and re-download it with --download"),
    "truncated npz": (npz_case(content=(BUNDLED_DIR / "breastmnist.npz").read_bytes()[:5000]),
                      r"breastmnist\.npz: cannot read it as an npz file \(.*\); it is truncated or corrupt: delete it "
                      r"and re-download it with --download"),
    "corrupt npz": (npz_case(content=b"this is not a zip archive" * 40),
                    r"breastmnist\.npz: cannot read it as an npz file \(.*\); it is truncated or corrupt"),
    "wrong shape": (npz_case(set_key("train_images", lambda a: a[:, :27, :27])),
                    r"breastmnist\.npz \(train\): images have shape \(32, 27, 27\), expected \(N, 28, 28\)"),
    "wrong dtype": (npz_case(set_key("test_images", lambda a: a.astype(np.float32))),
                    r"breastmnist\.npz \(test\): images have dtype float32, expected uint8"),
    "labels out of range": (npz_case(bad_labels),
                            r"breastmnist\.npz \(train\): labels span \[0, 7\], expected values in \[0, 2\) "
                            r"for 2 classes"),
    "empty split": (npz_case(empty_val),
                    r"breastmnist\.npz \(val\): split is empty; every split needs at least one image"),
    "zero-byte image": (busi_case(lambda root: (root / "benign" / "blank.png").write_bytes(b"")),
                        r"benign/blank\.png: image file is empty \(0 bytes\); replace or remove it"),
    "corrupt image": (busi_case(lambda root: (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" * 9)),
                      r"normal/broken\.png: cannot read the image \(.*\); replace or remove the file"),
    "class folder without images": (busi_case(lambda root: (root / "other").mkdir()),
                                    r"busi_images/other: class folder has no images \(\.png, \.jpg, \.jpeg\); add "
                                    r"images or remove the folder"),
    "output not writable": (unwritable_output,
                            r"output folder .*results is not writable; fix its permissions or choose another --output"),
    "output under a file": (output_under_a_file,
                            r"cannot create output folder .*a_file/results: Not a directory; choose another --output"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_keeps_results(case, results, tmp_path, monkeypatch, capsys):
    build, expected = BAD_INPUT[case]
    before = snapshot(results)
    status = run("unused", results, "--seeds", "1", *build(tmp_path, monkeypatch))
    message = one_line_error(capsys)
    assert status == 2
    assert re.fullmatch(f"error: .*{expected}.*", message), message
    after = snapshot(results)
    assert {path: after.get(path) for path in before} == before


def test_a_failed_run_is_recorded_and_the_grid_goes_on(results, tmp_path, capsys):
    """A model that cannot be loaded fails its run (recorded, epoch 0); the next run still completes."""
    ghost = str(tmp_path / "no_such_model")
    (tmp_path / "no_such_model").mkdir()  # there (so the grid starts), but its config cut short
    (tmp_path / "no_such_model" / "config.json").write_text("{")
    suite = write_suite(tmp_path, models=[{"name": "ghost", "source": ghost, "recipe": TINY},
                                          {"name": MODEL, "recipe": TINY}])
    assert run(suite, results, "--seeds", "1") == 2
    message = (f"model 'ghost': cannot load '{ghost}' (OSError); without internet, point `source:` at a local "
               f"directory made with save_pretrained, or pre-download it into the HF cache")
    assert one_line_error(capsys) == f"error: {message}"
    by_run = {(r["config"]["model"]["name"], r["seed"]): r for r in records(results)}
    assert by_run.keys() == {("ghost", 1), (MODEL, 1), (MODEL, 0)}
    assert by_run[("ghost", 1)]["status"] == "failed"
    assert by_run[("ghost", 1)]["error"] == {"type": "UserError", "message": message, "epoch": 0, "traceback": None}
    assert by_run[(MODEL, 1)]["status"] == by_run[(MODEL, 0)]["status"] == "completed"


def test_full_disk_stops_the_grid_and_the_same_command_then_finishes(results, tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path)
    before = snapshot(results)
    real_replace = os.replace

    def full_disk(src, dst, **kwargs):  # the disk fills up when the first new record is written
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    assert run(suite, results, "--seeds", "1,2") == 2
    message = one_line_error(capsys)
    assert re.fullmatch(r"error: disk full while writing .*/runs/robust/breastmnist-28-vit_tiny-s1-\w{8}\.json; "
                        r"free some space or choose another --output, then run the same command again to resume",
                        message), message
    after = snapshot(results)
    assert {path: after.get(path) for path in before} == before
    assert not list(results.rglob("*.tmp"))
    assert not list((results / "checkpoints" / SUITE).glob("*-s2-*"))  # the grid stopped: seed 2 never started

    monkeypatch.undo()
    assert run(suite, results, "--seeds", "1,2") == 0
    resumed = {r["seed"]: r["resumed_from_epoch"] for r in records(results)}
    assert resumed == {0: 0, 1: 1, 2: 0}  # seed 1 was not trained again: its last checkpoint was complete


def out_of_memory_models(monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = runner.build_model

    def build(*args):
        built = real_build(*args)

        def forward(pixel_values):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        built.module.forward = forward
        return built

    monkeypatch.setattr(runner, "build_model", build)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_out_of_memory_is_a_failed_run_with_a_hint(fail_fast, results, tmp_path, monkeypatch, capsys):
    out_of_memory_models(monkeypatch)
    before = snapshot(results)
    status = run(write_suite(tmp_path), results, "--seeds", "1,2", *(["--fail-fast"] if fail_fast else []))
    hint = ("out of memory in epoch 1 at batch_size 8; lower batch_size (and raise grad_accum_steps to keep the "
            "effective batch) in the recipe")
    assert status == 2
    assert one_line_error(capsys) == f"error: {hint}" + ("" if fail_fast else " (and 1 more failed runs)")
    failed = [r for r in records(results) if r["status"] == "failed"]
    assert [r["seed"] for r in failed] == ([1] if fail_fast else [1, 2])
    assert all(r["error"] == {"type": "TrainingFailed", "message": hint, "epoch": 1, "traceback": None}
               for r in failed)
    after = snapshot(results)
    assert {path: after.get(path) for path in before} == before


def test_non_finite_loss_stops_the_run_with_its_epoch(results, tmp_path, capsys):
    suite = write_suite(tmp_path, recipe={"optimizer": "sgd", "lr": 1.0e6, "schedule": "constant", "epochs": 3})
    assert run(suite, results, "--seeds", "1") == 2
    message = one_line_error(capsys)
    found = re.fullmatch(r"error: (training|validation) loss became (nan|inf) in epoch (\d); lower the learning rate "
                         r"\(or set max_grad_norm\) in the recipe", message)
    assert found, message
    (record,) = [r for r in records(results) if r["status"] == "failed"]
    epoch = int(found.group(3))
    assert record["error"]["epoch"] == epoch and record["error"]["type"] == "TrainingFailed"
    assert [entry["epoch"] for entry in record["history"]] == list(range(1, epoch))
    assert "test" not in record


def test_a_bug_is_recorded_with_its_traceback_and_exits_1(results, tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(runner, "build_model", broken)
    assert run(write_suite(tmp_path), results, "--seeds", "1") == 1
    message = one_line_error(capsys)
    assert re.fullmatch(r"error: run breastmnist-28-vit_tiny-s1-\w{8} failed: RuntimeError: boom second line; its "
                        r"record holds the traceback \(or rerun with --debug\)", message), message
    (record,) = [r for r in records(results) if r["status"] == "failed"]
    assert record["error"]["message"] == "RuntimeError: boom second line"
    assert "in broken" in record["error"]["traceback"] and record["error"]["epoch"] == 0


def test_debug_raises_the_original_error_after_recording_it(results, tmp_path):
    data = breastmnist_root(tmp_path)  # the subset's arrays under the full file's name: found, then refused
    with pytest.raises(UserError, match="MD5 mismatch"):
        run(write_suite(tmp_path), results, "--seeds", "1", "--data-root", str(data), "--debug")
    (record,) = [r for r in records(results) if r["status"] == "failed"]
    assert "MD5 mismatch" in record["error"]["message"]


def test_cli_prints_one_line_without_traceback(tmp_path):
    suite = write_suite(tmp_path, datasets=["breastmnst"])
    command = [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--output", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": pythonpath()}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("error: suite.yaml: unknown dataset 'breastmnst'; did you mean 'breastmnist' or "
                           "'retinamnist' or 'pathmnist'? (see `python -m benchmark list`)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["before the verb", "after the verb"])
def test_debug_lets_the_error_through_with_its_traceback(where, tmp_path):
    argv = ["run", "--suite", str(write_suite(tmp_path, datasets=["breastmnst"])), "--output", str(tmp_path / "out")]
    with pytest.raises(UserError, match="unknown dataset 'breastmnst'"):
        cli.main(["--debug", *argv] if where == "before the verb" else [*argv, "--debug"])
