"""MedMNIST v2 ResNet baselines (Yang et al., Sci Data 2023), from torchvision, trained from scratch.

For 28-px input the stem is a 3×3 stride-1 convolution with no max-pool (so the 28-px image is not
shrunk to 7 px before the first block); larger inputs keep the standard 7×7 stride-2 stem and max-pool.
The first convolution takes the dataset's own channels (1 for grayscale sets) unless the spec asks for 3
(grayscale replicated, as medmnist's `as_rgb`; the 224-px presets do, keeping torchvision's own stem as the
reference code does, and enlarge 28-px images nearest-neighbour as it does), and images are normalised with
mean 0.5 / std 0.5 as in the paper.

The `_ref` presets follow the MedMNIST reference code (github.com/MedMNIST/experiments, run with `--as_rgb` for
grayscale sets as its maintainers state): 3 input channels and PyTorch's default layer init. The architecture
is the same as torchvision's with the 28-px stem; only the starting weights and the input channels differ.
(With torchvision's init every convolution is Kaiming-normal except a replaced stem, a fresh layer that starts
from PyTorch's default.)
"""

from __future__ import annotations

import torchvision
from torch import nn

from benchmark.errors import UserError
from benchmark.models.registry import BuiltModel, ModelSpec, register_family, register_model

SMALL_STEM_MAX_SIZE = 32


def _input_channels(spec: ModelSpec, data_channels: int) -> int:
    channels = spec.in_channels or data_channels
    if channels < data_channels:
        raise UserError(f"model '{spec.name}': in_channels {channels} cannot take {data_channels}-channel images; "
                        "use in_channels: 3 or leave it out")
    return channels


@register_family("resnet")
def build_resnet(spec: ModelSpec, class_names: list[str], data_channels: int) -> BuiltModel:
    if spec.pretrained:
        raise UserError(
            f"model '{spec.name}': the MedMNIST v2 ResNets train from scratch; set `pretrained: false`, "
            "or use a Hugging Face id such as microsoft/resnet-18 for ImageNet weights"
        )
    channels = _input_channels(spec, data_channels)
    net = getattr(torchvision.models, spec.source)(weights=None, num_classes=len(class_names))
    if spec.input_size <= SMALL_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if spec.init == "pytorch_default":
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                module.reset_parameters()
    return BuiltModel(
        module=net,
        input_size=spec.input_size,
        mean=[0.5] * channels,
        std=[0.5] * channels,
        in_channels=channels,
        family="resnet",
        upsample=spec.upsample,
        resize=spec.resize,
        head="fc",
        blocks=("layer1", "layer2", "layer3", "layer4"),
    )


for _arch in ("resnet18", "resnet50"):
    register_model(
        ModelSpec(
            name=f"{_arch}_28",
            family="resnet",
            source=_arch,
            pretrained=False,
            input_size=28,
            description=f"MedMNIST v2 baseline: {_arch} from scratch at 28 px",
        )
    )
    register_model(  # the reference enlarges 28-px images nearest-neighbour and feeds them as RGB
        ModelSpec(
            name=f"{_arch}_224",
            family="resnet",
            source=_arch,
            pretrained=False,
            input_size=224,
            upsample="nearest",
            in_channels=3,
            description=f"MedMNIST v2 baseline: {_arch} from scratch at 224 px (RGB, nearest-neighbour upsampling)",
        )
    )
    register_model(
        ModelSpec(
            name=f"{_arch}_28_ref",
            family="resnet",
            source=_arch,
            pretrained=False,
            input_size=28,
            in_channels=3,
            init="pytorch_default",
            description=f"{_arch} at 28 px as the MedMNIST reference code: grayscale as RGB, PyTorch default init",
        )
    )
