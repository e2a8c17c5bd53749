"""Throughput benchmark: our device-resident pipeline against its upper bound and the tutorials' pipeline.

`python -m benchmark perf --model M --dataset D --size S [--batch B]` measures, in one process:

- (a) ``ours``: train.py's `TrainStep` — a batch indexed from the uint8 split held on the device, resized, augmented
  and normalised there by `BatchTransform`, bf16 autocast on a GPU, the recipe's optimizer;
- (b) ``random``: the same step fed one random float batch already on the device (no data work: the bound);
- (c) ``tutorial``: Hugging Face `Trainer` on a `datasets.Dataset` of PIL images whose `set_transform` runs
  `reference_transform` per sample in the main process (`dataloader_num_workers=0`), same batch size;

each as training and inference images/s, peak memory and seconds per epoch, with the ratios a/b and a/c,
FLOPs per image (`FlopCounterMode`, one forward + backward) and, against the device's bf16 peak, the model
FLOPs utilisation. `--data-only` times the data pipelines alone at `--input-size` (224) with augmentation:
`BatchTransform(augment="tutorial")` over the device-resident split against `reference_transform` on the same
images, per sample in one process — alone (``tutorial_transform``) and behind the tutorials' `datasets` +
`set_transform` + `DataLoader(num_workers=0)` (``tutorial_loader``).

`--compile model|regional|reduce-overhead` times (a) and (b) on a compiled model (the whole model, each repeated
block, or the whole model with CUDA graphs); `--profile` adds a profile of (a)'s training steps, its top ops by
self device time in a `.profile.txt` beside the JSON.

Timings are steady state: warm-up steps run first and are not timed; on CUDA every timed block is bracketed
by `torch.cuda.synchronize`. Pipelines measured by our own loop are timed in interleaved rounds (a, b, a, b,
...) so that a busy machine slows them alike. `--threads 1` gives per-core CPU figures. Each run writes one
JSON file to `--output` (default `results/perf/`) with the command, settings, figures, device and versions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import platform
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from benchmark.compute import count_flops
from benchmark.config import Recipe
from benchmark.data import DatasetSplits, load_dataset
from benchmark.data.registry import portable_path
from benchmark.data.transforms import BatchTransform, reference_transform
from benchmark.distributed import reset_accelerate_state
from benchmark.environment import device_name, git_commit, measured_on, quiet_libraries
from benchmark.errors import UserError
from benchmark.models import BuiltModel, build_model, list_models, resolve_model
from benchmark.records import atomic_write_bytes, now_iso
from benchmark.train import (
    DeviceSplit,
    TrainStep,
    autocast,
    autocast_dtype,
    epoch_generator,
    make_optimizer,
    make_scheduler,
    peak_memory,
    prepare_pixels,
    reset_peak_memory,
    train_batches,
    uses_channels_last,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched in order
# against torch.cuda.get_device_name(); `--peak-tflops` overrides (and is the only source on other devices).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"GH200", 989.0),
    (r"H200.*NVL", 835.0),
    (r"H200", 989.0),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),  # SXM (HBM3)
    (r"\bA100\b", 312.0),  # not the RTX A1000
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bB200\b", 2250.0),  # not GB200 (another figure: give --peak-tflops)
)

# ViT presets whose architecture is transformers' `ViTConfig` (224 px, patch 16) with these overrides.
# Throughput does not depend on the weights, so perf builds them from the config (random weights) and never
# needs the Hub. `vit_tiny_224` (perf only) is a 2-layer, 64-wide ViT at 224 px: a model so cheap that the
# data pipeline dominates, which is the GPU's situation reproduced on a CPU.
VIT_ARCHITECTURES: dict[str, dict] = {
    "vit_b16": {},
    "vit_b16_in21k": {},
    "vit_l16": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "vit_tiny_224": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}

TRAIN_PIPELINES = ("ours", "random", "tutorial")
# --compile: how (a) and (b) run the model. `model`: torch.compile of the whole model; `regional`: of each repeated
# block (ViT encoder layers, ResNet blocks) in place, so each block's code compiles once and the rest stays eager;
# `reduce-overhead`: the whole model with CUDA graphs (few kernel launches for small models; on a CPU it is the
# same as `model`). Compilation happens in the warm-up steps, which are not timed (their seconds are reported).
COMPILE_MODES = ("none", "model", "regional", "reduce-overhead")
PROFILE_ROWS = 20
DATA_PIPELINES = ("ours", "tutorial_transform", "tutorial_loader")


# ---------------------------------------------------------------------------------------------- arguments


@dataclass
class PerfConfig:
    """What `run_perf` measures; the fields are the `perf` verb's options (and a result's `settings`)."""

    model: str | None = None  # preset, HF id or local directory (not needed with data_only)
    model_source: str | None = None  # build `model` from this HF id or local save_pretrained directory
    dataset: str = "breastmnist"
    size: int = 28  # stored image size of the dataset in px
    data_root: str = "bundled"
    batch: int = 32
    eval_batch: int = 0  # 0 = 2 x batch
    steps: int = 10  # timed batches per round and pipeline
    warmup: int = 3  # untimed batches before timing, >= 1
    rounds: int = 2  # interleaved timing rounds
    data_only: bool = False  # time the data pipelines alone (augmentation at input_size), no model
    input_size: int = 224
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto | no | bf16
    compile: str = "none"  # none | model | regional | reduce-overhead (see COMPILE_MODES)
    compile_backend: str = "inductor"  # torch.compile's backend (e.g. eager / aot_eager: tracing without codegen)
    profile: bool = False  # also write the top ops of `steps` profiled training steps of (a) beside the JSON
    skip_tutorial: bool = False
    tutorial_steps: int = 0  # timed batches of (c) in all; 0 = as many as (a) and (b) time (steps x rounds)
    peak_tflops: float | None = None  # the device's peak bf16 TFLOP/s for MFU (default: known GPUs by name)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    seed: int = 0
    output: Path = Path("results/perf")


def run_perf(config: PerfConfig) -> tuple[dict, Path]:
    """Measure what `config` says and write the JSON result; returns the result and the file written."""
    if isinstance(config.compile, bool):  # the API's earlier `compile=True/False`
        config = replace(config, compile="model" if config.compile else "none")
    _check_args(config)
    quiet_libraries()
    device = _pick_device(config.device)
    data = load_dataset(config.dataset, config.size, data_root=config.data_root)
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        result = measure_data_only(data, device, config) if config.data_only else measure_training(data, device, config)
        env = environment(device)
    finally:
        torch.set_num_threads(threads)
    result = {
        "schema_version": SCHEMA_VERSION,
        "mode": "data" if config.data_only else "train",
        "command": command_line(config),
        "settings": {k: (portable_path(v) if isinstance(v, (str, Path)) else v) for k, v in sorted(asdict(config).items())},
        "dataset": {"name": data.name, "size": data.size, "n_train": len(data.train),
                    "source": portable_path(data.source),
                    "channels": int(data.train.images.shape[-1])},
        **result,
        "environment": env,
        "created_at": now_iso(),
    }
    name = result_name(config, device)
    if "profile" in result:  # the table beside the JSON, its rows in it
        table_name = name.removesuffix(".json") + ".profile.txt"
        table = result["profile"].pop("table")
        write_result_text(table, Path(config.output), table_name)
        result["profile"]["table_file"] = table_name
    path = write_result(result, Path(config.output), name)
    return result, path


def _check_args(config: PerfConfig) -> None:
    if not config.data_only and not config.model:
        raise UserError("perf needs --model (a preset, HF id or local directory), or --data-only")
    if config.batch < 2:
        raise UserError(f"--batch must be >= 2 (got {config.batch}); BatchNorm cannot train on one image")
    for name, low in (("steps", 1), ("warmup", 1), ("rounds", 1), ("input_size", 1), ("eval_batch", 0), ("threads", 0),
                      ("tutorial_steps", 0)):
        if getattr(config, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low} (got {getattr(config, name)})")
    if config.compile not in COMPILE_MODES:
        raise UserError(f"--compile {config.compile!r} is not one of {', '.join(COMPILE_MODES)}")
    if config.data_only and (config.profile or config.compile != "none"):
        raise UserError("--profile and --compile time a model's training step; drop them with --data-only")
    if config.peak_tflops is not None and not config.peak_tflops > 0:
        raise UserError(f"--peak-tflops must be > 0 (got {config.peak_tflops})")


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible here; use --device cpu or auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Images and seconds of a pipeline's timed steps, summed over rounds."""

    images: int = 0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    round_rates: list[float] = field(default_factory=list)
    warmup_seconds: float | None = None  # the untimed warm-up steps (with --compile: the compilation)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict:
        return {"images": self.images, "seconds": self.seconds, "images_per_second": self.images_per_second,
                "round_images_per_second": self.round_rates, "peak_memory_mb": self.peak_memory_mb,
                "warmup_seconds": self.warmup_seconds}


