"""``POST /`` routes by content type: JSON to the bird API, forms to the upload page."""

from __future__ import annotations

import httpx


async def test_json_goes_to_the_bird_api(client: httpx.AsyncClient) -> None:
    response = await client.post("/", json={"images": []})
    assert response.json()["errors"] == ["No images provided"]


async def test_other_content_types_are_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/", content=b"hi", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
