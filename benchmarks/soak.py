"""Soak / churn benchmark: many connect-disconnect cycles and one long session with frequent style switches.

Runs the real presenter server (in this process, so its resources can be measured from ``/proc/self``) on the
real engine with built-in defaults, and aiortc clients over loopback. It reports whether the process returns
to its starting footprint after churn (RSS, threads, asyncio tasks, file descriptors), the clients that
failed and why (errors by kind), and for the long session the received fps, the engine's A/V offset and the
worst per-frame latency.

    python -m benchmarks.soak                       # 200 cycles (1 in 5 with WebRTC) + a 30-minute session
    python -m benchmarks.soak --cycles 20 --minutes 0.5   # a quick run
    python -m benchmarks.soak --abrupt              # every other client vanishes without closing

The cycle and session helpers are reused by ``tests/test_reliability_server.py`` (CI-sized variants).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import RESULTS, write_results

WARM_UP_S = 60.0  # the long session's first minute (allocator and caches warming up) is left out of its slope
SPEECH_WAV = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech_16k.wav"


# --------------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Footprint:
    """What a leak would grow: resident memory, OS threads, Python threads, asyncio tasks, open fds."""

    rss_kb: int
    os_threads: int
    py_threads: int
    tasks: int
    fds: int

    @classmethod
    def now(cls) -> Footprint:
        status = Path("/proc/self/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running loop
            tasks = 0
        return cls(
            rss_kb=int(fields["VmRSS"].split()[0]),
            os_threads=int(fields["Threads"]),
            py_threads=threading.active_count(),
            tasks=tasks,
            fds=len(os.listdir("/proc/self/fd")),
        )

    def minus(self, other: Footprint) -> dict[str, int]:
        return {k: getattr(self, k) - getattr(other, k) for k in asdict(self)}


def thread_names() -> dict[str, int]:
    """This process's threads by name (pool threads' numbers dropped: ``asyncio_3`` -> ``asyncio_N``), plus the
    OS threads Python does not know (torch/OpenMP, libvpx): what a thread count's growth is made of."""
    import re

    names = Counter(re.sub(r"_\d+$", "_N", t.name) for t in threading.enumerate())
    foreign = len(os.listdir("/proc/self/task")) - threading.active_count()
    if foreign:
        names["(not Python)"] = foreign
    return dict(sorted(names.items()))


THREAD_STACK_KB = 8192  # glibc's default thread stack (RLIMIT_STACK): one anonymous mapping per live thread


def mappings_kb(smaps: str | None = None) -> dict[str, int]:
    """Resident KiB of this process by kind of mapping (``/proc/self/smaps``): where an RSS creep lives.

    ``heap`` is glibc's main arena (``[heap]``); ``thread_stacks`` the anonymous 8 MiB mappings; ``anonymous``
    everything else mapped without a file (other arenas' heaps, large malloc blocks, Python's object arenas,
    torch/OpenMP/libvpx buffers); ``files`` code and data mapped from files (libraries, weights opened with mmap).
    """
    text = Path("/proc/self/smaps").read_text() if smaps is None else smaps
    out = {"heap": 0, "thread_stacks": 0, "anonymous": 0, "files": 0, "other": 0}
    kind = "anonymous"
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if head.endswith(":"):
            if head == "Rss:":
                out[kind] += int(rest.split()[0])
            continue
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5] if len(parts) > 5 else ""
        if path == "[heap]":
            kind = "heap"
        elif path.startswith("/"):
            kind = "files"
        elif path:
            kind = "other"
        elif (end - start) >> 10 == THREAD_STACK_KB:
            kind = "thread_stacks"
        else:
            kind = "anonymous"
    out.pop("other", None)
    return out


async def settle(server: Any, timeout: float = 20.0) -> None:
    """Wait until the server has freed every client, then let finished threads/tasks be reaped."""
    deadline = time.monotonic() + timeout
    while server.clients and time.monotonic() < deadline:  # noqa: ASYNC110 - the server owns its client set
        await asyncio.sleep(0.05)
    for _ in range(10):  # aiortc / websockets tidy up in callbacks scheduled after the close
        await asyncio.sleep(0.02)
    gc.collect()


@dataclass
class ChurnResult:
    cycles: int = 0
    survived: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cycle_s: list[float] = field(default_factory=list)


def speech() -> np.ndarray:
    from clients.client import read_wav, to_16k

    pcm, rate = read_wav(SPEECH_WAV)
    return to_16k(pcm, rate)


