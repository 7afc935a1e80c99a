"""Per-request context: a request id on every log line and response, and request metrics."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluiceway.edge_limits import EDGE_STATUS
from sluiceway.logs import request_id
from sluiceway.runtime.metrics import Metrics

logger = logging.getLogger("sluiceway.access")

UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404): one label, whatever the path."""

CLIENT_CLOSED = 499
"""Status counted for a request whose client went away before its answer (nginx's code)."""


def client_address(connection: HTTPConnection) -> str:
    """Who sent a request, for per-client limits and quotas: the peer's address (the forwarded
    one when uvicorn trusts the proxy, ``--forwarded-allow-ips``)."""
    return connection.client.host if connection.client else "unknown"


_REQUEST_ID = re.compile(rb"[!-~]{1,64}")
"""A caller's request id is echoed only if it is 1-64 visible ASCII characters: it goes into a
response header and every log line, where control characters would inject or break them."""


def route_template(scope: Scope, paths: dict[Any, str]) -> str:
    """The matched route's path template (``/display/{name}``): a bounded label, not the path.

    Routers put the matched route in ``scope["route"]`` (Starlette since 0.4x, every route
    kind of FastAPI since 0.160, where routers are no longer flattened into ``app.routes``);
    older versions leave only ``scope["endpoint"]``, mapped back through ``paths``.
    """
    template = getattr(scope.get("route"), "path_format", None)
    if isinstance(template, str):
        return template
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return UNMATCHED
    return paths.get(endpoint, UNMATCHED)


def endpoint_paths(routes: list[Any]) -> dict[Any, str]:
    """Each route's endpoint (or mounted app) to its path template, for ``route_template``."""
    paths: dict[Any, str] = {}
    for route in routes:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not isinstance(template, str):
            continue
        for target in (getattr(route, "endpoint", None), getattr(route, "app", None)):
            if target is not None:
                paths.setdefault(target, template)
    return paths


class RequestContext:
    """Pure ASGI middleware: cheaper than ``BaseHTTPMiddleware`` on the hot path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._paths: dict[Any, str] | None = None

    def _route_of(self, scope: Scope) -> str:
        if self._paths is None:
            self._paths = endpoint_paths(list(getattr(scope.get("app"), "routes", [])))
        return route_template(scope, self._paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _REQUEST_ID.fullmatch(value):
                    rid = value.decode("ascii")
                break
        # Not os.urandom: a system call per request, for an id that needs no secrecy.
        rid = rid or f"{random.getrandbits(64):016x}"
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
        except ClientDisconnect:
            # Not our failure and nothing to answer: the server drops any late response.
            status = scope.get(EDGE_STATUS, CLIENT_CLOSED)
            logger.debug(
                "%s %s: the client went away before the answer", scope["method"], scope["path"]
            )
        finally:
            elapsed = time.perf_counter() - started
            count, seconds = self.metrics.request_children(
                self._route_of(scope), scope["method"], status
            )
            count.inc()
            seconds.observe(elapsed)
            if self.access_log:
                logger.info(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed * 1000
                )
            request_id.reset(token)
