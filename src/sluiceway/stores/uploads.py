"""Uploaded photos kept on disk under content-addressed names: ``<sha256 of the upload>.<ext>``.

The extension comes from the bytes, never from the name the browser sent, and only names of that
exact shape are ever opened, so no request can reach a path outside the upload folder. A photo
whose EXIF says it was taken rotated is stored upright, so every browser shows it as the model
saw it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sluiceway.inputs.images import ImageError, sniff

EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp"}
"""File extension by sniffed image format."""

MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
}

NAME = re.compile(r"[0-9a-f]{64}\.(?:jpg|png|gif|webp|bmp)")
"""The only shape a stored upload's name can have."""

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """An upload on disk: its content-addressed name and media type."""

    name: str
    media_type: str


def is_upload_name(name: str) -> bool:
    """Whether ``name`` has the shape of a stored upload's name (hash and known extension)."""
    return NAME.fullmatch(name) is not None


class UploadStore:
    """The upload folder: store image bytes once by their hash, open them by name."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def save(self, data: bytes, formats: frozenset[str] | None = None) -> StoredUpload:
        """Store an image (upright) and return its name; ``ImageError`` if it is not one we take.

        Blocking: run it in a thread. Saving the same bytes twice stores one file.
        """
        if not data:
            raise ImageError("empty file")
        if len(data) > self.max_bytes:
            raise ImageError(f"file is {len(data)} bytes; at most {self.max_bytes} are accepted")
        kind = sniff(data)
        if kind is None or kind not in EXTENSIONS or (formats is not None and kind not in formats):
            raise ImageError("not an image of an accepted type (judged from its bytes)")
        extension = EXTENSIONS[kind]
        name = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        path = self.directory / name
        if not path.exists():
            self._write_atomically(path, _upright(data, kind))
        return StoredUpload(name=name, media_type=MEDIA_TYPES[extension])

    def path_of(self, name: str) -> Path | None:
        """The file of a stored upload, or ``None`` if ``name`` is not one (any other shape too)."""
        if not is_upload_name(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None

    def media_type_of(self, name: str) -> str:
        """The media type a stored upload is served with."""
        return MEDIA_TYPES[name.rsplit(".", 1)[1]]

    def _write_atomically(self, path: Path, data: bytes) -> None:
        # Written beside its final name and renamed into place: a reader never sees half a file,
        # and two requests storing the same photo at once both end with the same whole file.
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def _upright(data: bytes, kind: str) -> bytes:
    """The image re-encoded upright if its EXIF orientation says it is rotated, else unchanged."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in (0, 1):
                return data
            upright = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            if kind == "jpeg":
                upright.save(out, format="JPEG", quality=95)
            else:
                upright.save(out, format=image.format or kind.upper())
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"cannot read this {kind.upper()} image: {error}") from None
