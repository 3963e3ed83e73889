"""Mapping a viewer's RTP timestamps back to engine frame indices (clients/frame_index.py), on streams stamped the
way the room's RTP publisher stamps them (its wall clock, strictly increasing), shifted the way Janus and aiortc's
receiver shift them (a constant per viewer, modulo 2**32), with frames the viewer missed and a table polled in
overlapping windows of 300 frames."""

from __future__ import annotations

import numpy as np

from clients.frame_index import (
    WRAP,
    added_latency,
    arrival_by_index,
    find_offset,
    indices_of,
    merge_frame_maps,
    sent_between,
)
from streaming.rtp_publisher import FRAME_MAP_LENGTH


def published(frames: int, seed: int, jitter_s: float = 0.004, first_index: int = 17, ts0: int = WRAP - 200_000):
    """(engine index (N,), RTP timestamp sent (N,) mod 2**32, send time (N,)) like RtpPublisher._video: pulled at
    30 fps with scheduling jitter, some engine frames dropped (index gaps), stamps max(last + 1, wall * 90 kHz)."""
    rng = np.random.default_rng(seed)
    index = first_index + np.cumsum(1 + (rng.random(frames) < 0.05))  # 5 % dropped by a busy engine
    sent = (index - first_index) / 30 + np.abs(rng.normal(0, jitter_s, frames))
    stamps, last = [], -1
    for t in sent:
        last = max(last + 1, round(t * 90_000))
        stamps.append(last)
    return index, (ts0 + np.asarray(stamps, np.int64)) % WRAP, sent


def polls(index: np.ndarray, rtp: np.ndarray, every: int = 30, sent: np.ndarray | None = None) -> list[list[list]]:
    """The publisher's frame_map as a caller polling each second sees it: the newest 300 frames each time."""
    sent = np.arange(len(index)) / 30 if sent is None else sent
    windows = [slice(max(0, end - FRAME_MAP_LENGTH), end) for end in range(every, len(index) + every, every)]
    return [[[int(i), int(r), float(t)] for i, r, t in zip(index[w], rtp[w], sent[w], strict=True)]
            for w in windows]


def as_received(rtp: np.ndarray, keep: np.ndarray, shift: int) -> np.ndarray:
    """A viewer's view: the frames it got, rebased (Janus) and counted from its first frame (aiortc)."""
    seen = (rtp[keep] + shift) % WRAP
    return (seen - seen[0]) % WRAP


def test_a_viewer_joining_late_and_missing_frames_is_mapped_to_the_exact_engine_indices() -> None:
    index, rtp, _ = published(900, seed=1)
    table = merge_frame_maps(polls(index, rtp))
    assert len(table) == 900  # overlapping polls cover every frame once
    rng = np.random.default_rng(2)
    keep = np.zeros(900, bool)
    keep[250:] = rng.random(650) > 0.1  # joined 8 s in, lost 10 % of the frames
    received = as_received(rtp, keep, shift=123_456_789)
    offset, matches = find_offset(received, table)
    assert offset is not None and matches == keep.sum()
    assert np.array_equal(indices_of(received, table, offset), index[keep])


def test_frames_outside_the_polled_table_map_to_minus_one_and_the_rest_still_maps() -> None:
    index, rtp, _ = published(600, seed=3)
    table = merge_frame_maps(polls(index[:400], rtp[:400]))  # polling stopped 200 frames before the viewer did
    keep = np.arange(600) >= 100
    received = as_received(rtp, keep, shift=7)
    offset, matches = find_offset(received, table)
    assert offset is not None and matches == 300
    got = indices_of(received, table, offset)
    assert np.array_equal(got[:300], index[100:400]) and (got[300:] == -1).all()


def test_another_stream_or_a_jitterless_clock_gives_no_mapping_rather_than_a_wrong_one() -> None:
    index, rtp, _ = published(600, seed=4)
    table = merge_frame_maps(polls(index, rtp))
    _, other, _ = published(600, seed=5)  # same rate, another publisher's jitter
    assert find_offset(as_received(other, np.ones(600, bool), 0), table)[0] is None
    regular = (np.arange(600, dtype=np.int64) * 3000) % WRAP  # every whole-frame shift fits: ambiguous
    table = merge_frame_maps([[[i, int(r)] for i, r in enumerate(regular)]])
    assert find_offset(as_received(regular, np.arange(600) >= 50, 99), table)[0] is None
    assert find_offset(np.zeros(0, np.int64), table) == (None, 0)


def test_added_latency_pairs_the_same_engine_frame_at_both_clients() -> None:
    index, rtp, sent = published(300, seed=6)
    presenter = arrival_by_index(index, sent + 0.020)
    viewer_arrival = sent + 0.050 + np.where(np.arange(300) % 2 == 0, 0.0, 0.010)  # 30 or 40 ms later
    keep = np.arange(300) >= 30
    table = merge_frame_maps(polls(index, rtp))
    received = as_received(rtp, keep, shift=WRAP - 5)
    offset, _ = find_offset(received, table)
    assert offset is not None
    viewer = arrival_by_index(indices_of(received, table, offset), viewer_arrival[keep])
    lag = added_latency(viewer, presenter)
    assert len(lag) == 270
    assert np.allclose(np.sort(np.unique(np.round(lag, 6))), [0.030, 0.040])


def test_the_frames_sent_in_a_time_window_whatever_their_pts() -> None:
    index, rtp, sent = published(600, seed=7)
    maps = polls(index, rtp, sent=sent)
    got = sent_between(maps, 5.0, 7.5)
    assert np.array_equal(got, index[(sent >= 5.0) & (sent <= 7.5)]) and len(got) > 60
    assert len(sent_between(maps, 100.0, 101.0)) == 0
