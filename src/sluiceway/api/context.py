"""Per-request context: a request id on every log line and response, and request metrics."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.logs import request_id
from sluiceway.runtime.metrics import Metrics

logger = logging.getLogger("sluiceway.access")


class RequestContext:
    """Pure ASGI middleware: cheaper than ``BaseHTTPMiddleware`` on the hot path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._paths: dict[Any, str] | None = None

    def _route_of(self, scope: Scope) -> str:
        """The matched route's path template: a bounded metric label, unlike the raw path."""
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        if self._paths is None:
            # The router records the matched endpoint in the scope; map it back to its template.
            routes = getattr(scope.get("app"), "routes", [])
            self._paths = {r.endpoint: r.path for r in routes if hasattr(r, "endpoint")}
        return self._paths.get(endpoint, "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
                break
        rid = rid or os.urandom(8).hex()
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            path = self._route_of(scope)
            code = str(status)
            self.metrics.requests.labels(path, scope["method"], code).inc()
            self.metrics.request_seconds.labels(path, code).observe(elapsed)
            if self.access_log:
                logger.info(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed * 1000
                )
            request_id.reset(token)
