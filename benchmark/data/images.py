"""Decoding image files and bringing any image to a dataset's stored format (size x size, 1 or 3 channels, uint8).

One conversion for every image that enters from outside an npz file: the breast-ultrasound loader and
`benchmark.use` (predict, explain, serve) both call `stored_pixels`. 8-bit images are converted with PIL
(`convert("L")` uses the ITU-R 601 luma weights; RGBA and LA drop their alpha channel; palettes are expanded);
16-bit grayscale (PIL modes ``I;16*`` and ``I``, e.g. 16-bit PNG or TIFF) is scaled to 8 bits over the full
16-bit range instead of being clipped at 255 as PIL's own conversion would. Then a bilinear resize straight to
size x size (PIL's, antialiased when shrinking; aspect ratio is not kept, as the datasets' own files).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchmark.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a file or in-memory bytes fully; anything unreadable raises a one-line UserError naming it."""
    name = name or str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            return image
    except UnidentifiedImageError as error:
        raise UserError(f"{name}: cannot read the image (not an image format PIL knows); replace or remove the file") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"{name}: cannot read the image ({reason}); replace or remove the file") from error


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8-bit "L" (v / 257, rounded); any other mode is returned as is."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def stored_pixels(image: Image.Image, size: int, channels: int, name: str = "image") -> np.ndarray:
    """`image` as a dataset stores it: uint8 (size, size, channels), channels 1 (luma) or 3 (RGB). A mode PIL
    cannot convert (e.g. LAB to luma) raises a one-line UserError naming `name`."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        converted = eight_bit(image).convert("L" if channels == 1 else "RGB")
    except ValueError as error:
        raise UserError(f"{name}: PIL cannot convert the image's mode {image.mode} to "
                        f"{'grayscale' if channels == 1 else 'RGB'}; save it as a grayscale or RGB image") from error
    if converted.size != (size, size):
        converted = converted.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[..., np.newaxis] if channels == 1 else pixels
