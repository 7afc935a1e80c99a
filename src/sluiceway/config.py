"""One typed settings object, read from ``SLUICEWAY_*`` environment variables.

The defaults run on one machine with nothing else installed. Each built-in model's own block
of settings is a class of ``model_settings.py``, held here as one field named after the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluiceway.model_settings import (
    BirdsSettings,
    CaptionSettings,
    ImagenetSettings,
    KnnSettings,
    ModelSettings,
)


class Settings(BaseSettings):
    """Every knob of a Sluiceway process; ``SLUICEWAY_<NAME>`` overrides each field.

    A built-in model's settings are one ``ModelSettings`` field named after the model, and
    ``SLUICEWAY_<MODEL>_<NAME>`` sets its fields: the first ``_`` after the model's name splits
    the variable, so ``SLUICEWAY_KNN_MAX_BATCH`` is ``settings.knn.max_batch``. Keyword
    arguments take the same flat names (``Settings(knn_slots=1)``).
    """

    model_config = SettingsConfigDict(
        env_prefix="SLUICEWAY_",
        extra="ignore",
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    host: str = Field("127.0.0.1", description="bind address of `sluiceway serve`")
    port: int = Field(8000, ge=0, le=65535, description="port of `sluiceway serve`")
    workers: int = Field(1, ge=1, description="HTTP worker processes (each has its own models)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    access_log: bool = Field(False, description="one log line per request")

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    allow_client_shm: bool = Field(
        False,
        description="clients may register shared memory regions and send or get tensors "
        "through them (Triton's --allow-client-shm): only where every client is trusted",
    )
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve the Open Inference Protocol over gRPC on this port too (Triton's "
        "8001; needs the grpc extra); unset = off",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="a request's deadline")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503")
    model_cache_budget_mb: float = Field(1024.0, gt=0, description="LRU budget for loaded models")
    model_repository: str | None = Field(
        None, description="a folder of your own models to serve (README: Serve your own model)"
    )
    repository_poll_s: float = Field(
        0.0,
        ge=0,
        description="look at SLUICEWAY_MODEL_REPOSITORY this often and load, reload and unload "
        "models as their folders appear, change and go (Triton's --model-control-mode=poll; "
        "embedded mode); 0 = off",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token to load and unload models and change log settings at "
        "runtime; unset = off",
    )

    # The HTTP edge (edge.py): what one client may take. Defaults follow nginx and Apache.
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers; larger get 431"
    )
    max_headers: int = Field(100, ge=8, description="header fields per request; more get 431")
    header_timeout_s: float = Field(
        10.0, gt=0, description="time to send a request's headers; then 408"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="time to send a body, plus 1 s per body_min_rate bytes; then 408"
    )
    body_min_rate: int = Field(
        1024, ge=1, description="bytes/s a slow body must keep up to earn more time"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections per process; more get 503"
    )
    max_requests: int = Field(
        1024, ge=1, description="requests in progress per process; more get 503"
    )

    # The batch scheduler (runtime/batcher.py), for every model.
    split_batches: bool = Field(
        True, description="spread a key's waiting jobs over free slots when that ends them sooner"
    )
    fair_wait_calls: float = Field(
        2.0, ge=0, description="a key waiting this many of its call's cost goes first; 0 = off"
    )
    triton_metrics: bool = Field(
        True,
        description="write Triton's per-model metrics (nv_inference_*) in /metrics too, for "
        "dashboards and autoscalers made for Triton",
    )
    inline_call_us: float = Field(
        300.0,
        ge=0,
        description="a model call expected to be shorter runs on the event loop: no thread hop",
    )
    image_client_quota: int = Field(
        0,
        ge=0,
        description="images one client address may have queued or running per built-in image "
        "classifier before 429; 0 = off",
    )

    # The kiosk's tenant KNN and the seed's simulated compute cost.
    knn: KnnSettings = Field(default_factory=KnnSettings, description="the kiosk KNN")

    # Image classifiers. On 2 cores one compute thread per slot and two slots keeps both cores
    # busy while image decoding (also threaded) interleaves; see models/classifier.py.
    model_cache_dir: str = Field(
        "~/.cache/sluiceway/models", description="downloaded model files, verified by sha256"
    )
    birds: BirdsSettings = Field(
        default_factory=BirdsSettings, description="the AIY birds classifier"
    )
    imagenet: ImagenetSettings = Field(
        default_factory=ImagenetSettings, description="the ImageNet MobileNetV2"
    )
    classify_max_k: int = Field(20, ge=1, description="largest k of the native classify API")
    classify_max_images: int = Field(64, ge=1, description="images per native classify call")
    max_image_pixels: int = Field(40_000_000, ge=1, description="larger images are refused")
    jpeg_draft: bool = Field(
        True, description="decode large JPEGs at a reduced n/8 scale (faster; scores move ~3%)"
    )
    decode_threads: int = Field(
        0,
        ge=0,
        description="threads decoding images for the classifiers (0: half the CPUs, at least 1)",
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="one uploaded image")

    # The upload page (api/web.py, its reports api/feedback.py): where photos and reports are kept.
    upload_dir: str = Field(
        "~/.local/share/sluiceway/uploads", description="uploaded photos, by content hash"
    )
    feedback_dir: str = Field(
        "~/.local/share/sluiceway/feedback", description="feedback.csv: wrong-prediction reports"
    )

    # Image captions (models/captioner.py, api/captions.py; needs the ``captions`` extra).
    caption: CaptionSettings = Field(
        default_factory=CaptionSettings, description="the GIT captioner"
    )

    # Image downloads for the bird API.
    fetch_allow_hosts: str = Field(
        "",
        description="comma-separated host[:port], IP[:port] or CIDR[:port] exempt from the "
        "private-address ban; no port = 80 and 443, :* = every port",
    )
    fetch_timeout_s: float = Field(10.0, gt=0, description="one image download, end to end")
    fetch_connect_timeout_s: float = Field(3.0, gt=0, description="TCP/TLS connect timeout")
    fetch_max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="one downloaded image")
    fetch_concurrency: int = Field(32, ge=1, description="downloads in flight per process")
    # One slow host holds at most its own cap of the process's slots (an IPv6 /64 is one host).
    fetch_per_host: int = Field(
        4, ge=1, description="downloads in flight per remote address (IPv6: per /64)"
    )
    fetch_per_request: int = Field(
        8, ge=1, description="downloads in flight for one bird API request"
    )
    fetch_max_redirects: int = Field(5, ge=0, description="each target re-checked")

    # Split mode: API nodes and model workers over Redis (the split/ package).
    broker_url: str | None = Field(None, description="redis://host:port/db; unset = embedded")
    broker_prefix: str = Field("sluiceway", description="namespace of every Redis key")
    broker_partitions: int = Field(16, ge=1, description="job streams per model (affinity)")
    broker_max_queue: int = Field(4096, ge=1, description="jobs queued or running per model")
    broker_visibility_timeout_s: float = Field(
        30.0, gt=0, description="a live worker's unanswered job is claimed by another after this"
    )
    broker_max_deliveries: int = Field(3, ge=1, description="crashes before dead-lettering")
    broker_dead_letter_max: int = Field(10_000, ge=1, description="dead letters kept per model")
    api_models: str = Field(
        "",
        description="split mode: models an API node needs a live worker for before /readyz "
        "says ready; empty = every model it serves",
    )
    worker_models: str = Field("", description="comma-separated models to serve; empty = all")
    worker_id: str = Field(
        "",
        description="this worker's name in the registry and consumer groups, which decides "
        "the partitions it owns; unique per live worker; empty = host-pid-random",
    )
    worker_read_count: int = Field(256, ge=1, description="jobs read per XREADGROUP")
    worker_prefetch: int = Field(
        1024, ge=1, description="jobs read and not yet answered (the read-ahead; the rest waits)"
    )
    worker_help_after_s: float = Field(
        2.0,
        ge=0,
        description="another worker also reads a partition whose owner stays saturated this "
        "long (about one model fit); 0 = never",
    )
    # The margins (split/connection.py has the broker's own: STALLED_S, RECONNECT_S). A worker
    # beats every second and is dead after 5 s of silence, so a beat may be 4 s late before
    # anyone counts it dead; a dead worker's partitions and jobs pass to another within those
    # 5 s and a few beats (a hand-over waits two), well inside a request's 30 s deadline.
    # Starvation slows a beat far less than 4 s: under 18 CPU hogs on this project's 2 cores
    # (load 12-21, each process getting about a tenth of a core, 2026-12-02) no registry
    # record aged past 1.2 s. A process that does not run at all for longer than ~4 s
    # (SIGSTOP, a paused VM) is as silent as a dead one and counts as dead until its next
    # beat: that is what the window is for; a reader's own pause is not counted against it
    # (wire.live_workers, one window at most), and the job read counts running time
    # (split/pauses.py) while a redis-py timeout on waking is not a loss (connection.py).
    # Raise both settings together to tolerate longer stops, at the price of finding a crashed
    # worker that much later.
    worker_heartbeat_s: float = Field(1.0, gt=0, description="how often a worker says it lives")
    worker_dead_after_s: float = Field(5.0, gt=0, description="silent this long = dead")
    worker_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description="health/metrics; if taken, the next free port above; 0 = any; unset=off",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        """``knn_slots=1`` as a keyword is ``knn={"slots": 1}``, as its variable would be."""
        if not isinstance(data, dict):
            return data
        folded = dict(data)
        for model in _model_fields():
            prefix = f"{model}_"
            flat = {k[len(prefix) :]: folded.pop(k) for k in list(folded) if k.startswith(prefix)}
            if not flat:
                continue
            given = folded.get(model, {})
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            folded[model] = {**given, **flat}
        return folded

    @model_validator(mode="after")
    def _one_process_for_shared_memory(self) -> Settings:
        """Clients register shared memory regions with one process: with several workers the
        next request may reach one that has never heard of the region."""
        if self.allow_client_shm and self.workers > 1:
            raise ValueError(
                "SLUICEWAY_ALLOW_CLIENT_SHM needs SLUICEWAY_WORKERS=1: shared memory regions "
                "are registered with one process"
            )
        return self

    @classmethod
    def variables(cls) -> Iterator[tuple[str, FieldInfo]]:
        """Every ``SLUICEWAY_*`` variable with the field it sets, in declaration order."""
        for name, info in cls.model_fields.items():
            model = _settings_class(info)
            if model is None:
                yield f"SLUICEWAY_{name.upper()}", info
                continue
            for field, nested in model.model_fields.items():
                yield f"SLUICEWAY_{name.upper()}_{field.upper()}", nested


def _settings_class(info: FieldInfo) -> type[ModelSettings] | None:
    """The model's settings class a field holds, or None for a plain setting."""
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, ModelSettings):
        return annotation
    return None


def _model_fields() -> list[str]:
    """The names of the fields that hold a model's settings (``knn``, ``birds``...)."""
    return [name for name, info in Settings.model_fields.items() if _settings_class(info)]
