"""What the protocol answers, whichever transport carries it: HTTP (``routes``) or gRPC
(``grpc_service``). Each function takes the ``Services`` and gives plain values (dicts in the
REST shape, arrays), so the two transports say the same things by construction."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sluiceway import __version__
from sluiceway.api.oip.forms import NoTensorForm, TensorForm, form_of, request_rows
from sluiceway.api.oip.inference_request import InferRequest
from sluiceway.errors import BadInput, ModelUnavailable, UnknownModel
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import TensorSpec
from sluiceway.runtime.stats import ModelCalls, ModelStatistics
from sluiceway.services import Services

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "logging",
    "model_repository",
    "schedule_policy",
    "statistics",
)

PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "onnx-classifier": "onnxruntime_onnx",
    "tflite-classifier": "tflite",
    "captioner": "transformers",
    "knn": "sklearn",
}
"""Each model kind's ``platform`` in model metadata (Triton's names where it has one)."""

NO_TRACE = "Triton's trace extension is not served here"
"""Why trace settings are refused, over HTTP (501) and gRPC (``UNIMPLEMENTED``) alike."""

BACKENDS = {"onnx": "onnxruntime", "onnx-classifier": "onnxruntime", "tflite-classifier": "tflite"}
"""Each model kind's ``backend`` in its config, Triton's name where it has one: a config read
back and sent with a load (as Model Analyzer does) then names a backend the load accepts."""


def server_metadata(services: Services) -> dict[str, Any]:
    """Server name, version and the protocol extensions it speaks."""
    extensions = list(EXTENSIONS)
    if services.shared_memory is not None:
        extensions.append("system_shared_memory")
    return {"name": "sluiceway", "version": __version__, "extensions": extensions}


def entry_of(services: Services, name: str, version: str | None) -> ModelEntry:
    """The model ``name`` (at ``version``, when one is asked): ``UnknownModel`` otherwise.

    A version that is not a whole number is a malformed request (``BadInput``: 400 and
    ``INVALID_ARGUMENT``, as Triton answers it), not a version the model happens to lack."""
    if version is not None and not (version.isascii() and version.isdigit()):
        raise BadInput(
            f"model version {version!r} is not a version number: versions are whole numbers "
            "(leave the version out to use the one served)"
        )
    entry = services.registry.entry(name)
    if version is not None and version != entry.version:
        served = f"it serves version {entry.version}" if entry.version else "it has no version"
        raise UnknownModel(f"model {name!r} has no version {version!r}; {served}")
    return entry


def record_of(entry: ModelEntry) -> ModelRecord:
    """The entry's record; ``ModelUnavailable`` with the reason when it could not be read."""
    if entry.record is None:
        raise ModelUnavailable(f"model {entry.name!r} is unavailable: {entry.reason}")
    return entry.record


def check_ready(entry: ModelEntry) -> None:
    """``ModelUnavailable``, saying why, unless the model takes requests now."""
    if entry.state is not ModelState.READY:
        reason = f": {entry.reason}" if entry.reason else ""
        raise ModelUnavailable(f"model {entry.name!r} is {entry.state.lower()}{reason}")


def model_metadata(services: Services, name: str, version: str | None) -> dict[str, Any]:
    """Name, versions, platform and tensors of a model; whether and how it takes tensors."""
    entry = entry_of(services, name, version)
    record = record_of(entry)
    form = form_of(record, services.settings)
    body: dict[str, Any] = {
        "name": name,
        "versions": [record.version],
        "platform": PLATFORMS.get(record.kind, record.kind),
    }
    if isinstance(form, NoTensorForm):
        body |= {"inputs": [], "outputs": [], "parameters": {"infer": False, "reason": form.reason}}
    else:
        body |= {
            "inputs": [_tensor(spec) for spec in form.inputs],
            "outputs": [_tensor(spec) for spec in form.outputs],
            "parameters": {
                "infer": True,
                "description": form.description,
                "max_batch_size": record.policy.max_batch if record.batched else 0,
            },
        }
    body["parameters"]["state"] = str(entry.state)
    return body


