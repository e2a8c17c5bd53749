"""Resume and idempotence: a run killed at any point ends, when the same command runs again, with exactly one
record bit-identical (on CPU) to an uninterrupted run's; finished runs are skipped, failed ones redone once.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import pythonpath
from run_outcome import outcome

from benchmark import checkpoint, cli, records, runner
from benchmark.claims import ClaimSettings, claim_events, try_claim
from benchmark.config import load_suite
from benchmark.errors import UserError
from benchmark.records import completed_hashes, load_records, timing_line

PROJECT = Path(__file__).resolve().parents[1]
SUITE = "resume"
# `python -m benchmark` with a 0.1 s pause per batch (numerics untouched), so every epoch lasts long enough
# to be killed in, however fast the machine
PACED_CLI = ("import sys, time; from benchmark import train; from benchmark.cli import main; "
             "pixels = train.prepare_pixels; train.prepare_pixels = lambda *args: (time.sleep(0.1), pixels(*args))[1]; "
             "sys.exit(main(sys.argv[1:]))")
RECIPE = {"optimizer": "adamw", "lr": 1.0e-3, "schedule": "cosine", "epochs": 3, "batch_size": 8,
          "augment": "tutorial"}


def write_suite(folder: Path, dataset: str = "breastmnist", seeds=(0,)) -> Path:
    suite = {"name": SUITE, "data_root": "bundled", "seeds": list(seeds), "datasets": [dataset],
             "models": [{"name": "vit_tiny", "recipe": RECIPE}]}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def arguments(suite: Path, output: Path, limit: int = 32) -> list[str]:
    return ["run", "--suite", str(suite), "--output", str(output), "--limit", str(limit), "--quiet"]


def record_files(output: Path) -> list[Path]:
    return sorted((output / "runs" / SUITE).glob("*.json"))


def only_record(output: Path) -> dict:
    (path,) = record_files(output)
    return json.loads(path.read_text())


def only_record_of(output: Path, run_id: str) -> dict:
    return json.loads((output / "runs" / SUITE / f"{run_id}.json").read_text())


@pytest.fixture(scope="module")
def paced(tmp_path_factory) -> tuple[Path, dict]:
    """The suite the kill tests run (RetinaMNIST, 40 images, 3 epochs) and its uninterrupted record."""
    folder = tmp_path_factory.mktemp("paced")
    suite = write_suite(folder, dataset="retinamnist")
    assert cli.main(arguments(suite, folder / "reference", limit=40)) == 0
    return suite, only_record(folder / "reference")


def start_paced(suite: Path, output: Path, env: dict | None = None,
                slow_fsync: bool = False) -> tuple[subprocess.Popen, Path]:
    """The run as a paced subprocess (`slow_fsync`: every file write also waits 1 s before its fsync, as on a slow
    disk) and the checkpoint folder it writes."""
    code = PACED_CLI if not slow_fsync else (
        "import os, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep(1.0), fsync(fd))[1]; " + PACED_CLI)
    command = [sys.executable, "-c", code, *arguments(suite, output, limit=40)]
    env = {**os.environ, "PYTHONPATH": pythonpath(), **(env or {})}
    process = subprocess.Popen(command, cwd=output.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_id = load_suite(str(suite), limit=40).runs[0].run_id
    return process, output / "checkpoints" / SUITE / run_id


def wait_for(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.02)


def resume_and_check(suite: Path, output: Path, reference: dict, resumed_from: int) -> None:
    """The same command again: one record, resumed where the checkpoint says, with the uninterrupted numbers."""
    again = subprocess.run([sys.executable, "-c", PACED_CLI, *arguments(suite, output, limit=40)], cwd=output.parent,
                           env={**os.environ, "PYTHONPATH": pythonpath()}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    resumed = only_record(output)
    assert resumed["resumed_from_epoch"] == resumed_from and reference["resumed_from_epoch"] == 0
    assert outcome(resumed) == outcome(reference)
    assert not list(output.rglob("*.tmp"))
    (checkpoints,) = (output / "checkpoints" / SUITE).iterdir()
    assert [path.name for path in checkpoints.iterdir()] == ["best.pt"]


def test_sigkill_mid_epoch_then_the_same_command_ends_with_the_same_single_record(paced, tmp_path):
    suite, reference = paced
    output = tmp_path / "killed"
    process, checkpoints = start_paced(suite, output)
    wait_for(process, (checkpoints / "last.pt").exists, "checkpoint")
    time.sleep(0.25)  # into the next epoch's training (5 batches of at least 0.1 s)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not record_files(output)
    killed_after = torch.load(checkpoints / "last.pt", weights_only=False)["loop"]["epoch"]
    assert killed_after in (1, 2)
    # what a kill during a write leaves: hidden temp files beside the checkpoint and the record
    (checkpoints / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (output / "runs" / SUITE).mkdir(parents=True)
    (output / "runs" / SUITE / f".{checkpoints.name}.json.k1ll3d.tmp").write_text('{"status": "comp')
    resume_and_check(suite, output, reference, killed_after)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(paced, tmp_path):
    suite, reference = paced
    output = tmp_path / "killed"
    process, checkpoints = start_paced(suite, output, slow_fsync=True)
    wait_for(process, (checkpoints / "last.pt").exists, "checkpoint")
    wait_for(process, lambda: list(checkpoints.glob(".last.pt.*.tmp")), "second checkpoint write")
    os.kill(process.pid, signal.SIGKILL)  # while the writer thread waits in fsync: the temp file is complete
    process.communicate()
    assert process.returncode == -signal.SIGKILL and list(checkpoints.glob(".last.pt.*.tmp"))
    assert torch.load(checkpoints / "last.pt", weights_only=False)["loop"]["epoch"] == 1
    resume_and_check(suite, output, reference, 1)


@pytest.mark.slow
def test_sigterm_checkpoints_inside_the_epoch_and_exits_then_the_run_resumes_there(paced, tmp_path):
    suite, reference = paced
    output = tmp_path / "stopped"
    process, checkpoints = start_paced(suite, output)
    wait_for(process, (checkpoints / "last.pt").exists, "checkpoint")
    time.sleep(0.25)  # into epoch 2's training
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert "interrupted; run the same command again to resume" in stderr.decode()
    assert not record_files(output)
    saved = torch.load(checkpoints / "last.pt", weights_only=False)["loop"]
    assert saved["epoch"] == 1 and saved["in_epoch"]["epoch"] == 2 and 0 < saved["in_epoch"]["batch"] < 5
    (event,) = [e for e in claim_events(output, SUITE) if e["event"] == "release"]
    assert event["outcome"] == "interrupted"
    resume_and_check(suite, output, reference, 1)


def test_resuming_from_any_checkpoint_is_bit_identical(tmp_path, monkeypatch, capsys):
    """A checkpoint at every optimizer step (--checkpoint-every 1e-9): resumed from epoch ends and from inside
    epochs, the run ends bit-identical; a damaged checkpoint, one of another attempt and --no-resume start over."""
    suite = write_suite(tmp_path)
    saved = []  # every last.pt as written
    real_save = checkpoint.atomic_torch_save

    def save_and_keep(obj, path, fence=None):
        real_save(obj, path, fence)
        if path.name == "last.pt":
            saved.append(path.read_bytes())

    monkeypatch.setattr(checkpoint, "atomic_torch_save", save_and_keep)
    assert cli.main(arguments(suite, tmp_path / "reference") + ["--epochs", "2", "--checkpoint-every", "1e-9"]) == 0
    monkeypatch.undo()
    reference = only_record(tmp_path / "reference")
    run_id = reference["run_id"]
    assert [p.name for p in (tmp_path / "reference" / "checkpoints" / SUITE / run_id).iterdir()] == ["best.pt"]
    assert reference["timing"]["checkpoints_written"] == len(saved) == 8  # 4 steps an epoch, 2 epochs

    def loop(content: bytes) -> dict:
        return torch.load(io.BytesIO(content), weights_only=False)["loop"]

    positions = [(loop(c)["epoch"], (loop(c)["in_epoch"] or {}).get("batch")) for c in saved]
    assert positions == [(0, 1), (0, 2), (0, 3), (1, None), (1, 1), (1, 2), (1, 3), (2, None)]
    at = dict(zip(positions, saved))
    record_path = tmp_path / "reference" / "runs" / SUITE / f"{run_id}.json"
    other_attempt = torch.load(io.BytesIO(at[1, 2]), weights_only=False)
    other_attempt["attempt"] = checkpoint.attempt_of(record_path)  # a --force rerun of the reference, killed
    cases = [("epoch-1", at[1, None], [], 1, False),
             ("mid-epoch-1", at[0, 2], [], 0, False),
             ("mid-epoch-2", at[1, 3], [], 1, False),
             ("epoch-2", at[2, None], [], 2, False),  # killed before the record
             ("no-resume", at[1, None], ["--no-resume"], 0, False),
             ("damaged", at[1, None][:1000], [], 0, False),  # a copy cut short
             ("stray", at[1, None], ["--force"], 0, True),  # written for the first attempt, after its record
             ("forced", _torch_bytes(other_attempt), ["--force"], 1, True)]
    for name, content, extra, resumed_from, with_record in cases:
        output = tmp_path / name
        checkpoints = output / "checkpoints" / SUITE / run_id
        checkpoints.mkdir(parents=True)
        (checkpoints / "last.pt").write_bytes(content)
        if with_record:
            (output / "runs" / SUITE).mkdir(parents=True)
            (output / "runs" / SUITE / record_path.name).write_bytes(record_path.read_bytes())
        assert cli.main(arguments(suite, output) + ["--epochs", "2", *extra]) == 0
        record = only_record(output)
        assert record["resumed_from_epoch"] == resumed_from, name
        assert outcome(record) == outcome(reference), name
        assert [p.name for p in checkpoints.iterdir()] == ["best.pt"], name
        kept = torch.load(checkpoints / "best.pt", weights_only=False)
        assert kept["epoch"] == record["best_epoch"], name
    printed = capsys.readouterr().err
    assert f"warning: ignoring damaged checkpoint {tmp_path / 'damaged' / 'checkpoints'}" in printed
    assert f"{tmp_path / 'stray' / 'checkpoints'}" in printed and "another attempt" in printed


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_finished_runs_are_skipped_forced_reruns_keep_the_old_record(tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path)
    output = tmp_path / "results"
    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    (first,) = record_files(output)
    first_bytes = first.read_bytes()
    capsys.readouterr()

    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    assert capsys.readouterr().out.endswith(f"{SUITE}: 0 completed, 1 skipped (done before), 0 failed; records in "
                                            f"{output / 'runs' / SUITE}\n")
    assert first.read_bytes() == first_bytes

    # a done run's leftover last.pt (its process died before pruning) is pruned only under the run's claim: while
    # another worker holds it (a --force rerun), that worker's last.pt stays
    leftover = output / "checkpoints" / SUITE / first.stem / "last.pt"
    leftover.write_bytes(b"a concurrent rerun's checkpoint")
    rerun = try_claim(output, SUITE, first.stem, ClaimSettings())
    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    assert leftover.exists()
    rerun.release("completed")
    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    assert not leftover.exists() and leftover.with_name("best.pt").exists()
    assert [event["event"] for event in claim_events(output, SUITE)][-2:] == ["claim", "release"]
    capsys.readouterr()

    assert cli.main(arguments(suite, output) + ["--epochs", "1", "--force", "--keep-checkpoints", "none"]) == 0
    assert record_files(output) == [first]
    (old,) = (output / "runs" / SUITE / "superseded").glob("*.json")
    assert old.read_bytes() == first_bytes
    assert outcome(json.loads(first.read_text())) == outcome(json.loads(first_bytes))
    assert not (output / "checkpoints" / SUITE / first.stem).exists()

    # a forced rerun whose record cannot be written (disk full) leaves the finished record where it was
    # (it used to be moved to superseded/ first, leaving runs/ without it)
    finished = first.read_bytes()

    def disk_full(path, record, fence=None):
        raise records.output_error(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(runner, "write_record", disk_full)
    assert cli.main(arguments(suite, output) + ["--epochs", "1", "--force", "--keep-checkpoints", "none"]) == 2
    assert first.read_bytes() == finished
    monkeypatch.undo()

    # superseded/ records are never results: with the live record gone the run is not done, and runs again
    first.unlink()
    assert load_records(output / "runs" / SUITE) == [] and not completed_hashes(output, SUITE)
    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    assert "1 completed, 0 skipped" in capsys.readouterr().out


def test_garbage_record_is_ignored_and_the_run_redone_once(tmp_path, caplog):
    suite = write_suite(tmp_path)
    output = tmp_path / "results"
    run_id = load_suite(str(suite), limit=32, epochs=1).runs[0].run_id
    garbage = output / "runs" / SUITE / f"{run_id}.json"
    garbage.parent.mkdir(parents=True)
    garbage.write_text('{"schema_version": 1, "status": "comp')  # a copy cut short
    assert cli.main(arguments(suite, output) + ["--epochs", "1"]) == 0
    assert re.search(f"skipping unreadable record .*{run_id}.json", caplog.text)  # a warning, shown with --quiet
    assert record_files(output) == [garbage]
    assert only_record(output)["status"] == "completed"
    (kept,) = (garbage.parent / "superseded").glob("*.json")
    assert kept.read_text() == '{"schema_version": 1, "status": "comp'


def test_status_counts_and_a_failed_run_redone_is_counted_once(tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path, seeds=(0, 1, 2))
    output = tmp_path / "results"
    grid = arguments(suite, output) + ["--epochs", "1"]
    ids = [spec.run_id for spec in load_suite(str(suite), limit=32, epochs=1).runs]
    hashes = [spec.config_hash for spec in load_suite(str(suite), limit=32, epochs=1).runs]
    assert cli.main(grid + ["--seeds", "0"]) == 0
    missing = "breastmnist.npz not found; pass --download to fetch it, or point --data-root at a folder holding it"

    def data_gone(*args, **kwargs):
        raise UserError(missing)

    with monkeypatch.context() as patch:
        patch.setattr(runner, "load_dataset", data_gone)
        assert cli.main(grid + ["--seeds", "1"]) == 2
    capsys.readouterr()
    status = ["status", "--suite", str(suite), "--output", str(output), "--limit", "32", "--epochs", "1"]

    assert cli.main(status) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [f"failed     {ids[1]}  {missing}", f"pending    {ids[2]}", f"{SUITE}: 1 done, 1 failed, 1 pending"]
    # a completed run: where its time went, from its record's timing block
    timing = only_record_of(output, ids[0])["timing"]
    shown = re.fullmatch(rf"completed  {ids[0]}  wall (\S+) s: train (\S+) s, eval (\S+) s, checkpoints (\S+) s "
                         rf"\((\S+) %, 1 written\), start-up (\S+) s", lines[0])
    assert shown, lines[0]
    keys = ("wall_seconds", "train_seconds", "eval_seconds", "checkpoint_seconds", "startup_seconds")
    for key, text in zip(keys, shown.group(1, 2, 3, 4, 6), strict=True):
        assert float(text) == pytest.approx(timing[key], abs=0.006, rel=0.05), key
    assert float(shown.group(5)) == pytest.approx(100 * timing["checkpoint_seconds"] / timing["wall_seconds"], abs=0.06)
    assert timing["train_seconds"] + timing["eval_seconds"] + timing["startup_seconds"] <= timing["wall_seconds"]
    assert completed_hashes(output, SUITE) == {hashes[0]}

    assert cli.main(grid + ["--seeds", "1"]) == 0  # the failed run is redone: the data is there now
    assert cli.main(status) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{SUITE}: 2 done, 0 failed, 1 pending"
    assert completed_hashes(output, SUITE) == set(hashes[:2])
    assert [path.stem for path in record_files(output)] == sorted(ids[:2])
    (failed,) = (output / "runs" / SUITE / "superseded").glob("*.json")
    assert json.loads(failed.read_text())["status"] == "failed"
    assert sorted(r["run_id"] for r in load_records(output, SUITE)) == sorted(ids[:2])

    assert cli.main(status[:-4]) == 0  # other settings (no --limit/--epochs): all pending, and it says why
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"{SUITE}: 0 done, 0 failed, 3 pending",
        f"(2 more record(s) in {output / 'runs' / SUITE} come from other settings; pass the same "
        f"--limit/--epochs/--seeds/--datasets/--models as the run)",
    ]


def test_timing_line_shows_the_parts_a_record_has():
    timing = {"wall_seconds": 225.04, "train_seconds": 209.5, "eval_seconds": 5.92, "checkpoint_seconds": 12.01,
              "checkpoints_written": 4, "startup_seconds": 8.06}
    assert timing_line(timing) == ("wall 225 s: train 210 s, eval 5.9 s, checkpoints 12.0 s (5.3 %, 4 written), "
                                   "start-up 8.1 s")
    assert timing_line({"wall_seconds": 12.3, "train_seconds": 10.1}) == "wall 12.3 s: train 10.1 s"  # an older record
    assert timing_line({"wall_seconds": 0.5}) == "wall 0.50 s" and timing_line(None) == ""


def test_a_failed_forced_rerun_keeps_the_finished_record(tmp_path, monkeypatch):
    suite = write_suite(tmp_path)
    output = tmp_path / "results"
    grid = arguments(suite, output) + ["--epochs", "1", "--seeds", "0"]
    assert cli.main(grid) == 0
    (record,) = record_files(output)
    finished = record.read_bytes()

    def data_gone(*args, **kwargs):
        raise UserError("breastmnist.npz not found; pass --download to fetch it")

    monkeypatch.setattr(runner, "load_dataset", data_gone)
    assert cli.main(grid + ["--force"]) == 2
    assert record_files(output) == [record] and record.read_bytes() == finished
    (failed,) = (record.parent / "superseded").glob(f"{record.stem}-failed-*.json")
    assert json.loads(failed.read_text())["error"]["message"] == "breastmnist.npz not found; pass --download to fetch it"


def deliver(signum: int) -> None:
    """Send `signum` to this process and let its Python handler run."""
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # the handler runs at the next bytecode boundary of the main thread


def test_a_signal_delivered_twice_at_once_is_one_stop_request_and_a_later_one_stops_at_once(monkeypatch):
    """`timeout` sends SIGTERM to its command and then to its process group (and `run --workers` passes signals
    on): the copies arriving together must not turn "stop after a checkpoint" into "stop at once"."""
    with checkpoint.stop_on_signals():
        deliver(signal.SIGTERM)
        deliver(signal.SIGTERM)  # the same request, delivered twice
        assert checkpoint.stop_requested() == signal.SIGTERM
        monkeypatch.setattr(checkpoint, "REPEAT_AFTER_SECONDS", 0.0)  # now it comes later: the user insists
        with pytest.raises(KeyboardInterrupt):
            deliver(signal.SIGINT)
    assert checkpoint.stop_requested() == 0


def test_a_run_checkpointed_with_more_gpus_visible_resumes_with_fewer(monkeypatch):
    """last.pt holds one CUDA RNG state per visible GPU; resuming under `--gpus` (one visible) raised IndexError
    on every retry: the states of the GPUs still visible are restored."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8) + i for i in range(8)]}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.extend(new))
    checkpoint.restore_rng_states(states)
    assert len(restored) == 1 and torch.equal(restored[0], states["cuda"][0])
