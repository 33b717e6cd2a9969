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

    `draft_size` lets JPEG decoding scale down by powers of two while staying at least that
    large: a 24-megapixel photo decodes several times faster when the model needs 260 pixels.
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
    return DecodedImage(image=_to_rgb(image), width=width, height=height, format=source_format)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block costs the rotation, not the image."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_high_depth_to_8bit(image)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas become white, as a browser would show them on a page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_8bit(image: Image.Image) -> np.ndarray:
    """Scale 16-bit or float greyscale to 0..255 instead of clipping it to white."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return ((pixels - low) * scale).astype(np.uint8)
    top = 65535.0 if pixels.max() > 255 or image.mode.startswith("I;16") else 255.0
    return np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
