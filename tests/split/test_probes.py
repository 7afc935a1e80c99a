"""A worker's probes: the answers orchestrators and the deploy manifests rely on."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from sluiceway.split.probes import Probes
from tests.redis_server import free_port


async def test_probes_say_alive_ready_as_told_and_expose_the_metrics() -> None:
    registry = CollectorRegistry()
    Counter("jobs_done", "jobs done", registry=registry).inc(3)
    ready = False
    probes = Probes(lambda: ready, registry, "127.0.0.1", 0)
    await probes.start()
    try:
        base = f"http://127.0.0.1:{probes.port}"
        async with httpx.AsyncClient(base_url=base) as http:
            health = await http.get("/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            not_ready = await http.get("/readyz")
            assert (not_ready.status_code, not_ready.text) == (503, "not ready\n")
            ready = True
            now_ready = await http.get("/readyz")
            assert (now_ready.status_code, now_ready.text) == (200, "ready\n")
            metrics = await http.get("/metrics")
            assert "jobs_done_total 3.0" in metrics.text
            assert (await http.get("/nothing")).status_code == 404
    finally:
        await probes.close()
    assert probes.port is None


async def test_a_probe_port_on_an_address_this_host_lacks_fails_the_start() -> None:
    probes = Probes(lambda: True, CollectorRegistry(), "203.0.113.9", free_port())
    with pytest.raises(OSError):
        await probes.start()
