"""The model kinds a Sluiceway process serves, built from settings.

Embedded servers and split-mode workers build the same list, so this module imports models and
settings only: a worker never loads the web app to learn what it serves.
"""

from __future__ import annotations

from sluiceway.config import Settings
from sluiceway.models.base import BatchPolicy, ModelKind
from sluiceway.models.captioner import GitCaptioning
from sluiceway.models.knn import TenantKNN
from sluiceway.models.onnx_classifier import imagenet_kind
from sluiceway.models.tflite_classifier import TfliteClassifierKind
from sluiceway.stores.artifacts import ArtifactStore


def batch_policy(settings: Settings, model: str) -> BatchPolicy:
    """A model's ``<model>_slots``, ``_max_batch``, ``_max_delay_ms``, ``_max_queue`` and
    ``_tenant_quota`` (where the model has tenants), with the scheduler's shared settings."""
    return BatchPolicy(
        slots=getattr(settings, f"{model}_slots"),
        max_batch=getattr(settings, f"{model}_max_batch"),
        max_delay_s=getattr(settings, f"{model}_max_delay_ms") / 1000,
        max_queue=getattr(settings, f"{model}_max_queue"),
        split=settings.split_batches,
        fair_wait_calls=settings.fair_wait_calls,
        tenant_quota=getattr(settings, f"{model}_tenant_quota", 0),
    )


def build_kinds(settings: Settings) -> list[ModelKind]:
    """Every model kind: the kiosk KNN, the image classifiers and the captioner."""
    knn = TenantKNN(
        batch_policy(settings, "knn"),
        neighbors=settings.knn_neighbors,
        fit_cost_s=settings.knn_fit_cost_s,
        base_cost_s=settings.knn_infer_base_cost_s,
        per_query_cost_s=settings.knn_infer_per_query_cost_s,
    )
    return [knn, *image_kinds(settings), caption_kind(settings)]


def image_kinds(settings: Settings, *, progress: bool = False) -> list[ModelKind]:
    """The bird (LiteRT, downloaded on first use) and ImageNet (ONNX, packaged) classifiers."""
    birds = TfliteClassifierKind(
        "birds",
        batch_policy(settings, "birds"),
        url=settings.birds_model_url,
        sha256=settings.birds_model_sha256,
        store=ArtifactStore(settings.model_cache_dir),
        threads=settings.birds_threads,
        download_timeout_s=settings.birds_download_timeout_s,
        progress=progress,
    )
    imagenet = imagenet_kind(batch_policy(settings, "imagenet"), threads=settings.imagenet_threads)
    return [birds, imagenet]


def caption_kind(settings: Settings) -> GitCaptioning:
    """The GIT captioner; torch and transformers are imported only when it loads."""
    return GitCaptioning(
        batch_policy(settings, "caption"),
        source=settings.caption_model,
        max_new_tokens=settings.caption_max_new_tokens,
        threads=settings.caption_threads,
        hub_timeout_s=settings.caption_hub_timeout_s,
    )
