"""Schema-valid run records (plain dicts, schema_version 1 of docs/design.md) for tests.

Predictions are drawn from a seeded RNG; every metric, the per-class block and the confusion matrix are then
derived from those predictions with scikit-learn, so a record is internally consistent. Images in
`record["samples"]` are small synthetic patterns encoded as base64 PNG.

    rec = make_record(dataset="breastmnist", model="resnet18_28", seed=0)
    recs = make_grid()                      # 2 datasets x 2 models x 3 seeds, one seed missing, one failed run
    write_records(recs, tmp_path / "runs")  # -> runs/<suite>/<run_id>.json
    write_suite_file(tmp_path / "suites", "unit", datasets=["breastmnist", ("breast_ultrasound", 64)])  # the plan
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from sklearn import metrics as skm

DATASETS: dict[str, dict] = {
    "breastmnist": {"task": "binary-class", "class_names": ["malignant", "normal, benign"], "channels": 1},
    "retinamnist": {"task": "ordinal-regression", "class_names": ["0", "1", "2", "3", "4"], "channels": 3},
    "bloodmnist": {
        "task": "multi-class",
        "channels": 3,
        "class_names": [
            "basophil", "eosinophil", "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte", "monocyte", "neutrophil", "platelet",
        ],
    },
    "dermamnist": {
        "task": "multi-class",
        "channels": 3,
        "class_names": [
            "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
            "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
        ],
    },
    "breast_ultrasound": {"task": "multi-class", "class_names": ["benign", "malignant", "normal"], "channels": 3},
}

MODELS: dict[str, dict] = {
    "resnet18_28": {"family": "resnet", "source": "torchvision:resnet18", "pretrained": False, "input_size": 28,
                    "n_params": 11170000, "scheme": "from_scratch", "skill": 1.6},
    "resnet18_28_ref": {"family": "resnet", "source": "torchvision:resnet18", "pretrained": False, "input_size": 28,
                        "n_params": 11170576, "scheme": "from_scratch", "skill": 1.9},
    "resnet50_28": {"family": "resnet", "source": "torchvision:resnet50", "pretrained": False, "input_size": 28,
                    "n_params": 23520000, "scheme": "from_scratch", "skill": 1.7},
    "vit_b16": {"family": "hf", "source": "google/vit-base-patch16-224", "pretrained": True, "input_size": 224,
                "n_params": 85800000, "scheme": "fine_tune", "skill": 2.3},
    "vit_l16": {"family": "hf", "source": "google/vit-large-patch16-224", "pretrained": True, "input_size": 224,
                "n_params": 303300000, "scheme": "fine_tune", "skill": 2.6},
}


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


def _png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_samples(dataset: str, size: int = 28, per_class: int = 8, short_class: int | None = 0) -> dict:
    """`record["samples"]`: per class up to `per_class` synthetic images (class `short_class` gets only 3)."""
    info = DATASETS[dataset]
    names = info["class_names"]
    ch = info["channels"]
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(len(names)):
        imgs = []
        n = 3 if k == short_class else per_class
        for j in range(n):
            rng = _rng("sample", dataset, size, k, j)
            base = 0.5 + 0.4 * np.sin(2 * np.pi * ((k + 1) * xx + j * 0.1 * yy)) * np.cos(2 * np.pi * (k + 1) * yy)
            img = np.clip(base + rng.normal(0, 0.08, (size, size)), 0, 1)
            arr = (img * 255).astype(np.uint8)[..., None]
            if ch == 3:
                arr = np.concatenate([arr, np.roll(arr, k + 1, axis=0), 255 - arr], axis=-1)
            imgs.append(_png_b64(arr))
        out.append(imgs)
    return {"size": size, "class_names": list(names), "per_class": out}


def _predictions(dataset: str, model: str, seed: int, size: int, n_test: int, skill: float):
    names = DATASETS[dataset]["class_names"]
    k = len(names)
    # the test set (labels) depends on the dataset only; predictions on model and seed too
    lrng = _rng("labels", dataset, size, n_test)
    # every class at least twice (AUC defined), the rest skewed towards the first classes
    labels = np.concatenate([np.repeat(np.arange(k), 2),
                             lrng.choice(k, size=n_test - 2 * k, p=np.linspace(2, 1, k) / np.linspace(2, 1, k).sum())])
    lrng.shuffle(labels)
    rng = _rng("pred", dataset, model, seed, size)
    logits = rng.normal(0.0, 1.0, (n_test, k))
    logits[np.arange(n_test), labels] += skill + rng.normal(0, 0.6, n_test)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return labels.astype(int), probs


def metrics_from_predictions(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The record's `test` block, derived with scikit-learn from labels and probabilities."""
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    cls = list(range(k))
    auc = (skm.roc_auc_score(labels, probs[:, 1]) if k == 2
           else skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=cls))
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=cls, zero_division=0)
    return {
        "loss": float(skm.log_loss(labels, probs, labels=cls)),
        "acc": float(skm.accuracy_score(labels, preds)),
        "auc": float(auc),
        "balanced_acc": float(skm.balanced_accuracy_score(labels, preds)),
        "f1_macro": float(skm.f1_score(labels, preds, average="macro", labels=cls, zero_division=0)),
        "precision_macro": float(skm.precision_score(labels, preds, average="macro", labels=cls, zero_division=0)),
        "recall_macro": float(skm.recall_score(labels, preds, average="macro", labels=cls, zero_division=0)),
        "per_class": {"precision": [float(x) for x in p], "recall": [float(x) for x in r],
                      "f1": [float(x) for x in f], "support": [int(x) for x in s]},
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=cls).astype(int).tolist(),
    }


