"""Reading request bodies within a size cap: raw bytes, forms, and a form's uploaded file.

Every endpoint reads its body here. Bodies are read whole (to cap them) before Starlette's form
parsers see them, so the bytes are handed back to a parser as a one-chunk stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from sluiceway.api.errors import RequestError

FORM_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and fields around a file at its size cap."""
DRAIN_FACTOR = 4
"""With ``drain``, an oversized body is read (and dropped) up to this many times the cap first."""

MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Upload:
    """A file from a form: the name the client gave it (never a path here) and its bytes."""

    filename: str
    data: bytes


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case; ``""`` when none is sent."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def size_text(size: int) -> str:
    """A byte count the way a person reads it: ``16 KB``, ``10.5 MB``."""
    if size < 1024 * 1024:
        return f"{size / 1024:.1f}".removesuffix(".0") + " KB"
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


async def read_body(request: Request, limit: int, *, drain: bool = False) -> bytes:
    """The whole body, or 413 once it is known to exceed ``limit`` bytes.

    With ``drain`` the excess is read (up to ``DRAIN_FACTOR`` times the cap) before answering:
    a browser that is still sending when the server answers shows a reset connection instead of
    the page saying the file is too large.
    """
    ceiling = limit * DRAIN_FACTOR if drain else limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > ceiling:
        raise RequestError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > ceiling:
            break
    if size > limit:
        raise RequestError(413, f"body is over the {limit}-byte limit")
    return b"".join(chunks)


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """``read_body`` (without ``drain``) straight from the ASGI ``receive``, for an endpoint
    that found ``Content-Length`` (``declared``) in its own pass over the headers and whose body
    nothing else reads: no ``Headers`` and no stream generator per request, which cost a
    trivial inference request a few per cent. A client gone is ``ClientDisconnect``, as
    ``Request.stream`` raises it."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    if size > limit:
        raise RequestError(413, f"body is over the {limit}-byte limit")
    return b"".join(chunks)


async def read_form(
    request: Request, limit: int, *, max_files: int, drain: bool = False
) -> FormData:
    """A urlencoded or multipart body of at most ``limit`` bytes; an empty body is an empty form.

    400 when the form is malformed, 415 when the body is not a form at all.
    """
    body = await read_body(request, limit, drain=drain)
    content_type = media_type(request)
    try:
        if content_type == MULTIPART:
            return await _parse_multipart(request.headers, body, max_files, limit)
        if content_type == URLENCODED:
            return await FormParser(request.headers, _replay(body)).parse()
    except MultiPartException as error:
        raise RequestError(400, f"malformed form: {error.message}") from None
    if not body:
        return FormData()
    raise RequestError(415, f"send a form ({MULTIPART} or {URLENCODED})")


async def read_upload(
    request: Request, max_bytes: int, *, field: str = "file", drain: bool = False
) -> Upload | None:
    """The form's file in ``field``, or ``None`` when the form carries none (or is no form).

    413 when the file is over ``max_bytes``; 400 when the form is malformed.
    """
    if media_type(request) != MULTIPART:
        return None  # only a multipart form can carry a file
    form = await read_form(request, max_bytes + FORM_OVERHEAD, max_files=4, drain=drain)
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            return None
        data = await upload.read()
    finally:
        await form.close()
    if not upload.filename and not data:
        return None  # a browser sends an empty, nameless part when nothing was chosen
    if len(data) > max_bytes:
        raise RequestError(
            413, f"the file is {size_text(len(data))}; at most {size_text(max_bytes)} is accepted"
        )
    return Upload(upload.filename or "", data)


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _parse_multipart(headers: Headers, body: bytes, max_files: int, limit: int) -> FormData:
    parser = MultiPartParser(
        headers, _replay(body), max_files=max_files, max_fields=16, max_part_size=limit
    )
    return await parser.parse()
