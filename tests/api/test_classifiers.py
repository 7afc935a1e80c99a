"""The native classifier API: ``GET /v1/models`` and ``POST /v1/models/{model}/classify``."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import skimage

from sluiceway.app import create_app
from tests.conftest import app_client
from tests.fixtures.external import GALLINULE_PHOTO, require
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import image_settings, png_bomb

COFFEE = (Path(skimage.__file__).parent / "data" / "coffee.png").read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def http(photos_server: FileServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The ImageNet model is packaged; the birds model is not needed here (and not fetchable)."""
    settings = image_settings(
        photos_server, tmp_path, birds_model_url=photos_server.url("status/404")
    )
    async with app_client(create_app(settings)) as client:
        yield client


async def test_the_model_list_shows_the_image_classifiers_and_their_inputs(
    http: httpx.AsyncClient,
) -> None:
    models = {m["name"]: m for m in (await http.get("/v1/models")).json()["models"]}
    assert sorted(models) == ["birds", "caption", "imagenet", "knn"]
    classifiers = sorted(name for name, model in models.items() if "classify" in model)
    assert classifiers == ["birds", "imagenet"]
    assert models["birds"]["image"] == {"size": 224, "layout": "NHWC", "dtype": "uint8"}
    assert models["imagenet"]["classify"] == "/v1/models/imagenet/classify"
    assert models["imagenet"]["state"] == "READY" and models["imagenet"]["builtin"] is True


async def test_classifies_base64_and_data_urls(http: httpx.AsyncClient) -> None:
    images = [b64(COFFEE), f"data:image/png;base64,{b64(COFFEE)}"]
    response = await http.post("/v1/models/imagenet/classify", json={"images": images, "k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "imagenet"
    for result in body["results"]:
        assert result["predictions"][0]["label"] == "espresso"
        assert len(result["predictions"]) == 2


async def test_any_classifier_by_name(birds_server: FileServer, model_cache: Path) -> None:
    gallinule = require(GALLINULE_PHOTO).read_bytes()
    async with app_client(create_app(image_settings(birds_server, model_cache))) as http:
        response = await http.post("/v1/models/birds/classify", json={"images": [b64(gallinule)]})
    assert response.json()["results"][0]["predictions"][0]["label"] == "Porphyrio martinicus"


async def test_bad_images_get_their_own_error(http: httpx.AsyncClient) -> None:
    images = [b64(COFFEE), "%%% not base64", b64(b"hello"), b64(png_bomb())]
    response = await http.post("/v1/models/imagenet/classify", json={"images": images, "k": 1})
    assert response.status_code == 200
    results = response.json()["results"]
    assert "predictions" in results[0]
    assert results[1]["error"].startswith("invalid base64")
    assert "not an image" in results[2]["error"]
    assert "too many pixels" in results[3]["error"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"images": []}, 422),
        ({"images": ["x"], "k": 0}, 422),
        ({"images": ["x"], "k": 21}, 422),
        ({"images": ["x"], "extra": 1}, 422),
        ({"images": ["x"] * 65}, 413),
    ],
)
async def test_bad_requests(http: httpx.AsyncClient, body: object, status: int) -> None:
    response = await http.post("/v1/models/imagenet/classify", json=body)
    assert response.status_code == status
    assert response.json()["detail"]


async def test_unknown_model_is_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/models/knn/classify", json={"images": ["x"]})
    assert response.status_code == 404
