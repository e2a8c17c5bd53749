"""Run records: the schema as types, the one builder, validation, atomic writes, the one loader and the frame.

One JSON file per run (`<results>/runs/<suite>/<run_id>.json`); the schema is `Record` below (documented in
docs/design.md, version `SCHEMA_VERSION`). Records stay plain dicts (what `json` reads and writes); the
TypedDicts name their keys and types for readers and type checkers.

Files are written atomically (temp file, fsync, rename), so a reader sees a whole record or none; a file that
does not parse (a copy interrupted by hand, a truncated disk) is ignored with a warning, never counted.
A record is never overwritten: a rerun (`--force`, or a run that failed before) moves the old one to
`superseded/` first. A process killed mid-write leaves only a hidden `.<name>.*.tmp` file, which nothing
reads; `remove_temp_files` clears those of one target when its run starts again.

`load_records(path)` reads a results folder, a runs folder, one suite's folder or record files, validates and
de-duplicates them; `records_frame(records)` turns them into a pandas DataFrame (one row per run, the test
metrics as columns) and `per_class_frame(records)` into the long form of the per-class values.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypedDict

from benchmark.claims import ClaimLost
from benchmark.errors import UserError

if TYPE_CHECKING:  # the builder takes a RunSpec; importing config here would import torch
    import pandas as pd

    from benchmark.config import RunSpec

logger = logging.getLogger(__name__)
SUPERSEDED = "superseded"  # beside a suite's records: the records reruns replaced, never read as results

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)


class DatasetBlock(TypedDict, total=False):
    name: str  # required
    size: int  # required
    task: str
    class_names: list[str]
    n_train: int
    n_val: int
    n_test: int
    source: str
    md5: str | None
    synthetic: bool
    split: SplitBlock  # only where the loader cut the splits itself (image folders)
    class_counts: dict[str, list[int]]  # images per class in train / val / test (the baselines' training labels)
    train_subset: dict[str, Any]  # label-efficiency runs: kind, value, seed, n_train, n_train_full, sha256 of the ids


class SplitBlock(TypedDict, total=False):
    kind: Literal["grouped", "random", "given"]
    seed: int
    n_groups: int  # grouped: near-duplicate groups (singletons included) the cut kept whole
    sha256: str  # over each split's sorted image ids


class ModelBlock(TypedDict, total=False):
    name: str  # required; the other keys are the resolved ModelSpec, plus input_size / n_params when completed
    family: str
    source: str
    pretrained: bool
    input_size: int | None
    n_params: int


class PerClass(TypedDict):
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]


class TestBlock(TypedDict, total=False):
    """Test-split scores of the best epoch's weights (`benchmark.metrics.classification_metrics` plus `loss`)."""

    loss: float
    acc: float
    auc: float
    balanced_acc: float
    f1_macro: float
    precision_macro: float
    recall_macro: float
    per_class: PerClass
    confusion_matrix: list[list[int]]
    mcc: float
    qwk: float  # ordinal-regression tasks only
    sensitivity: list[float]
    specificity: list[float]
    ece: float
    brier: float
    nll: float


class CalibrationBlock(TypedDict):
    """`calibrate: temperature`: the temperature fitted on validation and test calibration before / after."""

    method: str
    temperature: float
    before: dict[str, float]
    after: dict[str, float]


class TestPredictions(TypedDict):
    labels: list[int]
    probs: list[list[float]]


class HistoryEntry(TypedDict):
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    val: dict[str, float]


class Samples(TypedDict):
    size: int
    class_names: list[str]
    per_class: list[list[str]]  # base64 PNG, up to 8 test images per class


class Timing(TypedDict, total=False):
    wall_seconds: float  # this session (a resumed run: since the resume)
    train_seconds: float  # training epochs, over every session (as the next three)
    eval_seconds: float  # validation after each epoch, then the test split
    checkpoint_seconds: float  # the training thread's share of checkpoint writes (snapshots, waits, best.pt)
    checkpoints_written: int
    startup_seconds: float  # this session: data, model, resume, until the first epoch
    train_images_per_second: float
    peak_memory_mb: float
    peak_memory_kind: str


