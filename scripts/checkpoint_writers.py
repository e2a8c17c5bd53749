"""How long a checkpoint write stalls training, three ways, on a ResNet-18 (28 px) with its Adam state (CPU):

- `sync`: `torch.save` to a temp file, fsync, rename, on the training thread (what `fit` did before);
- `thread`: `benchmark.checkpoint.RunCheckpoints.save`: a CPU snapshot on the training thread, the same write
  on a background thread (what `fit` does now);
- `dcp`: `torch.distributed.checkpoint.async_save(no_dist=True)`: its own staging copy, then its writer thread.

For each: the training thread's stall per checkpoint; the seconds of `--steps` training steps run right after
the call (while a background write goes on) against the same steps without a write ("none"); and, in a
second call waited for at once, the seconds until the checkpoint is on disk. Medians of `--rounds`,
interleaved. Writes `results/perf/checkpoint-writers-cpu.json`.

    python scripts/checkpoint_writers.py --rounds 5 --steps 3 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from benchmark.checkpoint import RunCheckpoints, atomic_torch_save, rng_states
from benchmark.environment import device_name, package_versions
from benchmark.models.registry import build_model, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps timed after each call")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path("results/perf/checkpoint-writers-cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    built = build_model(resolve_model("resnet18_28"), ["a", "b"], 1)
    model = built.module.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 2, (args.batch,))

    def train(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    train(2)  # Adam's moments exist from here on
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_states(),
                "loop": {"epoch": 1}}

    results: dict[str, dict[str, list[float]]] = {name: {"stall": [], "durable": [], "steps": []}
                                                  for name in ("none", "sync", "thread", "dcp")}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoints = RunCheckpoints(folder / "thread", every=0)
        for round_index in range(args.rounds):
            for name in results:
                for phase in ("steps", "durable"):
                    started = time.perf_counter()
                    if name == "sync":
                        atomic_torch_save({**state(), "best": {"epoch": 1, "weights": best}}, folder / "sync.pt")
                    elif name == "thread":
                        checkpoints.save(state(), {"epoch": 1, "weights": best})
                    elif name == "dcp":
                        future = dcp.async_save({**state(), "best": best},
                                                checkpoint_id=folder / f"dcp-{round_index}-{phase}", no_dist=True)
                    stall = time.perf_counter() - started
                    steps = train(args.steps) if phase == "steps" else 0.0
                    if name == "thread":
                        checkpoints.close()
                    elif name == "dcp":
                        future.result()
                    if phase == "steps":
                        results[name]["stall"].append(stall)
                        results[name]["steps"].append(steps)
                    else:
                        results[name]["durable"].append(time.perf_counter() - started)
        size = (folder / "sync.pt").stat().st_size

    summary = {name: {key: statistics.median(values) for key, values in timings.items()}
               for name, timings in results.items()}
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "what": "seconds per checkpoint of a ResNet-18 (28 px) with Adam state plus best weights: the training "
                "thread's stall; --steps training steps run right after the call, while a background write goes "
                "on (none: without a checkpoint); until on disk when waited for at once; medians of interleaved "
                "rounds",
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "checkpoint_bytes": size,
        "rounds": args.rounds, "steps": args.steps, "batch": args.batch,
        "versions": package_versions(),
        "median_seconds": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    for name, values in summary.items():
        print(f"{name:<7} stall {values['stall']:.3f} s, durable {values['durable']:.3f} s, "
              f"{args.steps} steps {values['steps']:.2f} s")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
