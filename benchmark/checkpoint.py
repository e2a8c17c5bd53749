"""A run's checkpoints: what is saved, when, where, who may write it, and how a run resumes from it.

`<output>/checkpoints/<suite>/<run_id>/` holds two files:
- `last.pt`, everything to continue the run bit-identically (on CPU): model, optimizer, scheduler, grad scaler,
  RNG states, the loop state (with the position inside an epoch when written mid-epoch), the best weights so far
  and their epoch, and who wrote it (claim generation, worker) for which attempt (see `attempt_of`). Written at
  the first optimizer-step boundary `every` seconds after the previous one (`every=0`: at the end of every
  epoch), and at the next step boundary once SIGTERM or SIGINT arrived (then the run stops: `Interrupted`).
  Removed when the run's record is written (`prune`).
- `best.pt`, `{"epoch", "weights"}` of the best epoch: kept in memory while training (a CPU copy) and written
  once, when training ends; what `benchmark.use` loads. Since `last.pt` carries the best weights itself, a
  kill at any point leaves a consistent pair: resuming takes the best weights from `last.pt`.

Writes do not stall training: the training thread copies the state to CPU (a snapshot) and a background thread
serialises it to a temp file, fsyncs and renames it over the old file (one write in flight at a time).

Fencing: a run is trained under a claim (`benchmark.claims`). Right before every rename (checkpoints, best.pt,
the record) the writer checks that it still holds the claim, and at every step boundary the training thread
reads the flag the claim's heartbeat keeps; a worker that lost its claim (it stalled past the timeout and
another took the run over) stops at once with `ClaimLost`, deleting only its own temp file. A checkpoint
also names the attempt it belongs to (the completed record it replaces, or none): a `--force` rerun never
resumes from a checkpoint of another attempt (a stray one written after the run finished), it starts over.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmark.claims import Claim, env_seconds, worker_name
from benchmark.errors import UserError
from benchmark.records import atomic_write, remove_temp_files

EVERY_ENV = "BENCHMARK_CHECKPOINT_EVERY"
DEFAULT_EVERY = 60.0  # seconds between checkpoints at most; 0 = at the end of every epoch

logger = logging.getLogger(__name__)


def checkpoint_every(seconds: float | None = None) -> float:
    """`seconds` (the CLI's --checkpoint-every) or $BENCHMARK_CHECKPOINT_EVERY or 60; 0 = every epoch."""
    if seconds is not None and not seconds >= 0:
        raise UserError(f"--checkpoint-every must be >= 0 seconds (got {seconds}); 0 checkpoints every epoch")
    return seconds if seconds is not None else env_seconds(EVERY_ENV, DEFAULT_EVERY, allow_zero=True)


# ---------------------------------------------------------------------------------------------- files


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():  # resumed with fewer GPUs visible (--gpus): theirs
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])


def atomic_torch_save(obj, path: Path, fence=None) -> None:
    """`torch.save` to `path` through a temp file and a rename (`records.atomic_write`; `fence` as there)."""
    atomic_write(path, lambda handle: torch.save(obj, handle), fence)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none or it is damaged (then the run starts over)."""
    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a damaged checkpoint must never stop a grid: start the run over
        logger.warning(f"ignoring damaged checkpoint {path} ({' '.join(str(err).split())[:200]})")
        return None


def snapshot(obj):
    """A copy of `obj` on the CPU that training can no longer change: tensors cloned, the rest deep-copied."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(snapshot(value) for value in obj)
    return copy.deepcopy(obj)


def attempt_of(record_path: Path) -> str | None:
    """Which attempt a checkpoint belongs to: the digest of the completed record it will replace (a `--force`
    rerun), None for a run without one. Resuming needs the same attempt."""
    try:
        data = record_path.read_bytes()
        completed = json.loads(data).get("status") == "completed"
    except (OSError, ValueError, AttributeError):  # none, or unreadable: replaces nothing
        return None
    return hashlib.sha256(data).hexdigest()[:16] if completed else None


def remove_leftovers(directory: Path) -> None:
    """Delete the temp files of writes a killed process left unfinished (never read, but checkpoint-sized)."""
    for name in ("last.pt", "best.pt"):
        remove_temp_files(directory / name)


def prunable(directory: Path, keep: str) -> bool:
    """Whether `prune(directory, keep)` would delete anything."""
    return (directory / "last.pt").exists() or (keep == "none" and directory.exists())


def prune(directory: Path, keep: str) -> None:
    """A finished run keeps only its best weights (`keep="best"`) or nothing (`"none"`)."""
    (directory / "last.pt").unlink(missing_ok=True)
    if keep == "none":
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- stopping


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped the grid after the running run checkpointed; rerunning the command resumes it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_stop = {"signal": 0, "at": 0.0}
#: a repeat sooner than this after the first signal is the same request delivered twice, not "stop at once":
#: `timeout` signals its command and then its process group, a scheduler may signal every process of a job while
#: `run --workers` also passes the signal on
REPEAT_AFTER_SECONDS = 1.0


def stop_requested() -> int:
    """The signal that asked the grid to stop (0: none)."""
    return _stop["signal"]


