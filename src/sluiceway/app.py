"""The composition root: settings → model kinds → dispatcher → FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from sluiceway import __version__
from sluiceway.api import (
    captions,
    classifiers,
    errors,
    feedback,
    kiosk,
    oip,
    openapi,
    ops,
    predict,
    repository,
    root,
    web,
)
from sluiceway.api.fastpath import FastApp
from sluiceway.config import Settings
from sluiceway.edge_limits import STATE_KEY, Edge, EdgeLimits
from sluiceway.image_classifiers import ImageClassifiers
from sluiceway.inputs.fetch import ImageFetcher
from sluiceway.kinds import build_kinds
from sluiceway.registry import ModelRegistry
from sluiceway.repository_poll import RepositoryPoller
from sluiceway.runtime.dispatch import Dispatcher, LocalDispatcher, ModelHost
from sluiceway.runtime.memory import settle_heap
from sluiceway.runtime.metrics import Metrics
from sluiceway.services import Services
from sluiceway.shared_memory import SharedMemoryRegions
from sluiceway.split.dispatcher import RedisDispatcher
from sluiceway.split.fleet import Fleet

if TYPE_CHECKING:
    from sluiceway.api.oip.grpc_service import GrpcEndpoint

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    dispatcher: Dispatcher | None = None,
    *,
    fast_routes: bool = True,
) -> FastAPI:
    """Build the app; without arguments, settings come from ``SLUICEWAY_*`` variables.

    ``fast_routes=False`` serves every route through FastAPI's router (``api/fastpath.py``
    serves the hottest ones ahead of it), to compare the two.
    """
    settings = settings or Settings()
    metrics = Metrics()
    fleet = None
    if dispatcher is None and settings.broker_url:
        # Split mode: models run on workers; the node is ready once each model has one.
        routes = [kind.name for kind in build_kinds(settings)]
        dispatcher = RedisDispatcher(settings, metrics, routes=routes)
        # Repository models: what the workers report of them, their loads and unloads.
        fleet = Fleet(settings, dispatcher.saw_workers)
    if dispatcher is None:
        budget = int(settings.model_cache_budget_mb * 1024 * 1024)
        dispatcher = LocalDispatcher(
            build_kinds(settings), budget, metrics, inline_below_s=settings.inline_call_us / 1e6
        )
    registry = ModelRegistry(dispatcher, settings, fleet)
    poller = _repository_poller(settings, registry, dispatcher, fleet)
    services = Services(
        settings=settings,
        dispatcher=dispatcher,
        metrics=metrics,
        images=ImageClassifiers(dispatcher, settings, registry.image_inputs),
        registry=registry,
        shared_memory=(
            SharedMemoryRegions(settings.max_body_bytes) if settings.allow_client_shm else None
        ),
    )
    fetcher = ImageFetcher.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await services.dispatcher.start()
        if fleet is not None:
            await fleet.start()
        if poller is not None:
            await poller.baseline()
        await services.registry.start()
        grpc = _grpc_endpoint(services)
        if grpc is not None:
            await grpc.start()
        if poller is not None:  # last: nothing after it can fail start-up and leave it running
            poller.start()
        # Everything built so far lives as long as the process: out of the collector's way.
        settle_heap()
        logger.info("sluiceway %s serving models %s", __version__, services.dispatcher.models())
        try:
            # The lifespan state reaches the server's protocol (``sluiceway.edge``) as well as
            # each request: that is how the edge gets this app's limits and metrics.
            yield {STATE_KEY: Edge(EdgeLimits.from_settings(settings), metrics)}
        finally:
            if grpc is not None:
                await grpc.stop()
            if poller is not None:
                await poller.stop()
            await services.dispatcher.close()
            await services.registry.close()
            if fleet is not None:
                await fleet.close()
            await fetcher.aclose()
            if services.shared_memory is not None:
                services.shared_memory.close()

    app = FastApp(title="Sluiceway", version=__version__, lifespan=lifespan)
    app.state.services = services
    app.state.fetcher = fetcher
    error_responses = errors.ErrorResponses(settings.retry_after_s)
    error_responses.install(app)
    app.include_router(ops.router)
    app.router.routes.extend(kiosk.routes)
    app.include_router(root.router)
    app.include_router(predict.router)
    app.include_router(repository.router)
    app.include_router(oip.router)
    app.include_router(oip.regions_router)
    app.include_router(classifiers.router)
    app.include_router(captions.build_router(settings))
    web.install(app, settings)
    app.include_router(feedback.router)
    openapi.install(app)
    app.serve_first(
        [*kiosk.routes, *oip.fast_routes],
        error_responses,
        metrics,
        settings.access_log,
        fast_routes=fast_routes,
    )
    return app


POLL_IN_SPLIT_MODE = (
    "SLUICEWAY_REPOSITORY_POLL_S is for embedded mode: in split mode every API node would "
    "reload each change on every worker; load and unload through any one node instead "
    "(sluiceway models load NAME)"
)


def _repository_poller(
    settings: Settings, registry: ModelRegistry, dispatcher: Dispatcher, fleet: Fleet | None
) -> RepositoryPoller | None:
    """The repository's poller when ``SLUICEWAY_REPOSITORY_POLL_S`` asks for one (``sluiceway
    serve`` refuses the split-mode case before any process starts: ``cli.py``)."""
    if not settings.repository_poll_s:
        return None
    if fleet is not None:
        raise ValueError(POLL_IN_SPLIT_MODE)
    if registry.repository is None:
        logger.warning("SLUICEWAY_REPOSITORY_POLL_S is ignored: no SLUICEWAY_MODEL_REPOSITORY")
        return None
    if not isinstance(dispatcher, ModelHost):
        logger.warning("SLUICEWAY_REPOSITORY_POLL_S is ignored: this dispatcher loads no models")
        return None
    return RepositoryPoller(registry, registry.repository, settings.repository_poll_s)


def _grpc_endpoint(services: Services) -> GrpcEndpoint | None:
    """The gRPC endpoint, where ``SLUICEWAY_GRPC_PORT`` asks for one (imported only then: it
    needs the ``grpc`` extra)."""
    if services.settings.grpc_port is None:
        return None
    try:
        from sluiceway.api.oip.grpc_service import GrpcEndpoint
    except ImportError as error:
        raise RuntimeError(
            f"SLUICEWAY_GRPC_PORT needs the grpc extra: pip install 'sluiceway[grpc]' ({error})"
        ) from None
    return GrpcEndpoint(services, services.settings)
