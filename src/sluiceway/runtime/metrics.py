"""Prometheus metrics of one Sluiceway process, on a registry of its own."""

from __future__ import annotations

import weakref
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Queued(Protocol):
    """Anything that holds jobs waiting for a compute slot (a model's lane)."""

    @property
    def depth(self) -> int: ...


class Metrics:
    """Every metric Sluiceway exports; one instance per app, never module-level.

    The per-request hot path asks for labelled children through the cached lookups below
    (``request_children``, ``compute_of``): ``labels()`` costs about a microsecond per call,
    several times per inference request.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sluiceway_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sluiceway_request_duration_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.edge_refusals = Counter(
            "sluiceway_edge_refusals",
            "Requests and connections the HTTP edge refused or cut off, by reason and status",
            ["reason", "status"],
            registry=r,
        )
        self.model_loads = Counter(
            "sluiceway_model_loads", "Model loads or fits, by model", ["model"], registry=r
        )
        self.model_evictions = Counter(
            "sluiceway_model_evictions", "Models evicted from the cache", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "sluiceway_batch_size",
            "Inputs per model call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "sluiceway_batch_duration_seconds",
            "Time of one model call",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "sluiceway_compute_duration_seconds",
            "Time of the model call a job ran in",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sluiceway_queue_depth", "Jobs waiting for a compute slot", ["model"], registry=r
        )
        self.rejected = Counter(
            "sluiceway_rejected",
            "Jobs refused because the queue was full",
            ["model"],
            registry=r,
        )
        self.expired = Counter(
            "sluiceway_expired",
            "Jobs dropped unrun because their deadline passed",
            ["model"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            "sluiceway_queue_seconds",
            "Time a job waited before its model call started",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.splits = Counter(
            "sluiceway_split_calls",
            "Model calls added by spreading a key's waiting jobs over free slots",
            ["model"],
            registry=r,
        )
        self.deferred = Counter(
            "sluiceway_deferred_calls",
            "Times a key's waiting jobs were left for the next slots to free instead of one "
            "call far above a slot's share of the lane's jobs",
            ["model"],
            registry=r,
        )
        self.wide_calls = Counter(
            "sluiceway_wide_calls",
            "Model calls run on every core, made while no other model call computed",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            "sluiceway_cancelled",
            "Jobs removed unrun because their caller went away",
            ["model"],
            registry=r,
        )
        self.quota_rejected = Counter(
            "sluiceway_quota_rejected",
            "Jobs refused because their tenant had its quota queued",
            ["model"],
            registry=r,
        )
        self.reclaimed = Counter(
            "sluiceway_reclaimed_jobs",
            "Jobs a worker took over from a dead or stuck worker (split mode)",
            registry=r,
        )
        self.partitions_helped = Counter(
            "sluiceway_partitions_helped",
            "Saturated partitions of other workers this worker joined as a second consumer",
            registry=r,
        )
        self.dead_letters = Counter(
            "sluiceway_dead_letters",
            "Jobs moved to the dead-letter stream, by model (split mode)",
            ["model"],
            registry=r,
        )

        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._compute_children: dict[str, Histogram] = {}
        self._queued: dict[str, weakref.WeakSet[Queued]] = {}

    def request_children(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The ``sluiceway_requests`` and ``sluiceway_request_duration_seconds`` children of one
        route, method and status (as many as their labels make anyway)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (
                self.requests.labels(route, method, code),
                self.request_seconds.labels(route, code),
            )
            self._request_children[key] = children
        return children

    def compute_of(self, model: str) -> Histogram:
        """The ``sluiceway_compute_duration_seconds`` child of ``model``."""
        child = self._compute_children.get(model)
        if child is None:
            child = self._compute_children[model] = self.compute_seconds.labels(model)
        return child

    def queued(self, model: str) -> int:
        """Jobs of ``model`` waiting for a compute slot now (what ``sluiceway_queue_depth``
        reads)."""
        return sum(queue.depth for queue in list(self._queued.get(model, ())))

    def count_queued(self, model: str, queue: Queued) -> None:
        """Report ``queue``'s depth in ``sluiceway_queue_depth``, summed over ``model``'s queues
        alive (a replaced lane draining beside the new one), read when metrics are collected:
        no gauge is written per job."""
        queues = self._queued.get(model)
        if queues is None:
            queues = self._queued[model] = weakref.WeakSet()
            self.queue_depth.labels(model).set_function(
                lambda: sum(queue.depth for queue in list(queues))
            )
        queues.add(queue)
