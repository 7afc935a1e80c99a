"""Base64 and data-URL images (inputs/encoded.py): what is accepted, and why the rest is not."""

from __future__ import annotations

import base64
import os
import re

import pytest

from sluiceway.inputs.encoded import (
    MAX_IMAGE_BYTES,
    TOO_LARGE,
    decode_base64_image,
    encoded_limit,
)
from sluiceway.inputs.images import ImageError
from tests.fixtures.tiny_git import png_bytes, swatches

PNG = png_bytes(swatches(1)[0])
B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "text",
    [
        B64,
        f"data:image/png;base64,{B64}",
        f"DATA:IMAGE/PNG;BASE64,{B64}",
        f"data:image/jpeg;name=photo.jpg;base64,{B64}",  # the bytes decide the type, not the URL
        f"  data:image/png;base64,{B64}\n",
        base64.encodebytes(PNG).decode(),  # MIME-style, wrapped at 76 characters
        B64.rstrip("="),  # padding left off
        base64.urlsafe_b64encode(PNG).decode(),
    ],
)
def test_accepted_forms_give_back_the_bytes(text: str) -> None:
    assert decode_base64_image(text) == PNG


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"data:text/plain;base64,{B64}", "media type must be image/*, got text/plain"),
        (f"data:;base64,{B64}", "media type must be image/*, got none"),
        (f"data:image/png,{B64}", "data URL must be base64-encoded"),
        ("data:image/png;base64", "malformed data URL"),
        ("", "empty image"),
        ("data:image/png;base64,", "empty image"),
        ("====", "empty image"),
        ("not base64 at all!", "invalid base64"),
        ("QUJD=RA==", "invalid base64"),  # padding in the middle
        ("QUJDR", "invalid base64: its length"),
        ("QUJDRA€", "non-ASCII"),
    ],
)
def test_refusals_say_why(text: str, reason: str) -> None:
    with pytest.raises(ImageError, match=re.escape(reason)):
        decode_base64_image(text)


def test_size_cap_is_on_decoded_bytes_to_the_byte() -> None:
    at_cap = os.urandom(1000)
    assert decode_base64_image(base64.b64encode(at_cap).decode(), max_bytes=1000) == at_cap
    over = base64.b64encode(os.urandom(1001)).decode()
    with pytest.raises(ImageError, match=f"^{TOO_LARGE}$"):
        decode_base64_image(over, max_bytes=1000)


def test_five_mib_is_accepted_and_one_byte_more_is_not() -> None:
    five_mib = PNG + bytes(MAX_IMAGE_BYTES - len(PNG))
    assert len(decode_base64_image(base64.b64encode(five_mib).decode())) == MAX_IMAGE_BYTES
    with pytest.raises(ImageError, match=f"^{TOO_LARGE}$"):
        decode_base64_image(base64.b64encode(five_mib + b"\0").decode())


def test_oversize_text_is_refused_before_it_is_decoded() -> None:
    # Not base64 at all: decoding would say "invalid base64"; the size check answers first.
    with pytest.raises(ImageError, match=f"^{TOO_LARGE}$"):
        decode_base64_image("!" * (encoded_limit(1000) + 4), max_bytes=1000)


def test_encoded_limit_is_the_length_of_the_largest_accepted_text() -> None:
    for size in (1, 2, 3, 1000, MAX_IMAGE_BYTES):
        assert encoded_limit(size) == len(base64.b64encode(bytes(size)))
