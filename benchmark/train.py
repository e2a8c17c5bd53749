"""The training loop: one readable accelerate loop with device-resident data.

Each split lives once on the training device as a uint8 tensor (or, too large for it, in host memory with
each batch copied over one step ahead: `benchmark.placement`); batches are indexed from it and resized,
augmented and normalised on the device by `BatchTransform` (no DataLoader, no per-sample PIL). Every epoch draws its
sample order and augmentation from generators seeded by (seed, epoch), and at optimizer-step boundaries
`benchmark.checkpoint` decides when to save the loop (by elapsed time, or because SIGTERM/SIGINT asked the run
to stop), so an interrupted run resumed from its last checkpoint ends bit-identical on CPU.

Multi-GPU: started with `accelerate launch`, each process trains on its shard of the same permutation under
DDP, and evaluation gathers every process's predictions back into dataset order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from benchmark.checkpoint import Interrupted, RunCheckpoints, best_weights_of, restore_rng_states, rng_states, stop_requested
from benchmark.claims import ClaimLost
from benchmark.config import Recipe
from benchmark.data import DatasetSplits, Split
from benchmark.data.transforms import BatchTransform
from benchmark.distributed import prepare_batchnorm
from benchmark.errors import UserError
from benchmark.metrics import classification_metrics, temperature_calibration
from benchmark.models import BuiltModel
from benchmark.schemes.imbalance import balanced_class_weights, balanced_order, balanced_sample_weights

# Messages of a multi-process run come from the main process only.
logger = logging.getLogger(__name__)


class TrainingFailed(UserError):
    """A run that cannot go on (non-finite loss, out of memory); carries the epoch it stopped in and the
    history of the epochs before it, for the failed record."""

    def __init__(self, message: str, epoch: int, history: list[dict]):
        super().__init__(message)
        self.epoch, self.history = epoch, list(history)


@contextlib.contextmanager
def out_of_memory_as_failure(recipe: Recipe, epoch: int, history: list[dict]):
    """Turn an out-of-memory error into a `TrainingFailed` that says how to fit the run in memory."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainingFailed(f"out of memory in epoch {epoch} at batch_size {recipe.batch_size}; lower batch_size "
                             f"(and raise grad_accum_steps to keep the effective batch) in the recipe", epoch,
                             history) from None


def check_finite(what: str, value: float, epoch: int, history: list[dict]) -> None:
    if not math.isfinite(value):
        raise TrainingFailed(f"{what} became {value} in epoch {epoch}; lower the learning rate (or set max_grad_norm) "
                             f"in the recipe", epoch, history)


@dataclass
class TrainOutcome:
    history: list[dict]
    best_epoch: int
    test: dict
    test_labels: list[int]
    test_probs: list[list[float]]
    train_seconds: float
    train_images: int
    resumed_from_epoch: int = 0
    stopped_early: bool = False
    details: dict = field(default_factory=dict)  # what the scheme reports (trainable params, embedding cache, …)
    calibration: dict | None = None  # recipe.calibrate == "temperature": temperature and test metrics before/after
    sync_batchnorm: bool | None = None  # several processes trained BatchNorm layers: were their statistics synced
    eval_seconds: float = 0.0  # validation and test scoring, over every session (as train_seconds)
    checkpoint_seconds: float = 0.0  # the training thread's time on checkpoints, over every session
    checkpoints_written: int = 0  # last.pt writes, over every session
    setup_seconds: float = 0.0  # this session: from `fit`'s start to its first epoch (model to device, resume)
    peak_memory_mb: float = 0.0  # the whole scheme's peak, embedding passes included (set by `run_scheme`)
    peak_memory_kind: str = ""


