"""Triton's system shared memory extension over HTTP: register, unregister, status.

- ``POST /v2/systemsharedmemory/region/{name}/register`` with
  ``{"key": "/shm-object", "offset": 0, "byte_size": N}``;
- ``POST /v2/systemsharedmemory[/region/{name}]/unregister`` (every region, or one);
- ``GET /v2/systemsharedmemory[/region/{name}]/status``: ``[{"name", "key", "offset",
  "byte_size"}]``.

Inference requests then name a region in an input's or output's parameters
(``inference_request.RegionSpan``). Off unless ``SLUICEWAY_ALLOW_CLIENT_SHM``: each answers
403 saying so (``sluiceway/shared_memory.py`` says why). A region not registered is a 404, as
in Triton.

Beside it, Triton's CUDA shared memory extension, which a server running models on the CPU
cannot serve: ``POST /v2/cudasharedmemory/region/{name}/register`` answers 400 saying so, as
Triton built without GPU support does (a client cannot tell this server from that one). No
CUDA region can be registered, so there is never one to unregister or list: unregistering
(every region, or one) succeeds and changes nothing, and the status lists none (a region named
is a 404). Triton's clients clean up both kinds before they start (its shared memory examples
call ``unregister_cuda_shared_memory()`` first, on CPU-only machines too), so refusing these
would stop clients that never use CUDA.
"""

from __future__ import annotations

from typing import Any, NoReturn

import orjson
from fastapi import APIRouter, Request, Response

from sluiceway.api.bodies import read_body
from sluiceway.api.errors import RequestError
from sluiceway.errors import BadInput, UnknownRegion
from sluiceway.services import Services, services_of
from sluiceway.shared_memory import SharedMemoryRegions

router = APIRouter(tags=["open inference protocol"])

_PREFIX = "/v2/systemsharedmemory"
_CUDA_PREFIX = "/v2/cudasharedmemory"
NO_CUDA = "CUDA shared memory is not served: Sluiceway runs models on the CPU"
_REGISTRATION_MAX_BYTES = 64 * 1024
"""A registration is a key and two numbers: anything larger is not one."""


def _regions(request: Request) -> SharedMemoryRegions:
    return regions_of(services_of(request))


def regions_of(services: Services) -> SharedMemoryRegions:
    """The server's shared memory regions; ``403`` saying how to turn them on while they are
    off (over HTTP and gRPC alike)."""
    regions = services.shared_memory
    if regions is None:
        raise RequestError(
            403,
            "shared memory is off on this server: start it with SLUICEWAY_ALLOW_CLIENT_SHM=true "
            "to let clients on this machine register regions (only where they are trusted)",
        )
    return regions


@router.post(_PREFIX + "/region/{name}/register")
async def register(name: str, request: Request) -> Response:
    """Register ``byte_size`` bytes from ``offset`` of the shared-memory object ``key``."""
    regions = _regions(request)
    body = await read_body(request, _REGISTRATION_MAX_BYTES)
    try:
        given: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput(
            'the body must be JSON: {"key": "/name", "offset": 0, "byte_size": N}'
        ) from None
    if not isinstance(given, dict) or not isinstance(given.get("key"), str):
        raise BadInput('the body must be {"key": "/name", "offset": 0, "byte_size": N}')
    offset, byte_size = _bytes(given, "offset", 0), _bytes(given, "byte_size", None)
    regions.register(name, given["key"], offset, byte_size)
    return Response(status_code=200)


@router.post(_PREFIX + "/unregister")
async def unregister_all(request: Request) -> Response:
    """Unregister every region."""
    _regions(request).unregister()
    return Response(status_code=200)


@router.post(_PREFIX + "/region/{name}/unregister")
async def unregister(name: str, request: Request) -> Response:
    """Unregister one region (a name not registered is no error)."""
    _regions(request).unregister(name)
    return Response(status_code=200)


@router.get(_PREFIX + "/status")
async def status_all(request: Request) -> Response:
    """Every registered region."""
    return _json(_regions(request).status())


@router.get(_PREFIX + "/region/{name}/status")
async def status(name: str, request: Request) -> Response:
    """One registered region."""
    return _json(_regions(request).status(name))


@router.post(_CUDA_PREFIX + "/region/{name}/register")
async def cuda_register(name: str) -> Response:
    """A CUDA region cannot be registered here: 400 saying so."""
    refuse_cuda_region(name)


@router.post(_CUDA_PREFIX + "/unregister")
async def cuda_unregister_all() -> Response:
    """Nothing to unregister: no CUDA region is ever registered."""
    return Response(status_code=200)


@router.post(_CUDA_PREFIX + "/region/{name}/unregister")
async def cuda_unregister(name: str) -> Response:
    """Nothing to unregister, whatever the name: no CUDA region is ever registered."""
    return Response(status_code=200)


@router.get(_CUDA_PREFIX + "/status")
async def cuda_status_all() -> Response:
    """No CUDA region is registered."""
    return _json(cuda_status(None))


@router.get(_CUDA_PREFIX + "/region/{name}/status")
async def cuda_status_one(name: str) -> Response:
    """A CUDA region named is never registered: 404."""
    return _json(cuda_status(name))


def refuse_cuda_region(name: str) -> NoReturn:
    """Registering CUDA region ``name``: ``BadInput`` (400, ``INVALID_ARGUMENT``) saying why, as
    Triton without GPU support refuses it (over HTTP and gRPC alike)."""
    raise BadInput(f"CUDA shared memory region {name!r} cannot be registered: {NO_CUDA}")


def cuda_status(name: str | None) -> list[dict[str, object]]:
    """The CUDA regions registered: none; region ``name``: ``UnknownRegion`` (404), as an
    unknown system region is (over HTTP and gRPC alike)."""
    if name is None:
        return []
    raise UnknownRegion(f"no CUDA shared memory region {name!r} is registered: {NO_CUDA}")


def _bytes(given: dict[str, Any], key: str, default: int | None) -> int:
    value = given.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"{key!r} must be a whole number of bytes")
    return value


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")