def _history(dataset: str, model: str, seed: int, size: int, epochs: int, final_acc: float, selection: str):
    rng = _rng("hist", dataset, model, seed, size)
    hist = []
    for e in range(1, epochs + 1):
        frac = e / epochs
        acc = float(np.clip(final_acc * (0.75 + 0.25 * frac) + rng.normal(0, 0.015), 0, 1))
        auc = float(np.clip(0.5 + (acc - 0.3) * 0.8 + rng.normal(0, 0.01), 0, 1))
        hist.append({
            "epoch": e, "train_loss": float(1.2 * np.exp(-1.5 * frac) + 0.05 + rng.normal(0, 0.01)),
            "lr": 1e-3 * (1 - (e - 1) / epochs), "seconds": float(3.0 + rng.random()),
            "val": {"loss": float(1.0 * np.exp(-1.0 * frac) + 0.3 + rng.normal(0, 0.02)), "acc": acc, "auc": auc,
                    "balanced_acc": acc * 0.95, "f1_macro": acc * 0.93},
        })
    best = max(hist, key=lambda h: (h["val"][selection], -h["epoch"]))["epoch"]
    return hist, best


def make_record(*, suite: str = "unit", dataset: str = "breastmnist", size: int = 28, model: str = "resnet18_28",
                seed: int = 0, scheme: str | None = None, status: str = "completed", n_test: int = 60,
                epochs: int = 5, fail_epoch: int = 2, error_message: str = "CUDA out of memory. Tried to allocate 2.00 GiB",
                with_samples: bool = True, created_at: str = "2026-11-23T01:00:00+00:00",
                skill: float | None = None) -> dict:
    """One schema-1 record. `status="failed"` gives the failed shape (error block, partial history, no test)."""
    info = DATASETS[dataset]
    minfo = MODELS[model]
    scheme = scheme or minfo["scheme"]
    names = info["class_names"]
    config = {"suite": suite, "dataset": dataset, "size": size, "model": model, "scheme": scheme, "seed": seed,
              "epochs": epochs, "batch_size": 32, "lr": 1e-3, "selection_metric": "auc", "limit": None}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    base_skill = minfo["skill"] if skill is None else skill
    eff_skill = base_skill + 0.15 * np.log2(size / 28) + _rng("skill", dataset, model, seed, size).normal(0, 0.15)
    labels, probs = _predictions(dataset, model, seed, size, n_test, float(eff_skill))
    test = metrics_from_predictions(labels, probs)
    history, best_epoch = _history(dataset, model, seed, size, epochs, test["acc"], "auc")
    rec = {
        "schema_version": 1,
        "status": status,
        "suite": suite,
        "run_id": f"{dataset}-{size}-{model}-s{seed}-{config_hash[:8]}",
        "config_hash": config_hash,
        "config": config,
        "dataset": {"name": dataset, "size": size, "task": info["task"], "class_names": list(names),
                    "n_train": 10 * n_test, "n_val": n_test, "n_test": n_test, "source": f"/data/{dataset}_{size}.npz",
                    "md5": hashlib.md5(f"{dataset}{size}".encode()).hexdigest(), "synthetic": True},
        "model": {"name": model, "family": minfo["family"], "source": minfo["source"], "pretrained": minfo["pretrained"],
                  "input_size": minfo["input_size"], "n_params": minfo["n_params"]},
        "scheme": scheme,
        "seed": seed,
        "selection_metric": "auc",
        "history": history,
        "best_epoch": best_epoch,
        "test": test,
        "test_predictions": {"labels": labels.tolist(), "probs": probs.tolist()},
        "timing": {"wall_seconds": 12.3, "train_images_per_second": 410.0, "peak_memory_mb": 812.0},
        "environment": {"device": "cpu", "mixed_precision": "no", "num_processes": 1,
                        "versions": {"python": "3.12"}, "git_commit": "0" * 40, "hostname": "test"},
        "error": None,
        "created_at": created_at,
    }
    if with_samples:
        rec["samples"] = make_samples(dataset, size)
    if status == "failed":
        rec["history"] = history[: fail_epoch - 1]
        rec["best_epoch"] = None
        rec["error"] = {"type": "RuntimeError", "message": error_message, "epoch": fail_epoch}
        del rec["test"], rec["test_predictions"]
    return rec


