"""What a live session hands out: paced video frames and audio chunks (plain dataclasses, no threads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine.timing import SAMPLE_RATE


class SessionClosed(RuntimeError):
    """The session was closed while (or before) waiting for output."""


@dataclass
class OutputVideoFrame:
    index: int
    pts: Fraction  # seconds on the session's media clock
    image: np.ndarray  # uint8 (H, W, 3)
    stamps: dict[str, float]  # wall times per stage (audio, stable, planned, decoded, rendered, sent)
    exp: np.ndarray | None = None  # float32 (64,) expression shown (None for a repeated frame)
    late: bool = False  # True: the frame was not ready in time and repeats the previous image


@dataclass
class OutputAudioChunk:
    pts: Fraction
    pcm: np.ndarray  # int16 mono 16 kHz: the input audio delayed by the pipeline latency
    sample_rate: int = SAMPLE_RATE
    stamps: dict[str, float] = field(default_factory=dict)  # wall times: due, sent


@dataclass
class RenderedFrame:
    """A rendered frame waiting for its due time (loop-owned, in :class:`engine.live.output.FrameBuffer`)."""

    image: np.ndarray  # uint8 (H, W, 3)
    exp: np.ndarray  # float32 (64,)
    rendered: float  # wall time
