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
from torch import nn

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


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (device, cpu flag, mixed precision, gradient accumulation).
    Whatever built an `Accelerator` before in this process (a notebook cell in bf16, a Trainer, a test) would
    otherwise decide the device and precision of the next one, or make it refuse to start ("already
    initialized")."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_accelerator(**options) -> Accelerator:
    """The training Accelerator (`options`: trackers); precision and accumulation come from each run's recipe,
    never from `accelerate config` defaults nor from an Accelerator built earlier in a single process (a launched
    process keeps its state: it holds the process group)."""
    if launched_processes() == 1:
        reset_accelerate_state()
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


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch across every process, on any device.

    With N processes each holding 1/N of the batch, plain BatchNorm normalises each shard by its own mean and
    variance (and the running statistics follow process 0's shard): the model trains differently from one process.
    Here the per-channel sums are all-reduced (two passes: mean, then squared deviations, for the numerics of a
    variance), so the output, the gradients (the all-reduce is autograd-aware) and the running statistics are
    those of one process on the whole batch, up to float summation order. `torch.nn.SyncBatchNorm` does the
    same with fused kernels but runs on GPUs only; this one also runs on CPU under gloo (the tested path) and is
    what every multi-process run uses. Evaluation (model.eval()) is plain BatchNorm on the running statistics.
    Same parameters and buffers as the layer it replaces, so checkpoints load into the plain model.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        values = input.float()  # statistics in full precision, whatever autocast runs the layer in
        dims, shape = [0, *range(2, values.dim())], (1, -1) + (1,) * (values.dim() - 2)
        local_count = values.new_full((1,), values.numel() // values.size(1))
        totals = all_reduce(torch.cat([values.sum(dims), local_count]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centered = values - mean.view(shape)
        var = all_reduce(centered.square().sum(dims)) / count
        output = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1), factor)  # unbiased, as BatchNorm
        return output.to(input.dtype)


def synchronize_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm layer inside `module` by a `SyncBatchNorm` holding the same parameters and
    buffers (in place); returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            synced = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            # the very tensors of `child` (nothing holding them goes stale), as torch's convert_sync_batchnorm
            synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
            replaced += 1
        else:
            replaced += synchronize_batchnorm(child)
    return replaced


def prepare_batchnorm(model: nn.Module, sync: bool, processes: int) -> bool | None:
    """Synchronise `model`'s BatchNorm layers (in place) when `sync` and several processes train it. Returns what
    the record's `environment.sync_batchnorm` says: None where the choice changes nothing (one process, or no
    BatchNorm layer), else whether the statistics were synchronised."""
    if processes == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    if sync:
        synchronize_batchnorm(model)
    return sync
