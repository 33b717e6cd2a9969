"""Decoding untrusted image bytes into RGB pictures, or refusing them with a reason.

Everything that reaches the model goes through `decode_image`; it is the only place that
touches Pillow's parsers, so its limits protect every entry point (API, CLI, Lambda).

A file costs what its bytes are worth: before any pixel is decoded, the header says how large
the picture is, in which mode, and (for a JPEG) how many scans the decoder would make, and a
file whose decode would cost more memory or work than `DecodeLimits` allow is refused. What is
decoded is reduced at once to what the model needs, before any conversion copies it. Time is
bounded by running decodes in worker processes with a deadline (`decode_pool.py`).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

if TYPE_CHECKING:
    from imgsearch.config import Settings

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
class DecodeLimits:
    """What one decode may cost. Limits come from the settings (`from_settings`), their one
    home; the open reverse search takes fewer pixels than the keyed upload and the CLI."""

    max_bytes: int  # the file
    max_pixels: int  # declared width x height
    max_memory: int  # bytes the decode would hold at its peak, estimated from the header
    max_scans: int  # JPEG scans: each one is a pass over every block of the picture

    @classmethod
    def from_settings(cls, settings: Settings, *, open_endpoint: bool = False) -> DecodeLimits:
        """The limits for the collection's owner, or with `open_endpoint` for anyone (the
        reverse search, which needs no key)."""
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_search_pixels if open_endpoint else settings.max_image_pixels,
            max_memory=settings.max_decode_memory,
            max_scans=settings.max_jpeg_scans,
        )


@dataclass(frozen=True)
class DraftBox:
    """How small a decode may scale a picture down: each side stays at least `shorter` and
    the longer side at least `longer` (a box turned like the picture; an int `n` given as a
    draft size is the box n x n)."""

    shorter: int
    longer: int

    @classmethod
    def of(cls, draft: int | DraftBox | None) -> DraftBox | None:
        if draft is None or isinstance(draft, DraftBox):
            return draft
        return cls(draft, draft)

    def fits(self, size: tuple[int, int]) -> int:
        """How many times `size` holds the box, each side against its own (0: not once)."""
        return min(max(size) // self.longer, min(size) // self.shorter)

    def turned_like(self, size: tuple[int, int]) -> tuple[int, int]:
        """The box as (width, height), its longer side along the picture's."""
        width, height = size
        return (self.longer, self.shorter) if width >= height else (self.shorter, self.longer)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB picture upright as its EXIF says; `width`/`height` are the full upright size
    (the picture itself may be smaller when decoded in draft mode)."""

    image: Image.Image
    width: int
    height: int
    format: str


def decode_image(
    data: bytes, limits: DecodeLimits, *, draft_size: int | DraftBox | None = None
) -> DecodedImage:
    """Decode `data` into an upright RGB image, refusing anything unsafe, unusable, or that
    would cost more than `limits` allow.

    `draft_size` lets decoding scale down while each side stays at least that large (or
    within a `DraftBox`): a JPEG by powers of two as it decodes (a 12-megapixel photo decodes
    at 1/8 when the model needs 260 pixels and the thumbnail 384), any other format right
    after, before its conversions, so that a small file declaring a huge picture does not
    cost gigabytes. The width and height returned are the original's.
    """
    if len(data) == 0:
        raise ImageRefused("empty", "empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRefused(
            "too_large", f"file is {len(data):,} bytes; the limit is {limits.max_bytes:,}"
        )
    with warnings.catch_warnings():
        # Pillow warns about odd but readable files (bad EXIF, ...): what matters is the result.
        warnings.simplefilter("ignore")
        try:
            return _decode(data, limits, DraftBox.of(draft_size))
        except MemoryError:  # an estimate fell short: the limit on the process held
            raise ImageRefused("too_costly", "decoding the image ran out of memory") from None


def _decode(data: bytes, limits: DecodeLimits, draft_size: DraftBox | None) -> DecodedImage:
    image = _open_within(data, limits)
    width, height = image.size
    source_format = image.format or "unknown"
    _check_cost(data, image, limits, draft_size)
    _load(image, draft_size)
    orientation = _orientation(image)
    image = _transposed(_reduced(image, draft_size), orientation)
    if orientation in _QUARTER_TURNS:  # the full size turns too
        width, height = height, width
    return DecodedImage(image=_to_rgb(image), width=width, height=height, format=source_format)


_JPEG_FORMATS = ("JPEG", "MPO")


def _open_within(data: bytes, limits: DecodeLimits) -> Image.Image:
    """The image with its header read and no pixel decoded, if its size is acceptable."""
    declared = webp_size(data)
    if declared:  # Pillow's WebP opener allocates the whole canvas: check its size first
        _check_pixels(*declared, limits.max_pixels)
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
    _check_pixels(width, height, limits.max_pixels)
    if min(width, height) < MIN_SIDE:
        raise ImageRefused(
            "too_small", f"{width}x{height} pixels: each side must be at least {MIN_SIDE}"
        )
    return image


def _check_cost(
    data: bytes, image: Image.Image, limits: DecodeLimits, draft_size: DraftBox | None
) -> None:
    """Refuse, from the header, a decode that would take too much work or memory."""
    scans = jpeg_scans(data) if image.format in _JPEG_FORMATS else 0
    if scans > limits.max_scans:
        raise ImageRefused(
            "too_costly",
            f"the JPEG has {scans:,} scans, each a pass over the whole picture; "
            f"the limit is {limits.max_scans}",
        )
    peak = estimated_peak(image, draft_size, scans=scans)
    if peak > limits.max_memory:
        width, height = image.size
        raise ImageRefused(
            "too_costly",
            f"decoding this {image.format} image ({image.mode}, {width}x{height}) would take "
            f"about {peak / _MB:,.0f} MB of memory; the limit is {limits.max_memory / _MB:,.0f} MB",
        )


def _load(image: Image.Image, draft_size: DraftBox | None) -> None:
    """Decode the pixels (the first frame of an animation), a JPEG scaled down as it goes."""
    if draft_size and image.format in _JPEG_FORMATS:
        image.draft("RGB", draft_size.turned_like(image.size))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRefused("corrupt", f"truncated or corrupt image data: {error}") from None


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageRefused(
            "too_many_pixels",
            f"{width}x{height} is {width * height:,} pixels; the limit is {limit:,}",
        )


# The grid's tiles (about 130-190 CSS px, drawn at 2 device pixels each at most) and the
# start view's covers: a WebP at this side is about 7 KB, a third of the 384 px JPEG (a slow
# phone's first screen is mostly thumbnails).
TILE_SIDE = 256
# libwebp's effort and quality: effort 6 (its slowest) took 12.5-14.7 ms a 256 x 171 tile,
# more than half the model's time per image at ingest; effort 2 at quality 68 keeps the
# quality of effort 4 at 65 for half its time (100 Corel tiles, SSIM of the luma to the
# unencoded tile: mean 0.9578 both, lowest 0.9210 vs 0.9195; 2.0 vs 4.1 ms) and 7% more
# bytes (7.70 vs 7.21 KB on average).
TILE_QUALITY = 68
TILE_METHOD = 2


def tile_webp(image: Image.Image) -> bytes:
    """`image` at most TILE_SIDE pixels on its longer side, as a WebP for small tiles."""
    tile = image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    tile.thumbnail((TILE_SIDE, TILE_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    tile.save(buffer, format="WEBP", quality=TILE_QUALITY, method=TILE_METHOD)
    return buffer.getvalue()


def tile_from_thumbnail(jpeg: bytes) -> bytes:
    """The tile thumbnail made from a stored thumbnail (our own JPEG, for an image stored
    before tiles were made at ingest)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (TILE_SIDE, TILE_SIDE))  # JPEG decodes straight at a smaller scale
        return tile_webp(image.convert("RGB"))


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file declares in its first chunk (None if not a WebP)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":  # extended: the canvas, 24 bits a side
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if kind == b"VP8L":  # lossless: 14 bits a side
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":  # lossy: 14 bits a side, after the frame tag and start code
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