def timing_line(timing: Timing | None) -> str:
    """Where a run's time went, in one line: "wall 225 s: train 209 s, eval 5.1 s, checkpoints 0.8 s (0.4 %, 3
    written), start-up 3.2 s" (the parts a record has; records older than the parts: only what they hold)."""
    timing = timing or {}
    wall = timing.get("wall_seconds")
    parts = []
    for key, name in (("train_seconds", "train"), ("eval_seconds", "eval"), ("checkpoint_seconds", "checkpoints"),
                      ("startup_seconds", "start-up")):
        if isinstance(timing.get(key), (int, float)):
            text = f"{name} {_seconds(timing[key])}"
            if key == "checkpoint_seconds":
                share = f"{100 * timing[key] / wall:.1f} %, " if wall else ""
                text += f" ({share}{timing.get('checkpoints_written', 0)} written)"
            parts.append(text)
    head = f"wall {_seconds(wall)}" if isinstance(wall, (int, float)) else ""
    return f"{head}: {', '.join(parts)}" if head and parts else head or ", ".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 100 else f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"


class FlopsPerImage(TypedDict):
    inference: float | None
    train: float | None  # forward + backward; None unless the scheme trains the whole model every step


class ComputeBlock(TypedDict, total=False):
    """What a completed run cost (`benchmark.compute`, which documents the FLOP convention); records written before
    it existed have none."""

    n_params: int
    trainable_params: int | None
    flops_per_image: FlopsPerImage
    train_images: int
    train_flops: float | None
    train_images_per_second: float | None
    devices: int
    device_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    device: str
    device_name: str


class ErrorBlock(TypedDict):
    type: str
    message: str
    epoch: int
    traceback: str | None
    # and "process": N when a multi-process run failed on process N (benchmark.distributed)


class Record(TypedDict, total=False):
    """One run. Required in every record: the keys `record_problem` checks; completed records add the test
    blocks, failed ones `error`."""

    schema_version: int
    status: Literal["completed", "failed"]
    suite: str
    run_id: str
    config_hash: str
    config: dict[str, Any]
    seed: int
    dataset: DatasetBlock
    model: ModelBlock
    scheme: str
    selection_metric: str
    created_at: str
    history: list[HistoryEntry]
    best_epoch: int
    stopped_early: bool
    resumed_from_epoch: int
    scheme_details: dict[str, Any]  # the scheme, its options, trainable parameters, embedding cache hit/miss
    test: TestBlock
    test_predictions: TestPredictions
    samples: Samples
    timing: Timing
    compute: ComputeBlock
    environment: dict[str, Any]
    error: ErrorBlock | None
    calibration: CalibrationBlock
    protocol: dict[str, str]  # `protocol_of(record)`: what a published number must share to be compared with it
    robustness: dict[str, Any]  # added after the run by `benchmark robustness` (benchmark.use.robustness)


RECORD_KEYS = frozenset(Record.__annotations__)
REQUIRED_KEYS = ("status", "run_id", "config_hash", "config", "dataset", "model", "seed")


class OutputError(UserError):
    """The results folder cannot be written (full disk, permissions): no later run could save, so the grid stops."""


def output_error(path: Path, err: OSError) -> OutputError:
    if err.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; free some space or choose another --output, then run "
                           f"the same command again to resume")
    return OutputError(f"cannot write {path}: {err.strerror or err}; check the folder's permissions and free space, "
                       f"or choose another --output")


def check_writable(output: Path) -> None:
    """Create the output folder `output` (with its parents) and make sure it can be written, before any work;
    a `UserError` naming --output otherwise."""
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {output}: {err.strerror}; choose another --output") from None
    if not os.access(output, os.W_OK):
        raise UserError(f"output folder {output} is not writable; fix its permissions or choose another --output")


def check_output_file(path: Path | str, suffixes: tuple[str, ...]) -> Path:
    """An output file named by --output, checked before any work: one of `suffixes`, in a writable folder, not a
    folder itself nor a read-only file."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"--output {path}: use a {' or '.join(suffixes)} file name")
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    check_writable(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"--output {path} is not writable; fix its permissions or choose another --output")
    return path


def runs_dir(results_dir: Path, suite: str) -> Path:
    return Path(results_dir) / "runs" / suite


def record_path(results_dir: Path, suite: str, run_id: str) -> Path:
    return runs_dir(results_dir, suite) / f"{run_id}.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, write: Callable[[BinaryIO], object], fence: Callable[[], bool] | None = None) -> None:
    """`write(handle)` into a temp file beside `path`, then rename it over `path`, so that `path` holds either
    its old content or all of the new. With `fence`, the rename happens only while `fence()` is true (the writer
    still holds the run's claim); otherwise the temp file is deleted and `ClaimLost` raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if fence is not None and not fence():
            raise ClaimLost(f"not writing {path}: another worker took the run over")
        os.replace(tmp, path)
    except OSError as err:
        raise output_error(path, err) from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, fence: Callable[[], bool] | None = None) -> None:
    atomic_write(path, lambda handle: handle.write(data), fence)


