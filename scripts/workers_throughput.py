"""Runs per hour of `benchmark run --workers N` on one machine, for several N, on the same small grid.

For each N the grid trains from scratch into a fresh results folder (`python -m benchmark run ... --workers N`);
the wall time from start to the last worker's exit gives runs/hour, and the claims log each run's own
seconds, whose mean gives runs/hour while N train at once (N / mean run seconds: no start-up, no tail). The
records of every N are compared with those of the first N: the same config hashes, and whether their numbers
(history, best epoch, test metrics and probabilities) are identical (expected on CPU at a fixed thread count; a
GPU's kernels need not be deterministic, so there the largest test-ACC difference is reported too). One JSON goes
to --output with the exact command.

    python scripts/workers_throughput.py --workers 1,2 --data-root ../shared/data/medmnist \
        --datasets breastmnist,retinamnist --models resnet18_28 --seeds 0,1 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmark.claims import claim_events  # noqa: E402
from benchmark.records import learned  # noqa: E402


def outcomes(results: Path, suite: str) -> dict[str, dict]:
    """config_hash -> what the run learned and scored (`records.learned`: no timings, hosts or compute)."""
    records = (json.loads(path.read_text()) for path in sorted((results / "runs" / suite).glob("*.json")))
    return {record["config_hash"]: learned(record) for record in records}


def run_seconds(results: Path, suite: str) -> list[float]:
    """Claim-to-release seconds of each run that completed, from the claims log: a run's own time while the other
    workers trained beside it, without the workers' start-up and the grid's tail."""
    claimed, seconds = {}, []
    for event in claim_events(results, suite):
        at = datetime.fromisoformat(event["time"]).timestamp()
        if event["event"] == "claim":
            claimed[event["run_id"]] = at
        elif event["event"] == "release" and event["outcome"] == "completed" and event["run_id"] in claimed:
            seconds.append(at - claimed.pop(event["run_id"]))
    return seconds


def measure(workers: int, grid: list[str], suite: str, gpus: str | None, scratch: Path) -> tuple[dict, dict]:
    output = scratch / f"workers-{workers}"
    command = [sys.executable, "-m", "benchmark", "run", *grid, "--workers", str(workers), "--output", str(output),
               "--quiet", *(["--gpus", gpus] if gpus else [])]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))  # keep the caller's packages
    done = subprocess.run(command, cwd=PROJECT, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    found = outcomes(output, suite)
    completed = sum(o["status"] == "completed" for o in found.values())
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // workers))
    result = {"workers": workers, "exit_status": done.returncode, "wall_seconds": seconds, "runs_completed": completed,
              "runs_per_hour": 3600 * completed / seconds if seconds > 0 else None, "threads_per_worker": int(threads),
              **packed_rate(workers, run_seconds(output, suite)),
              "load_average_at_start": load,
              "log_tail": (done.stdout + done.stderr)[-1500:] if done.returncode else ""}
    return result, found


def packed_rate(workers: int, seconds: list[float]) -> dict:
    """Runs/hour while N runs train at once (N over the mean run's seconds): what packing gains once start-up is
    paid, which a short grid's wall time hides (at N = 8 on 8 runs each worker starts up for one run)."""
    mean = sum(seconds) / len(seconds) if seconds else None
    return {"mean_run_seconds": mean, "runs_per_hour_packed": 3600 * workers / mean if mean else None}


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict:
    same_hashes = bool(reference) and set(reference) == set(other)  # no runs at all compare as nothing
    identical = same_hashes and all(json.dumps(reference[h], sort_keys=True) == json.dumps(other[h], sort_keys=True)
                                    for h in reference)
    gaps = [abs(reference[h]["test"]["acc"] - other[h]["test"]["acc"]) for h in set(reference) & set(other)
            if reference[h]["test"] and other[h]["test"]]
    return {"same_config_hashes": same_hashes, "identical_numbers": identical,
            "max_abs_test_acc_difference": max(gaps) if gaps else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="values of N, comma-separated [1,2]")
    parser.add_argument("--suite", default="medmnist-v2")
    parser.add_argument("--datasets", default="breastmnist,retinamnist")
    parser.add_argument("--models", default="resnet18_28")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, help="first N images per split (tiny dry runs)")
    parser.add_argument("--data-root", required=True, help="folder of the MedMNIST .npz files ('bundled' works)")
    parser.add_argument("--gpus", help="passed to run --gpus (worker i on GPU i mod len)")
    parser.add_argument("--output", type=Path, default=PROJECT / "results" / "perf")
    parser.add_argument("--name", help="result file name [workers-<suite>-<device>.json]")
    args = parser.parse_args(argv)

    import torch

    from benchmark.data.registry import portable_path
    from benchmark.perf import environment, slug, write_result

    grid = ["--suite", args.suite, "--datasets", args.datasets, "--models", args.models, "--seeds", args.seeds,
            "--epochs", str(args.epochs), "--data-root", args.data_root,
            *(["--limit", str(args.limit)] if args.limit else [])]
    counts = [int(n) for n in args.workers.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    argv_text = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/workers_throughput.py", *(portable_path(a) for a in argv_text)])
    where = "cpu" if device.type == "cpu" else slug(torch.cuda.get_device_name(device))
    name = args.name or f"workers-{args.suite}-{where}.json"
    out = {"command": command, "grid": [portable_path(a) for a in grid],
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "results": [], "environment": environment(device)}
    measured, reference = out["results"], None
    with tempfile.TemporaryDirectory(prefix="workers-") as scratch:
        for workers in counts:
            result, found = measure(workers, grid, args.suite, args.gpus, Path(scratch))
            reference = found if reference is None else reference
            result.update(compare(reference, found))
            if measured and measured[0]["runs_per_hour"] and result["runs_per_hour"]:
                result["speedup_over_first"] = result["runs_per_hour"] / measured[0]["runs_per_hour"]
            if measured and measured[0]["runs_per_hour_packed"] and result["runs_per_hour_packed"]:
                result["packed_speedup_over_first"] = (result["runs_per_hour_packed"]
                                                       / measured[0]["runs_per_hour_packed"])
            measured.append(result)
            print(f"workers {workers}: {result['runs_completed']} runs in {result['wall_seconds']:.1f} s = "
                  f"{result['runs_per_hour'] or 0:.1f} runs/hour, {result['runs_per_hour_packed'] or 0:.1f} while "
                  f"{workers} train at once ({result['threads_per_worker']} threads each); "
                  f"identical to N={counts[0]}: {result['identical_numbers']}", flush=True)
            path = write_result(out, args.output, name)  # after each N: a run cut off later keeps what it measured
    print(f"wrote {path}")
    return 0 if all(r["exit_status"] == 0 for r in measured) else 1


if __name__ == "__main__":
    raise SystemExit(main())
