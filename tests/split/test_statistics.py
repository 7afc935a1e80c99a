"""Triton's statistics and metrics in split mode: an API node, a worker, real Redis.

The API node sees each request whole, so it counts them (with the times of the model call
each answer carries); the worker counts the model calls it makes. Each Triton metric is then
written by one kind of process, as a sum over every scraped process needs.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from sluiceway.app import create_app
from sluiceway.kinds import served_kinds
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.worker import Worker
from tests.conftest import app_client
from tests.fixtures.model_repository import split_linear
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer


def samples(text: str) -> dict[str, float]:
    """Triton's samples of the linear model by name (and failure reason), and its compute
    histogram's count, as Prometheus reads the exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # a counter's samples are read back with ``_total``
            if sample.labels.get("model") != "linear":
                continue
            if family.name.startswith("nv_inference"):
                reason = sample.labels.get("reason")
                found[family.name + (f":{reason}" if reason else "")] = sample.value
            elif sample.name == "sluiceway_compute_duration_seconds_count":
                found[sample.name] = sample.value
    return found


async def test_the_api_node_counts_requests_and_the_worker_its_model_calls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings, weights = split_linear(
        redis_server.url, tmp_path / "models", f"stats-{tmp_path.name}", worker_port=0
    )
    worker = Worker(settings, served_kinds(settings), Metrics())
    await worker.start()
    try:
        async with app_client(create_app(settings)) as api:

            async def ready() -> bool:
                return (await api.get("/v2/models/linear/ready")).status_code == 200

            await eventually(ready)
            rng = np.random.default_rng(7)
            for rows in (4, 1, 1):  # one request of four rows, two of one
                x = rng.normal(size=(rows, 4)).astype(np.float32)
                body = {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [rows, 4],
                            "datatype": "FP32",
                            "data": x.ravel().tolist(),
                        }
                    ]
                }
                answer = await api.post("/v2/models/linear/infer", json=body)
                assert answer.status_code == 200, answer.text
                got = np.array(answer.json()["outputs"][0]["data"]).reshape(rows, -1)
                assert np.allclose(got, x @ weights[:4] + weights[4], atol=1e-4)
            late = {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ],
                "parameters": {"timeout": 1},
            }
            assert (await api.post("/v2/models/linear/infer", json=late)).status_code == 504

            (stats,) = (await api.get("/v2/models/linear/stats")).json()["model_stats"]
            node = samples((await api.get("/metrics")).text)
        async with httpx.AsyncClient() as http:
            probe = samples((await http.get(f"http://127.0.0.1:{worker.health_port}/metrics")).text)
    finally:
        await worker.close()

    # The node: three requests of six rows, each with its queue and compute time; one late.
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 3 and stats["inference_count"] == 6
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 3
    assert inference["compute_infer"]["ns"] > 0
    assert inference["queue"]["ns"] + inference["compute_infer"]["ns"] <= inference["success"]["ns"]
    assert inference["fail"]["count"] == 1
    assert stats["execution_count"] == 0 and stats["batch_stats"] == []  # on the workers
    assert stats["last_inference"] > 0
    assert node["nv_inference_request_success"] == 3 and node["nv_inference_count"] == 6
    assert node["nv_inference_request_failure:REJECTED"] == 1
    assert node["nv_inference_compute_infer_duration_us"] > 0
    assert "nv_inference_exec_count" not in node
    assert "nv_inference_pending_request_count" not in node
    assert node["sluiceway_compute_duration_seconds_count"] == 3  # per request, as embedded
    # The worker: its model calls (the four rows may have met in one), and no requests.
    calls = worker.dispatcher.statistics.of("linear").execution_count
    assert 3 <= probe["nv_inference_exec_count"] == calls <= 6
    assert probe["nv_inference_pending_request_count"] == 0
    assert "nv_inference_request_success" not in probe and "nv_inference_count" not in probe
    assert probe.get("sluiceway_compute_duration_seconds_count", 0) == 0  # the node's
