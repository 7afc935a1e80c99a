"""The OpenAPI document: every route, its body and every status it can answer.

FastAPI describes a route from its signature, and most of ours read their own bodies (to cap
their size, keep the contracts' exact error shapes, or skip the framework on the hot path), so
its document names neither their bodies nor their error statuses, and leaves out the kiosk's
routes and the static files. This package completes it: ``schemas`` holds the bodies' and
answers' schemas, ``routes`` the contracts' routes, ``protocol`` the Open Inference
Protocol's, and ``parts`` the pieces they are built from. The fuzz tests
(``tests/api/test_fuzz.py``) hold the server to it: an undocumented status is a failure.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sluiceway.api.openapi.parts import EDGE
from sluiceway.api.openapi.protocol import PROTOCOL
from sluiceway.api.openapi.routes import ROUTES
from sluiceway.api.openapi.schemas import SCHEMAS

__all__ = ["OPERATIONS", "SCHEMAS", "document", "install"]

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {**ROUTES, **PROTOCOL}
"""Every documented (path, method): what the document says of it beyond FastAPI."""


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of ``app`` completed with ``OPERATIONS`` and the edge's statuses."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
    for (path, method), described in OPERATIONS.items():
        operation = paths.setdefault(path, {}).setdefault(method, {})
        operation.update(copy.deepcopy(described))
    for operations in paths.values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, answer in EDGE.items():
                responses.setdefault(status, answer)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(copy.deepcopy(SCHEMAS))
    return schema


def install(app: FastAPI) -> None:
    """Serve ``document(app)`` as the app's ``/openapi.json``, built once on first use."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(document(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
