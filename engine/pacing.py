"""Media-clock bookkeeping of a live session (sans-I/O): input audio timeline, output pacing, stage metrics.

One media clock per session (:class:`engine.timing.MediaClock`): media time 0 = session start. Input audio is
placed on that clock by :class:`AudioTimeline` - sample s is media time s/16000 - and everything downstream
(recognizer frames, phoneme ring, decoded frames, video pts, output audio pts) is indexed from the same
sample positions. So lips and sound cannot drift apart: output video frame t and output audio of frame t come
from the same input samples and are stamped with the same pts; the pacer releases both at
``origin + delay + pts``.

Why the timeline inserts silence: a browser track or microphone can stall (network, device) and resume. The
late audio is then placed where it arrives (after a run of inserted zeros), not where it "should" have been:
keeping it at its original position would make it permanently late for the output, while shifting it keeps
the pipeline's fixed delay. The zeros go to the recognizer too, so phoneme frames stay aligned with samples.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from engine.timing import MediaClock, Timebase


@dataclass
class PushResult:
    """What :meth:`AudioTimeline.push` did with one input block."""

    appended: int  # input samples placed on the timeline
    gap_filled: int  # zeros inserted before them (the input had stalled)
    dropped: int  # input samples rejected (too far ahead of real time)
    start: int  # timeline position of the first appended input sample


class AudioTimeline:
    """Thread-safe input audio on the session's media clock, with bounded memory (see module docstring).

    ``on_append(samples, start)`` is called (under the lock, in timeline order) with every block placed on the
    timeline - input audio and inserted zeros - so the recognizer sees exactly the timeline's samples.
    """

    def __init__(
        self,
        timebase: Timebase,
        on_append: Callable[[np.ndarray, int], None] | None = None,
        max_ahead_s: float = 2.0,
        gap_tolerance_s: float = 0.06,
        history_s: float = 20.0,
    ) -> None:
        self.tb = timebase
        self._on_append = on_append
        self.max_ahead = int(max_ahead_s * timebase.sample_rate)
        self.gap_tolerance = int(gap_tolerance_s * timebase.sample_rate)
        self.capacity = int(history_s * timebase.sample_rate)
        self._buf = np.zeros(self.capacity, np.int16)
        self._lock = threading.Lock()
        self.write_pos = 0  # samples on the timeline so far
        self.gap_samples = 0
        self.dropped_samples = 0
        self.muted_samples = 0
        self.silent = False  # pause: pushes are placed as zeros

    def _append(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        start = self.write_pos
        if n == 0:
            return
        m = min(n, self.capacity)  # only the newest `capacity` samples can be retained
        idx = np.arange(start + n - m, start + n) % self.capacity
        self._buf[idx] = samples[n - m :]
        self.write_pos += n
        if self._on_append is not None:
            self._on_append(samples, start)

    def push(self, pcm16: np.ndarray, media_now: Fraction | float) -> PushResult:
        """Place an int16 mono block that was captured ending at media time ``media_now``."""
        n = int(pcm16.shape[0])
        expected_end = self.tb.sample_at(max(Fraction(media_now), Fraction(0)))
        with self._lock:
            gap = 0
            if self.write_pos + n < expected_end - self.gap_tolerance:
                gap = expected_end - n - self.write_pos
                self._append(np.zeros(gap, np.int16))
                self.gap_samples += gap
            room = max(0, expected_end + self.max_ahead - self.write_pos)
            keep = min(n, room)
            start = self.write_pos
            block = pcm16[:keep]
            if self.silent:
                block = np.zeros(keep, np.int16)
            self._append(np.ascontiguousarray(block, np.int16))
            self.dropped_samples += n - keep
            return PushResult(keep, gap, n - keep, start)

    def fill_until(self, position: int) -> int:
        """Insert zeros so the timeline reaches ``position`` (the input stalled). Returns zeros inserted."""
        with self._lock:
            gap = max(0, int(position) - self.write_pos)
            if gap:
                self._append(np.zeros(gap, np.int16))
                self.gap_samples += gap
            return gap

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start+n)``; zeros where nothing was written yet or history was dropped."""
        out = np.zeros(n, np.int16)
        with self._lock:
            lo = max(start, self.write_pos - self.capacity, 0)
            hi = min(start + n, self.write_pos)
            if hi > lo:
                out[lo - start : hi - start] = self._buf[np.arange(lo, hi) % self.capacity]
        return out

    def mute(self, start: int, stop: int) -> int:
        """Zero samples ``[start, stop)`` still in the buffer (interrupt: the delayed audio is discarded)."""
        with self._lock:
            lo = max(int(start), self.write_pos - self.capacity, 0)
            hi = min(int(stop), self.write_pos)
            if hi > lo:
                idx = np.arange(lo, hi) % self.capacity
                self._buf[idx] = 0
                self.muted_samples += hi - lo
            return max(0, hi - lo)


