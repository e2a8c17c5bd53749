"""BatchTransform: parity with the tutorials' per-sample PIL pipeline, geometry, colour, randomness."""

import dataclasses

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from benchmark.data import transforms
from benchmark.data.transforms import NONE_TOLERANCE, AugmentParams, BatchTransform, _jitter, reference_transform
from benchmark.errors import UserError
from benchmark.models import build_model, resolve_model

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5], [0.5])


def noise(n, channels, size, seed=0):
    """uint8 (N, C, H, W) uniform noise: the hardest case for resampling parity."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def pil_reference(images, size, mean, std, in_channels, upsample="bilinear"):
    """The per-sample torchvision pipeline applied to each image as PIL, stacked."""
    ref = reference_transform(size, mean, std, in_channels, upsample=upsample)
    hwc = images.permute(0, 2, 3, 1).numpy()
    return torch.stack([ref(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)) for im in hwc])


def unnormalise(x, mean, std):
    """Back to pixel units in [0, 1]."""
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


@pytest.mark.parametrize(
    "src, size, channels, in_channels, norm, tolerance",
    [
        (28, 224, 3, 3, IMAGENET, NONE_TOLERANCE),  # upscale
        (28, 28, 3, 3, IMAGENET, 1e-6),  # same size: no resampling at all
        (224, 64, 3, 3, IMAGENET, NONE_TOLERANCE),  # antialiased downscale
        (28, 224, 1, 3, IMAGENET, NONE_TOLERANCE),  # grayscale repeated to 3 channels
        (64, 28, 1, 1, HALF, NONE_TOLERANCE),
        (28, 64, 3, 1, HALF, NONE_TOLERANCE + 0.5 / 255),  # PIL also rounds its luminance image to uint8
    ],
)
def test_none_matches_pil_reference(src, size, channels, in_channels, norm, tolerance):
    images = noise(4, channels, src)
    ours = BatchTransform(size, *norm, in_channels)(images)
    ref = pil_reference(images, size, *norm, in_channels)
    assert ours.shape == ref.shape == (4, in_channels, size, size)
    diff = (unnormalise(ours, *norm) - unnormalise(ref, *norm)).abs()
    assert diff.max() <= tolerance
    assert diff.mean() <= 0.4 / 255  # no systematic offset: PIL's uint8 rounding alone averages ~0.3/255


@pytest.mark.parametrize("src, size, channels, in_channels", [(28, 224, 1, 3), (28, 64, 3, 3), (20, 56, 1, 1)])
def test_nearest_upsampling_matches_pil_nearest(src, size, channels, in_channels):
    """The ResNets' `upsample="nearest"` (the MedMNIST reference's 28 -> 224 resize) is PIL's NEAREST exactly,
    integer and non-integer factors alike; bilinear output differs from it."""
    images = noise(4, channels, src)
    ours = BatchTransform(size, *HALF, in_channels, upsample="nearest")(images)
    ref = pil_reference(images, size, *HALF, in_channels, upsample="nearest")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (BatchTransform(size, *HALF, in_channels)(images) - ref).abs().max() > 0.1


@pytest.mark.parametrize("src, size, channels, in_channels", [(28, 224, 1, 3), (28, 64, 3, 3), (27, 32, 1, 1),
                                                            (64, 28, 3, 3)])
def test_pad_matches_medmnist_plus_pad_after_normalise(src, size, channels, in_channels):
    """`resize="pad"`: MedMNIST+'s ToTensor, Normalize, Pad — the image unresized in the centre, the border 0 in
    normalised units (the channel mean, not black); an odd margin's extra pixel right/bottom; larger images shrink."""
    images = noise(4, channels, src)
    norm = IMAGENET if in_channels == 3 else HALF
    ours = BatchTransform(size, *norm, in_channels, resize="pad")(images)
    ref = torch.stack([reference_transform(size, *norm, in_channels, resize="pad")(
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)) for im in images.permute(0, 2, 3, 1).numpy()])
    tolerance = 1e-6 if src <= size else NONE_TOLERANCE / min(norm[1])
    torch.testing.assert_close(ours, ref, rtol=0, atol=tolerance)
    if src < size:
        top = (size - src) // 2
        assert top > 0 and (ours[..., :top, :] == 0).all() and (ours[..., :, :top] == 0).all()
        assert (ours[..., top + src:, :] == 0).all() and (ours[..., :, top + src:] == 0).all()
        centre = BatchTransform(src, *norm, in_channels)(images)
        torch.testing.assert_close(ours[..., top:top + src, top:top + src], centre, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="resize: pad works with augment: none only"):
        BatchTransform(size, *norm, in_channels, "tutorial", resize="pad")


