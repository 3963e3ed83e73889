"""engine.timing: exact frame/sample arithmetic (3 frames = 1600 samples at 16 kHz / 30 fps)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from engine.timing import DEFAULT_TIMEBASE as TB
from engine.timing import MediaClock, Timebase, isclose_frames, ticks_floor, to_ticks


def test_three_frames_are_1600_samples_for_any_length() -> None:
    assert TB.samples_per_frame == Fraction(1600, 3)
    for k in (0, 1, 7, 1000, 10 * 3600 * 10):  # up to 10 hours of video
        assert TB.frame_start_sample(3 * k) == 1600 * k
        assert TB.frame_of_sample(1600 * k) == 3 * k


def test_frame_boundaries_partition_samples() -> None:
    # every sample belongs to exactly one frame, and frames are 533 or 534 samples long
    lengths = set()
    for t in range(300):
        start, end = TB.frame_start_sample(t), TB.frame_end_sample(t)
        lengths.add(end - start)
        assert TB.frame_of_sample(start) == t
        assert TB.frame_of_sample(end - 1) == t
        assert TB.frame_of_sample(end) == t + 1
    assert lengths == {533, 534}
    assert TB.frame_start_sample(1) == 534  # ceil(533.33)


def test_frames_complete_and_centres() -> None:
    assert TB.frames_complete(533) == 0
    assert TB.frames_complete(534) == 1
    assert TB.frames_complete(1600) == 3
    assert TB.frame_center_sample(0) == Fraction(800, 3)
    assert TB.frame_center_sample(2) == Fraction(4000, 3)


def test_seconds_and_ms_conversions() -> None:
    assert TB.frame_pts(45) == Fraction(3, 2)
    assert TB.sample_pts(8000) == Fraction(1, 2)
    assert TB.frame_at(Fraction(1, 2)) == 15
    assert TB.frame_at(Fraction(1, 2) - Fraction(1, 10**9)) == 14
    assert TB.frames_for_ms(250) == 8  # ceil(7.5)
    assert TB.frames_for_ms(250, "floor") == 7
    assert TB.frames_for_ms(250, "round") == 8
    assert TB.frames_for_ms(100) == 3
    assert TB.frames_to_ms(3) == pytest.approx(100.0)
    assert TB.chunk_samples(20) == 320
    with pytest.raises(ValueError):
        Timebase(44100, 30).chunk_samples(1)  # 44.1 samples
    assert TB.resampled_length(48000, 48000) == 16000
    assert TB.resampled_length(441, 44100) == 160


def test_ticks_are_exact_or_rejected() -> None:
    assert to_ticks(TB.frame_pts(1), 90000) == 3000
    assert to_ticks(TB.chunk_pts(3, 320), 16000) == 960
    assert to_ticks(TB.chunk_pts(3, 320), 48000) == 2880
    with pytest.raises(ValueError):
        to_ticks(TB.frame_pts(1), 16000)  # 533.33 samples: not representable
    assert ticks_floor(TB.frame_pts(1), 16000) == 533


def test_media_clock_round_trip() -> None:
    clock = MediaClock(origin=100.0, delay=Fraction(1, 5))
    assert clock.due(Fraction(0)) == pytest.approx(100.2)
    assert clock.due(TB.frame_pts(30)) == pytest.approx(101.2)
    assert clock.output_time(101.2) == pytest.approx(Fraction(1), abs=1e-9)
    assert clock.media_time(100.5) == pytest.approx(Fraction(1, 2))
    assert isclose_frames(Fraction(0), Fraction(1, 30), 1)
    assert not isclose_frames(Fraction(0), Fraction(1, 29), 1)


def test_invalid_timebase() -> None:
    with pytest.raises(ValueError):
        Timebase(0, 30)
    with pytest.raises(ValueError):
        TB.frames_for_seconds(1, "up")


def test_frame_groups_centres_and_chunk_starts_follow_the_timebase() -> None:
    """The exact-rational helpers that replace hard-coded 1600/3 and ``pts.denominator in (1, 2, 5, 10)``."""
    assert TB.frame_group_samples == 1600  # 3 frames at 16 kHz / 30 fps
    assert Timebase(16000, 25).frame_group_samples == 640  # 1 frame at 25 fps
    assert Timebase(48000, 24).frame_group_samples == 2000
    assert [TB.frames_with_centre(n) for n in (0, 266, 267, 800, 801)] == [0, 0, 1, 1, 2]
    # a video frame and a 20 ms chunk share a pts every 100 ms at 30 fps ...
    assert [t for t in range(31) if TB.starts_chunk(TB.frame_pts(t), 320)] == list(range(0, 31, 3))
    # ... and at every frame (40 ms) at 25 fps, where `pts.denominator in (1, 2, 5, 10)` missed 1/25, 2/25, ...
    tb25 = Timebase(16000, 25)
    assert all(tb25.starts_chunk(tb25.frame_pts(t), 320) for t in range(26))
    assert not TB.starts_chunk(Fraction(1, 3) + Fraction(1, 90000), 320)
