"""The HTTP edge: uvicorn's httptools protocol with the limits a public server needs.

uvicorn with httptools is the fastest HTTP/1.1 stack we measured for the kiosk's small
requests, but it bounds nothing a hostile or careless client controls: header size (its h11
limit does not apply to httptools), header count, the time to send headers or a body, or the
number of connections and requests. ``EdgeProtocol`` adds these to it and answers each as
HTTP says, the way nginx and Apache's mod_reqtimeout do:

- a request head over ``max_header_bytes`` or with more than ``max_headers`` fields: ``431``;
- a head not received within ``header_timeout_s`` of the connection opening (first request)
  or of its first byte (later requests): ``408``; a connection that never sends a byte is
  closed silently, like an idle keep-alive connection;
- a body that does not arrive within ``body_timeout_s`` plus one second per
  ``body_min_rate`` bytes received (mod_reqtimeout's ``body=...,MinRate=...``): ``408``;
- more than ``max_connections`` open connections or ``max_requests`` requests in flight in
  this process: ``503`` with ``Retry-After``.

A timer that fires late because the process was paused (stopped, frozen) lets the loop read
its sockets before it acts, and so does uvicorn's keep-alive timer: a client whose bytes
arrived in time is not cut off for our pause.

Each refusal is counted in ``sluiceway_edge_refusals_total{reason,status}``; the answers
themselves are built in ``edge_answers.py``. Bodies over a route's size cap are refused by the
route (``413``), since the caps differ per route. Timers are armed only while a request is
incomplete after a read, so a request that arrives in one read (every kiosk request) costs no
timer at all.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any, ClassVar, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from sluiceway.config import Settings
from sluiceway.edge_answers import busy_app, refusal
from sluiceway.edge_limits import EDGE_STATUS, STATE_KEY, Edge, EdgeLimits
from sluiceway.edge_writes import HeadHold

logger = logging.getLogger(__name__)

# A timer this late found the process paused (stopped, frozen) rather than the client slow:
# the event loop can run due timers before it reads the sockets, where the bytes the client
# sent meanwhile wait. Such a timer waits a moment more, once, so that they are read first.
_LATE_S = 0.1
_GRACE_S = 0.05

# Where a connection is in reading its current request.
_FIRST = 0  # opened, no byte of its first request yet
_HEAD = 1  # reading a request's line and headers
_BODY = 2  # headers done, body still arriving
_IDLE = 3  # the last request was read whole; keep-alive idling is uvicorn's business


class _Pieces:
    """A request body's pieces as reads bring them, in place of uvicorn's ``bytearray``: that
    copies each piece in, then out again (``bytes(...)``) when the app receives; here a lone
    piece goes to the app as it is and several are joined once. For a 600 KB tensor body
    that is one or two copies fewer on the event loop."""

    __slots__ = ("_pieces", "_size")

    def __init__(self, first: bytes | bytearray = b"") -> None:
        self._pieces: list[bytes] = [bytes(first)] if first else []
        self._size = len(first)

    def __iadd__(self, piece: bytes) -> _Pieces:
        self._pieces.append(piece)
        self._size += len(piece)
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self._pieces)  # one piece: that very object, uncopied


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the edge refuses."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, time and concurrency limits (module doc)."""

    _fallback: ClassVar[Edge | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        edge = app_state.get(STATE_KEY)
        self.edge = edge if isinstance(edge, Edge) else self._default_edge()
        self.limits = self.edge.limits
        self._phase = _FIRST
        self._deadline = 0.0  # of the head: _FIRST and _HEAD
        self._timer: TimerHandle | None = None
        # The last timer given a grace (once: an overloaded loop, late on every turn, must not
        # keep a slow client's connection open for ever).
        self._grace: TimerHandle | None = None
        self._head_bytes = 0  # of reads that ended inside the head
        self._head_spans_reads = False
        self._new_head = False  # a request began in the current read
        self._new_body = False  # a request's headers ended in the current read
        self._read_size = 0
        self._body_started = 0.0
        self._body_bytes = 0
        self._refusal: tuple[str, int, str] | None = None
        self._writes: HeadHold | None = None

    @classmethod
    def _default_edge(cls) -> Edge:
        """Limits from settings for an app that did not hand its own (nothing counted)."""
        if cls._fallback is None:
            cls._fallback = Edge(EdgeLimits.from_settings(Settings()), None)
        return cls._fallback

    # Connection events.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = HeadHold(transport, self)
        self._deadline = self.loop.time() + self.limits.header_timeout_s
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        # Hot path: every request comes through here. The parser callbacks only set flags;
        # clocks are read and timers armed only for a request still incomplete after a read.
        self._unset_keepalive_if_required()
        self._new_head = self._new_body = False
        self._read_size = size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is not None:  # a callback of ours stopped the parser
                self._refuse(*self._refusal)
            else:
                self._refuse("malformed", 400, "invalid HTTP request")
            return
        phase = self._phase
        if phase == _IDLE:
            return
        if phase == _HEAD:
            self._head_spans_reads = True
            if self._new_head:  # its part of this read is unknown (an earlier request's too)
                self._deadline = self.loop.time() + self.limits.header_timeout_s
            else:
                self._head_bytes += size  # this whole read belongs to the unfinished head
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse("header_too_large", 431, self._too_large())
                return
        elif phase == _BODY and self._new_body:
            self._body_started = self.loop.time()
        timer = self._timer
        if timer is None or timer.when() > self._due():  # a body may be due before its head
            if timer is not None:
                timer.cancel()
            self._arm()

    # Parser callbacks.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first request's clock runs from the connection; a later one's from now.
        self._new_head = self._phase != _FIRST
        self._phase = _HEAD
        self._head_bytes = 0
        self._head_spans_reads = False

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            self._stop("too_many_headers", 431, f"more than {limits.max_headers} headers")
        if self._head_spans_reads or self._read_size > limits.max_header_bytes:
            # The head spanned reads, or this read alone could hold an oversized one: measure.
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > limits.max_header_bytes:
                self._stop("header_too_large", 431, self._too_large())
        self._phase = _BODY
        self._new_body = True
        self._body_bytes = 0
        busy: tuple[str, str, bool] | None = None
        if len(self.connections) > limits.max_connections:
            busy = ("connection_limit", "too many connections", True)
        elif len(self.tasks) >= limits.max_requests:
            busy = ("request_limit", "too many requests in progress", False)
        if busy is None:
            super().on_headers_complete()
        else:
            app = self.app
            self.app = busy_app(self.edge, *busy)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        # The new cycle writes its response through HeadHold: head and body in one write.
        self.cycle.transport = cast(asyncio.Transport, self._writes)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        pending: Any = cycle.body
        if type(pending) is bytearray:  # uvicorn's buffer: a fresh one after every receive()
            pending = _Pieces(pending)
            # uvicorn only takes its len() and bytes() (``receive``), and we add to it.
            cycle.body = pending
        pending += body
        if len(pending) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    # Limits.
    def _too_large(self) -> str:
        return f"request headers over {self.limits.max_header_bytes} bytes"

    def _stop(self, reason: str, status: int, message: str) -> None:
        self._refusal = (reason, status, message)
        raise _Refused(message)

    def _due(self) -> float:
        if self._phase == _BODY:
            limits = self.limits
            return (
                self._body_started + limits.body_timeout_s + self._body_bytes / limits.body_min_rate
            )
        return self._deadline

    def _arm(self) -> None:
        self._timer = self.loop.call_at(self._due(), self._on_timer)

    def _on_timer(self) -> None:
        timer, self._timer = self._timer, None
        if self.transport.is_closing() or self._phase == _IDLE:
            return
        now = self.loop.time()
        if self._paused_past(timer):
            self._timer = self._grace = self.loop.call_at(now + _GRACE_S, self._on_timer)
            return
        if self._phase == _BODY and self.flow.read_paused:
            # We stopped reading (the app is behind, or a pipelined request waits): the client
            # cannot send, so its clock starts again when we read.
            self._body_started, self._body_bytes = now, 0
        if now < self._due():
            self._arm()
        elif self._phase == _FIRST:
            self.edge.refused("idle_connection", None)
            self.transport.close()
        elif self._phase == _HEAD:
            timeout = self.limits.header_timeout_s
            self._refuse("header_timeout", 408, f"request headers not received in {timeout:g} s")
        else:
            self._body_timed_out()

    def timeout_keep_alive_handler(self) -> None:
        """Close an idle keep-alive connection, unless the process was paused past its time:
        then the client's next request may be waiting unread, and is read first."""
        if self._paused_past(self.timeout_keep_alive_task):
            self.timeout_keep_alive_task = self._grace = self.loop.call_later(
                _GRACE_S, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def _paused_past(self, timer: TimerHandle | None) -> bool:
        """Whether ``timer``, firing now, found the process paused past its time (and has not
        had its grace yet)."""
        return (
            timer is not None
            and timer is not self._grace
            and self.loop.time() - timer.when() > _LATE_S
        )

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        message = (
            f"request body not received in time ({self._body_bytes} bytes in "
            f"{self.loop.time() - self._body_started:.0f} s)"
        )
        self.edge.refused("body_timeout", 408)
        logger.debug("edge: %s from %s", message, self.client)
        if not cycle.response_started:
            cast(dict[str, Any], cycle.scope)[EDGE_STATUS] = 408
            self.transport.write(refusal(408, message, [(b"connection", b"close")]))
        # The app's next receive() says the client is gone, and anything it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _refuse(self, reason: str, status: int, message: str) -> None:
        """Answer ``status`` for the request being read and close the connection."""
        self.edge.refused(reason, status)
        logger.debug("edge: %d %s from %s", status, message, self.client)
        if self.cycle is None or self.cycle.response_complete:  # never inside another answer
            self.transport.write(refusal(status, message, [(b"connection", b"close")]))
        self.transport.close()
