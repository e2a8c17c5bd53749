"""Command line: parse, build the API call's arguments, call it, turn `UserError` into `error:` lines and exit
status 2. Messages go through `logging` (the `benchmark` logger, on stderr); a verb's output goes to stdout."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import UserError

DEFAULT_RESULTS = Path("results")
DESCRIPTION = """\
Train and compare image classifiers on MedMNIST and breast-ultrasound data: a suite (a YAML grid of
datasets x models x seeds) trains on one accelerate loop (CPU, GPU, multi-GPU) and writes one JSON record per
run; tables and figures are regenerated from the records alone."""
EPILOG = """\
examples:
  python -m benchmark run                                  the smoke suite: offline, CPU, a few minutes
  python -m benchmark run --suite medmnist --dry-run       the grid of a suite, without training
  python -m benchmark status --suite medmnist              done / failed / pending runs
  python -m benchmark leaderboard && python -m benchmark figures
  python -m benchmark report                               results/site/index.html: sortable tables, run pages
suites are looked up as a path, then ./suites/NAME.yaml, then the shipped ones (`list` shows them)."""


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None
    return parse


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick a suite's grid and where its results live (`run` and `status` share them)."""
    parser.add_argument("--suite", default="smoke", help="suite name (suites/NAME.yaml) or YAML path [smoke]")
    parser.add_argument("--datasets", type=_csv(str), help="only these datasets, comma-separated")
    parser.add_argument("--models", type=_csv(str), help="only these models, comma-separated")
    parser.add_argument("--seeds", type=_csv(int), help="these seeds instead of the suite's, comma-separated")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--batch-size", type=int, help="override every recipe's batch_size (tiny runs: at most --limit)")
    parser.add_argument("--limit", type=int, help="keep the first N images of each split (tiny runs)")
    parser.add_argument("--data-root", help="folder with the data files ('bundled' = the shipped subsets)")
    parser.add_argument("--download", action="store_true", default=None, help="download missing MedMNIST files")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULTS, help="results folder [results]")
    parser.add_argument("--claim-timeout", type=float,
                        help="seconds without a heartbeat before another worker takes a claimed run over "
                             "[$BENCHMARK_CLAIM_TIMEOUT or 300]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB",
                                  title="verbs (python -m benchmark VERB --help for its options)")

    run = verbs.add_parser("run", help="train a suite's grid of dataset × model × seed runs")
    add_grid_arguments(run)
    run.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    run.add_argument("--force", action="store_true", help="rerun finished runs (old records move to superseded/)")
    run.add_argument("--no-resume", action="store_true", help="start interrupted runs over instead of resuming")
    run.add_argument("--fail-fast", action="store_true", help="stop the grid at the first failed run")
    run.add_argument("--keep-checkpoints", choices=("best", "none"), default="best",
                     help="what a finished run keeps of its checkpoints [best]")
    run.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                     help="checkpoint a run at most every SECONDS (0: after every epoch); also on SIGTERM/SIGINT, "
                          "which stop the grid after it [$BENCHMARK_CHECKPOINT_EVERY or 60]")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="deterministic kernels (cuDNN, cuBLAS, torch): a rerun on a GPU gives the same numbers, at "
                          "some cost in speed; a CPU run does anyway [$BENCHMARK_DETERMINISTIC or off]")
    run.add_argument("--track", metavar="tensorboard", help="also log per-epoch metrics and learning rate with "
                     "this tracker, under OUTPUT/tensorboard/ (needs the `track` extra)")
    run.add_argument("--shard", help="only shard i of n of the grid, 'i/n' with 0 <= i < n (every n-th run from "
                                     "the i-th); workers without --shard share the grid through claims")
    run.add_argument("--workers", type=int, help="start N worker processes here that share the grid through claims "
                     "(small runs packed on one device); threads per worker = $OMP_NUM_THREADS or cores / N")
    run.add_argument("--gpus", help="with --workers: worker i on GPU i mod len(GPUS), e.g. 0,1: indices among the "
                                    "GPUs this command sees (its CUDA_VISIBLE_DEVICES) [every worker on all of them]")

    verbs.add_parser("list", help="show datasets, models and suites")

    check = verbs.add_parser("data-check", help="near-duplicate images within and across splits and classes")
    check.add_argument("dataset", help="dataset name (see `list`)")
    check.add_argument("--size", type=int,
                       help="image size to load [the dataset's default; 64 for image folders, as their split sees them]")
    check.add_argument("--data-root", help="folder with the data files ('bundled' = the shipped subsets)")
    check.add_argument("--split", help="how an image-folder dataset is split (grouped, random) [its default]")
    check.add_argument("--threshold", type=float, default=0.95,
                       help="Pearson correlation at 64 px from which two images are near duplicates [0.95]")
    check.add_argument("--output", type=Path,
                       help="groups file, .json or .csv [results/data-check/DATASET-SIZE[-SPLIT].json]")

    status = verbs.add_parser("status", help="done / failed / running / pending runs of a suite (same options as run)")
    add_grid_arguments(status)

    submit = verbs.add_parser("submit", help="submit a suite's unfinished runs as one job array (submitit: "
                                             "Slurm, or local processes)")
    add_grid_arguments(submit)
    from benchmark.launch import add_submit_arguments

    add_submit_arguments(submit)

    board = verbs.add_parser("leaderboard", help="tables from run records")
    board.add_argument("--suite", help="only this suite's records")
    board.add_argument("--runs", type=Path, default=DEFAULT_RESULTS,
                       help="records: a results, runs or suite folder, or a record file [results]")
    board.add_argument("--output", type=Path, default=DEFAULT_RESULTS, help="where the tables go [results]")

    figures = verbs.add_parser("figures", help="figures from run records")
    figures.add_argument("--suite", help="only this suite's records")
    figures.add_argument("--runs", type=Path, default=DEFAULT_RESULTS,
                         help="records: a results, runs or suite folder, or a record file [results]")
    figures.add_argument("--output", type=Path, default=DEFAULT_RESULTS / "figures")
    figures.add_argument("--format", choices=("png", "pdf", "both"), default="both")
    figures.add_argument("--dpi", type=int, default=200)
    figures.add_argument("--explain", action="append", metavar="RUN", default=[],
                         help="also draw RUN's test images with Grad-CAM / attention maps, correct vs incorrect "
                              "(needs its best.pt; repeatable)")

    add_use_verbs(verbs)

    report = verbs.add_parser("report", help="a static results site (HTML) from run records")
    report.add_argument("--suite", help="only this suite's records")
    report.add_argument("--runs", type=Path, default=DEFAULT_RESULTS,
                        help="records: a results, runs or suite folder, or a record file [results]")
    report.add_argument("--output", type=Path, default=DEFAULT_RESULTS / "site", help="the site's folder [results/site]")
    report.add_argument("--figures", type=Path,
                        help="the figures the pages link to; missing ones are drawn there [figures/ beside --output]")
    report.add_argument("--dpi", type=int, default=150, help="resolution of figures drawn for the site [150]")

    perf = verbs.add_parser("perf", help="throughput: our pipeline vs its random-input bound vs the tutorial's")
    perf.add_argument("--model", help="model preset, HF id or local directory (not needed with --data-only)")
    perf.add_argument("--model-source", help="build --model from this HF id or local save_pretrained directory")
    perf.add_argument("--dataset", default="breastmnist", help="dataset name [breastmnist]")
    perf.add_argument("--size", type=int, default=28, help="stored image size of the dataset in px [28]")
    perf.add_argument("--data-root", default="bundled",
                      help="folder with the data files; 'bundled' = the shipped subsets [bundled]")
    perf.add_argument("--batch", type=int, default=32, help="training batch size [32]")
    perf.add_argument("--eval-batch", type=int, default=0, help="inference batch size; 0 = 2 x --batch [0]")
    perf.add_argument("--steps", type=int, default=10, help="timed batches per round and pipeline [10]")
    perf.add_argument("--warmup", type=int, default=3, help="untimed batches before timing, >= 1 [3]")
    perf.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds [2]")
    perf.add_argument("--data-only", action="store_true",
                      help="time the data pipelines alone (augmentation at --input-size), no model")
    perf.add_argument("--input-size", type=int, default=224, help="--data-only: output size in px [224]")
    perf.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="auto = the GPU when there is one [auto]")
    perf.add_argument("--mixed-precision", choices=("auto", "no", "bf16"), default="auto",
                      help="auto = bf16 autocast on a GPU that supports it, else full precision [auto]")
    perf.add_argument("--compile", nargs="?", const="model", default="none",
                      choices=("none", "model", "regional", "reduce-overhead"),
                      help="torch.compile for (a) and (b): the whole model (--compile alone), each repeated block "
                           "(regional), or the whole model with CUDA graphs (reduce-overhead); untimed warm-up [none]")
    perf.add_argument("--compile-backend", default="inductor",
                      help="torch.compile backend for --compile (eager / aot_eager: trace only, no code generation) "
                           "[inductor]")
    perf.add_argument("--profile", action="store_true",
                      help="also profile (a)'s training steps: the top 20 ops by self device time (CPU time on a "
                           "CPU) into a .profile.txt beside the JSON")
    perf.add_argument("--skip-tutorial", action="store_true", help="skip (c), the Trainer pipeline")
    perf.add_argument("--tutorial-steps", type=int, default=0,
                      help="timed batches of (c) in all, after --warmup (a slow pipeline needs fewer for a stable "
                           "rate); 0 = --steps x --rounds [0]")
    perf.add_argument("--peak-tflops", type=float,
                      help="the device's peak bf16 TFLOP/s for MFU (default: known GPUs by name)")
    perf.add_argument("--threads", type=int, default=0,
                      help="torch intra-op threads (1 = per-core figures); 0 = torch's default [0]")
    perf.add_argument("--seed", type=int, default=0)
    perf.add_argument("--output", type=Path, default=DEFAULT_RESULTS / "perf", help="results folder [results/perf]")

    add_common_options(verbs)
    return parser


