"""Noticing that a client hung up while its request waits, so its queued work is withdrawn.

The ASGI server tells an app of a lost connection only through ``receive()``, which returns
``http.disconnect``; an endpoint awaiting a model's answer is not told. So while it waits, one
small task waits on ``receive()``; on a disconnect it cancels the endpoint, the dispatcher
withdraws the request's jobs that have not started (a call already running runs on), and the
endpoint answers ``ClientGone`` (499, sent to nobody, counted in the request metrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from sluiceway.api.errors import ClientGone

T = TypeVar("T")


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (after the body has been read); raise ``ClientGone`` if the client
    disconnects first, having cancelled ``work``."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(request.receive())
    gone = False

    def heard(done: asyncio.Future[Any]) -> None:
        nonlocal gone
        if done.cancelled() or done.exception() is not None:
            return
        if done.result().get("type") == "http.disconnect":
            gone = True
            task.cancel()

    watcher.add_done_callback(heard)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone("the client disconnected") from None
        raise
    finally:
        watcher.remove_done_callback(heard)
        watcher.cancel()