# ------------------------------------------------------------------------------------------------- cycles
async def ws_cycle(url: str, abrupt: bool = False) -> None:
    """Connect, use the control channel a little, leave (closing cleanly or vanishing)."""
    from clients.client import StyleTalkClient

    client = StyleTalkClient(url)
    welcome = await client.connect()
    await client.request("ping")
    styles = welcome["styles"]
    await client.request("set_style", name=styles[-1], transition_ms=0)
    await client.request("stats")
    await _leave(client, abrupt)


async def webrtc_cycle(url: str, pcm: np.ndarray | None, abrupt: bool = False, frames: int = 5) -> None:
    """Connect, negotiate media, receive a few frames while speaking, leave."""
    from clients.client import MicrophoneTrack, StyleTalkClient

    client = StyleTalkClient(url)
    await client.connect()
    try:
        await client.start_media(MicrophoneTrack(pcm, loop=True) if pcm is not None else None)
        await client.wait_frames(frames, timeout=30)
        await client.request("stats")
    finally:
        await _leave(client, abrupt)


async def _leave(client: Any, abrupt: bool) -> None:
    if abrupt and client.ws is not None:
        # the peer disappears: no websocket close frame, no goodbye on the peer connection
        client.ws.transport.abort()
    await client.close()


CLOSE_ORDERS = ("pc_first", "ws_first", "both", "ws_during_drop", "ws_during_new_session", "reset")
"""How a WebRTC client leaves (:func:`close_order_cycle`):

- ``pc_first``: peer connection closed, then the websocket (what ``clients/client.py`` does);
- ``ws_first``: websocket closed, then the peer connection;
- ``both``: both closed at once;
- ``ws_during_drop``: peer connection closed, websocket closed as soon as the server starts dropping the media;
- ``ws_during_new_session``: the same, websocket closed once the server is building the replacement session;
- ``reset``: the TCP connection of the websocket is reset (RST, no close frame), then the peer connection closes.
"""


