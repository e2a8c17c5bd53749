"""Print the per-run table of results/REPRODUCTION.md from the run records alone.

    python scripts/run_table.py [RECORDS]        # default: results/runs/medmnist-v2 (any folder load_records takes)

One row per completed run: best epoch, test ACC / AUC / balanced ACC, training minutes (the sum of the per-epoch
training times in the history, so resumed runs count every session), the epoch its last session resumed at, the test
images per predicted and per true class, and for binary tasks the best test ACC any threshold on the class-1
probability could reach (a diagnostic, never a result: it is chosen on the test set).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmark.records import load_records


def best_threshold_acc(labels: np.ndarray, positive: np.ndarray) -> float:
    """The highest accuracy of `positive > t` over every threshold t."""
    cuts = np.concatenate([[-np.inf], np.unique(positive)])
    return max(float(np.mean((positive > t) == labels)) for t in cuts)


def row(record: dict) -> str:
    labels = np.asarray(record["test_predictions"]["labels"])
    probs = np.asarray(record["test_predictions"]["probs"])
    k = probs.shape[1]
    test = record["test"]
    minutes = sum(entry["seconds"] for entry in record["history"]) / 60
    best_any = f"{best_threshold_acc(labels, probs[:, 1]):.3f}" if k == 2 else "—"
    cells = [record["dataset"]["name"], record["model"]["name"], str(record["seed"]), str(record["best_epoch"]),
             f"{test['acc']:.3f}", f"{test['auc']:.3f}", f"{test['balanced_acc']:.3f}", f"{minutes:.0f}",
             str(record["resumed_from_epoch"] or "—"),
             f"{np.bincount(probs.argmax(1), minlength=k).tolist()} / {np.bincount(labels, minlength=k).tolist()}",
             best_any]
    return "| " + " | ".join(cells) + " |"


def main(runs: Path) -> None:
    records = load_records(runs)
    print("| dataset | model | seed | best epoch | test ACC | test AUC | balanced ACC | training minutes "
          "| resumed at epoch | test images per predicted / true class | best ACC of any threshold |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for record in sorted(records, key=lambda r: (r["dataset"]["name"], r["model"]["name"], r["seed"])):
        if record["status"] == "completed":
            print(row(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/runs/medmnist-v2"))
