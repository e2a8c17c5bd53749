"""`benchmark run --workers N`: N worker processes on this machine share one grid (small runs packed on a device).

Each worker is the same `benchmark run` command in a process of its own, marked by $BENCHMARK_WORKER so that it
trains instead of starting workers again; the claims (`benchmark.claims`) give every run to exactly one of them,
so the records are those of one worker (same config hashes; on CPU the same numbers at the same thread count).

- Threads: each worker gets $OMP_NUM_THREADS when it is set, else the usable cores divided by N (at least one):
  N workers then use the cores one worker would. CPU numbers depend on the thread count (float sums), so compare
  with a serial run under the same $OMP_NUM_THREADS.
- GPUs: `--gpus 0,1` puts worker i on GPU `gpus[i % len(gpus)]` (CUDA_VISIBLE_DEVICES); without it every worker
  uses the GPU(s) the command sees, i.e. N workers share one device, which is the point for runs too small to fill it.

Stopping: the workers run in a process group of their own, so a signal reaches them once, through the command.
SIGTERM, SIGINT (Ctrl-C) or SIGHUP (a closed terminal) sent to the command is passed on to every worker (SIGHUP
as SIGTERM), which checkpoints its run and stops; the command waits for them and ends as an interrupted `run`
does (128 + the signal: 143, 130, 129). A worker whose command dies without passing anything on (SIGKILL) gets
SIGTERM from the kernel (Linux: PR_SET_PDEATHSIG), so no worker trains on, orphaned.

The command's exit status is otherwise the first non-zero status of a worker, 128 + N for one killed by signal N
(0 when every worker succeeded).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from benchmark.checkpoint import Interrupted
from benchmark.errors import UserError

WORKER_ENV = "BENCHMARK_WORKER"  # set in each worker: "i/N"
PARENT_ENV = "BENCHMARK_WORKER_PARENT"  # the pid of the command that started the worker
if sys.version_info >= (3, 11):
    OWN_PROCESS_GROUP = {"process_group": 0}
else:
    OWN_PROCESS_GROUP = {"preexec_fn": os.setpgrp} if hasattr(os, "setpgrp") else {}
# what the command passes on to its workers when it receives it (signal name -> the one passed on)
PASSED_ON = {"SIGTERM": "SIGTERM", "SIGINT": "SIGINT", "SIGHUP": "SIGTERM"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h

logger = logging.getLogger(__name__)


def is_worker() -> bool:
    """This process is one of `run --workers`' workers (it trains; it does not start workers)."""
    return bool(os.environ.get(WORKER_ENV))


def parse_gpus(text: str | None) -> list[str]:
    if not text:
        return []
    gpus = [item.strip() for item in text.split(",") if item.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UserError(f"--gpus {text!r} is not a comma-separated list of GPU indices such as 0,1")
    return gpus


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus(setting: str) -> list[str]:
    """The GPUs a CUDA_VISIBLE_DEVICES value shows, as CUDA reads it: indices or GPU-/MIG- UUIDs up to the first
    entry that is neither (so "", "-1" and "NoDevFiles" show none, and "0,-1,1" shows GPU 0 only)."""
    visible = []
    for item in (part.strip() for part in setting.split(",")):
        if not (item.isdigit() or item.startswith(("GPU-", "MIG-"))):
            break
        visible.append(item)
    return visible


def worker_environments(workers: int, gpus: list[str], base: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each worker: its index, its thread count and, with `gpus`, its GPU: an index among the
    GPUs this command sees (a scheduler's CUDA_VISIBLE_DEVICES=4,5,6,7 with --gpus 0,1 gives GPUs 4 and 5)."""
    base = dict(os.environ if base is None else base)
    if gpus and "CUDA_VISIBLE_DEVICES" in base:
        visible = visible_gpus(base["CUDA_VISIBLE_DEVICES"])
        if unseen := [g for g in gpus if int(g) >= len(visible)]:
            raise UserError(f"--gpus {','.join(unseen)}: this command sees {len(visible)} GPU(s) "
                            f"(CUDA_VISIBLE_DEVICES={base['CUDA_VISIBLE_DEVICES']!r}); give indices below {len(visible)}")
        gpus = [visible[int(g)] for g in gpus]
    threads = base.get("OMP_NUM_THREADS") or str(max(1, usable_cores() // workers))
    environments = []
    for index in range(workers):
        env = {**base, WORKER_ENV: f"{index}/{workers}", PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        environments.append(env)
    return environments


def stop_with_parent() -> None:
    """In a worker: have the kernel send SIGTERM (stop after a checkpoint) when the command that started it dies
    (Linux; elsewhere the command's own signal passing is all there is), and stop now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    parent = os.environ.get(PARENT_ENV)
    if parent and hasattr(os, "getppid") and os.getppid() != int(parent):
        raise Interrupted(signal.SIGTERM)  # the command died before the kernel could be asked


def exit_status(code: int) -> int:
    """A worker's exit status as a shell reports it: 128 + N for one killed by signal N."""
    return 128 - code if code < 0 else code


def run_workers(argv: list[str], workers: int, gpus: list[str]) -> int:
    """Start `workers` processes of `python -m benchmark <argv>` (the same `run` command) and wait for all of them;
    signals sent to this process are passed on to them (see the module docstring)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--workers starts its own processes; do not combine it with accelerate launch / torchrun")
    command = [sys.executable, "-m", "benchmark", *argv]
    environments = worker_environments(workers, gpus)
    logger.info(f"starting {workers} workers ({environments[0]['OMP_NUM_THREADS']} threads each"
                + (f", GPUs {','.join(dict.fromkeys(e['CUDA_VISIBLE_DEVICES'] for e in environments))}" if gpus else "")
                + ")")
    received: list[tuple[int, int]] = []  # (signal, how many workers had started when it came)
    processes: list[subprocess.Popen] = []

    def pass_on(signum, frame=None, workers: list[subprocess.Popen] = processes):
        received.append((signum, len(processes)))
        for process in workers:
            if process.poll() is None:
                process.send_signal(getattr(signal, PASSED_ON[signal.Signals(signum).name]))

    stopping = [getattr(signal, name) for name in PASSED_ON if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, pass_on) for signum in stopping}
    try:
        try:
            for env in environments:
                processes.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, **OWN_PROCESS_GROUP))
        except BaseException:  # one could not start: stop those that did, as a signal would
            pass_on(signal.SIGTERM)
            for process in processes:
                process.wait()
            raise
        if received:  # a signal came while they started: pass it on to those started after it
            signum, started = received[0]
            pass_on(signum, workers=processes[started:])
        codes = [exit_status(process.wait()) for process in processes]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped = {128 + signal.SIGTERM, 128 + signal.SIGINT} if received else set()  # as asked: not failures
    failed = [(index, code) for index, code in enumerate(codes) if code and code not in stopped]
    if failed:
        logger.warning("workers that failed: " + ", ".join(f"{index} (exit status {code})" for index, code in failed))
    if received:
        raise Interrupted(received[0][0])
    return failed[0][1] if failed else 0
