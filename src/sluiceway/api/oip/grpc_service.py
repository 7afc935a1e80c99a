"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService``, the
service ``tritonclient.grpc``, ``perf_analyzer -i grpc`` and KServe's and MLServer's gRPC clients
call (tested with tritonclient and the bare stub). On when ``SLUICEWAY_GRPC_PORT`` is set; it
needs the ``grpc`` extra.

The service runs on the app's own event loop, started and stopped by its lifespan, and calls
the same ``serving`` functions as the REST routes: the same models, batchers, deadlines and
errors. Message classes are tritonclient's (``tritonclient.grpc.service_pb2``), generated from
Triton's ``grpc_service.proto``: the wire format its clients speak, without a copy of the proto
here.

Served: health (``ServerLive``, ``ServerReady``, ``ModelReady``), metadata
(``ServerMetadata``, ``ModelMetadata``, ``ModelConfig``), ``ModelInfer`` and
``ModelStreamInfer``, ``ModelStatistics``, the repository extension (``RepositoryIndex``,
``RepositoryModelLoad`` with its load parameters, and ``RepositoryModelUnload``, with the admin
token as ``authorization`` metadata; each also in the layout of KServe's ``predict_v2.proto``,
whose messages differ from Triton's: ``_repository_model``), system shared memory (where
``SLUICEWAY_ALLOW_CLIENT_SHM``) and the logging extension (``LogSettings``: reading needs no
token, changing needs the admin token, as over HTTP). CUDA shared memory is answered as over
HTTP (``regions``): registering is ``INVALID_ARGUMENT``, as in Triton without GPU support;
unregistering succeeds and the status lists no region, there being none. Trace settings answer
``UNIMPLEMENTED``. Beside it, the standard health service ``grpc.health.v1.Health``
(``grpc_health``) and server reflection, so that ``grpcurl`` lists and describes the services
without the proto files.

