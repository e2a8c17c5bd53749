"""Many workers, one results folder: concurrent workers and submitit's local executor finish the smoke suite
with each run trained exactly once (from the claims log) and the serial run's numbers; a killed worker's
claim expires and another worker takes the run over and resumes it from its checkpoint; shards split a grid.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import need, pythonpath
from run_outcome import outcome

from benchmark import claims, cli, launch
from benchmark.checkpoint import Interrupted
from benchmark.claims import ClaimSettings, claim_events, parse_shard, select_shard, try_claim
from benchmark.config import load_suite
from benchmark.errors import UserError
from benchmark.launch import GridTask, make_executor
from benchmark.launch import workers as workers_module
from benchmark.records import SUPERSEDED, OutputError, atomic_write_bytes, record_path, set_aside

PROJECT = Path(__file__).resolve().parents[1]
GRID = ["--suite", "smoke", "--limit", "32", "--epochs", "1"]
SMOKE = [*GRID, "--quiet"]
ENV = {**os.environ, "PYTHONPATH": pythonpath(), "OMP_NUM_THREADS": "1"}


def outcomes(output: Path, suite: str = "smoke") -> dict[str, str]:
    """run_id → what it learned and scored (not timings, hosts or resume counts), as exact JSON."""
    records = (json.loads(path.read_text()) for path in sorted((output / "runs" / suite).glob("*.json")))
    return {record["run_id"]: outcome(record) for record in records}


def assert_each_trained_once(output: Path, run_ids) -> None:
    """From the claims log: every run completed exactly once, and no run was started by two workers."""
    events = claim_events(output, "smoke")
    completed = Counter(e["run_id"] for e in events if e["event"] == "release" and e["outcome"] == "completed")
    trained = Counter(e["run_id"] for e in events if e["event"] == "release" and e["outcome"] != "skipped")
    assert completed == Counter(list(run_ids)) and trained == completed, events
    assert not [e for e in events if e["event"] in ("takeover", "lost")]
    assert not list((output / "claims" / "smoke").glob("*.claim"))  # every claim released


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, str]:
    output = tmp_path_factory.mktemp("serial")
    # A subprocess with the workers' thread count: float sums (and so the numbers) depend on it.
    subprocess.run([sys.executable, "-m", "benchmark", "run", *SMOKE, "--output", str(output)], cwd=output, env=ENV,
                   check=True, capture_output=True, timeout=600)
    found = outcomes(output)
    assert len(found) == 6
    return found


@pytest.mark.slow
def test_three_concurrent_workers_train_each_run_once_with_the_serial_numbers(serial, tmp_path):
    command = [sys.executable, "-m", "benchmark", "run", *SMOKE, "--output", str(tmp_path)]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(3)]
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], logs
    assert outcomes(tmp_path) == serial
    assert_each_trained_once(tmp_path, serial)
    completed = sum(int(log.rsplit("smoke: ", 1)[1].split(" completed")[0]) for log in logs)
    assert completed == 6, logs


@pytest.mark.slow
def test_run_with_two_workers_trains_each_run_once_with_the_serial_numbers(serial, tmp_path):
    """`run --workers 2`: one command, two processes on this machine, the serial run's records."""
    result = subprocess.run([sys.executable, "-m", "benchmark", "run", *SMOKE, "--workers", "2", "--output",
                             str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcomes(tmp_path) == serial
    assert_each_trained_once(tmp_path, serial)
    workers = {e["worker"] for e in claim_events(tmp_path, "smoke") if e["event"] == "claim"}
    assert len(workers) == 2  # both workers trained runs
    printed = result.stdout
    assert printed.count("smoke: ") == 2 and sum(int(part.split(" completed")[0]) for part in
                                                  printed.split("smoke: ")[1:]) == 6


def processes_mentioning(text: str) -> list[str]:
    """The command lines of this machine's processes that contain `text` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in line:
            found.append(line)
    return found


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(),
                                reason="reads the process table from /proc (Linux)")


def start_two_workers(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """`run --workers 2` on the smoke grid, long enough to be stopped in, once both workers have claimed a run:
    (the command, in a session of its own as a shell's job would be; its results folder; its log)."""
    output = tmp_path / "out"
    command = [sys.executable, "-m", "benchmark", "run", "--suite", "smoke", "--epochs", "200", "--quiet",
               "--workers", "2", "--output", str(output)]
    log = tmp_path / "run.log"  # not a pipe: orphaned workers would hold it open
    with log.open("w") as sink:
        parent = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=sink, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + 300
    while len([e for e in claim_events(output, "smoke") if e["event"] == "claim"]) < 2:
        assert parent.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the workers claimed no runs in 300 s"
        time.sleep(0.05)
    return parent, output, log


def wait_for_workers_to_end(output: Path, seconds: float) -> list[str]:
    """Wait until no process names `output`; the ones still there after `seconds` are killed and returned."""
    deadline = time.monotonic() + seconds
    while (leftover := processes_mentioning(str(output))) and time.monotonic() < deadline:
        time.sleep(0.1)
    if leftover:  # never leave a stray worker behind, even when the test fails
        subprocess.run(["pkill", "-KILL", "-f", str(output)], check=False)
    return leftover


def assert_stopped_after_checkpoints(output: Path, log: str) -> None:
    """Every claimed run was released; the interrupted ones left the last.pt that the same command resumes from
    (a worker stopped at once, without its checkpoint, would leave none)."""
    events = claim_events(output, "smoke")
    claimed = [e["run_id"] for e in events if e["event"] == "claim"]
    released = {e["run_id"]: e["outcome"] for e in events if e["event"] == "release"}
    assert set(released) == set(claimed) and "interrupted" in released.values(), events
    assert not list((output / "claims" / "smoke").glob("*.claim"))
    for run_id, release in released.items():
        if release == "interrupted":
            assert (output / "checkpoints" / "smoke" / run_id / "last.pt").exists(), log
    assert "stopping at once" not in log


@pytest.mark.slow
@LINUX_PROC
def test_sigterm_as_timeout_sends_it_stops_every_worker_after_a_checkpoint(tmp_path):
    """SIGTERM sent to `run --workers 2` and then to its process group, as `timeout` sends it: the command passes
    it on, each worker checkpoints its run and releases it as interrupted (the second copy is the same request,
    not "stop at once"), and the command ends 143 once no worker is left (before, the workers trained on,
    orphaned, after the command had died)."""
    parent, output, log = start_two_workers(tmp_path)
    parent.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # (two copies pending at once would merge into one)
    os.killpg(parent.pid, signal.SIGTERM)
    try:
        parent.wait(timeout=120)
    finally:
        leftover = wait_for_workers_to_end(output, 0)
    assert not leftover, leftover
    assert parent.returncode == 128 + signal.SIGTERM, log.read_text()
    assert "run the same command again to resume" in log.read_text()
    assert "workers that failed" not in log.read_text()  # they stopped as asked
    assert_stopped_after_checkpoints(output, log.read_text())


@pytest.mark.slow
@LINUX_PROC
def test_workers_of_a_killed_command_checkpoint_and_stop(tmp_path):
    """SIGKILL leaves the command no chance to pass anything on: the kernel sends its workers SIGTERM
    (PR_SET_PDEATHSIG), so they checkpoint, release their runs and stop instead of training on, orphaned."""
    parent, output, log = start_two_workers(tmp_path)
    parent.kill()
    parent.wait()
    leftover = wait_for_workers_to_end(output, 120)
    assert not leftover, leftover
    assert_stopped_after_checkpoints(output, log.read_text())


STAND_IN_WORKER = """
import signal, sys, time
from pathlib import Path
def stop(signum, frame):
    Path(sys.argv[1]).write_text(signal.Signals(signum).name)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
Path(sys.argv[1] + ".ready").touch()
time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is a POSIX signal")
def test_sighup_to_the_command_reaches_every_worker_as_sigterm(tmp_path, monkeypatch):
    """A closed terminal (SIGHUP) stops `run --workers` as SIGTERM would: each worker gets SIGTERM (a worker
    killed by SIGHUP itself would stop without its checkpoint) and the command ends as interrupted, 129.
    The workers here are stand-ins that write down the signal they got."""
    real_popen = subprocess.Popen
    started = []

    def stand_in(command, **kwargs):
        started.append(tmp_path / f"worker{len(started)}")
        return real_popen([sys.executable, "-c", STAND_IN_WORKER, str(started[-1])], **kwargs)

    def hang_up_once_both_are_ready():
        deadline = time.monotonic() + 60
        while not (len(started) == 2 and all(Path(f"{p}.ready").exists() for p in started)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(workers_module.subprocess, "Popen", stand_in)
    handler = signal.getsignal(signal.SIGHUP)
    threading.Thread(target=hang_up_once_both_are_ready, daemon=True).start()
    with pytest.raises(Interrupted) as stopped:
        workers_module.run_workers(["run", *SMOKE], 2, [])
    assert stopped.value.exit_status == 128 + signal.SIGHUP
    assert [p.read_text() for p in started] == ["SIGTERM", "SIGTERM"]
    assert signal.getsignal(signal.SIGHUP) == handler  # the command's own handlers are back


def test_workers_get_their_threads_and_gpus(monkeypatch):
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 8)
    envs = workers_module.worker_environments(3, ["0", "1"], base={"PATH": "/bin"})
    assert [e[workers_module.WORKER_ENV] for e in envs] == ["0/3", "1/3", "2/3"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2"] * 3  # 8 cores // 3
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"] and all(e["PATH"] == "/bin" for e in envs)
    envs = workers_module.worker_environments(16, [], base={"OMP_NUM_THREADS": "1"})
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"1"} and "CUDA_VISIBLE_DEVICES" not in envs[0]
    # indices among the GPUs the command sees: a scheduler's allocation is kept (they chose GPUs 0 and 1 of all)
    envs = workers_module.worker_environments(2, ["0", "1"], base={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "5"]
    with pytest.raises(UserError, match="--gpus 4: this command sees 4 GPU"):
        workers_module.worker_environments(2, ["0", "4"], base={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    for hidden, seen in (("", 0), ("-1", 0), ("NoDevFiles", 0), ("0,-1,1", 1)):  # as CUDA reads them
        with pytest.raises(UserError, match=f"--gpus 1: this command sees {seen} GPU"):
            workers_module.worker_environments(1, ["1"], base={"CUDA_VISIBLE_DEVICES": hidden})
    assert workers_module.visible_gpus("GPU-a1, MIG-b2") == ["GPU-a1", "MIG-b2"]
    assert workers_module.parse_gpus("0, 2") == ["0", "2"]
    with pytest.raises(UserError, match="--gpus 'a,b' is not"):
        workers_module.parse_gpus("a,b")


def test_gpus_without_workers_is_a_user_error(capsys):
    assert cli.main(["run", *SMOKE, "--gpus", "0"]) == 2
    assert "add --workers" in capsys.readouterr().err


@pytest.mark.slow
def test_submit_local_executor_two_tasks_then_resubmit_submits_nothing(serial, tmp_path, capsys, monkeypatch):
    need("submitit", extra="slurm")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # submitit's local tasks inherit it: the serial run's thread count
    assert cli.main(["submit", *GRID, "--output", str(tmp_path), "--executor", "local", "--tasks", "2",
                     "--wait"]) == 0
    printed = capsys.readouterr().out
    assert "submitted 6 runs as 2 local tasks" in printed and printed.count("completed") == 2
    assert outcomes(tmp_path) == serial
    assert_each_trained_once(tmp_path, serial)
    assert len(list((tmp_path / "submitit" / "smoke").glob("*_log.out"))) == 2  # a log per task
    assert cli.main(["submit", *GRID, "--output", str(tmp_path), "--executor", "local"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


class PacedGridTask(GridTask):
    """The submitted task, its first attempt slowed by 1 s per training batch (numbers untouched), so that the run
    (32 batches) outlasts the local executor's time-limit signal on any machine; the requeued attempt runs at
    full speed."""

    def __call__(self, suite_path, overrides, run_ids, output, claim_timeout):
        from benchmark import train

        first = Path(output) / "first-attempt"
        if not first.exists():
            first.parent.mkdir(parents=True, exist_ok=True)
            first.touch()
            pixels = train.prepare_pixels
            train.prepare_pixels = lambda *a: (time.sleep(1.0), pixels(*a))[1]
        return super().__call__(suite_path, overrides, run_ids, output, claim_timeout)


@pytest.mark.slow
def test_a_task_at_its_time_limit_is_requeued_and_resumes_its_run(tmp_path, monkeypatch):
    """submitit signals a task (USR2) before its time limit: the task is requeued, not ended, and the requeued
    task resumes the run from its checkpoint to the numbers of an uninterrupted run (before: the run was
    recorded as failed, "Job not requeued because: timed-out and not checkpointable")."""
    need("submitit", extra="slurm")
    for name, value in {"OMP_NUM_THREADS": "1", "BENCHMARK_CHECKPOINT_EVERY": "2",
                        "PYTHONPATH": pythonpath(PROJECT, PROJECT / "tests")}.items():
        monkeypatch.setenv(name, value)  # the task's process inherits them (and imports this module from tests/)
    grid = {"datasets": ["breastmnist"], "models": ["resnet18_28"], "seeds": None, "epochs": 4, "batch_size": 8,
            "limit": 64, "data_root": None, "download": False}
    (spec,) = load_suite("smoke", **grid).runs
    executor = make_executor({**launch.DEFAULTS, "executor": "local", "time": 1, "cpus_per_task": 1, "sbatch": {}},
                             tmp_path / "submitit")
    job = executor.submit(PacedGridTask(), "smoke", grid, [spec.run_id], str(tmp_path / "task"), None)
    result = job.result()
    log = "".join(path.read_text() for path in (tmp_path / "submitit").glob("*_log.*"))
    assert "Calling checkpoint method" in log and "Requeued job" in log, log[-3000:]
    assert result["completed"] == [spec.run_id] and not result["failed"], result
    releases = [e["outcome"] for e in claim_events(tmp_path / "task", "smoke") if e["event"] == "release"]
    assert releases == ["interrupted", "completed"]  # the first attempt stopped, the requeued one finished the run
    assert record_path(tmp_path / "task", "smoke", spec.run_id).is_file()
    subprocess.run([sys.executable, "-m", "benchmark", "run", "--suite", "smoke", "--datasets", "breastmnist",
                    "--models", "resnet18_28", "--epochs", "4", "--batch-size", "8", "--limit", "64", "--quiet",
                    "--output", str(tmp_path / "plain")], cwd=tmp_path, env=ENV, check=True, timeout=600)
    assert outcomes(tmp_path / "task") == outcomes(tmp_path / "plain")


# `python -m benchmark` slowed down by 0.1 s per batch (numerics untouched), so it can be killed mid-run
PACED_CLI = ("import sys, time; from benchmark import train; from benchmark.cli import main; "
             "pixels = train.prepare_pixels; train.prepare_pixels = lambda *args: (time.sleep(0.1), pixels(*args))[1]; "
             "sys.exit(main(sys.argv[1:]))")


TIMEOUT = 10  # seconds: short for the test, long beside the commands it waits through on a loaded machine


@pytest.mark.slow
def test_a_hung_workers_run_is_taken_over_after_the_timeout_and_resumed(tmp_path, monkeypatch, capsys):
    """A worker that stops (SIGSTOP: alive, no heartbeats) keeps its run until the claim times out; then another
    worker takes it over and resumes it. (A killed worker of the same host is taken over at once: its pid is
    gone; test_resume's SIGKILL test reruns right away.)"""
    recipe = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 3, "batch_size": 8, "augment": "none"}
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "smoke", "data_root": "bundled", "datasets": ["breastmnist"],
                                          "models": [{"name": "vit_tiny", "recipe": recipe}]}))
    arguments = ["run", "--suite", str(suite_file), "--limit", "32", "--quiet", "--output", str(tmp_path)]
    run_id = load_suite(str(suite_file), limit=32).runs[0].run_id
    env = {**ENV, "BENCHMARK_CLAIM_TIMEOUT": str(TIMEOUT), "BENCHMARK_CLAIM_HEARTBEAT": "0.5"}
    monkeypatch.setenv("BENCHMARK_CLAIM_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("BENCHMARK_CLAIM_HEARTBEAT", "0.5")

    first = subprocess.Popen([sys.executable, "-c", PACED_CLI, *arguments], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "checkpoints" / "smoke" / run_id / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        status = ["status", "--suite", str(suite_file), "--limit", "32", "--output", str(tmp_path)]
        capsys.readouterr()
        assert cli.main(status) == 0
        assert f"running    {run_id}  {os.uname().nodename}:{first.pid}" in capsys.readouterr().out
        assert cli.main(arguments) == 0  # the claim is fresh: this worker leaves the run alone
        assert "1 left to other workers" in capsys.readouterr().out
        time.sleep(TIMEOUT + 0.5)
        assert cli.main(status) == 0
        assert f"stale      {run_id}" in capsys.readouterr().out
        assert cli.main(arguments) == 0  # takes the abandoned run over and resumes it
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "smoke").glob("*.json")]
    assert record["status"] == "completed" and record["resumed_from_epoch"] >= 1
    events = [(e["event"], e.get("outcome")) for e in claim_events(tmp_path, "smoke")]
    assert events == [("claim", None), ("takeover", None), ("release", "completed")]
    assert claim_events(tmp_path, "smoke")[1]["from"].endswith(f":{first.pid}")


