"""The latency budget of a live session: how far the output runs behind the input, and why.

Frame t can be decoded once frames up to t+L (the decoder lookahead) are labelled: its audio ends at
(t+L+1)/fps, arrives up to one capture chunk later, is labelled ``recognizer.lag`` later, then decoded and
rendered (the *compute margin*); a renderer whose output lags its input by k frames adds k/fps. The sum is the
session's constant output delay - audio and video are both released that long after they were captured.

Pure arithmetic on the configuration and the two contracts (:class:`engine.contracts.Recognizer`,
:class:`engine.contracts.Renderer`): no models, no threads, so the runtime and the live session both import it
without importing each other.
"""

from __future__ import annotations

import math
from fractions import Fraction

from engine.config import Config
from engine.contracts import Recognizer, Renderer
from engine.timing import Timebase

COMPUTE_MARGIN_S = 0.03  # decode + render + hand-over of one frame on a busy 2-core machine


def compute_margin(frame_compute_s: float | None) -> float:
    """Time budgeted for decoding + rendering a frame: the default, or 1.5x the measured cost if larger."""
    if frame_compute_s is None:
        return COMPUTE_MARGIN_S
    return max(COMPUTE_MARGIN_S, 1.5 * frame_compute_s + 0.01)


def recognizer_lag(recognizer: Recognizer) -> float:
    """The recognizer's declared label lag (seconds of audio), checked: it sizes every session's delay."""
    lag = float(recognizer.lag)
    if not math.isfinite(lag) or lag < 0:
        raise ValueError(f"{type(recognizer).__name__}.lag must be a finite number of seconds >= 0, got {lag}")
    return lag


def output_delay(config: Config, timebase: Timebase, recognizer: Recognizer, renderer: Renderer,
                 frame_compute_s: float | None) -> Fraction:
    """Constant delay between input and output media time (see module docstring).

    ``audio.output_delay_ms`` overrides the computed value.
    """
    if config.audio.output_delay_ms is not None:
        return Fraction(config.audio.output_delay_ms) / 1000
    frames = config.decoder.lookahead + 1 + int(renderer.delay_frames)
    seconds = (
        Fraction(config.audio.chunk_ms, 1000)
        + Fraction(recognizer_lag(recognizer)).limit_denominator(1000)
        + Fraction(compute_margin(frame_compute_s)).limit_denominator(1000)
    )
    return timebase.frame_pts(frames) + seconds
