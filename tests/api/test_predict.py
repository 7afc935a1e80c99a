"""The upload page's ``POST /predict`` (MISSION.md §3), with the packaged ImageNet model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import skimage
from PIL import Image

from sluiceway.api.predict import ACCEPTED_FORMATS, ERROR_HEADER, UPLOAD_MODEL
from sluiceway.app import create_app
from sluiceway.errors import BadInput
from tests.conftest import app_client, fast_settings
from tests.fixtures.images import encoded, png_bomb, truncated_jpeg

CHELSEA = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
FAILED = {"success": False, "prediction": None, "score": None}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(fast_settings(max_upload_bytes=500_000))) as client:
        yield client


@pytest.mark.parametrize("name", ["chelsea.png", "CHELSEA.PNG", "cat.Png"])
async def test_predicts_the_top_class(http: httpx.AsyncClient, name: str) -> None:
    response = await http.post("/predict", files={"file": (name, CHELSEA, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["prediction"] == "Egyptian_cat"  # Keras's spelling
    assert body["score"] == round(body["score"], 4) and 0.6 < body["score"] < 0.8


@pytest.mark.parametrize(
    ("name", "format"), [("cat.jpg", "JPEG"), ("cat.JPEG", "JPEG"), ("cat.gif", "GIF")]
)
async def test_other_accepted_types(http: httpx.AsyncClient, name: str, format: str) -> None:
    image = Image.open(__import__("io").BytesIO(CHELSEA)).convert("RGB")
    response = await http.post("/predict", files={"file": (name, encoded(image, format))})
    assert response.status_code == 200
    assert response.json()["success"] is True


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"file": ("cat.bmp", CHELSEA)}, ".png, .jpg, .jpeg or .gif"),
        ({"file": ("cat.png", b"plain text, not pixels")}, "not a PNG, JPEG or GIF"),
        ({"file": ("cat.jpg", truncated_jpeg())}, "truncated"),
        ({"file": ("bomb.png", png_bomb())}, "too many pixels"),
        ({"file": ("empty.png", b"")}, "empty"),
        ({"other": ("cat.png", CHELSEA)}, "no file"),
    ],
)
async def test_bad_files_get_400_with_the_contract_body(
    http: httpx.AsyncClient, files: dict[str, tuple[str, bytes]], reason: str
) -> None:
    response = await http.post("/predict", files=files)
    assert response.status_code == 400
    assert response.json() == FAILED
    assert reason in response.headers[ERROR_HEADER]


async def test_no_multipart_body_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/predict", json={"file": "cat.png"})
    assert response.status_code == 400
    assert response.json() == FAILED


async def test_an_upload_over_the_cap_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/predict", files={"file": ("big.png", b"\x89PNG" + bytes(600_000))})
    assert response.status_code == 413
    assert response.json() == FAILED
    assert "limit" in response.headers[ERROR_HEADER]


async def test_get_is_405(http: httpx.AsyncClient) -> None:
    assert (await http.get("/predict")).status_code == 405


async def test_the_shared_image_path_keeps_full_names(http: httpx.AsyncClient) -> None:
    images = http._transport.app.state.services.images  # type: ignore[attr-defined]
    predictions = await images.classify(UPLOAD_MODEL, CHELSEA, 3, formats=ACCEPTED_FORMATS)
    assert len(predictions) == 3 and predictions[0].label == "Egyptian cat"
    with pytest.raises(BadInput, match=r"truncated|cannot"):
        await images.classify(UPLOAD_MODEL, b"GIF89a broken", 3, formats=ACCEPTED_FORMATS)
    with pytest.raises(BadInput, match="not a PNG, JPEG or GIF image"):
        await images.classify(UPLOAD_MODEL, b"BM not a bitmap", 3, formats=ACCEPTED_FORMATS)


async def test_one_decode_thread_serves_concurrent_uploads() -> None:
    settings = fast_settings(max_upload_bytes=500_000, decode_threads=1)
    async with app_client(create_app(settings)) as client:
        good = client.post("/predict", files={"file": ("cat.png", CHELSEA, "image/png")})
        bad = client.post("/predict", files={"file": ("cat.jpg", truncated_jpeg(), "image/jpeg")})
        responses = await asyncio.gather(*[good, bad] * 6)
    assert [r.status_code for r in responses] == [200, 400] * 6
    assert {r.json()["prediction"] for r in responses[::2]} == {"Egyptian_cat"}
    assert all(r.json() == FAILED for r in responses[1::2])
    decoders = [t for t in threading.enumerate() if t.name.startswith("sluiceway-decode")]
    assert len(decoders) >= 1  # the decodes ran in the pool, not the default executor
