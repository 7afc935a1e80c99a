"""Triton's metrics in ``/metrics``: what a dashboard made for Triton reads, through HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import repository


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    root, _ = repository(tmp_path / "models")
    async with app_client(create_app(fast_settings(model_repository=str(root)))) as client:
        yield client


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text, read by prometheus_client's parser (which
    names a counter's samples ``_total`` whether the text has the suffix or not)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name in (name, f"{name}_total") and all(
                found.labels.get(k) == v for k, v in labels.items()
            ):
                return float(found.value)
    raise AssertionError(f"no sample {name} {labels}")


def rows(count: int, seed: int) -> dict[str, object]:
    x = np.random.default_rng(seed).normal(size=(count, 4)).round(3).tolist()
    return {"inputs": [{"name": "x", "shape": [count, 4], "datatype": "FP32", "data": x}]}


async def test_requests_rows_calls_and_times_as_triton_counts_them(
    http: httpx.AsyncClient,
) -> None:
    for count, seed in ((3, 1), (1, 2)):
        response = await http.post("/v2/models/linear/infer", json=rows(count, seed))
        assert response.status_code == 200, response.text
    late = {**rows(3, 3), "parameters": {"timeout": 1}}  # 1 µs: past before it can run
    assert (await http.post("/v2/models/linear/infer", json=late)).status_code == 504
    # Refused before it reaches the model (a wrong shape): not a request of the model's.
    wrong = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert (await http.post("/v2/models/linear/infer", json=wrong)).status_code == 400
    text = (await http.get("/metrics")).text
    assert "# TYPE nv_inference_request_success counter" in text
    linear = {"model": "linear", "version": "1"}
    assert 'nv_inference_request_success{model="linear",version="1"} 2\n' in text
    # Two requests answered (one of three rows), four rows inferred.
    assert sample(text, "nv_inference_request_success", **linear) == 2
    assert sample(text, "nv_inference_count", **linear) == 4
    calls = sample(text, "nv_inference_exec_count", **linear)
    assert 2 <= calls <= 4
    # The late request of three rows is one failure, and adds no rows.
    assert sample(text, "nv_inference_request_failure", **linear, reason="REJECTED") == 1
    for reason in ("CANCELED", "BACKEND", "OTHER"):
        assert sample(text, "nv_inference_request_failure", **linear, reason=reason) == 0
    assert sample(text, "nv_inference_pending_request_count", **linear) == 0
    # The same figures as the statistics extension, in microseconds.
    stats = (await http.get("/v2/models/linear/stats")).json()["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2 and inference["fail"]["count"] == 1
    assert stats["inference_count"] == 4 and stats["execution_count"] == calls
    for metric, field in (
        ("nv_inference_request_duration_us", "success"),
        ("nv_inference_queue_duration_us", "queue"),
        ("nv_inference_compute_infer_duration_us", "compute_infer"),
    ):
        assert sample(text, metric, **linear) == inference[field]["ns"] // 1000, metric
    assert sample(text, "nv_inference_request_duration_us", **linear) > 0
    # Every model the statistics list is there, with its version, before any request.
    assert sample(text, "nv_inference_request_success", model="echo", version="1") == 0
    assert re.search(r'^nv_inference_count\{model="imagenet",version="1"\} 0$', text, re.M)


async def test_turned_off_they_are_not_written(tmp_path: Path) -> None:
    root, _ = repository(tmp_path / "models")
    settings = fast_settings(model_repository=str(root), triton_metrics=False)
    async with app_client(create_app(settings)) as http:
        assert (await http.post("/v2/models/linear/infer", json=rows(2, 4))).status_code == 200
        text = (await http.get("/metrics")).text
    assert "nv_inference" not in text and "sluiceway_requests_total" in text
