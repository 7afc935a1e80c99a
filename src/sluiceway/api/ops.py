"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluiceway.runtime.triton_metrics import ModelMetrics, render
from sluiceway.services import Services, services_of

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Live: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: the dispatcher can take work now (in split mode: a live worker serves each
    model; ``waiting_for`` names those none serves yet). Each model's own state is beside."""
    services = services_of(request)
    dispatcher = services.dispatcher
    ready = dispatcher.ready()
    states = {
        entry.name: {"state": entry.state, **({"reason": entry.reason} if entry.reason else {})}
        for entry in services.registry.entries()
    }
    body: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "models": dispatcher.models(),
        "model_states": states,
    }
    missing = getattr(dispatcher, "missing", None)  # split mode's dispatcher only
    if not ready and callable(missing):
        body["waiting_for"] = missing()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics (and Triton's, ``triton_metrics``)."""
    services = services_of(request)
    text = generate_latest(services.metrics.registry) + triton_metrics(services)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


def triton_metrics(services: Services) -> bytes:
    """Triton's metrics of every model with a record (as the statistics extension lists them);
    nothing when turned off. A split-mode API node writes its requests' (the workers write
    their model calls')."""
    statistics = getattr(services.dispatcher, "statistics", None)
    if statistics is None or not services.settings.triton_metrics:
        return b""
    return render(
        (
            ModelMetrics(
                entry.name,
                entry.version,
                statistics.of(entry.name),
                services.metrics.queued(entry.name),
            )
            for entry in services.registry.entries()
            if entry.record is not None
        ),
        calls=statistics.makes_calls,
    )
