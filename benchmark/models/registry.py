"""One registry for every model family.

A `ModelSpec` says what to build (family, source, pretrained or not, input size); a family builder turns it
into a `BuiltModel` sized for a dataset. Named presets (`resnet18_28`, `vit_b16`, …) are `ModelSpec`s
registered with `register_model`; a suite may also name any Hugging Face id or local directory.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from benchmark.errors import UserError

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "bundled" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """What to build. `source` is a torchvision arch for ResNets, a hub id or directory for HF models."""

    name: str
    family: str  # "resnet" | "hf"
    source: str
    pretrained: bool
    input_size: int | None = None  # ResNets: fixed by the preset; HF: None = from the image processor
    description: str = ""
    # How images smaller than the input are enlarged: "bilinear", or "nearest" (pixel replication, as the
    # MedMNIST reference code feeds its 224-px ResNets). Shrinking is always antialiased bilinear.
    upsample: str = "bilinear"
    # ResNets only. in_channels: None = the dataset's own (1 or 3); 3 = grayscale replicated (medmnist's as_rgb).
    # init: "torchvision" (its Kaiming-normal convolutions) or "pytorch_default" (each layer's own default, as
    # the MedMNIST reference ResNet, which is not torchvision's, starts from).
    in_channels: int | None = None
    init: str = "torchvision"


@dataclass
class BuiltModel:
    module: torch.nn.Module  # forward(pixel_values) -> logits (N, n_classes)
    input_size: int
    mean: list[float]
    std: list[float]
    in_channels: int
    family: str
    upsample: str = "bilinear"  # ModelSpec.upsample
    n_params: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_params = sum(p.numel() for p in self.module.parameters())


FamilyBuilder = Callable[[ModelSpec, list[str], int], BuiltModel]
_FAMILIES: dict[str, FamilyBuilder] = {}
_CHECKS: dict[str, Callable[[ModelSpec], str | None]] = {}
_PRESETS: dict[str, ModelSpec] = {}


def register_family(name: str, check: Callable[[ModelSpec], str | None] | None = None
                    ) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Register `builder(spec, class_names, data_channels) -> BuiltModel`; `check(spec)` (optional) names what is
    missing to build `spec` (a local directory, a hub id not in the offline cache) without building it."""

    def decorator(builder: FamilyBuilder) -> FamilyBuilder:
        _FAMILIES[name] = builder
        if check is not None:
            _CHECKS[name] = check
        return builder

    return decorator


def missing_model(spec: ModelSpec) -> str | None:
    """What is missing for building `spec` (one line naming the fix), or None."""
    check = _CHECKS.get(spec.family)
    return check(spec) if check else None


def register_model(spec: ModelSpec) -> ModelSpec:
    _PRESETS[spec.name] = spec
    return spec


def list_models() -> dict[str, ModelSpec]:
    return dict(sorted(_PRESETS.items()))


def resolve_model(name: str, **overrides) -> ModelSpec:
    """A preset by name (with field overrides), or a new HF spec when `source` is given."""
    if name in _PRESETS:
        return replace(_PRESETS[name], **overrides)
    if "source" in overrides:
        fields = {"family": "hf", "pretrained": True, **overrides}
        if fields["family"] not in _FAMILIES:
            raise UserError(f"model '{name}': unknown family '{fields['family']}'; use one of {sorted(_FAMILIES)}")
        return ModelSpec(name=name, **fields)
    close = difflib.get_close_matches(name, _PRESETS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(
        f"unknown model '{name}'; {hint}use a preset from `python -m benchmark list` "
        "or give `source:` (a Hugging Face id or a local model directory)"
    )


def build_model(spec: ModelSpec, class_names: list[str], data_channels: int) -> BuiltModel:
    """Build `spec` with a head for `class_names`; `data_channels` is what the dataset stores (1 or 3)."""
    return _FAMILIES[spec.family](spec, class_names, data_channels)


# Importing the family modules registers them and their presets.
from benchmark.models import hf, resnet  # noqa: E402,F401
