"""A corpus of broken and malicious image files, generated (never downloaded).

Each case says what the system must do with it: refuse it with a given reason code, or
accept it because, however odd, it is a real image.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str  # a file name, extension included, as an uploader would send it
    data: bytes
    refusal: str | None  # expected reason code, or None if the image must be accepted


def photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_bomb(side: int = 100_000) -> bytes:
    """A few hundred bytes declaring a side x side greyscale image: decompression bomb."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    # A few rows of zeros; a decoder that trusted the header would allocate 10 GB.
    rows = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def corrupt_huffman_jpeg() -> bytes:
    """A JPEG whose Huffman tables (DHT segments) are overwritten with garbage."""
    data = bytearray(encode(photo(), "JPEG", quality=90))
    position = data.find(b"\xff\xc4")
    while position != -1:
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        for offset in range(position + 5, position + 2 + length):
            data[offset] = 0xFF if offset % 2 else 0x00
        position = data.find(b"\xff\xc4", position + 2 + length)
    return bytes(data)


def malformed_exif_jpeg() -> bytes:
    """A JPEG with an APP1 Exif segment whose TIFF structure is nonsense."""
    jpeg = encode(photo(), "JPEG")
    exif = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + b"\xde\xad\xbe\xef" * 8
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    return jpeg[:2] + segment + jpeg[2:]


def rotated_jpeg() -> bytes:
    """A 320x240 JPEG whose EXIF says: rotate 90 degrees clockwise to show it (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(), "JPEG", exif=exif.tobytes())


def animated_gif(frames: int = 100) -> bytes:
    images = [photo(64, 48, seed=i).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=40)


def sixteen_bit_png() -> bytes:
    ramp = (np.linspace(0, 65535, 128 * 96).reshape(96, 128)).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def polyglot() -> bytes:
    """A real GIF that is also an HTML page with a script: must be stored as an image only."""
    gif = encode(photo(64, 48).convert("P"), "GIF")
    return gif + b"<html><script>alert('polyglot')</script></html>"


def corpus(max_bytes: int = 25 * 1024 * 1024) -> list[Case]:
    jpeg = encode(photo(), "JPEG", quality=90)
    png = encode(photo(), "PNG")
    return [
        Case("empty.jpg", b"", "empty"),
        Case("notes.jpg", b"just some text, not an image at all\n" * 20, "not_an_image"),
        Case(
            "page.jpg",
            b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
            "not_an_image",
        ),
        Case(
            "drawing.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10"/></svg>',
            "not_an_image",
        ),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "corrupt"),
        Case("truncated.png", png[: len(png) // 2], "corrupt"),
        Case("huffman.jpg", corrupt_huffman_jpeg(), "corrupt"),
        Case("bomb.png", png_bomb(), "too_many_pixels"),
        Case("line.png", encode(Image.new("RGB", (1, 100_000), "red"), "PNG"), "too_small"),
        Case("oversized.jpg", jpeg + b"\x00" * (max_bytes + 1 - len(jpeg)), "too_large"),
        Case("animated.gif", animated_gif(), None),
        Case("cmyk.jpg", encode(photo().convert("CMYK"), "JPEG"), None),
        Case("sixteen-bit.png", sixteen_bit_png(), None),
        Case("palette-alpha.png", encode(photo().convert("P"), "PNG", transparency=0), None),
        Case("alpha.png", encode(photo().convert("RGBA"), "PNG"), None),
        Case("grey.jpg", encode(photo().convert("L"), "JPEG"), None),
        Case("bad-exif.jpg", malformed_exif_jpeg(), None),
        Case("rotated.jpg", rotated_jpeg(), None),
        Case("polyglot.gif", polyglot(), None),
        Case("photo.webp", encode(photo(), "WEBP"), None),
    ]
