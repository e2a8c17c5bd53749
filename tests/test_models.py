"""Model building for each family: tiny HF configs saved with save_pretrained and loaded back, ResNet stems."""

import pytest
import torch
from torch import nn
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from benchmark.errors import UserError
from benchmark.models import build_model, resolve_model

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A 2-layer ViT with random weights (two ImageNet-style labels) saved like a hub checkpoint."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=2)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.3, 0.4]).save_pretrained(tmp_path)
    return tmp_path


def test_pretrained_local_dir_keeps_backbone_and_resizes_head(tiny_vit_dir):
    saved = ViTForImageClassification.from_pretrained(tiny_vit_dir)
    built = build_model(resolve_model("mine", source=str(tiny_vit_dir)), CLASSES, data_channels=1)
    hf = built.module.model
    assert (built.family, built.input_size, built.in_channels) == ("hf", 32, 3)
    assert built.mean == pytest.approx([0.4, 0.5, 0.6]) and built.std == pytest.approx([0.2, 0.3, 0.4])
    assert hf.config.id2label == {0: "benign", 1: "malignant", 2: "normal"}
    assert hf.classifier.out_features == 3
    assert torch.equal(hf.vit.embeddings.patch_embeddings.projection.weight,
                       saved.vit.embeddings.patch_embeddings.projection.weight)
    assert hf.config._attn_implementation == "sdpa"
    assert built.module(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_a_checkpoint_head_of_the_datasets_size_is_initialised_anew(tiny_vit_dir):
    """A 2-label checkpoint (another task's head) fine-tuned on a 2-class dataset gets a new head, as a 1000-label
    one does: it kept the old head (and its label order) before, since transformers re-initialises only heads whose
    size differs."""
    saved = ViTForImageClassification.from_pretrained(tiny_vit_dir)
    torch.manual_seed(1)
    built = build_model(resolve_model("mine", source=str(tiny_vit_dir)), CLASSES[:2], data_channels=3)
    hf = built.module.model
    assert torch.equal(hf.vit.embeddings.patch_embeddings.projection.weight,
                       saved.vit.embeddings.patch_embeddings.projection.weight)  # the backbone is the checkpoint's
    assert not torch.equal(hf.classifier.weight, saved.classifier.weight)
    assert torch.count_nonzero(hf.classifier.bias) == 0  # transformers' head init: N(0, 0.02), bias 0
    assert hf.classifier.weight.std().item() == pytest.approx(hf.config.initializer_range, rel=0.5)
    torch.manual_seed(1)
    again = build_model(resolve_model("mine", source=str(tiny_vit_dir)), CLASSES[:2], data_channels=3)
    assert torch.equal(again.module.model.classifier.weight, hf.classifier.weight)  # seeded


def test_a_processor_that_centre_crops_gives_the_crop_as_input_size(tmp_path):
    """DeiT's processor resizes to 256 and crops 224: the model takes 224 (256 failed every forward pass)."""
    config = DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    DeiTForImageClassification(config).save_pretrained(tmp_path)
    DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    built = build_model(resolve_model("deit", source=str(tmp_path)), CLASSES, data_channels=3)
    assert built.input_size == 32 and built.module(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    bigger = build_model(resolve_model("deit", source=str(tmp_path), input_size=48), CLASSES, data_channels=3)
    assert bigger.input_size == 48 and bigger.module(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_from_config_has_random_weights(tiny_vit_dir):
    saved = ViTForImageClassification.from_pretrained(tiny_vit_dir)
    built = build_model(resolve_model("mine", source=str(tiny_vit_dir), pretrained=False), CLASSES, 3)
    assert not torch.equal(built.module.model.vit.embeddings.patch_embeddings.projection.weight,
                           saved.vit.embeddings.patch_embeddings.projection.weight)
    assert built.module(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_bundled_tiny_vit_preset_builds_offline():
    built = build_model(resolve_model("vit_tiny"), CLASSES, 1)
    assert built.input_size == 32 and built.n_params < 200_000


@pytest.mark.parametrize("name, kernel, stride, pooled, channels", [
    ("resnet18_28", 3, 1, False, 1), ("resnet18_224", 7, 2, True, 3), ("resnet50_28", 3, 1, False, 1)])
def test_medmnist_v2_resnet_stems(name, kernel, stride, pooled, channels):
    built = build_model(resolve_model(name), ["a", "b"], data_channels=1)
    net = built.module
    assert net.conv1.kernel_size == (kernel, kernel) and net.conv1.stride == (stride, stride)
    assert net.conv1.in_channels == built.in_channels == channels
    assert isinstance(net.maxpool, nn.MaxPool2d) is pooled
    assert built.mean == [0.5] * channels and built.std == [0.5] * channels
    size = built.input_size
    assert net(torch.zeros(2, channels, size, size)).shape == (2, 2)


def _convs(net):
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_reference_resnet_takes_grayscale_as_rgb_with_pytorch_default_init():
    """`_ref`: the MedMNIST reference build (3 input channels, each layer's default init); the plain preset keeps
    torchvision's Kaiming-normal (fan_out) convolutions except the replaced 28-px stem, which is a fresh layer
    with the default init. Same architecture, so the same parameter count up to the stem's input channels."""
    torch.manual_seed(0)
    ref = build_model(resolve_model("resnet18_28_ref"), ["a", "b"], data_channels=1)
    torch.manual_seed(0)
    plain = build_model(resolve_model("resnet18_28"), ["a", "b"], data_channels=1)
    assert (ref.in_channels, ref.module.conv1.in_channels, ref.mean, ref.std) == (3, 3, [0.5] * 3, [0.5] * 3)
    assert plain.in_channels == 1 and ref.n_params - plain.n_params == 2 * 64 * 9
    for conv in _convs(ref.module):  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        fan_in = conv.weight[0].numel()
        bound = fan_in ** -0.5
        assert conv.weight.abs().max() <= bound
        assert conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1)
    for conv in _convs(plain.module)[1:]:  # kaiming_normal(fan_out, relu): N(0, 2 / fan_out)
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert ref.module(torch.zeros(2, 3, 28, 28)).shape == (2, 2)


def test_resnet_in_channels_cannot_drop_image_channels():
    with pytest.raises(UserError, match="in_channels 1 cannot take 3-channel images"):
        build_model(resolve_model("resnet18_28", in_channels=1), ["a", "b"], data_channels=3)


def test_unreachable_hub_id_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load 'no-such-org/no-such-model'.*save_pretrained"):
        build_model(resolve_model("x", source="no-such-org/no-such-model"), CLASSES, 3)


def test_pretrained_resnet_preset_is_refused():
    with pytest.raises(UserError, match="train from scratch"):
        build_model(resolve_model("resnet18_28", pretrained=True), CLASSES, 1)


def test_vit_at_another_input_size_interpolates_position_embeddings(tiny_vit_dir):
    built = build_model(resolve_model("mine", source=str(tiny_vit_dir), input_size=48), CLASSES, 1)
    assert built.input_size == 48
    assert built.module(torch.zeros(2, 3, 48, 48)).shape == (2, 3)


@pytest.mark.parametrize("pretrained", [True, False])
def test_a_half_precision_checkpoint_is_built_in_float32(tiny_vit_dir, pretrained):
    """transformers 5 loads a checkpoint saved in bf16 as bf16 (and builds its config in bf16): the run would train
    in pure half precision. The recipe's mixed precision is the only half precision there is."""
    ViTForImageClassification.from_pretrained(tiny_vit_dir).to(torch.bfloat16).save_pretrained(tiny_vit_dir)
    built = build_model(resolve_model("mine", source=str(tiny_vit_dir), pretrained=pretrained), CLASSES, 3)
    assert {p.dtype for p in built.module.parameters()} == {torch.float32}
