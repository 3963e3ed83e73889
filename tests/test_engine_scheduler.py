"""engine.scheduler.WindowScheduler: readiness with lookahead, forcing, incremental take, overruns."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ring import PhonemeRing
from engine.scheduler import WindowScheduler
from models.phonemes import SIL, phoneme_windows


@pytest.mark.parametrize("lookahead", [0, 2, 5])
def test_frame_ready_once_lookahead_is_stable(lookahead: int) -> None:
    ring, sched = PhonemeRing(), WindowScheduler(lookahead)
    ring.write(0, 1)
    for f in range(1, 12):
        ring.write(f, 1)
        # frames t with t + lookahead <= f are ready
        assert sched.ready_end(ring) == f + 1 - lookahead
    batch = sched.take(ring, max_frames=100)
    assert batch.frames.tolist() == list(range(12 - lookahead))
    assert not batch.forced.any()
    assert sched.next_frame == 12 - lookahead
    assert len(sched.take(ring, max_frames=100)) == 0  # incremental: nothing twice


def test_streaming_windows_with_full_lookahead_equal_offline() -> None:
    seq = np.random.default_rng(3).integers(0, 41, 50)
    ring, sched = PhonemeRing(), WindowScheduler(lookahead=5)
    got = []
    for f, p in enumerate(seq):
        ring.write(f, int(p))
        got.append(sched.take(ring, max_frames=3))  # small batches, as when behind
    ring.close(len(seq))
    while len(b := sched.take(ring, max_frames=4)):
        got.append(b)
    frames = np.concatenate([b.frames for b in got])
    windows = np.concatenate([b.windows for b in got])
    assert frames.tolist() == list(range(50))
    np.testing.assert_array_equal(windows, phoneme_windows(seq))


def test_partial_lookahead_pads_the_unknown_future() -> None:
    seq = [4, 5, 6, 7, 8, 9, 10, 11]
    ring, sched = PhonemeRing(), WindowScheduler(lookahead=1, pad="repeat")
    for f, p in enumerate(seq):
        ring.write(f, p)
    batch = sched.take(ring, max_frames=1)
    assert batch.frames.tolist() == [0]
    # known_end is 8 (ring has frames 0..7): the window of frame 0 reaches frame 5 only
    np.testing.assert_array_equal(batch.windows[0], [SIL] * 5 + [4, 5, 6, 7, 8, 9])
    emulated = sched.windows_for(ring, np.array([2]))  # exactly lookahead 1: frames <= 3 known
    np.testing.assert_array_equal(emulated[0], [SIL] * 3 + [4, 5, 6, 7] + [7] * 4)


def test_forced_frames_are_decoded_with_padding_and_marked() -> None:
    ring, sched = PhonemeRing(), WindowScheduler(lookahead=3)
    for f in range(4):
        ring.write(f, 2)
    batch = sched.take(ring, max_frames=10, force_until=6)  # deadline reached for frames 0..5
    assert batch.frames.tolist() == list(range(6))
    assert batch.forced.tolist() == [False, True, True, True, True, True]
    np.testing.assert_array_equal(batch.windows[5], [2, 2, 2, 2] + [SIL] * 7)  # frames 0..10, 0..3 known
    assert sched.forced_frames == 5


def test_skip_and_overrun_recovery() -> None:
    ring, sched = PhonemeRing(capacity=16), WindowScheduler(lookahead=0)
    assert sched.skip_to(3) == 3 and sched.skipped_frames == 3
    for f in range(40):  # the reader sleeps while 40 frames arrive: the ring evicts
        ring.write(f, 1)
    assert ring.overruns > 0
    batch = sched.take(ring, max_frames=100)
    # decoding resumes at the oldest frame whose whole past window is still retained
    assert batch.frames[0] == ring.low + 5
    assert batch.frames[-1] == 39


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        WindowScheduler(6)
    with pytest.raises(ValueError):
        WindowScheduler(2, pad="zero")
