"""The standard gRPC health service (``grpc.health.v1.Health``) and server reflection beside the
inference service, called as Kubernetes' ``grpc:`` probes, grpcurl and gRPC clients' own health
checking call them, against real Sluiceway servers: one in its own process, a split-mode API
node waiting for its worker, and one shutting down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

_EXTRA = "the grpc extra is not installed (pip install -e '.[grpc]')"
grpc = pytest.importorskip("grpc", reason=_EXTRA)
pytest.importorskip("tritonclient.grpc", reason=_EXTRA)
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2", reason=_EXTRA)
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc", reason=_EXTRA)
reflection_db = pytest.importorskip(
    "grpc_reflection.v1alpha.proto_reflection_descriptor_database", reason=_EXTRA
)

from google.protobuf.descriptor_pool import DescriptorPool  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from sluiceway.app import create_app  # noqa: E402
from sluiceway.kinds import served_kinds  # noqa: E402
from sluiceway.runtime.metrics import Metrics  # noqa: E402
from sluiceway.split.worker import Worker  # noqa: E402
from tests.conftest import app_client, fast_settings  # noqa: E402
from tests.fixtures.live_server import live_server  # noqa: E402
from tests.fixtures.model_repository import repository, split_linear  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402

INFERENCE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"


def _status(name: str) -> Any:
    return health_pb2.HealthCheckResponse.ServingStatus.Value(name)


SERVING = _status("SERVING")
NOT_SERVING = _status("NOT_SERVING")
SERVICE_UNKNOWN = _status("SERVICE_UNKNOWN")


def _request(service: str) -> Any:
    return health_pb2.HealthCheckRequest(service=service)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server in its own process (as `sluiceway serve` runs), serving a model repository."""
    root, _ = repository(tmp_path_factory.mktemp("grpc-health") / "models")
    port = free_port()
    env = {"SLUICEWAY_MODEL_REPOSITORY": str(root), "SLUICEWAY_GRPC_PORT": str(port)}
    with live_server(env):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def channel(address: str) -> Iterator[Any]:
    with grpc.insecure_channel(address) as channel:
        yield channel


def test_the_server_and_the_inference_service_are_serving_when_ready(channel: Any) -> None:
    """What a Kubernetes ``grpc:`` probe asks (the service ``""`` unless it names one)."""
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(_request("")).status == SERVING
    assert stub.Check(_request(INFERENCE)).status == SERVING
    # The same condition as the protocol's own readiness.
    ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
        service_pb2.ServerReadyRequest()
    )
    assert ready.ready


def test_other_names_are_unknown_a_models_too(channel: Any) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("nope", "linear", "inference.GRPCInferenceService.ModelInfer"):
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(_request(name))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, name
    watch = stub.Watch(_request("linear"), timeout=10)
    try:
        assert next(watch).status == SERVICE_UNKNOWN
    finally:
        watch.cancel()


def test_reflection_lists_and_describes_the_services(channel: Any) -> None:
    """What ``grpcurl -plaintext HOST:PORT list`` and ``describe`` ask, without proto files."""
    database = reflection_db.ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {INFERENCE, HEALTH} <= services
    pool = DescriptorPool(database)
    inference = pool.FindServiceByName(INFERENCE)
    assert {"ModelInfer", "ModelStreamInfer", "ServerReady"} <= set(inference.methods_by_name)
    infer = inference.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert set(pool.FindServiceByName(HEALTH).methods_by_name) == {"Check", "Watch"}


class Node:
    def __init__(self, channel: Any, settings: Any, stack: AsyncExitStack) -> None:
        self.health = health_pb2_grpc.HealthStub(channel)
        self.settings = settings
        self.stack = stack


@pytest.fixture
async def node(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Node]:
    """A split-mode API node with no worker yet: not ready (no worker serves its model)."""
    port = free_port()
    settings, _ = split_linear(
        redis_server.url, tmp_path / "models", f"grpc-health-{tmp_path.name}", grpc_port=port
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app_client(create_app(settings)))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        yield Node(channel, settings, stack)


async def test_not_serving_until_ready_and_watchers_see_the_change(node: Node) -> None:
    assert (await node.health.Check(_request(""))).status == NOT_SERVING
    assert (await node.health.Check(_request(INFERENCE))).status == NOT_SERVING
    watches = [node.health.Watch(_request(name), timeout=30) for name in ("", "", INFERENCE)]
    for watch in watches:
        assert (await watch.read()).status == NOT_SERVING
    # One watcher of "" leaves: the other one still hears of changes. (The pause lets the
    # server end the cancelled stream first, as it would in the field; the answers below do
    # not depend on it.)
    watches.pop(0).cancel()
    await asyncio.sleep(0.1)
    worker = Worker(node.settings, served_kinds(node.settings), Metrics())
    await worker.start()
    node.stack.push_async_callback(worker.close)
    for watch in watches:
        assert (await watch.read()).status == SERVING
        watch.cancel()
    assert (await node.health.Check(_request(""))).status == SERVING


async def test_shutdown_says_not_serving_and_ends_the_watches() -> None:
    """At shutdown a watcher hears NOT_SERVING and its stream ends: it does not hold the
    server's stop for its grace period (the request timeout) and then get cancelled."""
    port = free_port()
    app = create_app(fast_settings(grpc_port=port, request_timeout_s=120))
    served = app_client(app)
    await served.__aenter__()
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(_request(""), timeout=60)
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(served.__aexit__(None, None, None))
            stopped = True
            assert (await watch.read()).status == NOT_SERVING
            assert await watch.read() is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
            await asyncio.wait_for(stopping, 60)
    finally:
        if not stopped:
            await served.__aexit__(None, None, None)


async def test_a_readiness_check_that_raises_is_logged_and_following_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failed look at readiness must not leave Watch streams stale for good, nor stop
    shutdown (the servicer alone, its follow period shortened)."""
    from sluiceway.api.oip import grpc_health

    monkeypatch.setattr(grpc_health, "FOLLOW_S", 0.01)
    answers = iter([True, RuntimeError("broker hiccup"), False])

    def ready() -> bool:
        answer = next(answers, False)
        if isinstance(answer, Exception):
            raise answer
        return answer

    servicer = grpc_health.ServerHealth(ready, [INFERENCE])
    await servicer.start()
    assert servicer.status("") == SERVING
    for _ in range(200):  # the failure, then the next look: not serving
        if servicer.status("") == NOT_SERVING:
            break
        await asyncio.sleep(0.01)
    assert servicer.status("") == NOT_SERVING
    assert "reading the server's readiness failed" in caplog.text
    await servicer.stop()  # returns, whatever the follow task met
    assert servicer.status(INFERENCE) == NOT_SERVING