# What a decode costs ---------------------------------------------------------------------

_MB = 1024 * 1024
_REDUCED_BYTES = 16  # per pixel left after reducing: conversions to RGB of a small picture

# Bytes per pixel of a picture in Pillow's memory (it keeps RGB in four bytes, like RGBA).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# What making a picture reducible costs per pixel: a copy in a mode `Image.reduce` takes (a
# palette's indices cannot be averaged), and for alpha the premultiplied copy reduce makes.
_BEFORE_REDUCE_BYTES = {"1": 1, "P": 4, "PA": 8, "RGBA": 4, "LA": 4}
_BEFORE_REDUCE_BYTES |= {"I;16": 4, "I;16B": 4, "I;16L": 4, "I;16N": 4}
# Converting a picture that was not reduced (small, or a strip only a few pixels wide) to
# 8-bit RGB: at most an RGBA copy, a white background, their composite and the RGB result;
# for floats a NumPy copy of the pixels and an 8-bit one beside Pillow's.
_CONVERSION_BYTES = {"RGB": 4, "L": 4, "I;16": 9, "I;16B": 9, "I;16L": 9, "I;16N": 9}
_CONVERSION_BYTES |= {"I": 14, "F": 14, "RGBA": 16, "LA": 16, "PA": 16, "La": 16, "RGBa": 16}