Step = Callable[[], int]  # runs one batch, returns its number of images


def measure_interleaved(steps_by_name: dict[str, Step], device: torch.device, warmup: int, steps: int,
                        rounds: int) -> dict[str, Timing]:
    """Warm each pipeline up, then time `steps` batches of each in turn, `rounds` times."""
    timings = {name: Timing() for name in steps_by_name}
    for name, step in steps_by_name.items():
        synchronize(device)
        started = time.perf_counter()
        for _ in range(warmup):
            step()
        synchronize(device)
        timings[name].warmup_seconds = time.perf_counter() - started
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            synchronize(device)
            reset_peak_memory(device)
            started, images = time.perf_counter(), 0
            for _ in range(steps):
                images += step()
            synchronize(device)
            seconds = time.perf_counter() - started
            timing = timings[name]
            timing.images += images
            timing.seconds += seconds
            timing.round_rates.append(images / seconds)
            timing.peak_memory_mb = max(timing.peak_memory_mb, peak_memory(device)[0])
    return timings


# ---------------------------------------------------------------------------------------------- FLOPs


def peak_tflops_for(device: torch.device, override: float | None) -> tuple[float | None, str | None]:
    """(peak bf16 TFLOP/s, where it came from) for MFU; (None, None) when unknown."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    peak = known_peak_tflops(name)
    return (peak, f"table ({name})") if peak else (None, None)


def known_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU from `BF16_PEAK_TFLOPS` by its CUDA name; None when not listed."""
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def utilisation(images_per_second: float, flops_per_image: float, peak_tflops: float | None) -> dict:
    achieved = images_per_second * flops_per_image / 1e12
    return {"achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None}


# ---------------------------------------------------------------------------------------------- models


def build_for_perf(config: PerfConfig, data: DatasetSplits, workdir: Path) -> tuple[BuiltModel, dict]:
    """The model to time, with random weights (throughput does not depend on them), and how it was built."""
    channels = int(data.train.images.shape[-1])
    if config.model_source:
        if config.model in list_models() and list_models()[config.model].family != "hf":
            raise UserError(f"--model-source builds a Hugging Face model; {config.model} is a "
                            f"{list_models()[config.model].family} preset: give --model a name of your own")
        spec = resolve_model(config.model, source=config.model_source, pretrained=False)
        how = f"{portable_path(config.model_source)} (random weights)"
    elif config.model in VIT_ARCHITECTURES:
        source = write_vit_config(workdir / config.model, **VIT_ARCHITECTURES[config.model])
        spec = resolve_model(config.model, source=str(source), pretrained=False)
        how = f"transformers ViTConfig({VIT_ARCHITECTURES[config.model]}) (random weights)"
    elif config.model in list_models():
        spec = resolve_model(config.model, pretrained=False)
        how = f"{spec.source} (random weights)"
    else:  # a Hugging Face id or a local directory
        spec = resolve_model(config.model, source=config.model, pretrained=False)
        how = f"{portable_path(config.model)} (random weights)"
    built = build_model(spec, data.class_names, channels)
    return built, {"name": config.model, "family": built.family, "source": how, "input_size": built.input_size,
                   "in_channels": built.in_channels, "n_params": built.n_params}


def write_vit_config(directory: Path, **overrides) -> Path:
    """A local model directory with a ViT config (224 px, patch 16 by default) and its image processor."""
    from transformers import ViTConfig, ViTImageProcessor

    config = ViTConfig(**overrides)
    config.save_pretrained(directory)
    ViTImageProcessor(size={"height": config.image_size, "width": config.image_size},
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------------------------- (a), (b)


def index_batches(n: int, batch: int, count: int, seed: int,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """`count` full batches of sample indices on `device`: train.py's per-epoch shuffles, one after another."""
    chunks, have, epoch = [], 0, 0
    while have < batch * count:
        epoch += 1
        chunks += train_batches(n, batch, epoch_generator(seed, epoch, 0), 0, 1, device)
        have = sum(len(c) for c in chunks)
    return list(torch.cat(chunks)[: batch * count].split(batch))


@torch.no_grad()
def forward_only(model: nn.Module, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> int:
    """`predict`'s forward (no gather or softmax); the caller sets eval mode once, as `fit` does per phase."""
    with autocast(device, dtype):
        model(pixels).float()
    return len(pixels)


def measure_ours_and_random(built: BuiltModel, model: nn.Module, split: DeviceSplit, recipe: Recipe,
                            device: torch.device, dtype: torch.dtype | None, channels_last: bool,
                            n_classes: int, config: PerfConfig
                            ) -> tuple[dict[str, Timing], dict[str, Timing], float, dict | None]:
    """Training and inference timings of (a) ours and (b) random, interleaved; the mean training loss; and with
    `config.profile`, the top ops of `config.steps` more training steps of (a) under the profiler."""
    batch, eval_batch = config.batch, config.eval_batch or 2 * config.batch
    total = config.warmup + config.steps * config.rounds + (config.steps if config.profile else 0)
    # CUDA graphs (reduce-overhead) reuse their output memory: each step must say it starts a new iteration
    new_step = torch.compiler.cudagraph_mark_step_begin if config.compile == "reduce-overhead" else (lambda: None)
    # fit's settings (runner.py): precision and accumulation are the recipe's business, not accelerate's
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no", gradient_accumulation_steps=1)
    optimizer = accelerator.prepare(make_optimizer(recipe, model, device))
    step = TrainStep(model, optimizer, make_scheduler(recipe, optimizer, 2 * total), recipe, accelerator, dtype)
    weighted_losses, batch_sizes = [], []  # batch loss × batch size stays on the device until the end
    train_transform = BatchTransform.for_model(built, recipe.augment)
    eval_transform = BatchTransform.for_model(built)
    train_indices = iter(index_batches(len(split), batch, total, config.seed, device))
    eval_indices = iter(torch.arange(eval_batch * total, device=device).remainder(len(split)).split(eval_batch))
    augment_rng = epoch_generator(config.seed, 1, 1)

    shape = (built.in_channels, built.input_size, built.input_size)
    random_pixels = prepare_pixels(torch.randn(batch, *shape, device=device), channels_last)
    random_labels = torch.randint(0, n_classes, (batch,), device=device)
    random_eval = prepare_pixels(torch.randn(eval_batch, *shape, device=device), channels_last)

    def train_on(pixels: torch.Tensor, labels: torch.Tensor) -> int:
        new_step()
        weighted_losses.append(step(pixels, labels) * len(labels))
        batch_sizes.append(len(labels))
        return len(labels)

    def ours_train() -> int:
        index = next(train_indices)
        return train_on(prepare_pixels(train_transform(split.images[index], augment_rng), channels_last),
                        split.labels[index])

    def ours_infer() -> int:
        index = next(eval_indices)
        new_step()
        return forward_only(model, prepare_pixels(eval_transform(split.images[index]), channels_last), device, dtype)

    model.train()
    train = measure_interleaved({"ours": ours_train, "random": lambda: train_on(random_pixels, random_labels)},
                                device, config.warmup, config.steps, config.rounds)
    model.eval()
    infer = measure_interleaved({"ours": ours_infer, "random": lambda: (new_step(), forward_only(model, random_eval,
                                                                                                 device, dtype))[1]},
                                device, config.warmup, config.steps, config.rounds)
    mean_loss = torch.stack(weighted_losses).sum().item() / sum(batch_sizes)
    profile = None
    if config.profile:
        model.train()
        profile = profile_steps(ours_train, config.steps, device)
    return train, infer, mean_loss, profile


def profile_steps(step: Step, steps: int, device: torch.device) -> dict:
    """`steps` calls of `step` under torch.profiler: the top PROFILE_ROWS ops by self time on the device (the CPU's
    on a CPU), as a table (text) and as rows."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = profiler.key_averages()
    return {"steps": steps, "sorted_by": key, "table": averages.table(sort_by=key, row_limit=PROFILE_ROWS),
            "top": top_ops(averages, key)}


def top_ops(averages, key: str) -> list[dict]:
    """The PROFILE_ROWS largest of the profile's averaged events by `key`, each with its share of the total.

    On a GPU the profile holds each kernel twice: as itself (a device event) and inside the self device time of
    the CPU op that launched it. The rows are the kernels alone, and so is the total (as torch's own table counts
    it); summing both would halve every share and list an op beside its own kernel. On a CPU, all events."""
    from torch.autograd import DeviceType

    if key == "self_device_time_total":
        averages = [event for event in averages
                    if event.device_type != DeviceType.CPU and not getattr(event, "is_user_annotation", False)]
    total = sum(getattr(event, key) for event in averages) or math.nan
    events = sorted(averages, key=lambda event: getattr(event, key), reverse=True)[:PROFILE_ROWS]
    return [{"name": event.key, "calls": event.count, "self_us": getattr(event, key),
             "self_share": getattr(event, key) / total} for event in events]


# ---------------------------------------------------------------------------------------------- (c)


def pil_images(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in images]


def tutorial_dataset(images: np.ndarray, labels: np.ndarray, transform, count: int | None = None):
    """The tutorials' data: a `datasets.Dataset` with an image column, `set_transform` per-sample PIL transforms.

    `count` rows cycle through the images (so a small split still fills large batches)."""
    from datasets import Dataset

    dataset = Dataset.from_dict({"image": pil_images(images), "label": labels.tolist()})
    if count is not None:
        dataset = dataset.select(np.arange(count) % len(dataset))

    def apply(examples: dict) -> dict:
        examples["pixel_values"] = [transform(image) for image in examples["image"]]
        return examples

    dataset.set_transform(apply)
    return dataset


def tutorial_collate(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples])}


class WithLoss(nn.Module):
    """`forward(pixel_values, labels)` -> {"loss", "logits"}, as Trainer expects, for non-HF models."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.module(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out


def trainer_model(built: BuiltModel) -> nn.Module:
    """The HF model itself for HF presets (as in the tutorials); others get a loss wrapper."""
    from transformers import PreTrainedModel

    inner = getattr(built.module, "model", None)
    return inner if isinstance(inner, PreTrainedModel) else WithLoss(built.module)


@contextlib.contextmanager
def own_accelerate_state():
    """accelerate keeps one process-wide state that refuses another precision or device once set: (a)/(b) on
    their device and the Trainer (bf16 on a GPU) each get a fresh one, and whatever runs after them (the next
    test, a training run) gets a fresh one again."""
    reset_accelerate_state()
    try:
        yield
    finally:
        reset_accelerate_state()


def tutorial_timed_steps(config: PerfConfig) -> int:
    return config.tutorial_steps or config.steps * config.rounds


def measure_tutorial(built: BuiltModel, data: DatasetSplits, recipe: Recipe, device: torch.device,
                     dtype: torch.dtype | None, config: PerfConfig, workdir: Path) -> tuple[Timing, Timing]:
    """(c): Hugging Face Trainer with per-sample PIL transforms, timed from the end of the warm-up steps."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    batch, eval_batch = config.batch, config.eval_batch or 2 * config.batch
    timed = tutorial_timed_steps(config)
    size, mean, std, channels = built.input_size, built.mean, built.std, built.in_channels
    # Rows repeat so that every step gets a full batch, even from a split smaller than the batch, and one
    # batch more than the steps: accelerate's loader fetches a batch ahead, so the timed window then holds
    # the data work of exactly `timed` batches.
    train_set = tutorial_dataset(data.train.images, data.train.labels,
                                 reference_transform(size, mean, std, channels, recipe.augment, built.upsample),
                                 count=max(len(data.train), batch * (config.warmup + timed + 1)))
    eval_transform = reference_transform(size, mean, std, channels, "none", built.upsample)
    eval_set = tutorial_dataset(data.train.images, data.train.labels, eval_transform,
                                count=eval_batch * (config.warmup + timed + 1))

    class Clock(TrainerCallback):
        """Timestamps after the warm-up steps and after the last step, training and prediction alike."""

        def __init__(self) -> None:
            self.marks: dict[str, float] = {}
            self.rows_at: dict[str, int] = {}
            self.rows = 0  # images the collate function has batched so far
            self.predicted = 0

        def collate(self, examples: list[dict]) -> dict:
            self.rows += len(examples)
            return tutorial_collate(examples)

        def mark(self, name: str) -> None:
            synchronize(device)
            self.marks[name] = time.perf_counter()
            self.rows_at[name] = self.rows
            if name.endswith("start"):
                reset_peak_memory(device)

        def timing(self, phase: str) -> Timing:
            start, end = f"{phase}_start", f"{phase}_end"
            return Timing(images=self.rows_at[end] - self.rows_at[start],
                          seconds=self.marks[end] - self.marks[start], peak_memory_mb=peak_memory(device)[0])

        def on_step_end(self, _args, state, *_, **__):
            if state.global_step == config.warmup:
                self.mark("train_start")
            if state.global_step == config.warmup + timed:
                self.mark("train_end")

        def on_prediction_step(self, *_, **__):
            self.predicted += 1
            if self.predicted == config.warmup:
                self.mark("predict_start")
            if self.predicted == config.warmup + timed:
                self.mark("predict_end")

    clock = Clock()
    training_args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=eval_batch,
        max_steps=config.warmup + timed,
        learning_rate=recipe.lr,
        weight_decay=recipe.weight_decay,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=config.seed,
    )
    trainer = Trainer(model=trainer_model(built), args=training_args, train_dataset=train_set,
                      data_collator=clock.collate, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # no metrics dicts printed over our summary
    trainer.train()
    train = clock.timing("train")
    trainer.predict(eval_set)
    infer = clock.timing("predict")
    for timing in (train, infer):
        timing.round_rates = [timing.images_per_second]
    del trainer
    return train, infer


# ---------------------------------------------------------------------------------------------- modes


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks a model repeats: the children of each outermost ModuleList / Sequential holding two or more
    modules of one class (ViT encoder layers, each ResNet stage's blocks)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            kinds = [type(c) for c in child.children()]
            if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(kinds) >= 2 and len(set(kinds)) == 1:
                found.extend(child.children())
            else:
                visit(child)

    visit(model)
    return found


def compiled(model: nn.Module, mode: str, backend: str = "inductor") -> tuple[nn.Module, int]:
    """The model as `--compile mode` runs it, and how many regions were compiled (0: none, 1: the whole model)."""
    if mode == "none":
        return model, 0
    # static shapes: perf's batches are all full, and the inference pass (another batch size) gets its own static
    # graph instead of a dynamic-shape recompile of the training one
    options = {"backend": backend, "dynamic": False, **({"mode": "reduce-overhead"} if mode == "reduce-overhead" else {})}
    if mode == "regional":
        blocks = repeated_blocks(model)
        if not blocks:
            raise UserError("--compile regional found no repeated blocks in this model; use --compile model")
        for block in blocks:
            block.compile(**options)  # in place: parameter names and the state dict stay the model's
        return model, len(blocks)
    return torch.compile(model, **options), 1


def measure_training(data: DatasetSplits, device: torch.device, config: PerfConfig) -> dict:
    # one "epoch" of 2 × (warm-up + timed) steps per pipeline: the schedule spans the whole measurement
    recipe = Recipe(epochs=1, batch_size=config.batch, mixed_precision=config.mixed_precision,
                    compile=config.compile != "none")
    dtype = autocast_dtype(recipe, device)
    with tempfile.TemporaryDirectory(prefix="perf-") as tmp:
        workdir = Path(tmp)
        built, model_info = build_for_perf(config, data, workdir)
        channels_last = uses_channels_last(built)
        model = built.module.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_flops = count_flops(model, built.input_size, built.in_channels, device, dtype, train=True)
        infer_flops = count_flops(model, built.input_size, built.in_channels, device, dtype, train=False)
        split = DeviceSplit.from_split(data.train, device)
        timed_model, compiled_regions = compiled(model, config.compile, config.compile_backend)
        with own_accelerate_state():  # its own device (--device cpu on a CUDA machine), whatever ran before
            train, infer, loss, profile = measure_ours_and_random(built, timed_model, split, recipe, device, dtype,
                                                                  channels_last, data.n_classes, config)
        if not math.isfinite(loss):
            raise RuntimeError(f"training loss became {loss} while timing; the step is broken")
        del timed_model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # what needs the device, read before (c): a CUDA error in (c) can poison every later call on the device
        peak, peak_source = peak_tflops_for(device, config.peak_tflops)
        memory_kind = peak_memory(device, since_reset=reset_peak_memory(device))[1]  # each phase resets its peak
        tutorial_error = None
        if not config.skip_tutorial:
            try:
                with own_accelerate_state():
                    train["tutorial"], infer["tutorial"] = measure_tutorial(built, data, recipe, device, dtype,
                                                                            config, workdir)
            except Exception as err:  # (a) and (b) are measured by now: keep them, and say why (c) is missing
                tutorial_error = f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"
                logger.warning("(c), the tutorial pipeline, failed; (a) and (b) are kept", exc_info=True)

    pipelines = {}
    for name in TRAIN_PIPELINES:
        if name not in train:
            continue
        pipelines[name] = {
            "train": {**train[name].to_dict(), "seconds_per_epoch": len(data.train) / train[name].images_per_second,
                      **utilisation(train[name].images_per_second, train_flops, peak)},
            "inference": {**infer[name].to_dict(), **utilisation(infer[name].images_per_second, infer_flops, peak)},
        }
    return {
        "model": model_info,
        "batch": config.batch,
        "eval_batch": config.eval_batch or 2 * config.batch,
        "augment": recipe.augment,
        "optimizer": recipe.optimizer,
        "mixed_precision": str(dtype).removeprefix("torch.") if dtype else "no",
        "channels_last": channels_last,
        "compile": config.compile,
        "compiled_regions": compiled_regions,
        "compile_backend": config.compile_backend if config.compile != "none" else None,
        "optimizer_fused": device.type == "cuda" and recipe.optimizer in ("adam", "adamw"),  # make_optimizer's rule
        "timed_steps": config.steps * config.rounds,
        "tutorial_timed_steps": None if config.skip_tutorial else tutorial_timed_steps(config),
        "tutorial_error": tutorial_error,  # why (c) failed (then without its numbers); None when it ran or was skipped
        "warmup_steps": config.warmup,
        "train_loss_while_timing": loss,
        "flops_per_image": {"train": train_flops, "inference": infer_flops},
        "peak_bf16_tflops": peak,
        "peak_bf16_tflops_source": peak_source,
        "memory_kind": memory_kind,
        "pipelines": pipelines,
        "ratios": ratios(pipelines, "ours", {"random": "ours_over_random", "tutorial": "ours_over_tutorial"}),
        **({"profile": profile} if profile else {}),
    }


def ratios(pipelines: dict, numerator: str, denominators: dict[str, str]) -> dict:
    """images/s of `numerator` over each measured denominator (per phase when there are phases)."""

    def rates(pipeline: dict) -> dict[str, float]:
        if "images_per_second" in pipeline:
            return {"": pipeline["images_per_second"]}
        return {f"{phase}_": figures["images_per_second"] for phase, figures in pipeline.items()}

    top = rates(pipelines[numerator])
    return {f"{prefix}{label}": top[prefix] / rate
            for name, label in denominators.items() if name in pipelines
            for prefix, rate in rates(pipelines[name]).items()}


def measure_data_only(data: DatasetSplits, device: torch.device, config: PerfConfig) -> dict:
    """images/s delivered at --input-size with the tutorial augmentation: ours vs the tutorial's."""
    size, batch, mean, std, channels = config.input_size, config.batch, [0.5] * 3, [0.5] * 3, 3
    total = config.warmup + config.steps * config.rounds
    split = DeviceSplit.from_split(data.train, device)
    ours = BatchTransform(size, mean, std, channels, "tutorial")
    reference = reference_transform(size, mean, std, channels, "tutorial")
    indices = index_batches(len(split), batch, total, config.seed)
    augment_rng = epoch_generator(config.seed, 1, 1)
    pictures = pil_images(data.train.images)
    loader = tutorial_loader(data, reference, batch, config.seed, count=max(len(data.train), batch * total))
    streams = {name: iter(indices) for name in ("ours", "tutorial_transform")}

    def ours_step() -> int:
        return len(ours(split.images[next(streams["ours"])], augment_rng))

    def transform_step() -> int:
        index = next(streams["tutorial_transform"]).tolist()
        return len(torch.stack([reference(pictures[i]) for i in index]).to(device))

    def loader_step() -> int:
        return len(next(loader)["pixel_values"].to(device))

    timings = measure_interleaved({"ours": ours_step, "tutorial_transform": transform_step,
                                   "tutorial_loader": loader_step}, device, config.warmup, config.steps, config.rounds)
    pipelines = {name: timing.to_dict() for name, timing in timings.items()}
    return {
        "input_size": size,
        "augment": "tutorial",
        "channels_out": channels,
        "batch": batch,
        "timed_batches": config.steps * config.rounds,
        "warmup_batches": config.warmup,
        "memory_kind": peak_memory(device, since_reset=reset_peak_memory(device))[1],  # each pipeline resets it
        "pipelines": pipelines,
        "ratios": ratios(pipelines, "ours", {"tutorial_transform": "over_tutorial_transform",
                                             "tutorial_loader": "over_tutorial_loader"}),
    }


def tutorial_loader(data: DatasetSplits, transform, batch: int, seed: int, count: int) -> Iterator[dict]:
    """Endless full batches from the tutorials' loader: `count` shuffled rows, set_transform, no workers."""
    generator = torch.Generator().manual_seed(seed)
    dataset = tutorial_dataset(data.train.images, data.train.labels, transform, count=count)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0,
                                         collate_fn=tutorial_collate, generator=generator, drop_last=True)
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------- output


def environment(device: torch.device) -> dict:
    return {
        **measured_on(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }


def command_line(config: PerfConfig) -> str:
    """The `perf` command that measures `config` again (also when it came from the Python API)."""
    argv = ["python", "-m", "benchmark", "perf"]
    for option in fields(PerfConfig):
        value = getattr(config, option.name)
        if value == option.default:
            continue
        flag = "--" + option.name.replace("_", "-")
        argv += [flag] if isinstance(value, bool) else [flag, portable_path(value)]
    return shlex.join(argv)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def result_name(config: PerfConfig, device: torch.device) -> str:
    where = "cpu" if device.type == "cpu" else slug(device_name(device))
    if config.data_only:
        return f"data-{config.dataset}-{config.size}to{config.input_size}-b{config.batch}-{where}.json"
    compile_mode = "" if config.compile == "none" else f"-compile-{config.compile}"
    return f"train-{slug(Path(config.model).name)}-{config.dataset}-{config.size}-b{config.batch}{compile_mode}-{where}.json"


def write_result(result: dict, output: Path, name: str) -> Path:
    return write_result_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=True) + "\n", output, name)


def write_result_text(text: str, output: Path, name: str) -> Path:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {output}: {err.strerror}; choose another --output") from None
    path = output / name
    atomic_write_bytes(path, text.encode())
    return path


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def summary(result: dict) -> str:
    env = result["environment"]
    lines = [f"perf ({result['mode']}) on {env['device']} [{env['device_name']}], "
             f"{env['torch_threads']} torch threads, {result['dataset']['name']} {result['dataset']['size']} px"]
    if result["mode"] == "data":
        lines.append(f"data at {result['input_size']} px with augmentation, batch {result['batch']}:")
        for name, p in result["pipelines"].items():
            lines.append(f"  {name:<20} {_fmt(p['images_per_second']):>10} images/s")
    else:
        compile_mode = f", compile {result['compile']}" if result.get("compile", "none") != "none" else ""
        lines.append(f"{result['model']['name']} at {result['model']['input_size']} px, batch {result['batch']} "
                     f"(eval {result['eval_batch']}), {result['mixed_precision']}{compile_mode}, "
                     f"{result['flops_per_image']['train'] / 1e9:.3g} GFLOP/image fwd+bwd")
        lines.append(f"  {'pipeline':<10} {'train img/s':>12} {'s/epoch':>9} {'infer img/s':>12} "
                     f"{'peak MB':>9} {'TFLOP/s':>8} {'MFU':>6}")
        for name, p in result["pipelines"].items():
            t, i = p["train"], p["inference"]
            mfu = _fmt(100 * t["mfu"], ".1f") + "%" if t["mfu"] is not None else "-"
            lines.append(f"  {name:<10} {_fmt(t['images_per_second']):>12} {_fmt(t['seconds_per_epoch'], '.2f'):>9} "
                         f"{_fmt(i['images_per_second']):>12} {_fmt(t['peak_memory_mb'], '.0f'):>9} "
                         f"{_fmt(t['achieved_tflops'], '.3g'):>8} {mfu:>6}")
    lines.append("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
    if result.get("tutorial_error"):
        lines.append(f"(c), the tutorial pipeline, failed: {result['tutorial_error']}")
    if "profile" in result:
        top = result["profile"]["top"][:3]
        lines.append(f"profile ({result['profile']['steps']} steps of ours): top ops by {result['profile']['sorted_by']}: "
                     + ", ".join(f"{row['name']} {100 * row['self_share']:.0f}%" for row in top)
                     + f"; table in {result['profile']['table_file']}")
    return "\n".join(lines)
