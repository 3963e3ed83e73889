"""Fixtures and helpers shared by the streaming tests (server, WebRTC, browser).

The fixtures are registered for every test module by ``tests/conftest.py`` (``pytest_plugins``): name them as test
parameters, don't import them (an imported fixture would be the importing module's own: one engine per module).
``runtime = shared_runtime`` (imported) is fine: it only names the shared one. The runtime is the real engine on its
built-in defaults (``EngineRuntime.load``), loaded once per test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
SPEECH_WAV = DATA / "speech_16k.wav"
# Mouth region of the built-in avatar (astronaut crop): dlib mouth landmarks span x 0.35-0.63, y 0.62-0.73 of
# the frame; the box leaves room for the jaw opening.
MOUTH_BOX = (0.33, 0.58, 0.67, 0.82)


def speech_16k() -> np.ndarray:
    """The committed speech clip (``tests/data/speech_16k.wav``) as 16 kHz mono int16 samples."""
    from clients.client import read_wav, to_16k

    pcm, rate = read_wav(SPEECH_WAV)
    return to_16k(pcm, rate)


@pytest.fixture(scope="session")
def live_runtime():  # noqa: ANN201 - engine.runtime.EngineRuntime
    """The real engine, built-in weights/styles/avatar; shared by every streaming test."""
    from engine.config import load_config
    from engine.runtime import EngineRuntime

    # a still head: the page tests measure mouth motion in a fixed box of the frame
    runtime = EngineRuntime.load(load_config(None, {"server.max_sessions": "8", "avatar.head_motion": "0"}))
    yield runtime
    runtime.close()


@pytest.fixture
def shared_runtime(live_runtime):  # noqa: ANN001, ANN201 - engine.runtime.EngineRuntime
    """``live_runtime`` under the name ``runtime``-using modules expect: for modules whose tests need no engine of
    their own (an engine load is ~8 s of the suite per module). Use ``runtime = shared_runtime`` at module level."""
    return live_runtime


def runtime_fixture(max_sessions: int = 8, **overrides: str) -> Any:
    """A module-scoped ``runtime`` fixture: the real engine on built-in defaults, its own ``max_sessions``.

    For modules whose assertions depend on the engine's own session limit (admission, capacity after churn);
    ``runtime = runtime_fixture(4)`` at module level.
    """

    @pytest.fixture(scope="module")
    def runtime():  # noqa: ANN202 - engine.runtime.EngineRuntime
        from engine.config import load_config
        from engine.runtime import EngineRuntime

        rt = EngineRuntime.load(load_config(None, {"server.max_sessions": str(max_sessions), **overrides}))
        yield rt
        rt.close()

    return runtime


def run(coro: Coroutine[Any, Any, Any], timeout: float = 300.0) -> Any:
    """Run one test's coroutine on a fresh loop; ``timeout`` only guards against a hung test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Raw:
    """A protocol client over a raw websocket (tests the wire format, not clients/client.py): sends anything
    and returns the next non-event message; events seen meanwhile are kept in ``events``."""

    def __init__(self, ws) -> None:  # noqa: ANN001 - websockets ClientConnection
        self.ws = ws
        self.n = 0
        self.events: list[dict] = []
        self.welcome: dict = {}

    @classmethod
    async def open(cls, port: int, query: str = "", **kwargs: object) -> Raw:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{port}/ws{query}", max_size=None, **kwargs)  # type: ignore[arg-type]
        self = cls(ws)
        await self.read_welcome()
        return self

    async def read_welcome(self) -> dict:
        msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        assert msg["type"] == "event" and msg["event"] == "welcome", msg
        self.welcome = msg
        return msg

    async def send(self, text: str | bytes) -> dict:
        await self.ws.send(text)
        return await self.next_reply()

    async def next_reply(self) -> dict:
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg["type"] != "event":
                return msg
            self.events.append(msg)

    async def call(self, rtype: str, **fields: object) -> dict:
        from streaming import protocol as P

        self.n += 1
        msg = await self.send(P.make_request(rtype, self.n, **fields))
        assert msg["id"] == self.n, msg
        return msg

    async def assert_alive(self) -> None:
        msg = await self.call("ping")
        assert msg["type"] == "result", msg


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET (no client-side path normalisation: traversal attempts reach the server as sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), hdrs, body