@dataclass
class DeviceSplit:
    images: torch.Tensor  # uint8 (N, C, H, W) on the training device
    labels: torch.Tensor  # int64 (N,) on the training device

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        # NHWC → NCHW on the device, so a GPU run never holds a second full copy in host memory
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device).permute(0, 3, 1, 2).contiguous()
        return cls(images, torch.from_numpy(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def index_device(self) -> torch.device:
        return self.labels.device

    def batches(self, index_batches):
        """(indices, uint8 images on the device) per batch; `placement.HostSplit` does the same from host memory."""
        for indices in index_batches:
            yield indices, self.images[indices]


@dataclass
class LoopState:
    """Everything that changes from epoch to epoch; saved whole in each checkpoint."""

    epoch: int = 0  # last finished epoch
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # over every session of the run, so throughput survives a resume
    train_images: int = 0
    num_processes: int = 1  # a resumed run must shard its data the same way
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # up to the last checkpoint
    checkpoints_written: int = 0
    # saved mid-epoch: the epoch, the next batch, the loss sum and seconds so far, the epoch's starting learning
    # rate and the augmentation generator's state
    in_epoch: dict | None = None

    def observe(self, epoch: int, score: float, patience: int) -> bool:
        """Count a finished epoch with its validation `score` (higher is better); True when it is the new best.

        The first epoch is always the best so far; a later one must beat the best strictly (a tie keeps the
        earlier epoch). With `patience` > 0 the run stops after that many epochs in a row without a new best."""
        improved = self.best_epoch == 0 or score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.epochs_without_improvement = score, epoch, 0
        else:
            self.epochs_without_improvement += 1
        self.epoch = epoch
        self.stopped_early = bool(patience) and self.epochs_without_improvement >= patience
        return improved


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for `recipe` on `device` (None = full precision)."""
    if recipe.mixed_precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)  # not V100/T4
        return torch.bfloat16 if use_bf16 else None
    if recipe.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.mixed_precision]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases and norm scales (as HF Trainer does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(recipe: Recipe, model_or_groups: nn.Module | list[dict],
                   device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer over a model's parameters (`parameter_groups`) or over explicit groups."""
    groups = model_or_groups if isinstance(model_or_groups, list) else parameter_groups(model_or_groups,
                                                                                          recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    optimizer_class = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=recipe.lr, fused=device.type == "cuda")


def make_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-optimizer-step schedule: cosine with linear warmup, MedMNIST v2's multistep, or constant.

    Multistep decays by `gamma` at the start of epoch floor(m * epochs) for each milestone m (50 and 75 of MedMNIST
    v2's 100 epochs); a milestone inside the first epoch is dropped: it fell on step 0, and a 1-epoch run trained
    at lr * gamma² throughout."""
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, round(recipe.warmup_ratio * total), total)
    if recipe.schedule == "multistep":
        milestones = [int(m * recipe.epochs) * steps_per_epoch for m in recipe.milestones if m * recipe.epochs >= 1]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=recipe.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, epoch, purpose): data order and augmentation never share a stream."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def train_batches(n: int, batch_size: int, generator: torch.Generator, rank: int, world: int,
                  device: torch.device | str = "cpu", sample_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
    """This process's batches of one epoch: an equal shard of one shared permutation (or, with `sample_weights`,
    of one shared weighted draw with replacement), as index tensors on `device` (indexing a GPU-resident split
    with CPU indices would copy them over at every step).

    A trailing batch of one sample is dropped (BatchNorm cannot train on it).
    """
    order = torch.randperm(n, generator=generator) if sample_weights is None else balanced_order(sample_weights,
                                                                                                  generator)
    order = order.to(device)
    per_process = n // world
    shard = order[rank::world][:per_process]
    batches = list(shard.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def gather_in_order(accelerator: Accelerator, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Gather per-process `values` (rows for `indices`) from every process back into dataset order."""
    if accelerator.num_processes == 1:
        return values
    indices = accelerator.pad_across_processes(indices, dim=0, pad_index=-1)
    values = accelerator.pad_across_processes(values, dim=0)
    all_indices, all_values = accelerator.gather(indices), accelerator.gather(values)
    keep = all_indices >= 0
    order = torch.argsort(all_indices[keep])
    return all_values[keep][order]


@torch.no_grad()
def predict(
    model: nn.Module,
    split: DeviceSplit,
    transform: BatchTransform,
    batch_size: int,
    accelerator: Accelerator,
    dtype: torch.dtype | None,
    channels_last: bool,
    n_classes: int,
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and softmax probabilities (N, n_classes) for a whole split, in split order.

    `model` is the unwrapped module: every process runs its own share of the split, outside DDP."""
    model.eval()
    indices = torch.arange(accelerator.process_index, len(split), accelerator.num_processes, device=split.index_device)
    logits = []
    for _, images in split.batches(indices.split(batch_size)):
        pixels = prepare_pixels(transform(images), channels_last)
        with autocast(accelerator.device, dtype):
            logits.append(model(pixels).float())
    local = torch.cat(logits) if logits else torch.empty(0, n_classes, device=split.labels.device)
    all_logits = gather_in_order(accelerator, indices.to(split.labels.device), local)
    loss = nn.functional.cross_entropy(all_logits, split.labels).item()
    return loss, torch.softmax(all_logits, dim=1).cpu().numpy()


def uses_channels_last(built: BuiltModel) -> bool:
    """CNNs run channels_last: faster convolutions on GPU (tensor cores) and CPU (oneDNN) alike."""
    return built.family == "resnet"


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_pixels(pixels: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels


def selection_score(metrics: dict, metric: str) -> float:
    """Higher is better; an undefined metric (NaN AUC on a one-class split) never wins."""
    value = -metrics["loss"] if metric == "loss" else metrics[metric]
    return -math.inf if value != value else value


def restore_training_state(checkpoint: dict, path: Path, model: nn.Module, optimizer, scheduler, scaler,
                           fresh: LoopState) -> LoopState:
    """Load a checkpoint into the run; one written for another process count or by other code is an error."""
    saved = checkpoint["loop"]
    if saved.get("num_processes", 1) != fresh.num_processes:
        raise UserError(f"{path} was written by {saved.get('num_processes', 1)} processes, this run has "
                        f"{fresh.num_processes}; launch as before, or pass --no-resume to start the run over")
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = LoopState(**saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} does not fit this run ({type(err).__name__}, e.g. written by another version); "
                        "pass --no-resume to start the run over") from None
    restore_rng_states(checkpoint["rng"])
    return state


def reset_peak_memory(device: torch.device) -> bool:
    """Start measuring a peak anew: CUDA's max-allocated counter, or on a CPU the process's peak RSS (Linux:
    /proc/self/clear_refs). False where it cannot (the process's lifetime peak goes on)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory(device: torch.device, since_reset: bool = False) -> tuple[float, str]:
    """MB at the peak and what was measured: CUDA's max allocated since the last reset, or the process's peak RSS
    ("process_run_peak_rss" when `reset_peak_memory` restarted it, else its lifetime "process_max_rss")."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    kind = "process_run_peak_rss" if since_reset else "process_max_rss"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, kind


class TrainStep:
    """One training micro-batch exactly as `fit` runs it (and `perf` times it): autocast forward, loss-scaled
    backward, gradients synchronised across processes only on the last micro-batch of an accumulation window;
    on that one, clipping and the optimizer, scaler and schedule steps. Returns the (detached) batch loss."""

    def __init__(self, model: nn.Module, optimizer, scheduler, recipe: Recipe, accelerator: Accelerator,
                 dtype: torch.dtype | None, class_weights: torch.Tensor | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.recipe, self.accelerator, self.dtype = recipe, accelerator, dtype
        self.scaler = torch.amp.GradScaler(accelerator.device.type, enabled=dtype == torch.float16)
        weight = None if class_weights is None else class_weights.to(accelerator.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, window: int = 1,
                 last_in_window: bool = True) -> torch.Tensor:
        sync = contextlib.nullcontext() if last_in_window else self.accelerator.no_sync(self.model)
        with sync:
            with autocast(self.accelerator.device, self.dtype):
                loss = self.loss_fn(self.model(pixels).float(), labels)
            self.accelerator.backward(self.scaler.scale(loss / window))
        if last_in_window:
            if self.recipe.max_grad_norm:
                self.scaler.unscale_(self.optimizer)
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.recipe.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class Adaptation:
    """What trains and how, for the schemes that run this loop: by default every parameter, one learning rate.

    `gradual_unfreeze` changes the groups and which of them train each epoch; `lora` evaluates a merged model.
    """

    def param_groups(self, model: nn.Module, recipe: Recipe) -> list[dict]:
        return parameter_groups(model, recipe.weight_decay)

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called before each training epoch (also the first one after a resume)."""

    def for_test(self, model: nn.Module) -> nn.Module:
        """The model that scores the test split, from the one holding the best weights."""
        return model


def imbalance_tools(recipe: Recipe, data: DatasetSplits) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(loss class weights, sampling weights) that the recipe's imbalance options ask for (None when off)."""
    loss_weights = balanced_class_weights(data.train.labels, data.n_classes) if recipe.class_weights == "balanced" \
        else None
    sample_weights = balanced_sample_weights(data.train.labels, data.n_classes) if recipe.sampler == "balanced" \
        else None
    return loss_weights, sample_weights


def identity_transform(inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For splits that are already model inputs (cached embeddings)."""
    return inputs


def fit(
    built: BuiltModel,
    data: DatasetSplits,
    device_splits: dict[str, DeviceSplit],
    recipe: Recipe,
    seed: int,
    accelerator: Accelerator,
    checkpoints: RunCheckpoints | None,
    quiet: bool = False,
    description: str = "",
    adaptation: Adaptation | None = None,
    inputs_ready: bool = False,
) -> TrainOutcome:
    """Train `built` on `data` with `recipe`, pick the best epoch on validation, score it on test.

    `adaptation` decides the trainable groups (default: all parameters); `inputs_ready` says the device splits
    already hold model inputs (a linear probe's embeddings), so no image transform runs. `checkpoints` (None:
    none) resumes the run from its last checkpoint and saves it as `benchmark.checkpoint` decides."""
    entered = time.perf_counter()
    adaptation = adaptation or Adaptation()
    device = accelerator.device
    dtype = autocast_dtype(recipe, device)
    channels_last = uses_channels_last(built)
    model = built.module.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sync_batchnorm = prepare_batchnorm(model, recipe.sync_batchnorm, accelerator.num_processes)
    groups = adaptation.param_groups(model, recipe)
    optimizer = make_optimizer(recipe, groups, device)
    train_split = device_splits["train"]
    batches_per_epoch = len(train_batches(len(train_split), recipe.batch_size, torch.Generator(), 0, accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / recipe.grad_accum_steps)
    scheduler = make_scheduler(recipe, optimizer, steps_per_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)  # before compiling: checkpoints and schemes see the model's own names
    if recipe.compile:
        model = torch.compile(model)
    loss_weights, sample_weights = imbalance_tools(recipe, data)
    step = TrainStep(model, optimizer, scheduler, recipe, accelerator, dtype, loss_weights)

    if inputs_ready:
        train_transform = eval_transform = identity_transform
    else:
        train_transform = BatchTransform.for_model(built, recipe.augment)
        eval_transform = BatchTransform.for_model(built)
    eval_batch = recipe.eval_batch_size or 2 * recipe.batch_size

    state, best_weights = LoopState(num_processes=accelerator.num_processes), None
    resumed = checkpoints.resume_point() if checkpoints else None
    if resumed is not None:
        state = restore_training_state(resumed, checkpoints.last, unwrapped, optimizer, scheduler, step.scaler,
                                       state)
        best_weights = best_weights_of(resumed)
    resumed_from, checkpoint_seconds_before = state.epoch, state.checkpoint_seconds
    main, one_process = accelerator.is_main_process, accelerator.num_processes == 1

    def at_step_boundary(epoch_end: bool) -> None:
        """Save the loop when a checkpoint is due (the main process writes), then stop when one was asked for.
        Every process takes the same decision: several processes decide at epoch ends only, together."""
        save, stop, lost = checkpoints.decide(epoch_end) if checkpoints else (False, bool(stop_requested()), False)
        if not one_process:
            save, stop, lost = (bool(flag) for flag in accelerator.reduce(
                torch.tensor([save, stop, lost], dtype=torch.float32, device=device), reduction="sum").tolist())
        if lost:
            raise ClaimLost(f"{description}: another worker took the run over; this worker stops")
        if save and checkpoints:
            state.checkpoints_written += 1
            state.checkpoint_seconds = checkpoint_seconds_before + checkpoints.seconds
            unchanged_best = epoch_end and state.best_epoch == state.epoch  # the model's own weights: not twice
            if main:
                checkpoints.save({"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "scaler": step.scaler.state_dict(),
                                  "rng": rng_states(), "loop": vars(state)},
                                 {"epoch": state.best_epoch, "weights": None if unchanged_best else best_weights})
        if stop:
            raise Interrupted(stop_requested() or signal.SIGTERM)

    setup_seconds = time.perf_counter() - entered
    show = not quiet and main
    first_epoch = recipe.epochs + 1 if state.stopped_early else state.epoch + 1
    with checkpoints.open() if checkpoints else contextlib.nullcontext():
        for epoch in range(first_epoch, recipe.epochs + 1):
            position, state.in_epoch = state.in_epoch, None  # where a mid-epoch checkpoint left this epoch
            learning_rate = position["lr"] if position else optimizer.param_groups[0]["lr"]  # what it starts with
            with out_of_memory_as_failure(recipe, epoch, state.history):
                adaptation.start_epoch(unwrapped, epoch)
                model.train()
                batches = train_batches(
                    len(train_split), recipe.batch_size, epoch_generator(seed, epoch, 0),
                    accelerator.process_index, accelerator.num_processes, train_split.index_device, sample_weights,
                )
                augment_rng = epoch_generator(seed, epoch, 1)
                loss_sum, first_batch, seconds_before = torch.zeros((), device=device), 0, 0.0
                if position:
                    augment_rng.set_state(position["augment_rng"])
                    loss_sum, first_batch = position["loss_sum"].to(device), position["batch"]
                    seconds_before = position["seconds"]
                started = time.perf_counter()
                bar = tqdm(train_split.batches(batches[first_batch:]), total=len(batches), initial=first_batch,
                           desc=f"{description} epoch {epoch}/{recipe.epochs}", disable=not show, leave=False)
                for i, (batch, images) in enumerate(bar, start=first_batch):
                    window_start = i - i % recipe.grad_accum_steps
                    window = min(recipe.grad_accum_steps, len(batches) - window_start)
                    last_in_window = (i + 1) % recipe.grad_accum_steps == 0 or i == len(batches) - 1
                    pixels = prepare_pixels(train_transform(images, augment_rng), channels_last)
                    loss_sum += step(pixels, train_split.labels[batch], window, last_in_window) * len(batch)
                    if last_in_window and one_process and i < len(batches) - 1:
                        seconds_before += time.perf_counter() - started  # a checkpoint's time is not training
                        state.in_epoch = {"epoch": epoch, "batch": i + 1, "loss_sum": loss_sum,
                                          "seconds": seconds_before, "lr": learning_rate,
                                          "augment_rng": augment_rng.get_state()}
                        at_step_boundary(epoch_end=False)
                        state.in_epoch, started = None, time.perf_counter()
                seen = sum(len(b) for b in batches)
                train_loss = accelerator.reduce(loss_sum, reduction="sum").item() / (seen * accelerator.num_processes)
                epoch_seconds = seconds_before + time.perf_counter() - started
                state.train_seconds += epoch_seconds
                state.train_images += seen * accelerator.num_processes
                check_finite("training loss", train_loss, epoch, state.history)

                evaluating = time.perf_counter()
                val_loss, val_probs = predict(unwrapped, device_splits["val"], eval_transform, eval_batch,
                                              accelerator, dtype, channels_last, data.n_classes)
                check_finite("validation loss", val_loss, epoch, state.history)  # a last step can diverge
                val_metrics = {"loss": val_loss, **classification_metrics(data.val.labels, val_probs, data.task)}
                val_metrics.pop("per_class"), val_metrics.pop("confusion_matrix")
                state.eval_seconds += time.perf_counter() - evaluating
                state.history.append({
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "lr": learning_rate,
                    "seconds": epoch_seconds,
                    "val": val_metrics,
                })
                if state.observe(epoch, selection_score(val_metrics, recipe.selection_metric),
                                 recipe.early_stopping_patience):  # a new best: a CPU copy, for the checkpoints
                    best_weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
                if main:
                    logger.info(f"{description} epoch {epoch}: train loss {train_loss:.4f}, "
                                f"val {recipe.selection_metric} {val_metrics[recipe.selection_metric]:.4f}")
                # to the run's trackers (`--track`; none: a no-op)
                accelerator.log({"train/loss": train_loss, "lr": learning_rate,
                                 **{f"val/{name}": value for name, value in val_metrics.items()}}, step=epoch)
                at_step_boundary(epoch_end=True)
                if state.stopped_early:
                    break
        if checkpoints and main:
            checkpoints.write_best(state.best_epoch, best_weights)

    unwrapped.load_state_dict(best_weights)
    evaluating = time.perf_counter()
    with out_of_memory_as_failure(recipe, state.epoch, state.history):
        test_model = adaptation.for_test(unwrapped)  # e.g. LoRA merges its adapters: once
        test_loss, test_probs = predict(test_model, device_splits["test"], eval_transform, eval_batch, accelerator,
                                        dtype, channels_last, data.n_classes)
        if recipe.calibrate == "temperature":
            _, best_val_probs = predict(test_model, device_splits["val"], eval_transform, eval_batch, accelerator,
                                        dtype, channels_last, data.n_classes)
    state.eval_seconds += time.perf_counter() - evaluating
    test_metrics = {"loss": test_loss, **classification_metrics(data.test.labels, test_probs, data.task)}
    calibration = (temperature_calibration(data.val.labels, best_val_probs, data.test.labels, test_probs)
                   if recipe.calibrate == "temperature" else None)
    return TrainOutcome(
        history=state.history,
        best_epoch=state.best_epoch,
        test=test_metrics,
        test_labels=data.test.labels.tolist(),
        test_probs=test_probs.tolist(),
        train_seconds=state.train_seconds,
        train_images=state.train_images,
        resumed_from_epoch=resumed_from,
        stopped_early=state.stopped_early,
        details={"trainable_params": sum(p.numel() for group in groups for p in group["params"])},
        calibration=calibration,
        sync_batchnorm=sync_batchnorm,
        eval_seconds=state.eval_seconds,
        checkpoint_seconds=checkpoint_seconds_before + (checkpoints.seconds if checkpoints else 0.0),
        checkpoints_written=state.checkpoints_written,
        setup_seconds=setup_seconds,
    )
