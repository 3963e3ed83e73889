"""The engine's contracts as ``typing.Protocol``s: what a recognizer and a renderer must offer the live engine.

Structural: any object with these members fits (the built-in backends, PIRenderer, a test double); nothing is
probed with ``getattr``. Units are part of the contract: ``lag`` is seconds of audio, ``delay_frames`` frames.
Kept free of heavy imports (numpy only) so any layer may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

# A stable phoneme label: ``engine.recognizer.PhonemeEvent`` or a plain ``(frame, phoneme)`` pair.
PhonemeEventLike = Any


@runtime_checkable
class Recognizer(Protocol):
    """Online phoneme recognition (sans-I/O, see :mod:`engine.recognizer.base`): 16 kHz mono int16 in, stable
    30 fps ``(frame, phoneme)`` events out, frames from 0, each exactly once, in order."""

    @property
    def lag(self) -> float:
        """Upper bound, in seconds of audio, between a frame's end and the ``feed`` that makes its label stable."""
        ...

    def feed(self, pcm: np.ndarray) -> Iterable[PhonemeEventLike]: ...

    def flush(self) -> Iterable[PhonemeEventLike]: ...


@runtime_checkable
class Renderer(Protocol):
    """Photo + expression + pose -> frames (see :mod:`engine.renderer`). ``prepare`` builds a per-avatar state;
    ``render`` continues that state's stream; ``reset`` restarts it (frames fed are no longer contiguous).
    A renderer whose output lags its input by k frames (a temporal window) declares ``delay_frames = k``."""

    @property
    def delay_frames(self) -> int:
        """Frames by which the output lags the input (PIRenderer's window lookahead; the warp renderer: 0)."""
        ...

    def prepare(self, image: np.ndarray) -> Any: ...

    def render(self, state: Any, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """exp (N, 64) float32, pose (N, 9) float32 -> uint8 (N, S, S, 3)."""
        ...

    def reset(self, state: Any) -> None: ...
