"""Runtime errors become HTTP responses here, and only here."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sluiceway.runtime.errors import BadInput, DeadlineExceeded, ModelUnavailable, Overloaded

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """An edge-level problem with the request itself (status and a message saying what)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def install(app: FastAPI, retry_after_s: int) -> None:
    """Register one handler per error type on ``app``."""
    retry = {"Retry-After": str(retry_after_s)}

    def reply(status: int, error: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)

    async def request_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestError)
        return reply(error.status, error)

    async def bad_input(_: Request, error: Exception) -> JSONResponse:
        return reply(400, error)

    async def overloaded(_: Request, error: Exception) -> JSONResponse:
        return reply(503, error, retry)

    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        logger.warning("model unavailable: %s", error)
        return reply(503, error, retry)

    async def deadline(_: Request, error: Exception) -> JSONResponse:
        return reply(504, error)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(BadInput, bad_input)
    app.add_exception_handler(Overloaded, overloaded)
    app.add_exception_handler(ModelUnavailable, unavailable)
    app.add_exception_handler(DeadlineExceeded, deadline)
