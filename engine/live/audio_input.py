"""The input side of a live session: audio of any format placed on the session's media clock.

Owner: the pushing thread(s) - the event loop for WebRTC, PortAudio's thread for a microphone - serialised by
``push_lock``; :meth:`AudioInput.keep_up` (the idle watchdog) runs on the event loop and only calls the
timeline, which has its own lock. Every block placed on the timeline goes to ``on_append`` (the recognizer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from engine.live.events import EventCode
from engine.pacing import AudioTimeline
from engine.sources import AudioNormalizer
from engine.timing import MediaClock, Timebase

IDLE_AFTER_S = 0.25  # no push for this long: the input is idle (no source, or a source that stopped)
IDLE_TOLERANCE_S = 0.04  # an idle timeline is kept this close to the clock with silence
COMPACT_SLACK_S = 0.12  # silence is dropped only while the timeline runs more than this ahead of real time
SILENCE_LEVEL = 100  # int16 peak at or below this is silence (-50 dBFS)


class AudioInput:
    """Normalises pushed audio, aligns restarting sources with the clock and compacts silence."""

    def __init__(
        self,
        timebase: Timebase,
        *,
        on_append: Callable[[np.ndarray, int], None],
        error: Callable[[EventCode, str], None],
        max_ahead_s: float,
        gap_tolerance_s: float,
        compact_silence: bool = True,
    ) -> None:
        self.tb = timebase
        self._error = error  # thread-safe error reporter
        self.gap_tolerance_s = gap_tolerance_s
        self.compact_silence = compact_silence
        self.normalizer = AudioNormalizer(timebase.sample_rate)
        self.push_lock = threading.Lock()
        self.last_push = float("-inf")  # wall time of the last push (push lock)
        self.timeline = AudioTimeline(timebase, on_append=on_append, max_ahead_s=max_ahead_s,
                                      gap_tolerance_s=gap_tolerance_s)

    def push(self, pcm: np.ndarray, sample_rate: int, clock: MediaClock, now: float) -> None:
        """Accept audio of any rate/channels/dtype (thread-safe). Invalid audio raises ``ValueError``."""
        with self.push_lock:
            stats = self.normalizer.stats
            before = stats.nonfinite
            pcm16 = self.normalizer(pcm, sample_rate)
            if stats.nonfinite > before:
                self._error(EventCode.BAD_AUDIO, f"{stats.nonfinite - before} NaN/inf samples replaced by 0")
            if pcm16.shape[0] == 0:
                return
            media_now = clock.media_time(now)
            if now - self.last_push >= IDLE_AFTER_S:
                # a source (re)starts: nothing arrived for a while, so the time before this block was silence;
                # align the block with the clock instead of appending it behind real time
                self.timeline.fill_until(self.tb.sample_at(max(media_now, Fraction(0))) - pcm16.shape[0])
            self.last_push = now
            if self.compact_silence:
                pcm16 = self._compact(pcm16, media_now)
            result = self.timeline.push(pcm16, media_now)
        if result.dropped:
            self._error(EventCode.INPUT_OVERFLOW,
                        f"{result.dropped} samples dropped: audio arrives faster than real time")

    def _compact(self, pcm16: np.ndarray, media_now: Fraction) -> np.ndarray:
        """Drop silent input while the timeline runs ahead of real time (undoes latency added by stalls)."""
        ahead = self.timeline.write_pos + pcm16.shape[0] - self.tb.sample_at(max(media_now, Fraction(0)))
        slack = int(COMPACT_SLACK_S * self.tb.sample_rate)
        if ahead <= slack:
            return pcm16
        if np.abs(pcm16.astype(np.int32)).max(initial=0) > SILENCE_LEVEL:  # not silence: keep it
            return pcm16
        keep = max(0, pcm16.shape[0] - (ahead - slack))
        return pcm16[:keep]

    def keep_up(self, clock: MediaClock, now: float) -> None:
        """Keep the timeline (and so the recognizer) fed with silence when the input stalls (event loop)."""
        # no input for a while: keep the timeline at the clock (minus a little), ready for a source to start;
        # while a source streams, only input later than the output can use counts as a gap
        idle = now - self.last_push >= IDLE_AFTER_S
        tolerance = IDLE_TOLERANCE_S if idle else self.gap_tolerance_s
        behind = clock.media_time(now) - Fraction(tolerance).limit_denominator(10000)
        if behind > 0:
            self.timeline.fill_until(self.tb.sample_at(behind))
