"""Serving the hottest routes straight from ASGI.

Under the kiosk load the framework's layers between our middleware and the endpoint (exception
middleware, exit stack, router matching over every route, dependency solving,
request/response wrapping) cost more CPU than the endpoint itself. Routes given here are
matched first and their endpoint called directly: exact paths by one dictionary lookup,
templated paths (``/v2/models/{name}/infer``) by their own pattern, tried only for paths under
their fixed prefix. Errors go through the same ``ErrorResponses`` table as everywhere else
(``{"error": ...}`` on the Open Inference Protocol's ``/v2/`` routes, as its handler does);
every other request goes on to the full app untouched.

A route serves only its own methods: any other method goes on to the app, which answers it
as it answers any route (``405`` with its ``Allow``; ``{"error": ...}`` under ``/v2/``).

``FastApp`` puts these routes, and ``RequestContext``, in front of the whole FastAPI stack:
FastAPI's own layers (its error, telemetry and body-limit middleware, the router's exception
middleware and exit stack) cost a trivial request as much as its endpoint. While FastAPI's
native OpenTelemetry is configured (``enabled()``), every request takes the full stack, so it
is observed as before; that answer is asked at most once a second (``_Recheck``), since asking
costs a few per cent of a trivial request (providers are configured at start-up anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sluiceway.api.context import RequestContext
from sluiceway.api.errors import ErrorResponses, error_key
from sluiceway.runtime.metrics import Metrics


def _never() -> bool:
    return False


class _Recheck:
    """A yes/no question asked again at most every ``every_s`` seconds."""

    def __init__(self, ask: Callable[[], bool], every_s: float = 1.0) -> None:
        self.ask = ask
        self.every_s = every_s
        self._answer = False
        self._until = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._answer = bool(self.ask())
            self._until = now + self.every_s
        return self._answer


class FastRoutes:
    """ASGI middleware answering a few routes itself."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[Route],
        errors: ErrorResponses,
        full_stack: Callable[[], bool] = _never,
    ) -> None:
        self.app = app
        self.errors = errors
        self.full_stack = full_stack
        """Whether a matched request goes through ``app`` all the same (telemetry is on)."""
        self._routes = {route.path: route for route in routes if not route.param_convertors}
        self._templated = [
            (_fixed_prefix(route.path), route) for route in routes if route.param_convertors
        ]
        self._matched: dict[tuple[str, str], tuple[Route, dict[str, Any]]] = {}
        """Templated matches by path and method: one model's requests repeat one path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = self._routes.get(path)
        if route is None:
            route = self._match(scope, path)
        elif route.methods and scope["method"] not in route.methods:
            route = None
        if route is None:
            await self.app(scope, receive, send)
            return
        if self.full_stack():
            await self.app(scope, receive, send)
            return
        _matched(scope, route)
        response: Response | None
        try:
            response = await route.endpoint(Request(scope, receive))
        except Exception as error:
            response = self.errors.response_for(error, key=error_key(path))
            if response is None:
                # What Starlette's ServerErrorMiddleware answers a bug with; the server logs it.
                await _SERVER_ERROR(scope, receive, send)
                raise
        await response(scope, receive, send)

    def _match(self, scope: Scope, path: str) -> Route | None:
        """A templated route serving this path and method; its parameters go in the scope."""
        method = scope["method"]
        known = self._matched.get((path, method))
        if known is not None:
            scope["path_params"] = dict(known[1])
            return known[0]
        route = self._match_anew(scope, path)
        if route is not None:
            if len(self._matched) >= _MAX_MATCHES:  # any name matches: bound what is kept
                self._matched.clear()
            self._matched[(path, method)] = (route, dict(scope["path_params"]))
        return route

    def _match_anew(self, scope: Scope, path: str) -> Route | None:
        for prefix, route in self._templated:
            if not path.startswith(prefix) or scope["method"] not in (route.methods or ()):
                continue
            match = route.path_regex.match(path)
            if match is None:
                continue
            params = match.groupdict()
            for key, value in params.items():
                params[key] = route.param_convertors[key].convert(value)
            scope["path_params"] = params
            return route
        return None


_MAX_MATCHES = 1024


_SERVER_ERROR = PlainTextResponse("Internal Server Error", status_code=500)


class FastApp(FastAPI):
    """FastAPI with ``RequestContext`` and ``FastRoutes`` in front of its whole stack (module
    doc); ``serve_first`` sets them up once the app's routes and handlers are in place."""

    _front: ASGIApp | None = None

    def serve_first(
        self,
        routes: Sequence[Route],
        errors: ErrorResponses,
        metrics: Metrics,
        access_log: bool,
        *,
        fast_routes: bool = True,
    ) -> None:
        """Serve ``routes`` (unless ``fast_routes`` is off) ahead of the stack, and count and
        label every request with ``RequestContext``."""
        full: ASGIApp = super().__call__
        inner = full
        if fast_routes:
            # FastAPI 0.165 has no public "is telemetry on": fastapi.telemetry exports only
            # TelemetryConfig, TelemetryData and get_telemetry_data (per request), and its own
            # NativeTelemetry.enabled() rests on a private provider check. So ask that very
            # method, which FastAPI's __call__ asks too; without it, the fast path always runs.
            telemetry = getattr(getattr(self, "_native_telemetry", None), "enabled", _never)
            inner = FastRoutes(full, routes, errors, full_stack=_Recheck(telemetry))
        self._front = RequestContext(inner, metrics=metrics, access_log=access_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self._front
        if front is None or scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self  # as Starlette sets it: endpoints find the app's state there
        await front(scope, receive, send)


def _matched(scope: Scope, route: Route) -> None:
    # Recorded as routers do, so RequestContext labels metrics by the route's template.
    scope["route"] = route
    scope["endpoint"] = route.endpoint


def _fixed_prefix(template: str) -> str:
    """The part of a path template before its first parameter."""
    return template.split("{", 1)[0]
