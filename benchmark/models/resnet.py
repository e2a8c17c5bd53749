"""MedMNIST v2 ResNet baselines (Yang et al., Sci Data 2023), from torchvision, trained from scratch.

For 28-px input the stem is a 3×3 stride-1 convolution with no max-pool (so the 28-px image is not
shrunk to 7 px before the first block); larger inputs keep the standard 7×7 stride-2 stem and max-pool.
The first convolution takes the dataset's own channels (1 for grayscale sets), and images are normalised
with mean 0.5 / std 0.5 as in the paper.
"""

from __future__ import annotations

import torchvision
from torch import nn

from benchmark.errors import UserError
from benchmark.models.registry import BuiltModel, ModelSpec, register_family, register_model

SMALL_STEM_MAX_SIZE = 32


@register_family("resnet")
def build_resnet(spec: ModelSpec, class_names: list[str], data_channels: int) -> BuiltModel:
    if spec.pretrained:
        raise UserError(
            f"model '{spec.name}': the MedMNIST v2 ResNets train from scratch; set `pretrained: false`, "
            "or use a Hugging Face id such as microsoft/resnet-18 for ImageNet weights"
        )
    net = getattr(torchvision.models, spec.source)(weights=None, num_classes=len(class_names))
    if spec.input_size <= SMALL_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(data_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif data_channels != 3:
        net.conv1 = nn.Conv2d(data_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return BuiltModel(
        module=net,
        input_size=spec.input_size,
        mean=[0.5] * data_channels,
        std=[0.5] * data_channels,
        in_channels=data_channels,
        family="resnet",
    )


for _arch in ("resnet18", "resnet50"):
    for _size in (28, 224):
        register_model(
            ModelSpec(
                name=f"{_arch}_{_size}",
                family="resnet",
                source=_arch,
                pretrained=False,
                input_size=_size,
                description=f"MedMNIST v2 baseline: {_arch} from scratch at {_size} px",
            )
        )
