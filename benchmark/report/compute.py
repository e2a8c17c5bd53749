"""What the runs cost: the compute table of the leaderboard and the site, from the records' `compute` blocks.

One row per test set × model × size × scheme: the seed mean of each quantity of `benchmark.compute` (parameters,
FLOPs per image, training FLOPs, device-seconds, training images/s, peak memory) over the completed runs whose
record has a compute block, and the devices they ran on. Records written before the block existed count in no
mean, and a cell none of whose runs has the quantity stays empty; a suite without any compute block gets no table.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from benchmark.records import Record, test_set
from benchmark.report import render

# (column of `compute_frame`, table header, scale, digits): the quantities shown, in order
QUANTITIES = (
    ("n_params", "Params (M)", 1e-6, 2),
    ("flops_inference", "GFLOP/img fwd", 1e-9, 3),
    ("flops_train", "GFLOP/img train", 1e-9, 3),
    ("train_flops", "Train FLOPs", 1.0, None),  # None: 3 significant digits (1.23e+15)
    ("device_seconds", "Device-s", 1.0, 1),
    ("train_images_per_second", "Train img/s", 1.0, 1),
    ("peak_memory_mb", "Peak MB", 1.0, 0),
)
GROUP = ["suite", "dataset", "model", "size", "scheme"]
INTRO = ("Seed means over the completed runs whose record holds a compute block (*Seeds* = how many; older records "
         "have none and leave their cells empty). FLOPs: matrix products and convolutions counted by torch's "
         "FlopCounterMode, 2 per multiply-add, *train* = forward + backward per image (whole-model fine-tuning "
         "only); *Train FLOPs* = train FLOPs per image × images trained; *Device-s* = training seconds × devices.")


def compute_frame(records: Iterable[Record]) -> pd.DataFrame:
    """One row per completed record: its group, seed, test ACC/AUC and compute quantities (NaN where missing)."""
    rows = []
    for record in records:
        if record["status"] != "completed":
            continue
        compute = record.get("compute") or {}
        flops = compute.get("flops_per_image") or {}
        rows.append({
            "suite": str(record.get("suite")), "dataset": test_set(record), "model": str(record["model"]["name"]),
            "size": int(record["dataset"]["size"]), "scheme": str(record.get("scheme") or ""), "seed": record["seed"],
            "run_id": record["run_id"], "acc": (record.get("test") or {}).get("acc"),
            "auc": (record.get("test") or {}).get("auc"), "has_compute": bool(compute),
            "n_params": compute.get("n_params"), "flops_inference": flops.get("inference"),
            "flops_train": flops.get("train"), "train_flops": compute.get("train_flops"),
            "device_seconds": compute.get("device_seconds"),
            "train_images_per_second": compute.get("train_images_per_second"),
            "peak_memory_mb": compute.get("peak_memory_mb"), "device_name": compute.get("device_name"),
        })
    columns = GROUP + ["seed", "run_id", "acc", "auc", "has_compute", *(q[0] for q in QUANTITIES), "device_name"]
    frame = pd.DataFrame(rows, columns=columns)
    for name in ("acc", "auc", *(q[0] for q in QUANTITIES)):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def compute_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group: the mean of each quantity over the runs with a compute block, their number and their devices;
    empty when no run has a compute block."""
    measured = frame[frame["has_compute"]]
    if measured.empty:
        return pd.DataFrame(columns=GROUP + [q[0] for q in QUANTITIES] + ["n_seeds", "devices", "acc", "auc"])
    grouped = measured.groupby(GROUP, sort=True)
    summary = grouped[[q[0] for q in QUANTITIES] + ["acc", "auc"]].mean()
    summary["n_seeds"] = grouped.size()
    summary["devices"] = grouped["device_name"].agg(lambda names: ", ".join(sorted({str(n) for n in names if n})))
    return summary.reset_index()


def quantity_text(value: float, scale: float, digits: int | None) -> str:
    if pd.isna(value):
        return render.DASH
    return f"{value * scale:.3g}" if digits is None else render.fmt(value * scale, digits)


def compute_table(records: Iterable[Record], suite: str) -> render.Table | None:
    """The suite's compute table (None when none of its records has a compute block)."""
    summary = compute_summary(compute_frame(records))
    if summary.empty:
        return None
    rows = []
    for r in summary.itertuples(index=False):
        cells = [render.Cell(r.dataset), render.Cell(r.model), render.Cell(str(r.size)), render.Cell(r.scheme)]
        cells += [render.Cell(quantity_text(getattr(r, name), scale, digits)) for name, _, scale, digits in QUANTITIES]
        cells += [render.Cell(str(r.n_seeds)), render.Cell(r.devices or render.DASH)]
        rows.append(cells)
    columns = ["Dataset", "Model", "Size", "Scheme", *(q[1] for q in QUANTITIES), "Seeds", "Device"]
    return render.Table(title=f"Compute — {suite}", columns=columns, align="llrl" + "r" * len(QUANTITIES) + "rl",
                        rows=rows, caption=f"What the runs of {suite} cost. {INTRO}",
                        label=f"tab:compute-{render.slug(suite)}")


def compute_csv_rows(records: Iterable[Record], suite: str) -> list[dict]:
    """leaderboard.csv rows (table "compute"): one per group and quantity, the seed mean in `mean`, the devices in
    `source`."""
    out = []
    for r in compute_summary(compute_frame(records)).itertuples(index=False):
        for name, *_ in QUANTITIES:
            out.append(dict(suite=suite, table="compute", metric=name, kind="measured", model=r.model, size=r.size,
                            scheme=r.scheme, source=r.devices, dataset=r.dataset, mean=render.fmt_csv(getattr(r, name)),
                            n_seeds=r.n_seeds, status="ok"))
    return out
