"""A server process's memory: the collector once start-up is done, and dropped models' memory
given back to the operating system.

Once a process has started (``settle_heap``), what it built lives as long as it does, so it is
frozen out of the cyclic collector, and the collector's youngest generation is made large.
With the default of 700, requests in flight (coroutines, futures, dicts) kept crossing that
threshold and were scanned about twenty times a second under load: ~0.027 ms of an API node's
~0.31 ms of CPU per request in split mode (``bench/scaleout``, 2026-11-30, timed with
``gc.callbacks``), against ~0.005 ms at 10 000. Almost nothing a request makes is cyclic
garbage (refcounting frees it), so the larger generation holds back little memory.

Dropped models' memory goes back to the system on glibc only (elsewhere it is a no-op).

glibc keeps freed memory in its heaps for reuse, and raises the size above which it maps a
block of its own each time such a block is freed, so after a model or two most of a model's
buffers (weights, a file read whole while its session is built) live in the heaps, among other
allocations, and a dropped model's pages rarely go back: RSS keeps its high-water mark. A
process whose models come and go (a model repository) therefore maps every large block of its
own (``map_large_blocks``: freed, it goes back at once) and trims the heaps after dropping a
model (``release_freed_memory``). Elsewhere (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import platform
from functools import cache

logger = logging.getLogger(__name__)

YOUNG_GENERATION = 10_000
"""Net allocations of tracked objects between two collections of the youngest generation
(CPython's default is 700); its pauses stay around a millisecond or two."""

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h); setting it stops glibc raising it
LARGE_BLOCK_BYTES = 1024 * 1024
"""Blocks this large or larger are mapped on their own: a model's weights and file buffers,
a batch's activations; an image's pixels and a request's body stay below. At 4 MiB, a model's
memory went back only some of the time (``tests/fixtures/model_memory.py``)."""


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (``mallopt``, ``malloc_trim``), else None."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Map every block of ``threshold`` bytes or more on its own, for the rest of the process.

    Costs a system call and fresh pages per such block (measured in ``bench/repository``), so
    only processes serving a model repository do it; False where not available.
    """
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    logger.debug("blocks of %d bytes or more are mapped on their own: %s", threshold, done)
    return done


_M_TRIM_THRESHOLD = -1  # mallopt parameter (malloc.h)


def keep_freed_heap(threshold: int) -> bool:
    """Keep up to ``threshold`` bytes freed at the top of a heap instead of giving them back
    to the system at once (glibc's default gives back anything over 128 KiB, and raises that
    only while it raises the mapping threshold).

    For the gRPC endpoint: each large message (an image's 600 KB) is copied through buffers
    freed at the top of a heap, and with the default every one was given back and faulted in
    again on the next message: 3.7 ms of CPU per request against 1.9 with 64 MiB kept
    (``bench/grpc``'s floor, 2026-12-01). Setting it stops glibc raising the mapping threshold
    too, so it stays where it is: the caller sets that as well (``map_large_blocks``), or
    blocks over 128 KiB are mapped and faulted in every time. ``release_freed_memory`` still
    trims. False where not available.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


MIB = 1024 * 1024


def keep_large_messages(max_body_bytes: int) -> bool:
    """For a process that maps large blocks on its own and reads request bodies of up to
    ``max_body_bytes``: ``map_large_blocks``, and keep up to twice that (8 to 64 MiB) freed
    at the top of a heap (``keep_freed_heap``).

    Both, or neither: fixing the mapping threshold leaves glibc's trim threshold at 128 KiB,
    so each large body (an image's 600 KB), copied into a buffer at the top of a heap and freed,
    was given back and faulted in again on the next request. Over HTTP that cost 0.13-0.30 ms
    of CPU per 600 KB request (about 1.3 against 1.1 ms with ``bench/oip``'s near-free model,
    2026-12-02), over gRPC 1.8 ms (``keep_freed_heap``). A dropped model's memory still goes
    back (``release_freed_memory`` trims whatever the threshold)."""
    mapped = map_large_blocks()
    return keep_freed_heap(min(max(2 * max_body_bytes, 8 * MIB), 64 * MIB)) and mapped


def release_freed_memory() -> bool:
    """Return free heap pages to the system; False where that is not available.

    Takes a few milliseconds per hundred MB of heap and holds the heaps' locks meanwhile, so
    callers run it off the event loop, and only after dropping a model.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def settle_heap() -> None:
    """Call once start-up is done: collect, freeze what start-up built out of the collector's
    passes (they rescanned it while requests waited: a latency tail), and enlarge the young
    generation (see the module's docstring). Later generations keep their thresholds."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, oldest)
