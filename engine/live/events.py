"""The session's event channel: info/error events for the client, and the hand-over to the event loop.

Owner: the event loop. :meth:`EventChannel.post` and :meth:`EventChannel.error_threadsafe` are the only
members other threads (recognizer thread, model worker, a microphone's PortAudio thread) may call: they
schedule the work on the loop instead of touching loop-owned state.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

EVENT_QUEUE_SIZE = 256  # events nobody reads: the oldest are dropped, the newest kept


class EventCode(StrEnum):
    """Every ``code`` an engine event can carry (the server forwards them; ``streaming/PROTOCOL.md`` lists
    them, ``tests/test_protocol_docs.py`` checks that it does)."""

    # info
    STARTED = "started"  # delay_ms, lookahead
    STYLE = "style"  # name, frame, crossfade_frames
    STYLE_ADDED = "style_added"  # name
    AVATAR = "avatar"  # the new photo is live
    INTERRUPTED = "interrupted"  # frame
    PAUSED = "paused"  # frame
    RESUMED = "resumed"
    # errors (this session only; it keeps running)
    BAD_AUDIO = "bad_audio"  # NaN/inf samples replaced by 0
    INPUT_OVERFLOW = "input_overflow"  # audio arrives faster than real time: samples dropped
    RECOGNIZER = "recognizer"  # the recognizer failed, got stuck (restarted) or was given up
    PIPELINE = "pipeline"  # a decode/render job failed (the next one runs)
    MODEL_WORKER = "model_worker"  # the model worker process died or hung: the session moves to a fresh one
    AVATAR_FAILED = "avatar"  # (error) the new photo could not be prepared; the old one stays


INFO_CODES = frozenset({EventCode.STARTED, EventCode.STYLE, EventCode.STYLE_ADDED, EventCode.AVATAR,
                        EventCode.INTERRUPTED, EventCode.PAUSED, EventCode.RESUMED})


class EventChannel:
    """Events of one session (``{"type": "info"|"error", "code": ..., "session": ...}``) and loop hand-over."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self.errors = 0  # error events emitted (loop-owned)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the loop thread by ``LiveSession.start``: from now on :meth:`post` reaches ``loop``."""
        self._loop = loop
        self._loop_thread = threading.current_thread()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (any thread); dropped before start or once the loop closed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(fn, *args)

    def emit(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # nobody is reading: keep the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(event)

    def error(self, code: EventCode, message: str) -> None:
        self.errors += 1
        self.emit({"type": "error", "code": code, "message": message, "session": self.session_id})

    def error_threadsafe(self, code: EventCode, message: str) -> None:
        if self._loop_thread is threading.current_thread():
            self.error(code, message)
        else:
            self.post(self.error, code, message)

    def info(self, code: EventCode, **data: Any) -> None:
        self.emit({"type": "info", "code": code, "session": self.session_id, **data})