Errors carry the REST error's message; its status becomes a gRPC code (``CODES``). A call's
gRPC deadline is its deadline (never later than ``SLUICEWAY_REQUEST_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import json_format, wrappers_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from sluiceway import log_settings
from sluiceway.api.errors import RequestError, status_of
from sluiceway.api.oip import serving
from sluiceway.api.oip.grpc_health import ServerHealth
from sluiceway.api.oip.grpc_messages import (
    infer_request,
    infer_response,
    log_settings_changes,
    log_settings_response,
)
from sluiceway.api.oip.regions import cuda_status, refuse_cuda_region, regions_of
from sluiceway.api.repository import (
    MODEL_CONTROL,
    control_refusal,
    load_failure,
    repository_index_of,
)
from sluiceway.config import Settings
from sluiceway.errors import ModelUnavailable, Overloaded, UnknownModel
from sluiceway.load_parameters import from_grpc
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.runtime.memory import keep_large_messages
from sluiceway.services import Services

logger = logging.getLogger(__name__)

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The REST status of each error (``api.errors.status_of``) as a gRPC code; any other is
``INTERNAL``."""

_Answer = TypeVar("_Answer")
_Reply = TypeVar(
    "_Reply",
    service_pb2.RepositoryModelLoadResponse,
    service_pb2.RepositoryModelUnloadResponse,
)

INFERENCE_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""``inference.GRPCInferenceService``: the name health checks and reflection know it by."""


STREAM_WINDOW = 64
"""Requests a stream reads ahead of the answers its client has taken (``ModelStreamInfer``):
room for a client that pipelines dozens of requests on one stream (perf_analyzer's streaming
mode keeps its concurrency there), a bound on what a client that stops reading holds."""


def _repository_model(
    request: service_pb2.RepositoryModelLoadRequest | service_pb2.RepositoryModelUnloadRequest,
) -> str:
    """The model a ``RepositoryModelLoad`` or ``RepositoryModelUnload`` names, in Triton's
    message or KServe's. Triton's carries ``repository_name`` (1), ``model_name`` (2) and
    ``parameters`` (3); KServe's ``predict_v2.proto`` has only ``model_name``, as field 1, which
    Triton's message reads as ``repository_name``. Triton's clients never send a repository name
    (the server has one repository), so a call with no ``model_name`` but a field 1 is KServe's,
    and field 1 is the model."""
    name: str = request.model_name or request.repository_name
    return name


def _with_kserve_answer(answer: _Reply, name: str) -> _Reply:
    """Triton's empty load or unload answer, also carrying KServe's fields: ``model_name`` (1)
    and ``isLoaded`` or ``isUnloaded`` (2), true (a call that fails is an error, not an answer).
    Triton's message has no such fields: they travel as fields it does not know, which
    tritonclient skips and KServe's stub reads."""
    # A StringValue is one string as field 1: protobuf encodes the name; field 2 is true.
    name_field = wrappers_pb2.StringValue(value=name).SerializeToString()
    answer.MergeFromString(name_field + b"\x10\x01")
    return answer


class _Failure(Exception):
    """A call's error as a gRPC code and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = CODES.get(status, grpc.StatusCode.INTERNAL)


def _failure(error: BaseException, method: str) -> _Failure:
    status = status_of(error)
    if status is None:  # a bug: logged whole, answered without its details (as a 500)
        logger.exception("gRPC %s failed", method, exc_info=error)
        return _Failure(500, "internal error: the server's log says more")
    if isinstance(error, ModelUnavailable):
        logger.warning("model unavailable: %s", error)
    return _Failure(status, str(error))


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over one app's ``Services``; method names are the
    proto's. (tritonclient's generated classes are untyped: mypy sees them as ``Any``.)"""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._running = asyncio.Semaphore(services.settings.max_requests)
        """Inference requests running at once in this process, unary and streamed."""

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[_Answer]] | Callable[[], _Answer],
    ) -> _Answer:
        """Run ``work`` (a coroutine function, or a plain one), count it in
        ``sluiceway_requests`` (route ``grpc:<method>``, its REST status) and turn an error
        into the call's gRPC status."""
        started = time.perf_counter()
        status = 200
        try:
            answer = work()
            if inspect.isawaitable(answer):
                return await answer
            return answer
        except asyncio.CancelledError:
            status = 499  # the client went away or its deadline passed
            raise
        except Exception as error:
            failure = _failure(error, method)
            status = failure.status
            await context.abort(failure.code, str(failure))
            raise  # abort raises; said for the type checker
        finally:
            self._count(method, status, started)

    def _count(self, method: str, status: int, started: float) -> None:
        """One call (or one request of a stream) in ``sluiceway_requests`` and
        ``sluiceway_request_duration_seconds``, under the route ``grpc:<method>``."""
        count, seconds = self.services.metrics.request_children(f"grpc:{method}", "POST", status)
        count.inc()
        seconds.observe(time.perf_counter() - started)

    # Health and metadata.

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return await self._call(
            "ServerLive", context, lambda: service_pb2.ServerLiveResponse(live=True)
        )

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        ready = self.services.dispatcher.ready
        return await self._call(
            "ServerReady", context, lambda: service_pb2.ServerReadyResponse(ready=ready())
        )

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        def work() -> service_pb2.ModelReadyResponse:
            # As Triton: a model unknown, or known and not ready, is not ready (no error).
            try:
                entry = serving.entry_of(self.services, request.name, request.version or None)
            except UnknownModel:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=entry.state is ModelState.READY)

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        def work() -> service_pb2.ServerMetadataResponse:
            metadata = serving.server_metadata(self.services)
            return json_format.ParseDict(metadata, service_pb2.ServerMetadataResponse())

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        async def work() -> service_pb2.ModelMetadataResponse:
            metadata = serving.model_metadata(self.services, request.name, request.version or None)
            # The message has no parameters: whether and why not a model takes tensors is in
            # the REST answer, and an inference request says it.
            metadata.pop("parameters")
            return json_format.ParseDict(metadata, service_pb2.ModelMetadataResponse())

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        async def work() -> service_pb2.ModelConfigResponse:
            config = serving.model_config(self.services, request.name, request.version or None)
            return service_pb2.ModelConfigResponse(
                config=json_format.ParseDict(config, model_config_pb2.ModelConfig())
            )

        return await self._call("ModelConfig", context, work)

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStatisticsResponse:
        async def work() -> service_pb2.ModelStatisticsResponse:
            stats = await serving.model_statistics(
                self.services, request.name or None, request.version or None
            )
            return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, work)

    # Inference.

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        async def work() -> service_pb2.ModelInferResponse:
            if self._running.locked():
                raise Overloaded(
                    f"{self.services.settings.max_requests} inference requests are in progress "
                    f"(SLUICEWAY_MAX_REQUESTS): retry shortly"
                )
            async with self._running:
                return await self._infer(request, context)

        return await self._call("ModelInfer", context, work)

    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Each request on the stream answered as soon as it is done (not in order: a client
        matches answers by ``id``); an error is that request's ``error_message``, and the
        stream goes on.

        Two bounds, so that no stream can take from another:
        - a request runs while it holds one of the process's ``SLUICEWAY_MAX_REQUESTS`` running
          places, which unary calls share (where they find none free they are refused,
          where a stream's request finds none it waits): taken and given back around the run
          itself, so nothing that waits on a client holds one;
        - a stream reads at most ``STREAM_WINDOW`` requests ahead of the answers its client
          has taken: a client that stops reading stops its own stream (HTTP/2 flow control
          then holds it back), and holds at most that many requests and answers in memory.
        """
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def one(request: service_pb2.ModelInferRequest) -> None:
            async with self._running:
                answer = await self._stream_answer(request, context)
            answers.put_nowait(answer)

        def settled(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            if task.cancelled() or task.exception() is not None:
                window.release()  # no answer of it will be taken

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    task = asyncio.create_task(one(request))
                    pending.add(task)
                    task.add_done_callback(settled)
            finally:
                try:  # the requests already read are answered, even after a bad message
                    if pending:
                        await asyncio.wait(set(pending))
                finally:
                    answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                window.release()
                yield answer
            await asyncio.wait([reader])
            error = None if reader.cancelled() else reader.exception()
            if error is not None:
                if isinstance(error, DecodeError):
                    failure = _Failure(400, f"a message on the stream is not a request: {error}")
                else:
                    failure = _failure(error, "ModelStreamInfer")
                await context.abort(failure.code, str(failure))
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _stream_answer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStreamInferResponse:
        """One request of a stream answered: its outputs, or its error as ``error_message``;
        counted as a unary call is."""
        started = time.perf_counter()
        status = 200
        try:
            response = await self._infer(request, context)
            return service_pb2.ModelStreamInferResponse(infer_response=response)
        except asyncio.CancelledError:
            status = 499  # the stream was cancelled, or its deadline passed
            raise
        except Exception as error:
            failure = _failure(error, "ModelStreamInfer")
            status = failure.status
            return service_pb2.ModelStreamInferResponse(
                error_message=str(failure),
                infer_response=service_pb2.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        finally:
            self._count("ModelStreamInfer", status, started)

    async def _infer(
        self, message: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        services = self.services
        name = message.model_name
        record, form = serving.tensor_model(services, name, message.model_version or None)
        request = infer_request(message, form, services.shared_memory)
        allowed = services.settings.request_timeout_s
        remaining = context.time_remaining()
        deadline = time.time() + (allowed if remaining is None else min(remaining, allowed))
        outputs = await serving.run_request(services, record, form, request, deadline)
        return infer_response(name, record, form, request, outputs, services.shared_memory)

    # The repository extension.

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        def work() -> service_pb2.RepositoryIndexResponse:
            entries = repository_index_of(self.services.registry, request.ready)
            return service_pb2.RepositoryIndexResponse(
                models=[
                    service_pb2.RepositoryIndexResponse.ModelIndex(
                        name=entry["name"],
                        version=entry["version"] or "",
                        state=str(entry["state"]),
                        reason=entry["reason"] or "",
                    )
                    for entry in entries
                ]
            )

        return await self._call("RepositoryIndex", context, work)

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        async def work() -> service_pb2.RepositoryModelLoadResponse:
            registry = self.services.registry

            async def load(name: str) -> ModelEntry:
                return await registry.load(name, from_grpc(request.parameters))

            name = _repository_model(request)
            await self._control(context, load, name)
            return _with_kserve_answer(service_pb2.RepositoryModelLoadResponse(), name)

        return await self._call("RepositoryModelLoad", context, work)

    async def RepositoryModelUnload(
        self,
        request: service_pb2.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.RepositoryModelUnloadResponse:
        async def work() -> service_pb2.RepositoryModelUnloadResponse:
            name = _repository_model(request)
            await self._control(context, self.services.registry.unload, name)
            return _with_kserve_answer(service_pb2.RepositoryModelUnloadResponse(), name)

        return await self._call("RepositoryModelUnload", context, work)

    async def _control(
        self,
        context: grpc.aio.ServicerContext,
        action: Callable[[str], Awaitable[ModelEntry]],
        name: str,
    ) -> ModelEntry:
        self._authorize(context, MODEL_CONTROL)
        entry = await action(name)
        failed = load_failure(entry)
        if failed is not None:
            raise RequestError(400, failed)
        return entry

    def _authorize(self, context: grpc.aio.ServicerContext, action: str) -> None:
        """``RequestError`` (401, 403) unless the call's ``authorization`` metadata carries the
        admin token, as the HTTP routes of ``action`` take it."""
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization", "")
        if not isinstance(authorization, str):
            authorization = ""
        refusal = control_refusal(self.services.settings.admin_token, authorization, action)
        if refusal is not None:
            raise RequestError(*refusal)

    # The logging extension: one call reads (no settings named) and changes them.

    async def LogSettings(
        self, request: service_pb2.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.LogSettingsResponse:
        def work() -> service_pb2.LogSettingsResponse:
            changes = log_settings_changes(request)
            if not changes:  # tritonclient's get_log_settings: a read, open as GET /v2/logging
                return log_settings_response(log_settings.current())
            self._authorize(context, log_settings.ADMIN_ACTION)
            processes = self.services.settings.workers
            return log_settings_response(log_settings.update(changes, processes))

        return await self._call("LogSettings", context, work)

    # The system shared memory extension.

    async def SystemSharedMemoryRegister(
        self,
        request: service_pb2.SystemSharedMemoryRegisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryRegisterResponse:
        async def work() -> service_pb2.SystemSharedMemoryRegisterResponse:
            regions_of(self.services).register(
                request.name, request.key, request.offset, request.byte_size
            )
            return service_pb2.SystemSharedMemoryRegisterResponse()

        return await self._call("SystemSharedMemoryRegister", context, work)

    async def SystemSharedMemoryUnregister(
        self,
        request: service_pb2.SystemSharedMemoryUnregisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryUnregisterResponse:
        async def work() -> service_pb2.SystemSharedMemoryUnregisterResponse:
            regions_of(self.services).unregister(request.name or None)
            return service_pb2.SystemSharedMemoryUnregisterResponse()

        return await self._call("SystemSharedMemoryUnregister", context, work)

    async def SystemSharedMemoryStatus(
        self,
        request: service_pb2.SystemSharedMemoryStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.SystemSharedMemoryStatusResponse:
        async def work() -> service_pb2.SystemSharedMemoryStatusResponse:
            response = service_pb2.SystemSharedMemoryStatusResponse()
            for region in regions_of(self.services).status(request.name or None):
                response.regions[region["name"]].CopyFrom(
                    service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await self._call("SystemSharedMemoryStatus", context, work)

    # Triton's extensions not served here: said plainly, not as the stub's bare
    # "Method not implemented!".

    async def _unimplemented(
        self, method: str, context: grpc.aio.ServicerContext, why: str
    ) -> None:
        def refuse() -> None:
            raise RequestError(501, why)

        await self._call(method, context, refuse)

    async def CudaSharedMemoryRegister(
        self,
        request: service_pb2.CudaSharedMemoryRegisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.CudaSharedMemoryRegisterResponse:
        def work() -> service_pb2.CudaSharedMemoryRegisterResponse:
            refuse_cuda_region(request.name)

        return await self._call("CudaSharedMemoryRegister", context, work)

    # No CUDA region is ever registered: nothing to unregister, none to list (as over HTTP),
    # so clients cleaning up both kinds of shared memory before they start go on.

    async def CudaSharedMemoryUnregister(
        self,
        request: service_pb2.CudaSharedMemoryUnregisterRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.CudaSharedMemoryUnregisterResponse:
        async def work() -> service_pb2.CudaSharedMemoryUnregisterResponse:
            return service_pb2.CudaSharedMemoryUnregisterResponse()

        return await self._call("CudaSharedMemoryUnregister", context, work)

    async def CudaSharedMemoryStatus(
        self,
        request: service_pb2.CudaSharedMemoryStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> service_pb2.CudaSharedMemoryStatusResponse:
        async def work() -> service_pb2.CudaSharedMemoryStatusResponse:
            cuda_status(request.name or None)  # none registered; a region named is NOT_FOUND
            return service_pb2.CudaSharedMemoryStatusResponse()

        return await self._call("CudaSharedMemoryStatus", context, work)

    async def TraceSetting(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await self._unimplemented("TraceSetting", context, serving.NO_TRACE)


class GrpcEndpoint:
    """The gRPC server of one app process, on ``SLUICEWAY_HOST:SLUICEWAY_GRPC_PORT``."""

    def __init__(self, services: Services, settings: Settings) -> None:
        assert settings.grpc_port is not None
        self.settings = settings
        self._server = grpc.aio.server(
            options=[
                # The same body limit as HTTP: a larger message is RESOURCE_EXHAUSTED.
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # Several worker processes share the port (the kernel spreads connections);
                # one process alone refuses a port another server holds, as Triton does.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ],
            # A backstop against floods of calls (each open stream is one): inference itself
            # is held to SLUICEWAY_MAX_REQUESTS by InferenceService, so probes and streams
            # waiting on their clients are not refused for it.
            maximum_concurrent_rpcs=4 * settings.max_requests,
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(services), self._server
        )
        self.health = ServerHealth(services.dispatcher.ready, [INFERENCE_SERVICE])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        # Reflection (v1alpha, which grpcurl falls back to): the services and their messages,
        # from the descriptors tritonclient's and the packages' modules registered.
        reflection.enable_server_reflection(
            [INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0
        """The port bound (``grpc_port``, or the one given for 0), once started."""

    async def start(self) -> None:
        host = self.settings.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        address = f"{host}:{self.settings.grpc_port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            message = f"SLUICEWAY_GRPC_PORT: cannot listen on {address}: {error}"
            raise RuntimeError(message) from None
        # Messages are copied through buffers freed at the top of the heap: keep them for
        # the next message rather than fault them in again (runtime/memory.py says how much).
        keep_large_messages(self.settings.max_body_bytes)
        await self.health.start()  # the first probe sees the server's readiness
        try:
            await self._server.start()
        except BaseException:
            await self.health.stop()
            raise
        logger.info("Open Inference Protocol over gRPC on %s:%d", self.settings.host, self.port)

    async def stop(self) -> None:
        """Say ``NOT_SERVING`` to health checks, then stop taking calls; those in progress
        finish (within the request deadline)."""
        await self.health.stop()
        await self._server.stop(grace=self.settings.request_timeout_s)
