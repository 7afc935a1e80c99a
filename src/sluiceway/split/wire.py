"""What crosses Redis in split mode: jobs, results and errors as compact msgpack records.

Numpy arrays travel as raw bytes with their dtype and shape (a msgpack extension), never as
lists of floats. Errors travel as typed records and come back as the runtime error classes,
so the HTTP edge answers the same status in split mode as in embedded mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np

from sluiceway.errors import (
    BadInput,
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    QuotaExceeded,
    SluicewayError,
)
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.stats import Duration, ModelCalls

VERSION = 1
_NDARRAY = 1  # msgpack extension code of a numpy array

_ERRORS: dict[str, type[SluicewayError]] = {
    "bad_input": BadInput,
    "overloaded": Overloaded,
    "quota": QuotaExceeded,
    "deadline": DeadlineExceeded,
    "unavailable": ModelUnavailable,
}
_ERROR_KINDS = {cls: kind for kind, cls in _ERRORS.items()}


class WireError(SluicewayError):
    """Bytes that are not a record of this wire version, or a value that cannot be sent."""


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise WireError(f"cannot send an array of Python objects ({value.dtype})")
        header = msgpack.packb([value.dtype.str, list(value.shape)])
        return msgpack.ExtType(_NDARRAY, header + np.ascontiguousarray(value).tobytes())
    if isinstance(value, np.generic):
        return value.item()
    raise WireError(f"cannot send a {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(use_list=True, raw=False)
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    # A copy, so models may write into their inputs as they can in embedded mode.
    array = np.frombuffer(data, dtype=np.dtype(dtype), offset=unpacker.tell()).copy()
    return array.reshape(shape)


def pack(value: Any) -> bytes:
    """Serialise plain data and numpy arrays."""
    try:
        packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise WireError(str(error)) from error
    return packed


def unpack(data: bytes) -> Any:
    """Inverse of :func:`pack`."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise WireError(f"undecodable record: {error}") from error


def unpack_all(data: bytes) -> list[Any]:
    """Every value of a concatenation of :func:`pack` outputs, in order."""
    unpacker = msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False)
    unpacker.feed(data)
    try:
        return list(unpacker)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise WireError(f"undecodable record: {error}") from error


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job on a partition stream, with the reply channel of the API node that asked."""

    job: Job
    reply: str

    def encode(self) -> bytes:
        """Bytes for the stream entry.

        A job's ``priority`` and ``tenant`` follow the eight base fields only when either is
        set, so workers of the release before them still read every job that does not use them
        (a rolling upgrade); a job that does is read by this release's workers only.
        """
        job = self.job
        fields = [
            VERSION,
            job.id,
            job.model,
            job.key,
            job.deadline,
            self.reply,
            job.payload,
            job.spec,
        ]
        if job.priority or job.tenant is not None:
            fields += [job.priority, job.tenant]
        return pack(fields)

    @staticmethod
    def decode(data: bytes) -> JobRecord:
        """Parse a stream entry; raise ``WireError`` if it is not a job of this version."""
        fields = unpack(data)
        # Fields beyond the ten known here are a later release's: ignored (see ``ResultRecord``).
        if (
            not isinstance(fields, list)
            or len(fields) < 8
            or len(fields) == 9
            or fields[0] != VERSION
        ):
            raise WireError(f"not a job record of wire version {VERSION}")
        _, job_id, model, key, deadline, reply, payload, spec = fields[:8]
        priority, tenant = fields[8:10] if len(fields) >= 10 else (0, None)
        if not isinstance(priority, int) or not (tenant is None or isinstance(tenant, str)):
            raise WireError("a job record's priority must be an integer, its tenant text")
        job = Job(
            model=model,
            payload=payload,
            deadline=deadline,
            key=key,
            spec=spec,
            id=job_id,
            priority=priority,
            tenant=tenant,
        )
        return JobRecord(job, reply)


def encode_cancels(cancels: list[tuple[str, float]]) -> bytes:
    """One cancel-channel message: the (job id, deadline) of each job whose requester left."""
    return pack([VERSION, cancels])


def decode_cancels(data: bytes) -> list[tuple[str, float]]:
    """Inverse of :func:`encode_cancels`; raise ``WireError`` for anything else."""
    fields = unpack(data)
    # Fields beyond those known here are a later release's: ignored (see ``ResultRecord``).
    if not isinstance(fields, list) or len(fields) < 2 or fields[0] != VERSION:
        raise WireError(f"not a cancel record of wire version {VERSION}")
    try:
        return [(str(job_id), float(deadline)) for job_id, deadline in fields[1]]
    except (TypeError, ValueError) as error:
        raise WireError(f"bad cancel record: {error}") from error


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An exception on the wire: its kind (a runtime error class, or ``internal``) and message."""

    kind: str
    message: str

    @staticmethod
    def of(error: BaseException) -> ErrorRecord:
        """The record of an exception raised on a worker."""
        for cls in type(error).__mro__:
            kind = _ERROR_KINDS.get(cls)
            if kind is not None:
                return ErrorRecord(kind, str(error))
        return ErrorRecord("internal", f"{type(error).__name__}: {error}")

    def exception(self) -> Exception:
        """The exception to raise on the API node.

        A model's own failure (``internal``) is not a runtime error in embedded mode either,
        so it stays a plain ``RuntimeError`` and the edge answers it the same way.
        """
        cls = _ERRORS.get(self.kind)
        return cls(self.message) if cls is not None else RuntimeError(self.message)