def remove_temp_files(path: Path) -> None:
    """Delete the temp files a killed `atomic_write_bytes(path, ...)` left behind."""
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_record(path: Path, record: Record, fence: Callable[[], bool] | None = None) -> None:
    atomic_write_bytes(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=True).encode(), fence)


class RecordChanged(UserError):
    """The record was rewritten while a block for it was computed; the block was not written."""


def add_block(path: Path, key: str, block: Any, based_on: Record, fence: Callable[[], bool] | None = None) -> None:
    """Set one top-level block of the record at `path` (e.g. `robustness`, computed after the run) and rewrite it
    atomically; every other key keeps its value, the run id and hash included. `based_on` is the record the block
    was computed from: when the file holds another by now (a `--force` rerun or a second evaluation wrote it),
    nothing is written (`RecordChanged`). `fence` as in `write_record`. Raises ValueError for a key outside the
    schema or one that identifies the run."""
    if key not in RECORD_KEYS or key in REQUIRED_KEYS:
        raise ValueError(f"{key!r} is not a block that may be added to a finished record")
    record = read_record(path)
    if record is None:
        raise UserError(f"{path} is not a readable run record; nothing was written")
    if _canonical(record) != _canonical(based_on):  # canonical text: a NaN in the record equals itself
        raise RecordChanged(f"{path} was rewritten while its {key} was computed (a --force rerun or another "
                            f"evaluation); nothing was written: run the command again")
    write_record(path, {**record, key: block}, fence)


def _canonical(record: Record) -> str:
    return json.dumps(record, sort_keys=True, allow_nan=True)


def build_record(spec: RunSpec, status: Literal["completed", "failed"], **blocks: Any) -> Record:
    """The record of one run of `spec`: the identity every record has, then `blocks` (schema keys only; a
    completed run's `dataset`/`model` blocks replace the names-only ones). Raises ValueError for a key outside
    the schema or a record `record_problem` rejects: a bug, never a user error."""
    unknown = set(blocks) - RECORD_KEYS
    if unknown:
        raise ValueError(f"not record keys: {sorted(unknown)}")
    from benchmark.data.registry import portable_path  # the builder runs beside torch; readers stay light
    from benchmark.schemes.spec import record_scheme
    from benchmark.suites import subset_label

    config = spec.to_dict()
    if config["data_root"] is not None:  # not part of the run's identity: kept free of this machine's paths
        config["data_root"] = portable_path(config["data_root"])
    record: Record = {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "suite": spec.suite,
        "run_id": spec.run_id,
        "config_hash": spec.config_hash,
        "config": config,
        "seed": spec.seed,
        "dataset": {"name": spec.dataset, "size": spec.size},
        "model": spec.to_dict()["model"],
        "scheme": record_scheme(spec.scheme, spec.model.pretrained) + subset_label(spec.train_fraction,
                                                                                   spec.shots_per_class),
        "selection_metric": spec.recipe.selection_metric,
        "created_at": now_iso(),
        **blocks,
    }
    record["protocol"] = protocol_of(record)
    problem = record_problem(record)
    if problem:
        raise ValueError(f"built an invalid record for {spec.run_id}: {problem}")
    return record


