"""A room pushed to an RTMP URL (``serve --rtmp``): the room's broadcast feeds the engine's RTMP encoder.

The encoding (H.264 + AAC in FLV, one worker thread behind a bounded drop-oldest hand-over, a failure ends the
push with an error, never the room) is :class:`engine.rtmp.RtmpEncoder`, shared with ``speak --rtmp``; this
module only pulls the room's :class:`~streaming.broadcast.Subscriber` (the same frames the viewers get) on the
event loop and offers each item to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from engine.rtmp import RtmpEncoder
from streaming.broadcast import Subscriber


class RtmpPush:
    """One room pushed to one RTMP URL: ``start()`` (on the event loop), then ``close()`` (idempotent)."""

    def __init__(self, url: str, source: Subscriber, bitrate: int = 1_500_000) -> None:
        self.source = source
        self.encoder = RtmpEncoder(url, bitrate)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.encoder.start()
        self._tasks = [asyncio.create_task(self._pull(self.source.next_video_frame)),
                       asyncio.create_task(self._pull(self.source.next_audio_chunk))]

    @property
    def url(self) -> str:
        return self.encoder.url

    @property
    def running(self) -> bool:
        return self.encoder.running

    @property
    def video_frames(self) -> int:
        return self.encoder.video_frames

    @property
    def error(self) -> str | None:
        return self.encoder.error

    async def close(self) -> None:
        self.source.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self.encoder.close)

    def stats(self) -> dict[str, Any]:
        return self.encoder.stats()

    async def _pull(self, next_item: Any) -> None:
        while self.encoder.running:
            try:
                item = await next_item()
            except Exception:  # the subscription ended (SessionClosed) or the room closed
                return
            self.encoder.offer(item)