@contextlib.contextmanager
def serve_process(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``styletalk-live serve --port 0 *args`` as a child process; yields it and its port once it serves.

    Killed on the way out if the test did not stop it. Its output (stdout + stderr) is drained by a thread
    into ``proc.output_lines`` (a list; a long-running server never blocks on a full pipe).
    """
    with serve_processes(1, *args, **env) as ((proc, port),):
        yield proc, port


@contextlib.contextmanager
def serve_processes(count: int, *args: str, **env: str) -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    """``count`` :func:`serve_process` children started at once: their engine loads (seconds of one core each)
    overlap on the machine's cores instead of queueing. Yields ``(proc, port)`` per child, in start order."""
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "streaming.serve_command", "--port", "0", *args],
            cwd=root,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 180
        yield [(proc, _wait_serving(proc, deadline)) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_serving(proc: subprocess.Popen[str], deadline: float) -> int:
    """Read a starting server's output until it says where it serves (its port); drain the rest meanwhile."""
    port = None
    lines: list[str] = []
    assert proc.stdout is not None
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "serving on http://127.0.0.1:" in line:
            port = int(line.split("127.0.0.1:")[1].split("/")[0])
    assert port is not None, "".join(lines)
    proc.output_lines = lines  # type: ignore[attr-defined]
    threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()
    return port


def _drain(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def trained_weights(runtime) -> bool:  # noqa: ANN001
    """Whether the runtime's decoder has trained weights (random stand-in weights barely move the mouth)."""
    from engine.runtime import BUILTIN_CHECKPOINT

    checkpoint = runtime.config.decoder.checkpoint
    return checkpoint not in (None, "random") or BUILTIN_CHECKPOINT.is_file()


UNTRAINED_REASON = (
    "mouth-motion check skipped: no trained decoder weights (models/assets/styletalk_default.pt missing, the "
    "engine runs random weights whose output barely depends on the phonemes); all other checks passed"
)


def style_clip(seed: int = 1, frames: int = 48) -> np.ndarray:
    """A synthetic expression clip ``(frames, 64)`` for uploads (any finite clip encodes to a style)."""
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((frames, 64))).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def server_settings(**overrides: object):  # noqa: ANN201 - streaming.server.ServerSettings
    from streaming.server import ServerSettings

    base = {"host": "127.0.0.1", "port": 0, "max_sessions": 4}
    base.update(overrides)
    return ServerSettings(**base)  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the event loop (no fixed sleeps in assertions)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def session_threads() -> set[str]:
    """Names of live threads other than process-wide pools (asyncio's default executor, the model worker)."""
    shared = ("asyncio_", "styletalk-model", "MainThread", "ThreadPoolExecutor")
    return {t.name for t in threading.enumerate() if not t.name.startswith(shared)}


def assert_collected(refs: list[weakref.ref], what: str = "session") -> None:
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} {what} object(s) still referenced after close: {alive[:2]}"


def mouth_changes(images: list[np.ndarray], box: tuple[float, float, float, float] = MOUTH_BOX) -> np.ndarray:
    """Mean absolute grey change of the mouth box between consecutive *distinct* frames, ``(M,)``.

    Exact repeats are dropped first: on a busy machine the engine repeats the previous image for a frame that
    is late, which says nothing about motion.
    """
    h, w = images[0].shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    grey = [im[y0:y1, x0:x1].astype(np.float32).mean(axis=2) for im in images]
    distinct = [grey[0]] + [g for prev, g in zip(grey, grey[1:], strict=False) if not np.array_equal(prev, g)]
    if len(distinct) < 2:
        return np.zeros(1, np.float32)
    return np.abs(np.diff(np.stack(distinct), axis=0)).mean(axis=(1, 2))
