"""engine.pacing: the input audio timeline (gaps, overflow, mute), output pacing and stage metrics."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from engine.pacing import AudioTimeline, OutputPacer, StageMetrics
from engine.timing import DEFAULT_TIMEBASE as TB
from engine.timing import MediaClock


def _timeline(**kw: float) -> tuple[AudioTimeline, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    tl = AudioTimeline(TB, on_append=lambda s, start: seen.append((start, s.shape[0])), **kw)
    return tl, seen


def test_on_time_pushes_are_contiguous_and_readable() -> None:
    tl, seen = _timeline()
    audio = np.arange(3200, dtype=np.int16)
    for k in range(10):  # 20 ms blocks arriving exactly on time
        r = tl.push(audio[320 * k : 320 * (k + 1)], Fraction(k + 1, 50))
        assert (r.appended, r.gap_filled, r.dropped, r.start) == (320, 0, 0, 320 * k)
    assert tl.write_pos == 3200
    np.testing.assert_array_equal(tl.read(100, 500), audio[100:600])
    np.testing.assert_array_equal(tl.read(3100, 200), np.r_[audio[3100:], np.zeros(100, np.int16)])
    assert seen == [(320 * k, 320) for k in range(10)]  # the recognizer sees the same samples in order


def test_a_stalled_input_resumes_after_inserted_silence() -> None:
    tl, seen = _timeline(gap_tolerance_s=0.05)
    tl.push(np.ones(320, np.int16), Fraction(1, 50))
    r = tl.push(np.full(320, 2, np.int16), Fraction(30, 50))  # 0.6 s later: the source stalled
    assert r.gap_filled == 9600 - 320 - 320 and r.start == 9600 - 320
    assert tl.write_pos == 9600  # the block sits where it arrived (not where it "belonged")
    assert tl.read(320, 10).tolist() == [0] * 10 and tl.read(9599, 1).tolist() == [2]
    assert [n for _, n in seen] == [320, 8960, 320]
    assert tl.gap_samples == 8960


def test_small_jitter_does_not_insert_silence() -> None:
    tl, _ = _timeline(gap_tolerance_s=0.1)
    tl.push(np.ones(320, np.int16), Fraction(1, 50))
    r = tl.push(np.ones(320, np.int16), Fraction(2, 50) + Fraction(6, 100))  # 60 ms late
    assert r.gap_filled == 0 and r.start == 320


def test_input_far_ahead_of_real_time_is_dropped_not_buffered_forever() -> None:
    tl, _ = _timeline(max_ahead_s=0.5)
    r = tl.push(np.ones(16000, np.int16), Fraction(0))  # 1 s of audio at media time 0
    assert r.appended == 8000 and r.dropped == 8000
    assert tl.dropped_samples == 8000


def test_fill_until_mute_and_bounded_history() -> None:
    tl, _ = _timeline(history_s=0.1)  # 1600 samples of history
    assert tl.fill_until(1000) == 1000 and tl.fill_until(500) == 0
    tl.push(np.full(2000, 7, np.int16), Fraction(3000, 16000))
    assert tl.write_pos == 3000
    assert tl.read(0, 10).tolist() == [0] * 10  # evicted history reads as silence
    assert tl.read(2990, 10).tolist() == [7] * 10
    assert tl.mute(2995, 5000) == 5
    assert tl.read(2990, 10).tolist() == [7] * 5 + [0] * 5
    tl.silent = True  # pause: pushes advance time but carry silence
    tl.push(np.full(320, 9, np.int16), Fraction(3320, 16000))
    assert tl.read(3000, 320).max() == 0


def test_output_pacer_due_times_share_one_clock() -> None:
    clock = MediaClock(origin=10.0, delay=Fraction(1, 5))
    p = OutputPacer(clock, TB, chunk_samples=320)
    assert p.video_due(0) == p.audio_due(0) == 10.2
    # frame 3 and audio chunk 5 both start at pts 0.1 s: due together
    assert p.video_due(3) == p.audio_due(5) == 10.3
    assert p.frame_deadline(now=10.0, margin_s=0.05) == 0  # nothing due within 50 ms
    assert p.frame_deadline(now=10.2, margin_s=0.05) == 2  # frames 0, 1 due by 10.25
    assert p.catch_up_video(10.2 + 0.3) == 0  # 9 frames late: tolerated (delivered back to back)
    assert p.catch_up_video(10.71) == 15 and p.next_video == 15  # frame 15 is showing at 10.71
    assert p.skipped_video == 15


def test_stage_metrics_percentiles_and_fps() -> None:
    m = StageMetrics(window=100)
    for i in range(60):
        t = i / 30
        m.add({"audio": t, "stable": t + 0.05, "planned": t + 0.06, "decoded": t + 0.07, "rendered": t + 0.09,
               "sent": t + 0.2})
    lat = m.latency()
    assert abs(lat["recognize"]["p50"] - 50.0) < 1e-6
    assert abs(lat["total"]["p95"] - 200.0) < 1e-6
    assert lat["total"]["n"] == 60
    assert abs(m.fps(now=59 / 30 + 0.2) - 30.0) < 0.01
