"""``POST /``: JSON to the bird API; a form, an empty body or no-type text to the upload page."""

from __future__ import annotations

import httpx
import pytest


async def test_json_goes_to_the_bird_api(client: httpx.AsyncClient) -> None:
    response = await client.post("/", json={"images": []})
    assert response.json()["errors"] == ["No images provided"]


async def test_other_content_types_are_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/", content=b"hi", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


async def test_json_without_a_content_type_goes_to_the_bird_api(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/", content=b' {"images": [], "k": 3}')
    assert response.status_code == 200
    assert response.json()["errors"] == ["No images provided"]


async def test_json_by_type_with_no_body_is_still_the_bird_api(client: httpx.AsyncClient) -> None:
    response = await client.post("/", headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json()["errors"] == ["No images provided"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # what ``requests.post(url)`` sends: no type, no body
        {"content": b"file=cat.jpg"},  # no type, not JSON
        {"content": b"", "headers": {"content-type": "text/plain"}},  # any type, empty
    ],
)
async def test_a_post_with_no_json_is_the_upload_form_and_goes_back(
    client: httpx.AsyncClient, kwargs: dict[str, object]
) -> None:
    response = await client.post("/", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 302
    assert response.headers["location"] == "/?notice=no-file"
    page = await client.get(response.headers["location"])
    assert page.status_code == 200 and "Choose a photo first" in page.text
