"""A corpus of broken and malicious image files, generated (never downloaded).

Each case says what the system must do with it: refuse it with a given reason code, or
accept it because, however odd, it is a real image.
"""

from __future__ import annotations

import io
import re
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


# Decoding bombs: small files built to cost --------------------------------------------------
#
# Each declares a large picture whose data compresses to almost nothing, or repeats work the
# decoder must redo. Built from headers and a few encoded bytes (a file generator never holds
# the picture it declares), so generating them is cheap. The sizes sit under the default pixel
# limit of both the open reverse search (`max_search_pixels`) and the keyed upload, unless the
# case is about that limit, so that each case has one expected answer through every entry point.

BOMB_SIDE = 5000  # 25,000,000 pixels: at the open reverse search's default limit


def webp_canvas(width: int, height: int, *, alpha: bool = False) -> bytes:
    """A 34-byte lossless WebP declaring `width` x `height` black (or transparent) pixels: a
    single-colour lossless stream costs no bits per pixel, so only the header says how large
    it is."""
    buffer = io.BytesIO()
    Image.new("RGBA" if alpha else "RGB", (64, 64)).save(buffer, "WEBP", lossless=True, method=0)
    return _with_vp8l_size(buffer.getvalue(), width, height)


def _with_vp8l_size(data: bytes, width: int, height: int) -> bytes:
    start = data.index(b"VP8L") + 9  # after the chunk header and the 0x2f signature
    bits = int.from_bytes(data[start : start + 4], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    return data[:start] + bits.to_bytes(4, "little") + data[start + 4 :]


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)


