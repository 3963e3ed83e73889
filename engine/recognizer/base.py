"""Recognizer interface shared by every backend: events, input coercion, frame arithmetic.

Contract (:class:`engine.contracts.Recognizer`): a recognizer is sans-I/O. The caller pushes 16 kHz mono int16 PCM with
:meth:`Recognizer.feed` and receives the phoneme labels that became *stable* - final, never revised - as
:class:`PhonemeEvent` ``(frame, phoneme)`` at 30 fps, where frame ``t``'s phoneme is the label at the frame
centre ``(t + 1/2) / 30`` s. Events come in increasing frame order, every frame exactly once, starting at 0.
:meth:`Recognizer.flush` ends the stream and returns the remaining frames (every frame whose centre has
been fed). :attr:`Recognizer.lag` declares how long after a frame's end its label is emitted at most (seconds
of *audio*, not counting the caller's own chunking), so the engine can size its output delay.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from engine.timing import DEFAULT_TIMEBASE, FPS, SAMPLE_RATE, Timebase
from models.phonemes import NUM_PHONEMES, PHONEMES


@dataclass(frozen=True, slots=True)
class PhonemeEvent:
    """Frame ``frame`` (30 fps, from the stream start) has the final phoneme id ``phoneme`` (0..40)."""

    frame: int
    phoneme: int

    @property
    def name(self) -> str:
        return PHONEMES[self.phoneme]

    def __iter__(self):  # allows ``frame, phoneme = event``
        yield self.frame
        yield self.phoneme


@dataclass
class RecognizerStats:
    """Counters a backend keeps about its input and output (for metrics and tests)."""

    samples: int = 0  # samples fed since creation
    chunks: int = 0
    empty_chunks: int = 0
    nonfinite: int = 0  # NaN/inf samples replaced by 0 (float input)
    clipped: int = 0  # float samples outside [-1, 1] clipped
    frames: int = 0  # events emitted
    streams: int = 1  # 1 + number of flushes followed by more audio
    extra: dict[str, float] = field(default_factory=dict)


class AudioInputError(ValueError):
    """Input that cannot be PCM for a recognizer (wrong shape or dtype)."""


def coerce_pcm16(pcm: object, stats: RecognizerStats | None = None) -> np.ndarray:
    """Accept what callers hand a recognizer and return 1-D int16 (16 kHz mono is the caller's promise).

    - ``bytes``/``bytearray``/``memoryview``: little-endian int16;
    - int16 arrays as is; other integer arrays are range-checked and cast;
    - float arrays are taken as [-1, 1] PCM: NaN/inf -> 0, out-of-range clipped (both counted in ``stats``);
    - shape (n,) or a single channel (1, n)/(n, 1). More channels or other rates belong to
      :class:`engine.sources.AudioNormalizer` at the edge.
    """
    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = bytes(pcm)
        if len(raw) % 2:
            raise AudioInputError(f"byte PCM must hold whole int16 samples, got {len(raw)} bytes")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    a = np.asarray(pcm)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise AudioInputError(
            f"recognizers take mono PCM of shape (n,), got {a.shape}; use engine.sources.AudioNormalizer"
        )
    if a.dtype == np.int16:
        return a
    if a.dtype.kind in "iu":
        if a.size and (a.min() < -32768 or a.max() > 32767):
            raise AudioInputError("integer PCM outside the int16 range; use engine.sources.AudioNormalizer")
        return a.astype(np.int16)
    if a.dtype.kind == "f":
        x = a.astype(np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            if stats is not None:
                stats.nonfinite += int(bad.sum())
            x = np.where(bad, 0.0, x)
        over = np.abs(x) > 1.0
        if over.any():
            if stats is not None:
                stats.clipped += int(over.sum())
            x = np.clip(x, -1.0, 1.0)
        return np.round(x * 32767.0).astype(np.int16)
    raise AudioInputError(f"PCM must be numeric, got dtype {a.dtype}")


class Recognizer(ABC):
    """Base class: input coercion, stream bookkeeping and the frame-order guarantee.

    Subclasses implement :meth:`_feed` (int16 samples of the current stream -> events) and :meth:`_flush`;
    :meth:`feed` / :meth:`flush` add validation, counters and the "each frame once, in order" check.
    """

    sample_rate: int = SAMPLE_RATE
    fps: int = FPS

    def __init__(self, timebase: Timebase = DEFAULT_TIMEBASE) -> None:
        self.tb = timebase
        self.stats = RecognizerStats()
        self._next_frame = 0  # next frame index to emit (absolute, across streams)
        self._stream_first_frame = 0  # absolute frame index of the current stream's frame 0
        self._stream_samples = 0  # samples fed to the current stream
        self._flushed = False

    # ------------------------------------------------------------------ public API
    def feed(self, pcm: object) -> list[PhonemeEvent]:
        """Push PCM (16 kHz mono; see :func:`coerce_pcm16`) and return the labels that became stable."""
        x = coerce_pcm16(pcm, self.stats)
        self.stats.chunks += 1
        if x.size == 0:
            self.stats.empty_chunks += 1
            return []
        if self._flushed:  # a new stream after flush(): frame indices keep increasing
            self._flushed = False
            self._stream_first_frame = self._next_frame
            self._stream_samples = 0
            self.stats.streams += 1
            self._reset_stream()
        self.stats.samples += x.size
        self._stream_samples += x.size
        return self._checked(self._feed(x))

    def flush(self) -> list[PhonemeEvent]:
        """End of stream: return every remaining frame whose centre has been fed, then reset for a new stream."""
        if self._flushed:
            return []
        events = self._checked(self._flush())
        # frames whose centre was fed but that the backend could not label (e.g. too short): hold the last one
        n_total = self.frames_with_centre(self._stream_samples)
        last = events[-1].phoneme if events else self._last_phoneme
        while self._next_frame < self._stream_first_frame + n_total:
            events.append(PhonemeEvent(self._next_frame, last))
            self._next_frame += 1
        self.stats.frames = self._next_frame
        self._flushed = True
        return events

    @property
    def lag(self) -> float:
        """Declared upper bound (s of audio) between a frame's end and the feed that makes it stable."""
        return float(self._lag_seconds())

    # ------------------------------------------------------------------ helpers for subclasses
    _last_phoneme: int = 31

    def frames_with_centre(self, n_samples: int) -> int:
        """Number of frames of a stream whose centre lies inside its first ``n_samples`` samples."""
        return self.tb.frames_with_centre(n_samples)

    def frames_complete(self, n_samples: int) -> int:
        """Number of whole frames (end <= n_samples) of the current stream."""
        return self.tb.frames_complete(n_samples)

    def _checked(self, events: list[PhonemeEvent]) -> list[PhonemeEvent]:
        out: list[PhonemeEvent] = []
        for ev in events:
            if ev.frame != self._next_frame:
                raise RuntimeError(f"{type(self).__name__} emitted frame {ev.frame}, expected {self._next_frame}")
            if not 0 <= ev.phoneme < NUM_PHONEMES:
                raise RuntimeError(f"{type(self).__name__} emitted phoneme id {ev.phoneme}")
            out.append(ev)
            self._next_frame += 1
            self._last_phoneme = ev.phoneme
        self.stats.frames = self._next_frame
        return out

    def _event(self, stream_frame: int, phoneme: int) -> PhonemeEvent:
        """Event for frame ``stream_frame`` of the current stream."""
        return PhonemeEvent(self._stream_first_frame + stream_frame, int(phoneme))

    @property
    def _stream_next(self) -> int:
        """Next frame to emit, counted in the current stream."""
        return self._next_frame - self._stream_first_frame

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _feed(self, pcm: np.ndarray) -> list[PhonemeEvent]: ...

    @abstractmethod
    def _flush(self) -> list[PhonemeEvent]: ...

    @abstractmethod
    def _reset_stream(self) -> None: ...

    @abstractmethod
    def _lag_seconds(self) -> float: ...
