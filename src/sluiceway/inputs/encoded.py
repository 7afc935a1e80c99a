"""Images sent as text: base64, bare or in a ``data:image/<type>;base64,`` URL.

Every failure is an ``ImageError`` whose message says what is wrong. The size cap is on the
decoded bytes, and it is checked from the text's length before anything is decoded, so an
oversize upload costs no decoding work.
"""

from __future__ import annotations

import binascii
import re

from sluiceway.inputs.images import ImageError

MAX_IMAGE_BYTES = 5 * 1024 * 1024
TOO_LARGE = "Maximum image size exceeded"

_WHITESPACE = re.compile(rb"[ \t\r\n\f\v]+")
_URL_SAFE = bytes.maketrans(b"-_", b"+/")


def encoded_limit(max_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Characters of unwrapped base64 (with padding) that ``max_bytes`` bytes encode to."""
    return 4 * -(-max_bytes // 3)


def decode_base64_image(text: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image sent as bare base64 or as a base64 ``data:`` URL.

    Accepts line-wrapped base64, missing padding and the URL-safe alphabet; refuses a data URL
    whose media type is not ``image/*`` and anything over ``max_bytes`` once decoded.
    """
    payload = _strip_data_url(text.strip())
    try:
        data = payload.encode("ascii")
    except UnicodeEncodeError:
        raise ImageError("invalid base64: it contains non-ASCII characters") from None
    if _WHITESPACE.search(data):
        data = _WHITESPACE.sub(b"", data)
    if not data:
        raise ImageError("empty image: no base64 data")
    unpadded = data.rstrip(b"=")
    if len(unpadded) * 3 // 4 > max_bytes:
        raise ImageError(TOO_LARGE)
    if len(unpadded) % 4 == 1:
        raise ImageError("invalid base64: its length cannot be a whole number of bytes")
    data = unpadded.translate(_URL_SAFE) + b"=" * (-len(unpadded) % 4)
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as error:
        raise ImageError(f"invalid base64: {error}") from None
    if not decoded:
        raise ImageError("empty image: no base64 data")
    return decoded


def _strip_data_url(text: str) -> str:
    """The base64 part of a ``data:`` URL (RFC 2397), or ``text`` itself if it is not one."""
    if text[:5].lower() != "data:":
        return text
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise ImageError("malformed data URL: expected data:image/<type>;base64,<data>")
    media, *parameters = (part.strip().lower() for part in header.split(";"))
    if not media.startswith("image/"):
        shown = media or "none (text/plain by default)"
        raise ImageError(f"data URL media type must be image/*, got {shown}")
    if "base64" not in parameters:
        raise ImageError("data URL must be base64-encoded: data:image/<type>;base64,<data>")
    return payload
