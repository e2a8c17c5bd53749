"""`benchmark submit`: a suite's unfinished runs as one job array through submitit (Slurm, or local processes).

Each array task calls the same runner as `benchmark run` on its slice of the unfinished runs; claims make
tasks, resubmissions and hand-started workers safe together (no run trained twice). Logs of each task go to
`<output>/submitit/<suite>/`. Resubmitting the same command submits only what is neither done nor running.
A task with several processes (`--processes-per-task`, e.g. one per GPU) trains each run across them.

Job settings come from the command line, else from the suite's `launcher:` block, else the defaults below.
submitit is an optional dependency: `pip install 'medmnist-benchmark[slurm]'`.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import UserError

if TYPE_CHECKING:
    from benchmark.config import Suite

DEFAULTS = {"executor": "slurm", "time": 120, "gpus_per_task": 0, "cpus_per_task": 4, "processes_per_task": 1}


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("slurm", "local"),
                        help="slurm = sbatch a job array; local = the same tasks as local processes [slurm]")
    parser.add_argument("--tasks", type=int, help="array tasks; the unfinished runs are dealt out among them "
                                                  "[one per run]")
    parser.add_argument("--array-parallelism", type=int, help="at most this many tasks at once [all]")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--time", type=int, help="time limit per task in minutes [120]")
    parser.add_argument("--gpus-per-task", type=int, help="GPUs per task [0]")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per task [4]")
    parser.add_argument("--processes-per-task", type=int,
                        help="training processes per task, e.g. one per GPU (each run trains across them) [1]")
    parser.add_argument("--mem", help="memory per task, e.g. 32G")
    parser.add_argument("--account", help="Slurm account")
    parser.add_argument("--qos", help="Slurm QoS")
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                        help="any other sbatch option, e.g. --sbatch constraint=a100 (repeatable)")
    parser.add_argument("--wait", action="store_true", help="wait for the tasks and print what each did")


def job_settings(suite: Suite, args) -> dict:
    """Command line over the suite's `launcher:` block over DEFAULTS."""
    settings = {**DEFAULTS, **suite.launcher}
    for key in ("executor", "tasks", "array_parallelism", "partition", "time", "gpus_per_task", "cpus_per_task",
                "processes_per_task", "mem", "account", "qos"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    extra = dict(settings.get("sbatch") or {})
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch {item!r} is not KEY=VALUE (e.g. --sbatch constraint=a100)")
        extra[key.lstrip("-").replace("-", "_")] = value
    settings["sbatch"] = extra
    for key in ("tasks", "array_parallelism", "time", "gpus_per_task", "cpus_per_task", "processes_per_task"):
        value = settings.get(key)
        if value is not None and (type(value) is not int or value < (0 if key == "gpus_per_task" else 1)):
            raise UserError(f"launcher {key} must be a positive integer (got {value!r}); fix the option or the "
                            f"suite's launcher: block")
    if settings["executor"] not in ("slurm", "local"):
        raise UserError(f"launcher executor {settings['executor']!r} is not slurm or local")
    return settings


def unfinished_runs(suite: Suite, output: Path, claim_timeout: float) -> list:
    """The runs with no completed record and no live claim (those are running under an earlier submission)."""
    from benchmark.claims import current_claims
    from benchmark.records import completed_hashes

    done = completed_hashes(output, suite.name)
    claims = current_claims(output, suite.name, claim_timeout)
    return [spec for spec in suite.runs if spec.config_hash not in done
            and (spec.run_id not in claims or claims[spec.run_id].stale)]


def make_executor(settings: dict, folder: Path):
    try:
        import submitit
    except ImportError:
        raise UserError("benchmark submit needs submitit; pip install 'medmnist-benchmark[slurm]'") from None
    if settings["executor"] == "slurm" and shutil.which("sbatch") is None:
        raise UserError("sbatch is not on this machine's PATH; submit from the cluster's login node, or use "
                        "--executor local")
    executor = submitit.AutoExecutor(folder=folder, cluster=settings["executor"])
    processes = settings["processes_per_task"]
    executor.update_parameters(
        name="benchmark", timeout_min=settings["time"], nodes=1, tasks_per_node=processes,
        cpus_per_task=max(1, settings["cpus_per_task"] // processes), gpus_per_node=settings["gpus_per_task"],
    )
    if settings["executor"] == "slurm":
        slurm = {"slurm_partition": settings.get("partition"), "slurm_mem": settings.get("mem"),
                 "slurm_account": settings.get("account"), "slurm_qos": settings.get("qos"),
                 "slurm_array_parallelism": settings.get("array_parallelism"),
                 "slurm_additional_parameters": settings["sbatch"] or None}
        executor.update_parameters(**{key: value for key, value in slurm.items() if value is not None})
    return executor


def submit_grid(suite: Suite, args) -> list:
    """Submit the unfinished runs of `suite` (as filtered by the grid options in `args`); the jobs."""
    from benchmark.claims import ClaimSettings

    settings = job_settings(suite, args)
    claim_settings = ClaimSettings.from_env(args.claim_timeout)
    pending = unfinished_runs(suite, args.output, claim_settings.timeout)
    if not pending:
        print(f"{suite.name}: nothing to submit, every run is done or running (see `benchmark status`)")
        return []
    count = min(settings.get("tasks") or len(pending), len(pending))
    slices = [[spec.run_id for spec in pending[index::count]] for index in range(count)]
    overrides = {"datasets": args.datasets, "models": args.models, "seeds": args.seeds, "epochs": args.epochs,
                 "batch_size": args.batch_size, "limit": args.limit, "data_root": args.data_root, "download": args.download}
    folder = Path(args.output) / "submitit" / suite.name
    executor = make_executor(settings, folder)
    with executor.batch():  # one job array
        jobs = [executor.submit(GridTask(), str(suite.path), overrides, run_ids, str(args.output),
                                args.claim_timeout) for run_ids in slices]
    print(f"{suite.name}: submitted {len(pending)} runs as {count} {settings['executor']} tasks "
          f"(job {jobs[0].job_id.split('_')[0]}); logs in {folder}")
    if getattr(args, "wait", False):
        failed = 0
        for job in jobs:
            try:
                result = job.results()[0]  # the main process's (a task may have several)
            except Exception as err:  # a task that crashed: its log says why
                failed += 1
                print(f"task {job.job_id}: crashed ({' '.join(str(err).split())[:300]})")
                continue
            failed += len(result["failed"])
            print(f"task {job.job_id}: {len(result['completed'])} completed, {len(result['skipped'])} skipped, "
                  f"{len(result['busy'])} left to other workers, {len(result['failed'])} failed")
        if failed:
            raise UserError(f"{failed} run(s) or task(s) failed; see `benchmark status` and the logs in {folder}")
    return jobs


class GridTask:
    """One array task: the runner on its runs (all processes of the task together when it has several).

    Checkpointable in submitit's sense (it has `checkpoint`): when the task's time runs out, submitit signals it
    (USR2, 90 s before the limit), requeues it with the same arguments and ends it; the requeued task resumes the
    interrupted run from its last checkpoint. Without `checkpoint`, submitit raises in the training step instead,
    which recorded the run as failed and lost the task's remaining runs until a resubmission."""

    def __call__(self, suite_path: str, overrides: dict, run_ids: list[str], output: str,
                 claim_timeout: float | None) -> dict:
        import submitit

        from benchmark.claims import ClaimSettings
        from benchmark.config import load_suite
        from benchmark.environment import quiet_libraries
        from benchmark.runner import GridRunner

        if submitit.JobEnvironment().num_tasks > 1:  # RANK, WORLD_SIZE, MASTER_ADDR... for accelerate
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        quiet_libraries()
        suite = load_suite(suite_path, **overrides)
        wanted = set(run_ids)
        suite = replace(suite, runs=[spec for spec in suite.runs if spec.run_id in wanted])
        runner = GridRunner(Path(output), quiet=True, claims=ClaimSettings.from_env(claim_timeout))
        summary = runner.run_grid(suite)
        return {"completed": summary.completed, "skipped": summary.skipped, "busy": summary.busy,
                "failed": summary.failed}

    def checkpoint(self, *args, **kwargs):
        """The same task again (submitit requeues it at the time limit); the runs' own checkpoints hold the state."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