# ------------------------------------------------------------------------------------------------ pacing
@dataclass
class OutputPacer:
    """Due times of output video frames and audio chunks on one media clock; skips when the consumer lags."""

    clock: MediaClock
    timebase: Timebase
    chunk_samples: int
    max_lag_frames: int = 10  # a consumer this many frames late gets the current frame, not the backlog
    next_video: int = 0
    next_audio: int = 0
    skipped_video: int = 0
    skipped_audio_chunks: int = 0

    def video_pts(self, frame: int) -> Fraction:
        return self.timebase.frame_pts(frame)

    def audio_pts(self, chunk: int) -> Fraction:
        return self.timebase.chunk_pts(chunk, self.chunk_samples)

    def video_due(self, frame: int | None = None) -> float:
        return self.clock.due(self.video_pts(self.next_video if frame is None else frame))

    def audio_due(self, chunk: int | None = None) -> float:
        return self.clock.due(self.audio_pts(self.next_audio if chunk is None else chunk))

    def catch_up_video(self, now: float) -> int:
        """If the consumer is more than ``max_lag_frames`` late, jump to the frame due now (drop the oldest)."""
        current = self.timebase.frame_at(max(self.clock.output_time(now), Fraction(0)))
        if current - self.next_video > self.max_lag_frames:
            n = current - self.next_video
            self.next_video = current
            self.skipped_video += n
            return n
        return 0

    def catch_up_audio(self, now: float, max_lag_chunks: int = 25) -> int:
        """Same for audio, with a larger tolerance (audio continuity matters more than video's)."""
        pts = max(self.clock.output_time(now), Fraction(0))
        current = self.timebase.sample_at(pts) // self.chunk_samples
        if current - self.next_audio > max_lag_chunks:
            n = current - self.next_audio
            self.next_audio = current
            self.skipped_audio_chunks += n
            return n
        return 0

    def frame_deadline(self, now: float, margin_s: float) -> int:
        """First frame whose output is *not* due within ``margin_s`` seconds (earlier ones must be decoded now)."""
        pts = self.clock.output_time(now + margin_s)
        return self.timebase.frame_at(pts) + 1 if pts >= 0 else 0


# ----------------------------------------------------------------------------------------------- metrics
def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank style percentile (linear interpolation) or None for no data."""
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        return None
    return float(np.percentile(arr, q))


class StageMetrics:
    """Rolling per-stage latencies (ms) of the last ``window`` frames, reported as p50/p95/p99."""

    PAIRS = (
        ("audio", "stable", "recognize"),
        ("stable", "planned", "wait"),
        ("planned", "decoded", "decode"),
        ("decoded", "rendered", "render"),
        ("rendered", "sent", "queue"),
        ("audio", "sent", "total"),
    )

    def __init__(self, window: int = 900) -> None:
        self._rows: deque[dict[str, float]] = deque(maxlen=window)
        self._sent: deque[float] = deque(maxlen=window)

    def add(self, stamps: dict[str, float]) -> None:
        self._rows.append(dict(stamps))
        if "sent" in stamps:
            self._sent.append(stamps["sent"])

    def latency(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for a, b, name in self.PAIRS:
            vals = [(r[b] - r[a]) * 1000.0 for r in self._rows if a in r and b in r]
            out[name] = {f"p{q}": percentile(vals, q) for q in (50, 95, 99)} | {"n": float(len(vals))}
        return out

    def fps(self, now: float, span_s: float = 2.0) -> float:
        """Frames sent per second over the last ``span_s`` seconds."""
        recent = [t for t in self._sent if now - span_s < t <= now]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)
