"""The built-in models as records, and the one table that turns any record into a model kind.

Embedded servers, split-mode workers and the ``classify`` command build the same kinds, so this
module imports models, stores and settings only: a worker never loads the web app to learn what
it serves. Adding a model kind is a class in ``models/`` and one line in ``KIND_BUILDERS``;
adding a model of an existing kind is a repository folder (``repository.py``), no code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from sluiceway.config import Settings
from sluiceway.model_settings import ModelSettings
from sluiceway.models.base import BatchPolicy, ModelKind
from sluiceway.models.captioner import GitCaptioning
from sluiceway.models.knn import TenantKNN
from sluiceway.models.onnx_classifier import (
    IMAGENET_INPUT,
    OnnxClassifierKind,
    imagenet_labels,
    imagenet_model_path,
)
from sluiceway.models.onnx_model import OnnxModelKind
from sluiceway.models.records import ModelRecord, ModelSource, SourceKind
from sluiceway.models.tensors import TensorSpec
from sluiceway.models.tflite_classifier import BIRDS_INPUT, TfliteClassifierKind
from sluiceway.repository import scan
from sluiceway.stores.artifacts import ArtifactStore

KNN = "knn"
"""The kiosks' per-restaurant k-nearest-neighbours (MISSION.md §1)."""
BIRDS = "birds"
"""The AIY birds classifier (LiteRT, downloaded on first use): the bird API and CLI."""
IMAGENET = "imagenet"
"""The ImageNet MobileNetV2 (ONNX, packaged): the upload page and ``/predict``."""
CAPTION = "caption"
"""The GIT captioner (transformers): the captions API."""


def _policy(settings: Settings, model: ModelSettings, tenant_quota: int = 0) -> BatchPolicy:
    """A built-in model's batch policy, with the scheduler's shared settings."""
    return BatchPolicy(
        slots=model.slots,
        max_batch=model.max_batch,
        max_delay_s=model.max_delay_ms / 1000,
        max_queue=model.max_queue,
        split=settings.split_batches,
        fair_wait_calls=settings.fair_wait_calls,
        tenant_quota=tenant_quota,
    )


def builtin_records(settings: Settings) -> list[ModelRecord]:
    """The four models every Sluiceway serves, declared like repository models; each reads its
    own settings class (``settings.knn``, ``settings.birds``...)."""
    s = settings
    return [
        ModelRecord(
            name=KNN,
            kind="knn",
            source=ModelSource(SourceKind.PACKAGED, "fitted per restaurant from its request"),
            policy=_policy(s, s.knn, s.knn.tenant_quota),
            inputs=(TensorSpec("query_input", "FP32", (-1, -1)),),
            outputs=(TensorSpec("classification_result", "INT64", (-1,)),),
            builtin=True,
        ),
        ModelRecord(
            name=BIRDS,
            kind="tflite-classifier",
            source=ModelSource(SourceKind.URL, s.birds.model_url, s.birds.model_sha256),
            policy=_policy(s, s.birds, s.image_client_quota),
            inputs=(TensorSpec("image", "UINT8", (-1, *BIRDS_INPUT.shape)),),
            outputs=(TensorSpec("probabilities", "FP32", (-1, 965)),),
            image=BIRDS_INPUT,
            threads=s.birds.threads,
            builtin=True,
            wide=s.birds.wide,
        ),
        ModelRecord(
            name=IMAGENET,
            kind="onnx-classifier",
            source=ModelSource(SourceKind.PACKAGED, str(imagenet_model_path())),
            policy=_policy(s, s.imagenet, s.image_client_quota),
            inputs=(TensorSpec("image", "FP32", (-1, *IMAGENET_INPUT.shape)),),
            outputs=(TensorSpec("probabilities", "FP32", (-1, 1000)),),
            labels=tuple(imagenet_labels()),
            image=IMAGENET_INPUT,
            threads=s.imagenet.threads,
            builtin=True,
            memory_arena=True,
            wide=s.imagenet.wide,
        ),
        ModelRecord(
            name=CAPTION,
            kind="captioner",
            source=ModelSource(SourceKind.HUB, s.caption.model),
            policy=_policy(s, s.caption),
            inputs=(TensorSpec("image", "BYTES", (-1,)),),
            outputs=(TensorSpec("title", "BYTES", (-1,)),),
            threads=s.caption.threads,
            builtin=True,
        ),
    ]


