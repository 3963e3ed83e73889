"""One presenter's output, fanned out in-process: the presenter's own peer plus any number of subscribers.

The presenter's media peer pulls frames through a :class:`Tap` (a ``MediaSession`` wrapping the live session),
and every frame it pulls is also offered to each :class:`Subscriber` (bounded queues, oldest dropped: a slow
subscriber never slows the presenter). A subscriber is itself a ``MediaSession``, so the same aiortc tracks of
:mod:`streaming.webrtc` read it: the RTP publisher that feeds Janus (one encode for the whole audience) and, with
no Janus, each direct viewer's own peer.

The presenter's session is replaced on hangup or a dropped peer; the broadcast outlives it. A subscriber re-times
each new source onto its own continuous clock, so the RTP timeline viewers see never jumps back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from typing import Any

import numpy as np

from engine.live.frames import OutputAudioChunk, OutputVideoFrame, SessionClosed
from streaming.contracts import MediaSession

_CLOSED = object()
VIDEO_QUEUE = 8  # frames (~0.27 s): beyond that a subscriber is late and loses the oldest
# frames a subscriber may have waiting behind the one it takes; older ones are skipped. Without this, a consumer
# that once fell behind (an encode slower than a frame period on a busy machine) stays behind by the whole queue
# for good, as it takes frames no faster than they come: benchmarks.audience measured a standing 235-655 ms
# (8 frames at 30-12 fps) on top of the presenter's own view. Live video wants the newest frames, not all of them.
MAX_BEHIND = 1
AUDIO_QUEUE = 100  # chunks


class _Retimer:
    """Maps each source's media-clock pts onto one continuous timeline that starts at the subscriber's start."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.source: int | None = None
        self.offset = Fraction(0)

    def __call__(self, source: int, pts: Fraction) -> Fraction:
        if source != self.source:
            self.source = source
            now = Fraction(round((time.monotonic() - self.t0) * self.rate), self.rate)
            self.offset = now - Fraction(pts)
        return Fraction(pts) + self.offset


def _put_dropping(queue: asyncio.Queue[Any], item: Any) -> bool:
    """Put without waiting; a full queue loses its oldest item. True when something was dropped."""
    dropped = False
    while True:
        try:
            queue.put_nowait(item)
            return dropped
        except asyncio.QueueFull:
            try:
                queue.get_nowait()
                dropped = True
            except asyncio.QueueEmpty:  # pragma: no cover - single-threaded loop
                pass


class Subscriber:
    """A ``MediaSession`` view of a broadcast (no microphone): frames as the presenter's peer pulls them."""

    def __init__(self, broadcast: Broadcast) -> None:
        self._broadcast = broadcast
        self._video: asyncio.Queue[Any] = asyncio.Queue(VIDEO_QUEUE)
        self._audio: asyncio.Queue[Any] = asyncio.Queue(AUDIO_QUEUE)
        self._vclock = _Retimer(90_000)
        self._aclock = _Retimer(16_000)
        self.frames = 0
        self.dropped = 0  # lost to a full queue
        self.skipped = 0  # stale: more than MAX_BEHIND newer frames were waiting
        self.closed = False

    def _offer_video(self, source: int, frame: OutputVideoFrame) -> None:
        if not self.closed and _put_dropping(self._video, (source, frame)):
            self.dropped += 1

    def _offer_audio(self, source: int, chunk: OutputAudioChunk) -> None:
        if not self.closed:
            _put_dropping(self._audio, (source, chunk))

    async def next_video_frame(self) -> OutputVideoFrame:
        item = await self._video.get()
        while item is not _CLOSED and self._video.qsize() > MAX_BEHIND:
            item = self._video.get_nowait()
            self.skipped += 1
        if item is _CLOSED:
            self._video.put_nowait(_CLOSED)
            raise SessionClosed("the broadcast subscription ended")
        source, frame = item
        self.frames += 1
        return replace(frame, pts=self._vclock(source, frame.pts))

    async def next_audio_chunk(self) -> OutputAudioChunk:
        item = await self._audio.get()
        if item is _CLOSED:
            self._audio.put_nowait(_CLOSED)
            raise SessionClosed("the broadcast subscription ended")
        source, chunk = item
        return replace(chunk, pts=self._aclock(source, chunk.pts))

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        raise RuntimeError("a viewer has no microphone")

    def close(self) -> None:
        """End the subscription: readers get ``SessionClosed``; the broadcast forgets it."""
        if self.closed:
            return
        self.closed = True
        self._broadcast.subscribers.discard(self)
        for queue in (self._video, self._audio):
            _put_dropping(queue, _CLOSED)


class Tap:
    """The presenter peer's ``MediaSession``: the live session's frames, also offered to the subscribers."""

    def __init__(self, broadcast: Broadcast, session: MediaSession, source: int) -> None:
        self._broadcast = broadcast
        self._session = session
        self._source = source
        self._started = False

    async def next_video_frame(self) -> OutputVideoFrame:
        try:
            frame = await self._session.next_video_frame()
        except BaseException:
            self._broadcast._ended(self._source)
            raise
        if not self._started:
            self._started = True
            self._broadcast._began(self._source)
        for sub in list(self._broadcast.subscribers):
            sub._offer_video(self._source, frame)
        return frame

    async def next_audio_chunk(self) -> OutputAudioChunk:
        chunk = await self._session.next_audio_chunk()
        for sub in list(self._broadcast.subscribers):
            sub._offer_audio(self._source, chunk)
        return chunk

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        self._session.push_audio(pcm, sample_rate)


class Broadcast:
    """A presenter's output for its audience; ``on_live(bool)`` tells when media starts and stops flowing."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self._sources = itertools.count(1)
        self._current: int | None = None
        self.live = False
        self.on_live: Callable[[bool], None] | None = None

    def tap(self, session: MediaSession) -> Tap:
        """Wrap the presenter's (new) live session; the newest tap is the broadcast's source."""
        source = next(self._sources)
        self._current = source
        return Tap(self, session, source)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self)
        self.subscribers.add(sub)
        return sub

    def _began(self, source: int) -> None:
        if source == self._current and not self.live:
            self.live = True
            if self.on_live is not None:
                self.on_live(True)

    def _ended(self, source: int) -> None:
        if source == self._current and self.live:
            self.live = False
            if self.on_live is not None:
                self.on_live(False)

    def close(self) -> None:
        for sub in list(self.subscribers):
            sub.close()
