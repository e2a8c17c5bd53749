"""Hugging Face `AutoModelForImageClassification` models: any hub id or local `save_pretrained` directory.

Pretrained models get a new head sized to the dataset (`ignore_mismatched_sizes`), with id2label/label2id;
`pretrained: false` builds the same architecture from its config with random weights. Input size and
normalisation come from the model's image processor. Offline (`HF_HUB_OFFLINE=1`) a hub id works when it is
in the local cache; a local directory always works.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import huggingface_hub
import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from benchmark.errors import UserError
from benchmark.models.registry import BUNDLED_MODELS, BuiltModel, ModelSpec, register_family, register_model

logger = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """Adapts an HF classifier to `forward(pixel_values) -> logits`, like every other family."""

    def __init__(self, model: nn.Module, **forward_kwargs):
        super().__init__()
        self.model = model
        self.forward_kwargs = forward_kwargs

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, **self.forward_kwargs).logits


def _unreachable(spec: ModelSpec, err: Exception) -> UserError:
    return UserError(
        f"model '{spec.name}': cannot load '{spec.source}' ({type(err).__name__}); without internet, "
        "point `source:` at a local directory made with save_pretrained, or pre-download it into the HF cache"
    )


BUNDLED_PREFIX = "bundled:"


def load_path(source: str) -> str:
    """Where transformers loads `source` from: `bundled:NAME` is a config shipped in the package (kept symbolic in
    the spec so run hashes do not depend on where the package is installed); anything else is a hub id or folder."""
    if source.startswith(BUNDLED_PREFIX):
        return str(BUNDLED_MODELS / source.removeprefix(BUNDLED_PREFIX))
    return source


def _input_size_and_norm(spec: ModelSpec, config) -> tuple[int, list[float], list[float]]:
    try:
        processor = AutoImageProcessor.from_pretrained(load_path(spec.source))
    except (OSError, ValueError):
        size = int(getattr(config, "image_size", 224))
        logger.warning(f"{spec.source}: no image processor found; using {size} px and mean/std 0.5")
        return size, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    # a processor that centre-crops feeds the model its crop (DeiT: resize to 256, crop 224)
    size = processor.crop_size if getattr(processor, "do_center_crop", False) and processor.crop_size else processor.size
    side = size.get("height") or size.get("shortest_edge")
    return int(side), list(processor.image_mean), list(processor.image_std)


def _load(spec: ModelSpec, labels: dict, **kwargs) -> nn.Module:
    """The model with a new head for the dataset's classes: pretrained weights (a head of another size is
    initialised anew by transformers; one of the same size, another task's, is initialised anew here) or, with
    `pretrained: false`, random weights from the config. Always float32 weights (transformers 5 would keep a
    checkpoint's bf16/fp16, and training would run in pure half precision; mixed precision is the recipe's)."""
    source, kwargs = load_path(spec.source), {"dtype": torch.float32, **kwargs}
    if not spec.pretrained:
        return AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(source, **labels), **kwargs)
    same_size = AutoConfig.from_pretrained(source).num_labels == labels["num_labels"]
    model = AutoModelForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True, **labels, **kwargs)
    head = getattr(model, "classifier", None)
    if same_size and isinstance(head, nn.Module):
        _initialise_anew(model, head)
    return model


def _initialise_anew(model: nn.Module, head: nn.Module) -> None:
    """Initialise `head` as transformers initialises a head that does not fit the checkpoint (the model's
    `_init_weights`), although its weights were loaded: they are marked as initialised, which it would skip."""
    for module in head.modules():
        for item in (module, *module.parameters(recurse=False), *module.buffers(recurse=False)):
            if getattr(item, "_is_hf_initialized", False):
                item._is_hf_initialized = False
        model._init_weights(module)


def _blocks(model: nn.Module) -> tuple[str, ...]:
    """The transformer layers (or CNN stages) of an HF model, input side first, as paths under `LogitsOnly`:
    the children of the backbone's largest `nn.ModuleList` by parameter count (ViT `layers` in transformers 5, CLIP
    `encoder.layers`, ResNet `encoder.stages`)."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)
             and not name.startswith("classifier")]
    if not lists:
        return ()
    name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return tuple(f"model.{name}.{i}" for i in range(len(blocks)))


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # what the hub accepts as a repo id; anything else is a path


def missing_source(spec: ModelSpec) -> str | None:
    """A local directory that is not there, or (offline) a hub id that is not in the local cache."""
    if spec.source.startswith(BUNDLED_PREFIX) or Path(load_path(spec.source)).expanduser().is_dir():
        return None
    if spec.source.startswith((".", "~")) or not HUB_ID.fullmatch(spec.source):
        return (f"model '{spec.name}': local directory {spec.source} not found; point `source:` at a folder made "
                f"with save_pretrained")
    if huggingface_hub.constants.HF_HUB_OFFLINE and not isinstance(
            huggingface_hub.try_to_load_from_cache(spec.source, "config.json"), str):
        return (f"model '{spec.name}': {spec.source} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it once online, or point `source:` at a local save_pretrained folder")
    return None


@register_family("hf", check=missing_source)
def build_hf(spec: ModelSpec, class_names: list[str], data_channels: int) -> BuiltModel:
    labels = {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: i for i, name in enumerate(class_names)},
    }
    try:
        model = _load(spec, labels, attn_implementation="sdpa")
    except ValueError:  # an architecture without SDPA support: its default attention
        model = _load(spec, labels)
    except OSError as err:
        raise _unreachable(spec, err) from err
    input_size, mean, std = _input_size_and_norm(spec, model.config)
    forward_kwargs = {}
    if spec.input_size is not None and spec.input_size != input_size:
        if getattr(model.config, "model_type", "") not in ("vit", "deit"):
            raise UserError(f"model '{spec.name}': input_size {spec.input_size} differs from the model's "
                            f"{input_size} px; only ViTs can interpolate their position embeddings, drop input_size")
        input_size, forward_kwargs = spec.input_size, {"interpolate_pos_encoding": True}
    return BuiltModel(
        module=LogitsOnly(model, **forward_kwargs),
        head="model.classifier" if isinstance(getattr(model, "classifier", None), nn.Module) else "",
        blocks=_blocks(model),
        resize=spec.resize,
        input_size=input_size,
        mean=mean,
        std=std,
        in_channels=int(getattr(model.config, "num_channels", 3)),
        family="hf",
        upsample=spec.upsample,
    )


for _name, _source, _pretrained, _about in (
    ("vit_b16", "google/vit-base-patch16-224", True, "ViT-B/16 (ImageNet-21k + 1k), fine-tuned"),
    ("vit_b16_in21k", "google/vit-base-patch16-224-in21k", True, "ViT-B/16 (ImageNet-21k), fine-tuned"),
    ("vit_l16", "google/vit-large-patch16-224", True, "ViT-L/16 (ImageNet-21k + 1k), fine-tuned"),
    ("vit_tiny", BUNDLED_PREFIX + "vit-tiny", False, "2-layer ViT config shipped for offline smoke runs"),
    ("dino_vitb16", "facebook/dino-vitb16", True, "DINO ViT-B/16 (self-supervised, ImageNet-1k), new head"),
    ("clip_vitb16", "openai/clip-vit-base-patch16", True, "CLIP ViT-B/16 image tower (CLIPForImageClassification: "
     "mean of patch tokens), new head"),
    ("resnet18_in1k", "microsoft/resnet-18", True, "ResNet-18 (ImageNet-1k, HF port), new head"),
):
    register_model(ModelSpec(_name, "hf", _source, _pretrained, description=_about))