class CallTiming(NamedTuple):
    """The model call a job ran in, as its worker measured it: how long the call took, and
    how long before the answer was sent it started. Clocks differ between machines, so these
    are durations; the API node places the call on its own clock by the answer's arrival
    (``RedisDispatcher``), which puts the hops to and from Redis in the queue time."""

    compute_s: float
    started_s_ago: float

    @staticmethod
    def of(fields: list[Any]) -> CallTiming | None:
        """The timing two result fields give; ``None`` for any that cannot be one (``None,
        None`` is how a later release that sends no timing fills the two places): the answer
        itself is good, and a bad timing must not cost it, nor make a negative or longer than
        possible call of it."""
        compute_s, started_s_ago = fields
        if (
            isinstance(compute_s, float)
            and isinstance(started_s_ago, float)
            and 0.0 <= compute_s <= started_s_ago < math.inf
        ):
            return CallTiming(compute_s, started_s_ago)
        return None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """The answer to one job: its value, or the error it failed with; a value may carry the
    timing of the call that computed it (for the API node's statistics)."""

    job_id: str
    value: Any = None
    error: ErrorRecord | None = None
    timing: CallTiming | None = None

    def encode(self) -> bytes:
        """Bytes of one result; results for one API node are sent concatenated.

        A value's timing follows as two more fields. An API node of the release before this
        one refuses a result of more than four, so in that rolling upgrade the API nodes go
        first (README, "Scaling out"); later fields are ignored (``_of``).
        """
        if self.error is None:
            if self.timing is None:
                return pack([VERSION, self.job_id, True, self.value])
            compute_s, started_s_ago = self.timing
            return pack([VERSION, self.job_id, True, self.value, compute_s, started_s_ago])
        return pack([VERSION, self.job_id, False, [self.error.kind, self.error.message]])

    @staticmethod
    def decode(data: bytes) -> ResultRecord:
        """Parse one result; raise ``WireError`` if it is not a result of this version."""
        return ResultRecord._of(unpack(data))

    @staticmethod
    def decode_all(data: bytes) -> list[ResultRecord]:
        """Parse concatenated results (one reply message); ``WireError`` if any is not one."""
        return [ResultRecord._of(fields) for fields in unpack_all(data)]

    @staticmethod
    def _of(fields: Any) -> ResultRecord:
        # Fields beyond those known here are a later release's: ignored, so a worker of the
        # next release may add one without waiting for every API node to be upgraded first.
        if not isinstance(fields, list) or len(fields) < 4 or fields[0] != VERSION:
            raise WireError(f"not a result record of wire version {VERSION}")
        _, job_id, ok, value = fields[:4]
        if ok:
            timing = CallTiming.of(fields[4:6]) if len(fields) >= 6 else None
            return ResultRecord(job_id, value, timing=timing)
        if not isinstance(value, list) or len(value) < 2:  # later fields: ignored, as above
            raise WireError("a failed result's error must be its kind and message")
        kind, message = value[:2]
        return ResultRecord(job_id, error=ErrorRecord(str(kind), str(message)))

    def outcome(self) -> Any:
        """The value, or raise the error as its runtime class."""
        if self.error is not None:
            raise self.error.exception()
        return self.value


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker's heartbeat in the registry: the models it serves and when it last spoke."""

    models: tuple[str, ...]
    seen: float

    def encode(self) -> bytes:
        """Bytes for the registry hash."""
        return pack([VERSION, list(self.models), self.seen])

    @staticmethod
    def decode(data: bytes) -> WorkerRecord | None:
        """Parse a registry value; ``None`` for one written by another wire version."""
        try:
            fields = unpack(data)
        except WireError:
            return None
        # Fields beyond those known here are a later release's: ignored (see ``ResultRecord``).
        if not isinstance(fields, list) or len(fields) < 3 or fields[0] != VERSION:
            return None
        try:
            return WorkerRecord(tuple(str(model) for model in fields[1]), float(fields[2]))
        except (TypeError, ValueError):  # raised, it took the node's watch loop down with it
            return None


