"""Which frames can be decoded now, and their 11-frame phoneme windows.

StyleTalk decodes frame t from the phonemes of frames t-5 .. t+5. Waiting for all five future frames costs
167 ms of latency, so the scheduler waits for only ``lookahead`` (L, 0..5) of them: frame t becomes *ready*
once phonemes up to t+L are stable, and the unknown rest of its window is padded (SIL or repeat of the last
stable phoneme - ``benchmarks/latency.py`` measures both). A frame whose output deadline arrives before it is
ready is *forced*: decoded with whatever is known, so a slow recognizer degrades lip accuracy, never the
frame rate.

Each frame is decoded once (incremental decoding): :meth:`WindowScheduler.take` hands out the next frames and
advances past them. When the session falls behind it calls :meth:`skip_to` to drop frames whose deadline has
passed instead of decoding them late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.ring import PAD_MODES, PhonemeRing
from models.phonemes import WIN_SIZE


@dataclass
class DecodeBatch:
    """Frames handed to the decoder together. ``windows`` int64 (N, 11); ``forced`` (N,) bool."""

    frames: np.ndarray  # int64 (N,)
    windows: np.ndarray  # int64 (N, 2*WIN_SIZE+1)
    forced: np.ndarray  # bool (N,): decoded before their lookahead was stable
    known_end: int  # ring.stable_end when the windows were built

    def __len__(self) -> int:
        return int(self.frames.shape[0])


class WindowScheduler:
    """Hands out decodable frames in order, with windows built from a :class:`PhonemeRing`."""

    def __init__(self, lookahead: int, pad: str = "sil", start: int = 0, radius: int = WIN_SIZE) -> None:
        if not 0 <= lookahead <= radius:
            raise ValueError(f"lookahead must be in 0..{radius}, got {lookahead}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        self.lookahead = lookahead
        self.pad = pad
        self.radius = radius
        self.next_frame = int(start)
        self.forced_frames = 0
        self.skipped_frames = 0

    def ready_end(self, ring: PhonemeRing) -> int:
        """One past the last frame whose lookahead is stable (frames before it may be decoded now)."""
        if ring.end is not None:
            return ring.end  # the stream ended: every remaining frame's future is known SIL
        return ring.stable_end - self.lookahead

    def pending(self, ring: PhonemeRing) -> int:
        """How many frames are ready but not yet taken."""
        return max(0, self.ready_end(ring) - self.next_frame)

    def take(self, ring: PhonemeRing, max_frames: int, force_until: int | None = None) -> DecodeBatch:
        """Take up to ``max_frames`` next frames: the ready ones, plus (forced) any before ``force_until``.

        ``force_until`` is the first frame whose deadline has *not* arrived; earlier frames are decoded even if
        their lookahead is not stable yet. Marks the frames taken and lets the ring evict older phonemes.
        """
        if ring.low > max(0, self.next_frame - self.radius):
            # the ring evicted part of the next window (overrun): jump to the oldest decodable frame
            self.skip_to(ring.low + self.radius)
        stop = self.ready_end(ring)
        if force_until is not None:
            stop = max(stop, int(force_until))
        if ring.end is not None:
            stop = min(stop, ring.end)
        stop = min(stop, self.next_frame + max(0, int(max_frames)))
        frames = np.arange(self.next_frame, max(self.next_frame, stop), dtype=np.int64)
        known = ring.stable_end
        windows = np.empty((frames.shape[0], 2 * self.radius + 1), np.int64)
        forced = np.zeros(frames.shape[0], bool)
        for i, t in enumerate(frames):
            windows[i] = ring.window(int(t), known_end=known, pad=self.pad, radius=self.radius)
            forced[i] = ring.end is None and int(t) + self.lookahead >= known
        if frames.shape[0]:
            self.next_frame = int(frames[-1]) + 1
            self.forced_frames += int(forced.sum())
        ring.consume(self.next_frame - self.radius)
        return DecodeBatch(frames, windows, forced, known)

    def skip_to(self, frame: int) -> int:
        """Drop frames before ``frame`` without decoding them (deadline passed). Returns how many were dropped."""
        frame = int(frame)
        n = max(0, frame - self.next_frame)
        if n:
            self.next_frame = frame
            self.skipped_frames += n
        return n

    def windows_for(self, ring: PhonemeRing, frames: np.ndarray, known_end: int | None = None) -> np.ndarray:
        """Windows for arbitrary ``frames`` (no state change): used to emulate a lookahead offline."""
        out = np.empty((len(frames), 2 * self.radius + 1), np.int64)
        for i, t in enumerate(frames):
            k = int(t) + self.lookahead + 1 if known_end is None else known_end
            out[i] = ring.window(int(t), known_end=k, pad=self.pad, radius=self.radius)
        return out
