"""Triton's per-model Prometheus metrics (``nv_inference_*``), rendered from the statistics.

A Triton user's dashboards, alerts and autoscalers query these names: request and failure
rates, queue and compute time, the queue itself (``nv_inference_pending_request_count``, which
KEDA rules and the Gateway API inference extension's queue scorer read). They are rendered when
``/metrics`` is scraped from what ``runtime/stats.py`` already counts for the statistics
extension, so a request costs nothing more for them.

Rendered here rather than by prometheus_client: Triton's counters carry no ``_total`` suffix,
and prometheus_client writes every counter's ``TYPE`` line with one, so a dashboard's
``nv_inference_request_success`` would match no counter it declared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sluiceway.runtime.stats import ModelStatistics

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
"""Triton's reasons for a failed request, each always written (``stats.failure_reason``)."""


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """What one model version reports: its statistics and its jobs waiting now."""

    name: str
    version: str
    stats: ModelStatistics
    pending: int


_US = "in microseconds"
_COUNTERS = {
    "nv_inference_request_success": "Successful inference requests (several rows count once)",
    "nv_inference_request_failure": "Failed inference requests, by reason",
    "nv_inference_count": "Rows of successful requests (a request of n rows counts n)",
    "nv_inference_exec_count": "Model calls (inference_count / exec_count: the mean batch)",
    "nv_inference_request_duration_us": f"Time of successful requests, received to answered, {_US}",
    "nv_inference_queue_duration_us": f"Time successful requests waited for a call, {_US}",
    "nv_inference_compute_input_duration_us": f"Time preparing inputs in the call, {_US} (none)",
    "nv_inference_compute_infer_duration_us": f"Time of successful requests' model calls, {_US}",
    "nv_inference_compute_output_duration_us": f"Time shaping outputs in the call, {_US} (none)",
}


_CALL_COUNTERS = ("nv_inference_exec_count",)
"""What the process making the model calls counts; the rest is counted per request."""


def render(models: Iterable[ModelMetrics], *, requests: bool = True, calls: bool = True) -> bytes:
    """Prometheus text exposition of Triton's per-model metrics (its classic text format,
    which ``/metrics`` serves).

    In split mode each metric is written by one kind of process, so a sum over every scraped
    process counts each request and call once: the API nodes count the requests
    (``calls=False``), the workers their calls and the jobs waiting (``requests=False``).
    """
    rows = list(models)
    lines: list[str] = []
    for name, help_text in _COUNTERS.items():
        if not (calls if name in _CALL_COUNTERS else requests):
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for row in rows:
            labels = f'model="{_escaped(row.name)}",version="{_escaped(row.version)}"'
            if name == "nv_inference_request_failure":
                for reason in FAILURE_REASONS:
                    count = row.stats.failures.get(reason, 0)
                    lines.append(f'{name}{{{labels},reason="{reason}"}} {count}')
            else:
                lines.append(f"{name}{{{labels}}} {_value(name, row.stats)}")
    if calls:
        name = "nv_inference_pending_request_count"
        lines += [
            f"# HELP {name} Jobs (rows of requests) waiting for a model call now",
            f"# TYPE {name} gauge",
        ]
        for row in rows:
            labels = f'model="{_escaped(row.name)}",version="{_escaped(row.version)}"'
            lines.append(f"{name}{{{labels}}} {row.pending}")
    return ("\n".join(lines) + "\n").encode() if rows else b""


def _value(name: str, stats: ModelStatistics) -> int:
    """One counter's value for one model (durations in whole microseconds, as Triton's)."""
    match name:
        case "nv_inference_request_success":
            return stats.success.count
        case "nv_inference_count":
            return stats.inference_count
        case "nv_inference_exec_count":
            return stats.execution_count
        case "nv_inference_request_duration_us":
            return stats.success.ns // 1000
        case "nv_inference_queue_duration_us":
            return stats.queue.ns // 1000
        case "nv_inference_compute_infer_duration_us":
            return stats.compute.ns // 1000
    return 0  # compute input and output: part of the call, as the statistics extension says


def _escaped(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