def live_workers(
    registry: dict[bytes, bytes],
    now: float,
    dead_after_s: float,
    paused: Callable[[float], float] | None = None,
) -> dict[str, WorkerRecord]:
    """The workers of a registry hash that spoke within ``dead_after_s``.

    ``paused``: how long the reader itself did not run in the last given seconds
    (``LoopClock.paused_within``). That time is not held against a worker's silence: a reader
    that was starved or stopped most likely shared its machine's pause with the workers there,
    which could not beat meanwhile, and after such a pause it reads the registry before they
    have beaten again. A dead worker is then found dead as much later as the reader was paused,
    one ``dead_after_s`` later at most.
    """
    live = {}
    for worker, data in registry.items():
        record = WorkerRecord.decode(data)
        if record is None:
            continue
        silent = now - record.seen
        if silent >= dead_after_s and paused is not None:
            # At most one window excused: a dead worker is found dead one window late at worst.
            silent -= min(paused(silent), dead_after_s)
        if silent < dead_after_s:
            live[worker.decode()] = record
    return live


@dataclass(frozen=True, slots=True)
class CallsRecord:
    """A worker's model calls since it started, by model (``Keys.calls``): written with its
    heartbeat, summed by the API nodes for the statistics extension (``live_calls``).

    Beside the heartbeat record rather than in it, as model reports are (``control.py``): it
    grows with the models and batch sizes, and every node reads the registry each beat.
    """

    models: dict[str, ModelCalls]

    def encode(self) -> bytes:
        """Bytes for the call-count hash: per model, its call count and, per batch size, the
        calls and their compute nanoseconds."""
        models = {
            name: [
                calls.execution_count,
                [[size, d.count, d.ns] for size, d in calls.batches.items()],
            ]
            for name, calls in self.models.items()
        }
        return pack([VERSION, models])

    @staticmethod
    def decode(data: bytes) -> CallsRecord | None:
        """Parse a call-count value; ``None`` for one of another wire version, or not one.

        Fields beyond those known here, at any level, are a later release's: ignored.
        """
        try:
            fields = unpack(data)
            if not isinstance(fields, list) or len(fields) < 2 or fields[0] != VERSION:
                return None
            models = {}
            for name, entry in fields[1].items():
                count, batches = entry[:2]
                models[str(name)] = ModelCalls(
                    int(count),
                    {int(b[0]): Duration(int(b[1]), int(b[2])) for b in batches},
                )
        except (WireError, TypeError, ValueError, AttributeError, IndexError, ArithmeticError):
            return None  # ArithmeticError: ``int`` of an infinite float
        return CallsRecord(models)


def live_calls(
    registry: dict[bytes, bytes], counts: dict[bytes, bytes], now: float, dead_after_s: float
) -> dict[str, ModelCalls]:
    """The model calls of the workers of a registry hash that are live (``live_workers``),
    from the call-count hash ``counts``, summed by model name: a worker serving another
    version of a model than the others is summed under the name, as Triton's statistics of a
    model go on across its versions here. A worker that dies takes its calls out of the sum."""
    live = live_workers(registry, now, dead_after_s)
    total: dict[str, ModelCalls] = {}
    for worker, data in counts.items():
        record = CallsRecord.decode(data) if worker.decode() in live else None
        if record is None:  # a departed worker's, or of another wire version
            continue
        for name, calls in record.models.items():
            summed = total.get(name)
            if summed is None:
                summed = total[name] = ModelCalls()
            summed.add(calls)
    return total
