"""Serving the hottest routes straight from ASGI.

Under the kiosk load the framework's layers between our middleware and the endpoint (exception
middleware, exit stack, router matching over every route, dependency solving,
request/response wrapping) cost more CPU than the endpoint itself. Routes given here are
matched first and their endpoint called directly: exact paths by one dictionary lookup,
templated paths (``/v2/models/{name}/infer``) by their own pattern, tried only for paths under
their fixed prefix. Errors go through the same ``ErrorResponses`` table as everywhere else
(``{"error": ...}`` on the Open Inference Protocol's ``/v2/`` routes, as its handler does);
every other request goes on to the full app untouched.

A templated route serves only its own methods: any other method goes on to the app, which
answers it as it answers any route (``405`` with its ``Allow``).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sluiceway.api.errors import ErrorResponses, error_key


class FastRoutes:
    """ASGI middleware answering a few routes itself."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], errors: ErrorResponses) -> None:
        self.app = app
        self.errors = errors
        self._routes = {route.path: route for route in routes if not route.param_convertors}
        self._templated = [
            (_fixed_prefix(route.path), route) for route in routes if route.param_convertors
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = self._routes.get(path)
        response: Response | None
        if route is not None:
            if route.methods and scope["method"] not in route.methods:
                allow = ", ".join(sorted(route.methods))
                response = PlainTextResponse("Method Not Allowed", 405, headers={"Allow": allow})
                _matched(scope, route)
                await response(scope, receive, send)
                return
        else:
            route = self._match(scope, path)
            if route is None:
                await self.app(scope, receive, send)
                return
        _matched(scope, route)
        try:
            response = await route.endpoint(Request(scope, receive))
        except Exception as error:
            response = self.errors.response_for(error, key=error_key(path))
            if response is None:
                raise
        await response(scope, receive, send)

    def _match(self, scope: Scope, path: str) -> Route | None:
        """A templated route serving this path and method; its parameters go in the scope."""
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


def _matched(scope: Scope, route: Route) -> None:
    # Recorded as routers do, so RequestContext labels metrics by the route's template.
    scope["route"] = route
    scope["endpoint"] = route.endpoint


def _fixed_prefix(template: str) -> str:
    """The part of a path template before its first parameter."""
    return template.split("{", 1)[0]