KindBuilder = Callable[[ModelRecord, Settings, bool], ModelKind]


def _knn(record: ModelRecord, settings: Settings, progress: bool) -> ModelKind:
    return TenantKNN(
        record.policy,
        neighbors=settings.knn.neighbors,
        fit_cost_s=settings.knn.fit_cost_s,
        base_cost_s=settings.knn.infer_base_cost_s,
        per_query_cost_s=settings.knn.infer_per_query_cost_s,
    )


def _tflite_classifier(record: ModelRecord, settings: Settings, progress: bool) -> ModelKind:
    assert record.image is not None
    folder = record.source.kind is SourceKind.FOLDER
    return TfliteClassifierKind(
        record.name,
        record.policy,
        url=None if folder else record.source.location,
        path=Path(record.source.location) if folder else None,
        sha256=record.source.sha256,
        labels=record.labels or None,
        store=ArtifactStore(settings.model_cache_dir),
        input_spec=record.image,
        threads=record.threads,
        wide=record.wide,
        # A folder's file is never downloaded; a URL's takes the birds model's allowance.
        download_timeout_s=settings.birds.download_timeout_s,
        progress=progress,
    )


def _onnx_classifier(record: ModelRecord, settings: Settings, progress: bool) -> ModelKind:
    assert record.image is not None
    return OnnxClassifierKind(
        record.name,
        record.policy,
        path=Path(record.source.location),
        labels=record.labels,
        input_spec=record.image,
        logits=record.logits,
        threads=record.threads,
        memory_arena=record.memory_arena,
        wide=record.wide,
    )


def _onnx(record: ModelRecord, settings: Settings, progress: bool) -> ModelKind:
    return OnnxModelKind(
        record.name,
        record.policy,
        path=Path(record.source.location),
        inputs=record.inputs,
        outputs=record.outputs,
        batched=record.batched,
        threads=record.threads,
        memory_arena=record.memory_arena,
        wide=record.wide,
    )


def _captioner(record: ModelRecord, settings: Settings, progress: bool) -> ModelKind:
    return GitCaptioning(
        record.policy,
        source=record.source.location,
        max_new_tokens=settings.caption.max_new_tokens,
        threads=record.threads,
        hub_timeout_s=settings.caption.hub_timeout_s,
    )


KIND_BUILDERS: Mapping[str, KindBuilder] = MappingProxyType(
    {
        "knn": _knn,
        "tflite-classifier": _tflite_classifier,
        "onnx-classifier": _onnx_classifier,
        "onnx": _onnx,
        "captioner": _captioner,
    }
)
"""Every model kind, by the ``kind`` its records name: the one registration a new kind needs."""


def kind_of(record: ModelRecord, settings: Settings, *, progress: bool = False) -> ModelKind:
    """The model kind that loads ``record``; a repository model gets the server's scheduler
    settings (its folder's config says only its own batch policy)."""
    if not record.builtin:
        policy = replace(
            record.policy, split=settings.split_batches, fair_wait_calls=settings.fair_wait_calls
        )
        record = replace(record, policy=policy)
    return KIND_BUILDERS[record.kind](record, settings, progress)


def build_kinds(settings: Settings) -> list[ModelKind]:
    """Every built-in model kind: the kiosk KNN, the image classifiers and the captioner."""
    return [kind_of(record, settings) for record in builtin_records(settings)]


def repository_kinds(settings: Settings) -> list[ModelKind]:
    """The kinds of the repository's servable models (none without a repository).

    Split-mode workers serve these beside the built-ins, loading each on its first job; an
    embedded server loads them through the model registry instead (states, warm-up, control).
    """
    if not settings.model_repository:
        return []
    builtins = {record.name for record in builtin_records(settings)}
    found = scan(Path(settings.model_repository).expanduser())
    return [
        kind_of(record, settings)
        for record in found
        if isinstance(record, ModelRecord) and record.name not in builtins
    ]


def served_kinds(settings: Settings) -> list[ModelKind]:
    """What a split-mode worker serves: the built-ins and the repository's models."""
    return [*build_kinds(settings), *repository_kinds(settings)]


def image_kinds(settings: Settings, *, progress: bool = False) -> list[ModelKind]:
    """The bird (LiteRT, downloaded on first use) and ImageNet (ONNX, packaged) classifiers."""
    return [
        kind_of(record, settings, progress=progress)
        for record in builtin_records(settings)
        if record.image is not None
    ]
