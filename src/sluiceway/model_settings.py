"""Each built-in model's own settings: one class per model, ``SLUICEWAY_<MODEL>_<NAME>``.

``config.Settings`` holds one of each under the model's name; they live apart from it because
each is a model's block (its batch policy's defaults and what only that model has), read by
``kinds.py`` when the model is built, while ``config.py`` holds the process's own knobs.
``scripts/settings_table.py`` lists these fields with the others in the README.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelSettings(BaseModel):
    """A built-in model's settings: ``SLUICEWAY_<MODEL>_<NAME>`` overrides each field.

    Every model has a batch policy; each model's class gives it its own defaults and adds what
    only that model has. ``Settings`` holds one of each, under the model's name.
    """

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    slots: int = Field(1, ge=1)
    max_batch: int = Field(1, ge=1)
    max_delay_ms: float = Field(0.0, ge=0)
    max_queue: int = Field(1, ge=1)


class KnnSettings(ModelSettings):
    """The kiosks' tenant KNN and the seed's simulated compute cost (``SLUICEWAY_KNN_*``)."""

    neighbors: int = Field(3, ge=1, description="k of the kiosk KNN")
    fit_cost_s: float = Field(2.0, ge=0, description="simulated cost of one fit")
    infer_base_cost_s: float = Field(0.2, ge=0, description="simulated cost of a call")
    infer_per_query_cost_s: float = Field(
        0.05, ge=0, description="simulated cost of each further query vector in a call"
    )
    slots: int = Field(256, ge=1, description="compute slots (simulated GPUs) for the KNN")
    max_batch: int = Field(256, ge=1, description="query vectors per inference call")
    max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    max_queue: int = Field(4096, ge=1, description="queued jobs before 503")
    tenant_quota: int = Field(
        0, ge=0, description="jobs per restaurant queued or running before 429; 0 = off"
    )
    max_training_rows: int = Field(100_000, ge=1, description="larger sets get 413")
    max_queries: int = Field(10_000, ge=1, description="query vectors per request")
    inline_parse_bytes: int = Field(
        64 * 1024, ge=0, description="larger kiosk bodies are parsed off the event loop"
    )


class BirdsSettings(ModelSettings):
    """The AIY birds classifier, downloaded on first use (``SLUICEWAY_BIRDS_*``)."""

    model_url: str = Field(
        "https://storage.googleapis.com/download.tensorflow.org/models/tflite/task_library/"
        "image_classifier/android/lite-model_aiy_vision_classifier_birds_V1_3.tflite",
        description="where the birds model is downloaded from on first use",
    )
    model_sha256: str = Field(
        "95f59df4cff9053355abcd0b6e5e7e740f6eae19ed8cded32e2c3e8068195093",
        description="the downloaded file must have this sha256",
    )
    download_timeout_s: float = Field(120.0, gt=0, description="whole model download")
    threads: int = Field(1, ge=1, description="LiteRT threads per compute slot")
    wide: bool = Field(True, description="a call made while no other computes uses every core")
    slots: int = Field(2, ge=1, description="bird model calls running at once")
    # XNNPACK's cost per image does not fall with batch size, while each batch size held by an
    # interpreter keeps its own arena (batch 16 ≈ +28 MB per slot): 8 batches enough.
    max_batch: int = Field(8, ge=1, description="images per bird model call")
    max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    max_queue: int = Field(1024, ge=1, description="queued images before 503")
    max_images: int = Field(10, ge=1, description="images per bird API call")
    max_k: int = Field(10, ge=0, description="largest k the bird API accepts")


class ImagenetSettings(ModelSettings):
    """The packaged ImageNet MobileNetV2 (``SLUICEWAY_IMAGENET_*``)."""

    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads")
    wide: bool = Field(True, description="a call made while no other computes uses every core")
    slots: int = Field(2, ge=1, description="ImageNet model calls running at once")
    max_batch: int = Field(8, ge=1, description="images per ImageNet model call")
    max_delay_ms: float = Field(0.0, ge=0, description="wait this long to fill a batch")
    max_queue: int = Field(1024, ge=1, description="queued images before 503")


class CaptionSettings(ModelSettings):
    """The GIT captioner (``SLUICEWAY_CAPTION_*``; needs the ``captions`` extra).

    One slot with one torch thread: a caption call is seconds of compute, and on 2 shared cores
    a second intra-op thread fights the other models and HTTP for the CPU (measured 3x slower
    per caption under contention); the other core stays free for them.
    """

    model: str = Field(
        "microsoft/git-base-textcaps",
        description="a folder written by save_pretrained, or a hub id (needs the internet)",
    )
    max_new_tokens: int = Field(20, ge=1, le=256, description="greedy tokens per title")
    threads: int = Field(1, ge=1, description="torch intra-op threads")
    slots: int = Field(1, ge=1, description="caption calls running at once")
    max_batch: int = Field(8, ge=1, description="pictures per generate call")
    max_delay_ms: float = Field(10.0, ge=0, description="wait this long to fill a batch")
    max_queue: int = Field(32, ge=1, description="queued pictures before 503")
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1, description="decoded image cap")
    max_side: int = Field(448, ge=16, description="shorter side kept at the edge")
    hub_timeout_s: float = Field(5.0, gt=0, description="hub reachability check")
    rate_per_s: float = Field(0.0, ge=0, description="per-client requests/s; 0 = off")
    rate_burst: int = Field(10, ge=1, description="requests a client may send at once")
