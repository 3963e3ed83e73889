"""What the serving layer needs from the engine, as ``typing.Protocol``s (structural: the engine's
:class:`engine.live.LiveSession` and :class:`engine.runtime.EngineRuntime` fit them without importing this).

Written down so the server and the WebRTC glue call what is declared here and nothing else - no ``getattr``
probing - and a test double has one list of members to provide.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np

from engine.config import Config
from engine.live.frames import OutputAudioChunk, OutputVideoFrame
from engine.stylebank import StyleBank


class MediaSession(Protocol):
    """What the WebRTC transport needs: paced output media, and a sink for the remote microphone."""

    async def next_video_frame(self) -> OutputVideoFrame: ...

    async def next_audio_chunk(self) -> OutputAudioChunk: ...

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None: ...


class ServedSession(MediaSession, Protocol):
    """One client's live session as the server drives it (lifecycle, control, stats, events)."""

    @property
    def events(self) -> asyncio.Queue[dict[str, Any]]:
        """Engine events (``{"type": "info"|"error", "code", ...}``) the server forwards to the client."""
        ...

    @property
    def styles(self) -> StyleBank:
        """The session's own style bank (uploaded styles are added here)."""
        ...

    @property
    def style(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def list_styles(self) -> list[str]: ...

    def set_style(self, name: str, transition_ms: int = 250, at_frame: int | None = None) -> int: ...

    def set_intensity(self, k: float) -> None: ...

    async def add_style_async(self, name: str, clip: np.ndarray) -> None: ...

    def set_avatar(self, image: np.ndarray) -> None: ...

    def interrupt(self) -> int | None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class SessionSlots(Protocol):
    """The engine's registry of running sessions, as far as the server reads it (``/healthz``)."""

    def __len__(self) -> int: ...


class ServedRuntime(Protocol):
    """The process-wide engine as the server sees it: configuration, a session factory (which admits against
    ``max_sessions``: the one place that checks it) and the release of a session's slot."""

    @property
    def config(self) -> Config: ...

    @property
    def sessions(self) -> SessionSlots: ...

    @property
    def styles(self) -> StyleBank:
        """The styles every new session starts with (``save_style`` adds to it)."""
        ...

    def new_session(self, session_id: str, max_sessions: int | None = None) -> ServedSession: ...

    def workers_health(self) -> dict[str, Any]:
        """Where the sessions decode and render (model thread or worker processes, and how many are alive)."""
        ...

    def forget(self, session_id: str, session: object | None = None) -> None: ...
