"""Per-model inference statistics: Triton's statistics extension, its Prometheus metrics
(``runtime/triton_metrics.py``) and two latency histograms.

Every request submitted to an in-process dispatcher is counted as a success or a failure with
the time it took (a failure also by Triton's reason). As in Triton, a success also adds its
rows (``inference_count``), its queue time (submission to the start of its model call) and its
compute time (that call's duration); every model call is counted by its batch size
(``execution_count``, ``batch_stats``). A request is one job, or several (the Open Inference
Protocol makes one job per row): its caller then counts it once (``Statistics.count_request``)
and its jobs say what they add (``Job.counting``).

In split mode the API node counts the requests, with the times of the model call each job's
answer carries (``split/wire.py``), and each worker counts the model calls it makes; the API
node's statistics extension adds the live workers' calls (``ModelCalls``) to its own counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sluiceway.errors import (
    BadInput,
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    UnknownModel,
)
from sluiceway.models.base import Model
from sluiceway.runtime.jobs import Counting, Job
from sluiceway.runtime.metrics import Metrics


@dataclass(slots=True)
class Duration:
    """A count of events and their total time, in nanoseconds (Triton's ``{count, ns}``)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ModelCalls:
    """One model's calls as another process counted them (a split-mode worker): how many, and
    by batch size with their compute time, as ``ModelStatistics`` counts its own."""

    execution_count: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)

    def add(self, other: ModelCalls) -> None:
        """Add ``other``'s calls, batch sizes merged."""
        self.execution_count += other.execution_count
        for size, calls in other.batches.items():
            batch = self.batches.get(size)
            if batch is None:
                batch = self.batches[size] = Duration()
            batch.count += calls.count
            batch.ns += calls.ns


@dataclass(slots=True)
class ModelStatistics:
    """One model's counters since the process started."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)
    """Model calls by batch size (jobs per call) and their compute time."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed requests by Triton's reason (``failure_reason``)."""
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def with_calls(self, calls: ModelCalls) -> ModelStatistics:
        """A copy of these counters with ``calls`` made elsewhere added (a split-mode API
        node's requests with its live workers' model calls); these stay as they are."""
        merged = _calls_of(self)
        merged.add(calls)
        return dataclasses.replace(
            self, execution_count=merged.execution_count, batches=merged.batches
        )

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """This model's entry of ``GET /v2/models/stats`` in Triton's shape."""
        zero = Duration().as_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                # Inputs are made model-ready at the edge and outputs shaped there, so the
                # whole call is inference; the input and output phases are zero.
                "compute_input": zero,
                "compute_infer": self.compute.as_json(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": calls.count, "ns": 0},
                    "compute_infer": calls.as_json(),
                    "compute_output": {"count": calls.count, "ns": 0},
                }
                for size, calls in sorted(self.batches.items())
            ],
        }


class Statistics:
    """The statistics of every model of one process, and the histograms beside them."""

    def __init__(self, metrics: Metrics, *, makes_calls: bool = True) -> None:
        """``makes_calls``: this process makes the model calls it counts (not so on a
        split-mode API node, whose requests' calls are counted by the workers that make them;
        ``runtime/triton_metrics.py`` then writes no call metrics for it)."""
        self._metrics = metrics
        self.makes_calls = makes_calls
        self._models: dict[str, ModelStatistics] = {}
        # Jobs being measured, by their payload's identity: the model call a job ran in is
        # written here by the timed model, since the batcher hands models payloads, not jobs.
        self._calls: dict[int, tuple[float, float] | None] = {}
        # The call of each request's first job (``Counting.TIMES``) until its request is
        # counted: its times are a success's only.
        self._first_rows: dict[int, tuple[float, float]] = {}

    def of(self, model: str) -> ModelStatistics:
        """``model``'s counters (all zero before its first job)."""
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = ModelStatistics()
        return stats

    def timed(self, model: str, loaded: Model) -> Model:
        """``loaded`` with each of its calls counted and timed."""
        return _TimedModel(loaded, self.of(model), self._calls)

    def calls(self) -> dict[str, ModelCalls]:
        """A copy of the model calls counted here, of each model that made any (what a
        split-mode worker publishes for the API nodes' statistics)."""
        with _COUNTING:  # a model call on a worker thread may be writing them
            return {name: _calls_of(s) for name, s in self._models.items() if s.execution_count}

    def watch(self, job: Job) -> Watch:
        """Start measuring ``job``; ``done`` counts it (no coroutine of its own: a job answered
        on the spot costs its dispatcher no more than a call)."""
        key = id(job.payload)
        # Two jobs sharing one payload: time the first only. A job of a request counted by
        # its caller adds nothing beyond its model call unless it is the request's first.
        watched = key not in self._calls and job.counting != Counting.CALL
        if watched:
            self._calls[key] = None
        return Watch(key if watched else None, time.perf_counter())

    def done(
        self,
        job: Job,
        watch: Watch,
        error: BaseException | None,
        call: tuple[float, float] | None = None,
    ) -> tuple[float, float] | None:
        """Count ``job``, watched since ``watch``, as a success (``error`` ``None``) or a
        failure, with its times, as far as ``job.counting`` says; the start and end
        (``perf_counter``) of the model call it ran in, if it ran in one.

        ``call``: that call's times when another process made it (a split-mode API node
        passes the times a worker's answer carried).
        """
        if watch.key is not None:
            with _COUNTING:  # a model call on a worker thread may be writing it
                timed = self._calls.pop(watch.key, None)
            call = call or timed
        if job.counting == Counting.REQUEST:
            self._count(job, 1, watch.submitted, call, error)
        elif job.counting == Counting.TIMES and call is not None:
            self._first_rows[id(job)] = call  # counted with its request, if that succeeds
        return call

    def count_request(
        self, first: Job, rows: int, submitted: float, error: BaseException | None
    ) -> None:
        """Count one request of ``rows`` jobs, ``first`` the one counted ``Counting.TIMES``
        (the others ``CALL``), submitted at ``submitted`` (``perf_counter``), as a success
        (``error`` ``None``) or a failure."""
        call = self._first_rows.pop(id(first), None)
        self._count(first, rows, submitted, call, error)

    def _count(
        self,
        job: Job,
        rows: int,
        submitted: float,
        call: tuple[float, float] | None,
        error: BaseException | None,
    ) -> None:
        """One request's outcome. As Triton, only a success adds its rows (``inference_count``)
        and its queue and compute times; a failure adds its time and its reason."""
        stats = self.of(job.model)
        elapsed = time.perf_counter() - submitted
        if error is not None:
            stats.fail.add(elapsed)
            reason = failure_reason(error, job)
            stats.failures[reason] = stats.failures.get(reason, 0) + 1
            return
        stats.success.add(elapsed)
        stats.inference_count += rows
        if not self.makes_calls:  # no model call here to set it (``_TimedModel``)
            stats.last_inference_ms = int(time.time() * 1000)
        if call is None:
            return
        started, finished = call
        stats.queue.add(max(0.0, started - submitted))
        stats.compute.add(finished - started)
        # Queue time goes to Prometheus from the batcher (``sluiceway_queue_seconds``; in split
        # mode, the worker's).
        self._metrics.compute_of(job.model).observe(finished - started)


