"""Batched, on-device image transforms: uint8 NCHW -> normalised float32 NCHW at the model's input size.

`BatchTransform` replaces the tutorials' per-sample PIL pipeline (`reference_transform`) with a few
whole-batch tensor ops on the batch's own device (on CPU, in chunks of ``CPU_CHUNK`` images, with the
same output):

- ``augment="none"``: bilinear resize (antialiased when downscaling, skipped at the same size), then
  ``(x/255 - mean) / std``. Matches the PIL reference within ``NONE_TOLERANCE`` pixel units. With
  ``upsample="nearest"`` images smaller than the input are enlarged by pixel replication instead (PIL's
  NEAREST, as the MedMNIST reference code feeds its 224-px ResNets); shrinking stays antialiased bilinear.
- ``resize="pad"`` (MedMNIST+): images smaller than the input are not enlarged but normalised at their own
  size and then zero-padded in the centre (an odd margin puts the extra pixel right/bottom). The pad comes
  after the normalisation, as in MedMNIST+'s ``Compose([ToTensor(), Normalize(...), Pad(...)])``, so the
  border is 0 in normalised units: each channel's mean, not black. Larger images are shrunk as above.
  Only with ``augment="none"``.
- ``augment="tutorial"``: the tutorials' RandomResizedCrop(scale=(0.8, 1), ratio=(3/4, 4/3)),
  RandomHorizontalFlip, RandomRotation(10) and ColorJitter(0.2, 0.2, 0.2, 0.1), drawn per sample.
  Crop, flip and rotation are folded into one sampling grid, so each image is interpolated once
  (bilinear); pixels the rotation brings in from outside the crop are black, as in the reference.
  The colour jitter is pointwise, so it runs first, on the source pixels (28 px: 64x fewer than 224).

Deliberate differences from the per-sample reference, all of them small:
crop boxes are continuous rather than whole pixels; the rotation is bilinear, not nearest; the colour
jitter runs before the resample (so the contrast mean is over the whole source image and the rotation's
black corners stay black) in the fixed order brightness, contrast, saturation, hue (torchvision
shuffles it per image); and images larger than ``input_size`` are first shrunk to it (antialiased), so
the crop is never downsampled without antialiasing (at most ~1.3x upsampling blur instead).

Channels: grayscale sources are broadcast to 3 channels when the model wants 3; RGB sources are
converted to luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``) when the
model wants 1. The maths runs in float32 with autocast switched off. Random draws come from a CPU
``torch.Generator`` and reach the device in one copy per batch, so a seed gives the same
augmentation on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

if TYPE_CHECKING:
    from benchmark.models import BuiltModel

from benchmark.errors import UserError

AUGMENTS = ("none", "tutorial")
UPSAMPLES = ("bilinear", "nearest")
RESIZES = ("interpolate", "pad")

# The tutorials' recipe, in torchvision's terms.
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10  # RandomResizedCrop's draws before it falls back to a centre crop
FLIP_P = 0.5
MAX_DEGREES = 10.0
BRIGHTNESS = CONTRAST = SATURATION = 0.2
HUE = 0.1

LUMA = (0.299, 0.587, 0.114)
# Max |ours - PIL reference| for augment="none", in pixel units (x/255, before normalisation; divide by
# std for normalised units). We resample in float32; PIL resizes in two separable passes and rounds to
# uint8 after each (<= 0.5/255 each) with fixed-point weights: measured worst case 1.002/255 on noise.
# PIL's RGB -> L conversion rounds once more (+0.5/255).
NONE_TOLERANCE = 1.05 / 255
# Images per pass on CPU: a chunk's float32 intermediates at 224 px stay in cache (measured ~1.8x at batch 32).
CPU_CHUNK = 8


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample draws of the tutorial recipe; CPU float32 tensors with one row per image.

    Coordinates are normalised source coordinates (``[-1, 1]`` across each side, as in `grid_sample`).
    """

    centre: torch.Tensor  # (N, 2) crop centre x, y
    extent: torch.Tensor  # (N, 2) crop half-width, half-height (1 = the whole side)
    flip: torch.Tensor  # (N,) -1 where mirrored left-right, else 1
    degrees: torch.Tensor  # (N,) rotation, counter-clockwise
    colour: torch.Tensor  # (N, 4) brightness, contrast, saturation factors; hue shift in turns

    @classmethod
    def sample(cls, n: int, height: int, width: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the recipe for `n` images of `height` x `width` (generator None: torch's default CPU one)."""
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("augmentation draws need a CPU torch.Generator; got one on " + str(generator.device))

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.empty(*shape).uniform_(low, high, generator=generator)

        extent = _crop_extent(uniform(*CROP_SCALE, n, CROP_TRIES), uniform(*map(math.log, CROP_RATIO), n, CROP_TRIES),
                              height, width)
        centre = uniform(-1.0, 1.0, n, 2) * (1 - extent)
        flip = torch.where(uniform(0.0, 1.0, n) < FLIP_P, -1.0, 1.0)
        degrees = uniform(-MAX_DEGREES, MAX_DEGREES, n)
        factors = [uniform(1 - j, 1 + j, n) for j in (BRIGHTNESS, CONTRAST, SATURATION)]
        colour = torch.stack([*factors, uniform(-HUE, HUE, n)], 1)
        return cls(centre, extent, flip, degrees, colour)

    @classmethod
    def identity(cls, n: int) -> AugmentParams:
        """Whole image, no flip, no rotation, colours unchanged (the recipe's neutral draw)."""
        return cls(torch.zeros(n, 2), torch.ones(n, 2), torch.ones(n), torch.zeros(n),
                   torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(n, 1))

    def packed(self) -> torch.Tensor:
        """(N, 10): cos, sin, x/y sampling scale (flip folded in), crop centre, colour — one device copy."""
        radians = torch.deg2rad(self.degrees)
        scale = self.extent * torch.stack([self.flip, torch.ones_like(self.flip)], 1)
        return torch.cat([torch.stack([radians.cos(), radians.sin()], 1), scale, self.centre, self.colour], 1)


def _crop_extent(scale: torch.Tensor, log_ratio: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """RandomResizedCrop's box size as half-extents (N, 2): the first of the tries that fits, else its fallback."""
    area, aspect = scale * height * width, log_ratio.exp()
    tries = torch.stack([(area * aspect).sqrt() / width, (area / aspect).sqrt() / height], -1)  # (N, tries, 2)
    fits = (tries <= 1).all(-1)
    first = fits.to(torch.uint8).argmax(1)
    chosen = tries[torch.arange(len(tries)), first]
    in_ratio = width / height
    low, high = CROP_RATIO
    fallback = torch.tensor([1.0, in_ratio / low] if in_ratio < low else [high / in_ratio, 1.0] if in_ratio > high
                            else [1.0, 1.0])
    return torch.where(fits.any(1, keepdim=True), chosen, fallback)


def _resize(x: torch.Tensor, height: int, width: int, upsample: str = "bilinear") -> torch.Tensor:
    """Bilinear resize, antialiased when downscaling (matches PIL); nearest-neighbour when enlarging with
    `upsample="nearest"` (matches PIL's NEAREST); a no-op at the same size."""
    if x.shape[-2:] == (height, width):
        return x
    if upsample == "nearest" and height >= x.shape[-2] and width >= x.shape[-1]:
        return F.interpolate(x, size=(height, width), mode="nearest-exact")
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def _warp(x: torch.Tensor, packed: torch.Tensor, size: int) -> torch.Tensor:
    """Crop, flip and rotate every image with one bilinear resample; black where the rotation leaves the crop."""
    cos, sin, scale_x, scale_y, centre_x, centre_y = packed[:, :6, None, None].unbind(1)  # each (N, 1, 1)
    axis = torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=x.device)  # output pixel centres
    across, down = axis.view(1, 1, size), axis.view(1, size, 1)
    u = cos * across - sin * down  # each output pixel's place in the unrotated crop, [-1, 1] inside it
    v = sin * across + cos * down
    grid = torch.stack([centre_x + scale_x * u, centre_y + scale_y * v], -1)
    inside = (torch.maximum(u.abs(), v.abs()) <= 1).unsqueeze(1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).mul_(inside)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance (N, 1, H, W) of RGB (N, 3, H, W); grayscale passes through."""
    if x.shape[1] == 1:
        return x
    return (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's blend: factor * x + (1 - factor) * other, clamped to [0, 1]."""
    return torch.lerp(other, x, factor).clamp_(0, 1)


def _shift_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images in [0, 1] by `turns` (N, 1, 1, 1), keeping saturation and value."""
    r, g, b = x.unbind(1)
    high, low = x.amax(1), x.amin(1)
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, 1.0)
    sixths = torch.where(high == r, (g - b) / safe, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    sixths = sixths.unsqueeze(1) + 6 * turns
    k = torch.remainder(x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + sixths, 6)
    return high.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


def _jitter(x: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-sample factors (N, 4) in the order brightness, contrast, saturation, hue."""
    brightness, contrast, saturation, hue = colour.view(-1, 4, 1, 1, 1).unbind(1)
    x = (x * brightness).clamp_(0, 1)
    x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), contrast)
    if x.shape[1] == 1:
        return x
    return _shift_hue(_blend(x, _gray(x), saturation), hue)