async def _poll(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def reset_websocket(client: Any) -> None:
    """Reset the client's websocket TCP connection: SO_LINGER 0 makes the close send RST, no close frame."""
    import socket
    import struct

    transport = client.ws.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def close_order_cycle(url: str, server: Any, order: str, pcm: np.ndarray | None, frames: int = 5) -> None:
    """Connect, negotiate media, receive a few frames, then leave in one of :data:`CLOSE_ORDERS`.

    ``server`` is the in-process :class:`~streaming.server.PresenterServer`: the in-flight orders watch its
    client handler to close the websocket at the right moment of the server's clean-up.
    """
    from clients.client import MicrophoneTrack, StyleTalkClient

    if order not in CLOSE_ORDERS:
        raise ValueError(f"unknown close order {order!r}: one of {CLOSE_ORDERS}")
    client = StyleTalkClient(url)
    welcome = await client.connect()
    handler = server.clients[welcome["session"]]
    try:
        await client.start_media(MicrophoneTrack(pcm, loop=True) if pcm is not None else None)
        await client.wait_frames(frames, timeout=30)
        assert client.pc is not None and client.ws is not None
        pc, ws = client.pc, client.ws
        if order == "pc_first":
            await client.close()
        elif order == "ws_first":
            await ws.close()
            await client.close()
        elif order == "both":
            await asyncio.gather(pc.close(), ws.close())
            await client.close()
        elif order == "ws_during_drop":
            await pc.close()
            await _poll(lambda: handler.peer is None, 15, "the server to drop the closed peer")
            await ws.close()
            await client.close()
        elif order == "ws_during_new_session":
            old = handler.session
            await pc.close()
            runtime = server.runtime
            await _poll(lambda: runtime.sessions.get(handler.id) is not old, 15, "the old session to be freed")
            await ws.close()
            await client.close()
        else:  # reset
            reset_websocket(client)
            await client.close()
    except BaseException:
        await client.close()
        raise


async def capacity(url: str, n: int, timeout: float = 30.0) -> int:
    """How many of ``n`` websockets opened at once are welcomed (the rest get ``server_full``)."""
    from clients.client import ClientError, StyleTalkClient

    clients = [StyleTalkClient(url) for _ in range(n)]
    results = await asyncio.gather(*(asyncio.wait_for(c.connect(), timeout) for c in clients), return_exceptions=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ClientError):
            raise r
    return sum(1 for r in results if isinstance(r, dict))


def process_cpu_s() -> float:
    """CPU time (user + system) of this process so far, seconds."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def idle_cpu_fraction(seconds: float = 3.0) -> float:
    """Share of one core this process uses while nothing is connected, over ``seconds`` of wall time."""
    c0, t0 = process_cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    return (process_cpu_s() - c0) / (time.monotonic() - t0)


async def churn(
    url: str, server: Any, cycles: int, webrtc_every: int = 5, abrupt: bool = False, webrtc_max: int | None = None
) -> ChurnResult:
    """``cycles`` connect/disconnect cycles; every ``webrtc_every``-th one with media (0 = never)."""
    result = ChurnResult()
    pcm = speech()
    media_done = 0
    for i in range(cycles):
        media = webrtc_every > 0 and i % webrtc_every == 0 and (webrtc_max is None or media_done < webrtc_max)
        t0 = time.monotonic()
        result.cycles += 1
        try:
            if media:
                media_done += 1
                await asyncio.wait_for(webrtc_cycle(url, pcm, abrupt=abrupt and i % 2 == 1), 60)
            else:
                await asyncio.wait_for(ws_cycle(url, abrupt=abrupt and i % 2 == 1), 30)
            result.survived += 1
        except Exception as exc:  # noqa: BLE001 - counted by kind, the soak goes on
            result.errors[type(exc).__name__] += 1
        await settle(server)
        result.cycle_s.append(time.monotonic() - t0)
    return result


@dataclass
class LongSessionResult:
    seconds: float = 0.0
    switches: int = 0
    switch_errors: Counter[str] = field(default_factory=Counter)
    fps_received: float = 0.0
    fresh_fps_engine: float = 0.0
    av_offset_ms: dict[str, Any] | None = None
    max_latency_ms: float | None = None  # p99 of the engine's "total" latency (audio in -> frame sent)
    rss_slope_mib_per_min: float | None = None  # least-squares slope of RSS after the first minute
    growth_sites: list[str] = field(default_factory=list)  # --tracemalloc: top growing allocation sites
    engine_errors: int = 0
    rss_kb: list[int] = field(default_factory=list)
    rss_t: list[float] = field(default_factory=list)
    heap_kb: list[dict[str, int]] = field(default_factory=list)  # glibc's in-use / free-in-arenas / mmapped
    heap_slopes_mib_per_min: dict[str, float] = field(default_factory=dict)  # after the first minute
    fds: list[int] = field(default_factory=list)
    mappings_kb: list[dict[str, int]] = field(default_factory=list)  # resident KiB by kind of mapping
    mapping_slopes_mib_per_min: dict[str, float] = field(default_factory=dict)  # after the first minute


def rss_after_warm_up(t_s: list[float], rss_kb: list[int], warm_ups_s: tuple[float, ...] = (60, 180, 600)
                      ) -> dict[str, dict[str, float]]:
    """Per warm-up length (s): RSS growth (last - first sample after it) and range (max - min), MiB."""
    out: dict[str, dict[str, float]] = {}
    for w in warm_ups_s:
        late = [kb for t, kb in zip(t_s, rss_kb, strict=True) if t >= w]
        if len(late) >= 2:
            out[f"{w:g}"] = {"growth": round((late[-1] - late[0]) / 1024, 1),
                             "range": round((max(late) - min(late)) / 1024, 1)}
    return out


def _slope_mib_per_min(t_s: np.ndarray, kb: np.ndarray) -> float:
    """Least-squares slope of a KiB series over seconds, in MiB per minute."""
    return float(np.polyfit(t_s, kb, 1)[0] * 60 / 1024)


async def long_session(
    url: str, seconds: float, switch_every_s: float = 3.0, profile: bool = False, mic_history: int = 500
) -> LongSessionResult:
    """One WebRTC session streaming looped speech for ``seconds``, switching style every ``switch_every_s``."""
    from clients.client import ClientError, MicrophoneTrack, StyleTalkClient
    from streaming.allocator import heap_kb

    out = LongSessionResult()
    snapshot: tracemalloc.Snapshot | None = None
    if profile:
        tracemalloc.start(12)
    client = StyleTalkClient(url, keep_frames=64)  # keep few images: the client must not be the leak
    welcome = await client.connect()
    styles = list(welcome["styles"])
    try:
        # the send times are unused here: 10 s kept (0: unbounded, as before: +0.34 MiB/min in this process)
        await client.start_media(MicrophoneTrack(speech(), loop=True, history=mic_history or None))
        await client.wait_frames(5, timeout=30)
        start = time.monotonic()
        received0 = client.recording.frames_total
        stats0 = (await client.request("stats"))["engine"]
        i = 0
        while time.monotonic() - start < seconds:
            await asyncio.sleep(min(switch_every_s, max(0.0, seconds - (time.monotonic() - start))))
            i += 1
            try:
                await client.request("set_style", name=styles[i % len(styles)], transition_ms=250 * (i % 3))
                out.switches += 1
            except ClientError as exc:
                out.switch_errors[exc.code] += 1
            client.recording.audio.clear()  # the test client records audio for MP4s: not kept here
            client.recording.audio_arrivals.clear()
            client.events.clear()  # and every event it receives (tracemalloc: the largest growth in this process)
            fp = Footprint.now()
            out.rss_kb.append(fp.rss_kb)
            out.rss_t.append(time.monotonic() - start)
            heap = heap_kb()
            if heap is not None:
                out.heap_kb.append(heap)
            out.mappings_kb.append(mappings_kb())
            if profile and snapshot is None and time.monotonic() - start >= WARM_UP_S:
                gc.collect()
                snapshot = tracemalloc.take_snapshot()
            out.fds.append(fp.fds)
        out.seconds = time.monotonic() - start
        t = np.array(out.rss_t)
        late = t >= WARM_UP_S
        if late.sum() >= 3:
            out.rss_slope_mib_per_min = _slope_mib_per_min(t[late], np.array(out.rss_kb)[late])
            if len(out.heap_kb) == len(out.rss_kb):
                for key in ("in_use", "free"):
                    kb = np.array([h[key] for h in out.heap_kb])[late]
                    out.heap_slopes_mib_per_min[key] = _slope_mib_per_min(t[late], kb)
            for key in out.mappings_kb[0]:
                kb = np.array([m[key] for m in out.mappings_kb])[late]
                out.mapping_slopes_mib_per_min[key] = _slope_mib_per_min(t[late], kb)
        if snapshot is not None:
            gc.collect()
            diff = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
            out.growth_sites = [
                f"{d.size_diff / 1024:+.1f} KiB {d.count_diff:+d} {d.traceback[0].filename}:{d.traceback[0].lineno}"
                for d in diff[:15]
            ]
            tracemalloc.stop()
        stats = await client.request("stats")
        engine = stats["engine"]
        fresh = engine["fresh_frames"] - stats0["fresh_frames"]
        out.fresh_fps_engine = fresh / out.seconds if out.seconds else 0.0
        out.fps_received = (client.recording.frames_total - received0) / out.seconds if out.seconds else 0.0
        out.av_offset_ms = engine.get("av_offset_ms")
        latency = engine.get("latency_ms") or {}
        worst = [v.get("p99") for k, v in latency.items() if k == "total" and isinstance(v, dict)]
        worst = [w for w in worst if isinstance(w, int | float)]
        out.max_latency_ms = max(worst) if worst else None
        out.engine_errors = int(engine.get("errors", 0))
    finally:
        await client.close()
    return out


# ------------------------------------------------------------------------------------------- close orders
async def close_order_churn(url: str, server: Any, cycles: int, rounds: int = 2) -> dict[str, Any]:
    """``rounds`` x ``cycles`` WebRTC sessions leaving in every order of :data:`CLOSE_ORDERS` in turn; after each
    round the capacity (all ``max_sessions`` websockets welcomed at once?), the footprint growth over that round
    and the threads by name; at the end the idle CPU of the process.

    The first round is the warm-up: asyncio's default executor (aiortc encodes and sessions close there) grows
    lazily to its fixed size ``min(32, cpus + 4)`` and glibc's arenas reach their high-water mark; a leak is what
    still grows over the later rounds.
    """
    from streaming.allocator import heap_kb

    pcm = speech()
    before = start = Footprint.now()
    threads_start = thread_names()
    errors: Counter[str] = Counter()
    per_round: list[dict[str, Any]] = []
    admitted = leaked = 0
    t0 = time.monotonic()
    for _ in range(rounds):
        for i in range(cycles):
            order = CLOSE_ORDERS[i % len(CLOSE_ORDERS)]
            try:
                await asyncio.wait_for(close_order_cycle(url, server, order, pcm), 60)
            except Exception as exc:  # noqa: BLE001 - counted by kind, the churn goes on
                errors[f"{order}:{type(exc).__name__}"] += 1
        deadline = time.monotonic() + 20
        while (server.clients or server.runtime.sessions) and time.monotonic() < deadline:  # noqa: ASYNC110 - state of another object
            await asyncio.sleep(0.05)
        await settle(server)
        leaked = len(server.runtime.sessions)
        admitted = await capacity(url, server.settings.max_sessions)
        await settle(server)
        await asyncio.sleep(1.0)  # aiortc's last timers; the idle server's heap trim (streaming/allocator.py)
        now = Footprint.now()
        per_round.append({
            "growth": now.minus(before), "capacity_after": admitted, "engine_sessions_left": leaked,
            "threads": thread_names(), "heap_kb": heap_kb(),
        })
        before = now
    seconds = time.monotonic() - t0
    idle = await idle_cpu_fraction(5.0)
    return {
        "cycles": cycles * rounds,
        "rounds": per_round,
        "orders": list(CLOSE_ORDERS),
        "errors_by_kind": dict(errors),
        "seconds": round(seconds, 1),
        "engine_sessions_left": leaked,
        "capacity_after": admitted,
        "max_sessions": server.settings.max_sessions,
        "threads_before": threads_start,
        "growth": Footprint.now().minus(start),
        "growth_after_warm_up_round": _sum_growth(per_round[1:]) if rounds > 1 else None,
        "idle_cpu_percent": round(100 * idle, 2),
    }


def _sum_growth(rounds: list[dict[str, Any]]) -> dict[str, int]:
    keys = rounds[0]["growth"]
    return {k: sum(r["growth"][k] for r in rounds) for k in keys}


# ------------------------------------------------------------------------------------------------- attacks
def _clear_peak_rss() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return Footprint.now().rss_kb


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def attack_payloads() -> dict[str, Any]:
    """The hostile inputs of issue #12 (built once, before measuring)."""
    import io
    import struct
    import zlib

    from PIL import Image
    from scipy.io import savemat

    from engine.avatar import builtin_avatar
    from streaming import protocol as P

    def upload(rtype: str, **fields: Any) -> str:
        return P.make_request(rtype, "a", **fields)

    buf = io.BytesIO()
    savemat(buf, {"coeff": np.zeros((400_000, 257))}, do_compression=True)
    mat_bomb = buf.getvalue()
    img = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img, format="PNG")
    good = img.getvalue()
    body = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)
    ihdr2 = struct.pack(">I", len(body)) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    two_ihdr = good[:33] + ihdr2 + good[33:]
    face = Image.fromarray(np.asarray(builtin_avatar(256))).resize((4096, 4096), Image.BILINEAR)
    jpg = io.BytesIO()
    face.save(jpg, format="JPEG", quality=90)
    sections = "".join(f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=rtpmap:96 VP8/90000\r\n" for i in range(250))
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:"
        + "x" * 24
        + "\r\na=fingerprint:sha-256 "
        + ":".join(["AA"] * 32)
        + "\r\na=setup:actpass\r\n"
        + sections
    )
    clip = io.BytesIO()
    np.save(clip, (0.2 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32))
    return {
        "json_bomb": '{"v":1,"id":"a","type":"ping","x":[' + "{}," * 3_600_000 + "{}]}",
        "mat_bomb": upload("upload_style", name="bomb", format="mat", data=mat_bomb),
        "png_two_ihdr": upload("set_avatar", format="png", data=two_ihdr),
        "photo_4096": upload("set_avatar", format="jpeg", data=jpg.getvalue()),
        "sdp_250_sections": upload("offer", sdp=sdp),
        "style_clip": clip.getvalue(),
    }


