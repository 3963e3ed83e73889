"""Which engine frame a received video frame is: RTP timestamps of a room's stream -> engine frame indices.

Why a table and a search rather than a formula: the room's RTP publisher stamps its video on the wall clock
(strictly increasing; the engine's own pts may step back), and publishes, in the room's ``stats``, the
``frame_map`` of its newest frames: ``[engine index, RTP timestamp sent, send time]`` (:mod:`streaming.rtp_publisher`).
A viewer never sees those timestamps as sent: Janus' Streaming plugin rebases them per viewer, and aiortc's
receiver counts them from the first frame it assembled. Both shifts are one constant per viewer (modulo 2**32),
so the timestamp *differences* survive untouched; being wall-clock stamps they are irregular (each frame's
send time jitters by tens to thousands of 90 kHz ticks), and a run of them identifies where the viewer's
stream sits in the table. :func:`find_offset` finds that constant by voting, :func:`indices_of` applies it.

The presenter's own peer needs none of this: it stamps the engine's media clock, and ``first_video_index`` in
its ``transport`` stats anchors it (:meth:`clients.client.ReceivedFrame.index`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

WRAP = 2**32
VOTERS = 40  # viewer frames (spread over the stream) whose candidate offsets are counted
AMBIGUOUS = 0.5  # a second offset placing more than this share of the best one's frames: no mapping
MIN_MATCHES = 10  # fewer frames placed exactly in the table than this: no mapping (a coincidence is possible)


def merge_frame_maps(maps: Iterable[list[list[Any]]]) -> dict[int, int]:
    """Several polls of the publisher's ``frame_map`` (overlapping windows of ``[index, rtp, sent]``) ->
    {RTP timestamp: engine index}."""
    table: dict[int, int] = {}
    for frame_map in maps:
        for index, rtp, *_ in frame_map:
            table[int(rtp) % WRAP] = int(index)
    return table


def sent_between(maps: Iterable[list[list[Any]]], t0: float, t1: float) -> np.ndarray:
    """Engine indices of the frames the publisher sent between ``t0`` and ``t1`` (``time.monotonic()``)."""
    return np.array(sorted({int(e[0]) for m in maps for e in m if len(e) > 2 and t0 <= e[2] <= t1}), np.int64)


def find_offset(received: np.ndarray, table: dict[int, int]) -> tuple[int | None, int]:
    """The constant ``c`` with ``(received + c) mod 2**32`` = the sent RTP timestamp, and how many received
    frames it places exactly in ``table``; (None, best count) when no offset places ``MIN_MATCHES`` frames or
    when two offsets place similar numbers (ambiguous).

    ``received``: (N,) the viewer's RTP timestamps (any constant shift; unwrapped or not). Each of up to
    ``VOTERS`` frames spread over the stream votes for every offset that would put it on a table entry; the true
    offset collects a vote from every voter the table covers, a wrong one from at most a few.
    """
    rx = np.asarray(received, np.int64) % WRAP
    if len(rx) == 0 or not table:
        return None, 0
    sent = np.fromiter(table.keys(), np.int64, len(table))
    votes: Counter[int] = Counter()
    for i in np.unique(np.linspace(0, len(rx) - 1, min(VOTERS, len(rx))).astype(int)):
        votes.update(((sent - rx[i]) % WRAP).tolist())
    counts = sorted(((sum(((int(t) + offset) % WRAP) in table for t in rx), offset)
                     for offset, _ in votes.most_common(5)), reverse=True)  # the leading candidates, on every frame
    best_count, best = counts[0]
    runner_up = counts[1][0] if len(counts) > 1 else 0
    # too few placed, or another offset places nearly as many (a clock without jitter: every whole-frame shift
    # fits): no answer rather than a wrong one
    if best_count < min(MIN_MATCHES, len(rx)) or runner_up > AMBIGUOUS * best_count:
        return None, best_count
    return best, best_count


def indices_of(received: np.ndarray, table: dict[int, int], offset: int) -> np.ndarray:
    """(N,) engine frame index of each received frame (-1 where the table has no entry for it)."""
    rx = np.asarray(received, np.int64) % WRAP
    return np.array([table.get((int(t) + offset) % WRAP, -1) for t in rx], np.int64)


def arrival_by_index(indices: np.ndarray, arrivals: np.ndarray) -> dict[int, float]:
    """{engine index: first arrival} (frames with index -1, not in the table, left out)."""
    out: dict[int, float] = {}
    for index, arrival in zip(indices.tolist(), np.asarray(arrivals, np.float64).tolist(), strict=True):
        if index >= 0 and index not in out:
            out[index] = arrival
    return out


def added_latency(viewer: dict[int, float], presenter: dict[int, float]) -> np.ndarray:
    """Viewer arrival - presenter arrival (seconds) of every engine frame both received, in index order."""
    common = sorted(set(viewer) & set(presenter))
    return np.array([viewer[i] - presenter[i] for i in common], np.float64)