def test_resnets_upsample_nearest_and_shrink_antialiased():
    built = build_model(resolve_model("resnet18_224"), ["a", "b"], data_channels=1)
    transform = BatchTransform.for_model(built)
    assert (transform.upsample, transform.in_channels, transform.input_size) == ("nearest", 3, 224)
    images = noise(2, 1, 28)
    torch.testing.assert_close(transform(images), pil_reference(images, 224, *HALF, 3, upsample="nearest"),
                               rtol=0, atol=1e-6)
    big = noise(2, 1, 224)  # shrinking a 224-px image for a 28-px ResNet stays antialiased bilinear
    small = BatchTransform.for_model(build_model(resolve_model("resnet18_28"), ["a", "b"], data_channels=1))(big)
    torch.testing.assert_close(small, BatchTransform(28, *HALF, 1)(big))


@pytest.mark.parametrize("augment", ["none", "tutorial"])
def test_shape_dtype_and_autocast(augment):
    transform = BatchTransform(32, *IMAGENET, 3, augment)
    images = noise(3, 1, 28)
    plain = transform(images, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = transform(images, torch.Generator().manual_seed(1))
    assert plain.shape == (3, 3, 32, 32) and plain.dtype == mixed.dtype == torch.float32
    assert plain.device == images.device
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


@pytest.mark.parametrize("augment", ["none", "tutorial"])
@pytest.mark.parametrize("channels, in_channels", [(1, 3), (3, 3), (3, 1)])
def test_cpu_chunks_give_the_whole_batch_result(monkeypatch, augment, channels, in_channels):
    n = 2 * transforms.CPU_CHUNK + 3  # a partial last chunk
    norm = IMAGENET if in_channels == 3 else HALF
    transform, images = BatchTransform(224, *norm, in_channels, augment), noise(n, channels, 28)
    chunked = transform(images, torch.Generator().manual_seed(5))
    monkeypatch.setattr(transforms, "CPU_CHUNK", n)
    whole = transform(images, torch.Generator().manual_seed(5))
    assert chunked.shape == (n, in_channels, 224, 224) and torch.equal(chunked, whole)


def test_tutorial_is_random_per_sample():
    images = noise(1, 3, 28).expand(6, -1, -1, -1)
    out = BatchTransform(28, *IMAGENET, 3, "tutorial")(images, torch.Generator().manual_seed(0))
    for i in range(6):
        for j in range(i):
            assert not torch.allclose(out[i], out[j])


def test_tutorial_is_reproducible_from_its_generator_alone():
    transform, images = BatchTransform(40, *IMAGENET, 3, "tutorial"), noise(5, 3, 28)
    global_state = torch.get_rng_state()
    first = transform(images, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(first, transform(images, torch.Generator().manual_seed(7)))
    assert not torch.allclose(first, transform(images, torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("channels, in_channels", [(3, 3), (1, 3), (1, 1)])
def test_tutorial_stays_in_pixel_range(channels, in_channels):
    mean, std = IMAGENET if in_channels == 3 else HALF
    out = BatchTransform(48, mean, std, in_channels, "tutorial")(noise(16, channels, 28), torch.Generator().manual_seed(0))
    pixels = unnormalise(out, mean, std)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    if channels == 1 and in_channels == 3:  # grayscale stays gray: the three channels are one image
        torch.testing.assert_close(pixels[:, 1:], pixels[:, :1].expand(-1, 2, -1, -1))


@pytest.mark.parametrize("src, size", [(28, 56), (28, 28), (224, 64)])
def test_neutral_draw_equals_plain_resize(src, size):
    images = noise(3, 3, src)
    resized = BatchTransform(size, *HALF, 3)(images)
    torch.testing.assert_close(BatchTransform(size, *HALF, 3, "tutorial").apply(images, AugmentParams.identity(3)), resized)


def test_flip_mirrors_left_right():
    images = noise(3, 3, 28)
    params = dataclasses.replace(AugmentParams.identity(3), flip=torch.tensor([-1.0, 1.0, -1.0]))
    out = BatchTransform(56, *HALF, 3, "tutorial").apply(images, params)
    resized = BatchTransform(56, *HALF, 3)(images)
    torch.testing.assert_close(out, torch.stack([resized[0].flip(-1), resized[1], resized[2].flip(-1)]))


def test_rotation_is_counter_clockwise_like_torchvision():
    images = noise(2, 3, 56)  # at the output size, so both sides interpolate once
    transform, pixels = BatchTransform(56, *HALF, 3, "tutorial"), images.float() / 255
    quarter = dataclasses.replace(AugmentParams.identity(2), degrees=torch.full((2,), 90.0))
    torch.testing.assert_close(unnormalise(transform.apply(images, quarter), *HALF), torch.rot90(pixels, 1, (-2, -1)))
    eighth = unnormalise(transform.apply(images, dataclasses.replace(quarter, degrees=torch.full((2,), 45.0))), *HALF)
    reference = TF.rotate(pixels, 45.0, TF.InterpolationMode.BILINEAR)
    interior = TF.rotate(torch.ones_like(pixels), 45.0, TF.InterpolationMode.BILINEAR) > 1 - 1e-6
    torch.testing.assert_close(eighth[interior], reference[interior])
    assert torch.all(eighth[..., :3, :3] == 0) and torch.all(eighth[..., -3:, -3:] == 0)  # corners black


def test_crop_matches_torchvision_resized_crop():
    images = noise(2, 3, 28)
    top_left = dataclasses.replace(AugmentParams.identity(2), centre=torch.full((2, 2), -0.5),
                                   extent=torch.full((2, 2), 0.5))
    out = unnormalise(BatchTransform(56, *HALF, 3, "tutorial").apply(images, top_left), *HALF)
    reference = TF.resized_crop(images.float() / 255, 0, 0, 14, 14, [56, 56], antialias=True)
    # The crop is continuous: its last output pixels also see the source pixel just past the box.
    torch.testing.assert_close(out[..., :-2, :-2], reference[..., :-2, :-2])


def test_sampled_draws_follow_the_recipe():
    n = 4000
    p = AugmentParams.sample(n, 28, 42, torch.Generator().manual_seed(0))
    area, aspect = p.extent.prod(1), p.extent[:, 0] * 42 / (p.extent[:, 1] * 28)
    assert area.min() >= 0.8 - 1e-6 and area.max() <= 1 + 1e-6
    assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
    assert torch.all(p.centre.abs() + p.extent <= 1 + 1e-6)  # the box lies inside the image
    assert p.centre.abs().max() > 0.05  # and moves around
    assert 0.45 < (p.flip < 0).float().mean() < 0.55 and set(p.flip.tolist()) == {-1.0, 1.0}
    assert p.degrees.abs().max() <= 10 and p.degrees.min() < -9 and p.degrees.max() > 9
    low, high = torch.tensor([0.8, 0.8, 0.8, -0.1]), torch.tensor([1.2, 1.2, 1.2, 0.1])
    assert torch.all((p.colour >= low) & (p.colour <= high))
    assert torch.all(p.colour.min(0).values < low + 0.01) and torch.all(p.colour.max(0).values > high - 0.01)


def test_crop_falls_back_like_torchvision_when_no_draw_fits():
    p = AugmentParams.sample(50, 10, 100, torch.Generator().manual_seed(0))  # far wider than 4/3: nothing fits
    torch.testing.assert_close(p.extent, torch.tensor([[4 / 3 / 10, 1.0]]).expand(50, -1))


@pytest.mark.parametrize("channels", [3, 1])
def test_colour_jitter_matches_torchvision(channels):
    x = torch.rand(4, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    colour = torch.tensor([[1.2, 0.8, 1.15, 0.07], [0.8, 1.2, 0.85, -0.1], [1.0, 1.0, 1.0, 0.0], [0.9, 1.1, 1.2, 0.1]])
    expected = []
    for image, (brightness, contrast, saturation, hue) in zip(x, colour.tolist()):
        image = TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)
        if channels == 3:
            image = TF.adjust_hue(TF.adjust_saturation(image, saturation), hue)
        expected.append(image)
    # atol: torchvision weighs red 0.2989, we use PIL's 0.299.
    torch.testing.assert_close(_jitter(x, colour), torch.stack(expected), rtol=0, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(UserError, match="augment"):
        BatchTransform(28, *HALF, 3, "autoaugment")
    with pytest.raises(UserError, match="unknown upsample 'bicubic'"):
        BatchTransform(28, *HALF, 3, upsample="bicubic")
    with pytest.raises(UserError, match="channels"):
        BatchTransform(28, *HALF, 4)
    with pytest.raises(UserError, match="mean/std"):
        BatchTransform(28, [0.5, 0.5], [0.5, 0.5], 3)
    with pytest.raises(ValueError, match="uint8"):
        BatchTransform(28, *HALF, 3)(torch.zeros(1, 3, 28, 28))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_seed():
    transform, images = BatchTransform(64, *IMAGENET, 3, "tutorial"), noise(8, 3, 28)
    cpu = transform(images, torch.Generator().manual_seed(3))
    cuda = transform(images.cuda(), torch.Generator().manual_seed(3))
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-3)
