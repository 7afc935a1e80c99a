"""The standard gRPC health service, ``grpc.health.v1.Health``, beside the inference service:
what Kubernetes' ``grpc:`` probes, ``grpc_health_probe``, grpcurl, load balancers and gRPC
clients' own health checking call (as Triton serves it). Its messages, stubs and ``Check``
are grpcio-health-checking's.

Names served: ``""`` (the server) and ``inference.GRPCInferenceService`` are ``SERVING`` while
the server is ready, the same condition as ``ServerReady`` and ``GET /v2/health/ready`` (the
dispatcher's ``ready()``), and ``NOT_SERVING`` while it is not and from the start of shutdown
on. Any other name, a model's too, is unknown: ``NOT_FOUND`` to ``Check``, ``SERVICE_UNKNOWN``
to ``Watch`` (a model's readiness is ``ModelReady``'s; one name per model would be a second
way to ask it, and names that come and go with the repository).

Health calls take no inference place, so inference load never refuses them (only the
server's backstop on calls of any kind counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

FOLLOW_S = 0.5
"""How often readiness is looked at for ``Watch`` streams (the dispatcher says no more than
whether it is ready now). ``Check`` looks at each call."""


class ServerHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` following one process's readiness (``ready``) for the server
    and ``names``.

    ``Watch`` is this class's own: the package's, when one of several streams watching the
    same name ends, stops notifying the others (its last-one-out clean-up runs for each;
    grpc/grpc#43403), and its streams never end by themselves, so one open stream would hold
    the server's stop for its whole grace period.
    """

    def __init__(self, ready: Callable[[], bool], names: Iterable[str]) -> None:
        super().__init__()
        self._ready = ready
        self._names = frozenset({health.OVERALL_HEALTH, *names})
        self._serving: bool | None = None
        self._stopping = False
        self._changed = asyncio.Event()
        """Set (and replaced) at each change: what ``Watch`` streams wait on."""
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the server's readiness now, then keep following it."""
        await self.follow()
        self._following = asyncio.create_task(self._keep_following(), name="gRPC health")

    async def stop(self) -> None:
        """``NOT_SERVING`` for good, from the start of shutdown (before the grace period in
        which calls in progress finish): ``Watch`` streams get it and end."""
        self._stopping = True
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(BaseException):  # shutdown goes on, whatever it raised
                await self._following
            self._following = None
        await self.enter_graceful_shutdown()
        self._announce()

    async def follow(self) -> None:
        """Bring every name's status up to the server's readiness now."""
        serving = self._ready()
        if self._stopping or serving == self._serving:
            return
        self._serving = serving
        for name in self._names:
            await self.set(name, SERVING if serving else NOT_SERVING)
        self._announce()

    def status(self, name: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        """The status of ``name`` as last followed."""
        if name not in self._names:
            return SERVICE_UNKNOWN
        return SERVING if self._serving and not self._stopping else NOT_SERVING

    async def _keep_following(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self.follow()
            except Exception:  # one failed look must not leave every Watch stream stale
                logger.exception("gRPC health: reading the server's readiness failed")

    def _announce(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        await self.follow()  # a probe sees readiness now, not as of the last look
        return await super().Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """The status of ``request.service`` now and at each change; at shutdown the last
        (``NOT_SERVING``), then the stream ends."""
        sent = None
        while True:
            changed = self._changed  # taken first: a change while writing is not missed
            status = self.status(request.service)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._stopping:
                return
            await changed.wait()
