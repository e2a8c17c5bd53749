"""What a run cost: the record's `compute` block, and the one FLOP counter (`perf` uses it too).

FLOP convention (`count_flops`): torch's `FlopCounterMode` on the model's own forward (and backward) at its input
size, so the FLOPs are those torch actually computes, not a rule of thumb:

- one multiply-add = 2 FLOPs; matrix products, convolutions and attention count (the counter's registry), while
  normalisation, activations, softmax and the optimizer step do not;
- inference = one forward; training = one forward + one backward. The backward holds the weight gradients and
  the input gradients torch needs, never the pixels' gradient: a Linear layer on the input costs 2·in·out
  forward and 4·in·out to train (not the 6·in·out of the "3 × forward" rule; one deeper inside costs 6·in·out);
- per image: a batch of 2 is counted and divided by 2.

The `compute` block of a record (`compute_block`):

- `n_params` (every parameter, = sum of `numel()`), `trainable_params` (what the scheme trained);
- `flops_per_image`: `inference` (the model as it scored the test split) and `train` (forward + backward) for
  the `finetune` scheme, whose every step trains the whole model; None for the others (a linear probe trains a
  head on cached embeddings, gradual unfreezing changes what trains per epoch);
- `train_images` (every image of every training step, over all processes and sessions), `train_flops` =
  `flops_per_image.train` × `train_images` (None where `train` is);
- `train_images_per_second`, `devices` (training processes), `device_seconds` = training wall seconds × devices
  (the epochs' time, without evaluation or data loading; summed over a resumed run's sessions);
- `peak_memory_mb` and its kind, from the run's start (embedding passes included): CUDA max allocated, or the
  process's peak RSS on a CPU ("process_run_peak_rss"; "process_max_rss" is the process's lifetime peak, in
  records before this measure and where the peak cannot be reset), `device`, `device_name`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmark.environment import device_name

if TYPE_CHECKING:
    from benchmark.models import BuiltModel
    from benchmark.train import TrainOutcome

logger = logging.getLogger(__name__)

# Schemes whose every training step is one forward and backward of the whole model.
WHOLE_MODEL_SCHEMES = ("finetune",)


def count_flops(model: nn.Module, input_size: int, in_channels: int, device: torch.device,
                dtype: torch.dtype | None, train: bool = True, batch: int = 2) -> float:
    """Model FLOPs per image of one forward (+ backward when `train`), counted by `FlopCounterMode`.

    Leaves no trace: the global RNG (dropout), BatchNorm's running statistics, the gradients and the train/eval
    mode are as before. Attention runs on the math SDPA kernel while counting, so its matmuls are counted on
    every device (the counter knows the CUDA flash/efficient kernels but not the CPU one); the count is the same.
    """
    from benchmark.train import autocast

    was_training = model.training
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    model.train(train)
    generator = torch.Generator(device).manual_seed(0)
    pixels = torch.randn(batch, in_channels, input_size, input_size, device=device, generator=generator)
    counter = FlopCounterMode(display=False)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), sdpa_kernel(SDPBackend.MATH), counter, torch.set_grad_enabled(train):
        with autocast(device, dtype):
            logits = model(pixels).float()
        if train:
            nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device)).backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)
    return counter.get_total_flops() / batch


def compute_block(built: BuiltModel, outcome: TrainOutcome, scheme: str, device: torch.device,
                  dtype: torch.dtype | None, devices: int) -> dict:
    """The record's `compute` block of a finished run (see the module docstring for each key)."""
    module = built.module
    inference = train = None
    where = next(module.parameters()).device  # a scheme may have left the model off the training device
    try:
        inference = count_flops(module, built.input_size, built.in_channels, where, dtype, train=False)
        if scheme in WHOLE_MODEL_SCHEMES:  # every parameter trains, as in each of its steps
            train = count_flops(module, built.input_size, built.in_channels, where, dtype, train=True)
    except Exception as err:  # a model the counter cannot run must not cost the finished run its record
        logger.warning(f"FLOPs not counted ({type(err).__name__}: {' '.join(str(err).split())[:200]}); the record's "
                       f"compute block leaves them empty")
    seconds = outcome.train_seconds
    return {
        "n_params": sum(p.numel() for p in module.parameters()),
        "trainable_params": outcome.details.get("trainable_params"),
        "flops_per_image": {"inference": inference, "train": train},
        "train_images": outcome.train_images,
        "train_flops": None if train is None else train * outcome.train_images,
        "train_images_per_second": outcome.train_images / seconds if seconds > 0 else None,
        "devices": devices,
        "device_seconds": seconds * devices,
        "peak_memory_mb": outcome.peak_memory_mb,
        "peak_memory_kind": outcome.peak_memory_kind,
        "device": device.type,
        "device_name": device_name(device),
    }
