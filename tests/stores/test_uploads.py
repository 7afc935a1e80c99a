"""The upload folder: content-addressed names, type from the bytes, upright photos, no escape."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from sluiceway.inputs.images import ImageError
from sluiceway.stores.uploads import UploadStore, is_upload_name
from tests.fixtures.images import encoded

FORMATS = frozenset({"png", "jpeg", "gif"})


def picture(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((20, 20, 220), (0, 0, width // 2, height))  # left half blue: shows rotation
    return image


def test_stored_under_the_hash_of_the_bytes_with_the_sniffed_extension(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, max_bytes=1_000_000)
    png = encoded(picture(), "PNG")
    jpeg = encoded(picture(), "JPEG")
    stored_png = store.save(png, FORMATS)
    stored_jpeg = store.save(jpeg, FORMATS)
    assert stored_png.name == hashlib.sha256(png).hexdigest() + ".png"
    assert stored_jpeg.name == hashlib.sha256(jpeg).hexdigest() + ".jpg"
    assert (stored_png.media_type, stored_jpeg.media_type) == ("image/png", "image/jpeg")
    assert (tmp_path / stored_png.name).read_bytes() == png
    assert store.path_of(stored_jpeg.name) == tmp_path / stored_jpeg.name


def test_the_same_photo_twice_is_one_file(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, max_bytes=1_000_000)
    png = encoded(picture(), "PNG")
    assert store.save(png) == store.save(png)
    assert [p.name for p in tmp_path.iterdir()] == [store.save(png).name]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some notes, not a photo", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read"),
    ],
)
def test_bytes_that_are_not_an_image_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    store = UploadStore(tmp_path, max_bytes=1_000_000)
    with pytest.raises(ImageError, match=message):
        store.save(data, FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_size_cap_and_accepted_formats(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, max_bytes=1000)
    with pytest.raises(ImageError, match="at most 1000"):
        store.save(encoded(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG"))
    webp = encoded(picture(), "WEBP")
    with pytest.raises(ImageError, match="accepted type"):
        UploadStore(tmp_path, max_bytes=1_000_000).save(webp, FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_a_photo_taken_rotated_is_stored_upright(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, max_bytes=1_000_000)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    out = io.BytesIO()
    picture(40, 20).save(out, format="JPEG", exif=exif, quality=95)
    stored = store.save(out.getvalue(), FORMATS)
    with Image.open(tmp_path / stored.name) as upright:
        assert upright.size == (20, 40)
        assert upright.getexif().get(0x0112, 1) == 1
        # The blue left half is at the top once turned clockwise.
        red, _, blue = upright.convert("RGB").getpixel((10, 5))  # type: ignore[misc]
        assert blue > 150 and red < 100
    assert stored.name.startswith(hashlib.sha256(out.getvalue()).hexdigest())


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "..",
        "a" * 64 + ".png/../x",
        "A" * 64 + ".png",
        "a" * 63 + ".png",
        "a" * 64 + ".exe",
        "a" * 64 + ".png\x00",
        "/etc/passwd",
        "",
    ],
)
def test_only_names_of_stored_uploads_open(tmp_path: Path, name: str) -> None:
    store = UploadStore(tmp_path / "uploads", max_bytes=1_000_000)
    (tmp_path / "passwd").write_text("secret")
    assert not is_upload_name(name)
    assert store.path_of(name) is None


def test_a_well_formed_name_that_was_never_stored_is_not_found(tmp_path: Path) -> None:
    store = UploadStore(tmp_path, max_bytes=1_000_000)
    assert is_upload_name("b" * 64 + ".gif")
    assert store.path_of("b" * 64 + ".gif") is None