def _calls_of(stats: ModelStatistics) -> ModelCalls:
    """A copy of ``stats``'s model calls."""
    batches = {size: Duration(calls.count, calls.ns) for size, calls in stats.batches.items()}
    return ModelCalls(stats.execution_count, batches)


def failure_reason(error: BaseException, job: Job) -> str:
    """Triton's reason for ``job``'s request failing with ``error`` (the ``reason`` label of
    ``nv_inference_request_failure``): ``REJECTED`` for a request the server would not run
    (queue full, deadline passed, model unavailable), ``CANCELED`` for one whose caller left,
    ``BACKEND`` for the model's own error, ``OTHER`` for input the model itself refused.

    A cancellation at or after the job's deadline is the deadline's (a caller's own timeout,
    as the bird API's, fires with the job's): ``REJECTED``, not a caller who left.
    """
    if isinstance(error, asyncio.CancelledError):
        return "REJECTED" if job.remaining() <= 0 else "CANCELED"
    if isinstance(error, Overloaded | DeadlineExceeded | ModelUnavailable | UnknownModel):
        return "REJECTED"
    if isinstance(error, BadInput):
        return "OTHER"
    return "BACKEND"


class Watch(NamedTuple):
    """A job being measured: its payload's key in the calls table (``None``: another job with
    the same payload is timed instead) and when it was submitted (``perf_counter``)."""

    key: int | None
    submitted: float


class _TimedModel(Model):
    """A model whose calls are counted by batch size and whose jobs learn when they ran."""

    def __init__(
        self,
        model: Model,
        stats: ModelStatistics,
        calls: dict[int, tuple[float, float] | None],
    ) -> None:
        self._model = model
        self._stats = stats
        self._calls = calls

    @property
    def nbytes(self) -> int:
        return self._model.nbytes

    @property
    def runs_inline(self) -> bool:
        return self._model.runs_inline

    @property
    def computes_on_caller(self) -> bool:
        return self._model.computes_on_caller

    @property
    def runs_wide(self) -> bool:
        return self._model.runs_wide

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        return self._counted(self._model.infer_wide, inputs)

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        started = time.perf_counter()
        try:
            return await self._model.infer(inputs)
        finally:
            self._count(inputs, started)

    def infer_inline(self, inputs: Sequence[Any]) -> list[Any]:
        return self._counted(self._model.infer_inline, inputs)

    def _counted(
        self, call: Callable[[Sequence[Any]], list[Any]], inputs: Sequence[Any]
    ) -> list[Any]:
        """``call(inputs)``, a blocking call of the model, counted and timed."""
        started = time.perf_counter()
        try:
            return call(inputs)
        finally:
            self._count(inputs, started)

    def _count(self, inputs: Sequence[Any], started: float) -> None:
        finished = time.perf_counter()
        stats = self._stats
        calls = self._calls
        # ``infer_inline`` may run on worker threads (two slots, two calls at once).
        with _COUNTING:
            for item in inputs:
                if id(item) in calls:
                    calls[id(item)] = (started, finished)
            size = len(inputs)
            batch = stats.batches.get(size)
            if batch is None:
                batch = stats.batches[size] = Duration()
            batch.add(finished - started)
            stats.execution_count += 1
            stats.last_inference_ms = int(time.time() * 1000)


_COUNTING = threading.Lock()