def animated_webp(side: int = 4000, frames: int = 200) -> bytes:
    """An animated WebP of `frames` full-canvas frames of `side` x `side` pixels each."""
    frame = webp_canvas(side, side)
    bitstream = frame[frame.index(b"VP8L") :]  # the VP8L chunk, header included
    canvas = struct.pack("<B3x", 0x02) + (side - 1).to_bytes(3, "little") * 2
    anmf = (
        b"\x00" * 6  # frame offset x/2, y/2
        + (side - 1).to_bytes(3, "little") * 2
        + (100).to_bytes(3, "little")  # duration, ms
        + b"\x00"
        + bitstream
    )
    body = (
        b"WEBP"
        + _riff_chunk(b"VP8X", canvas)
        + _riff_chunk(b"ANIM", b"\xff\xff\xff\xff\x00\x00")
        + _riff_chunk(b"ANMF", anmf) * frames
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_bomb(
    width: int,
    height: int,
    *,
    bits: int = 32,
    sample_format: int = 3,  # 1: unsigned integers, 3: IEEE floats
    samples: int = 1,
    pages: int = 1,
) -> bytes:
    """A deflate-compressed TIFF of zeros (float greyscale by default): every strip of every
    page points at the same compressed strip, so the file is a few KB whatever the size."""
    row_bytes = width * samples * bits // 8
    rows_per_strip = max(1, (1 << 20) // row_bytes)
    strips = -(-height // rows_per_strip)
    strip = zlib.compress(bytes(row_bytes * rows_per_strip), 9)
    photometric = 2 if samples == 3 else 1
    data_offset = 8
    out = bytearray(b"II*\x00" + struct.pack("<I", 0) + strip)
    first_ifd = len(out) + len(out) % 2
    out += b"\x00" * (len(out) % 2)
    for page in range(pages):
        arrays = bytearray()
        ifd_size = 2 + 11 * 12 + 4
        arrays_at = len(out) + ifd_size
        offsets_at = arrays_at
        arrays += struct.pack(f"<{strips}I", *[data_offset] * strips)
        counts_at = arrays_at + len(arrays)
        arrays += struct.pack(f"<{strips}I", *[len(strip)] * strips)
        bits_at = arrays_at + len(arrays)
        arrays += struct.pack(f"<{samples}H", *[bits] * samples)
        formats_at = arrays_at + len(arrays)
        arrays += struct.pack(f"<{samples}H", *[sample_format] * samples)
        bits_value = bits if samples == 1 else bits_at
        format_value = sample_format if samples == 1 else formats_at
        entries = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, samples, bits_value),
            (259, 3, 1, 8),  # Adobe deflate
            (262, 3, 1, photometric),
            (273, 4, strips, offsets_at if strips > 1 else data_offset),
            (277, 3, 1, samples),
            (278, 4, 1, rows_per_strip),
            (279, 4, strips, counts_at if strips > 1 else len(strip)),
            (284, 3, 1, 1),  # chunky planar configuration
            (339, 3, samples, format_value),
        ]
        next_ifd = arrays_at + len(arrays) + len(arrays) % 2 if page < pages - 1 else 0
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 and count <= 2 else None
            out += struct.pack("<HHI", tag, kind, count) + (packed or struct.pack("<I", value))
        out += struct.pack("<I", next_ifd) + arrays + b"\x00" * (len(arrays) % 2)
    out[4:8] = struct.pack("<I", first_ifd)
    return bytes(out)


def png_zlib_bomb(
    side: int = BOMB_SIDE, *, color_type: int = 6, depth: int = 16, rows: int | None = None
) -> bytes:
    """A PNG of zeros (16-bit RGBA by default) whose IDAT inflates about a thousand-fold;
    with `rows`, only that many rows are there (the header is the bomb)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + side * channels * depth // 8)
    compressor = zlib.compressobj(9)
    data = (compressor.compress(row) for _ in range(side if rows is None else rows))
    rows_data = b"".join(data) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows_data)
        + _png_chunk(b"IEND", b"")
    )


def png_text_bomb(inflated: int = 64 * 1024 * 1024) -> bytes:
    """A small PNG with a zTXt chunk that inflates to `inflated` bytes of text."""
    png = encode(photo(64, 48), "PNG")
    text = b"Comment\x00\x00" + zlib.compress(b"a" * inflated, 9)
    end_of_header = 8 + 25  # signature + IHDR chunk
    return png[:end_of_header] + _png_chunk(b"zTXt", text) + png[end_of_header:]


def gif_frames(side: int = 4000, frames: int = 100) -> bytes:
    """A GIF of `frames` full-canvas frames of one colour (LZW packs each in a few KB)."""
    gif = encode(Image.new("P", (side, side), 0), "GIF")
    start = gif.index(b"\x2c", 13 + 3 * 2 ** ((gif[10] & 7) + 1))  # the image descriptor
    end = len(gif) - 1  # the trailer, 0x3b
    control = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 100 ms, no disposal
    return gif[:start] + (control + gif[start:end]) * frames + b"\x3b"


def gif_canvas(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen and only frame declare `width` x `height` pixels."""
    gif = bytearray(encode(Image.new("P", (16, 16), 0), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    descriptor = gif.index(b"\x2c", 13 + 3 * 2 ** ((gif[10] & 7) + 1))
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG's first image, a scan's entropy-coded
    data included in its SOS segment."""
    segments = []
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            segments.append((marker, position, position + 2))
            break
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        end = position + 2 + length
        if marker == 0xDA:
            found = _JPEG_MARKER.search(data, end)
            end = found.start() if found else len(data)
        segments.append((marker, position, end))
        position = end
    return segments


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scan_bomb(side: int = 4000, scans: int = 15000) -> bytes:
    """A progressive JPEG whose smallest AC scan (with the tables it uses) is repeated
    `scans` times: each repeat costs the decoder a pass over every block, for a few bytes."""
    jpeg = encode(Image.new("L", (side, side), 128), "JPEG", quality=50, progressive=True)
    segments = jpeg_segments(jpeg)
    units, pending = [], []
    for marker, start, end in segments:
        if marker == 0xDA:
            spectral_start = jpeg[start + 5 + 2 * jpeg[start + 4]]
            units.append((spectral_start, jpeg[pending[0] if pending else start : end]))
            pending = []
        elif marker == 0xC4:
            pending.append(start)
    smallest = min((unit for start, unit in units if start > 0), key=len)
    end_of_image = segments[-1][1]
    return jpeg[:end_of_image] + smallest * scans + jpeg[end_of_image:]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header declares `width` x `height` pixels."""
    data = bytearray(encode(photo(64, 48), "JPEG"))
    sof = next(start for marker, start, _ in jpeg_segments(bytes(data)) if marker == 0xC0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_rle(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """An 8-bit run-length BMP: two bytes per run of 255 pixels, then end of bitmap."""
    row = b"\xff\x00" * (width // 255) + bytes([width % 255, 0]) * (width % 255 > 0) + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    return _bmp(width, height, bits=8, compression=1, palette=bytes(1024), pixels=pixels)


def bmp_declaring(width: int, height: int) -> bytes:
    """An uncompressed 24-bit BMP declaring `width` x `height` pixels, with 1 KB of them."""
    return _bmp(width, height, bits=24, compression=0, palette=b"", pixels=bytes(1024))


def _bmp(
    width: int, height: int, *, bits: int, compression: int, palette: bytes, pixels: bytes
) -> bytes:
    offset = 14 + 40 + len(palette)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835, 0, 0
    )
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


def bombs() -> list[Case]:
    """Small files built to make the decoder spend memory or time, one per format and mode,
    with the answer under the default settings (the same through the open reverse search and
    the keyed upload): `too_many_pixels` (declared size over the limit), `too_costly` (the
    decode would cost more memory or work than allowed, judged from the header), `corrupt`,
    or None when the file is decoded within bounds. `bench/attack.py` and the benchmarks
    import this: keep its name and signature."""
    side = BOMB_SIDE
    return [
        Case("canvas.webp", webp_canvas(side, side), "too_costly"),
        Case("canvas-small.webp", webp_canvas(4000, 4000), None),
        Case("canvas-alpha.webp", webp_canvas(4000, 4000, alpha=True), None),
        Case("canvas-huge.webp", webp_canvas(16383, 16383), "too_many_pixels"),
        Case("frames.webp", animated_webp(4000, 200), None),
        Case("float.tif", tiff_bomb(side, side), None),
        Case("float-huge.tif", tiff_bomb(7100, 7100), "too_many_pixels"),
        Case("sixteen-bit.tif", tiff_bomb(side, side, bits=16, sample_format=1), None),
        Case("rgb.tif", tiff_bomb(side, side, bits=8, sample_format=1, samples=3), None),
        Case("bilevel.tif", tiff_bomb(side, side, bits=1, sample_format=1), None),
        Case("pages.tif", tiff_bomb(side, side, pages=50), None),
        Case("scans.jpg", jpeg_scan_bomb(4000, 15000), "too_costly"),
        Case("progressive.jpg", jpeg_scan_bomb(side, 1), None),
        Case("jpeg-huge.jpg", jpeg_declaring(60000, 60000), "too_many_pixels"),
        Case("zlib.png", png_zlib_bomb(side), None),
        Case("zlib-grey16.png", png_zlib_bomb(side, color_type=0), None),
        Case("zlib-grey-alpha.png", png_zlib_bomb(side, color_type=4), None),
        Case(
            "zlib-huge.png",
            png_zlib_bomb(100_000, color_type=2, depth=16, rows=64),
            "too_many_pixels",
        ),
        Case("text.png", png_text_bomb(), "corrupt"),
        Case("frames.gif", gif_frames(4000, 100), None),
        Case("canvas-huge.gif", gif_canvas(65535, 65535), "too_many_pixels"),
        Case("rle.bmp", bmp_rle(side, side), None),
        Case("bmp-huge.bmp", bmp_declaring(100_000, 100_000), "too_many_pixels"),
        Case("bmp-truncated.bmp", bmp_declaring(side, side), "corrupt"),
    ]