@contextlib.contextmanager
def stop_on_signals():
    """While inside: SIGTERM/SIGINT ask the grid to stop at the next step boundary (after a checkpoint); another
    one, a second or more later, stops at once (KeyboardInterrupt). Only the main thread can install handlers:
    elsewhere, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum, frame):
        if _stop["signal"]:
            if time.monotonic() - _stop["at"] < REPEAT_AFTER_SECONDS:
                logger.info(f"{signal.Signals(signum).name} again at once: the same stop request, delivered twice")
                return
            logger.warning(f"{signal.Signals(signum).name} again: stopping at once")
            raise KeyboardInterrupt
        _stop["signal"], _stop["at"] = signum, time.monotonic()
        logger.warning(f"{signal.Signals(signum).name}: stopping at the next step, after a checkpoint "
                       f"(send it again, a second later or more, to stop at once)")

    previous = {signum: signal.signal(signum, request) for signum in (signal.SIGTERM, signal.SIGINT)}
    _stop["signal"] = 0
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop["signal"] = 0


# ---------------------------------------------------------------------------------------------- one run


class BackgroundWriter:
    """Writes one checkpoint at a time on a thread; the next write (or `wait`) waits for the one in flight and
    raises its error, if any, in the training thread."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, obj, path: Path, fence) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(obj, path, fence), daemon=True,
                                        name=f"checkpoint-writer-{path.parent.name}")
        self._thread.start()

    def _write(self, obj, path: Path, fence) -> None:
        try:
            atomic_torch_save(obj, path, fence)
        except BaseException as err:  # handed to the training thread
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


@dataclass
class RunCheckpoints:
    """The checkpoints of one run: where, how often, under which claim and for which attempt.

    `fit` asks `resume_point()` once, then `decide()` at each optimizer-step boundary and `save()` when told;
    `write_best()` at the end; `close()` always. `seconds` is the training thread's time spent on all of it."""

    directory: Path
    resume: bool = True
    every: float = DEFAULT_EVERY
    claim: Claim | None = None
    attempt: str | None = None
    seconds: float = 0.0
    _last_save: float = field(default_factory=time.monotonic)
    _writer: BackgroundWriter = field(default_factory=BackgroundWriter)

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best(self) -> Path:
        return self.directory / "best.pt"

    def held(self) -> bool:
        """The fence every write checks right before its rename: this worker still holds the run's claim."""
        return self.claim is None or self.claim.held()

    def resume_point(self) -> dict | None:
        """The checkpoint to resume from, or None to start over: none, damaged, of another attempt, or (with
        resume=False) not wanted."""
        checkpoint = load_checkpoint(self.last) if self.resume else None
        if checkpoint is None:
            return None
        if not isinstance(checkpoint.get("best"), dict) or checkpoint.get("attempt", None) != self.attempt:
            logger.warning(f"{self.last} belongs to another attempt at this run (or an older version); "
                           f"starting the run over")
            return None
        self._last_save = time.monotonic()
        return checkpoint

    def decide(self, epoch_end: bool) -> tuple[bool, bool, bool]:
        """(save now, then stop, claim lost) at a step boundary. A save is due `every` seconds after the last one
        (every=0: at each epoch end) and whenever a stop was requested. Lost: the claim's heartbeat found it taken
        over (a flag read at every step), or, before a save, the claim files say so."""
        stop = bool(stop_requested())
        due = (time.monotonic() - self._last_save >= self.every) if (epoch_end or self.every > 0) else False
        lost = self.claim is not None and (self.claim.lost or ((due or stop) and not self.claim.held()))
        return (due or stop) and not lost, stop, lost

    def save(self, state: dict, best: dict) -> None:
        """Snapshot `state` (the training thread's only cost) and write it as last.pt in the background, with
        `best` ({"epoch", "weights"}: a CPU copy training never changes, or weights None = the model's own)."""
        started = time.perf_counter()
        writer = {"worker": worker_name(), "generation": self.claim.generation if self.claim else None}
        checkpoint = {**snapshot(state), "best": best, "attempt": self.attempt, "writer": writer}
        self._writer.submit(checkpoint, self.last, self.held)  # `decide` checked the claim; the rename checks again
        self._last_save = time.monotonic()
        self.seconds += time.perf_counter() - started

    def write_best(self, epoch: int, weights: dict) -> None:
        """best.pt, once, at the end of training (after the last checkpoint write finished)."""
        started = time.perf_counter()
        self._writer.wait()
        atomic_torch_save({"epoch": epoch, "weights": weights}, self.best, self.held)
        self.seconds += time.perf_counter() - started

    def close(self, failing: bool = False) -> None:
        """Wait for the write in flight; its error is raised unless the run is already failing."""
        started = time.perf_counter()
        try:
            self._writer.wait()
        except BaseException:
            if not failing:
                raise
        finally:
            self.seconds += time.perf_counter() - started

    @contextlib.contextmanager
    def open(self):
        """`close()` on the way out, however the run ends."""
        try:
            yield self
        except BaseException:
            self.close(failing=True)
            raise
        self.close()


def best_weights_of(checkpoint: dict) -> dict:
    """The best weights a checkpoint carries (None in the file = the model's own: written at the end of the best
    epoch)."""
    weights = checkpoint["best"]["weights"]
    return weights if weights is not None else checkpoint["model"]
