"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluiceway.services import services_of

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
    """Prometheus text exposition of this process's metrics."""
    registry = services_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
