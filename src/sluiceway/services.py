"""What the edge is handed at start-up: settings, dispatcher, metrics, models, image path."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from sluiceway.config import Settings
from sluiceway.image_classifiers import ImageClassifiers
from sluiceway.registry import ModelRegistry
from sluiceway.runtime.dispatch import Dispatcher
from sluiceway.runtime.metrics import Metrics
from sluiceway.shared_memory import SharedMemoryRegions


@dataclass(slots=True)
class Services:
    """The app's runtime objects, built once in ``create_app`` and never module-level."""

    settings: Settings
    dispatcher: Dispatcher
    metrics: Metrics
    images: ImageClassifiers
    registry: ModelRegistry
    shared_memory: SharedMemoryRegions | None = None
    """Clients' shared memory regions; ``None`` unless ``allow_client_shm``."""


def services_of(request: Request) -> Services:
    """The services of the app serving ``request``."""
    services: Services = request.app.state.services
    return services
