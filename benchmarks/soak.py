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
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
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
    engine_errors: int = 0
    rss_kb: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


async def long_session(url: str, seconds: float, switch_every_s: float = 3.0) -> LongSessionResult:
    """One WebRTC session streaming looped speech for ``seconds``, switching style every ``switch_every_s``."""
    from clients.client import ClientError, MicrophoneTrack, StyleTalkClient

    out = LongSessionResult()
    client = StyleTalkClient(url, keep_frames=64)  # keep few images: the client must not be the leak
    welcome = await client.connect()
    styles = list(welcome["styles"])
    try:
        await client.start_media(MicrophoneTrack(speech(), loop=True))
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
            fp = Footprint.now()
            out.rss_kb.append(fp.rss_kb)
            out.fds.append(fp.fds)
        out.seconds = time.monotonic() - start
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


# ------------------------------------------------------------------------------------------------- main
async def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.config import load_config
    from engine.runtime import EngineRuntime
    from streaming.server import PresenterServer, ServerSettings

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
            ls = LongSessionResult()
            if args.minutes > 0:
                ls = await long_session(url, args.minutes * 60.0, args.switch_every)
                await settle(server)
            after = Footprint.now()
            stalled = server.stalled_disconnects
    finally:
        runtime.close()
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
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
        },
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
        ("fps received / fresh (engine)", f"{s['fps_received']} / {s['fresh_fps_engine']}"),
        ("A/V offset ms", json.dumps(s["av_offset_ms"])),
        ("latency p99 ms (total)", str(s["max_latency_ms"])),
        ("RSS end", f"{r['footprint_end']['rss_kb'] / 1024:.1f} MiB"),
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
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print_report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
