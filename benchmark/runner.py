"""Run a suite's grid: skip finished runs, resume interrupted ones, write one record per run.

A run that fails (bad data, unreachable model, non-finite loss, out of memory) is recorded as failed with
its error and epoch, and the grid goes on unless `fail_fast` (or `debug`, which re-raises the error with its
traceback). An output folder that cannot be written (full disk) stops the grid: no later run could save.
Data is loaded once per (dataset, size) and kept for every run that uses it: on the training device when it
fits, else in host memory with each batch copied over one step ahead (`benchmark.placement`).
Before the first run, `check_inputs` looks for every data file and model directory the pending runs need.

Messages go to the `benchmark.runner` logger, from the main process only; `track="tensorboard"`
logs each run's per-epoch metrics and learning rate under `<output>/tensorboard/<suite>/<run_id>/`.

Any number of workers (processes, hosts sharing the results folder) can run the same grid at once: each run
is claimed before it is trained (`benchmark.claims`), so none is trained twice and a dead worker's run is taken
over and resumed; every checkpoint and record write is fenced by the claim (`benchmark.checkpoint`), so a worker
that stalled past the timeout and comes back stops at once, writing nothing. SIGTERM/SIGINT stop the grid at
the next step boundary after a checkpoint (`checkpoint.Interrupted`); the same command resumes it. One worker
may itself be several processes (`accelerate launch`, `torchrun`): the main one claims, decides and writes;
`benchmark.distributed` keeps the processes in step and ends a failed run on all.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import logging
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

from benchmark import checkpoint, distributed
from benchmark.checkpoint import Interrupted, RunCheckpoints
from benchmark.claims import Claim, ClaimLost, ClaimSettings, try_claim
from benchmark.compute import compute_block
from benchmark.config import RunSpec, Suite, load_suite
from benchmark.data import DatasetSplits, load_dataset, missing_data
from benchmark.data.subsets import labelled_subset, subset_tag
from benchmark.environment import (
    deterministic_kernels,
    deterministic_requested,
    git_commit,
    measured_on,
    nondeterministic_ops,
)
from benchmark.errors import UserError
from benchmark.models import build_model, missing_model
from benchmark.placement import HostSplit, place_splits
from benchmark.records import (
    OutputError,
    build_record,
    check_writable,
    completed_hashes,
    nonfinite_result,
    read_record,
    record_path,
    remove_temp_files,
    set_aside,
    superseded_path,
    write_record,
)
from benchmark.schemes.context import SchemeContext
from benchmark.schemes.embeddings import cache_dir
from benchmark.schemes.run import run_scheme
from benchmark.schemes.spec import check_batch_fits
from benchmark.train import DeviceSplit, autocast_dtype
from benchmark.use.robustness import after_run as robustness_after_run

SAMPLES_PER_CLASS = 8
SAMPLE_MAX_SIDE = 64
TRACKERS = ("tensorboard",)

# The standard logger; `GridRunner.say` logs from the main process only (accelerate's `get_logger` would do the
# same, with a "[RANK 0]" prefix on every line).
logger = logging.getLogger(__name__)


@dataclass
class GridSummary:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # claimed by another worker
    main_process: bool = True  # False on the other processes of a multi-process run (they write nothing)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run_id, message)
    user_errors: list[str] = field(default_factory=list)


def check_inputs(specs: list[RunSpec]) -> None:
    """Every data file, image folder and local model directory `specs` need, checked before the first run:
    a `UserError` with one line per missing thing (nothing is read or written)."""
    problems = [missing_data(s.dataset, s.size, s.data_root, s.download)
                for s in {(s.dataset, s.size, s.data_root, s.download): s for s in specs}.values()]
    problems += [missing_model(model) for model in dict.fromkeys(s.model for s in specs)]
    problems = list(dict.fromkeys(p for p in problems if p))
    if problems:
        raise UserError("\n".join(problems))


def environment(accelerator: Accelerator, dtype_name: str, commit: str | None,
                data_placement: str | None = None, nondeterministic: set[str] | None = None) -> dict:
    """`nondeterministic`: the ops the run used that have no deterministic kernel (`nondeterministic_ops`)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    return {
        "data_placement": data_placement,  # "device" or "host" (benchmark.placement); None = not loaded
        **measured_on(accelerator.device),
        "mixed_precision": dtype_name,
        "deterministic_kernels": deterministic,  # run --deterministic
        # what may still differ between reruns with deterministic kernels; None = not asked for, or not known
        "nondeterministic_ops": sorted(nondeterministic) if deterministic and nondeterministic is not None else None,
        "num_processes": accelerator.num_processes,
        "git_commit": commit,
        "hostname": socket.gethostname(),
    }


