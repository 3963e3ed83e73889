"""streaming.allocator: the server caps glibc's malloc arenas (the 30-minute soak's RSS creep, issue #12 item 9).

Each case runs in a fresh interpreter (arenas, once made, stay for the process's life): eight threads allocate
at the same time, then glibc's own report (``malloc_info``) counts the heaps it made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import ctypes, sys, tempfile, threading
from streaming.allocator import cap_arenas
applied = cap_arenas(2) if sys.argv[1] == "cap" else None
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # all eight alive at once: none can take over an arena a finished thread left
    bufs = [bytearray(200_000) for _ in range(10)]  # > 512 bytes: malloc, not Python's small-object pool
    barrier.wait()
    del bufs
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp(suffix=".xml")
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(applied, open(path).read().count("<heap nr="))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc arenas: Linux only")


def _heaps(mode: str, **env: str) -> tuple[str, int]:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    applied, heaps = out.stdout.split()
    return applied, int(heaps)


def test_capped_process_uses_two_arenas_where_glibc_would_make_one_per_thread() -> None:
    _, uncapped = _heaps("default")
    applied, capped = _heaps("cap")
    assert applied == "True"
    assert uncapped > 2, f"glibc made {uncapped} heaps for 8 threads: the test cannot show the cap"
    assert capped <= 2, f"{capped} heaps with the cap"


def test_an_explicit_malloc_arena_max_wins() -> None:
    applied, heaps = _heaps("cap", MALLOC_ARENA_MAX="3")
    assert applied == "False" and heaps <= 3


TRIM_SCRIPT = r"""
from pathlib import Path
from streaming.allocator import heap_kb, trim
def rss_kb():
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
bufs = [b"\x01" * 65_536 for _ in range(2_000)]  # 125 MiB of heap chunks (below the mmap threshold), all touched
pin = b"\x02" * 65_536  # on top of the heap: glibc's automatic trim (from the top only) cannot shrink past it
del bufs
freed = rss_kb()
released = trim()
print(freed, rss_kb(), released, heap_kb()["free"])
"""


def test_trim_gives_free_heap_pages_in_the_middle_of_the_heap_back() -> None:
    """What the idle server does (streaming/server.py): freed frame buffers stay resident inside the arena until
    ``trim()``; the close-order soak measured +130 MiB resident after 50 sessions, all of it free heap."""
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, released, free_kb = out.stdout.split()
    assert int(free_kb) > 100 * 1024, "the freed buffers were not kept inside the heap: the test shows nothing"
    assert released == "True"
    assert int(before) - int(after) > 100 * 1024, f"RSS {before} -> {after} KiB"


def test_the_soaks_mapping_breakdown_puts_memory_where_it_was_mapped() -> None:
    """benchmarks.soak.mappings_kb (the soak's attribution of RSS): 64 MiB touched in an anonymous mapping of
    its own show as ``anonymous``, a new thread's stack as ``thread_stacks``; the kinds add up to the RSS."""
    import mmap
    import threading

    from benchmarks.soak import Footprint, mappings_kb

    before = mappings_kb()
    block = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as malloc maps
    block.write(b"\x01" * (64 << 20))
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), stop.wait()))
    thread.start()
    started.wait()
    try:
        after = mappings_kb()
        rss = Footprint.now().rss_kb
    finally:
        stop.set()
        thread.join()
        block.close()
    assert after["anonymous"] - before["anonymous"] >= 63 * 1024, (before, after)
    assert after["thread_stacks"] > before["thread_stacks"], (before, after)
    assert abs(sum(after.values()) - rss) < 0.05 * rss, (after, rss)


def test_the_soaks_rss_after_warm_up_leaves_out_the_high_water_steps() -> None:
    from benchmarks.soak import rss_after_warm_up

    t = [0.0, 30.0, 100.0, 200.0, 700.0, 1800.0]
    kb = [m * 1024 for m in (400, 500, 512, 525, 526, 524)]  # steps up to ~3 min, then flat
    out = rss_after_warm_up(t, kb)
    assert out["60"] == {"growth": 12.0, "range": 14.0}
    assert out["180"] == {"growth": -1.0, "range": 2.0}
    assert "600" in out and set(out) == {"60", "180", "600"}