def estimated_peak(image: Image.Image, draft_size: int | DraftBox | None, *, scans: int = 0) -> int:
    """Bytes the decode of an opened (not loaded) image would hold at its peak, from its
    header: the picture in its mode (at the size a JPEG draft gives), what the format's
    decoder holds beside it, and the copies the conversions to RGB make."""
    draft_size = DraftBox.of(draft_size)
    size = _decoded_size(image, draft_size)
    pixels = size[0] * size[1]
    per_pixel = _MODE_BYTES.get(image.mode, 4) + _decoder_bytes(image)
    factor = _reduction(size, draft_size)
    if factor >= 2:
        transparent_palette = image.mode == "P" and "transparency" in image.info
        per_pixel += 8 if transparent_palette else _BEFORE_REDUCE_BYTES.get(image.mode, 0)
        tail = pixels // (factor * factor) * _REDUCED_BYTES
    else:
        conversion = 16 if "transparency" in image.info else 8
        per_pixel += _CONVERSION_BYTES.get(image.mode, conversion)
        tail = 0
    return pixels * per_pixel + tail + _jpeg_coefficients(image, scans)


def _decoder_bytes(image: Image.Image) -> int:
    """Bytes per pixel a format's decoder holds beside the picture (measured by
    bench/decode_worst.py): libwebp decodes onto an RGBA canvas of its own, which Pillow
    copies into a bytes object and reads through another buffer. The others decode into the
    picture a few rows at a time."""
    return 11 if image.format == "WEBP" else 0