def model_config(services: Services, name: str, version: str | None) -> dict[str, Any]:
    """The model's configuration in the shape of Triton's ``config.pbtxt`` (as JSON)."""
    entry = entry_of(services, name, version)
    record = record_of(entry)
    form = form_of(record, services.settings)
    tensors = form if isinstance(form, TensorForm) else None
    batched = record.batched and tensors is not None
    policy = record.policy

    def config_tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = list(spec.shape[1:] if batched else spec.shape)
        data_type = f"TYPE_{_config_type(spec.datatype)}"
        tensor: dict[str, Any] = {"name": spec.name, "data_type": data_type, "dims": dims}
        if spec.model_shape is not None:
            shape = spec.model_shape[1:] if batched else spec.model_shape
            tensor["reshape"] = {"shape": list(shape)}
        if spec.format is not None:
            tensor["format"] = f"FORMAT_{spec.format}"
        return tensor

    return {
        "name": name,
        "platform": PLATFORMS.get(record.kind, record.kind),
        "backend": BACKENDS.get(record.kind, record.kind),
        "max_batch_size": policy.max_batch if batched else 0,
        "input": [config_tensor(spec) for spec in tensors.inputs] if tensors else [],
        "output": [config_tensor(spec) for spec in tensors.outputs] if tensors else [],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(policy.max_delay_s * 1e6),
            "default_queue_policy": {"max_queue_size": policy.max_queue},
        },
        "instance_group": [{"count": policy.slots, "kind": "KIND_CPU"}],
    }


async def model_statistics(
    services: Services, name: str | None, version: str | None
) -> dict[str, Any]:
    """Triton's statistics of one model, or of every model with a record (``name`` ``None``).

    On a split-mode API node, which makes no model call, each model's ``execution_count`` and
    ``batch_stats`` are the sum of its live workers' (by name: whatever version each serves),
    or the last sum read when Redis does not answer soon (``split/worker_calls.py``).
    """
    if name is None:
        entries = [entry for entry in services.registry.entries() if entry.record is not None]
    else:
        entries = [entry_of(services, name, version)]
    statistics = getattr(services.dispatcher, "statistics", None)
    worker_calls = getattr(services.dispatcher, "worker_calls", None)
    calls: dict[str, ModelCalls] = await worker_calls() if worker_calls is not None else {}
    stats = []
    for entry in entries:
        of = statistics.of(entry.name) if statistics is not None else ModelStatistics()
        elsewhere = calls.get(entry.name)
        if elsewhere is not None:
            of = of.with_calls(elsewhere)
        stats.append(of.as_triton(entry.name, entry.version))
    return {"model_stats": stats}


def tensor_model(
    services: Services, name: str, version: str | None
) -> tuple[ModelRecord, TensorForm]:
    """The model to infer with and how it takes tensors: ``UnknownModel``,
    ``ModelUnavailable`` or ``BadInput`` (no tensor form) saying why not."""
    entry = entry_of(services, name, version)
    check_ready(entry)
    record = entry.record
    if record is None:  # a ready entry has its record; said for the type checker
        raise ModelUnavailable(f"model {name!r} is unavailable: {entry.reason}")
    form = form_of(record, services.settings)
    if isinstance(form, NoTensorForm):
        raise BadInput(f"model {name!r} cannot be called with tensors: {form.reason}")
    return record, form


async def run_request(
    services: Services,
    record: ModelRecord,
    form: TensorForm,
    request: InferRequest,
    deadline: float,
) -> dict[str, np.ndarray]:
    """Run a checked request by the earlier of ``deadline`` and its own ``timeout``; the
    model's outputs by name."""
    rows = request_rows(request.tensors) if form.batched else 1
    if rows > record.policy.max_queue:
        # One job per row: more rows than the queue holds could never be accepted whole.
        raise BadInput(
            f"the request has {rows} rows; model {record.name!r} queues at most "
            f"{record.policy.max_queue}: send them in smaller requests"
        )
    if request.timeout_s is not None:
        deadline = min(deadline, time.time() + request.timeout_s)
    return await form.run(request.tensors, deadline, services, request.priority)


def _config_type(datatype: str) -> str:
    return {"BYTES": "STRING"}.get(datatype, datatype)


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
