"""`benchmark run --workers N`: N worker processes on this machine share one grid (small runs packed on a device).

Each worker is the same `benchmark run` command in a process of its own, marked by $BENCHMARK_WORKER so that it
trains instead of starting workers again; the claims (`benchmark.claims`) give every run to exactly one of them,
so the records are those of one worker (same config hashes; on CPU the same numbers at the same thread count).

- Threads: each worker gets $OMP_NUM_THREADS when it is set, else the usable cores divided by N (at least one):
  N workers then use the cores one worker would. CPU numbers depend on the thread count (float sums), so compare
  with a serial run under the same $OMP_NUM_THREADS.
- GPUs: `--gpus 0,1` puts worker i on GPU `gpus[i % len(gpus)]` (CUDA_VISIBLE_DEVICES); without it every worker
  uses the GPU(s) the command sees, i.e. N workers share one device, which is the point for runs too small to fill it.

The command's exit status is the first non-zero status of a worker (0 when every worker succeeded).
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
# Workers start in a process group of their own (in the same session, so whatever ends the session ends them too)
OWN_PROCESS_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}

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


def worker_environments(workers: int, gpus: list[str], base: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each worker: its index, its thread count and, with `gpus`, its GPU."""
    base = dict(os.environ if base is None else base)
    threads = base.get("OMP_NUM_THREADS") or str(max(1, usable_cores() // workers))
    environments = []
    for index in range(workers):
        env = {**base, WORKER_ENV: f"{index}/{workers}", "OMP_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        environments.append(env)
    return environments


def run_workers(argv: list[str], workers: int, gpus: list[str]) -> int:
    """Start `workers` processes of `python -m benchmark <argv>` (the same `run` command) and wait for all of them.

    The workers run in a process group of their own, so a signal reaches them once, from here: SIGTERM or SIGINT
    sent to this process (by `kill`, `timeout`, a scheduler or the terminal's Ctrl-C) is passed on to every worker,
    which checkpoints its run and stops (a second one stops them at once), and this process waits for them and
    ends as an interrupted `run` does. Without this, a SIGTERM here would leave the workers training on, orphaned.
    """
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--workers starts its own processes; do not combine it with accelerate launch / torchrun")
    command = [sys.executable, "-m", "benchmark", *argv]
    environments = worker_environments(workers, gpus)
    logger.info(f"starting {workers} workers ({environments[0]['OMP_NUM_THREADS']} threads each"
                + (f", GPUs {','.join(gpus)}" if gpus else "") + ")")
    received: list[int] = []
    processes: list[subprocess.Popen] = []

    def pass_on(signum, frame):
        received.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    stopping = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, pass_on) for signum in stopping}
    try:
        processes.extend(subprocess.Popen(command, env=env, **OWN_PROCESS_GROUP) for env in environments)
        if received:  # a signal came while they started: pass it on to those that missed it
            pass_on(received[-1], None)
        codes = [process.wait() for process in processes]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(received[0])
    failed = [(index, code) for index, code in enumerate(codes) if code]
    if failed:
        logger.warning("workers that failed: " + ", ".join(f"{index} (exit status {code})" for index, code in failed))
    return failed[0][1] if failed else 0
