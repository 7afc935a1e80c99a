"""The pieces every documented operation is built from: media types, schema references,
answers and bodies, and the statuses many routes share (a full queue, a passed deadline, the
HTTP edge)."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
HTML = "text/html"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"

DETAIL = {"$ref": "#/components/schemas/Detail"}


def ref(name: str) -> dict[str, str]:
    """A reference to the schema ``name`` of ``schemas.SCHEMAS``."""
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, *contents: tuple[str, Any]) -> dict[str, Any]:
    """A response: what it means, and its schema per media type."""
    return {
        "description": description,
        "content": {media: {"schema": schema} for media, schema in contents},
    }


def detail(description: str) -> dict[str, Any]:
    """An error response in FastAPI's ``{"detail": ...}`` shape."""
    return answer(description, (JSON, DETAIL))


def body(*contents: tuple[str, Any], required: bool = False) -> dict[str, Any]:
    """A request body: its schema per media type."""
    return {
        "required": required,
        "content": {media: {"schema": schema} for media, schema in contents},
    }


BUSY = detail("the model's queue is full or it is unavailable (with Retry-After)")
LATE = detail("the request's deadline passed")
EDGE = {
    "408": detail("headers or body not received in time (the HTTP edge)"),
    "431": detail("request headers too large or too many (the HTTP edge)"),
    "503": detail("too many connections or requests in progress (the HTTP edge; Retry-After)"),
}
"""Statuses the HTTP edge (``sluiceway.edge``) may answer for any route before it runs."""