def record_problem(rec: object) -> str | None:
    """Why a parsed JSON object is not a usable record (None when it is)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    version = rec.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return f"unsupported schema_version {version!r}"
    for key in REQUIRED_KEYS:
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


NONFINITE = "NonFiniteResult"  # error type of a completed record whose test result is not finite
FINITE_TEST_METRICS = ("acc", "auc", "f1_macro", "balanced_acc")  # the headline metrics; loss is NaN for knn


def nonfinite_result(rec: dict) -> str | None:
    """What of a completed record's test result is not finite (NaN, infinite, missing numbers): its probabilities
    and/or headline metrics, as words; None when all is finite. An AUC is undefined (NaN) by design on a test
    split holding one class, and is not counted then."""
    if rec["status"] != "completed":
        return None
    test, predictions = rec.get("test") or {}, rec.get("test_predictions") or {}

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    labels = predictions.get("labels")
    one_class = labels is not None and len(set(labels)) < 2
    metrics = [name for name in FINITE_TEST_METRICS
               if name in test and not finite(test[name]) and not (name == "auc" and one_class)]
    parts = [f"test metrics ({', '.join(metrics)})"] if metrics else []
    rows = predictions.get("probs") or []
    if not all(isinstance(row, list) and all(map(finite, row)) for row in rows):
        parts.append("test probabilities")
    return " and ".join(parts) or None


def as_nonfinite_failure(rec: dict, nonfinite: str) -> dict:
    """A completed record whose test result is not finite (`nonfinite_result`), as the failed run it is (a copy):
    no score of it counts."""
    message = f"{nonfinite} not finite (NaN or infinite); rerun it"
    return {**rec, "status": "failed", "error": {"type": NONFINITE, "message": message, "epoch": rec.get("best_epoch"),
                                                 "traceback": None}}


def read_record(path: Path, quiet: bool = False) -> dict | None:
    """The record at `path`, or None (with a warning; `quiet`: a debug message) when it is unreadable or not a run
    record."""
    level = logging.DEBUG if quiet else logging.WARNING
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.log(level, f"skipping unreadable record {path}: {err}")
        return None
    problem = record_problem(record)
    if problem:
        logger.log(level, f"skipping {path}: {problem}")
        return None
    return record


def record_files(path: Path | str, suite: str | None = None) -> list[Path]:
    """The record files under `path`: a results folder (`<path>/runs/<suite>/*.json`), a runs folder
    (`<path>/<suite>/*.json`), one suite's folder (`<path>/*.json`) or a record file; `suite` keeps one suite's.
    `superseded/` folders and hidden temp files are never read."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give a results folder, a runs folder, a suite folder or record "
                        f"files (run a suite first)")
    if (path / "runs").is_dir():
        path = path / "runs"
    if any(path.glob("*.json")):  # one suite's folder (load_records keeps `suite`'s records)
        return sorted(path.glob("*.json"))
    if suite is None:  # a runs folder, or a suite folder whose records were all superseded
        return sorted(file for file in path.glob("*/*.json") if file.parent.name != SUPERSEDED)
    if not (path / suite).is_dir():
        raise UserError(f"no records for suite {suite!r}: {path / suite} does not exist; run the suite first or "
                        f"pass --runs DIR")
    return sorted((path / suite).glob("*.json"))


def _created_key(record: Record) -> tuple:
    raw = record.get("created_at") or ""
    try:
        stamp = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except (ValueError, TypeError, OverflowError):
        stamp = float("-inf")
    return (stamp, str(raw))


def test_set(record: Record) -> str:
    """The dataset column a record belongs to: its dataset, marked when its split was cut at random."""
    from benchmark.suites import test_set_name

    return test_set_name(str(record["dataset"]["name"]), (record["dataset"].get("split") or {}).get("kind"))


def protocol_of(record: Record) -> dict[str, str]:
    """The protocol a run followed, as text fields: scheme, init (pretrained / scratch), input size, resize,
    data split, the test images (`limit`, when not the whole split), the kNN options (nothing trains, so no recipe)
    or the recipe (epochs, optimizer, lr, batch size, schedule, augmentation, imbalance handling, checkpoint
    selection); a field the config does not state is absent. Derived from the record's config alone, so records
    written before the key existed get it too; new records store it."""
    if record.get("protocol"):
        return dict(record["protocol"])
    config = record.get("config") or {}
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    split = ((record.get("dataset") or {}).get("split") or {}).get("kind") or config.get("split") or "official"
    scheme = str(record.get("scheme") or "")
    out = {"scheme": scheme, "init": "pretrained" if model.get("pretrained") else "scratch",
           **({"input_size": str(model["input_size"])} if model.get("input_size") else {}),
           "resize": str(model.get("resize") or "interpolate"), "split": str(split)}
    if config.get("limit"):
        out["limit"] = str(config["limit"])
    if scheme == "knn":
        options = (config.get("scheme") or {}).get("options") or {}
        return {**out, **{name: str(value) for name, value in sorted(options.items())}}
    imbalance = [f"{name} {recipe[name]}" for name in ("class_weights", "sampler") if recipe.get(name, "none") != "none"]
    patience = recipe.get("early_stopping_patience") or 0
    selection = str(recipe.get("selection_metric", "")) + (f", patience {patience}" if patience else "")
    fields = {"epochs": recipe.get("epochs"), "optimizer": recipe.get("optimizer"),
              "lr": f"{recipe['lr']:g}" if "lr" in recipe else None, "batch_size": recipe.get("batch_size"),
              "schedule": recipe.get("schedule"), "augment": recipe.get("augment"),
              "imbalance": "+".join(imbalance) or "none", "selection": selection or None}
    return {**out, **{name: str(value) for name, value in fields.items() if value is not None}}  # unknown: absent


