"""A Pub/Sub subscription held for a process's lifetime: reopened after every loss.

The API node listens on its reply channel, a worker on the cancel channel. Redis pushes the
messages to a subscriber line (``line.py``) whose callback hands each one on, so no task
wakes and no read command is sent per message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from sluiceway.split.connection import BROKER_ERRORS, RECONNECT_S, Broker, stop_tasks
from sluiceway.split.line import RedisLine, pack


class Subscription:
    """Subscribes to ``channel`` whenever ``broker`` is connected; messages go to ``on_message``.

    ``on_lost`` hears of every subscription lost or not opened (Pub/Sub keeps nothing for a
    subscriber that is away, so the owner may need to give up on what it waited for).
    """

    def __init__(
        self,
        broker: Broker,
        channel: str,
        on_message: Callable[[bytes], None],
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._broker = broker
        self._channel = channel
        self._on_message = on_message
        self._on_lost = on_lost
        self.subscribed = asyncio.Event()
        """Set once Redis confirmed the subscription: from then on no message is missed."""
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Hold the subscription from now until :meth:`close`."""
        self._closed.clear()
        self._task = asyncio.create_task(self._hold(), name=f"subscription {self._channel}")

    async def close(self) -> None:
        """Unsubscribe for good."""
        self._closed.set()
        if self._task is not None:
            await stop_tasks([self._task], RECONNECT_S + 1)
            self._task = None

    async def _hold(self) -> None:
        while not self._closed.is_set():
            if not self._broker.connected:  # the owner's loop says when Redis is back
                await self._pause()
                continue
            try:
                line = await RedisLine.open(self._broker.url, on_push=self._pushed)
            except BROKER_ERRORS as error:
                self._lost(error)
                await self._pause()
                continue
            try:
                line.write(pack("SUBSCRIBE", self._channel))
                closed = asyncio.ensure_future(self._closed.wait())
                lost = asyncio.ensure_future(line.wait_lost())
                try:
                    await asyncio.wait({closed, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                    lost.cancel()
            except BROKER_ERRORS:
                pass  # closed as soon as opened: treated below like any loss, and retried
            finally:
                line.close()
                self.subscribed.clear()
            if not self._closed.is_set():
                self._lost(ConnectionError(f"lost the subscription to {self._channel}"))

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), RECONNECT_S)

    def _lost(self, error: BaseException) -> None:
        if self._on_lost is not None:
            self._on_lost(error)

    def _pushed(self, message: Any) -> None:
        kind = message[0] if isinstance(message, list) and len(message) == 3 else None
        if kind == b"message":
            self._on_message(message[2])
        elif kind == b"subscribe":
            self.subscribed.set()
