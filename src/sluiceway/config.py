"""One typed settings object, read from ``SLUICEWAY_*`` environment variables.

The defaults run on one machine with nothing else installed.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a Sluiceway process; ``SLUICEWAY_<NAME>`` overrides each field."""

    model_config = SettingsConfigDict(env_prefix="SLUICEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="HTTP worker processes (each has its own models)")
    log_level: str = "INFO"
    access_log: bool = False

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    request_timeout_s: float = Field(30.0, gt=0, description="a request's deadline")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503")
    model_cache_budget_mb: float = Field(1024.0, gt=0, description="LRU budget for loaded models")

    # The kiosk's tenant KNN and the seed's simulated compute cost.
    knn_neighbors: int = Field(3, ge=1)
    knn_fit_cost_s: float = Field(2.0, ge=0)
    knn_infer_base_cost_s: float = Field(0.2, ge=0)
    knn_infer_per_query_cost_s: float = Field(0.05, ge=0)
    knn_slots: int = Field(256, ge=1, description="compute slots (simulated GPUs) for the KNN")
    knn_max_batch: int = Field(256, ge=1, description="query vectors per inference call")
    knn_max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    knn_max_queue: int = Field(4096, ge=1, description="queued jobs before 503")
    knn_max_training_rows: int = Field(100_000, ge=1)
    knn_max_queries: int = Field(10_000, ge=1)
