"""Fixtures and helpers shared by the streaming tests (server, WebRTC, browser).

Import the fixtures into a test module: ``from tests.streaming_fixtures import live_runtime  # noqa``.
The runtime is the real engine on its built-in defaults (``EngineRuntime.load``), loaded once per test run.
"""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
SPEECH_WAV = DATA / "speech_16k.wav"
# Mouth region of the built-in avatar (astronaut crop): dlib mouth landmarks span x 0.35-0.63, y 0.62-0.73 of
# the frame; the box leaves room for the jaw opening.
MOUTH_BOX = (0.33, 0.58, 0.67, 0.82)


@pytest.fixture(scope="session")
def live_runtime():  # noqa: ANN201 - engine.runtime.EngineRuntime
    """The real engine, built-in weights/styles/avatar; shared by every streaming test."""
    from engine.config import load_config
    from engine.runtime import EngineRuntime

    # a still head: the page tests measure mouth motion in a fixed box of the frame
    runtime = EngineRuntime.load(load_config(None, {"server.max_sessions": "8", "avatar.head_motion": "0"}))
    yield runtime
    runtime.close()


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