# The grid used by the tests: 2 datasets x 2 models x seeds 0-2, with
#   * vit_b16 on retinamnist seed 2 missing  -> "2/3 seeds"
#   * resnet18_28 on retinamnist seed 1 failed -> listed as failed, group "2/3 seeds"
GRID_DATASETS = ("breastmnist", "retinamnist")
GRID_MODELS = ("resnet18_28", "vit_b16")
GRID_SEEDS = (0, 1, 2)
MISSING = ("retinamnist", "vit_b16", 2)
FAILED = ("retinamnist", "resnet18_28", 1)


def make_grid(suite: str = "unit", datasets=GRID_DATASETS, models=GRID_MODELS, seeds=GRID_SEEDS,
              missing=(MISSING,), failed=(FAILED,), size: int = 28, **kw) -> list[dict]:
    out = []
    for d in datasets:
        for m in models:
            for s in seeds:
                if (d, m, s) in missing:
                    continue
                status = "failed" if (d, m, s) in failed else "completed"
                out.append(make_record(suite=suite, dataset=d, model=m, seed=s, size=size, status=status, **kw))
    return out


def write_records(records, runs_dir: Path) -> list[Path]:
    """Write each record to `runs_dir/<suite>/<run_id>.json`."""
    paths = []
    for rec in records:
        p = Path(runs_dir) / rec["suite"] / f"{rec['run_id']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rec, indent=1), encoding="utf-8")
        paths.append(p)
    return paths


def write_suite_file(suites_dir: Path, name: str = "unit", datasets=GRID_DATASETS, models=GRID_MODELS,
                     seeds=GRID_SEEDS) -> Path:
    """`suites_dir/<name>.yaml` in the suite-file format of `benchmark/config.py`. A dataset is a name (default
    size) or a (name, size) pair; every model gets the same short recipe."""
    doc = {
        "name": name,
        "seeds": list(seeds),
        "recipes": {"short": {"optimizer": "adam", "lr": 1.0e-3, "epochs": 3, "batch_size": 32}},
        "datasets": [d if isinstance(d, str) else {"name": d[0], "size": d[1]} for d in datasets],
        "models": [{"name": m, "recipe": "short"} for m in models],
    }
    path = Path(suites_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
