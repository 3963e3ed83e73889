"""A presenter's broadcast (streaming/broadcast.py): a subscriber slower than the presenter's frames (an RTP
publisher whose encode takes longer than a frame period on a busy machine) skips stale frames instead of staying
a whole queue behind for good."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np

from engine.live.frames import OutputAudioChunk, OutputVideoFrame
from streaming.broadcast import MAX_BEHIND, VIDEO_QUEUE, Broadcast


class Frames:
    """A MediaSession giving frame after frame (index i, pts i/30) as fast as it is asked."""

    def __init__(self) -> None:
        self.i = 0

    async def next_video_frame(self) -> OutputVideoFrame:
        self.i += 1
        return OutputVideoFrame(self.i, Fraction(self.i, 30), np.zeros((2, 2, 3), np.uint8), {})

    async def next_audio_chunk(self) -> OutputAudioChunk:
        raise NotImplementedError

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        raise NotImplementedError


def test_a_subscriber_that_fell_behind_takes_recent_frames_not_a_standing_queue() -> None:
    async def main() -> None:
        broadcast = Broadcast()
        tap, sub = broadcast.tap(Frames()), broadcast.subscribe()
        for _ in range(VIDEO_QUEUE):  # the subscriber stalled: a full queue waits for it
            await tap.next_video_frame()
        frame = await sub.next_video_frame()
        assert frame.index == VIDEO_QUEUE - MAX_BEHIND  # not frame 1: the stale ones are skipped
        assert sub.skipped == VIDEO_QUEUE - MAX_BEHIND - 1 and sub.dropped == 0
        # from then on it keeps up one frame per presenter frame, at most MAX_BEHIND behind
        for _ in range(20):
            newest = (await tap.next_video_frame()).index
            got = (await sub.next_video_frame()).index
            assert newest - got <= MAX_BEHIND
        # a subscriber that keeps up skips nothing
        fresh = broadcast.subscribe()
        for _ in range(10):
            await tap.next_video_frame()
            await fresh.next_video_frame()
        assert fresh.skipped == 0 and fresh.frames == 10

    asyncio.run(main())
