"""Run records: one JSON file per run, schema in docs/design.md (`SCHEMA_VERSION`).

Files are written atomically (temp file, fsync, rename), so a reader sees a whole record or none; a file that
does not parse (a copy interrupted by hand, a truncated disk) is ignored with a warning, never counted.
A record is never overwritten: a rerun (`--force`, or a run that failed before) moves the old one to
`superseded/` first. A process killed mid-write leaves only a hidden `.<name>.*.tmp` file, which nothing
reads; `remove_temp_files` clears those of one target when its run starts again.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmark.errors import UserError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)


class OutputError(UserError):
    """The results folder cannot be written (full disk, permissions): no later run could save, so the grid stops."""


def output_error(path: Path, err: OSError) -> OutputError:
    if err.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; free some space or choose another --output, then run "
                           f"the same command again to resume")
    return OutputError(f"cannot write {path}: {err.strerror or err}; check the folder's permissions and free space, "
                       f"or choose another --output")


def runs_dir(results_dir: Path, suite: str) -> Path:
    return Path(results_dir) / "runs" / suite


def record_path(results_dir: Path, suite: str, run_id: str) -> Path:
    return runs_dir(results_dir, suite) / f"{run_id}.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise output_error(path, err) from None


def remove_temp_files(path: Path) -> None:
    """Delete the temp files a killed `atomic_write_bytes(path, ...)` left behind."""
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_record(path: Path, record: dict) -> None:
    atomic_write_bytes(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=True).encode())


def record_problem(rec: object) -> str | None:
    """Why a parsed JSON object is not a usable record (None when it is)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    version = rec.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return f"unsupported schema_version {version!r}"
    for key in ("status", "run_id", "config_hash", "config", "dataset", "model", "seed"):
        if key not in rec:
            return f"missing key {key!r}"
    if not isinstance(rec["dataset"], dict) or "name" not in rec["dataset"] or "size" not in rec["dataset"]:
        return "dataset block lacks name/size"
    if not isinstance(rec["model"], dict) or "name" not in rec["model"]:
        return "model block lacks name"
    if rec["status"] == "completed":
        test = rec.get("test")
        if not isinstance(test, dict):
            return "completed record without a test block"
    elif rec["status"] != "failed":
        return f"unknown status {rec['status']!r}"
    elif not isinstance(rec.get("error"), dict) or "message" not in rec["error"]:
        return "failed record without an error message"
    return None


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None (with a warning) when it is unreadable or not a run record."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning(f"skipping unreadable record {path}: {err}")
        return None
    problem = record_problem(record)
    if problem:
        logger.warning(f"skipping {path}: {problem}")
        return None
    return record


def load_records(results_dir: Path, suite: str | None = None) -> list[dict]:
    """Every readable record of one suite (or all suites), in file-name order."""
    base = Path(results_dir) / "runs"
    pattern = f"{suite}/*.json" if suite else "*/*.json"
    records = (read_record(path) for path in sorted(base.glob(pattern)))
    return [r for r in records if r is not None]


def completed_hashes(results_dir: Path, suite: str) -> set[str]:
    """config_hash of every completed run of a suite: these runs are skipped on a re-run."""
    return {r["config_hash"] for r in load_records(results_dir, suite) if r["status"] == "completed"}


def superseded_path(path: Path, tag: str = "") -> Path:
    """A fresh name under `superseded/` beside `path` (readers of the suite folder never see it)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return path.parent / "superseded" / f"{path.stem}-{tag + '-' if tag else ''}{stamp}.json"


def set_aside(path: Path) -> Path | None:
    """Move an existing record to `superseded/` before a rerun writes `path`, so no result is lost."""
    if not path.exists():
        return None
    target = superseded_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError as err:
        raise output_error(target, err) from None
    return target
