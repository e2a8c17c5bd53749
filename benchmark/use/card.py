"""The model card of a run: a dict (served as JSON by `serve`) and its Hugging Face README.md rendering.

Everything comes from the run's record and the records of the same configuration with other seeds beside it
(test metrics per seed; their mean and sample std computed as the leaderboard computes a cell,
`benchmark.report.aggregate.cell_stats`); nothing is measured here.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import yaml

from benchmark.metrics import HEADLINE_METRICS
from benchmark.records import read_record, records_frame
from benchmark.report.aggregate import CELL, cell_stats
from benchmark.use.loaded import LoadedRun

INTENDED_USE = ("Research on medical image classification: benchmarking, reproducing published results, "
                "studying model behaviour. Not for diagnosis, triage or any clinical decision.")
LIMITATIONS = [
    "Research use only. This is not a medical device and it has not been validated clinically.",
    ("Trained and tested on one public data set; performance on images from other scanners, sites, "
     "populations or acquisition protocols is unknown and may be much lower."),
    "Confidences are softmax probabilities; they are not calibrated risks.",
    ("Inputs are resized to the data set's stored size without keeping the aspect ratio, as the data set's own "
     "images were."),
]


def _same_config_other_seeds(loaded: LoadedRun) -> list[dict]:
    """Completed records of the run's suite whose config equals the run's except for the seed (the run included).

    Only the files named as the run's other seeds would be (`<dataset>-<size>-<model>[-<scheme>]-s<seed>-<hash>`)
    are read, and quietly: the other records of the folder are no concern of this run's card."""
    def without_seed(record: dict) -> dict:
        return {k: v for k, v in record["config"].items() if k != "seed"}

    own, run_id = without_seed(loaded.record), loaded.run_id
    cut = run_id.rfind(f"-s{loaded.record['seed']}-")
    siblings = sorted(loaded.record_path.parent.glob(f"{glob.escape(run_id[:cut])}-s*.json")) if cut > 0 else []
    found = {loaded.run_id: loaded.record}
    for record in (read_record(path, quiet=True) for path in siblings):
        if record and record["status"] == "completed" and without_seed(record) == own:
            found.setdefault(record["run_id"], record)
    return sorted(found.values(), key=lambda r: r["seed"])


def seed_summary(records: list[dict], run_id: str) -> dict[str, dict]:
    """Per headline metric, the mean, sample std and number of seeds with a finite value over `records` (the
    run's configuration, one record per seed) as `cell_stats` gives them for the cell of the run `run_id`; None
    where there is no value (std: fewer than two)."""
    frame = records_frame(records)
    cell = tuple(frame.loc[frame["run_id"] == run_id, CELL].iloc[0])

    def number(value) -> float | None:
        return None if value is None or not math.isfinite(value) else float(value)

    summary = {}
    for metric in HEADLINE_METRICS:
        stats = cell_stats(frame, metric).set_index(CELL).loc[cell]
        summary[metric] = {"mean": number(stats["mean"]), "std": number(stats["std"]), "n_seeds": int(stats["n"])}
    return summary


def _steps(loaded: LoadedRun) -> list[str]:
    """The evaluation transform (`BatchTransform._transform`) in words, for an image of any size and mode."""
    transform, stored = loaded.transform, loaded.size
    size = transform.input_size
    channels = ("repeat the gray channel to 3 channels; " if transform.in_channels > loaded.channels else
                "convert to luma (0.299 R + 0.587 G + 0.114 B); " if transform.in_channels < loaded.channels else "")
    steps = [f"convert to {'8-bit grayscale (luma)' if loaded.channels == 1 else 'RGB'} (16-bit: value / 257)",
             f"resize to {stored} x {stored} (bilinear) — the data set's stored format"]
    if stored > size:
        steps.append(f"resize to {size} x {size} (bilinear, antialiased)")
    elif stored < size and transform.resize == "interpolate":
        steps.append(f"resize to {size} x {size} "
                     f"({'nearest neighbour' if transform.upsample == 'nearest' else 'bilinear'})")
    steps.append(f"{channels}scale to [0, 1], subtract mean, divide by std per channel")
    if loaded.padding and stored < size:
        before, after = loaded.padding
        steps.append(f"pad to {size} x {size} with zeros (0 after normalising: the channel mean), the image centred: "
                     f"{before} rows above and columns left of it, {after} below and right")
    return steps


def preprocessing(loaded: LoadedRun) -> dict:
    """What a consumer of an exported model must do to an image before it: the run's evaluation preprocessing.
    `padding` (resize: pad runs) gives the zero margins around the image, in pixels of the input."""
    transform = loaded.transform
    padding = None
    if loaded.padding:
        before, after = loaded.padding
        padding = {"top": before, "bottom": after, "left": before, "right": after}
    return {
        "input": "pixel_values: float32 (batch, channels, input_size, input_size), NCHW; the batch size is free",
        "output": "logits: float32 (batch, n_classes); softmax gives the class probabilities",
        "stored_size": loaded.size,
        "stored_channels": loaded.channels,
        "input_size": transform.input_size,
        "channels": transform.in_channels,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "resize": transform.resize,
        "upsample": transform.upsample,
        "padding": padding,
        "class_names": loaded.class_names,
        "task": loaded.record["dataset"]["task"],
        "steps": _steps(loaded),
    }


