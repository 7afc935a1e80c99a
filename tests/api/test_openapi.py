"""The OpenAPI document is valid and describes every route the app serves."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from openapi_spec_validator import validate
from starlette.routing import Mount

from sluiceway.app import create_app
from tests.conftest import fast_settings


def served(routes: Iterable[Any]) -> Iterator[tuple[str, str]]:
    """(path template, method) of each route, through included routers and mounts."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.160 nests routers
        if included is not None:
            yield from served(included.routes)
        elif isinstance(route, Mount):
            yield route.path_format, "get"
        elif getattr(route, "include_in_schema", True):
            for method in getattr(route, "methods", None) or ():
                if method != "HEAD":
                    yield route.path_format, method.lower()


async def test_the_document_validates_and_covers_every_route(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    validate(document)
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    routes = set(served(create_app(fast_settings()).routes))
    assert ("/classify", "get") in routes and ("/static/{path}", "get") in routes
    assert routes == documented


async def test_routes_that_read_their_own_bodies_document_them(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method, media in (
        ("/classify", "get", "application/json"),
        ("/", "post", "multipart/form-data"),
        ("/predict", "post", "multipart/form-data"),
        ("/feedback", "post", "application/x-www-form-urlencoded"),
        ("/v1/models/{model}/classify", "post", "application/json"),
        ("/api/v1/predictions", "post", "application/json"),
    ):
        assert media in paths[path][method]["requestBody"]["content"], (path, method)
    assert {"400", "413", "422", "503", "504", "408", "431"} <= set(
        paths["/classify"]["post"]["responses"]
    )
