"""The Open Inference Protocol (KServe's v2 REST protocol), as Triton and KServe speak it.

Modules, each importing only those before it: ``forms`` (how a model takes tensors),
``inference_request`` (the body, checked), ``answer`` (the outputs, encoded), ``serving``
(what the protocol answers, whichever transport carries it), ``routes`` (over HTTP);
``regions`` (Triton's system shared memory extension) stands beside them. Over gRPC
(``SLUICEWAY_GRPC_PORT``, the ``grpc`` extra): ``grpc_messages`` (the messages to and from
``serving``'s values) and ``grpc_service`` (the service and its server), imported only then.

Endpoints: ``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready``, ``.../config``,
``POST .../infer``, Triton's statistics extension ``GET /v2/models[/{name}]/stats`` and its
logging extension ``GET``/``POST /v2/logging`` (``sluiceway/log_settings.py``). The repository
extension lives in ``api/repository.py``; the system shared memory extension, where
``SLUICEWAY_ALLOW_CLIENT_SHM`` turns it on, in ``regions``. Errors are ``{"error": "..."}``.

Inference takes JSON tensors (``data`` nested or flat) or Triton's binary tensors (a JSON header
of ``Inference-Header-Content-Length`` bytes, then each input's raw bytes), answers either way,
and runs on the same dispatcher and batchers as every other contract: a request is split into
one job per row of its batch, so rows of concurrent requests share model calls and a request
larger than the model's max batch is run in several calls and put back together.

Request parameters: ``timeout`` (microseconds) shortens the request's deadline; ``priority``
(Triton's: 1 first, then 2...; 0 or none, the default level, last) orders the model's waiting
jobs (``job_priority``);
``binary_data_output`` and each output's ``binary_data`` ask for binary outputs, and an
output's ``classification`` (Triton's classification extension) for its top classes as
``"score:index[:label]"`` strings.
"""

from sluiceway.api.oip.regions import router as regions_router
from sluiceway.api.oip.routes import fast_routes, router

__all__ = ["fast_routes", "regions_router", "router"]
