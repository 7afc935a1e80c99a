"""Safe image decoding: type judged from the bytes, pixel-count cap before decoding, EXIF upright.

Every failure is an ``ImageError`` (a ``BadInput``) whose message says what is wrong, so the edge
answers 4xx and never 500.

A JPEG that may be decoded at a reduced scale (``draft``) goes to libjpeg-turbo through
simplejpeg: it scales in steps of 1/8 (Pillow's draft only by 1/2, 1/4, 1/8), so the picture
lands just above the model's size and the resize after it has less to do, and it decodes
straight into one array (Pillow's chunked decoder costs more around the same libjpeg-turbo). At
the scale Pillow would pick, its pixels are Pillow's exactly (a test). Pillow still reads the
header (type, pixel cap, EXIF orientation) and decodes everything else, and any JPEG simplejpeg
refuses (corrupt, truncated, CMYK) goes to Pillow too, so the error texts are Pillow's as before.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from sluiceway.errors import BadInput

# Magic numbers of the formats we accept; the file name or declared type is never trusted.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)

DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; anything bigger is refused unread


class ImageError(BadInput):
    """The bytes are not an image we can decode; the message says why."""


def sniff(data: bytes) -> str | None:
    """The image format the bytes start with (``jpeg``, ``png``, ``gif``, ``webp``, ``bmp``)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upright RGB image and the format its bytes were in."""

    image: Image.Image
    format: str


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image, or raise ``ImageError`` saying why not.

    ``draft`` lets JPEG decode at a reduced scale (a multiple of 1/8) no smaller than that
    size, which is several times faster for photos far larger than the model's input.
    """
    if not data:
        raise ImageError("empty file")
    kind = sniff(data)
    if kind is None:
        raise ImageError("not an image: expected JPEG, PNG, GIF, WebP or BMP bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}×{height} pixels; at most {max_pixels} pixels are accepted"
                )
            scaled = None
            if draft is not None and kind == "jpeg":
                scaled = _scaled_jpeg(data, opened, draft)
                if scaled is None:
                    opened.draft("RGB", draft)
            if scaled is not None:
                image = scaled
            else:
                # In place, and no convert when already RGB: each copy costs ~0.4 ms per photo.
                ImageOps.exif_transpose(opened, in_place=True)
                image = opened if opened.mode == "RGB" else opened.convert("RGB")
                image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image has too many pixels (at most {max_pixels})") from None
    except UnidentifiedImageError:
        raise ImageError(f"cannot decode this {kind.upper()} image") from None
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow reports truncated or corrupt data as OSError ("image file is truncated").
        raise ImageError(f"corrupt or truncated {kind.upper()} image: {error}") from None
    return DecodedImage(image=image, format=kind)


def _scaled_jpeg(data: bytes, opened: Image.Image, least: tuple[int, int]) -> Image.Image | None:
    """The upright RGB picture decoded by libjpeg-turbo at the smallest scale (n/8) that keeps it
    at least ``least`` (width, height), or ``None`` for Pillow to decode (and explain) it."""
    if opened.mode not in ("RGB", "L"):  # CMYK and the like: Pillow converts them
        return None
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=least[0], min_height=least[1]
        )
    except ValueError:  # corrupt or truncated (strict): Pillow's decode gives the message
        return None
    image = Image.fromarray(pixels)
    exif = opened.info.get("exif")
    if exif:  # the header's orientation, applied by the same Pillow call as the other path
        image.info["exif"] = exif
        ImageOps.exif_transpose(image, in_place=True)
    return image
