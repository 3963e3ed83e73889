"""The output side of a live session: rendered frames waiting for their due time, paced release of video and
audio, and the A/V pairing that measures lip-sync as sent.

Owner: the event loop. Rendered frames arrive via :meth:`FrameBuffer.add` (posted from the model worker);
consumers call :meth:`SessionOutput.next_video_frame` / :meth:`SessionOutput.next_audio_chunk`, both paced by
the media clock: frame t and the audio at pts t/30 are released at ``origin + delay + t/30``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine.live.frames import OutputAudioChunk, OutputVideoFrame, RenderedFrame
from engine.live.render_stream import RenderedItem
from engine.pacing import AudioTimeline, OutputPacer, StageMetrics
from engine.stream import StreamCore
from engine.timing import Timebase

PAIR_HISTORY = 200  # audio chunk send times kept for pairing
PAIR_PENDING = 100  # video frames waiting for their audio chunk


@dataclass
class OutputCounters:
    """What the output did (loop-owned; read by ``LiveSession.stats``)."""

    frames_sent: int = 0
    late_frames: int = 0  # repeated because the frame was not ready at its due time
    stale_frames: int = 0  # rendered but dropped (deadline passed / interrupt)
    audio_chunks: int = 0
    video_error: deque[float] = field(default_factory=lambda: deque(maxlen=900))  # sent - due (s)
    audio_error: deque[float] = field(default_factory=lambda: deque(maxlen=900))
    av_offset: deque[float] = field(default_factory=lambda: deque(maxlen=900))  # video - audio sent, same pts


class FrameBuffer:
    """Rendered frames by index until their due time, and the last image shown (repeated when one is late)."""

    def __init__(self, first_image: np.ndarray, limit: int, counters: OutputCounters) -> None:
        self.frames: OrderedDict[int, RenderedFrame] = OrderedDict()
        self.last_image = first_image  # uint8 (H, W, 3)
        self.last_exp: np.ndarray | None = None  # float32 (64,) of the last fresh frame shown
        self.limit = limit
        self._c = counters

    def add(self, items: list[RenderedItem], t_ren: float, first_unsent: int, core: StreamCore) -> None:
        """Keep rendered frames that can still be shown (``first_unsent`` or later); stamp their render time."""
        for frame, image, e in items:
            if frame < first_unsent:  # its time has passed while rendering
                self._c.stale_frames += 1
                continue
            st = core.peek_stamps(frame)
            if st is not None:
                st.rendered = t_ren
            self.frames[frame] = RenderedFrame(image, e, t_ren)
        while len(self.frames) > self.limit:
            self.frames.popitem(last=False)
            self._c.stale_frames += 1

    def take(self, t: int) -> RenderedFrame | None:
        """Frame t if rendered; older frames can no longer be shown and are dropped."""
        item = self.frames.pop(t, None)
        while self.frames and next(iter(self.frames)) < t:
            self.frames.popitem(last=False)
            self._c.stale_frames += 1
        if item is not None:
            self.last_image = item.image
            self.last_exp = item.exp
        return item

    def drop_from(self, at: int) -> None:
        """Discard frames ``at`` and later (interrupt)."""
        for f in [f for f in self.frames if f >= at]:
            del self.frames[f]
            self._c.stale_frames += 1

    def __contains__(self, frame: int) -> bool:
        return frame in self.frames

    def __len__(self) -> int:
        return len(self.frames)

    def clear(self) -> None:
        self.frames.clear()


class AvPairing:
    """A/V offset as sent: every video frame that starts an audio chunk shares its pts with that chunk
    (every 100 ms at 30 fps / 20 ms); the difference of their send times is the lip-sync error the client sees.
    """

    def __init__(self, timebase: Timebase, chunk_samples: int, offsets: deque[float]) -> None:
        self.tb = timebase
        self.chunk_samples = chunk_samples
        self.offsets = offsets
        self.audio_sent: OrderedDict[Fraction, float] = OrderedDict()  # recent chunk pts -> sent
        self.video_sent: dict[Fraction, float] = {}  # video pts waiting for their audio chunk

    def starts_chunk(self, pts: Fraction) -> bool:
        """Whether an audio chunk starts exactly at ``pts``."""
        return self.tb.starts_chunk(pts, self.chunk_samples)

    def audio(self, pts: Fraction, sent: float) -> None:
        self.audio_sent[pts] = sent
        while len(self.audio_sent) > PAIR_HISTORY:
            self.audio_sent.popitem(last=False)
        if pts in self.video_sent:
            self.offsets.append(self.video_sent.pop(pts) - sent)

    def video(self, pts: Fraction, sent: float) -> None:
        if pts in self.audio_sent:
            self.offsets.append(sent - self.audio_sent.pop(pts))
        elif self.starts_chunk(pts):  # its audio chunk comes later
            self.video_sent[pts] = sent
            while len(self.video_sent) > PAIR_PENDING:
                self.video_sent.pop(next(iter(self.video_sent)))


class SessionOutput:
    """Paced release of frames and audio chunks (see module docstring)."""

    def __init__(
        self,
        pacer: OutputPacer,
        timebase: Timebase,
        chunk_samples: int,
        buffer: FrameBuffer,
        timeline: AudioTimeline,
        core: StreamCore,
        metrics: StageMetrics,
        counters: OutputCounters,
        clock: Callable[[], float],
        sleep_until: Callable[[float], Awaitable[None]],
    ) -> None:
        self.pacer = pacer
        self.tb = timebase
        self.chunk_samples = chunk_samples
        self.buffer = buffer
        self.timeline = timeline
        self.core = core
        self.metrics = metrics
        self.counters = counters
        self._clock = clock
        self._sleep_until = sleep_until  # raises SessionClosed when the session closes meanwhile
        self.pairing = AvPairing(timebase, chunk_samples, counters.av_offset)

    async def next_video_frame(self) -> OutputVideoFrame:
        """The next frame, released at its due time (``origin + delay + pts``); idle frames when silent."""
        pacer = self.pacer
        pacer.catch_up_video(self._clock())
        t = pacer.next_video
        due = pacer.video_due(t)
        await self._sleep_until(due)
        pacer.next_video = t + 1
        item = self.buffer.take(t)
        now = self._clock()
        st = self.core.peek_stamps(t)
        stamps = st.as_dict() if st is not None else {}
        stamps["sent"] = now
        stamps["due"] = due
        if st is not None:
            st.sent = now
        c = self.counters
        c.frames_sent += 1
        c.video_error.append(now - due)
        self.pairing.video(pacer.video_pts(t), now)
        if item is None:
            c.late_frames += 1
            stamps["late"] = 1.0
            self.metrics.add({k: v for k, v in stamps.items() if k in ("audio", "sent")} | {"late": 1.0})
            return OutputVideoFrame(t, pacer.video_pts(t), self.buffer.last_image, stamps, None, True)
        self.metrics.add(stamps)
        return OutputVideoFrame(t, pacer.video_pts(t), item.image, stamps, item.exp, False)

    async def next_audio_chunk(self) -> OutputAudioChunk:
        """The next chunk of output audio (the input delayed), released at its due time."""
        pacer = self.pacer
        pacer.catch_up_audio(self._clock())
        k = pacer.next_audio
        due = pacer.audio_due(k)
        await self._sleep_until(due)
        pacer.next_audio = k + 1
        start = k * self.chunk_samples
        self.timeline.fill_until(start + self.chunk_samples)  # a stalled input is silence, also for the lips
        pcm = self.timeline.read(start, self.chunk_samples)
        self.counters.audio_chunks += 1
        sent = self._clock()
        self.counters.audio_error.append(sent - due)
        self.pairing.audio(pacer.audio_pts(k), sent)
        return OutputAudioChunk(pacer.audio_pts(k), pcm, self.tb.sample_rate, {"due": due, "sent": sent})
