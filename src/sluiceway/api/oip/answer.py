"""An inference answer: the outputs asked for, as JSON or Triton's binary tensors, and the
classification extension's top classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import Response

from sluiceway.api.oip.forms import TensorForm
from sluiceway.api.oip.inference_request import InferRequest, OutputRequest, RegionSpan
from sluiceway.errors import BadInput
from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import DATATYPES, tensor_to_bytes, tensor_to_json
from sluiceway.shared_memory import Region, SharedMemoryRegions

_DTYPE_NAMES = {str(dtype): name for name, dtype in DATATYPES.items() if name != "BYTES"}


@dataclass(slots=True, frozen=True)
class AnsweredOutput:
    """One output as the answer carries it."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool
    """Sent as raw bytes (Triton's binary extension; always, over gRPC)."""
    in_region: bool
    """Written into shared memory: the answer carries its name, datatype and shape only."""


def answered_outputs(
    record: ModelRecord,
    form: TensorForm,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    regions: SharedMemoryRegions | None = None,
) -> list[AnsweredOutput]:
    """The outputs ``request`` asked for (every output when it named none), classified where
    it asked for top classes, and those it asked for in shared memory written there
    (``regions``: ``InferRequest.parse`` checked that the server allows it), all checked to
    fit before any is written."""
    declared = {spec.name: spec for spec in form.outputs}
    if request.outputs is None:
        wanted = [OutputRequest(key, request.binary_output) for key in outputs]
    else:
        wanted = request.outputs
        for item in wanted:
            if item.name not in outputs:
                raise BadInput(f"unknown output {item.name!r}; the model gives {list(outputs)}")
    answered = []
    writes: list[tuple[Region, int, bytes, str]] = []
    for item in wanted:
        array = outputs[item.name]
        spec = declared.get(item.name)
        datatype = spec.datatype if spec is not None else _datatype(array)
        if item.classes:
            if datatype in ("BYTES", "BOOL"):
                raise BadInput(
                    f"output {item.name!r} is {datatype}: 'classification' ranks numbers"
                )
            array, datatype = _classified(array, item.classes, record.labels), "BYTES"
        binary = item.binary if item.binary is not None else request.binary_output
        if item.span is not None:
            assert regions is not None  # InferRequest.parse refused the span otherwise
            writes.append(_checked_write(regions, item.span, item.name, array, datatype))
        answered.append(AnsweredOutput(item.name, datatype, array, binary, item.span is not None))
    for region, offset, blob, where in writes:  # every output checked before any is written
        region.write(offset, blob, where)
    return answered


def answer(
    name: str,
    record: ModelRecord,
    form: TensorForm,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    regions: SharedMemoryRegions | None = None,
) -> Response:
    """The HTTP answer to ``request``: its outputs as JSON, binary or written into shared
    memory (``answered_outputs``)."""
    body: dict[str, Any] = {"model_name": name, "model_version": record.version}
    if request.id is not None:
        body["id"] = request.id
    tensors = []
    blobs = []
    for output in answered_outputs(record, form, request, outputs, regions):
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.in_region:
            pass  # as Triton answers it: name, datatype and shape; the data are in the region
        elif output.binary:
            blob = tensor_to_bytes(output.array, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = tensor_to_json(output.array, output.datatype)
        tensors.append(tensor)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return _Answer(header, _JSON)
    return _Answer(
        b"".join([header, *blobs]),
        _BINARY,
        (b"inference-header-content-length", b"%d" % len(header)),
    )


def _checked_write(
    regions: SharedMemoryRegions, span: RegionSpan, name: str, array: np.ndarray, datatype: str
) -> tuple[Region, int, bytes, str]:
    """An output's bytes and where they go in shared memory, checked to fit the room the
    request gave them."""
    blob = tensor_to_bytes(array, datatype)
    where = f"output {name!r}"
    if len(blob) > span.byte_size:
        raise BadInput(
            f"{where} is {len(blob)} bytes, more than the {span.byte_size} bytes of shared "
            f"memory given for it"
        )
    region = regions.region(span.region)
    region.check(span.offset, len(blob), where)
    return region, span.offset, blob, where


_JSON = (b"content-type", b"application/json")


_BINARY = (b"content-type", b"application/octet-stream")


class _Answer(Response):
    """An inference answer: Starlette's ``Response`` with its headers made in one step (every
    inference request builds one)."""

    def __init__(self, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-length", b"%d" % len(body)), *headers]


def _classified(scores: np.ndarray, classes: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: each row's top classes as ``score:index[:label]``;
    a model without a batch dimension (a 1-D output, as Triton's quickstart densenet_onnx) is
    ranked whole."""
    if scores.ndim == 1:
        whole: np.ndarray = _classified(scores[None], classes, labels)[0]
        return whole
    if scores.ndim != 2:
        raise BadInput("'classification' needs an output of shape [batch, classes] or [classes]")
    k = min(classes, scores.shape[1])
    # As float64: negating an unsigned score would wrap (0 would rank first).
    order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]
    rows = []
    for row, indices in zip(scores, order, strict=True):
        items = []
        for index in indices:
            text = f"{float(row[index]):f}:{int(index)}"
            if index < len(labels):
                text += f":{labels[index]}"
            items.append(text.encode())
        rows.append(items)
    return np.array(rows, dtype=np.object_).reshape(len(rows), k)


def _datatype(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return "BYTES"
    name = _DTYPE_NAMES.get(str(array.dtype))
    if name is None:  # a model's bug, not the caller's
        raise RuntimeError(f"an output of type {array.dtype} has no protocol datatype")
    return name
