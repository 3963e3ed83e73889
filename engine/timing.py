"""All audio/video time arithmetic of the engine, in exact rationals.

Why one module: at 16 kHz and 30 fps a video frame lasts 533⅓ audio samples. Float arithmetic on that drifts
(after an hour a float frame clock is off by samples, and rounding at different places makes audio and video
disagree about which frame a sample belongs to). Here every conversion is exact (``fractions.Fraction``) and
every rounding is explicit and documented, so "3 frames = 1600 samples" holds for any stream length.

Conventions
- Frame ``t`` covers media time ``[t/fps, (t+1)/fps)``; its presentation timestamp (pts) is ``t/fps`` seconds.
- Audio sample ``s`` sits at media time ``s/sample_rate``; it belongs to frame ``floor(s*fps/sample_rate)``.
- Frame ``t``'s phoneme is the label at the frame centre, ``(t + 1/2)/fps``.
- Media time 0 is the session start; wall clock <-> media time goes through :class:`MediaClock`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

SAMPLE_RATE = 16000
FPS = 30
VIDEO_CLOCK_RATE = 90000  # RTP / MPEG video clock: pts in 1/90000 s (exact for 30 fps: 3000 ticks per frame)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


@dataclass(frozen=True)
class Timebase:
    """Exact conversions between audio samples, video frames and seconds for one (sample rate, fps) pair."""

    sample_rate: int = SAMPLE_RATE
    fps: int = FPS

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.fps <= 0:
            raise ValueError(f"sample_rate and fps must be positive, got {self.sample_rate}, {self.fps}")

    # ---- frames <-> samples
    @property
    def samples_per_frame(self) -> Fraction:
        """533⅓ at 16 kHz / 30 fps."""
        return Fraction(self.sample_rate, self.fps)

    def frame_start_sample(self, frame: int) -> int:
        """Index of the first sample inside frame ``frame`` (ceil of its start time in samples)."""
        return _ceil(Fraction(frame * self.sample_rate, self.fps))

    def frame_end_sample(self, frame: int) -> int:
        """One past the last sample of frame ``frame`` (= first sample of the next frame)."""
        return self.frame_start_sample(frame + 1)

    def frame_of_sample(self, sample: int) -> int:
        """The frame that sample ``sample`` belongs to."""
        return _floor(Fraction(sample * self.fps, self.sample_rate))

    def frames_complete(self, n_samples: int) -> int:
        """How many whole frames ``n_samples`` samples (from sample 0) cover: frame t needs samples < end(t)."""
        return self.frame_of_sample(n_samples)

    def frame_center_sample(self, frame: int) -> Fraction:
        """Sample position (exact) of frame ``frame``'s centre, where its phoneme label is taken."""
        return Fraction((2 * frame + 1) * self.sample_rate, 2 * self.fps)

    def frames_with_centre(self, n_samples: int) -> int:
        """How many frames (from frame 0) have their centre inside the first ``n_samples`` samples."""
        # centre (t + 1/2) * sample_rate/fps < n  <=>  t < n*fps/sample_rate - 1/2
        x = Fraction(n_samples * self.fps, self.sample_rate) - Fraction(1, 2)
        return max(0, _ceil(x)) if x > 0 else 0

    @property
    def frame_group_samples(self) -> int:
        """Samples in the shortest whole number of frames that is also a whole number of samples
        (1600 = 3 frames at 16 kHz / 30 fps): streams that start on a multiple of it start on a frame."""
        return self.sample_rate // math.gcd(self.sample_rate, self.fps)

    # ---- seconds
    def frame_pts(self, frame: int) -> Fraction:
        """Presentation time of frame ``frame`` in seconds."""
        return Fraction(frame, self.fps)

    def sample_pts(self, sample: int) -> Fraction:
        """Media time of sample ``sample`` in seconds."""
        return Fraction(sample, self.sample_rate)

    def frame_at(self, seconds: Fraction | float) -> int:
        """The frame showing at media time ``seconds`` (floor)."""
        return _floor(Fraction(seconds) * self.fps)

    def sample_at(self, seconds: Fraction | float) -> int:
        """The sample at media time ``seconds`` (floor)."""
        return _floor(Fraction(seconds) * self.sample_rate)

    def frames_for_seconds(self, seconds: Fraction | float, rounding: str = "ceil") -> int:
        """Whole frames spanning ``seconds``; ``rounding`` is "ceil", "floor" or "round" (half up)."""
        x = Fraction(seconds) * self.fps
        if rounding == "ceil":
            return _ceil(x)
        if rounding == "floor":
            return _floor(x)
        if rounding == "round":
            return _floor(x + Fraction(1, 2))
        raise ValueError(f"rounding must be ceil, floor or round, got {rounding!r}")

    def frames_for_ms(self, ms: float, rounding: str = "ceil") -> int:
        return self.frames_for_seconds(Fraction(ms) / 1000, rounding)

    def frames_to_ms(self, frames: int | Fraction) -> float:
        return float(Fraction(frames) * 1000 / self.fps)

    def chunk_samples(self, chunk_ms: int) -> int:
        """Samples in an audio chunk of ``chunk_ms`` ms; must be a whole number (20 ms -> 320)."""
        n = Fraction(chunk_ms * self.sample_rate, 1000)
        if n.denominator != 1:
            raise ValueError(f"{chunk_ms} ms is not a whole number of samples at {self.sample_rate} Hz")
        return int(n)

    def chunk_pts(self, chunk: int, chunk_samples: int) -> Fraction:
        """Media time of audio chunk ``chunk`` (chunks of ``chunk_samples`` samples from sample 0)."""
        return self.sample_pts(chunk * chunk_samples)

    def starts_chunk(self, pts: Fraction, chunk_samples: int) -> bool:
        """Whether an audio chunk (of ``chunk_samples`` from sample 0) starts exactly at media time ``pts``
        (every 100 ms for 30 fps video and 20 ms chunks: there a video frame and a chunk share a pts)."""
        s = Fraction(pts) * self.sample_rate
        return s.denominator == 1 and s.numerator % chunk_samples == 0

    def resampled_length(self, n_in: int, rate_in: int) -> int:
        """Output samples when ``n_in`` samples at ``rate_in`` are resampled to ``sample_rate`` (floor)."""
        return _floor(Fraction(n_in * self.sample_rate, rate_in))


