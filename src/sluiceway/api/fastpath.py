"""Serving the hottest routes straight from ASGI.

Under the kiosk load the framework's layers between our middleware and the endpoint (exception
middleware, exit stack, router matching, request/response wrapping) cost more CPU than the
endpoint itself. Routes given here are matched by exact path and called directly; errors go
through the same ``ErrorResponses`` table as everywhere else; every other request goes on to
the full app untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sluiceway.api.errors import ErrorResponses


class FastRoutes:
    """ASGI middleware answering a few exact-path routes itself."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], errors: ErrorResponses) -> None:
        self.app = app
        self.errors = errors
        self._routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        # Recorded as routers do, so RequestContext labels metrics by the route's template.
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        response: Response | None
        if route.methods and scope["method"] not in route.methods:
            allow = ", ".join(sorted(route.methods))
            response = PlainTextResponse("Method Not Allowed", 405, headers={"Allow": allow})
        else:
            try:
                response = await route.endpoint(Request(scope, receive))
            except Exception as error:
                response = self.errors.response_for(error)
                if response is None:
                    raise
        await response(scope, receive, send)