async def _attack(kind: str, url: str, payloads: dict[str, Any], stop: asyncio.Event, codes: Counter[str]) -> int:
    """One hostile client until ``stop``; returns the number of hostile requests it made."""
    import json as _json

    from websockets.asyncio.client import connect

    from streaming import protocol as P

    port = int(url.split(":")[2].split("/")[0])
    sent = 0
    if kind == "dns_rebinding":
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            line = await reader.readline()
            writer.close()
            codes[line.split()[1].decode() if line else "closed"] += 1
            sent += 1
            await asyncio.sleep(0.01)
        return sent
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # welcome

        async def reply() -> None:
            while True:
                msg = _json.loads(await ws.recv())
                if msg.get("type") != "event":
                    codes[msg.get("code") or msg.get("type")] += 1
                    return

        while not stop.is_set():
            if kind == "message_flood":
                for i in range(200):
                    await ws.send(P.make_request("ping", f"f{i}"))
                for _ in range(200):
                    await reply()
                sent += 200
                continue
            if kind == "upload_flood":
                name = f"u{sent}"
                text = P.make_request("upload_style", name, name=name, format="npy", data=payloads["style_clip"])
            else:
                text = payloads[kind]
            await ws.send(text)
            await reply()
            sent += 1
            if kind == "upload_flood":
                await asyncio.sleep(1 / 19)  # the 19 uploads/s
    return sent


