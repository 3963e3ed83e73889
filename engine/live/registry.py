"""The registry of running live sessions: the one place that admits a session against ``max_sessions``.

Thread-safe (sessions are built in worker threads by the server, closed on the event loop). Admission is
atomic: a slot is reserved under the lock *before* the slow construction (~0.5 s recognizer set-up), so
concurrent callers can never all pass the check; a failed construction gives the slot back, and
:meth:`SessionRegistry.release` frees a slot only for the session that holds it (a replacement session may
already run under the same id).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

S = TypeVar("S")

_RESERVED = object()  # placeholder for a slot whose session is being built


class SessionRefused(RuntimeError):
    """No slot: ``max_sessions`` sessions are running, or the id is taken."""


class SessionRegistry(Generic[S]):
    """Session id -> running session (or a reservation while it is built), bounded by ``limit()``."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit  # read at each admission (the configuration may change between sessions)
        self._slots: dict[str, object] = {}
        self._lock = threading.Lock()

    def admit(self, session_id: str, build: Callable[[], S], limit: int | None = None) -> S:
        """Reserve a slot, build the session outside the lock, fill the slot; :class:`SessionRefused` when
        full (``limit`` overrides the registry's own, e.g. the server's setting)."""
        cap = self._limit() if limit is None else limit
        with self._lock:
            if session_id in self._slots:
                raise SessionRefused(f"session {session_id!r} is already running")
            if len(self._slots) >= cap:
                raise SessionRefused(f"too many sessions ({len(self._slots)}; max {cap})")
            self._slots[session_id] = _RESERVED
        try:
            session = build()
        except BaseException:
            self.release(session_id, _RESERVED)
            raise
        with self._lock:
            self._slots[session_id] = session
        return session

    def release(self, session_id: str, holder: object | None = None) -> None:
        """Free ``session_id``'s slot (only if it still holds ``holder``, when given). Idempotent."""
        with self._lock:
            current = self._slots.get(session_id)
            if current is not None and (holder is None or current is holder):
                del self._slots[session_id]

    def get(self, session_id: str) -> object | None:
        """The session (or the reservation marker while it is built) under ``session_id``."""
        with self._lock:
            return self._slots.get(session_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._slots

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._slots))

    def __bool__(self) -> bool:
        return len(self) > 0