def protocol_text(protocol: dict[str, str]) -> str:
    """A protocol as one `key=value; ...` string (published.csv's `protocol` column); `parse_protocol` reads it."""
    return "; ".join(f"{key}={value}" for key, value in protocol.items())


def parse_protocol(text: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in str(text or "").split(";") if "=" in part)


def data_identity(record: Record) -> tuple | None:
    """What fixes a run's train / val / test images: the dataset, its data file's md5, the split sizes and, for
    splits the loader cut, the split's hash. Runs with equal identities saw the same images; None without an md5."""
    dataset = record["dataset"]
    if not dataset.get("md5"):
        return None
    return (dataset["name"], dataset["md5"], dataset.get("n_train"), dataset.get("n_val"), dataset.get("n_test"),
            (dataset.get("split") or {}).get("sha256"))


def training_class_counts(records: Iterable[Record]) -> dict[tuple, list[int]]:
    """Training images per class by `data_identity`, from the records that store `dataset.class_counts` (written
    since the baselines existed), so that an older record of the same data gets its baseline rows too."""
    out: dict[tuple, list[int]] = {}
    for record in records:
        counts = (record["dataset"].get("class_counts") or {}).get("train")
        identity = data_identity(record)
        if counts and identity is not None:
            out.setdefault(identity, list(counts))
    return out


def group_key(record: Record) -> tuple[str, int, str]:
    """(model, size, scheme): the row a record belongs to in the tables."""
    return (str(record["model"]["name"]), int(record["dataset"]["size"]), str(record.get("scheme") or ""))


def load_records(paths: Path | str | Iterable[Path | str], suite: str | None = None, *,
                 one_per_seed: bool = True) -> list[Record]:
    """Every valid record under `paths` (see `record_files`), de-duplicated, sorted by (suite, run_id).

    * A file that does not parse or is not a record is skipped with a logged warning; a record without a
      `suite` gets its folder's name.
    * A completed record whose test probabilities or headline metrics are not finite (`nonfinite_result`) is
      read as a failed run (error type `NONFINITE`), with a warning naming its file: it has no score.
    * Records that share a `config_hash` within a suite (reruns of one config) collapse to one: a completed
      record beats a failed one, then the newest `created_at`, then the file name.
    * `one_per_seed` (what the tables count): records of one group, dataset and seed with different configs (a
      trial with other epochs, a `--limit` run) collapse to the newest completed one, with a warning. The
      runner passes False: every finished config counts as done.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [file for path in paths for file in record_files(path, suite)]
    best: dict[tuple[str, str], tuple[tuple, Record]] = {}
    for path in files:
        record = read_record(path)
        if record is None:
            continue
        if not record.get("suite"):
            record["suite"] = path.parent.name
        nonfinite = nonfinite_result(record)
        if nonfinite:
            logger.warning(f"{path}: its {nonfinite} are not finite (NaN or infinite); counted as a failed run, not "
                           f"scored — rerun it")
            record = as_nonfinite_failure(record, nonfinite)
        if suite is not None and record["suite"] != suite:
            continue
        key = (str(record["suite"]), str(record["config_hash"]))
        rank = (record["status"] == "completed", _created_key(record), path.name)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, record)
    records = [record for _, record in best.values()]
    if one_per_seed:
        records = _one_record_per_seed(records)
    return sorted(records, key=lambda r: (str(r["suite"]), str(r["run_id"])))


def _one_record_per_seed(records: list[Record]) -> list[Record]:
    kept: dict[tuple, Record] = {}
    for record in sorted(records, key=lambda r: (r["status"] == "completed", _created_key(r), str(r["run_id"]))):
        key = (str(record["suite"]), group_key(record), test_set(record), str(record["seed"]))
        if key in kept:
            logger.warning(f"{record['run_id']} replaces {kept[key]['run_id']} (same model, dataset and seed, other "
                           "config); move the older record away to silence this")
        kept[key] = record
    return list(kept.values())


def completed_hashes(results_dir: Path, suite: str) -> set[str]:
    """config_hash of every completed run of a suite: these runs are skipped on a re-run."""
    folder = runs_dir(results_dir, suite)
    if not folder.is_dir():
        return set()
    return {r["config_hash"] for r in load_records(folder, one_per_seed=False) if r["status"] == "completed"}


def learned(record: Record) -> dict:
    """What a run learned and scored, the part two runs of one config must agree on (a resumed run and an
    uninterrupted one, N workers and one, host- and device-resident data): status, config hash, best epoch, early
    stop, test metrics and probabilities, and the history without its timings; no hosts, timings or compute."""
    history = [{key: value for key, value in entry.items() if key != "seconds"} for entry in record.get("history") or []]
    kept = ("status", "config_hash", "best_epoch", "stopped_early", "test", "test_predictions")
    return {**{key: record.get(key) for key in kept}, "history": history}


#: identity columns of `records_frame`, in order; the test metrics follow as columns of their own
FRAME_COLUMNS = ("suite", "run_id", "config_hash", "status", "dataset", "size", "model", "scheme", "seed",
                 "selection_metric", "best_epoch", "epochs", "created_at", "train_seconds", "n_params", "error_type",
                 "error_message", "error_epoch")


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per run: its identity (`FRAME_COLUMNS`) and every scalar of its `test` block as a column (acc,
    auc, f1_macro, balanced_acc, loss, ...; NaN for failed runs). Rows keep the order of `records`."""
    import pandas as pd

    rows = []
    for record in records:
        error = record.get("error") or {}
        row = {
            "suite": record.get("suite"), "run_id": record["run_id"], "config_hash": record["config_hash"],
            "status": record["status"], "dataset": test_set(record), "size": int(record["dataset"]["size"]),
            "model": record["model"]["name"], "scheme": record.get("scheme") or "", "seed": record["seed"],
            "selection_metric": record.get("selection_metric"), "best_epoch": record.get("best_epoch"),
            "epochs": len(record.get("history") or []), "created_at": record.get("created_at"),
            "train_seconds": (record.get("timing") or {}).get("train_seconds"),
            "n_params": record["model"].get("n_params"), "error_type": error.get("type"),
            "error_message": error.get("message"), "error_epoch": error.get("epoch"),
        }
        for name, value in (record.get("test") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in row:
                row[name] = float(value)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(FRAME_COLUMNS))
    metrics = [c for c in frame.columns if c not in FRAME_COLUMNS]
    return frame[list(FRAME_COLUMNS) + metrics]


