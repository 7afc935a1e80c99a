"""An inference request's body, read and checked: JSON tensors or Triton's binary ones.

The body is a JSON header (all of it without ``Inference-Header-Content-Length``), then each
binary input's raw bytes; it may come gzip- or deflate-compressed. ``InferRequest.parse``
checks it against the model's ``TensorForm`` and says what is wrong with a ``BadInput``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import orjson

from sluiceway.api.errors import RequestError
from sluiceway.api.oip.forms import TensorForm
from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.models.tensors import DATATYPES, TensorSpec, tensor_from_bytes, tensor_from_json
from sluiceway.shared_memory import SharedMemoryRegions

HEADER_LENGTH = "inference-header-content-length"
"""Triton's binary extension: how many bytes of the body are the JSON header."""


@dataclass(slots=True, frozen=True)
class RegionSpan:
    """Where a tensor lies in a registered shared memory region (the shared memory
    extension's ``shared_memory_region``, ``shared_memory_offset`` and
    ``shared_memory_byte_size`` parameters)."""

    region: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class OutputRequest:
    name: str
    binary: bool | None
    """``None``: as the request's ``binary_data_output`` says."""
    classes: int = 0
    span: RegionSpan | None = None
    """Written into shared memory rather than into the answer."""


@dataclass(slots=True)
class InferRequest:
    """A checked inference request: its tensors and what the caller asked about the answer."""

    id: str | None
    tensors: dict[str, np.ndarray]
    outputs: list[OutputRequest] | None
    binary_output: bool
    timeout_s: float | None
    priority: int
    """``Job.priority`` (higher first) of the request's level: ``job_priority``."""

    @classmethod
    def parse(
        cls,
        header: bytes,
        tail: memoryview,
        form: TensorForm,
        regions: SharedMemoryRegions | None = None,
    ) -> InferRequest:
        """The request, checked; ``regions``: the server's shared memory regions (``None``
        where clients may not use shared memory)."""
        try:
            body = orjson.loads(header)
        except orjson.JSONDecodeError as error:
            raise BadInput(f"the request is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadInput('the request is a JSON object: {"inputs": [...]}')
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadInput("'id' must be a string")
        parameters = _parameters(body.get("parameters"), "the request's 'parameters'")
        binary_output = parameters.get("binary_data_output", False)
        if not isinstance(binary_output, bool):
            raise BadInput("'binary_data_output' must be true or false")
        priority = job_priority(parameters.get("priority", 0))
        if "sequence_id" in parameters and parameters["sequence_id"] not in (0, ""):
            raise BadInput("sequences (sequence_id) are not supported: every request stands alone")
        tensors = _inputs(body.get("inputs"), tail, form.inputs, regions)
        if form.batched:
            check_rows(tensors)
        outputs = body.get("outputs")
        return cls(
            request_id,
            tensors,
            None if outputs is None else _outputs(outputs, regions),
            binary_output,
            timeout_seconds(parameters.get("timeout")),
            priority,
        )


def _inputs(
    given: Any,
    tail: memoryview,
    specs: Sequence[TensorSpec],
    regions: SharedMemoryRegions | None,
) -> dict[str, np.ndarray]:
    if not isinstance(given, list) or not given:
        raise BadInput("'inputs' must be a non-empty list of tensors")
    by_name = {spec.name: spec for spec in specs}
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for item in given:
        if not isinstance(item, dict):
            raise BadInput('each input is an object: {"name", "shape", "datatype", "data"}')
        name = item.get("name")
        shape = item.get("shape")
        datatype = item.get("datatype")
        if not isinstance(name, str):
            raise BadInput("each input needs a 'name'")
        if not _is_shape(shape):
            raise BadInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if not isinstance(datatype, str):
            raise BadInput(f"input {name!r} needs a 'datatype'")
        spec = input_spec(name, datatype, shape, by_name, tensors)
        size: Any = None
        span: RegionSpan | None = None
        given_parameters = item.get("parameters")
        if given_parameters is not None:  # most inputs have none: nothing to look up or word
            parameters = _parameters(given_parameters, f"input {name!r}'s 'parameters'")
            size = parameters.get("binary_data_size")
            span = region_span(parameters, "input", name, regions)
        if span is not None:
            assert regions is not None  # _span refuses a span without them
            where = f"input {name!r}"
            if size is not None or "data" in item:
                raise BadInput(f"{where} is in shared memory and in the request: send it once")
            raw = regions.read(span.region, span.offset, span.byte_size, where)
            array = tensor_from_bytes(name, datatype, shape, raw)
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadInput(f"input {name!r}: 'binary_data_size' must be a byte count")
            if item.get("data") is not None:  # KServe's client sends null with an empty tensor
                raise BadInput(f"input {name!r} is in the binary data and in 'data': send it once")
            if offset + size > len(tail):
                raise BadInput(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(tail) - offset} bytes left)"
                )
            array = tensor_from_bytes(name, datatype, shape, tail[offset : offset + size])
            offset += size
        elif "data" in item:
            array = tensor_from_json(name, datatype, shape, item["data"])
        else:
            raise BadInput(f"input {name!r} has neither 'data' nor a 'binary_data_size'")
        tensors[name] = spec.check(array)
    if offset != len(tail):
        raise BadInput(f"{len(tail) - offset} bytes after the binary inputs belong to none")
    check_complete(tensors, by_name)
    return tensors


