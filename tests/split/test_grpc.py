"""The Open Inference Protocol over gRPC on a split-mode API node: the calls go to workers over
real Redis, as the node's REST calls do (tritonclient's asyncio gRPC client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest

_EXTRA = "needs the grpc extra (pip install -e '.[grpc]')"
pytest.importorskip("grpc", reason=_EXTRA)
pytest.importorskip("tritonclient.grpc", reason=_EXTRA)

import tritonclient.grpc.aio as triton  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from sluiceway.app import create_app  # noqa: E402
from sluiceway.kinds import served_kinds  # noqa: E402
from sluiceway.runtime.metrics import Metrics  # noqa: E402
from sluiceway.split.worker import Worker  # noqa: E402
from tests.conftest import app_client  # noqa: E402
from tests.fixtures.model_repository import linear, split_linear  # noqa: E402
from tests.fixtures.waiting import eventually  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402


class Node:
    def __init__(self, http: httpx.AsyncClient, address: str, weights: np.ndarray) -> None:
        self.http = http
        self.address = address
        self.weights = weights


@pytest.fixture
async def node(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Node]:
    port = free_port()
    settings, weights = split_linear(
        redis_server.url, tmp_path / "models", f"grpc-{tmp_path.name}", grpc_port=port
    )
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(app_client(create_app(settings)))
        worker = Worker(settings, served_kinds(settings), Metrics())
        await worker.start()
        stack.push_async_callback(worker.close)
        yield Node(http, f"127.0.0.1:{port}", weights)


async def test_an_api_node_serves_grpc_from_its_workers(node: Node) -> None:
    async def ready() -> bool:
        return (await node.http.get("/v2/models/linear/ready")).status_code == 200

    await eventually(ready)
    async with triton.InferenceServerClient(node.address) as client:
        assert await client.is_server_live()
        assert await client.is_model_ready("linear")
        metadata = await client.get_model_metadata("linear", as_json=True)
        assert metadata["inputs"][0]["name"] == "x"
        x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
        item = triton.InferInput("x", [3, 4], "FP32")
        item.set_data_from_numpy(x)
        result = await client.infer("linear", [item], request_id="split")
        np.testing.assert_allclose(result.as_numpy("y"), linear(node.weights, x), rtol=1e-5)
        assert result.get_response().id == "split"
        with pytest.raises(InferenceServerException, match="Request for unknown model") as raised:
            await client.infer("nope", [item])
        assert raised.value.status() == "StatusCode.NOT_FOUND"