async def run_attacker(kind: str, url: str, seconds: float) -> None:
    """``--attacker``: build the payloads, print "ready", attack for ``seconds``, print the result as JSON."""
    payloads = attack_payloads()
    print("ready", flush=True)
    stop = asyncio.Event()
    codes: Counter[str] = Counter()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    try:
        sent = await _attack(kind, url, payloads, stop, codes)
    except Exception as exc:  # noqa: BLE001 - the server may disconnect an attacker: that is a result too
        sent, codes[f"attacker:{type(exc).__name__}"] = -1, 1
    print(json.dumps({"requests": sent, "replies": dict(codes)}), flush=True)


ATTACKS = (
    "json_bomb",
    "message_flood",
    "sdp_250_sections",
    "mat_bomb",
    "png_two_ihdr",
    "photo_4096",
    "upload_flood",
    "dns_rebinding",
)


async def _observe(victim: Any, seconds: float, attack: Any = None) -> dict[str, Any]:
    """The victim session's received fps and ping round trips over ``seconds`` (while ``attack`` runs)."""
    from clients.client import ClientError

    frames0 = victim.recording.frames_total
    rtts: list[float] = []
    ping_errors = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        p0 = time.monotonic()
        try:
            await victim.request("ping", timeout=10)
            rtts.append(time.monotonic() - p0)
        except (ClientError, TimeoutError):
            ping_errors += 1
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - p0)))
    elapsed = time.monotonic() - t0
    fps = (victim.recording.frames_total - frames0) / elapsed
    ms = np.array(rtts) * 1000 if rtts else np.array([float("nan")])
    return {
        "fps": round(fps, 2),
        "ping_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "ping_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "pings": len(rtts),
        "ping_errors": ping_errors,
    }


