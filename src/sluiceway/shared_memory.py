"""Shared-memory regions that clients registered: Triton's system shared memory extension.

A client on the same machine puts a tensor in a POSIX shared-memory object (``/dev/shm``),
registers a region of it under a name, then names the region in an inference request in place
of the tensor's bytes. An image's 600 KB then never cross the socket: the server does not
receive them, and wrk-like clients do not send them. Outputs may be written into a region the
same way. This is what ``tritonclient.utils.shared_memory`` and ``perf_analyzer
--shared-memory system`` speak.

Off unless ``allow_client_shm`` (Triton's ``--allow-client-shm``, off by default there too): a
client that may register regions can make the server read, and write outputs into, any
shared-memory object the server's user can open. Turn it on only where every client that can
reach the port is trusted with that (a sidecar, a pipeline on the same host).

Why regions are read with ``pread`` rather than mapped: a tensor that is a view of a mapping is
read later, on a model thread, and a client that shrinks its object in between (re-creating a
key smaller is enough) would crash the whole server with ``SIGBUS``. ``pread`` copies the bytes
once (tens of µs for an image, on the event loop) and a shrunk object is a short read, a
``400``. Only regular files directly in ``/dev/shm`` are opened: no symbolic links, as
``shm_open`` refuses them too, so a key cannot reach a file elsewhere.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sluiceway.errors import BadInput, UnknownRegion

SHM_ROOT = Path("/dev/shm")
"""Where Linux keeps POSIX shared-memory objects: ``shm_open("/key")`` is ``/dev/shm/key``."""

MAX_REGIONS = 256
"""Regions registered at once: each holds a file descriptor."""


@dataclass(slots=True)
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    _fd: int = field(repr=False)

    def status(self) -> dict[str, object]:
        """The region as Triton's status lists it."""
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def check(self, offset: int, byte_size: int, what: str) -> None:
        """``byte_size`` bytes at ``offset`` (within the region) fit it."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise BadInput(
                f"{what}: {byte_size} bytes at offset {offset} do not fit shared memory region "
                f"{self.name!r} ({self.byte_size} bytes)"
            )

    def read(self, offset: int, byte_size: int, what: str) -> bytes:
        """A copy of ``byte_size`` bytes at ``offset`` (within the region)."""
        self.check(offset, byte_size, what)
        data = os.pread(self._fd, byte_size, self.offset + offset) if byte_size else b""
        if len(data) != byte_size:
            raise self._shrank(what)
        return data

    def write(self, offset: int, data: bytes, what: str) -> None:
        """``data`` at ``offset`` (within the region)."""
        self.check(offset, len(data), what)
        start = self.offset + offset
        if os.fstat(self._fd).st_size < start + len(data):  # writing would grow it back
            raise self._shrank(what)
        os.pwrite(self._fd, data, start)

    def _shrank(self, what: str) -> BadInput:
        return BadInput(
            f"{what}: the shared-memory object {self.key!r} behind region {self.name!r} "
            f"shrank below the registered region; register it again"
        )

    def close(self) -> None:
        os.close(self._fd)


class SharedMemoryRegions:
    """The regions registered with one server process, by name."""

    def __init__(
        self,
        max_read_bytes: int,
        root: Path = SHM_ROOT,
        max_regions: int = MAX_REGIONS,
    ) -> None:
        """``max_read_bytes``: the most one tensor may read (the server's body size limit, so
        shared memory lets no larger input in than a body would)."""
        self._max_read_bytes = max_read_bytes
        self._root = root
        self._max_regions = max_regions
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes from ``offset`` of the object ``key`` as ``name``."""
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
            # No symbolic link (shm_open refuses them too); non-blocking, so that a FIFO
            # planted under the key cannot hold the event loop before S_ISREG refuses it.
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BadInput(f"no shared-memory object {key!r} ({path})") from None
        except OSError as error:
            raise BadInput(
                f"cannot open the shared-memory object {key!r}: {error.strerror}"
            ) from None
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise BadInput(f"{key!r} is not a shared-memory object")
            if offset + byte_size > found.st_size:
                raise BadInput(
                    f"the shared-memory object {key!r} holds {found.st_size} bytes: "
                    f"{byte_size} bytes at offset {offset} do not fit"
                )
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd)

    def _path_of(self, key: str) -> Path:
        # shm_open strips the leading slashes; any other slash would leave /dev/shm.
        bare = key.lstrip("/")
        if not bare or "/" in bare or "\0" in bare or bare in (".", ".."):
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
        """Region ``name``; ``UnknownRegion`` (404) when none is registered under it."""
        region = self._regions.get(name)
        if region is None:
            raise UnknownRegion(f"no shared memory region {name!r} is registered")
        return region

    def read(self, name: str, offset: int, byte_size: int, what: str) -> bytes:
        """A copy of ``byte_size`` bytes at ``offset`` of region ``name``."""
        if byte_size > self._max_read_bytes:
            raise BadInput(
                f"{what}: {byte_size} bytes of shared memory, over the server's "
                f"{self._max_read_bytes}-byte limit for a request"
            )
        return self.region(name).read(offset, byte_size, what)

    def close(self) -> None:
        self.unregister()
