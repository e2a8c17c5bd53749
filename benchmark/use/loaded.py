"""A finished run, rebuilt for use: its record, its model with the best weights, and its evaluation preprocessing.

Every verb of `benchmark.use` (predict, export, explain, serve) starts from `load_run`, so they all feed the
model exactly as evaluation did: images are first brought to the dataset's stored format
(`benchmark.data.images.stored_pixels`: the run's size and channels), then through the run's evaluation
`BatchTransform` (the same object training evaluated with), and the network runs as `benchmark.train.predict`
runs it (channels_last for CNNs, full precision, softmax over the logits).

A run is named by its record path, or by its run id (optionally a unique prefix of it) under
`<results>/runs/<suite>/`; its weights are `<results>/checkpoints/<suite>/<run_id>/best.pt`, which the run's
scheme turns back into the model (`benchmark.schemes.run.restore_scheme`).
"""

from __future__ import annotations

import base64
import glob
import importlib.util
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from benchmark.data.images import open_image, stored_pixels
from benchmark.data.transforms import BatchTransform, pad_margins
from benchmark.errors import UserError
from benchmark.models import BuiltModel, ModelSpec, build_model
from benchmark.records import read_record
from benchmark.schemes import parse_scheme
from benchmark.schemes.context import RestoreContext
from benchmark.schemes.run import restore_scheme
from benchmark.train import prepare_pixels, uses_channels_last

log = logging.getLogger(__name__)

DEFAULT_RESULTS = Path("results")
PREDICT_BATCH = 64

EXTRAS = {  # extra name -> import names it provides
    "export": ("onnx", "onnxruntime"),
    "serve": ("fastapi", "uvicorn", "multipart", "fastapi_offline"),
    "explain": ("pytorch_grad_cam",),
}


