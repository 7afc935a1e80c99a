"""A worker's probes for orchestrators: ``/healthz``, ``/readyz`` and ``/metrics``.

A small Starlette app on an uvicorn server inside the worker's own event loop, so probes are
answered by the same HTTP stack as the API node's, and a worker that is stuck stops answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

PORTS_TRIED = 64
"""How many ports above SLUICEWAY_WORKER_PORT a worker tries when it is taken: several workers
on one host (the README's scale-out example) each get their own probes, 8001, 8002, ..."""


def probe_app(
    ready: Callable[[], bool],
    registry: CollectorRegistry,
    more_metrics: Callable[[], bytes] = bytes,
) -> Starlette:
    """The probes of a process whose readiness ``ready`` says, with ``registry``'s metrics and
    the exposition text ``more_metrics`` gives (Triton's, ``runtime/triton_metrics.py``)."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    async def metrics(request: Request) -> Response:
        text = generate_latest(registry) + more_metrics()
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn's server, leaving signals to the worker: SIGTERM stops the worker gracefully,
    and the probes only with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Probes:
    """Serves :func:`probe_app` on ``host``:``port`` or the first free port above it."""

    def __init__(
        self,
        ready: Callable[[], bool],
        registry: CollectorRegistry,
        host: str,
        port: int,
        more_metrics: Callable[[], bytes] = bytes,
    ) -> None:
        self._app = probe_app(ready, registry, more_metrics)
        self._host = host
        self._wanted = port
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port: int | None = None
        """The port the probes answer on, once started."""

    async def start(self) -> None:
        """Bind (raising ``OSError`` if no port is free) and serve."""
        sock = _bind(self._host, self._wanted)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            access_log=False,
            log_config=None,  # the process's logging is configured once, by logs.py
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve([sock]), name="worker probes")
        # uvicorn says it started with a flag, not an event: a start-up takes milliseconds.
        while not self._server.started and not self._serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._serving.done():
            self._serving.result()  # start-up failed: raise why

    async def close(self) -> None:
        """Stop answering."""
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await asyncio.wait([self._serving], timeout=2)
        self._server = self._serving = None
        self.port = None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``port``, or the first free port above it (``0``: any free one)."""
    last = min(65535, port + PORTS_TRIED - 1) if port else 0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in range(port, last + 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE:
                raise
            continue
        sock.listen(128)
        sock.setblocking(False)
        if candidate != port:
            logger.info("probe port %d is taken; answering probes on %d", port, candidate)
        return sock
    raise OSError(
        errno.EADDRINUSE, f"probe ports {port}-{last} on {host} are all taken (worker_port)"
    )
