"""Loading and unloading repository models in split mode: two API nodes, workers, real Redis.

A load or unload said to one API node is written to the desired state in Redis; every worker
converges to it (on the announcement, or at its next heartbeat if it missed it) and reports its
models; every API node answers readiness from those reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from sluiceway.app import create_app
from sluiceway.config import Settings
from sluiceway.kinds import served_kinds
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.keys import Keys
from sluiceway.split.worker import Worker
from tests.conftest import app_client, fast_settings
from tests.fixtures.model_repository import LINEAR_CONFIG, split_linear
from tests.fixtures.onnx_models import linear_model
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer, free_port

TOKEN = "let-me-in"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = {"inputs": {"x": [[1, 2, 3, 4], [4, 3, 2, 1]]}}


class Cluster:
    """Two API nodes (``a``, ``b``) and workers on one Redis and one model folder."""

    def __init__(self, settings: Settings, stack: AsyncExitStack) -> None:
        self.settings = settings
        self.stack = stack
        self.a: httpx.AsyncClient
        self.b: httpx.AsyncClient
        self.workers: list[Worker] = []

    async def worker(self) -> Worker:
        worker = Worker(self.settings, served_kinds(self.settings), Metrics())
        await worker.start()
        self.stack.push_async_callback(worker.close)
        self.workers.append(worker)
        return worker


@pytest.fixture
async def cluster(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    settings, _ = split_linear(
        redis_server.url, tmp_path / "models", f"control-{tmp_path.name}", admin_token=TOKEN
    )
    async with AsyncExitStack() as stack:
        cluster = Cluster(settings, stack)
        cluster.a = await stack.enter_async_context(app_client(create_app(settings)))
        cluster.b = await stack.enter_async_context(app_client(create_app(settings)))
        await cluster.worker()
        await cluster.worker()
        yield cluster


async def ready(http: httpx.AsyncClient, model: str) -> bool:
    return (await http.get(f"/v2/models/{model}/ready")).status_code == 200


async def unready(http: httpx.AsyncClient, model: str) -> bool:
    return not await ready(http, model)


async def index(http: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    entries = (await http.post("/v2/repository/index")).json()
    return {entry["name"]: entry for entry in entries}


async def test_a_model_loaded_through_one_node_is_served_through_the_other(
    cluster: Cluster,
) -> None:
    """A model added to the shared folder after everything started: load via A, call via B."""
    folder = Path(cluster.settings.model_repository or "") / "rowsum"
    linear_model(folder / "model.onnx", seed=2)
    (folder / "config.toml").write_text(LINEAR_CONFIG)
    assert (await cluster.b.post("/v1/models/rowsum/infer", json=ROWS)).status_code == 404

    loaded = await cluster.a.post("/v2/repository/models/rowsum/load", headers=AUTH)

    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "READY"
    # Node A answered once every live worker had acted: each one has the model now.
    assert all("rowsum" in worker.dispatcher.models() for worker in cluster.workers)
    await eventually(lambda: ready(cluster.b, "rowsum"))
    assert (await index(cluster.b))["rowsum"]["state"] == "READY"
    answer = await cluster.b.post("/v1/models/rowsum/infer", json=ROWS)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["outputs"]["y"]) == 2


async def test_an_unload_reaches_every_node_and_worker_and_a_load_brings_it_back(
    cluster: Cluster,
) -> None:
    await eventually(lambda: ready(cluster.b, "linear"))
    assert (await cluster.b.post("/v1/models/linear/infer", json=ROWS)).status_code == 200

    unloaded = await cluster.a.post("/v2/repository/models/linear/unload", headers=AUTH)

    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "UNAVAILABLE"
    assert unloaded.json()["reason"] == "unloaded"
    assert all("linear" not in worker.dispatcher.models() for worker in cluster.workers)
    await eventually(lambda: unready(cluster.b, "linear"))
    refused = await cluster.b.post("/v1/models/linear/infer", json=ROWS)
    assert refused.status_code == 503 and "unloaded" in refused.json()["detail"]
    states = (await cluster.b.get("/readyz")).json()["model_states"]
    assert states["linear"] == {"state": "UNAVAILABLE", "reason": "unloaded"}

    # A worker started after the unload never heard it said: it reads it when it starts.
    late = await cluster.worker()
    assert "linear" not in late.dispatcher.models()

    loaded = await cluster.b.post("/v2/repository/models/linear/load", headers=AUTH)
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY", loaded.text
    assert all("linear" in worker.dispatcher.models() for worker in cluster.workers)
    await eventually(lambda: ready(cluster.a, "linear"))
    assert (await cluster.a.post("/v1/models/linear/infer", json=ROWS)).status_code == 200


async def test_a_worker_that_missed_the_announcement_converges_at_its_heartbeat(
    cluster: Cluster,
) -> None:
    """The desired state changed with no message on the channel (as if every worker had been
    reconnecting): the workers find it at their next heartbeat, and the nodes follow."""
    await eventually(lambda: ready(cluster.b, "linear"))
    keys = Keys(cluster.settings.broker_prefix, cluster.settings.broker_partitions)
    redis = Redis.from_url(cluster.settings.broker_url or "")
    try:
        generation = await redis.incr(keys.generation)
        await redis.hset(keys.desired, "linear", f"unloaded:{generation}")
    finally:
        await redis.aclose()

    await eventually(
        lambda: all("linear" not in worker.dispatcher.models() for worker in cluster.workers)
    )
    await eventually(lambda: unready(cluster.a, "linear"))
    assert (await index(cluster.a))["linear"]["reason"] == "unloaded"


async def test_model_control_errors_are_those_of_an_embedded_server(cluster: Cluster) -> None:
    a = cluster.a
    unknown = await a.post("/v2/repository/models/nosuch/load", headers=AUTH)
    assert unknown.status_code == 404 and "nosuch" in unknown.json()["error"]
    unknown = await a.post("/v2/repository/models/nosuch/unload", headers=AUTH)
    assert unknown.status_code == 404
    wrong = await a.post("/v2/repository/models/linear/unload", headers={"Authorization": "x"})
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
    builtin = await a.post("/v2/repository/models/knn/unload", headers=AUTH)
    assert builtin.status_code == 409 and "built-in" in builtin.json()["error"]
    closed = cluster.settings.model_copy(update={"admin_token": None})
    async with app_client(create_app(closed)) as c:
        off = await c.post("/v2/repository/models/linear/unload")
    assert off.status_code == 403 and "SLUICEWAY_ADMIN_TOKEN" in off.json()["error"]
    # None of these changed anything.
    await eventually(lambda: ready(cluster.b, "linear"))


async def test_load_parameters_are_refused_not_ignored(cluster: Cluster) -> None:
    """Workers load from the shared folder: a config or files given to one API node would not
    reach them, so a load carrying them is a 400 saying so, and nothing changes."""
    config = '{"max_batch_size": 2}'
    for parameters in ({"config": config}, {"config": config, "file:1/model.onnx": "AAAA"}):
        answer = await cluster.a.post(
            "/v2/repository/models/linear/load", headers=AUTH, json={"parameters": parameters}
        )
        assert answer.status_code == 400, answer.text
        assert "not passed on to split-mode workers" in answer.json()["error"]
    config_now = await cluster.b.get("/v2/models/linear/config")
    assert config_now.json()["max_batch_size"] == 16
    await eventually(lambda: ready(cluster.b, "linear"))


async def test_a_model_no_worker_can_load_is_unavailable_with_the_workers_reason(
    cluster: Cluster,
) -> None:
    """The folder reads well on the API node, but the model cannot run its warm-up (its input's
    width is left open, so the warm-up's zeros have one column where the model takes four):
    every worker says why, the node answers 400 with it, and no worker owns the model's jobs."""
    folder = Path(cluster.settings.model_repository or "") / "garbage"
    linear_model(folder / "1" / "model.onnx", seed=2)
    (folder / "config.toml").write_text(
        LINEAR_CONFIG.replace("dims = [4]", "dims = [-1]") + "\n[warmup]\n"
    )

    answer = await cluster.a.post("/v2/repository/models/garbage/load", headers=AUTH)

    assert answer.status_code == 400, answer.text
    assert "failed to load 'garbage'" in answer.json()["error"]

    async def unavailable_on_b() -> bool:  # b hears the workers' last reports a little later
        entry = (await index(cluster.b))["garbage"]
        return entry["state"] == "UNAVAILABLE" and bool(entry["reason"])

    await eventually(unavailable_on_b)
    assert all("garbage" not in worker.dispatcher.models() for worker in cluster.workers)
    assert (await cluster.b.post("/v1/models/garbage/infer", json=ROWS)).status_code == 503


async def test_a_failed_reload_keeps_the_running_version_on_every_worker(
    cluster: Cluster,
) -> None:
    await eventually(lambda: ready(cluster.b, "linear"))
    before = await cluster.b.post("/v1/models/linear/infer", json=ROWS)
    folder = Path(cluster.settings.model_repository or "") / "linear"
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(b"not an onnx file")

    answer = await cluster.a.post("/v2/repository/models/linear/load", headers=AUTH)

    assert answer.status_code == 409, answer.text
    # The API node reads the new file first (its tensors are checked against the config's) and
    # refuses it before any worker is asked.
    error = answer.json()["error"]
    assert "cannot load" in error and "cannot be read" in error and "version 1" in error
    assert await ready(cluster.b, "linear")
    assert (await index(cluster.b))["linear"]["version"] == "1"
    assert (await index(cluster.a))["linear"]["version"] == "1"
    after = await cluster.b.post("/v1/models/linear/infer", json=ROWS)
    assert after.status_code == 200 and after.json()["outputs"] == before.json()["outputs"]


async def test_model_control_answers_503_while_redis_is_unreachable(tmp_path: Path) -> None:
    root = tmp_path / "models"
    linear_model(root / "linear" / "model.onnx", seed=1)
    (root / "linear" / "config.toml").write_text(LINEAR_CONFIG)
    settings = fast_settings(
        model_repository=str(root),
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        worker_port=None,
        admin_token=TOKEN,
    )
    async with app_client(create_app(settings)) as http:
        answer = await http.post("/v2/repository/models/linear/load", headers=AUTH)
    assert answer.status_code == 503 and "Redis" in answer.text


async def test_workers_follow_control_again_after_redis_lost_the_desired_state(
    cluster: Cluster,
) -> None:
    """A Redis restarted without persistence starts generations at 1 again: workers that had
    acted on later ones must not take the new requests for old news."""
    for _ in range(3):
        answer = await cluster.a.post("/v2/repository/models/linear/load", headers=AUTH)
        assert answer.status_code == 200, answer.text
    keys = Keys(cluster.settings.broker_prefix, cluster.settings.broker_partitions)
    redis = Redis.from_url(cluster.settings.broker_url or "")
    try:
        await redis.delete(keys.desired, keys.generation)
    finally:
        await redis.aclose()

    answer = await cluster.b.post("/v2/repository/models/linear/unload", headers=AUTH)

    assert answer.status_code == 200 and answer.json()["reason"] == "unloaded", answer.text
    assert all("linear" not in worker.dispatcher.models() for worker in cluster.workers)