def add_use_verbs(verbs) -> None:
    """predict / export / explain / serve: use a finished run (a run id, a unique prefix of one, or a record path)."""
    def run_parser(name: str, help: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help)
        parser.add_argument("run", help="run id (or a unique prefix) under --results, SUITE/RUN_ID where suites "
                                         "share a run id, or a record .json path")
        parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder [results]")
        return parser

    predict = run_parser("predict", "label, confidence and class probabilities for images")
    predict.add_argument("images", nargs="+", help="image files, folders, or a dataset split such as breastmnist:test")
    predict.add_argument("--output", type=Path, help="also write the predictions to this .csv or .json file")
    predict.add_argument("--data-root", help="data folder for <dataset>:<split> inputs [the run's]")
    predict.add_argument("--batch", type=int, default=64, help="images per forward pass [64]")

    export = run_parser("export", "ONNX / TorchScript file (optionally int8) + preprocessing JSON + model card")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="[onnx]")
    export.add_argument("--quantize", choices=("int8",), help="dynamic int8 quantisation (measured on the test split)")
    export.add_argument("--output", type=Path, help="folder for the files [<results>/exports/<run_id>]")
    export.add_argument("--data-root", help="data folder for the int8 test measurement [the run's]")

    explain = run_parser("explain", "Grad-CAM (CNNs) or attention rollout (ViTs) overlays as PNG")
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument("--target", help="class name or index to explain [the predicted class]")
    explain.add_argument("--output", type=Path, help="folder for the overlays [<results>/explanations/<run_id>]")

    robust = verbs.add_parser("robustness", help="MedMNIST-C corruption robustness of finished runs, written into "
                                                 "their records (needs the `robustness` extra)")
    robust.add_argument("runs", nargs="+", metavar="RUN",
                        help="run ids (or unique prefixes) under --results, SUITE/RUN_ID where suites share a run "
                             "id, record .json paths or folders of records")
    robust.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder [results]")
    robust.add_argument("--data-root", help="data folder of the runs' datasets [each run's]")
    robust.add_argument("--seed", type=int, default=0, help="seed of the corruptions' randomness (noise, blur angle) [0]")
    robust.add_argument("--corruptions", type=_csv(str), help="only these corruptions, comma-separated [all of the set]")
    robust.add_argument("--force", action="store_true",
                        help="evaluate the named corruptions again where a run has them (merged into its block; a "
                             "block of other settings is replaced); without it they are kept and missing ones added")

    serve = run_parser("serve", "REST API: POST /predict, GET /health, GET /model")
    serve.add_argument("--host", default="127.0.0.1", help="[127.0.0.1: this machine only]")
    serve.add_argument("--port", type=int, default=8000, help="[8000]")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request accepted, in MB [10]")
    serve.add_argument("--max-batch", type=int, default=32, help="most images per forward pass [32]")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="longest a request waits for others to share its forward pass, in ms [5]")


