"""What the HTTP edge answers by itself, without the app: a refusal's bytes and the busy app.

``edge.py`` holds ``EdgeProtocol``, which reads requests, keeps their clocks and decides when a
request is refused; what it then answers is built here, so that module holds the reading and
the timing only. Both answers are JSON ``{"detail": ...}``, as the app's own errors are.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from sluiceway.edge_limits import Edge


def refusal(status: int, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole response, written straight to the transport (no app runs for it)."""
    body = orjson.dumps({"detail": message})
    head = [STATUS_LINE[status]]
    for name, value in [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]:
        head += [name, b": ", value, b"\r\n"]
    return b"".join([*head, b"\r\n", body])


def busy_app(edge: Edge, reason: str, message: str, close: bool) -> Any:
    """An ASGI app answering ``503`` + ``Retry-After`` in place of the real one; ``close``: with
    ``Connection: close``. The refusal is counted when it answers."""
    headers = [(b"retry-after", str(edge.limits.retry_after_s).encode())]
    if close:
        headers.append((b"connection", b"close"))
    body = orjson.dumps({"detail": f"server busy: {message}"})
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def busy(_: Any, __: Any, send: Any) -> None:
        edge.refused(reason, 503)
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return busy
