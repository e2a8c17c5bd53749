"""Batch prediction throughput on CPU of finished runs: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8.

Exports each run (`benchmark.use.export.export_model`: ONNX fp32 and dynamic int8, each checked at export time,
into a temporary folder) and times the three engines side by side in one process, interleaved round by round,
on the run's own test images (repeated to --images) already preprocessed: the same float input for every
engine, so only the model is timed. Writes `results/perf/use-throughput-<suite>-b<batch>-t<threads>.json`
with the exact command, the machine and the versions.

    python -m benchmark run --datasets breastmnist          # the smoke runs (ResNet-18 28 px, 2-layer ViT)
    python scripts/use_throughput.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmark.environment import device_name, package_versions
from benchmark.train import prepare_pixels
from benchmark.use.export import Runner, export_model
from benchmark.use.loaded import load_run


def images_per_second(engine, batches: list[torch.Tensor]) -> float:
    """Throughput of `engine` over `batches`, after one untimed warm-up batch."""
    engine(batches[0])
    started = time.perf_counter()
    for batch in batches:
        engine(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def measure(run: str, results: Path, batch: int, images: int, rounds: int, threads: int, scratch: Path) -> dict:
    loaded = load_run(run, results)
    fp32 = export_model(loaded, "onnx", output=scratch / loaded.run_id)
    int8 = export_model(loaded, "onnx", "int8", output=scratch / loaded.run_id)
    split = loaded.dataset_split("test")
    pixels = loaded.pixels(np.resize(split.images, (images, *split.images.shape[1:])))  # test images, repeated
    batches = list(pixels.split(batch))

    @torch.no_grad()
    def eager(x: torch.Tensor):
        return loaded.model(prepare_pixels(x, loaded.channels_last))

    engines = {"pytorch_eager_fp32": eager,
               "onnxruntime_fp32": Runner(fp32.folder / "model.onnx", "onnx", threads),
               "onnxruntime_int8": Runner(int8.path, "onnx", threads)}
    speeds = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            speeds[name].append(round(images_per_second(engine, batches), 1))
    return {
        "run_id": loaded.run_id,
        "model": loaded.record["model"]["name"],
        "n_params": loaded.record["model"]["n_params"],
        "input": f"{len(pixels)} test images of {loaded.record['dataset']['name']} (repeated), preprocessed to "
                 f"{list(pixels.shape[1:])}, batches of {batch}",
        "images_per_second_median": {name: float(np.median(v)) for name, v in speeds.items()},
        "images_per_second_rounds": speeds,
        "file_bytes": {"best.pt": loaded.checkpoint.stat().st_size, "model.onnx": fp32.check["bytes"],
                       "model.int8.onnx": int8.check["bytes"]},
        "fp32_max_abs_dprob": fp32.check["max_abs_dprob"],
        "int8_max_abs_dprob": int8.check["max_abs_dprob"],
        "int8_test_change": int8.check["test"],
    }


def record_of(results: Path, suite: str, run: str) -> str:
    """The record path of run id (or unique prefix) `run` in the suite's folder."""
    [path] = sorted((results / "runs" / suite).glob(f"{run}*.json"))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder [results]")
    parser.add_argument("--suite", default="smoke", help="the suite whose runs are timed [smoke]")
    parser.add_argument("--runs", nargs="+", default=["breastmnist-28-resnet18_28-s0", "breastmnist-28-vit_tiny-s0"],
                        help="run ids (or unique prefixes) [the smoke suite's BreastMNIST ResNet and ViT]")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="images per timed pass [512]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per engine [3]")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime [1]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        runs = [measure(record_of(args.results, args.suite, run), args.results, args.batch, args.images, args.rounds,
                        args.threads, Path(scratch)) for run in args.runs]
    out = {
        "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "what": "batch prediction throughput (images/s, median of interleaved rounds) of the model alone on "
                "preprocessed test images: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime dynamic int8",
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "versions": {**package_versions(), "onnxruntime": onnxruntime.__version__},
        "runs": runs,
    }
    path = args.results / "perf" / f"use-throughput-{args.suite}-b{args.batch}-t{args.threads}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    for run in runs:
        speeds = "  ".join(f"{k} {v:.0f}" for k, v in run["images_per_second_median"].items())
        print(f"{run['model']}: {speeds} img/s; bytes {run['file_bytes']}")
    print(path)


if __name__ == "__main__":
    main()