def _is_shape(shape: Any) -> TypeGuard[list[int]]:
    """Whether ``shape`` is a list of non-negative integers (a loop, not ``all`` over a
    generator: every input of every request asks)."""
    if not isinstance(shape, list):
        return False
    for d in shape:  # noqa: SIM110 (all() over a generator costs more per request)
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            return False
    return True


def input_spec(
    name: str,
    datatype: str,
    shape: Sequence[int],
    by_name: dict[str, TensorSpec],
    given: dict[str, np.ndarray],
) -> TensorSpec:
    """The model's spec of the input ``name`` (``by_name``: empty where the model declares
    none), checked to be known, not ``given`` already, and of the model's datatype."""
    spec = by_name.get(name) if by_name else _undeclared(name, datatype, shape)
    if spec is None:
        raise BadInput(f"unknown input {name!r}; the model takes {list(by_name)}")
    if name in given:
        raise BadInput(f"input {name!r} is given twice")
    if datatype != spec.datatype:
        raise BadInput(f"input {name!r} is {datatype}; the model takes {spec.datatype}")
    return spec


def check_complete(tensors: dict[str, np.ndarray], by_name: dict[str, TensorSpec]) -> None:
    """``BadInput`` naming the inputs the model declares and the request lacks."""
    missing = [name for name in by_name if name not in tensors]
    if missing:
        raise BadInput(f"missing inputs {missing}; the model takes {list(by_name)}")


def _undeclared(name: str, datatype: str, shape: Sequence[int]) -> TensorSpec:
    """A tensor of a model whose config declares none: the model file checks it."""
    if datatype not in DATATYPES:
        raise BadInput(f"input {name!r}: unknown datatype {datatype!r}; known: {sorted(DATATYPES)}")
    return TensorSpec(name, datatype, tuple(-1 for _ in shape))


def check_rows(tensors: dict[str, np.ndarray]) -> None:
    rows = {array.shape[0] for array in tensors.values()}
    if len(rows) > 1:
        raise BadInput(f"every input needs the same batch size (first dimension), got {rows}")
    if rows == {0}:
        raise BadInput("the batch is empty (first dimension 0)")


def region_span(
    parameters: dict[str, Any], kind: str, name: str, regions: SharedMemoryRegions | None
) -> RegionSpan | None:
    """Where the ``kind`` (input or output) ``name`` lies in shared memory, from its
    parameters; ``None`` when it has none (every tensor of every request asks, so nothing is
    formatted before then)."""
    region = parameters.get("shared_memory_region")
    size = parameters.get("shared_memory_byte_size")
    if region is None and size is None:
        return None
    offset = parameters.get("shared_memory_offset", 0)
    what = f"{kind} {name!r}"
    if regions is None:
        raise RequestError(
            403,
            f"{what}: this server takes no tensors in shared memory "
            f"(SLUICEWAY_ALLOW_CLIENT_SHM is off)",
        )
    if not isinstance(region, str) or size is None:
        raise BadInput(
            f"{what}: 'shared_memory_region' (a name) and 'shared_memory_byte_size' go together"
        )
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadInput(f"{what}: {key!r} must be a byte count")
    return RegionSpan(region, offset, size)