def _decoded_size(image: Image.Image, draft_size: DraftBox | None) -> tuple[int, int]:
    """The size `load` decodes: a JPEG in draft mode is scaled by 1/2, 1/4 or 1/8 as it is
    decoded (the largest that keeps it within `draft_size`, as Pillow picks it)."""
    width, height = image.size
    if not draft_size or image.format not in _JPEG_FORMATS:
        return width, height
    fits = draft_size.fits(image.size)
    scale = next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)
    return -(-width // scale), -(-height // scale)


def _jpeg_coefficients(image: Image.Image, scans: int) -> int:
    """A JPEG in several scans (progressive, or one scan per component) is decoded through a
    buffer of every block's coefficients at full size, whatever the draft: 128 bytes per 8x8
    block of each component, at its sampling."""
    layers = getattr(image, "layer", None)
    if image.format not in _JPEG_FORMATS or scans <= 1 or not layers:
        return 0
    width, height = image.size
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    blocks = sum(
        _blocks(width * h // h_max) * _blocks(height * v // v_max) for _, h, v, _ in layers
    )
    return blocks * 128


def _blocks(samples: int) -> int:
    return -(-samples // 8)


def _reduction(size: tuple[int, int], draft_size: DraftBox | None) -> int:
    """The factor that reduces `size` while it stays within `draft_size`."""
    fits = draft_size.fits(size) if draft_size else 1
    return fits if fits >= 2 else 1


_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker, after entropy-coded data


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS segments) of a JPEG's first image, counted by walking its
    segments: nothing is decoded, and the cost is one pass over the bytes."""
    scans = 0
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # bytes between segments: libjpeg skips to the next marker
            found = _MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
            continue
        marker = data[position + 1]
        if marker == 0xD9:  # end of image: what follows (MPO's other pictures) is not decoded
            break
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill, no length
            position += 1 if marker == 0xFF else 2
            continue
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
        if marker == 0xDA:
            scans += 1
            found = _MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    return scans


# Reduce early, then turn upright and convert ----------------------------------------------


def _reduced(image: Image.Image, draft_size: DraftBox | None) -> Image.Image:
    """The loaded picture reduced while it stays within `draft_size`, before any conversion
    copies it at full size (a mode `reduce` cannot take is made reducible first)."""
    factor = _reduction(image.size, draft_size)
    if factor < 2:
        return image
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = Image.fromarray(_high_bytes(np.asarray(image)))
    return image.reduce(factor)


_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright); a malformed EXIF block costs the rotation only."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return orientation if orientation in _TRANSPOSITIONS else 1


def _transposed(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSITIONS.get(orientation)
    return image.transpose(method) if method is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, transparent areas on white (as a browser shows them on a page)."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = Image.fromarray(_high_depth_to_8bit(image))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode not in ("RGB", "L"):  # P, 1, CMYK, YCbCr, LAB, HSV
        image = image.convert("RGB")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _high_depth_to_8bit(image: Image.Image) -> np.ndarray:
    """Scale 16-bit or float greyscale to 0..255 instead of clipping it to white, in integers
    or in place where it can (a float copy of 50 megapixels is 200 MB)."""
    if image.mode.startswith("I;16"):
        return _high_bytes(np.asarray(image))
    if image.mode == "F":
        pixels = np.array(image, dtype=np.float32)  # a writable copy, changed in place
        finite = np.isfinite(pixels)
        if not finite.any():
            return np.zeros(pixels.shape, np.uint8)
        low, high = float(pixels[finite].min()), float(pixels[finite].max())
        del finite
        np.nan_to_num(pixels, copy=False, nan=low, posinf=high, neginf=low)
        pixels -= low
        pixels *= 255.0 / (high - low) if high > low else 0.0
        return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
    integers: np.ndarray = np.asarray(image)  # mode "I": 32-bit integers
    if integers.max() > 255:
        sixteen_bit: np.ndarray = np.clip(integers, 0, 65535)
        return (sixteen_bit >> 8).astype(np.uint8)
    eight_bit: np.ndarray = np.clip(integers, 0, 255)
    return eight_bit.astype(np.uint8)


def _high_bytes(pixels: np.ndarray) -> np.ndarray:
    """The high byte of each 16-bit pixel (x >> 8), without a 16-bit temporary."""
    big_endian = pixels.dtype.byteorder == ">" or (
        pixels.dtype.byteorder == "=" and np.little_endian is False
    )
    return np.ascontiguousarray(pixels.view(np.uint8)[:, 0 if big_endian else 1 :: 2])
