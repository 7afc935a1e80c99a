"""Parsing a form body that was already read within a size cap.

Starlette's parsers read from a stream; the edge reads bodies first (to cap them), so the bytes
are handed back as a one-chunk stream. Callers keep their own error messages.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartParser

FORM_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and fields around a file at its size cap."""


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def parse_multipart(
    headers: Headers, body: bytes, *, max_files: int, max_part_size: int | None = None
) -> FormData:
    """A multipart body's fields and files; raises ``MultiPartException`` when malformed."""
    options = {} if max_part_size is None else {"max_part_size": max_part_size}
    parser = MultiPartParser(headers, _replay(body), max_files=max_files, max_fields=16, **options)
    return await parser.parse()


async def parse_urlencoded(headers: Headers, body: bytes) -> FormData:
    """An ``application/x-www-form-urlencoded`` body's fields."""
    return await FormParser(headers, _replay(body)).parse()