@pytest.mark.slow
def test_a_stalled_worker_that_lost_its_claim_stops_at_once_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Fencing (issue 22): worker A stalls (SIGSTOP) past the claim timeout after its first checkpoint; B takes
    the run over, resumes it and finishes. A, continued, must notice at its next step or write and stop: the
    finished record and best.pt stay B's, no last.pt or temp file of A's appears, and a --force rerun starts
    over instead of resuming anything A left."""
    timeout = 5
    recipe = {"optimizer": "adamw", "lr": 1.0e-3, "epochs": 3, "batch_size": 8, "augment": "none"}
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "smoke", "data_root": "bundled", "datasets": ["breastmnist"],
                                          "models": [{"name": "vit_tiny", "recipe": recipe}]}))
    arguments = ["run", "--suite", str(suite_file), "--limit", "32", "--quiet", "--output", str(tmp_path),
                 "--checkpoint-every", "0"]
    run_id = load_suite(str(suite_file), limit=32).runs[0].run_id
    settings = {"BENCHMARK_CLAIM_TIMEOUT": str(timeout), "BENCHMARK_CLAIM_HEARTBEAT": "0.5"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    stalled = subprocess.Popen([sys.executable, "-c", PACED_CLI, *arguments], cwd=tmp_path, env={**ENV, **settings},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "checkpoints" / "smoke" / run_id
    deadline = time.monotonic() + 300
    while not (checkpoints / "last.pt").exists():
        assert stalled.poll() is None, stalled.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        time.sleep(timeout + 0.5)
        assert cli.main(arguments) == 0  # takes the run over, resumes it from A's checkpoint and finishes it
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    record = tmp_path / "runs" / "smoke" / f"{run_id}.json"
    finished = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (record, checkpoints / "best.pt")}
    assert json.loads(record.read_text())["resumed_from_epoch"] == 1
    out, err = stalled.communicate(timeout=120)
    assert stalled.returncode == 0, err
    assert "taken over by another worker while it ran" in err and "1 left to other workers" in out
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in finished} == finished
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file() and "claims" not in path.parts
                  ) == sorted([record.name, "best.pt", "suite.yaml"])
    events = [(e["event"], e["generation"], e.get("outcome")) for e in claim_events(tmp_path, "smoke")]
    assert events == [("claim", 0, None), ("takeover", 1, None), ("release", 1, "completed"), ("lost", 0, "lost")]

    capsys.readouterr()
    assert cli.main([*arguments, "--force"]) == 0
    rerun = json.loads(record.read_text())
    assert rerun["resumed_from_epoch"] == 0 and len(rerun["history"]) == 3


def test_of_two_workers_seeing_one_stale_claim_exactly_one_takes_it_over(tmp_path):
    settings = ClaimSettings(timeout=2.0, heartbeat=0.2)
    old = try_claim(tmp_path, "s", "run-a", settings)
    assert old is not None and try_claim(tmp_path, "s", "run-a", settings) is None  # held: nobody else
    old._stop.set()  # the worker hangs: no more heartbeats
    os.utime(old.path, (time.time() - 10, time.time() - 10))
    winner = try_claim(tmp_path, "s", "run-a", settings)
    assert winner is not None and winner.generation == 1
    assert try_claim(tmp_path, "s", "run-a", settings) is None  # the second worker sees the fresh takeover
    assert not old.held() and winner.held()  # the stalled worker learns it lost the run (writes nothing)
    winner.release("completed")
    old.release("lost")
    assert [e["event"] for e in claim_events(tmp_path, "s")] == ["claim", "takeover", "release", "lost"]
    assert not list((tmp_path / "claims" / "s").glob("*.claim"))


def test_an_empty_claim_ages_out_and_a_full_disk_stops_claiming_with_one_line(tmp_path, monkeypatch):
    """A worker stopped between creating its claim and writing it left an empty file that blocked the run for
    ever (unreadable: "busy"); now it is young, then abandoned. Claims are written then linked into place, so a
    full disk leaves no empty claim and stops with an OutputError (one line, exit 2), not a traceback."""
    settings = ClaimSettings(timeout=60.0, heartbeat=30.0)
    directory = tmp_path / "claims" / "s"
    directory.mkdir(parents=True)
    empty = directory / "run-a.0.claim"
    empty.touch()
    assert try_claim(tmp_path, "s", "run-a", settings) is None  # as young as a claim being written: wait
    os.utime(empty, (time.time() - 120, time.time() - 120))
    taken = try_claim(tmp_path, "s", "run-a", settings)
    assert taken is not None and taken.generation == 1
    assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    taken.release("completed")

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OutputError, match=r"^disk full while writing .*run-b\.0\.claim; free some space"):
        try_claim(tmp_path, "s", "run-b", settings)
    monkeypatch.undo()
    assert sorted(path.name for path in directory.iterdir()) == ["log.jsonl"]  # no claim, no temp file


def test_without_hard_links_claims_stay_exclusive_and_set_aside_copies(tmp_path, monkeypatch):
    """On a file system without hard links (os.link: EPERM) a claim is created exclusively then written, and a
    record set aside before a rerun is a copy that keeps the old bytes when the new record replaces it."""
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    settings = ClaimSettings(timeout=60.0, heartbeat=30.0)
    first = try_claim(tmp_path, "s", "run-a", settings)
    assert first is not None and json.loads(first.path.read_text())["pid"] == os.getpid()
    assert try_claim(tmp_path, "s", "run-a", settings) is None
    assert not claims._create_claim(first.path, {"worker": "a racing worker"})  # exclusive: the first one stays
    assert json.loads(first.path.read_text())["pid"] == os.getpid()
    first.release("completed")
    assert sorted(path.name for path in (tmp_path / "claims" / "s").iterdir()) == ["log.jsonl"]

    record = tmp_path / "runs" / "s" / "run-a.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"old": true}')
    kept = set_aside(record)
    assert kept.parent.name == SUPERSEDED and not kept.samefile(record)
    atomic_write_bytes(record, b'{"new": true}')
    assert kept.read_text() == '{"old": true}' and record.read_text() == '{"new": true}'


def test_shards_are_disjoint_deterministic_and_cover_the_grid():
    runs = load_suite("medmnist").runs
    shards = [select_shard(runs, parse_shard(f"{i}/4")) for i in range(4)]
    assert sorted(spec.run_id for shard in shards for spec in shard) == sorted(spec.run_id for spec in runs)
    assert shards == [select_shard(runs, (i, 4)) for i in range(4)]
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    settings = ClaimSettings(timeout=300.0, heartbeat=30.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    directory = tmp_path / "claims" / "s"
    directory.mkdir(parents=True)
    (directory / "run-a.0.claim").write_text(json.dumps({"worker": f"x:{dead.pid}", "host": os.uname().nodename,
                                                         "pid": dead.pid}))
    (directory / "run-b.0.claim").write_text(json.dumps({"worker": "elsewhere:1", "host": "another-host",
                                                         "pid": dead.pid}))
    taken = try_claim(tmp_path, "s", "run-a", settings)
    assert taken is not None and taken.generation == 1
    assert try_claim(tmp_path, "s", "run-b", settings) is None  # another host's pid says nothing: wait
    taken.release("completed")


def test_the_throughput_script_reads_each_runs_own_seconds_from_the_claims_log(tmp_path):
    """scripts/workers_throughput.py: runs/hour while N train at once = N / the mean claim-to-release seconds of
    the completed runs (an interrupted attempt and a run never released do not count)."""
    spec = importlib.util.spec_from_file_location("workers_throughput", PROJECT / "scripts" / "workers_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    log = tmp_path / "claims" / "smoke" / "log.jsonl"
    log.parent.mkdir(parents=True)
    events = [("00", "claim", "a", None), ("01", "claim", "b", None), ("04", "release", "a", "interrupted"),
              ("05", "claim", "a", None), ("07", "release", "b", "completed"), ("11", "release", "a", "completed"),
              ("12", "claim", "c", None)]
    log.write_text("".join(json.dumps({"time": f"2026-12-06T10:00:{second}.000+00:00", "event": event,
                                       "run_id": run_id, **({"outcome": released} if released else {})}) + "\n"
                           for second, event, run_id, released in events))
    seconds = script.run_seconds(tmp_path, "smoke")
    assert sorted(seconds) == [6.0, 6.0]  # b: 1 → 7, a's second attempt: 5 → 11
    assert script.packed_rate(2, seconds) == {"mean_run_seconds": 6.0, "runs_per_hour_packed": 1200.0}
    assert script.packed_rate(2, []) == {"mean_run_seconds": None, "runs_per_hour_packed": None}
    assert script.compare({}, {})["same_config_hashes"] is False  # no runs at all are not "identical to N=1"


def test_the_throughput_script_keeps_the_callers_pythonpath(tmp_path, monkeypatch):
    """The GPU check puts the packages the machine lacks (medmnist, …) on PYTHONPATH; the script's workers lost
    them (PYTHONPATH was replaced by the checkout), so every run there failed to import medmnist."""
    spec = importlib.util.spec_from_file_location("workers_throughput", PROJECT / "scripts" / "workers_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setattr(script.subprocess, "run", lambda command, **kwargs: seen.update(kwargs["env"]) or
                        subprocess.CompletedProcess(command, 0, "", ""))
    script.measure(1, ["--suite", "smoke"], "smoke", None, tmp_path)
    assert seen["PYTHONPATH"].split(os.pathsep) == [str(PROJECT), str(tmp_path / "site")]
