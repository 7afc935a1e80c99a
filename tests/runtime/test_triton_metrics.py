"""Triton's per-model metrics: failures counted by Triton's reasons, and the text written."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluiceway.errors import DeadlineExceeded, Overloaded
from sluiceway.models.base import BatchPolicy
from sluiceway.runtime.stats import ModelStatistics, failure_reason
from sluiceway.runtime.triton_metrics import ModelMetrics, render
from tests.fixtures.waiting import eventually
from tests.runtime.test_batcher import job, make


async def test_each_failure_is_counted_by_tritons_reason() -> None:
    dispatcher, kind = make(BatchPolicy(slots=1, max_batch=1, max_queue=1))
    assert await dispatcher.submit(job(1)) == 2
    with pytest.raises(ValueError, match="odd"):  # the model's own error
        await dispatcher.submit(job("bad"))
    with pytest.raises(DeadlineExceeded):  # never run
        await dispatcher.submit(job(2, timeout=-1))
    kind.gate = asyncio.Event()
    running = asyncio.ensure_future(dispatcher.submit(job(3)))
    await eventually(lambda: kind.running == 1)
    waiting = asyncio.ensure_future(dispatcher.submit(job(4)))
    await eventually(lambda: dispatcher.lane("double").depth == 1)
    with pytest.raises(Overloaded):  # the queue is full
        await dispatcher.submit(job(5))
    waiting.cancel()  # its caller leaves while it waits
    with pytest.raises(asyncio.CancelledError):
        await waiting
    kind.gate.set()
    assert await running == 6
    stats = dispatcher.statistics.of("double")
    assert stats.success.count == 2 and stats.fail.count == 4
    assert stats.failures == {"BACKEND": 1, "REJECTED": 2, "CANCELED": 1}
    # As in Triton, only the successes add rows and queue and compute times.
    assert stats.inference_count == 2 and stats.queue.count == 2 and stats.compute.count == 2
    assert dispatcher.statistics._first_rows == {} and dispatcher.statistics._calls == {}


def test_a_cancellation_past_the_deadline_is_the_deadlines() -> None:
    # A caller's own timeout (the bird API's) fires with the job's deadline: not a leaver.
    cancelled = asyncio.CancelledError()
    assert failure_reason(cancelled, job(1, timeout=-0.001)) == "REJECTED"
    assert failure_reason(cancelled, job(1, timeout=5)) == "CANCELED"


def test_the_text_is_tritons_names_labels_and_units() -> None:
    stats = ModelStatistics(inference_count=5, execution_count=2)
    stats.success.add(0.25)
    stats.success.add(0.5)
    stats.fail.add(0.1)
    stats.failures["REJECTED"] = 1
    stats.queue.add(0.001)
    stats.compute.add(0.0025)
    text = render(
        [
            ModelMetrics('lin"ear', "3", stats, 7),
            ModelMetrics("b", "1", ModelStatistics(), 0),
            ModelMetrics("odd\\name", "line\nbreak", ModelStatistics(), 0),
        ]
    ).decode()
    lines = text.splitlines()
    # Triton's counters have no _total suffix, in the samples and in their TYPE lines.
    assert "# TYPE nv_inference_request_success counter" in lines
    assert 'nv_inference_request_success{model="lin\\"ear",version="3"} 2' in lines
    assert (
        'nv_inference_request_failure{model="lin\\"ear",version="3",reason="REJECTED"} 1' in lines
    )
    assert 'nv_inference_request_failure{model="b",version="1",reason="BACKEND"} 0' in lines
    assert 'nv_inference_count{model="lin\\"ear",version="3"} 5' in lines
    assert 'nv_inference_exec_count{model="lin\\"ear",version="3"} 2' in lines
    assert 'nv_inference_request_duration_us{model="lin\\"ear",version="3"} 750000' in lines
    assert 'nv_inference_queue_duration_us{model="lin\\"ear",version="3"} 1000' in lines
    assert 'nv_inference_compute_infer_duration_us{model="lin\\"ear",version="3"} 2500' in lines
    assert 'nv_inference_compute_input_duration_us{model="b",version="1"} 0' in lines
    assert "# TYPE nv_inference_pending_request_count gauge" in lines
    assert 'nv_inference_count{model="odd\\\\name",version="line\\nbreak"} 0' in lines
    assert 'nv_inference_pending_request_count{model="lin\\"ear",version="3"} 7' in lines
    # A Prometheus parser reads it whole: every family, every model, every failure reason.
    families = {family.name: family for family in text_string_to_metric_families(text)}
    odd = [s for s in families["nv_inference_count"].samples if s.labels["model"] == "odd\\name"]
    assert odd[0].labels["version"] == "line\nbreak"  # read back as written
    assert len(families) == 10, sorted(families)
    failures = [s for s in families["nv_inference_request_failure"].samples]
    assert len(failures) == 12 and {s.labels["reason"] for s in failures} == {
        "REJECTED", "CANCELED", "BACKEND", "OTHER"
    }  # fmt: skip
    assert render([]) == b""