def encode_samples(data: DatasetSplits) -> dict:
    """Up to SAMPLES_PER_CLASS test images per class as base64 PNG, for figures drawn from records alone."""
    per_class = []
    for class_index in range(len(data.class_names)):
        images = data.test.images[data.test.labels == class_index][:SAMPLES_PER_CLASS]
        encoded = []
        for image in images:
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            picture.thumbnail((SAMPLE_MAX_SIDE, SAMPLE_MAX_SIDE))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        per_class.append(encoded)
    return {"size": data.size, "class_names": list(data.class_names), "per_class": per_class}


class GridRunner:
    """Runs the specs of one suite into `output`; holds the accelerator and the device-resident data."""

    def __init__(self, output: Path, *, resume: bool = True, force: bool = False, fail_fast: bool = False,
                 quiet: bool = False, keep_checkpoints: str = "best", debug: bool = False, track: str | None = None,
                 claims: ClaimSettings | None = None, checkpoint_every: float | None = None,
                 deterministic: bool | None = None):
        self.output = Path(output)
        self.resume, self.force, self.fail_fast, self.debug = resume, force, fail_fast, debug
        self.quiet, self.keep_checkpoints, self.track = quiet, keep_checkpoints, track
        if track is not None:
            if track not in TRACKERS:
                raise UserError(f"unknown tracker {track!r}; use one of {', '.join(TRACKERS)}")
            if importlib.util.find_spec(track) is None:
                raise UserError(f"--track {track} needs the {track} package: pip install 'medmnist-benchmark[track]'")
        self.claims = claims or ClaimSettings.from_env()
        self.checkpoint_every = checkpoint.checkpoint_every(checkpoint_every)
        self.deterministic = deterministic_requested(deterministic)
        self.started_at = time.time()  # records written after this by other workers are not redone by this one
        self.accelerator = distributed.make_accelerator(
            log_with=track, project_dir=self.output / "tensorboard" if track else None)
        self.commit = git_commit()  # the code this process runs, even if the checkout moves on meanwhile
        self._data_key = None
        self._data: tuple[DatasetSplits, dict[str, DeviceSplit | HostSplit]] | None = None
        self.data_placement: str | None = None

    def checkpoint_dir(self, spec: RunSpec) -> Path:
        return self.output / "checkpoints" / spec.suite / spec.run_id

    def data_for(self, spec: RunSpec) -> tuple[DatasetSplits, dict[str, DeviceSplit | HostSplit]]:
        subset = (spec.train_fraction, spec.shots_per_class, spec.seed) if subset_tag(spec.train_fraction,
                                                                                       spec.shots_per_class) else None
        key = (spec.dataset, spec.size, spec.data_root, spec.download, spec.limit, spec.split, subset)
        if key != self._data_key:
            self._data_key, self._data = None, None  # free the previous dataset first
            data = load_dataset(spec.dataset, size=spec.size, data_root=spec.data_root, download=spec.download,
                                limit=spec.limit or None, split=spec.split)
            data = labelled_subset(data, spec.seed, spec.train_fraction, spec.shots_per_class)
            splits, self.data_placement = place_splits(data, self.accelerator.device)
            self._data_key, self._data = key, (data, splits)
        return self._data

    def run_grid(self, suite: Suite) -> GridSummary:
        """Check the inputs of the runs still to do, then run them; a missing input stops it before anything is
        written (a `UserError`, one line per missing thing)."""
        summary = GridSummary(main_process=self.accelerator.is_main_process)
        main = self.accelerator.is_main_process
        done = distributed.agree(self.accelerator, completed_hashes(self.output, suite.name) if main else None)
        done = set() if self.force else done
        check_inputs([spec for spec in suite.runs if spec.config_hash not in done])
        check_writable(self.output)
        with checkpoint.stop_on_signals(), deterministic_kernels(self.deterministic):
            for index, spec in enumerate(suite.runs, start=1):
                if not self.run_next(spec, f"[{index}/{len(suite.runs)}] {spec.run_id}", done, summary,
                                     suite.robustness):
                    break
        return summary

    def run_next(self, spec: RunSpec, label: str, done: set[str], summary: GridSummary, robustness: bool = False
                 ) -> bool:
        """Skip, claim and run one spec of the grid into `summary` (`robustness`: then evaluate the finished run on
        MedMNIST-C, into its record); False when the grid stops here."""
        stop = distributed.agree(self.accelerator, checkpoint.stop_requested())
        if stop:
            raise Interrupted(stop)
        if spec.config_hash in done:
            summary.skipped.append(spec.run_id)
            self.prune_leftover_checkpoint(spec)
            self.say(f"{label}: done already, skipped")
            return True
        decision, claim = self.claim(spec)
        if decision != "run":
            (summary.busy if decision == "busy" else summary.skipped).append(spec.run_id)
            self.say(f"{label}: " + ("claimed by another worker, skipped" if decision == "busy" else
                                     "finished by another worker meanwhile, skipped"))
            return True
        self.say(f"{label}: running")
        try:
            error = self.run_one(spec, claim, robustness)
        except BaseException as err:
            if claim is not None:
                claim.release("interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed")
            raise
        if claim is not None:
            claim.release("completed" if error is None else "lost" if error == "lost" else "failed")
        if error == "lost":
            summary.busy.append(spec.run_id)
            self.say(f"{label}: taken over by another worker while it ran (this worker stalled for longer "
                     f"than the claim timeout); stopped, its result discarded", logging.WARNING)
            return True
        if error is None:
            summary.completed.append(spec.run_id)
            return True
        summary.failed.append((spec.run_id, error[1]))
        if error[0]:
            summary.user_errors.append(error[1])
        self.say(f"{label}: FAILED: {error[1]}")  # the summary and the final error line report it too
        return not self.fail_fast

    def claim(self, spec: RunSpec) -> tuple[str, Claim | None]:
        """The main process claims the run for this worker. The decision, the same on every process: "run"
        (with the claim, on the main process), "busy" (another worker holds it) or "done" (its record appeared
        since this worker looked)."""
        decision, claim = None, None
        if self.accelerator.is_main_process and self.finished_meanwhile(spec):
            decision = "done"
        elif self.accelerator.is_main_process:
            claim = try_claim(self.output, spec.suite, spec.run_id, self.claims)
            decision = "busy" if claim is None else "run"
            if claim is not None and self.finished_meanwhile(spec):  # finished between the look and the claim
                claim.release("skipped")
                decision, claim = "done", None
        return distributed.agree(self.accelerator, decision), claim

    def finished_meanwhile(self, spec: RunSpec) -> bool:
        """Another worker wrote this run's record after this one started (or a completed one, without --force)."""
        path = record_path(self.output, spec.suite, spec.run_id)
        try:
            written = path.stat().st_mtime
        except FileNotFoundError:
            return False
        record = read_record(path)
        if record is None or record["config_hash"] != spec.config_hash:
            return False
        usable = record["status"] == "completed" and not nonfinite_result(record)
        return (usable and not self.force) or written > self.started_at

    def run_one(self, spec: RunSpec, claim: Claim | None = None, robustness: bool = False
                ) -> tuple[bool, str] | str | None:
        """Train one spec and write its record (`robustness`: then evaluate its best weights on MedMNIST-C into
        the record, still under the claim and before pruning, which may delete them); returns (is_user_error,
        message) when it failed, "lost" when another worker took the run over meanwhile (it stopped at once;
        nothing more written)."""
        path = record_path(self.output, spec.suite, spec.run_id)
        started, started_wall = time.perf_counter(), time.time()
        self.remove_leftovers(spec, path)
        main = self.accelerator.is_main_process
        checkpoints = RunCheckpoints(self.checkpoint_dir(spec), self.resume, self.checkpoint_every, claim,
                                     distributed.agree(self.accelerator, checkpoint.attempt_of(path) if main else None))
        fence = checkpoints.held
        try:
            data, device_splits = self.data_for(spec)
            if not data.train_subset:  # a labelled subset smaller than a batch trains on one batch a step
                check_batch_fits(spec.scheme, spec.recipe.batch_size, len(data.train), spec.dataset)
            set_seed(spec.seed)
            built = build_model(spec.model, data.class_names, data.train.images.shape[-1])
            if self.track:
                self.accelerator.init_trackers(f"{spec.suite}/{spec.run_id}")
            before_scheme = time.perf_counter()
            with nondeterministic_ops() as fallbacks:
                outcome = run_scheme(SchemeContext(spec, built, data, device_splits, self.accelerator, checkpoints,
                                                   cache_dir(self.output), self.quiet))
        except OutputError:
            raise
        except ClaimLost:
            return "lost"
        except Exception as err:
            # A UserError is bad input, a non-finite loss or out of memory (TrainingFailed carries the epoch);
            # anything else is a bug, whose traceback goes into the record. Either way the grid goes on.
            user_error = isinstance(err, UserError)
            message = str(err) if user_error else " ".join(f"{type(err).__name__}: {err}".split())
            error = {"type": type(err).__name__, "message": message, "epoch": getattr(err, "epoch", 0),
                     "traceback": None if user_error else traceback.format_exc()}
            history = getattr(err, "history", [])
            if self.accelerator.num_processes > 1:
                raise self.end_multi_process_run(spec, path, error, history, started, started_wall, claim) from err
            if not fence():
                return "lost"
            try:
                self.write_failure(spec, path, error, history, started, fence)
            except ClaimLost:
                return "lost"
            if self.debug:
                raise
            return user_error, message
        finally:
            self.accelerator.free_memory()
            self.finish_trackers()

        dtype = outcome_dtype_name(spec, self.accelerator)
        record = build_record(
            spec, "completed",
            dataset=data.summary(),
            model={**asdict(spec.model), "input_size": built.input_size, "n_params": built.n_params},
            history=outcome.history,
            best_epoch=outcome.best_epoch,
            stopped_early=outcome.stopped_early,
            resumed_from_epoch=outcome.resumed_from_epoch,
            scheme_details=outcome.details,
            test=outcome.test,
            test_predictions={"labels": outcome.test_labels, "probs": outcome.test_probs},
            samples=encode_samples(data),
            timing={
                "wall_seconds": time.perf_counter() - started,
                "train_seconds": outcome.train_seconds,
                "eval_seconds": outcome.eval_seconds,
                "checkpoint_seconds": outcome.checkpoint_seconds,
                "checkpoints_written": outcome.checkpoints_written,
                "startup_seconds": before_scheme - started + outcome.setup_seconds,
                "train_images_per_second": outcome.train_images / max(outcome.train_seconds, 1e-9),
                "peak_memory_mb": outcome.peak_memory_mb,
                "peak_memory_kind": outcome.peak_memory_kind,
            },
            compute=compute_block(built, outcome, spec.scheme.name, self.accelerator.device,
                                  autocast_dtype(spec.recipe, self.accelerator.device), self.accelerator.num_processes),
            environment=environment(self.accelerator, dtype, self.commit, self.data_placement, fallbacks)
            | ({} if outcome.sync_batchnorm is None else {"sync_batchnorm": outcome.sync_batchnorm}),
            error=None,
            **({"calibration": outcome.calibration} if outcome.calibration is not None else {}),
        )
        if not fence():
            return "lost"
        if main:
            set_aside(path)  # an earlier failed record (or a --force rerun's old one) is kept in superseded/
            try:
                write_record(path, record, fence)
            except ClaimLost:
                return "lost"
            self.say(f"  test acc {outcome.test['acc']:.4f}, auc {outcome.test['auc']:.4f} "
                     f"(best epoch {outcome.best_epoch}) → {path}")
            if unstable := record["environment"]["nondeterministic_ops"]:
                self.say(f"  ran without a deterministic kernel: {', '.join(unstable)} (a rerun may differ there; "
                         "the record's environment.nondeterministic_ops)", logging.WARNING)
            if robustness:
                robustness_after_run(path, self.output, spec.data_root, fence)
            if fence():  # a worker that took the run over meanwhile (a --force rerun) owns its checkpoints now
                self.prune_checkpoints(spec)
        return None

    def end_multi_process_run(self, spec: RunSpec, path: Path, error: dict, history: list, started: float,
                              started_wall: float, claim) -> distributed.MultiProcessRunFailed:
        """A run failed on this process of several: the main one records the failure (another process's error
        first), every process leaves the group and stops the grid (see `benchmark.distributed`)."""
        directory, rank = self.checkpoint_dir(spec), self.accelerator.process_index
        world = self.accelerator.num_processes
        if not self.accelerator.is_main_process:
            distributed.write_failure_note(directory, rank, error, history)
            distributed.leave_process_group()
            distributed.wait_until_recorded(distributed.note_path(directory, rank), path, started_wall,
                                            2 * distributed.collective_timeout())
        else:
            notes = distributed.read_failure_notes(directory, started_wall)
            if notes:  # the process that failed first; this one then only lost its peers
                error, history = dict(notes[0]["error"]), notes[0]["history"]
                rank = notes[0]["rank"]
            error["process"] = rank
            if claim is None or claim.held():
                with contextlib.suppress(ClaimLost):
                    self.write_failure(spec, path, error, history, started, claim.held if claim else None)
            distributed.remove_failure_notes(directory)
            distributed.leave_process_group()
        return distributed.MultiProcessRunFailed(
            f"run {spec.run_id} failed on process {rank} of {world}: {error['message']}; a multi-process grid stops "
            f"at a failed run (its record holds the error): fix it and run the same command again")

    def write_failure(self, spec: RunSpec, path: Path, error: dict, history: list, started: float,
                      fence=None) -> None:
        """The failed record: the error with the epoch it stopped in (0 = before training) and the history so far."""
        if not self.accelerator.is_main_process:
            return
        record = build_record(
            spec, "failed",
            error=error,
            history=history,
            timing={"wall_seconds": time.perf_counter() - started},
            environment=environment(self.accelerator, outcome_dtype_name(spec, self.accelerator), self.commit),
        )
        existing = read_record(path) if path.exists() else None
        if existing is not None and existing["status"] == "completed":  # a failed --force rerun
            path = superseded_path(path, "failed")
        else:
            set_aside(path)
        write_record(path, record, fence)

    def remove_leftovers(self, spec: RunSpec, path: Path) -> None:
        """Delete temp files of writes a killed process left unfinished (never read, but checkpoint-sized)."""
        if self.accelerator.is_main_process:
            remove_temp_files(path)
            checkpoint.remove_leftovers(self.checkpoint_dir(spec))

    def prune_checkpoints(self, spec: RunSpec) -> None:
        """A finished run keeps only its best weights (or nothing, with keep_checkpoints='none')."""
        if self.accelerator.is_main_process:
            checkpoint.prune(self.checkpoint_dir(spec), self.keep_checkpoints)

    def prune_leftover_checkpoint(self, spec: RunSpec) -> None:
        """A done run whose process died between writing its record and pruning still has its `last.pt`: pruned
        under the run's claim, so the `last.pt` of a concurrent `--force` rerun (whose worker holds the claim) stays."""
        if not (self.accelerator.is_main_process and checkpoint.prunable(self.checkpoint_dir(spec),
                                                                          self.keep_checkpoints)):
            return
        claim = try_claim(self.output, spec.suite, spec.run_id, self.claims)
        if claim is None:
            return
        try:
            self.prune_checkpoints(spec)
        finally:
            claim.release("pruned")

    def say(self, message: str, level: int = logging.INFO) -> None:
        if self.accelerator.is_main_process:
            logger.log(level, message)

    def finish_trackers(self) -> None:
        """Close this run's trackers (not `end_training`: that would also end a multi-process grid's group)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()


def run_suite(suite: Suite | str, output: Path | str = "results", *, resume: bool = True, force: bool = False,
              fail_fast: bool = False, quiet: bool = False, keep_checkpoints: str = "best", debug: bool = False,
              track: str | None = None, claim_timeout: float | None = None, checkpoint_every: float | None = None,
              deterministic: bool | None = None, **overrides) -> GridSummary:
    """Train every run of `suite` (a `Suite`, or a name or YAML path loaded with `load_suite(suite, **overrides)`)
    into `output`: finished runs are skipped, interrupted ones resumed, failed ones recorded (see `GridRunner`).

    Raises `UserError` before the first run when an input is missing or `output` cannot be written; returns the
    summary (`completed`, `skipped`, `failed`) otherwise. `quiet` hides the progress bars; messages go to the
    `benchmark` logger. `checkpoint_every`: seconds between checkpoints at most (0 = every epoch; None =
    $BENCHMARK_CHECKPOINT_EVERY or 60); it does not change results, so it is not part of the run hash.
    `deterministic`: deterministic kernels (`environment.deterministic_kernels`; None = $BENCHMARK_DETERMINISTIC):
    bit-equal reruns on a GPU too, at some cost in speed; not part of the run hash either."""
    if not isinstance(suite, Suite):
        suite = load_suite(str(suite), **overrides)
    elif overrides:
        raise TypeError(f"run_suite: {', '.join(overrides)} apply to a suite name or path, not a loaded Suite")
    runner = GridRunner(Path(output), resume=resume, force=force, fail_fast=fail_fast, quiet=quiet,
                        keep_checkpoints=keep_checkpoints, debug=debug, track=track,
                        claims=ClaimSettings.from_env(claim_timeout), checkpoint_every=checkpoint_every,
                        deterministic=deterministic)
    return runner.run_grid(suite)


def outcome_dtype_name(spec: RunSpec, accelerator: Accelerator) -> str:
    try:
        dtype = autocast_dtype(spec.recipe, accelerator.device)
    except UserError:
        return spec.recipe.mixed_precision
    return {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def dry_run_table(suite: Suite) -> str:
    rows = [f"{'run_id':<60} {'dataset':<18} {'size':>4} {'model':<16} {'scheme':<16} {'seed':>4} {'epochs':>6}"]
    for spec in suite.runs:
        epochs = "-" if spec.scheme.name == "knn" else spec.recipe.epochs
        rows.append(f"{spec.run_id:<60} {spec.dataset:<18} {spec.size:>4} {spec.model.name:<16} "
                    f"{spec.scheme.name:<16} {spec.seed:>4} {epochs:>6}")
    rows.append(f"{len(suite.runs)} runs in suite '{suite.name}' ({suite.path})")
    return "\n".join(rows)

