"""Give freed heap memory back to the operating system after a model is dropped.

glibc keeps freed memory in its heaps for reuse, and a dropped model's pages (weights, buffers of
many sizes, spread over one heap per thread that allocated them) rarely free a whole heap top, so
the process's RSS keeps a dropped model's size for good. ``malloc_trim(0)`` releases every free
page of every heap. Elsewhere (musl, macOS) there is nothing to call, and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable
from functools import cache

logger = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> bool:
    """Return free heap pages to the system; False where that is not available.

    Takes a few milliseconds per hundred MB of heap and holds the heaps' locks meanwhile, so
    callers run it off the event loop, and only after dropping a model.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
