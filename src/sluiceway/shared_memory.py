"""Shared-memory regions that clients registered: Triton's system shared memory extension.

A client on the same machine puts a tensor in a POSIX shared-memory object (``/dev/shm``),
registers a region of it under a name, then names the region in an inference request in place
of the tensor's bytes. An image's 600 KB then never cross the socket: the server neither
receives, copies nor joins them, and the model reads them where they lie. Outputs may be
written into a region the same way. This is what ``tritonclient.utils.shared_memory`` and
``perf_analyzer --shared-memory system`` speak.

Off unless ``allow_client_shm`` (Triton's ``--allow-client-shm``, off by default there too): a
client that may register regions can make the server read, and write outputs into, any
shared-memory object the server's user can open. Turn it on only where every client that can
reach the port is trusted with that (a sidecar, a pipeline on the same host).

A region is mapped once, at registration. A client that shrinks the object under a mapping
would crash the reader (``SIGBUS``), so every read and write first checks the object's size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from sluiceway.errors import BadInput

SHM_ROOT = Path("/dev/shm")
"""Where Linux keeps POSIX shared-memory objects: ``shm_open("/key")`` is ``/dev/shm/key``."""

MAX_REGIONS = 256
"""Regions registered at once: each holds a file descriptor and a mapping."""


@dataclass(slots=True)
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    _fd: int = field(repr=False)
    _map: mmap.mmap = field(repr=False)

    def status(self) -> dict[str, object]:
        """The region as Triton's status lists it."""
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def span(self, offset: int, byte_size: int, what: str) -> slice:
        """The bytes of the mapping that ``offset`` and ``byte_size`` (within the region) name,
        checked against the region and against the object's size now."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise BadInput(
                f"{what}: {byte_size} bytes at offset {offset} do not fit shared memory region "
                f"{self.name!r} ({self.byte_size} bytes)"
            )
        start = self.offset + offset
        if os.fstat(self._fd).st_size < start + byte_size:
            raise BadInput(
                f"{what}: the shared-memory object {self.key!r} behind region {self.name!r} "
                f"shrank below the registered region; register it again"
            )
        return slice(start, start + byte_size)

    def close(self) -> None:
        os.close(self._fd)
        # A request still reading it (a tensor is a view of the mapping) keeps the mapping
        # until its last view goes.
        with contextlib.suppress(BufferError):
            self._map.close()


class SharedMemoryRegions:
    """The regions registered with one server, by name."""

    def __init__(self, root: Path = SHM_ROOT, max_regions: int = MAX_REGIONS) -> None:
        self._root = root
        self._max_regions = max_regions
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes from ``offset`` of the object ``key`` as region ``name``."""
        if not name:
            raise BadInput("a shared memory region needs a name")
        if name in self._regions:
            raise BadInput(
                f"shared memory region {name!r} is already registered; unregister it first"
            )
        if len(self._regions) >= self._max_regions:
            raise BadInput(
                f"{self._max_regions} shared memory regions are registered, the most this "
                f"server holds; unregister one first"
            )
        if offset < 0 or byte_size <= 0:
            raise BadInput("'offset' must be 0 or more and 'byte_size' more than 0")
        path = self._path_of(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BadInput(f"no shared-memory object {key!r} ({path})") from None
        except OSError as error:
            raise BadInput(
                f"cannot open the shared-memory object {key!r}: {error.strerror}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise BadInput(
                    f"the shared-memory object {key!r} holds {size} bytes: {byte_size} bytes "
                    f"at offset {offset} do not fit"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd, mapping)

    def _path_of(self, key: str) -> Path:
        # shm_open strips the leading slashes; any other slash would leave /dev/shm.
        bare = key.lstrip("/")
        if not bare or "/" in bare or bare in (".", ".."):
            raise BadInput(f"'key' must name a POSIX shared-memory object, as '/name', got {key!r}")
        return self._root / bare

    def unregister(self, name: str | None = None) -> None:
        """Forget region ``name``, or every region; a name not registered is no error."""
        names = list(self._regions) if name is None else [name]
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                region.close()

    def status(self, name: str | None = None) -> list[dict[str, object]]:
        """Every region's status, or region ``name``'s."""
        if name is None:
            return [region.status() for region in self._regions.values()]
        return [self.region(name).status()]

    def region(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise BadInput(f"no shared memory region {name!r} is registered")
        return region

    def read(self, name: str, offset: int, byte_size: int, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of region ``name``, uncopied."""
        region = self.region(name)
        return memoryview(region._map)[region.span(offset, byte_size, what)]

    def write(self, name: str, offset: int, byte_size: int, data: bytes, what: str) -> None:
        """``data`` into region ``name`` at ``offset``, in the ``byte_size`` bytes given for it."""
        if len(data) > byte_size:
            raise BadInput(
                f"{what} is {len(data)} bytes, more than the {byte_size} bytes of shared "
                f"memory given for it"
            )
        region = self.region(name)
        span = region.span(offset, len(data), what)
        region._map[span] = data

    def close(self) -> None:
        self.unregister()
