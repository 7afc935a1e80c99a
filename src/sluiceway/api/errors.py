"""Runtime errors become HTTP responses here, and only here."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from sluiceway.errors import (
    BadInput,
    DeadlineExceeded,
    LogSettingsUnavailable,
    ModelControlError,
    ModelUnavailable,
    Overloaded,
    QuotaExceeded,
    SluicewayError,
    UnknownModel,
    UnknownRegion,
)

logger = logging.getLogger(__name__)


PROTOCOL_PREFIX = "/v2/"
"""Routes of the Open Inference Protocol, whose errors are ``{"error": "..."}``."""


def error_key(path: str) -> str:
    """Where a route's error message goes: ``error`` on the protocol's routes, else ``detail``."""
    return "error" if path.startswith(PROTOCOL_PREFIX) else "detail"


class RequestError(Exception):
    """An edge-level problem with the request itself (status and a message saying what)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its queued work was withdrawn."""


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a known error type, or ``None`` for a bug (which becomes 500): the
    one table, which the gRPC endpoint translates too (``api/oip/grpc_service.py``)."""
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, BadInput):
        return 400
    if isinstance(error, UnknownModel | UnknownRegion):
        return 404
    if isinstance(error, ModelControlError | LogSettingsUnavailable):
        return 409
    if isinstance(error, QuotaExceeded):
        return 429
    if isinstance(error, Overloaded | ModelUnavailable):
        return 503
    if isinstance(error, DeadlineExceeded):
        return 504
    if isinstance(error, ClientGone):
        return 499
    return None


class ErrorResponses:
    """The one table from error types to responses."""

    def __init__(self, retry_after_s: int) -> None:
        self._retry = {"Retry-After": str(retry_after_s)}

    def response_for(self, error: Exception, *, key: str = "detail") -> Response | None:
        """The response for a known error type, or ``None`` for a bug (which becomes 500).

        The message goes under ``key``: ``detail`` (FastAPI's) by default, ``error`` on the
        Open Inference Protocol's ``/v2`` routes.
        """
        if isinstance(error, ClientGone):  # nobody reads it; 499 (nginx's) labels the metrics
            return Response(status_code=499)
        status = status_of(error)
        if status is None:
            return None
        if status == 503 and isinstance(error, ModelUnavailable):
            # An outage answers every request alike: logs.RepeatFilter writes it once per 10 s.
            logger.warning("model unavailable: %s", error)
        return _reply(status, error, key, self._retry if status in (429, 503) else None)

    def install(self, app: FastAPI) -> None:
        """Register the table as ``app``'s exception handlers."""

        async def handle(request: Request, error: Exception) -> Response:
            response = self.response_for(error, key=error_key(request.url.path))
            if response is None:  # registered types always map; this is a bug guard
                raise error
            return response

        async def handle_framework(request: Request, error: Exception) -> Response:
            # The router's own 404 and 405 (no such path, a method the route does not serve):
            # FastAPI answers {"detail": ...}; a protocol client reads "error" under /v2/.
            assert isinstance(error, HTTPException)
            headers = error.headers
            if headers and "Allow" in headers:  # Starlette joins a set: sort it, for one order
                allowed = sorted(method.strip() for method in headers["Allow"].split(","))
                headers = {**headers, "Allow": ", ".join(allowed)}
            if error_key(request.url.path) == "error":
                return JSONResponse(
                    {"error": error.detail}, status_code=error.status_code, headers=headers
                )
            error = HTTPException(error.status_code, error.detail, headers)
            return await http_exception_handler(request, error)

        app.add_exception_handler(RequestError, handle)
        app.add_exception_handler(SluicewayError, handle)
        app.add_exception_handler(ClientGone, handle)
        app.add_exception_handler(HTTPException, handle_framework)


def _reply(
    status: int, error: Exception, key: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({key: str(error)}, status_code=status, headers=headers)


def describe_validation(error: ValidationError) -> str:
    """A pydantic error as one line naming each bad field (the first five)."""
    parts = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