def add_common_options(verbs) -> None:
    """`--quiet`/`--verbose` on every verb; `--debug` after the verb too (SUPPRESS keeps one given before it)."""
    for verb in verbs.choices.values():
        verb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        loudness = verb.add_mutually_exclusive_group()
        loudness.add_argument("-q", "--quiet", action="store_true",
                              help="warnings and errors only: no progress bars, per-run or per-epoch lines")
        loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages too")


class TqdmHandler(logging.Handler):
    """Log lines on stderr, printed through tqdm so that they do not break a progress bar."""

    def format(self, record: logging.LogRecord) -> str:
        """The message; warnings and errors start with their level (`warning: ...`)."""
        message = record.getMessage()
        return f"{record.levelname.lower()}: {message}" if record.levelno >= logging.WARNING else message

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)  # today's stderr (tests swap it)
        except Exception:  # logging must never raise
            self.handleError(record)


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The CLI's messages: the `benchmark` logger at INFO (WARNING with --quiet, DEBUG with --verbose) on stderr.
    A library user configures `logging.getLogger("benchmark")` instead (nothing is installed on import)."""
    logger = logging.getLogger("benchmark")
    for handler in [h for h in logger.handlers if isinstance(h, TqdmHandler)]:  # main() may run many times
        logger.removeHandler(handler)
    logger.addHandler(TqdmHandler())
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


LIBRARY_NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def quiet_warnings() -> None:
    """--quiet: Python warnings are dropped but those our own code raises (a RuntimeWarning of a computation);
    our messages go through logging, and a library's warnings (or the deprecations it pins on our calls to it)
    are nothing a user can act on."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"benchmark(\.|$)")
    for category in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", category=category)


