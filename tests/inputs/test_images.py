"""Decoding untrusted image bytes: the scaled JPEG path keeps Pillow's pixels, errors and EXIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sluiceway.inputs.images import ImageError, decode_image
from tests.fixtures.images import encoded, gradient_photo, truncated_jpeg


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, **options)
    return out.getvalue()


def pillow(data: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
    """The pixels Pillow alone decodes (at its own draft scale, when given one)."""
    image = Image.open(io.BytesIO(data))
    if draft is not None:
        image.draft("RGB", draft)
    return np.asarray(image.convert("RGB"))


def test_a_jpeg_too_small_to_scale_decodes_to_pillows_pixels() -> None:
    data = jpeg(gradient_photo(300, 250))  # 7/8 of 250 is under 224: full scale
    decoded = decode_image(data, draft=(224, 224))
    assert decoded.format == "jpeg"
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), pillow(data))


def test_at_pillows_draft_scale_the_pixels_are_pillows() -> None:
    data = jpeg(gradient_photo(896, 448))  # 1/2 is the smallest n/8 keeping 224
    decoded = decode_image(data, draft=(224, 224))
    assert decoded.image.size == (448, 224)
    assert np.array_equal(np.asarray(decoded.image), pillow(data, (224, 224)))


def test_a_large_jpeg_decodes_at_the_smallest_eighth_above_the_draft() -> None:
    # 3/8 of 1000×800 is 375×300, 2/8 would be 250×200: under 224. Pillow's draft (1/2) would
    # give 500×400.
    decoded = decode_image(jpeg(gradient_photo(1000, 800)), draft=(224, 224))
    assert decoded.image.size == (375, 300)
    full = decode_image(jpeg(gradient_photo(1000, 800)))
    assert full.image.size == (1000, 800)


def test_a_photo_taken_rotated_comes_out_upright_at_a_reduced_scale() -> None:
    picture = Image.new("RGB", (800, 400), (230, 230, 230))
    picture.paste((20, 20, 220), (0, 0, 400, 400))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": the blue half ends on top
    decoded = decode_image(jpeg(picture, exif=exif), draft=(224, 224))
    width, height = decoded.image.size
    assert (width, height) == (250, 500)  # 5/8 scale, turned
    top = np.asarray(decoded.image)[: height // 4].reshape(-1, 3).mean(axis=0)
    bottom = np.asarray(decoded.image)[-height // 4 :].reshape(-1, 3).mean(axis=0)
    assert top[2] > 150 > top[0]
    assert bottom[0] > 150


def test_grey_and_cmyk_jpegs_decode_to_rgb() -> None:
    grey = jpeg(gradient_photo(600, 500).convert("L"))
    decoded = decode_image(grey, draft=(224, 224))
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (300, 250)
    assert np.array_equal(np.asarray(decoded.image), pillow(grey, (224, 224)))
    cmyk = jpeg(gradient_photo(600, 500).convert("CMYK"))  # libjpeg-turbo's simple API refuses
    decoded = decode_image(cmyk, draft=(224, 224))
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), pillow(cmyk, (224, 224)))


@pytest.mark.parametrize(
    "data",
    [truncated_jpeg(), encoded(gradient_photo(), "JPEG")[:300], b"\xff\xd8\xff" + b"\x00" * 64],
    ids=["truncated", "header-only", "garbage"],
)
def test_a_broken_jpeg_gets_the_same_message_with_or_without_scaling(data: bytes) -> None:
    with pytest.raises(ImageError) as plain:
        decode_image(data)
    with pytest.raises(ImageError) as scaled:
        decode_image(data, draft=(224, 224))
    assert str(scaled.value) == str(plain.value)
    assert "JPEG" in str(scaled.value)
