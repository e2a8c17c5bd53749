"""Frozen-backbone embeddings, computed once and cached on disk, content-addressed.

The embedding of an image is the input of the model's classifier head (its last `nn.Linear`): the pre-logit
feature MedMNIST+ probes (ViT: the final-norm CLS token; CLIP's image tower: the mean of the patch tokens, as
`CLIPForImageClassification` pools; ResNets: the global-average-pooled features). It is read with a forward
pre-hook on that layer while the whole model runs in eval mode under `torch.no_grad`.

A cache file `<results>/cache/embeddings/<key>.pt` holds one split's embeddings (float32, dataset order). The key
is the SHA-256 of everything that changes the numbers: the backbone's weights (every tensor of the state dict
except the head's, so all seeds of a pretrained model share one entry while each seed of a random-init network
gets its own), the model class and forward options, the dataset, a digest of the split's images and labels
themselves (so a labelled subset of the training split, a limit or another way of cutting the splits is its own
entry), its size and name, the transform's settings (input size, mean, std, channels, resize/pad, upsample) and
the autocast dtype. A hit never runs the model; any change is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from benchmark.checkpoint import atomic_torch_save, load_checkpoint
from benchmark.data import DatasetSplits
from benchmark.data.transforms import BatchTransform
from benchmark.errors import UserError
from benchmark.models import BuiltModel
from benchmark.train import DeviceSplit, autocast, gather_in_order

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: keyed by the split's rows (1 took a file's MD5, blind to subsets and split cuts)


def cache_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "cache" / "embeddings"


def head_linear(built: BuiltModel, model_name: str = "") -> tuple[str, nn.Linear]:
    """The dotted path and module of the head's last `nn.Linear` (whose input is the embedding)."""
    head = built.module.get_submodule(built.head) if built.head else None
    linears = [(f"{built.head}.{name}".rstrip("."), m) for name, m in head.named_modules()
               if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise UserError(f"model '{model_name}' has no linear classifier head to read embeddings from; use "
                        f"scheme finetune for it")
    return linears[-1]


def backbone_digest(built: BuiltModel) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every state-dict tensor outside the head."""
    digest = hashlib.sha256()
    prefix = built.head + "."
    for name, tensor in sorted(built.module.state_dict().items()):
        if name.startswith(prefix):
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def data_digest(data: DatasetSplits, split: str) -> str:
    """SHA-256 of a split's images and labels (shapes and dtypes too): the exact rows the embeddings are of. Not
    the data file's MD5, which stays the same for a seed's labelled subset or another cut of a loader's splits."""
    part = getattr(data, split)
    digest = hashlib.sha256()
    for array in (part.images, part.labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}|{array.shape}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def cache_key(built: BuiltModel, weights: str, data: DatasetSplits, split: str, transform: BatchTransform,
              dtype: torch.dtype | None) -> tuple[str, dict]:
    fields = {
        "version": CACHE_VERSION,
        "weights": weights,
        "model_class": type(getattr(built.module, "model", built.module)).__name__,
        "forward_options": sorted(getattr(built.module, "forward_kwargs", {}).items()),
        "embedding": f"input of {head_linear(built)[0]}",
        "dataset": data.name,
        "data": data_digest(data, split),
        "size": data.size,
        "split": split,
        "transform": transform.settings(),
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest(), fields


@torch.no_grad()
def compute_embeddings(built: BuiltModel, split: DeviceSplit, transform: BatchTransform, batch_size: int,
                       accelerator: Accelerator, dtype: torch.dtype | None) -> torch.Tensor:
    """(N, D) float32 embeddings of a split in dataset order (every process embeds its share, then gathers)."""
    module = built.module.to(accelerator.device).eval()
    _, linear = head_linear(built)
    captured: list[torch.Tensor] = []
    hook = linear.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().float()))
    indices = torch.arange(accelerator.process_index, len(split), accelerator.num_processes,
                           device=split.index_device)
    try:
        for _, images in split.batches(indices.split(batch_size)):  # device-resident or host-held splits alike
            with autocast(accelerator.device, dtype):
                module(transform(images))
    finally:
        hook.remove()
    local = torch.cat(captured) if captured else torch.empty(0, linear.in_features, device=accelerator.device)
    return gather_in_order(accelerator, indices.to(split.labels.device), local.flatten(1))


def cached_embeddings(built: BuiltModel, data: DatasetSplits, device_splits: dict[str, DeviceSplit],
                      splits: tuple[str, ...], batch_size: int, accelerator: Accelerator,
                      dtype: torch.dtype | None, directory: Path | None) -> tuple[dict[str, torch.Tensor], dict]:
    """Embeddings of `splits` on the training device, from the cache where it has them; and what happened
    (`{"cache": "hit" | "miss" | "partial" | "off", "seconds": …, "keys": {split: key}, "backbone": digest}`)."""
    transform = BatchTransform.for_model(built)
    weights = backbone_digest(built)
    out, keys, hits = {}, {}, 0
    started = time.perf_counter()
    for name in splits:
        key, fields = cache_key(built, weights, data, name, transform, dtype)
        keys[name] = key
        path = directory / f"{key}.pt" if directory else None
        stored = load_checkpoint(path) if path else None
        if isinstance(stored, dict) and stored.get("fields") == fields:
            out[name], hits = stored["embeddings"].to(accelerator.device), hits + 1
            continue
        out[name] = compute_embeddings(built, device_splits[name], transform, batch_size, accelerator, dtype)
        if path and accelerator.is_main_process:
            atomic_torch_save({"fields": fields, "embeddings": out[name].cpu()}, path)
    state = "off" if directory is None else "hit" if hits == len(splits) else "miss" if not hits else "partial"
    log.info("embeddings of %s: cache %s", ", ".join(splits), state)
    return out, {"cache": state, "seconds": time.perf_counter() - started, "keys": keys, "backbone": weights}