def load_grid(args):
    from benchmark.config import load_suite

    return load_suite(args.suite, datasets=args.datasets, models=args.models, seeds=args.seeds, epochs=args.epochs,
                      batch_size=args.batch_size, limit=args.limit, data_root=args.data_root, download=args.download)


def cmd_run(args) -> int:
    from benchmark.claims import parse_shard, select_shard
    from benchmark.runner import dry_run_table, run_suite

    suite = load_grid(args)
    if args.shard:
        suite = replace(suite, runs=select_shard(suite.runs, parse_shard(args.shard)))
    if args.dry_run:
        print(dry_run_table(suite))
        return 0
    from benchmark.launch.workers import is_worker, parse_gpus, run_workers, stop_with_parent

    if args.gpus and args.workers is None:
        raise UserError("--gpus places the workers of --workers N; add --workers")
    if args.workers is not None and not is_worker():
        return run_workers(args.argv, args.workers, parse_gpus(args.gpus))
    if is_worker():
        stop_with_parent()
    summary = run_suite(suite, args.output, resume=not args.no_resume, force=args.force, fail_fast=args.fail_fast,
                        quiet=args.quiet, keep_checkpoints=args.keep_checkpoints, debug=args.debug, track=args.track,
                        claim_timeout=args.claim_timeout, checkpoint_every=args.checkpoint_every,
                        deterministic=args.deterministic)
    if not summary.main_process:
        return 0
    busy = f", {len(summary.busy)} left to other workers" if summary.busy else ""
    print(f"{suite.name}: {len(summary.completed)} completed, {len(summary.skipped)} skipped (done before), "
          f"{len(summary.failed)} failed{busy}; records in {args.output / 'runs' / suite.name}")
    if not summary.failed:
        return 0
    others = f" (and {len(summary.failed) - 1} more failed runs)" if len(summary.failed) > 1 else ""
    if summary.user_errors:
        raise UserError(summary.user_errors[0] + others)
    run_id, message = summary.failed[0]
    print(f"error: run {run_id} failed: {message}{others}; its record holds the traceback "
          f"(or rerun with --debug)", file=sys.stderr)
    return 1