def _outputs(given: Any, regions: SharedMemoryRegions | None) -> list[OutputRequest] | None:
    if given is None:
        return None
    if not isinstance(given, list):
        raise BadInput("'outputs' must be a list of {\"name\": ...}")
    wanted = []
    for item in given:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadInput("each requested output needs a 'name'")
        parameters = _parameters(item.get("parameters"), f"output {item['name']!r}'s 'parameters'")
        wanted.append(output_request(item["name"], parameters, regions))
    check_once(wanted)
    return wanted


def check_once(outputs: list[OutputRequest]) -> None:
    """``BadInput`` naming an output asked for twice: each copy would be answered whole, so a
    small request naming one large output thousands of times got an answer thousands of times
    its size."""
    names: set[str] = set()
    for output in outputs:
        if output.name in names:
            raise BadInput(f"output {output.name!r} is asked for twice")
        names.add(output.name)


def output_request(
    name: str, parameters: dict[str, Any], regions: SharedMemoryRegions | None
) -> OutputRequest:
    """A requested output from its parameters: ``binary_data``, ``classification`` and the
    shared memory extension's (its region checked now, before the model runs)."""
    binary = parameters.get("binary_data")
    classes = parameters.get("classification", 0)
    if binary is not None and not isinstance(binary, bool):
        raise BadInput(f"output {name!r}: 'binary_data' must be true or false")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise BadInput(f"output {name!r}: 'classification' must be a class count")
    span = region_span(parameters, "output", name, regions)
    if span is not None and regions is not None:
        # Refused before the model runs, not after: the region and the room given exist.
        regions.region(span.region).check(span.offset, span.byte_size, f"output {name!r}")
    return OutputRequest(name, binary, classes, span)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail of a body (all JSON without the length header).

    The tail is a view: an image's 600 KB go from the body to the model's input uncopied.
    """
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits, few enough for int(): isdigit() alone also takes "²", which int() refuses,
    # as it refuses over 4300 digits (a ValueError: a 500). 18 digits: any body's length.
    digits = header_length.isascii() and header_length.isdigit() and len(header_length) <= 18
    if not digits or int(header_length) > len(body):
        raise RequestError(
            400,
            f"Inference-Header-Content-Length must be a byte count within the body's "
            f"{len(body)} bytes, got {header_length!r}",
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def decompressed(body: bytes, encoding: str | None, settings: Settings) -> bytes:
    """A body sent gzip- or deflate-compressed (tritonclient's request compression), inflated
    within the body size limit."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise RequestError(400, f"Content-Encoding {encoding!r} is not supported: gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, settings.max_body_bytes + 1)
    except zlib.error as error:
        raise RequestError(400, f"the body is not valid {encoding}: {error}") from None
    if len(inflated) > settings.max_body_bytes or inflater.unconsumed_tail:
        raise RequestError(413, "the decompressed body is over the body size limit")
    return inflated


def _parameters(given: Any, where: str) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise BadInput(f"{where} must be an object")
    return given


def timeout_seconds(given: Any) -> float | None:
    """The ``timeout`` parameter (microseconds; 0 or absent: the server's own deadline)."""
    if given is None:
        return None
    if not isinstance(given, int) or isinstance(given, bool) or given < 0:
        raise BadInput("'timeout' must be a whole number of microseconds")
    return given / 1e6 if given else None


PRIORITY_LEVELS = 2**31 - 1
"""Triton's ``priority`` levels accepted: 1 (first) to this; 0 is the default level."""


def job_priority(level: Any) -> int:
    """The ``priority`` parameter as Triton means it, as a ``Job.priority`` (higher first).

    Level 1 is served first, then 2, and so on; 0 (or no parameter) is the default level,
    after every explicit one: Triton with its default level set to the lowest. Every other
    contract's jobs are at the default level too.
    """
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= PRIORITY_LEVELS:
        raise BadInput(f"'priority' must be an integer from 0 (default) to {PRIORITY_LEVELS}")
    return PRIORITY_LEVELS + 1 - level if level else 0
