"""One typed settings object, read from ``SLUICEWAY_*`` environment variables.

The defaults run on one machine with nothing else installed.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a Sluiceway process; ``SLUICEWAY_<NAME>`` overrides each field."""

    model_config = SettingsConfigDict(env_prefix="SLUICEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address of `sluiceway serve`")
    port: int = Field(8000, ge=0, le=65535, description="port of `sluiceway serve`")
    workers: int = Field(1, ge=1, description="HTTP worker processes (each has its own models)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    access_log: bool = Field(False, description="one log line per request")

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    request_timeout_s: float = Field(30.0, gt=0, description="a request's deadline")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503")
    model_cache_budget_mb: float = Field(1024.0, gt=0, description="LRU budget for loaded models")
    model_repository: str | None = Field(
        None, description="a folder of your own models to serve (README: Serve your own model)"
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token to load and unload models at runtime; unset = off"
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

    # The kiosk's tenant KNN and the seed's simulated compute cost.
    knn_neighbors: int = Field(3, ge=1, description="k of the kiosk KNN")
    knn_fit_cost_s: float = Field(2.0, ge=0, description="simulated cost of one fit")
    knn_infer_base_cost_s: float = Field(0.2, ge=0, description="simulated cost of a call")
    knn_infer_per_query_cost_s: float = Field(
        0.05, ge=0, description="simulated cost of each further query vector in a call"
    )
    knn_slots: int = Field(256, ge=1, description="compute slots (simulated GPUs) for the KNN")
    knn_max_batch: int = Field(256, ge=1, description="query vectors per inference call")
    knn_max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    knn_max_queue: int = Field(4096, ge=1, description="queued jobs before 503")
    knn_tenant_quota: int = Field(
        0, ge=0, description="queued jobs per restaurant before 429; 0 = off"
    )
    knn_max_training_rows: int = Field(100_000, ge=1, description="larger sets get 413")
    knn_max_queries: int = Field(10_000, ge=1, description="query vectors per request")
    knn_inline_parse_bytes: int = Field(
        64 * 1024, ge=0, description="larger kiosk bodies are parsed off the event loop"
    )

    # Image classifiers. On 2 cores one compute thread per slot and two slots keeps both cores
    # busy while image decoding (also threaded) interleaves; see models/classifier.py.
    model_cache_dir: str = Field(
        "~/.cache/sluiceway/models", description="downloaded model files, verified by sha256"
    )
    birds_model_url: str = Field(
        "https://storage.googleapis.com/download.tensorflow.org/models/tflite/task_library/"
        "image_classifier/android/lite-model_aiy_vision_classifier_birds_V1_3.tflite",
        description="where the birds model is downloaded from on first use",
    )
    birds_model_sha256: str = Field(
        "95f59df4cff9053355abcd0b6e5e7e740f6eae19ed8cded32e2c3e8068195093",
        description="the downloaded file must have this sha256",
    )
    birds_download_timeout_s: float = Field(120.0, gt=0, description="whole model download")
    birds_threads: int = Field(1, ge=1, description="LiteRT threads per compute slot")
    birds_slots: int = Field(2, ge=1, description="bird model calls running at once")
    # XNNPACK's cost per image does not fall with batch size, while each batch size held by an
    # interpreter keeps its own arena (batch 16 ≈ +28 MB per slot): 8 batches enough.
    birds_max_batch: int = Field(8, ge=1, description="images per bird model call")
    birds_max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    birds_max_queue: int = Field(1024, ge=1, description="queued images before 503")
    birds_max_images: int = Field(10, ge=1, description="images per bird API call")
    birds_max_k: int = Field(10, ge=0, description="largest k the bird API accepts")
    imagenet_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads")
    imagenet_slots: int = Field(2, ge=1, description="ImageNet model calls running at once")
    imagenet_max_batch: int = Field(8, ge=1, description="images per ImageNet model call")
    imagenet_max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    imagenet_max_queue: int = Field(1024, ge=1, description="queued images before 503")
    classify_max_k: int = Field(20, ge=1, description="largest k of the native classify API")
    classify_max_images: int = Field(64, ge=1, description="images per native classify call")
    max_image_pixels: int = Field(40_000_000, ge=1, description="larger images are refused")
    jpeg_draft: bool = Field(
        True, description="decode large JPEGs at 1/2-1/8 scale (about 2x faster; scores move ~3%)"
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="one uploaded image")

    # The upload page (api/web.py): where photos and people's reports are kept.
    upload_dir: str = Field(
        "~/.local/share/sluiceway/uploads", description="uploaded photos, by content hash"
    )
    feedback_dir: str = Field(
        "~/.local/share/sluiceway/feedback", description="feedback.csv: wrong-prediction reports"
    )

    # Image captions (models/captioner.py, api/captions.py; needs the ``captions`` extra).
    # One slot with one torch thread: a caption call is seconds of compute, and on 2 shared
    # cores a second intra-op thread fights the other models and HTTP for the CPU (measured
    # 3x slower per caption under contention); the other core stays free for them.
    caption_model: str = Field(
        "microsoft/git-base-textcaps",
        description="a folder written by save_pretrained, or a hub id (needs the internet)",
    )
    caption_max_new_tokens: int = Field(20, ge=1, le=256, description="greedy tokens per title")
    caption_threads: int = Field(1, ge=1, description="torch intra-op threads")
    caption_slots: int = Field(1, ge=1, description="caption calls running at once")
    caption_max_batch: int = Field(8, ge=1, description="pictures per generate call")
    caption_max_delay_ms: float = Field(10.0, ge=0, description="wait this long to fill a batch")
    caption_max_queue: int = Field(32, ge=1, description="queued pictures before 503")
    caption_max_image_bytes: int = Field(5 * 1024 * 1024, ge=1, description="decoded image cap")
    caption_max_side: int = Field(448, ge=16, description="shorter side kept at the edge")
    caption_hub_timeout_s: float = Field(5.0, gt=0, description="hub reachability check")
    caption_rate_per_s: float = Field(0.0, ge=0, description="per-client requests/s; 0 = off")
    caption_rate_burst: int = Field(10, ge=1, description="requests a client may send at once")

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
    worker_read_count: int = Field(256, ge=1, description="jobs read per XREADGROUP")
    worker_prefetch: int = Field(1024, ge=1, description="jobs read and not yet answered")
    worker_heartbeat_s: float = Field(1.0, gt=0, description="how often a worker says it lives")
    worker_dead_after_s: float = Field(5.0, gt=0, description="silent this long = dead")
    worker_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description="health/metrics; if taken, the next free port above; 0 = any; unset=off",
    )