def cmd_list(args) -> int:
    from benchmark.data import list_datasets
    from benchmark.models import list_models
    from benchmark.suites import list_suites

    print("datasets:", ", ".join(list_datasets()))
    print("models:")
    for name, spec in list_models().items():
        print(f"  {name:<16} {spec.description} [{spec.source}]")
    print("suites:", ", ".join(list_suites()))
    return 0


def cmd_data_check(args) -> int:
    from benchmark.data.duplicates import OUTPUT_SUFFIXES, check_dataset, check_threshold, format_summary
    from benchmark.records import check_output_file, check_writable

    check_threshold(args.threshold)
    default_folder = DEFAULT_RESULTS / "data-check"
    if args.output:
        check_output_file(args.output, OUTPUT_SUFFIXES)
    else:
        check_writable(default_folder)
    report = check_dataset(args.dataset, size=args.size, data_root=args.data_root, split=args.split,
                           threshold=args.threshold)
    suffix = f"-{report.split_kind}" if report.split_kind not in (None, "given") else ""
    output = args.output or default_folder / f"{args.dataset}-{report.size}{suffix}.json"
    print(format_summary(report.summary()))
    print(f"groups written to {report.write(output)}")
    return 0


def cmd_status(args) -> int:
    from benchmark.claims import ClaimSettings, current_claims
    from benchmark.records import load_records, runs_dir, timing_line

    suite = load_grid(args)
    folder = runs_dir(args.output, suite.name)
    records = load_records(folder, one_per_seed=False) if folder.is_dir() else []
    by_hash = {r["config_hash"]: r for r in records}
    claims = current_claims(args.output, suite.name, ClaimSettings.from_env(args.claim_timeout).timeout)
    counts = {"completed": 0, "failed": 0, "running": 0, "stale": 0, "pending": 0}
    for spec in suite.runs:
        record = by_hash.pop(spec.config_hash, None)
        claim = claims.get(spec.run_id)
        status = record["status"] if record and record["status"] == "completed" else "pending"
        detail = f"  {record['error']['message']}" if record and status == "pending" else ""
        if status == "pending" and claim is not None:  # a failed run being redone counts as running
            status = "stale" if claim.stale else "running"
            detail = f"  {claim.worker}, last heartbeat {claim.age:.0f} s ago" + (
                " (abandoned: the next worker takes it over)" if claim.stale else "")
        elif record and status == "pending":
            status = "failed"
        elif status == "completed":
            detail = f"  {timing_line(record.get('timing'))}"
        counts[status] += 1
        print(f"{status:<10} {spec.run_id}{detail}")
    claimed = "".join(f"{counts[key]} {word}, " for key, word in (("running", "running"), ("stale", "abandoned"))
                      if counts[key])
    print(f"{suite.name}: {counts['completed']} done, {counts['failed']} failed, {claimed}{counts['pending']} pending")
    if by_hash:
        print(f"({len(by_hash)} more record(s) in {args.output / 'runs' / suite.name} come from other settings; "
              f"pass the same --limit/--epochs/--seeds/--datasets/--models as the run)")
    return 0


def cmd_leaderboard(args) -> int:
    from benchmark.report import write_leaderboard

    for path in write_leaderboard(args.runs, args.output, suite=args.suite):
        print(path)
    return 0


def perf_config(args: argparse.Namespace):
    """The `perf` options as the API's `PerfConfig` (its fields are the options' names)."""
    from benchmark.perf import PerfConfig

    return PerfConfig(**{f.name: getattr(args, f.name) for f in fields(PerfConfig)})


def cmd_perf(args) -> int:
    from benchmark.perf import run_perf, summary

    result, path = run_perf(perf_config(args))
    print(summary(result))
    print(f"wrote {path}")
    return 1 if result.get("tutorial_error") else 0  # (a) and (b) are written all the same


def cmd_figures(args) -> int:
    from benchmark.report.figures import write_figures

    formats = ("png", "pdf") if args.format == "both" else (args.format,)
    paths = write_figures(args.runs, args.output, suite=args.suite, formats=formats, dpi=args.dpi)
    if args.explain:
        from benchmark.use.explain import write_explanation_figure

        results = next((p for p in (args.runs, *args.runs.parents) if (p / "runs").is_dir()), args.runs)
        for run in args.explain:
            paths += write_explanation_figure(run, args.output, results=results, formats=formats, dpi=args.dpi)
    print(f"{len(paths)} figure files in {args.output}")
    return 0


