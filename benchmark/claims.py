"""Many workers, one results folder: each run is claimed before it is trained, so no run is trained twice.

A claim is a file `claims/<suite>/<run_id>.<generation>.claim` in the results folder, created with
O_CREAT | O_EXCL (atomic on local file systems and on NFSv3+), holding the worker's host, pid and start time.
A thread of the owning worker refreshes the file's mtime (the heartbeat) every `heartbeat` seconds. A claim
whose heartbeat is older than `timeout` belonged to a worker that died or hangs (on the claim's own host, one
whose process is gone counts at once): another worker takes the run over by
creating the next generation's file, again with O_EXCL, so of several workers that see the same stale claim
exactly one wins; it resumes the run from its checkpoint. A worker whose claim was taken over (it stalled for
longer than the timeout) sees the newer generation and discards its result instead of writing a second record.
A finished run's claim files are removed; its record is what marks it done.

Every claim, takeover and release is appended to `claims/<suite>/log.jsonl`, the audit trail of who trained
what. `--shard i/n` is the other way to divide a grid: a deterministic, disjoint slice per worker.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmark.errors import UserError

TIMEOUT_ENV = "BENCHMARK_CLAIM_TIMEOUT"
HEARTBEAT_ENV = "BENCHMARK_CLAIM_HEARTBEAT"
DEFAULT_TIMEOUT = 300.0  # seconds without a heartbeat before a claim counts as abandoned
DEFAULT_HEARTBEAT = 30.0


@dataclass(frozen=True)
class ClaimSettings:
    timeout: float = DEFAULT_TIMEOUT
    heartbeat: float = DEFAULT_HEARTBEAT

    @classmethod
    def from_env(cls, timeout: float | None = None) -> "ClaimSettings":
        """`timeout` (the CLI's --claim-timeout) or $BENCHMARK_CLAIM_TIMEOUT; the heartbeat defaults to a tenth."""
        timeout = timeout if timeout is not None else env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        heartbeat = env_seconds(HEARTBEAT_ENV, min(DEFAULT_HEARTBEAT, timeout / 10))
        if not 0 < heartbeat < timeout:
            raise UserError(f"the claim heartbeat ({heartbeat} s) must be shorter than the claim timeout "
                            f"({timeout} s); raise --claim-timeout or lower ${HEARTBEAT_ENV}")
        return cls(timeout, heartbeat)


def env_seconds(name: str, default: float, allow_zero: bool = False) -> float:
    """Seconds from environment variable `name` (`default` when unset); anything but a positive number (or 0,
    with `allow_zero`) is an error."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 if allow_zero else value > 0):
        kind = "non-negative" if allow_zero else "positive"
        raise UserError(f"${name}={text!r} is not a {kind} number of seconds; fix or unset it")
    return value


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claims_dir(output: Path, suite: str) -> Path:
    return Path(output) / "claims" / suite


def _claim_files(directory: Path, run_id: str) -> list[tuple[int, Path]]:
    """The run's claim files as (generation, path), oldest generation first."""
    pattern = re.compile(rf"^{re.escape(run_id)}\.(\d+)\.claim$")
    found = []
    for path in directory.glob(f"{run_id}.*.claim"):
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _abandoned(info: dict, age: float, timeout: float) -> bool:
    """No heartbeat for `timeout` seconds, or a worker of this host whose process no longer exists."""
    if age >= timeout:
        return True
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _log(directory: Path, event: str, run_id: str, generation: int, **extra) -> None:
    """One line per event; a single O_APPEND write, so lines of concurrent workers never interleave."""
    line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
                       "run_id": run_id, "generation": generation, "worker": worker_name(), **extra})
    fd = os.open(directory / "log.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class ClaimLost(Exception):
    """This worker's claim on the run it trains was taken over: it stops at once and writes nothing more."""


class Claim:
    """A held claim: its heartbeat thread runs until `release()`."""

    def __init__(self, directory: Path, run_id: str, generation: int, path: Path, heartbeat: float):
        self.directory, self.run_id, self.generation, self.path = directory, run_id, generation, path
        self._stop = threading.Event()
        self._lost = False
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True,
                                        name=f"claim-heartbeat-{run_id}")
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if not self.held():
                return
            try:
                os.utime(self.path)
            except OSError:
                self._lost = True
                return

    @property
    def lost(self) -> bool:
        """What the heartbeat last found (no file access: cheap enough for every training step)."""
        return self._lost

    def held(self) -> bool:
        """False once another worker took the run over (a newer generation exists) or the file went away."""
        if not self._lost:
            files = _claim_files(self.directory, self.run_id)
            self._lost = not files or files[-1][0] != self.generation
        return not self._lost

    def release(self, outcome: str) -> None:
        """Stop the heartbeat and remove this run's claim files (a taken-over claim is left to its new owner)."""
        self._stop.set()
        self._thread.join()
        if not self.held():
            _log(self.directory, "lost", self.run_id, self.generation, outcome=outcome)
            return
        for generation, path in _claim_files(self.directory, self.run_id):
            if generation <= self.generation:
                path.unlink(missing_ok=True)
        _log(self.directory, "release", self.run_id, self.generation, outcome=outcome)


NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}  # os.link's errors where unsupported


def _create_claim(path: Path, info: dict) -> bool:
    """Create the claim file `path` holding `info`, only if it does not exist yet; False when it does. Written to
    a temp file and hard-linked into place (atomic and exclusive), so no worker ever reads a claim half-written,
    and a full disk leaves no empty claim behind but stops with one line (`records.output_error`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(info))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in NO_HARD_LINKS:
                raise
            try:  # a file system without hard links: create exclusively, then write (an empty claim ages out)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
        return True
    except OSError as err:
        from benchmark.records import output_error  # records imports this module

        raise output_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def try_claim(output: Path, suite: str, run_id: str, settings: ClaimSettings) -> Claim | None:
    """Claim `run_id` for this worker, taking over an abandoned claim; None when another worker holds it."""
    directory = claims_dir(output, suite)
    directory.mkdir(parents=True, exist_ok=True)
    files = _claim_files(directory, run_id)
    event, generation, previous = "claim", 0, None
    if files:
        last_generation, last_path = files[-1]
        try:
            age = time.time() - last_path.stat().st_mtime
        except OSError:
            return None  # released this instant: look again at the next sweep
        try:
            info = json.loads(last_path.read_text())
        except (OSError, ValueError):
            if age < settings.timeout:
                return None  # being written this instant (a claim of an older version's worker)
            info = {}  # unreadable and as old as an abandoned claim: a writer stopped before it wrote
        if not _abandoned(info, age, settings.timeout):
            return None
        previous = info.get("worker")
        event, generation = "takeover", last_generation + 1
    path = directory / f"{run_id}.{generation}.claim"
    if not _create_claim(path, {"worker": worker_name(), "host": socket.gethostname(), "pid": os.getpid(),
                                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "generation": generation}):
        return None  # another worker was faster
    _log(directory, event, run_id, generation, **({"from": previous} if previous else {}))
    return Claim(directory, run_id, generation, path, settings.heartbeat)


@dataclass(frozen=True)
class ClaimInfo:
    worker: str
    age: float  # seconds since the last heartbeat
    stale: bool


def current_claims(output: Path, suite: str, timeout: float) -> dict[str, ClaimInfo]:
    """run_id → the newest claim on it, for `benchmark status`."""
    directory = claims_dir(output, suite)
    newest: dict[str, tuple[int, Path]] = {}
    for path in directory.glob("*.claim"):
        run_id, _, rest = path.name.rpartition(".claim")[0].rpartition(".")
        if rest.isdigit() and (run_id not in newest or int(rest) > newest[run_id][0]):
            newest[run_id] = (int(rest), path)
    claims = {}
    for run_id, (_, path) in newest.items():
        try:
            age = time.time() - path.stat().st_mtime
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        claims[run_id] = ClaimInfo(info.get("worker", "?"), age, _abandoned(info, age, timeout))
    return claims


def claim_events(output: Path, suite: str) -> list[dict]:
    """The audit trail: every claim/takeover/release/lost event of a suite's runs, in order."""
    path = claims_dir(output, suite) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) → (i, n)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise UserError(f"--shard {text!r} is not i/n with 0 <= i < n (e.g. 0/4 for the first of four shards)")
    return int(match.group(1)), int(match.group(2))


def select_shard(runs: list, shard: tuple[int, int] | None) -> list:
    """Shard i of n: every n-th run of the grid from the i-th on (disjoint, together the whole grid)."""
    if shard is None:
        return list(runs)
    index, count = shard
    return list(runs)[index::count]
