"""The decoder: every kind of bad file is refused with its reason, odd real images accepted."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from support.hostile_files import animated_gif, corpus, encode, photo, rotated_jpeg, sixteen_bit_png

from imgsearch.config import Settings
from imgsearch.images import DecodeLimits, DraftBox, ImageRefused, decode_image, estimated_peak

LIMIT = 2_000_000
DEFAULTS = DecodeLimits.from_settings(Settings())


def limits(**changes: int) -> DecodeLimits:
    """The default limits (the keyed upload's), with `changes`."""
    return replace(DEFAULTS, **changes)


@pytest.mark.parametrize("case", corpus(max_bytes=LIMIT), ids=lambda case: case.name)
def test_each_hostile_file_is_refused_with_its_reason_or_accepted(case) -> None:
    if case.refusal is None:
        decoded = decode_image(case.data, limits(max_bytes=LIMIT))
        assert decoded.image.mode == "RGB"
        assert decoded.image.size == (decoded.width, decoded.height)
    else:
        with pytest.raises(ImageRefused) as refused:
            decode_image(case.data, limits(max_bytes=LIMIT))
        assert refused.value.reason == case.refusal
        assert str(refused.value)  # a reason a person can read


def test_exif_orientation_is_applied() -> None:
    decoded = decode_image(rotated_jpeg(), DEFAULTS)
    assert (decoded.width, decoded.height) == (240, 320)
    # photo() is darkest at its top-left corner; rotated clockwise, that corner is top-right.
    pixels = np.asarray(decoded.image, dtype=float).mean(axis=2)
    assert pixels[:20, -20:].mean() < pixels[:20, :20].mean()


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    pixels = np.asarray(decode_image(sixteen_bit_png(), DEFAULTS).image)
    assert pixels.min() < 5 and pixels.max() > 250
    assert 120 < pixels.mean() < 135  # a full ramp, not a white page


def test_transparent_areas_become_white() -> None:
    clear = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    pixels = np.asarray(decode_image(encode(clear, "PNG"), DEFAULTS).image)
    assert (pixels == 255).all()


def test_animation_gives_its_first_frame() -> None:
    first = np.asarray(photo(64, 48, seed=0).convert("P").convert("RGB"), dtype=float)
    decoded = np.asarray(decode_image(animated_gif(frames=5), DEFAULTS).image, dtype=float)
    assert np.abs(decoded - first).mean() < 8


def test_pixel_limit_is_checked_before_decoding() -> None:
    big = encode(photo(400, 300), "PNG")
    with pytest.raises(ImageRefused) as refused:
        decode_image(big, limits(max_pixels=100_000))
    assert refused.value.reason == "too_many_pixels"


def test_draft_decoding_keeps_the_full_size() -> None:
    large = encode(photo(2000, 1500), "JPEG")
    decoded = decode_image(large, DEFAULTS, draft_size=300)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert 300 <= min(decoded.image.size) < 1500


# What the ingest asks of a decode (`Ingestor.draft_box`): the model's 260 x 260 centre square,
# the thumbnail's 384 px longer side.
INGEST_BOX = DraftBox(260, 384)


def test_a_phone_photo_decodes_at_the_smallest_scale_that_keeps_the_box() -> None:
    """A 4240 x 2832 JPEG decodes at 1/8 (530 x 354: both sides within the box), upright as
    its EXIF says, its full size reported; a square one stops at 1/4, where 1/8 would give
    the thumbnail less than 384 px."""
    landscape = photo(4240, 2832)
    decoded = decode_image(encode(landscape, "JPEG"), DEFAULTS, draft_size=INGEST_BOX)
    assert decoded.image.size == (530, 354)
    assert (decoded.width, decoded.height) == (4240, 2832)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned clockwise
    turned = decode_image(
        encode(landscape, "JPEG", exif=exif.tobytes()), DEFAULTS, draft_size=INGEST_BOX
    )
    assert turned.image.size == (354, 530)
    assert (turned.width, turned.height) == (2832, 4240)
    square = decode_image(encode(photo(3000, 3000), "JPEG"), DEFAULTS, draft_size=INGEST_BOX)
    assert square.image.size == (750, 750)


def test_the_memory_a_decode_is_allowed_is_counted_at_its_draft_size() -> None:
    """The header's estimate follows the box: a 12-megapixel photo's 1/8 decode is counted as
    the 530 x 354 picture it holds (RGB and its conversion's copies, a few MB), so a limit it
    fits in lets it through and refuses the same photo decoded at 1/4 (a draft of 520 px
    each side: 1060 x 708)."""
    data = encode(photo(4240, 2832), "JPEG")
    with Image.open(io.BytesIO(data)) as opened:
        at_eighth = estimated_peak(opened, INGEST_BOX)
        at_quarter = estimated_peak(opened, 520)
    assert 530 * 354 * 3 <= at_eighth <= 530 * 354 * 16
    assert at_quarter >= 3.9 * at_eighth
    tight = limits(max_memory=at_eighth)
    assert decode_image(data, tight, draft_size=INGEST_BOX).image.size == (530, 354)
    with pytest.raises(ImageRefused) as refused:
        decode_image(data, tight, draft_size=520)
    assert refused.value.reason == "too_costly"


def test_any_format_is_reduced_early_to_what_is_needed() -> None:
    """A 37 KB GIF declaring 7071 x 7071 pixels decoded to full size and then converted cost
    over 400 MB; reduced before the conversions, the image keeps each side >= draft_size."""
    declared = encode(Image.new("P", (7071, 7071), 0), "GIF")
    decoded = decode_image(declared, DEFAULTS, draft_size=520)
    assert (decoded.width, decoded.height) == (7071, 7071)
    assert 520 <= min(decoded.image.size) < 1040


def test_a_transparent_colour_becomes_white_too() -> None:
    """PNG's tRNS marks one colour transparent in an RGB or greyscale image, without alpha."""
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    pixels = np.asarray(decode_image(encode(image, "PNG", transparency=(0, 0, 0)), DEFAULTS).image)
    assert (pixels == 255).all()


def test_a_float_image_with_a_non_finite_pixel_keeps_its_picture() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    ramp[0, 0] = np.inf
    ramp[1, 1] = np.nan
    pixels = np.asarray(decode_image(encode(Image.fromarray(ramp, "F"), "TIFF"), DEFAULTS).image)
    assert pixels[10].min() < 5 and pixels[10].max() > 250
