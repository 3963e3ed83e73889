"""The ``stats()`` snapshot of a live session: one place that turns the parts' counters into the report the
server sends as ``stats`` (owner: the event loop; pure reads)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from engine.live.audio_input import AudioInput
from engine.live.output import OutputCounters
from engine.pacing import OutputPacer, StageMetrics, percentile
from engine.stream import StreamCore


@dataclass
class ProducerCounters:
    """What the producer task did (loop-owned)."""

    jobs: int = 0


def p_ms(values: np.ndarray, q: float) -> float | None:
    """q-th percentile of seconds, in ms (None when empty)."""
    v = percentile(values.tolist(), q)
    return None if v is None else v * 1000.0


def av_offset_summary(offsets_s: np.ndarray) -> dict[str, float | int] | None:
    """Video sent - audio sent for the same pts (ms): the lip-sync error the client receives."""
    o = offsets_s * 1000.0
    if not o.size:
        return None
    return {"p50": float(np.median(o)), "p95": float(np.percentile(np.abs(o), 95)),
            "max_abs": float(np.abs(o).max()), "n": int(o.size)}


def session_stats(
    *,
    session_id: str,
    now: float,
    counters: OutputCounters,
    metrics: StageMetrics,
    core: StreamCore,
    pacer: OutputPacer | None,
    audio: AudioInput,
    delay: Fraction,
    control: dict[str, Any],
    errors: int,
    recognizer_restarts: int,
    jobs: int,
    renders_reused: int,
    decoder: dict[str, Any],
) -> dict[str, Any]:
    """The stats report of one session from its parts' counters (``control``: style, intensity, paused)."""
    c = counters
    v = np.asarray(c.video_error, np.float64)
    a = np.asarray(c.audio_error, np.float64)
    n = audio.normalizer.stats
    timeline = audio.timeline
    sr = audio.tb.sample_rate
    return {
        "session": session_id,
        "fps": metrics.fps(now),
        "frames_sent": c.frames_sent,
        "late_frames": c.late_frames,
        "fresh_frames": c.frames_sent - c.late_frames,
        "dropped_frames": core.scheduler.skipped_frames + (pacer.skipped_video if pacer else 0),
        "stale_frames": c.stale_frames,
        "audio_chunks": c.audio_chunks,
        "delay_ms": float(delay) * 1000.0,
        "lookahead": core.lookahead,
        "latency_ms": metrics.latency(),
        "av_offset_ms": av_offset_summary(np.asarray(c.av_offset, np.float64)),
        "send_error_ms": {"video_p95": p_ms(v, 95), "audio_p95": p_ms(a, 95)},
        "input": {
            "received_ms": n.samples_out * 1000.0 / sr,
            "gap_ms": timeline.gap_samples * 1000.0 / sr,
            "dropped_ms": timeline.dropped_samples * 1000.0 / sr,
            "nonfinite_samples": n.nonfinite,
            "clipped_samples": n.clipped,
            "rates": sorted(n.rates),
        },
        "core": core.stats(),
        "decoder": decoder,
        **control,
        "errors": errors,
        "recognizer_restarts": recognizer_restarts,
        "jobs": jobs,
        "renders_reused": renders_reused,
    }