DEFAULT_TIMEBASE = Timebase()


def to_ticks(pts: Fraction, clock_rate: int) -> int:
    """A pts in seconds as integer ticks of ``clock_rate`` (e.g. 90000 for video, 16000 / 48000 for audio).

    Raises if the pts is not representable exactly: the engine's pts are frame or sample multiples, all exact
    in the clocks it uses, so an inexact value is a bug, not something to round away silently.
    """
    ticks = Fraction(pts) * clock_rate
    if ticks.denominator != 1:
        raise ValueError(f"pts {pts} is not a whole number of 1/{clock_rate} s ticks")
    return int(ticks)


def ticks_floor(pts: Fraction, clock_rate: int) -> int:
    """Like :func:`to_ticks` but rounding down (for clocks that cannot represent every pts exactly)."""
    return _floor(Fraction(pts) * clock_rate)


@dataclass
class MediaClock:
    """Maps wall-clock seconds (``time.monotonic``-like, float) to media time and back.

    ``origin`` is the wall time of media time 0 (the session start). ``delay`` is the constant output delay:
    output media time ``pts`` is due at wall ``origin + delay + pts`` - audio and video share it, so their
    relative offset is fixed by construction; only the pacer's rounding can move a frame, never accumulate.
    """

    origin: float
    delay: Fraction = Fraction(0)

    def media_time(self, wall: float) -> Fraction:
        """Input-side media time at ``wall`` (how much audio should have been captured by now)."""
        return Fraction(wall - self.origin)

    def due(self, pts: Fraction) -> float:
        """Wall time at which output with presentation time ``pts`` is due."""
        return self.origin + float(self.delay + pts)

    def output_time(self, wall: float) -> Fraction:
        """Output-side media time at ``wall`` (the pts that should be presenting now)."""
        return Fraction(wall - self.origin) - self.delay


def ceil_div(a: int, b: int) -> int:
    """Integer ceil(a / b) for b > 0."""
    return -((-a) // b)


def ms(seconds: float) -> float:
    """Seconds -> milliseconds (for metrics)."""
    return seconds * 1000.0


def isclose_frames(a: Fraction, b: Fraction, frames: int, fps: int = FPS) -> bool:
    """|a - b| <= ``frames`` frame durations (A/V offset checks)."""
    return abs(Fraction(a) - Fraction(b)) <= Fraction(frames, fps)


__all__ = [
    "SAMPLE_RATE",
    "FPS",
    "VIDEO_CLOCK_RATE",
    "Timebase",
    "DEFAULT_TIMEBASE",
    "MediaClock",
    "to_ticks",
    "ticks_floor",
    "ceil_div",
    "ms",
    "isclose_frames",
]