async def attack_section(url: str, seconds: float = 6.0, kinds: tuple[str, ...] = ATTACKS) -> dict[str, Any]:
    """A normal WebRTC session (looped speech) keeps streaming while each hostile client attacks in turn.

    Per attack: the victim's received fps and ping p50/p99 over the attack, the hostile requests made and the
    replies they got, and the cost to this process (server and clients share it, so these are upper bounds):
    CPU seconds per hostile request beyond the no-attack rate, and the peak RSS growth during the attack.
    """
    from clients.client import MicrophoneTrack, StyleTalkClient

    victim = StyleTalkClient(url, keep_frames=64)
    await victim.connect()
    out: dict[str, Any] = {"seconds_each": seconds}
    try:
        await victim.start_media(MicrophoneTrack(speech(), loop=True))
        await victim.wait_frames(30, timeout=60)
        c0 = process_cpu_s()
        base = await _observe(victim, seconds)
        base_cpu_rate = (process_cpu_s() - c0) / seconds
        base["process_cpu_percent"] = round(100 * base_cpu_rate, 1)
        out["no_attack"] = base
        n_events = len(victim.events)
        for kind in kinds:
            victim.recording.audio.clear()
            victim.recording.audio_arrivals.clear()
            if victim.mic is not None:
                victim.mic.sent.clear()
            await asyncio.sleep(1.0)  # the previous attack's tail
            # the attacker is its own process (as a remote client would be): its CPU is not the server's
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.soak", "--attacker", kind, "--url", url,
                "--attack-seconds", str(seconds), stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 120)  # "ready": payloads built
            rss0 = _clear_peak_rss()
            c0, t0 = process_cpu_s(), time.monotonic()
            seen = await _observe(victim, seconds)
            try:
                report = json.loads((await asyncio.wait_for(proc.stdout.readline(), 90)) or b"{}")
            except (TimeoutError, ValueError):
                report = {}
            await proc.wait()
            sent, codes = int(report.get("requests", -1)), report.get("replies", {})
            elapsed = time.monotonic() - t0
            extra_cpu = process_cpu_s() - c0 - base_cpu_rate * elapsed
            events = [e.get("event") for e in victim.events[n_events:]]
            n_events = len(victim.events)
            transport = (await victim.request("stats")).get("transport") or {}
            seen.update(
                victim_events=dict(Counter(events)),
                victim_connection=transport.get("connection_state"),
                requests=sent,
                replies=codes,
                cpu_s_per_request=round(extra_cpu / sent, 4) if sent > 0 else None,
                extra_cpu_s=round(extra_cpu, 2),
                peak_rss_growth_mb=round((_peak_rss_kb() - rss0) / 1024, 1),
            )
            out[kind] = seen
            print(f"  attack {kind:<18} {json.dumps(seen)}", flush=True)
    finally:
        await victim.close()
    return out