def _check_options(augment: str, upsample: str, resize: str = "interpolate") -> None:
    if augment not in AUGMENTS:
        raise UserError(f"unknown augment {augment!r}; use one of: {', '.join(AUGMENTS)}")
    if upsample not in UPSAMPLES:
        raise UserError(f"unknown upsample {upsample!r}; use one of: {', '.join(UPSAMPLES)}")
    if resize not in RESIZES:
        raise UserError(f"unknown resize {resize!r}; use one of: {', '.join(RESIZES)}")
    if resize == "pad" and augment != "none":
        raise UserError(f"resize: pad works with augment: none only (got augment: {augment}); set augment: none "
                        "in the recipe or drop resize: pad")


def pad_margins(side: int, size: int) -> tuple[int, int]:
    """(before, after) zero margins that centre `side` pixels in `size`; an odd margin's extra pixel goes after."""
    before = (size - side) // 2
    return before, size - side - before


class BatchTransform:
    """uint8 (N, C, H, W) on any device -> float32 (N, in_channels, S, S) normalised, on the same device."""

    def __init__(self, input_size: int, mean: Sequence[float], std: Sequence[float], in_channels: int,
                 augment: str = "none", upsample: str = "bilinear", resize: str = "interpolate"):
        _check_options(augment, upsample, resize)
        if in_channels not in (1, 3):
            raise UserError(f"models with {in_channels} input channels are not supported; use a 1- or 3-channel model")
        if len(mean) not in (1, in_channels) or len(std) != len(mean):
            raise UserError(f"mean/std need 1 or {in_channels} values each; got {len(mean)} and {len(std)}")
        self.input_size, self.in_channels, self.augment, self.upsample = input_size, in_channels, augment, upsample
        self.resize = resize
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        std_t = torch.tensor(std, dtype=torch.float32).expand(in_channels)
        self._scale = (1 / std_t).view(1, -1, 1, 1)
        self._shift = (-torch.tensor(mean, dtype=torch.float32).expand(in_channels) / std_t).view(1, -1, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_model(cls, built: BuiltModel, augment: str = "none") -> BatchTransform:
        """The transform that feeds `built`: its input size, normalisation, channels and upsampling."""
        return cls(built.input_size, built.mean, built.std, built.in_channels, augment, built.upsample, built.resize)

    def settings(self) -> dict:
        """Everything that decides this transform's output (the embedding cache keys on it)."""
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "in_channels": self.in_channels, "augment": self.augment, "upsample": self.upsample,
                "resize": self.resize}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform a batch; "tutorial" draws its per-sample randomness from `generator` (a CPU one)."""
        params = None
        if self.augment == "tutorial":
            params = AugmentParams.sample(images.shape[0], images.shape[-2], images.shape[-1], generator)
        return self.apply(images, params)

    def apply(self, images: torch.Tensor, params: AugmentParams | None) -> torch.Tensor:
        """Transform with explicit draws: None resizes deterministically, otherwise the tutorial recipe.

        On CPU the batch goes through in chunks of `CPU_CHUNK` images; every step is per-image, so the
        output is bit-identical to one whole-batch pass.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 (N, C, H, W) with C in {{1, 3}}; got {images.dtype} {tuple(images.shape)}")
        n, size, device = images.shape[0], self.input_size, images.device
        packed = None if params is None else params.packed().to(device, non_blocking=True)
        out = torch.empty(n, self.in_channels, size, size, device=device)
        chunk = CPU_CHUNK if device.type == "cpu" else max(n, 1)
        with torch.autocast(device.type, enabled=False):
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                self._transform(images[part], None if packed is None else packed[part], out[part])
        return out

    def _transform(self, images: torch.Tensor, packed: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        """One pass over `images` (packed draws or None) written into `out`, in float32."""
        size = self.input_size
        x = images.float().div_(255)
        if self.in_channels == 1:
            x = _gray(x)
        scale, shift = self._normaliser(images.device)
        if self.resize == "pad":
            x = _resize(x, min(x.shape[-2], size), min(x.shape[-1], size))
            top, bottom = pad_margins(x.shape[-2], size)
            left, right = pad_margins(x.shape[-1], size)
            out.zero_()  # 0 after normalisation: the channel mean
            torch.addcmul(shift, x, scale, out=out[..., top:size - bottom, left:size - right])
            return out
        if packed is None:
            x = _resize(x, size, size, self.upsample)
        else:
            x = _resize(x, min(x.shape[-2], size), min(x.shape[-1], size))
            x = _warp(_jitter(x, packed[:, 6:]), packed, size)
        return torch.addcmul(shift, x, scale, out=out)  # broadcasting repeats grayscale to in_channels

    def _normaliser(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel 1/std and -mean/std on `device`, copied there once."""
        if device not in self._on_device:
            self._on_device[device] = (self._scale.to(device), self._shift.to(device))
        return self._on_device[device]


def _pil_resize(image: Image.Image, size: int, upsample: str) -> Image.Image:
    """torchvision's Resize to size x size: nearest when enlarging with upsample="nearest", else bilinear."""
    enlarging = image.width <= size and image.height <= size
    mode = T.InterpolationMode.NEAREST if upsample == "nearest" and enlarging else T.InterpolationMode.BILINEAR
    return T.functional.resize(image, [size, size], interpolation=mode)


def _shrink_to(image: Image.Image, size: int) -> Image.Image:
    """Only images larger than `size` are resized (bilinear, antialiased); smaller ones are padded later."""
    if image.width <= size and image.height <= size:
        return image
    return T.functional.resize(image, [min(image.height, size), min(image.width, size)],
                               interpolation=T.InterpolationMode.BILINEAR)


def _pil_pad(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """MedMNIST+'s Pad after Normalize: zeros around a (C, H, W) tensor smaller than size x size."""
    top, bottom = pad_margins(pixels.shape[-2], size)
    left, right = pad_margins(pixels.shape[-1], size)
    return F.pad(pixels, (left, right, top, bottom), value=0.0)


def reference_transform(input_size: int, mean: Sequence[float], std: Sequence[float], in_channels: int,
                        augment: str = "none", upsample: str = "bilinear", resize: str = "interpolate") -> T.Compose:
    """The tutorials' per-sample PIL pipeline for the same recipe (for parity tests and speed comparisons);
    `upsample="nearest"` resizes as the MedMNIST reference code does for its 224-px ResNets, `resize="pad"`
    pads as MedMNIST+ (ToTensor, Normalize, Pad)."""
    _check_options(augment, upsample, resize)
    to_mode = T.Lambda(partial(Image.Image.convert, mode="L" if in_channels == 1 else "RGB"))
    if resize == "pad":
        return T.Compose([to_mode, T.Lambda(partial(_shrink_to, size=input_size)), T.ToTensor(),
                          T.Normalize(mean, std), T.Lambda(partial(_pil_pad, size=input_size))])
    if augment == "none":
        steps = [T.Lambda(partial(_pil_resize, size=input_size, upsample=upsample))]
    else:
        steps = [T.RandomResizedCrop(input_size, scale=CROP_SCALE, ratio=CROP_RATIO), T.RandomHorizontalFlip(FLIP_P),
                 T.RandomRotation(MAX_DEGREES), T.ColorJitter(BRIGHTNESS, CONTRAST, SATURATION, HUE)]
    return T.Compose([to_mode, *steps, T.ToTensor(), T.Normalize(mean, std)])
