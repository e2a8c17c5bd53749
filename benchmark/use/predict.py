"""Score images with a finished run: label, confidence and every class probability per image.

Inputs are image files, folders (searched recursively for image files) and dataset splits written
`<dataset>:<split>` (e.g. `breastmnist:test`: the run's own dataset as the run loaded it, so its true labels
come along). A file that cannot be read is reported in one line and skipped; the rest are still scored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.images import IMAGE_SUFFIXES, open_image
from benchmark.errors import UserError
from benchmark.metrics import predicted_labels
from benchmark.records import atomic_write_bytes, check_output_file
from benchmark.use.loaded import DEFAULT_RESULTS, PREDICT_BATCH, LoadedRun, load_run

OUTPUT_SUFFIXES = (".csv", ".json")


@dataclass
class Prediction:
    image: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    true_label: str | None = None


@dataclass
class PredictionReport:
    run_id: str
    class_names: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per input that could not be scored

    def frame(self) -> pd.DataFrame:
        truth = any(p.true_label is not None for p in self.predictions)
        rows = [{"image": p.image, "label": p.label, "confidence": p.confidence,
                 **{f"p({name})": p.probabilities[name] for name in self.class_names},
                 **({"true_label": p.true_label or ""} if truth else {})} for p in self.predictions]
        return pd.DataFrame(rows, columns=None if rows else ["image", "label", "confidence"])

    def table(self) -> str:
        return self.frame().to_string(index=False, float_format=lambda v: f"{v:.4f}")

    def write(self, path: Path) -> Path:
        """`.csv` (one row per image, a column per class) or `.json` (run id, class names, predictions, errors)."""
        path = check_output_file(path, OUTPUT_SUFFIXES)
        text = self.frame().to_csv(index=False) if path.suffix.lower() == ".csv" else json.dumps(asdict(self), indent=1) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return path


def check_batch_size(batch_size: int) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UserError(f"--batch must be >= 1 (got {batch_size}): images per forward pass")


def score(loaded: LoadedRun, names: list[str], images: np.ndarray, true_labels: list[int | None] | None = None,
          batch_size: int = PREDICT_BATCH) -> list[Prediction]:
    """Predictions for stored-format images (uint8 (N, size, size, channels)), named `names`."""
    if len(images) == 0:
        return []
    return predictions(loaded, names, loaded.probabilities(images, batch_size), true_labels)


def predictions(loaded: LoadedRun, names: list[str], probs: np.ndarray,
                true_labels: list[int | None] | None = None) -> list[Prediction]:
    """Predictions from the model's probabilities (N, n_classes) of images named `names`."""
    labels = predicted_labels(probs, loaded.record["dataset"]["task"])  # as the record's metrics decide
    classes = loaded.class_names
    true_labels = true_labels or [None] * len(names)
    return [Prediction(image=name, label=classes[label], confidence=float(row[label]),
                       probabilities={c: float(p) for c, p in zip(classes, row)},
                       true_label=None if truth is None else classes[truth])
            for name, row, label, truth in zip(names, probs, labels, true_labels)]


def _dataset_split(item: str) -> tuple[str, str] | None:
    from benchmark.data import list_datasets

    name, colon, split = item.partition(":")
    return (name, split) if colon and name in list_datasets() else None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def gather_images(loaded: LoadedRun, items: list[str | Path], data_root: str | None = None
                  ) -> tuple[list[str], np.ndarray, list[int | None], list[str]]:
    """Names, stored-format images, true labels (None where unknown) and error lines for files/folders/splits."""
    names, images, truths, errors = [], [], [], []
    for item in map(str, items):
        path, split = Path(item), None if Path(item).exists() else _dataset_split(item)
        if split is not None:
            dataset, split_name = split
            part = loaded.dataset_split(split_name, dataset, data_root)
            own = dataset == loaded.record["config"]["dataset"]
            for index, image in enumerate(part.images):
                names.append(f"{item}[{index}]")
                images.append(image if image.shape == (loaded.size, loaded.size, loaded.channels)
                              else loaded.stored(open_image_array(image)))
                truths.append(int(part.labels[index]) if own else None)
            continue
        files = _image_files(path) if path.is_dir() else [path]
        if path.is_dir() and not files:
            errors.append(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        for file in files:
            if not file.exists():
                errors.append(f"{file}: no such file, folder or dataset split (<dataset>:<split>, e.g. "
                              f"{loaded.record['config']['dataset']}:test)")
                continue
            try:
                images.append(loaded.stored(open_image(file), str(file)))
            except UserError as err:
                errors.append(str(err))
                continue
            names.append(str(file))
            truths.append(None)
    stacked = np.stack(images) if images else np.empty((0, loaded.size, loaded.size, loaded.channels), np.uint8)
    return names, stacked, truths, errors


def open_image_array(pixels: np.ndarray):
    """A stored uint8 (H, W, C) array as a PIL image (for another dataset's split)."""
    from PIL import Image

    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def predict(run: str | Path | LoadedRun, images: list[str | Path], results: str | Path = DEFAULT_RESULTS,
            data_root: str | None = None, batch_size: int = PREDICT_BATCH) -> PredictionReport:
    """Predict `images` (files, folders, `<dataset>:<split>`) with run `run` (id, record path or a LoadedRun)."""
    check_batch_size(batch_size)
    loaded = run if isinstance(run, LoadedRun) else load_run(run, results)
    names, pixels, truths, errors = gather_images(loaded, images, data_root)
    report = PredictionReport(loaded.run_id, loaded.class_names, errors=errors)
    report.predictions = score(loaded, names, pixels, truths, batch_size)
    return report