def cmd_report(args) -> int:
    from benchmark.report.site import write_site

    paths = write_site(args.runs, args.output, suite=args.suite, figures=args.figures, dpi=args.dpi)
    print(f"{len(paths)} files in {args.output}; open {args.output / 'index.html'}")
    return 0


def cmd_submit(args) -> int:
    from benchmark.launch import submit_grid
    from benchmark.records import check_writable

    suite = load_grid(args)
    check_writable(args.output)  # the task logs go there
    submit_grid(suite, args)
    return 0


def cmd_predict(args) -> int:
    from benchmark.records import check_output_file
    from benchmark.use.predict import OUTPUT_SUFFIXES, check_batch_size, predict

    check_batch_size(args.batch)
    if args.output:
        check_output_file(args.output, OUTPUT_SUFFIXES)
    report = predict(args.run, args.images, results=args.results, data_root=args.data_root, batch_size=args.batch)
    if report.predictions:
        print(report.table())
    if args.output:
        print(f"wrote {report.write(args.output)}")
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    if report.errors:
        print(f"error: {len(report.errors)} of {len(report.errors) + len(report.predictions)} inputs could not be "
              f"predicted", file=sys.stderr)
    return 1 if report.errors else 0


def cmd_export(args) -> int:
    from benchmark.use.export import export_model

    result = export_model(args.run, args.format, args.quantize, output=args.output, results=args.results,
                          data_root=args.data_root)
    check = result.check
    print(f"{result.path} ({check['bytes'] / 1e6:.2f} MB): max |Δprob| vs PyTorch {check['max_abs_dprob']:.2e} "
          f"on {check['images']} test images")
    if "test" in check:
        change = check["test"]["change"]
        print(f"int8 quantised: {check['quantized']}")
        print(f"int8: {check['size_ratio']:.2f} × the fp32 size; test ACC {change['acc']:+.4f}, AUC {change['auc']:+.4f} "
              f"vs PyTorch fp32 on {check['test']['n_test']} test images")
    print(f"preprocessing.json and README.md (model card) in {result.folder}")
    return 0


def cmd_explain(args) -> int:
    from benchmark.use.explain import explain

    explanations, errors = explain(args.run, args.images, results=args.results, output=args.output,
                                   target=args.target)
    for item in explanations:
        print(f"{item.image}: {item.label} ({item.confidence:.3f}), {item.method} for {item.target} → {item.path}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


def cmd_robustness(args) -> int:
    from benchmark.use.robustness import robustness, summary_table

    done = robustness(args.runs, results=args.results, data_root=args.data_root, seed=args.seed, force=args.force,
                      corruption_names=args.corruptions, progress=not args.quiet)
    print(summary_table(done))
    return 0


def cmd_serve(args) -> int:
    from benchmark.use.serve import serve

    serve(args.run, results=args.results, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, quiet=args.quiet)
    return 0


COMMANDS = {"run": cmd_run, "submit": cmd_submit, "perf": cmd_perf, "list": cmd_list, "status": cmd_status,
            "leaderboard": cmd_leaderboard, "figures": cmd_figures, "predict": cmd_predict, "export": cmd_export,
            "explain": cmd_explain, "serve": cmd_serve, "data-check": cmd_data_check,
            "report": cmd_report, "robustness": cmd_robustness}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `run --workers` starts the same command in each worker
    configure_logging(args.quiet, args.verbose)
    try:
        if args.verb in ("run", "list", "status", "submit", "predict", "export", "explain", "serve", "data-check",
                         "robustness"):
            from benchmark.environment import quiet_libraries

            quiet_libraries()
        with warnings.catch_warnings():  # main() may run many times in one process (tests): filters end with it
            if args.quiet:
                quiet_warnings()
            return COMMANDS[args.verb](args)
    except UserError as err:
        if args.debug:
            raise
        for line in str(err).splitlines():  # one line per problem (a grid's missing inputs: one per thing)
            print(f"error: {line}", file=sys.stderr)
        return UserError.exit_status
    except KeyboardInterrupt as err:  # or SIGTERM (`checkpoint.Interrupted`): after a checkpoint
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    except BrokenPipeError:  # `benchmark list | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