def model_card(loaded: LoadedRun) -> dict:
    record, config = loaded.record, loaded.record["config"]
    seeds = _same_config_other_seeds(loaded)
    per_seed = [{"seed": r["seed"], "run_id": r["run_id"],
                 **{m: r["test"].get(m) for m in HEADLINE_METRICS}} for r in seeds]
    summary = seed_summary(seeds, record["run_id"])
    dataset = dict(record["dataset"])
    dataset["source"] = Path(str(dataset.get("source", ""))).name  # a file name, not this machine's path
    return {
        "run_id": record["run_id"],
        "suite": record["suite"],
        "model": {k: record["model"].get(k) for k in ("name", "family", "source", "pretrained", "input_size",
                                                      "n_params")},
        "scheme": record.get("scheme"),
        "dataset": dataset,
        "data_variant": config.get("data_root") if config.get("data_root") == "bundled" else None,
        "limit": config.get("limit") or None,
        "recipe": config["recipe"],
        "seed": record["seed"],
        "best_epoch": record.get("best_epoch"),
        "selection_metric": record.get("selection_metric"),
        "test": {"this_run": {m: record["test"].get(m) for m in HEADLINE_METRICS}, "per_seed": per_seed,
                 "summary": summary},
        "preprocessing": preprocessing(loaded),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "environment": {k: record.get("environment", {}).get(k) for k in ("device", "device_name", "git_commit")},
        "created_at": record.get("created_at"),
    }


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_card(card: dict, formats: list[str] | None = None) -> str:
    """README.md in the Hugging Face model-card format: YAML front matter, then the card as prose and tables."""
    this = card["test"]["this_run"]
    dataset = card["dataset"]
    front = {
        "library_name": "transformers" if card["model"]["family"] == "hf" else "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["medical-imaging", "medmnist", "image-classification", "research-only", *(formats or [])],
        "datasets": [dataset["name"]],
        "metrics": ["accuracy", "roc_auc"],
        "model-index": [{"name": card["run_id"], "results": [{
            "task": {"type": "image-classification"},
            "dataset": {"name": f"{dataset['name']} ({dataset['size']} px), test split", "type": dataset["name"]},
            "metrics": [{"type": "accuracy", "value": this["acc"], "name": f"test ACC (seed {card['seed']})"},
                        {"type": "roc_auc", "value": this["auc"], "name": f"test AUC (seed {card['seed']})"}],
        }]}],
    }
    seeds_rows = "\n".join(f"| {r['seed']} | `{r['run_id']}` | " + " | ".join(_fmt(r[m]) for m in HEADLINE_METRICS)
                           + " |" for r in card["test"]["per_seed"])
    summary = card["test"]["summary"]
    mean_row = " | ".join(f"{_fmt(summary[m]['mean'])} ± {_fmt(summary[m]['std'])}" for m in HEADLINE_METRICS)
    recipe = ", ".join(f"{k} {v}" for k, v in card["recipe"].items())
    pre = card["preprocessing"]
    limit = f", first {card['limit']} images per split" if card["limit"] else ""
    subset = (f" Trained on the shipped subset (`data_root: bundled`{limit}), so the numbers are not comparable "
              "with published full-data results." if card["data_variant"] else "")
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {card['model']['name']} on {dataset['name']} ({dataset['size']} px) — run `{card['run_id']}`", "",
        "**Research use only — not a medical device.** " + card["intended_use"], "",
        "## Model", "",
        (f"- Architecture: {card['model']['name']} ({card['model']['family']}, source "
         f"`{card['model']['source']}`), {card['model']['n_params']:,} parameters, {card['scheme']}."),
        f"- Classes ({len(pre['class_names'])}): " + ", ".join(f"`{c}`" for c in pre["class_names"]) + ".",
        f"- Weights: the best epoch ({card['best_epoch']}) by validation {card['selection_metric']}, seed {card['seed']}.",
        "",
        "## Data", "",
        f"- {dataset['name']} at {dataset['size']} px, task {dataset['task']}: {dataset.get('n_train')} train / "
        f"{dataset.get('n_val')} validation / {dataset.get('n_test')} test images (source `{dataset.get('source')}`)."
        + subset,
        "- MedMNIST v2 (Yang et al., Scientific Data 2023, CC BY 4.0); BUSI (Al-Dhabyani et al., Data in Brief 2020).",
        "",
        "## Training recipe", "", recipe + ".", "",
        "## Test metrics", "",
        "| seed | run | " + " | ".join(HEADLINE_METRICS) + " |",
        "|---:|---|" + "---:|" * len(HEADLINE_METRICS),
        seeds_rows,
        f"| mean ± std | {summary['acc']['n_seeds']} seed(s) | {mean_row} |", "",
        "## Preprocessing", "",
        *[f"{i}. {step}" for i, step in enumerate(pre["steps"], 1)],
        f"\nmean {pre['mean']}, std {pre['std']}; `preprocessing.json` beside the model holds these values.", "",
        "## Intended use", "", card["intended_use"], "",
        "## Limitations", "", *[f"- {item}" for item in card["limitations"]], "",
    ]
    return "\n".join(lines)
