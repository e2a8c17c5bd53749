"""Multi-process runs (`accelerate launch` / `torchrun`): the Accelerator, and a failure that ends the run on
every process with a failed record instead of a hang.

Launched with more than one process on a machine without a GPU, the Accelerator must be built with
`cpu=True`, or accelerate reports one process and every process trains the same run on its own; with it,
the processes form one gloo group. Every collective waits at most `collective_timeout()` seconds.

When a process fails, the others are (or soon will be) waiting in a collective for it. It writes a note with
its error beside the run's checkpoints and leaves the process group; the others' pending collective ends with
an error: at once when the peer's connection closes (a process that died), else after the collective timeout
(gloo keeps a DDP group's connections open until the process exits, and exiting would let the launcher kill
the main process before it records anything). The main process then writes the failed record, preferring
another process's note to its own "connection closed"/"timed out" error; the other processes wait for that
record (bounded) and all of them stop the grid: a process group that lost a member cannot train the next run.
Lower $BENCHMARK_COLLECTIVE_TIMEOUT to fail faster, raise it when the main process alone does long work
(writing very large checkpoints to a slow disk) while the others wait.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, InitProcessGroupKwargs

from benchmark.claims import env_seconds
from benchmark.errors import UserError

COLLECTIVE_TIMEOUT_ENV = "BENCHMARK_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT = 600.0  # as NCCL's default


class MultiProcessRunFailed(UserError):
    """A run of a multi-process grid failed: every process stops after the main one recorded it."""


def collective_timeout() -> float:
    return env_seconds(COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT)


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch, Slurm via torchrun) started."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(**options) -> Accelerator:
    """The training Accelerator (`options`: trackers); precision and accumulation come from each run's recipe,
    never from `accelerate config` defaults."""
    cpu = launched_processes() > 1 and not torch.cuda.is_available()
    handler = InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout()))
    return Accelerator(cpu=cpu, mixed_precision="no", gradient_accumulation_steps=1, kwargs_handlers=[handler],
                       **options)


def agree(accelerator: Accelerator, value):
    """The main process's `value` on every process (decisions that read the file system are made once)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def note_path(directory: Path, rank: int) -> Path:
    return Path(directory) / f"failure-rank{rank}.json"


def write_failure_note(directory: Path, rank: int, error: dict, history: list) -> None:
    """This process's error for the main process to record (a plain write: the main one reads it only after
    this process left the group, which is after the write)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    note_path(directory, rank).write_text(json.dumps({"rank": rank, "error": error, "history": history}))


def read_failure_notes(directory: Path, since: float) -> list[dict]:
    """Notes other processes wrote since `since` (epoch seconds; a minute of slack for other hosts' clocks)."""
    notes = []
    for path in sorted(Path(directory).glob("failure-rank*.json")):
        try:
            if path.stat().st_mtime >= since - 60:
                notes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return sorted(notes, key=lambda note: note["rank"])


def remove_failure_notes(directory: Path) -> None:
    for path in Path(directory).glob("failure-rank*.json"):
        path.unlink(missing_ok=True)


def leave_process_group() -> None:
    """End the other processes' pending collectives now (instead of after the timeout)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wait_until_recorded(note: Path, record: Path, since: float, timeout: float) -> bool:
    """Wait (at most `timeout` s) until the main process took this process's `note` or wrote `record` after
    `since` (it may have failed first, before the note existed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not note.exists() or record.stat().st_mtime >= since:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False
