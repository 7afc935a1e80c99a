"""The protocol's gRPC messages (Triton's ``inference.GRPCInferenceService``, a superset of
KServe's ``predict_v2.proto`` but for its repository messages: ``grpc_service._repository_model``)
to and from what ``serving`` runs and answers.

A request's inputs come three ways, as Triton takes them: in shared memory (the extension's
parameters), as typed ``contents`` (``fp32_contents``...), or as raw bytes: the request's
``raw_input_contents``, one entry per input that has neither, in order (tritonclient sends every
input this way). Outputs go back as ``raw_output_contents``, one entry per output in order
(empty for an output written into shared memory), as Triton answers and tritonclient reads.

Log settings (Triton's logging extension) travel as a map of ``SettingValue``s, each a bool, a
uint32 or a string: ``log_settings_changes`` and ``log_settings_response``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from sluiceway.api.oip.answer import answered_outputs
from sluiceway.api.oip.forms import TensorForm
from sluiceway.api.oip.inference_request import (
    InferRequest,
    check_complete,
    check_once,
    check_rows,
    input_spec,
    job_priority,
    output_request,
    region_span,
    timeout_seconds,
)
from sluiceway.errors import BadInput
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import tensor_from_bytes, tensor_from_json, tensor_to_bytes
from sluiceway.shared_memory import SharedMemoryRegions

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Which ``InferTensorContents`` field holds each datatype (FP16 and BF16 have none: raw only)."""


def parameters_of(given: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as the plain values the REST request would carry."""
    values: dict[str, Any] = {}
    for key, parameter in given.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice is not None else None
    return values


def infer_request(
    message: service_pb2.ModelInferRequest,
    form: TensorForm,
    regions: SharedMemoryRegions | None,
) -> InferRequest:
    """A ``ModelInferRequest``, checked against the model's ``TensorForm`` as a REST request
    is: ``BadInput`` naming what does not fit."""
    parameters = parameters_of(message.parameters)
    if parameters.get("sequence_id") not in (None, 0, ""):
        raise BadInput("sequences (sequence_id) are not supported: every request stands alone")
    tensors = _inputs(message, form, regions)
    if form.batched:
        check_rows(tensors)
    outputs = [
        output_request(item.name, parameters_of(item.parameters), regions)
        for item in message.outputs
    ]
    check_once(outputs)
    return InferRequest(
        id=message.id or None,
        tensors=tensors,
        outputs=outputs or None,
        binary_output=True,
        timeout_s=timeout_seconds(parameters.get("timeout")),
        priority=job_priority(parameters.get("priority", 0)),
    )


def _inputs(
    message: service_pb2.ModelInferRequest,
    form: TensorForm,
    regions: SharedMemoryRegions | None,
) -> dict[str, np.ndarray]:
    if not message.inputs:
        raise BadInput("'inputs' must be a non-empty list of tensors")
    by_name = {spec.name: spec for spec in form.inputs}
    raw = message.raw_input_contents
    next_raw = 0
    tensors: dict[str, np.ndarray] = {}
    for item in message.inputs:
        name, datatype, shape = item.name, item.datatype, list(item.shape)
        if any(dimension < 0 for dimension in shape):
            raise BadInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
        spec = input_spec(name, datatype, shape, by_name, tensors)
        where = f"input {name!r}"
        span = region_span(parameters_of(item.parameters), "input", name, regions)
        if span is not None:
            assert regions is not None  # region_span refuses a span without them
            if item.HasField("contents"):
                raise BadInput(f"{where} is in shared memory and in the request: send it once")
            blob = regions.read(span.region, span.offset, span.byte_size, where)
            array = tensor_from_bytes(name, datatype, shape, blob)
        elif item.HasField("contents"):
            field = CONTENTS.get(datatype)
            if field is None:
                raise BadInput(f"{where}: {datatype} is sent in raw_input_contents only")
            array = tensor_from_json(name, datatype, shape, list(getattr(item.contents, field)))
        elif next_raw < len(raw):
            array = tensor_from_bytes(name, datatype, shape, raw[next_raw])
            next_raw += 1
        else:
            raise BadInput(
                f"{where} has no data: give it contents, a raw_input_contents entry, or a shared "
                f"memory region"
            )
        tensors[name] = spec.check(array)
    if next_raw != len(raw):
        raise BadInput(
            f"{len(raw) - next_raw} raw_input_contents entries belong to no input: one per "
            f"input without contents or a region, in order"
        )
    check_complete(tensors, by_name)
    return tensors


def infer_response(
    name: str,
    record: ModelRecord,
    form: TensorForm,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    regions: SharedMemoryRegions | None,
) -> service_pb2.ModelInferResponse:
    """The answer: every output asked for as raw bytes (``answered_outputs`` chooses them and
    writes those asked for into shared memory)."""
    response = service_pb2.ModelInferResponse(model_name=name, model_version=record.version)
    if request.id is not None:
        response.id = request.id
    for output in answered_outputs(record, form, request, outputs, regions):
        response.outputs.add(
            name=output.name, datatype=output.datatype, shape=list(output.array.shape)
        )
        blob = b"" if output.in_region else tensor_to_bytes(output.array, output.datatype)
        response.raw_output_contents.append(blob)
    return response


def log_settings_changes(request: service_pb2.LogSettingsRequest) -> dict[str, object]:
    """The settings a ``LogSettingsRequest`` names, as ``log_settings.update`` takes them: a
    value with no field set is ``None`` (left as it is, as a JSON ``null`` over HTTP)."""
    changes: dict[str, object] = {}
    for name, value in request.settings.items():
        field = value.WhichOneof("parameter_choice")
        changes[name] = None if field is None else getattr(value, field)
    return changes


def log_settings_response(settings: dict[str, bool | int | str]) -> Any:
    """A ``LogSettingsResponse`` holding every setting, each in its field of its type."""
    response = service_pb2.LogSettingsResponse()
    for name, value in settings.items():
        slot = response.settings[name]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.uint32_param = value
        else:
            slot.string_param = value
    return response