# ------------------------------------------------------------------------------------------------- main
async def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.config import load_config
    from engine.runtime import EngineRuntime
    from streaming.allocator import cap_arenas
    from streaming.server import PresenterServer, ServerSettings

    load_start = os.getloadavg()
    if args.malloc_arenas > 0:  # as `styletalk-live serve` does (0: glibc's default, for a before/after)
        cap_arenas(args.malloc_arenas)
    runtime = EngineRuntime.load(load_config(None, {"server.max_sessions": "8"}))
    try:
        async with PresenterServer(runtime, ServerSettings(port=0, max_sessions=8)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            await ws_cycle(url)  # warm-up: first-use imports and allocations are not a leak
            await webrtc_cycle(url, speech())
            await settle(server)
            before = Footprint.now()
            t0 = time.monotonic()
            ch = await churn(url, server, args.cycles, webrtc_every=args.webrtc_every, abrupt=args.abrupt)
            churn_s = time.monotonic() - t0
            after_churn = Footprint.now()
            orders: dict[str, Any] = {}
            if args.close_cycles > 0:
                print(f"close-order churn: {args.close_rounds} x {args.close_cycles} WebRTC cycles", flush=True)
                orders = await close_order_churn(url, server, args.close_cycles, args.close_rounds)
            attacks: dict[str, Any] = {}
            if args.attack_seconds > 0:
                print(f"attacks: {args.attack_seconds} s each against a concurrent session", flush=True)
                load0 = os.getloadavg()
                attacks = await attack_section(url, args.attack_seconds)
                attacks["loadavg_before_after"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
                await settle(server)
            ls = LongSessionResult()
            if args.minutes > 0:
                ls = await long_session(url, args.minutes * 60.0, args.switch_every, args.tracemalloc, args.mic_history)
                await settle(server)
            after = Footprint.now()
            stalled = server.stalled_disconnects
    finally:
        runtime.close()
    return {
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(), "malloc_arena_max_env": os.environ.get("MALLOC_ARENA_MAX"),
        },
        "settings": vars(args),
        "churn": {
            "cycles": ch.cycles,
            "survived": ch.survived,
            "errors_by_kind": dict(ch.errors),
            "seconds": round(churn_s, 1),
            "cycle_s_median": round(float(np.median(ch.cycle_s)), 3) if ch.cycle_s else None,
            "footprint_before": asdict(before),
            "footprint_after": asdict(after_churn),
            "growth": after_churn.minus(before),
        },
        "long_session": {
            "seconds": round(ls.seconds, 1),
            "style_switches": ls.switches,
            "switch_errors_by_kind": dict(ls.switch_errors),
            "fps_received": round(ls.fps_received, 2),
            "fresh_fps_engine": round(ls.fresh_fps_engine, 2),
            "av_offset_ms": ls.av_offset_ms,
            "max_latency_ms": ls.max_latency_ms,
            "engine_errors": ls.engine_errors,
            "rss_kb_first_last": [ls.rss_kb[0], ls.rss_kb[-1]] if ls.rss_kb else None,
            "fds_first_last": [ls.fds[0], ls.fds[-1]] if ls.fds else None,
            "rss_kb_trend": ls.rss_kb[:: max(1, len(ls.rss_kb) // 20)],  # ~20 samples over the session
            "rss_slope_mib_per_min_after_1min": ls.rss_slope_mib_per_min,
            # growth (last - first) and range (max - min) of RSS from each warm-up length on: the heap reaches its
            # high-water mark in steps over the first minutes (30-minute soak: +12 MiB at ~100 s), then stays flat
            "rss_mib_after_warm_up": rss_after_warm_up(ls.rss_t, ls.rss_kb),
            # where the resident size goes (glibc): live allocations vs freed space kept inside the arenas
            "heap_kb_trend": ls.heap_kb[:: max(1, len(ls.heap_kb) // 20)],
            "heap_slopes_mib_per_min_after_1min": ls.heap_slopes_mib_per_min,
            # where the resident size is, by kind of mapping (/proc/self/smaps): heap, thread stacks, anonymous, files
            "mappings_kb_trend": ls.mappings_kb[:: max(1, len(ls.mappings_kb) // 20)],
            "mapping_slopes_mib_per_min_after_1min": ls.mapping_slopes_mib_per_min,
            "tracemalloc_top_growth": ls.growth_sites,
        },
        "close_orders": orders,
        "attacks": attacks,
        "footprint_end": asdict(after),
        "growth_total": after.minus(before),
        "stalled_disconnects": stalled,
    }


def print_report(r: dict[str, Any]) -> None:
    c, s = r["churn"], r["long_session"]
    rows = [
        ("cycles survived", f"{c['survived']} / {c['cycles']}  ({c['seconds']} s, median {c['cycle_s_median']} s)"),
        ("errors by kind", json.dumps(c["errors_by_kind"]) or "{}"),
        ("RSS start -> after churn", f"{c['footprint_before']['rss_kb'] / 1024:.1f} -> "
                                     f"{c['footprint_after']['rss_kb'] / 1024:.1f} MiB"),
        ("growth after churn", json.dumps(c["growth"])),
        ("long session", f"{s['seconds']} s, {s['style_switches']} switches, errors {s['switch_errors_by_kind']}"),
        ("RSS slope after 1 min", f"{s.get('rss_slope_mib_per_min_after_1min')} MiB/min"),
        ("RSS growth / range after s", f"{json.dumps(s.get('rss_mib_after_warm_up'))} MiB"),
        ("heap slopes after 1 min", f"{json.dumps(s.get('heap_slopes_mib_per_min_after_1min'))} MiB/min"),
        ("mapping slopes after 1 min", f"{json.dumps(s.get('mapping_slopes_mib_per_min_after_1min'))} MiB/min"),
        ("fps received / fresh (engine)", f"{s['fps_received']} / {s['fresh_fps_engine']}"),
        ("A/V offset ms", json.dumps(s["av_offset_ms"])),
        ("latency p99 ms (total)", str(s["max_latency_ms"])),
        ("RSS end", f"{r['footprint_end']['rss_kb'] / 1024:.1f} MiB"),
    ]
    o = r.get("close_orders") or {}
    if o:
        rows += [
            ("close-order cycles", f"{o['cycles']} in {o['seconds']} s, errors {json.dumps(o['errors_by_kind'])}"),
            ("capacity after churn", f"{o['capacity_after']} / {o['max_sessions']} (engine sessions left "
                                     f"{o['engine_sessions_left']})"),
            ("growth after close orders", json.dumps(o["growth"])),
            ("  of which after round 1", f"{json.dumps(o.get('growth_after_warm_up_round'))} (round 1 is the "
                                         "warm-up: pools fill to their fixed size)"),
            ("threads before -> after", f"{json.dumps(o.get('threads_before'))} -> "
                                        f"{json.dumps((o.get('rounds') or [{}])[-1].get('threads'))}"),
            ("idle CPU after churn", f"{o['idle_cpu_percent']} % of a core"),
        ]
    a = r.get("attacks") or {}
    for kind, v in a.items():
        if isinstance(v, dict):
            cost = (f", {v['cpu_s_per_request']} s CPU/req, +{v['peak_rss_growth_mb']} MB peak"
                    if "requests" in v else "")
            rows.append((f"attack {kind}", f"victim {v['fps']} fps, ping p50/p99 {v['ping_p50_ms']}/"
                                           f"{v['ping_p99_ms']} ms{cost}"))
    rows += [
        ("growth total", json.dumps(r["growth_total"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="connect/disconnect cycles (default 200)")
    parser.add_argument("--webrtc-every", type=int, default=5, help="every N-th cycle negotiates media (0: none)")
    parser.add_argument("--minutes", type=float, default=30.0, help="long-session length (0: skip)")
    parser.add_argument("--switch-every", type=float, default=3.0, help="seconds between style switches")
    parser.add_argument("--abrupt", action="store_true", help="every other client vanishes without closing")
    parser.add_argument(
        "--close-cycles", type=int, default=50,
        help="WebRTC cycles per round leaving in each close order in turn (pc first, ws first, both, ws during the "
        "drop, ws during the new session, TCP reset); then capacity and idle CPU (default 50; 0: skip)",
    )
    parser.add_argument(
        "--close-rounds", type=int, default=2,
        help="rounds of --close-cycles (default 2: the first warms the bounded pools up, growth after it is a leak)",
    )
    parser.add_argument(
        "--attack-seconds", type=float, default=6.0,
        help="length of each hostile client's attack while a normal session streams (default 6; 0: skip)",
    )
    parser.add_argument(
        "--malloc-arenas", type=int, default=2,
        help="cap glibc's malloc arenas as `serve` does (default 2; 0: glibc's default, up to 8 per core)",
    )
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    parser.add_argument(
        "--mic-history", type=int, default=500,
        help="20 ms chunks whose send time the long session's client keeps (default 500; 0: unbounded, the client "
        "before issue #12's fix, for a before/after)",
    )
    parser.add_argument(
        "--tracemalloc", action="store_true",
        help="profile the long session: top growing Python allocation sites between minute 1 and the end "
        "(tracing slows this process; on a loaded 2-core machine the session can starve and its media end)",
    )
    parser.add_argument("--attacker", default=None, choices=ATTACKS, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        asyncio.run(run_attacker(args.attacker, args.url, args.attack_seconds))
        return 0
    result = asyncio.run(run(args))
    print_report(result)
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
