"""The composition root: settings → model kinds → dispatcher → FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sluiceway import __version__
from sluiceway.api import errors, kiosk, ops
from sluiceway.api.context import RequestContext
from sluiceway.api.fastpath import FastRoutes
from sluiceway.config import Settings
from sluiceway.models.base import BatchPolicy, ModelKind
from sluiceway.models.knn import TenantKNN
from sluiceway.runtime.dispatch import Dispatcher, LocalDispatcher
from sluiceway.runtime.metrics import Metrics
from sluiceway.services import Services

logger = logging.getLogger(__name__)


def build_kinds(settings: Settings) -> list[ModelKind]:
    """The model kinds this process serves, configured from settings."""
    knn = TenantKNN(
        BatchPolicy(
            slots=settings.knn_slots,
            max_batch=settings.knn_max_batch,
            max_delay_s=settings.knn_max_delay_ms / 1000,
            max_queue=settings.knn_max_queue,
        ),
        neighbors=settings.knn_neighbors,
        fit_cost_s=settings.knn_fit_cost_s,
        base_cost_s=settings.knn_infer_base_cost_s,
        per_query_cost_s=settings.knn_infer_per_query_cost_s,
    )
    return [knn]


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    """Build the app; without arguments, settings come from ``SLUICEWAY_*`` variables."""
    settings = settings or Settings()
    metrics = Metrics()
    if dispatcher is None:
        budget = int(settings.model_cache_budget_mb * 1024 * 1024)
        dispatcher = LocalDispatcher(build_kinds(settings), budget, metrics)
    services = Services(settings=settings, dispatcher=dispatcher, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.dispatcher.start()
        logger.info("sluiceway %s serving models %s", __version__, services.dispatcher.models())
        try:
            yield
        finally:
            await services.dispatcher.close()

    app = FastAPI(title="Sluiceway", version=__version__, lifespan=lifespan)
    app.state.services = services
    error_responses = errors.ErrorResponses(settings.retry_after_s)
    error_responses.install(app)
    app.include_router(ops.router)
    app.router.routes.extend(kiosk.routes)
    app.add_middleware(FastRoutes, routes=kiosk.routes, errors=error_responses)
    app.add_middleware(RequestContext, metrics=metrics, access_log=settings.access_log)
    return app
