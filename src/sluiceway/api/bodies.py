"""Reading request bodies within a size cap."""

from __future__ import annotations

from starlette.requests import Request

from sluiceway.api.errors import RequestError


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
