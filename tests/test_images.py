"""The decoder: every kind of bad file is refused with its reason, odd real images accepted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from support.hostile_files import animated_gif, corpus, encode, photo, rotated_jpeg, sixteen_bit_png

from imgsearch.config import Settings
from imgsearch.images import DecodeLimits, ImageRefused, decode_image

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
