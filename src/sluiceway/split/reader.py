"""A worker's blocking read of its partition streams, and the fields of what it reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from sluiceway.split.connection import BROKER_ERRORS, STALLED_S, Broker
from sluiceway.split.line import RedisLine, pack
from sluiceway.split.pauses import within

Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as redis-py returns it: id and fields (``None`` once deleted)."""


class GroupReader:
    """A consumer's blocking XREADGROUP on a line of its own, packed once per stream set.

    A worker under load reads about once per job. redis-py's generic command path (argument
    encoding, pool checkout, response callbacks) cost more worker CPU than the read itself, so
    this sends the command as bytes packed when the partitions or count change, on a
    ``RedisLine``, and takes the reply as hiredis parses it. The line is dedicated so that
    ``CLIENT UNBLOCK`` of its id cuts a blocking read short when ownership changes.
    """

    def __init__(self, url: str, group: str, consumer: str, block_ms: int) -> None:
        self._url = url
        self._group = group
        self._consumer = consumer
        self._block_ms = block_ms
        self._line: RedisLine | None = None
        self._packed: dict[tuple[tuple[str, ...], int, int], bytes] = {}

    @property
    def id(self) -> int | None:
        """The connection's client id, once connected (for ``CLIENT UNBLOCK``)."""
        return self._line.client_id if self._line is not None else None

    async def cut_short(self, broker: Broker) -> None:
        """End a blocking read under way (the partitions to read changed), so the next read
        starts on the new set; sent on ``broker``'s connection, as this one is blocked."""
        if self.id is not None:
            await broker.redis.client_unblock(self.id)

    async def read(
        self, streams: Sequence[str], count: int, block_ms: int | None = None
    ) -> list[tuple[str, bytes, Any]]:
        """New entries of ``streams`` as (stream, entry id, fields), blocking up to
        ``block_ms`` (the reader's own by default; 0: only what waits now, no blocking).

        Raises ``BROKER_ERRORS`` when Redis is lost or stalls (the next read reconnects) and
        ``ResponseError`` for an error reply (NOGROUP after Redis lost the groups).
        """
        if self._line is None or not self._line.connected:
            self.reset()
            self._line = await RedisLine.open(self._url)
        block = self._block_ms if block_ms is None else block_ms
        key = (tuple(streams), count, block)
        command = self._packed.get(key)
        if command is None:
            if len(self._packed) >= 8:  # a helper alternates two reads; ownership moves rarely
                self._packed.clear()
            wait = ("BLOCK", block) if block > 0 else ()  # BLOCK 0 would wait forever
            command = pack(
                "XREADGROUP", "GROUP", self._group, self._consumer, "COUNT", count,
                *wait, "STREAMS", *streams, *([">"] * len(streams)),
            )  # fmt: skip
            self._packed[key] = command
        try:
            # The stall is timed in this process's running time: a read whose jobs came while
            # it was starved or stopped is taken, not dropped with them delivered (``pauses``).
            (reply,) = await within(self._line.send(command, 1), block / 1000 + STALLED_S)
        except BROKER_ERRORS:
            self.reset()
            raise
        if isinstance(reply, ResponseError):
            raise reply
        if not reply:
            return []
        # RESP2 answers a list of [stream, entries] pairs; each entry is [id, flat fields].
        return [
            (as_text(stream), entry_id, fields)
            for stream, entries in reply
            for entry_id, fields in entries
        ]

    def reset(self) -> None:
        """Drop the connection (after an error, or to stop)."""
        line, self._line = self._line, None
        if line is not None:
            line.close()


def entry_field(fields: Any, name: bytes) -> bytes | None:
    """One field of a stream entry, as redis-py parses it (a dict) or as read raw (a flat list).

    ``None`` when the entry was deleted meanwhile (its fields are nil) or lacks the field.
    """
    if fields is None:
        return None
    if isinstance(fields, dict):
        value = fields.get(name)
        return value if isinstance(value, bytes) else None
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            value = fields[index + 1]
            return value if isinstance(value, bytes) else None
    return None


def as_text(value: str | bytes) -> str:
    """A name Redis gave back (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else value
