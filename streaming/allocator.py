"""glibc malloc settings for the long-running server process: a bounded number of malloc arenas.

Why: glibc gives each thread that allocates its own malloc arena (up to 8 per core), and an arena gives freed
memory back to the system only from its top. The served path moves frame-sized buffers between threads every
frame (the model worker renders them, aiortc's encoder threads and the event loop convert, packetize and free
them), so free space piles up inside many arenas and the resident size creeps although nothing is alive longer:
measured on a 30-minute WebRTC session (``benchmarks/results/soak_30min.json``) +0.42 MiB/min, with the live
Python objects and glibc's in-use bytes flat and only the arenas' free bytes growing. Two arenas keep that free
space reusable (RSS flat) at no measurable cost for a process whose heavy work runs on one model thread.
Same mechanism upstream: dask/dask#3530 (numpy buffers over a thread pool), aiortc/aiortc#1091 (memory growth
while streaming video).

An explicit ``MALLOC_ARENA_MAX`` in the environment wins (glibc read it at start-up); other C libraries (musl,
macOS) have no such arenas and nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

MALLOC_ARENAS = 2  # the main arena + one for every other thread; 1 would make every allocation contend
M_ARENA_MAX = -8  # mallopt parameter number (glibc malloc.h)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def cap_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Limit glibc to ``n`` malloc arenas; True if applied. Call it before the engine starts its threads (an
    arena, once a thread uses it, stays that thread's). Leaves an explicit ``MALLOC_ARENA_MAX`` alone."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_ARENA_MAX, int(n)))
    log.debug("malloc arenas capped at %d: %s", n, applied)
    return applied


def trim() -> bool:
    """Give the free pages of every arena back to the system now (``malloc_trim(0)``); True if any were."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_kb() -> dict[str, int] | None:
    """glibc's own account of the heap (``mallinfo2``), KiB: ``in_use`` (live allocations), ``free`` (freed
    but kept inside the arenas: what grows when the resident size creeps without a leak), ``mmapped`` (large
    blocks mapped on their own). None without glibc >= 2.33."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"in_use": info.uordblks >> 10, "free": info.fordblks >> 10, "mmapped": info.hblkhd >> 10}