PER_CLASS_COLUMNS = ("suite", "run_id", "dataset", "size", "model", "scheme", "seed", "class_index", "class_name",
                     "precision", "recall", "f1", "support")


def per_class_frame(records: Iterable[Record]) -> pd.DataFrame:
    """The long form of the per-class test values: one row per completed run and class."""
    import pandas as pd

    rows = []
    for record in records:
        per_class = (record.get("test") or {}).get("per_class")
        if record["status"] != "completed" or not isinstance(per_class, dict):
            continue
        n_classes = max((len(v) for v in per_class.values() if isinstance(v, list)), default=0)
        names = list(record["dataset"].get("class_names") or [])
        for index in range(n_classes):
            value = {m: (per_class[m][index] if isinstance(per_class.get(m), list) and len(per_class[m]) > index
                         else None) for m in ("precision", "recall", "f1", "support")}
            rows.append({"suite": record.get("suite"), "run_id": record["run_id"],
                         "dataset": test_set(record), "size": int(record["dataset"]["size"]),
                         "model": record["model"]["name"], "scheme": record.get("scheme") or "",
                         "seed": record["seed"], "class_index": index,
                         "class_name": str(names[index]) if index < len(names) else str(index), **value})
    frame = pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))
    for column in ("precision", "recall", "f1", "support"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def superseded_path(path: Path, tag: str = "") -> Path:
    """A fresh name under `superseded/` beside `path` (readers of the suite folder never see it)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return path.parent / SUPERSEDED / f"{path.stem}-{tag + '-' if tag else ''}{stamp}.json"


def set_aside(path: Path) -> Path | None:
    """Keep a copy of an existing record in `superseded/` before a rerun's record replaces `path` (atomically:
    `write_record`), so no result is lost: not when the rerun's write fails either, since `path` keeps the old
    record until the new one is complete. A hard link where the file system has them, else a copy."""
    if not path.exists():
        return None
    target = superseded_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    except OSError as err:
        raise output_error(target, err) from None
    return target
