"""Decoding untrusted image bytes into RGB pictures, or refusing them with a reason.

Everything that reaches the model goes through `decode_image`; it is the only place that
touches Pillow's parsers, so its limits protect every entry point (API, CLI, Lambda).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a camera, phone or browser produces. The JPEG opener also reads MPO, the
# multi-picture JPEG some phones write.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_FORMAT_NAMES = ("JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF")
MIN_SIDE = 8

# Our own pixel limit is checked before decoding.
Image.MAX_IMAGE_PIXELS = None


class ImageRefused(ValueError):
    """The bytes are not an image we accept. `reason` is a short code, `str()` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """An RGB picture upright as its EXIF says; `width`/`height` are the full upright size
    (the picture itself may be smaller when decoded in draft mode)."""

    image: Image.Image
    width: int
    height: int
    format: str


def decode_image(
    data: bytes,
    *,
    max_bytes: int = 25 * 1024 * 1024,
    max_pixels: int = 50_000_000,
    draft_size: int | None = None,
) -> DecodedImage:
    """Decode `data` into an upright RGB image, refusing anything unsafe or unusable.

    `draft_size` lets decoding scale down while each side stays at least that large: a JPEG
    by powers of two as it decodes (a 24-megapixel photo decodes several times faster when
    the model needs 260 pixels), any other format right after, before its conversions, so
    that a small file declaring a huge picture does not cost gigabytes. The width and height
    returned are the original's.
    """
    if len(data) == 0:
        raise ImageRefused("empty", "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRefused("too_large", f"file is {len(data):,} bytes; the limit is {max_bytes:,}")
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (bad EXIF, ...): what matters is the result.
        warnings.simplefilter("ignore")
        return _decode(data, max_pixels, draft_size)


def _decode(data: bytes, max_pixels: int, draft_size: int | None) -> DecodedImage:
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRefused(
            "not_an_image",
            "not an image in a supported format (" + ", ".join(_FORMAT_NAMES) + ")",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRefused("corrupt", f"unreadable image header: {error}") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ImageRefused(
            "too_many_pixels",
            f"{width}x{height} is {width * height:,} pixels; the limit is {max_pixels:,}",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRefused(
            "too_small", f"{width}x{height} pixels: each side must be at least {MIN_SIDE}"
        )
    source_format = image.format or "unknown"
    try:
        if draft_size and source_format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # the first frame only, for animations
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRefused("corrupt", f"truncated or corrupt image data: {error}") from None

    decoded_size = image.size
    image = _upright(image)
    if image.size != decoded_size:  # rotated by a quarter turn: the full size turns too
        width, height = height, width
    rgb = _to_rgb(image, draft_size)
    return DecodedImage(image=rgb, width=width, height=height, format=source_format)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block costs the rotation, not the image."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _to_rgb(image: Image.Image, shorter_side: int | None) -> Image.Image:
    """8-bit RGB, transparent areas on white (as a browser shows them on a page), reduced
    early so that each side stays at least `shorter_side`."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = Image.fromarray(_high_depth_to_8bit(image))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode not in ("RGB", "L"):  # P, 1, CMYK, YCbCr, LAB, HSV
        image = image.convert("RGB")
    if shorter_side and min(image.size) >= 2 * shorter_side:
        image = image.reduce(min(image.size) // shorter_side)
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _high_depth_to_8bit(image: Image.Image) -> np.ndarray:
    """Scale 16-bit or float greyscale to 0..255 instead of clipping it to white, in integers
    where it can (a float copy of 50 megapixels is 400 MB)."""
    pixels = np.asarray(image)
    if image.mode == "F":
        finite = np.isfinite(pixels)
        if not finite.any():
            return np.zeros(pixels.shape, np.uint8)
        low, high = float(pixels[finite].min()), float(pixels[finite].max())
        pixels = np.nan_to_num(pixels, nan=low, posinf=high, neginf=low)
        scale = 255.0 / (high - low) if high > low else 0.0
        return np.clip((pixels - low) * scale, 0, 255).astype(np.uint8)
    if image.mode.startswith("I;16") or pixels.max() > 255:
        return (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(pixels, 0, 255).astype(np.uint8)