def require_extra(extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise a UserError naming the `pip install` that provides `modules` (default: all of the extra's)."""
    missing = [m for m in modules or EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this needs {', '.join(missing)}, which is not installed; "
                        f"pip install 'medmnist-benchmark[{extra}]'")


def find_record(run: str | Path, results: str | Path = DEFAULT_RESULTS) -> Path:
    """The record file of `run`: a path to a record, or a run id (or unique prefix) under `<results>/runs/*/`, or
    `SUITE/RUN_ID` for that suite's record where suites share a run id (a run's id does not depend on its suite)."""
    as_path = Path(run)
    if as_path.suffix == ".json" or as_path.is_file():
        if not as_path.is_file():
            raise UserError(f"record {as_path} does not exist; give a run id or the path of a record file")
        return as_path
    runs = Path(results) / "runs"
    suite, _, run_id = str(run).rpartition("/")
    if suite and (as_path.is_absolute() or len(as_path.parts) != 2 or not run_id):
        raise UserError(f"'{run}' is neither a record file nor SUITE/RUN_ID; give a run id, SUITE/RUN_ID or the "
                        f"path of a record .json file")
    pattern = f"{glob.escape(suite) if suite else '*'}/{glob.escape(run_id)}"
    exact = sorted(runs.glob(f"{pattern}.json"))
    matches = exact or sorted(runs.glob(f"{pattern}*.json"))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no run '{run}' in {runs}; give a run id from `python -m benchmark status` "
                        f"(or --results for another results folder) or a record path")
    names = ", ".join(m.relative_to(runs).with_suffix("").as_posix() for m in matches[:4])
    raise UserError(f"'{run}' matches {len(matches)} records ({names}{', …' if len(matches) > 4 else ''}); "
                    f"give one of them as SUITE/RUN_ID, a longer run id or the record path")


def stored_channels(record: dict) -> int:
    """Channels the run's dataset stores (1 or 3): the record's dataset block, else its embedded test images."""
    if record["dataset"].get("channels") in (1, 3):
        return record["dataset"]["channels"]
    for images in record.get("samples", {}).get("per_class", []):
        if images:
            return 1 if open_image(base64.b64decode(images[0]), "record sample").mode in ("L", "1") else 3
    raise UserError(f"record {record['run_id']} stores neither the dataset's channels nor sample images; "
                    f"rerun it with this version of the benchmark")


@dataclass
class LoadedRun:
    """A completed run with its best weights loaded, ready to score images in the dataset's stored format."""

    record: dict
    record_path: Path
    checkpoint: Path
    built: BuiltModel
    transform: BatchTransform
    channels: int  # what the dataset stores (the transform maps it to the model's channels)
    best_epoch: int

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def class_names(self) -> list[str]:
        return list(self.record["dataset"]["class_names"])

    @property
    def size(self) -> int:
        return int(self.record["dataset"]["size"])

    @property
    def padding(self) -> tuple[int, int] | None:
        """A `resize: pad` run's zero margins (before, after) around the image in the model's input, the same on
        both axes (none when the stored image is as large: it is shrunk); None for any other run."""
        if self.transform.resize != "pad":
            return None
        size = self.transform.input_size
        return pad_margins(min(self.size, size), size)

    @property
    def model(self) -> torch.nn.Module:
        return self.built.module

    @property
    def channels_last(self) -> bool:
        return uses_channels_last(self.built)

    def stored(self, image, name: str = "image") -> np.ndarray:
        """A PIL image as the dataset stores it: uint8 (size, size, channels); errors name `name`."""
        return stored_pixels(image, self.size, self.channels, name)

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, size, size, channels) -> the model's normalised float input (N, C, S, S), as evaluation."""
        return self.transform(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
        """Logits (N, n_classes) of stored-format images, batch by batch."""
        out = [self.model(prepare_pixels(self.pixels(images[start:start + batch_size]), self.channels_last)).float()
               for start in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def probabilities(self, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
        """Softmax probabilities (N, n_classes) of stored-format images: what the record's test_predictions hold."""
        return torch.softmax(self.logits(images, batch_size), dim=1).numpy()

    def sample_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The test images embedded in the record (up to 8 per class) in stored format, with their labels."""
        images, labels = [], []
        for label, encoded in enumerate(self.record.get("samples", {}).get("per_class", [])):
            for item in encoded:
                images.append(self.stored(open_image(base64.b64decode(item), "record sample"), "record sample"))
                labels.append(label)
        if not images:
            raise UserError(f"record {self.record_path} holds no sample images; rerun it with this version")
        return np.stack(images), np.array(labels)

    def dataset_split(self, split: str = "test", dataset: str | None = None, data_root: str | None = None):
        """A split (`benchmark.data.Split`, uint8 NHWC + labels) of the run's dataset as the run loaded it (same
        size, data root and --limit), or of another registered `dataset` at its default size (all of it)."""
        from benchmark.data import load_dataset
        from benchmark.data.registry import SPLIT_NAMES

        if split not in SPLIT_NAMES:
            raise UserError(f"unknown split '{split}'; use one of {', '.join(SPLIT_NAMES)}")
        config = self.record["config"]
        own = dataset in (None, config["dataset"])
        root = data_root if data_root is not None else config.get("data_root") if own else None
        data = load_dataset(config["dataset"] if own else dataset, size=config["size"] if own else None,
                            data_root=root, limit=(config.get("limit") or None) if own else None)
        if own and data.class_names != self.class_names:
            raise UserError(f"the data under {root!r} has classes {data.class_names}, the run {self.class_names}; "
                            f"point --data-root at the run's data")
        return getattr(data, split)


def model_spec(config_model: dict) -> ModelSpec:
    """The record's `config.model` as a ModelSpec (fields added since the record was written keep their defaults)."""
    known = {f.name for f in fields(ModelSpec)}
    return ModelSpec(**{k: v for k, v in config_model.items() if k in known})


def load_run(run: str | Path, results: str | Path = DEFAULT_RESULTS) -> LoadedRun:
    """Rebuild a completed run's model exactly as it scored the test split, with its best weights (CPU).

    How depends on the run's scheme (`benchmark.schemes.run.restore_scheme`): best.pt holds the whole model
    (finetune, gradual_unfreeze), the head of a backbone built again from the run's seed or pretrained weights
    (linear_probe), or LoRA adapters to merge (lora); a knn run keeps no model."""
    path = find_record(run, results)
    record = read_record(path)
    if record is None:
        raise UserError(f"{path} is not a readable run record; give another run")
    if record["status"] != "completed":
        raise UserError(f"run {record['run_id']} {record['status']} ({(record.get('error') or {}).get('message', '')}); "
                        f"only completed runs have weights to use")
    checkpoint = path.parents[2] / "checkpoints" / record["suite"] / record["run_id"] / "best.pt"
    spec = model_spec(record["config"]["model"])
    class_names, channels, seed = list(record["dataset"]["class_names"]), stored_channels(record), record["seed"]
    state: dict = {}

    def build(pretrained: bool) -> BuiltModel:
        # As the runner builds it: seeded (without moving the caller's random state); a pretrained checkpoint is
        # loaded again only when best.pt does not hold those weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(replace(spec, pretrained=spec.pretrained and pretrained), class_names, channels)

    def read_weights() -> dict:
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint} is missing (runs with --keep-checkpoints none keep no weights); "
                            f"rerun {record['run_id']} with --force to get it back")
        state.update(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return state["weights"]

    stored = record["config"].get("scheme") or {"name": "finetune", "options": {}}  # older records: finetune
    scheme = parse_scheme({"name": stored["name"], **stored["options"]}, f"record {path}")
    try:
        built = restore_scheme(RestoreContext(build=build, read_weights=read_weights, scheme=scheme,
                                              details=record.get("scheme_details") or {}, model_name=spec.name))
    except (OSError, RuntimeError, KeyError, EOFError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"cannot load {checkpoint} into {spec.name} ({type(err).__name__}: {reason}); "
                        f"the checkpoint does not belong to this record — rerun the run with --force") from err
    built.module.eval()
    if uses_channels_last(built):
        built.module.to(memory_format=torch.channels_last)
    log.info("loaded %s (%s, best epoch %s) from %s", record["run_id"], scheme.name, state.get("epoch"), checkpoint)
    return LoadedRun(record=record, record_path=path, checkpoint=checkpoint, built=built,
                     transform=BatchTransform.for_model(built), channels=channels,
                     best_epoch=int(state.get("epoch", record.get("best_epoch", 0))))
