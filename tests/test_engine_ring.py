"""engine.ring.PhonemeRing: frame indexing, SIL padding, holes, overrun policies, mute."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ring import PhonemeRing, RingOverrun
from models.phonemes import SIL, phoneme_windows


def test_windows_match_offline_windowing_once_all_known() -> None:
    seq = np.random.default_rng(0).integers(0, 41, 60)
    ring = PhonemeRing(capacity=128)
    ring.extend((i, int(p)) for i, p in enumerate(seq))
    ring.close()
    offline = phoneme_windows(seq)
    for t in range(60):
        np.testing.assert_array_equal(ring.window(t), offline[t])
    # after the end and before the start: SIL
    assert ring.get(60) == SIL and ring.get(-3) == SIL


def test_unknown_future_is_padded_by_choice() -> None:
    ring = PhonemeRing()
    for f, p in enumerate([3, 4, 5, 6]):
        ring.write(f, p)
    assert ring.stable_end == 4
    np.testing.assert_array_equal(ring.window(2, pad="sil"), [SIL, SIL, SIL, 3, 4, 5, 6, SIL, SIL, SIL, SIL])
    np.testing.assert_array_equal(ring.window(2, pad="repeat"), [SIL, SIL, SIL, 3, 4, 5, 6, 6, 6, 6, 6])
    np.testing.assert_array_equal(ring.window(2, pad="hold"), [SIL, SIL, SIL, 3, 4, 5, 6, 6, 6, SIL, SIL])
    # emulate a smaller lookahead than the ring has
    np.testing.assert_array_equal(ring.window(2, known_end=3, pad="repeat"), [SIL] * 3 + [3, 4, 5] + [5] * 5)
    with pytest.raises(KeyError):
        ring.get(4)


def test_holes_are_filled_with_the_previous_phoneme_and_can_be_corrected() -> None:
    ring = PhonemeRing()
    ring.write(0, 7)
    ring.write(3, 9)  # frames 1, 2 missing
    assert [ring.get(f) for f in range(4)] == [7, 7, 7, 9]
    ring.write(2, 8)  # the late label wins
    assert ring.get(2) == 8 and ring.revisions == 1
    ring.write(0, 7)  # same value: not a revision
    assert ring.revisions == 1


def test_overrun_drop_policy_evicts_and_counts() -> None:
    ring = PhonemeRing(capacity=16, overrun="drop")
    for f in range(16):
        ring.write(f, 1)
    assert ring.overruns == 0 and ring.low == 0
    ring.write(20, 2)  # evicts frames 0..4 that the reader never consumed
    assert ring.low == 5 and ring.overruns == 5
    with pytest.raises(RingOverrun):
        ring.get(4)
    assert ring.get(17) == 1  # hole held from frame 15
    ring.write(3, 5)  # too late: ignored, counted
    assert ring.late_writes == 1


def test_overrun_raise_policy_keeps_state() -> None:
    ring = PhonemeRing(capacity=16, overrun="raise")
    for f in range(16):
        ring.write(f, 1)
    with pytest.raises(RingOverrun):
        ring.write(16, 2)
    assert ring.stable_end == 16 and ring.low == 0
    ring.consume(4)  # the reader is done with 0..3: writing up to frame 19 is fine now
    for f in range(16, 20):
        ring.write(f, 2)
    assert ring.low == 4 and ring.overruns == 0


def test_memory_is_bounded_over_a_long_stream() -> None:
    ring = PhonemeRing(capacity=64)
    for f in range(100_000):
        ring.write(f, f % 41)
        ring.consume(f - 20)
    assert ring.overruns == 0
    assert ring._ids.shape == (64,)
    assert ring.get(99_999) == 99_999 % 41


def test_mute_wins_over_late_recognizer_events() -> None:
    ring = PhonemeRing()
    for f in range(10):
        ring.write(f, 2)
    ring.mute(5, 20)
    ring.write(10, 3)
    ring.write(12, 3)
    assert [ring.get(f) for f in range(3, 13)] == [2, 2] + [SIL] * 8


def test_invalid_input() -> None:
    ring = PhonemeRing()
    with pytest.raises(ValueError):
        ring.write(0, 41)
    with pytest.raises(ValueError):
        ring.write(-1, 3)
    with pytest.raises(ValueError):
        PhonemeRing(capacity=4)
    with pytest.raises(ValueError):
        PhonemeRing(overrun="block")
