"""The parts of engine.live, each alone (no session, no event loop unless the part owns one).

Real components where the part talks to one: the labels recognizer for the recognizer thread, the real
timeline and normaliser for the input, real Fractions on the 30 fps / 16 kHz timebase for pairing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from fractions import Fraction

import numpy as np
import pytest

import engine.live.recognition as recognition
from engine.live.audio_input import AudioInput
from engine.live.deadlines import MIN_GAP_TOLERANCE_S, PROBE_AFTER_S, Deadlines
from engine.live.events import EVENT_QUEUE_SIZE, EventChannel
from engine.live.output import AvPairing, FrameBuffer, OutputCounters
from engine.live.recognition import RecognitionWorker
from engine.recognizer import make_recognizer
from engine.stream import StreamCore
from engine.timing import DEFAULT_TIMEBASE as TB
from engine.timing import MediaClock


# ------------------------------------------------------------------------------------------- deadlines
def test_deadlines_estimate_is_a_high_percentile_of_recent_costs() -> None:
    d = Deadlines(delay_s=0.3, chunk_s=0.02, compute_margin=lambda: 0.2, initial_cost_s=0.015)
    assert d.est_first() == 0.015
    for c in [0.01] * 12 + [0.05, 0.09]:  # one hiccup among cheap jobs does not dominate ...
        d.record_cost(c)
    assert d.est_first() == 0.01
    for _ in range(5):  # ... but a run of expensive ones does
        d.record_cost(0.08)
    assert d.est_first() == 0.08
    assert d.force_horizon() == pytest.approx(0.09)  # safety + estimate, below 3/4 of the margin


def test_force_horizon_never_exceeds_three_quarters_of_the_margin() -> None:
    d = Deadlines(0.3, 0.02, compute_margin=lambda: 0.04, initial_cost_s=0.5)
    assert d.force_horizon() == pytest.approx(0.03)


def test_skip_horizon_probes_after_a_quiet_spell() -> None:
    d = Deadlines(0.3, 0.02, compute_margin=lambda: 0.2, initial_cost_s=0.07)
    d.job_done(100.0)
    assert d.skip_horizon(100.1) == 0.07
    assert d.skip_horizon(100.0 + PROBE_AFTER_S + 0.01) == 0.0  # stale estimate: only frames already due


def test_a_probe_replaces_the_stale_estimate() -> None:
    """A spell of slow jobs must not make every later frame look hopeless (the skip spiral)."""
    d = Deadlines(0.3, 0.02, compute_margin=lambda: 0.2, initial_cost_s=0.02)
    for _ in range(30):
        d.record_cost(0.5)  # e.g. jobs queued behind the avatar's preparation
    d.job_done(100.0)
    assert d.skip_horizon(100.1) == 0.5  # nothing new: still hopeless
    assert d.skip_horizon(100.0 + PROBE_AFTER_S + 0.01) == 0.0  # the probe
    d.record_cost(0.02)  # the probe measured the real cost
    d.job_done(100.5)
    assert d.skip_horizon(100.51) == pytest.approx(0.02)


def test_gap_tolerance_follows_the_delay() -> None:
    assert Deadlines(0.5, 0.02, lambda: 0.03, 0.01).gap_tolerance() == pytest.approx(0.48)
    assert Deadlines(0.05, 0.02, lambda: 0.03, 0.01).gap_tolerance() == MIN_GAP_TOLERANCE_S


# -------------------------------------------------------------------------------------- output pairing
def test_av_pairing_pairs_frames_and_chunks_that_share_a_pts() -> None:
    offsets: deque[float] = deque()
    pairing = AvPairing(TB, TB.chunk_samples(20), offsets)
    starts = [t for t in range(30) if pairing.starts_chunk(TB.frame_pts(t))]
    assert starts == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]  # every 100 ms at 30 fps / 20 ms
    pairing.video(TB.frame_pts(3), 10.004)  # video first: waits for its chunk
    pairing.audio(TB.chunk_pts(5, 320), 10.000)
    pairing.audio(TB.chunk_pts(10, 320), 10.100)  # audio first: waits for its frame
    pairing.video(TB.frame_pts(6), 10.090)
    pairing.video(TB.frame_pts(4), 10.2)  # shares no pts with a chunk: not paired
    assert list(offsets) == pytest.approx([0.004, -0.010])
    assert not pairing.video_sent


def test_frame_buffer_drops_what_can_no_longer_be_shown() -> None:
    counters = OutputCounters()
    first = np.zeros((4, 4, 3), np.uint8)
    buf = FrameBuffer(first, limit=3, counters=counters)
    core = StreamCore(lookahead=0, style=np.zeros(8, np.float32))
    img = [np.full((4, 4, 3), i, np.uint8) for i in range(8)]
    exp = np.zeros(64, np.float32)
    buf.add([(i, img[i], exp) for i in range(2, 8)], 1.0, first_unsent=3, core=core)
    assert counters.stale_frames == 1 + 2  # frame 2 was due already; 3 and 4 overflow the limit
    assert buf.take(4) is None and buf.last_image is first  # a late frame repeats the last image
    item = buf.take(6)
    assert item is not None and buf.last_image is img[6]
    assert counters.stale_frames == 4  # frame 5 was passed over
    buf.drop_from(7)
    assert len(buf) == 0 and counters.stale_frames == 5


# ----------------------------------------------------------------------------------------- audio input
def test_audio_input_aligns_a_restarting_source_and_compacts_silence() -> None:
    errors: list[tuple[str, str]] = []
    appended: list[tuple[int, int]] = []
    inp = AudioInput(TB, on_append=lambda s, start: appended.append((start, s.shape[0])),
                     error=lambda c, m: errors.append((c, m)), max_ahead_s=2.0, gap_tolerance_s=0.1)
    clock = MediaClock(origin=0.0)
    inp.push(np.full(320, 1000, np.int16), 16000, clock, now=1.0)  # first block at media time 1 s
    assert inp.timeline.write_pos == 16000  # placed at the clock: the second before it was silence
    inp.push(np.full(480, 0.5, np.float32), 24000, clock, now=1.05)  # resampled, contiguous
    assert 16000 < inp.timeline.write_pos <= 16000 + 320  # contiguous (the resampler holds a few samples)
    assert inp.timeline.gap_samples == 16000 - 320  # only the silence before the source started
    assert inp.normalizer.stats.rates == {16000, 24000}
    # silence while the timeline runs far ahead of real time is dropped
    before = inp.timeline.write_pos
    inp.push(np.zeros(16000, np.int16), 16000, clock, now=1.06)
    assert inp.timeline.write_pos - before < 16000
    inp.push(np.array([np.nan, 0.0], np.float32), 16000, clock, now=1.07)
    assert errors and errors[-1][0] == "bad_audio"
    assert sum(n for _, n in appended) == inp.timeline.write_pos  # the recognizer saw every sample


def test_audio_input_keeps_an_idle_timeline_at_the_clock() -> None:
    inp = AudioInput(TB, on_append=lambda s, start: None, error=lambda c, m: None, max_ahead_s=2.0,
                     gap_tolerance_s=0.1)
    inp.keep_up(MediaClock(origin=0.0), now=2.0)
    assert 2.0 - 0.05 < inp.timeline.write_pos / 16000 <= 2.0


# ---------------------------------------------------------------------------------------- events
def test_event_channel_keeps_the_newest_and_posts_to_its_loop() -> None:
    async def main() -> tuple[list[dict], list[str]]:
        ch = EventChannel("s1")
        ch.bind(asyncio.get_running_loop())
        for i in range(EVENT_QUEUE_SIZE + 5):
            ch.info("tick", i=i)
        got: list[str] = []
        t = threading.Thread(target=lambda: ch.error_threadsafe("bad_audio", "from a thread"))
        t.start()
        t.join()
        await asyncio.sleep(0.01)
        events = []
        while not ch.queue.empty():
            events.append(ch.queue.get_nowait())
        got.append(str(ch.errors))
        return events, got

    events, got = asyncio.run(main())
    assert events[0]["i"] == 6 and events[-1]["code"] == "bad_audio"  # the oldest ticks were dropped
    assert got == ["1"]


# ----------------------------------------------------------------------------------- recognizer thread
def _worker(make, posted: list, errors: list) -> RecognitionWorker:
    return RecognitionWorker(
        "t", TB, 30, time.monotonic,
        post=lambda fn, *args: posted.append(args),
        on_recognized=lambda *a: None,
        error=lambda c, m: errors.append(m), error_threadsafe=lambda c, m: errors.append(m),
        make_recognizer=make,
    )


def test_recognition_worker_feeds_the_recognizer_on_its_thread() -> None:
    labels = np.arange(30) % 41
    posted: list = []
    w = _worker(None, posted, [])
    w.start(lambda: make_recognizer("labels", labels=labels), None)
    for k in range(50):  # 1 s in 20 ms blocks
        w.feed(np.zeros(320, np.int16), k * 320)
    deadline = time.monotonic() + 10
    while sum(len(p[0]) for p in posted) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    assert w.join(5.0)
    events = [tuple(e) for p in posted for e in p[0]]
    assert events == [(f, int(labels[f])) for f in range(30)]
    assert posted[0][1] == 0 and posted[-1][2] == 16000  # sample span of each block


class _Hanging:
    lag = 0.05

    def __init__(self) -> None:
        self.release = threading.Event()

    def feed(self, pcm):
        self.release.wait(10)
        return []

    def flush(self):
        return []


def test_recognition_watchdog_replaces_a_stuck_recognizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recognition, "REC_HANG_S", 0.05)
    labels = np.full(200, 31)
    posted: list = []
    errors: list[str] = []
    stuck = _Hanging()
    w = _worker(lambda: make_recognizer("labels", labels=labels), posted, errors)
    w.start(lambda: stuck, None)
    w.feed(np.zeros(320, np.int16), 0)
    time.sleep(0.2)
    w.check(time.monotonic(), resume_from=1000)
    assert w.restarts == 1 and "restarted" in errors[-1]
    w.feed(np.zeros(3200, np.int16), 1000)  # the new recognizer starts at the first frame boundary >= 1000
    deadline = time.monotonic() + 10
    while not posted and time.monotonic() < deadline:
        time.sleep(0.01)
    stuck.release.set()
    w.stop()
    assert w.join(5.0)
    assert posted and posted[0][1] == 1600  # 1600 = 3 frames: the first sample that starts a frame
    assert [tuple(e)[0] for e in posted[0][0]][:1] == [3]  # events shifted to the session's frames
    assert Fraction(posted[0][1], 16000) == TB.frame_pts(3)


# ------------------------------------------------------------------------------------------ registry
def test_registry_admission_is_atomic_and_release_frees_only_its_holder() -> None:
    from engine.live.registry import SessionRefused, SessionRegistry

    reg: SessionRegistry[object] = SessionRegistry(lambda: 3)
    barrier = threading.Barrier(8)
    admitted: list[str] = []
    refused: list[str] = []

    def build() -> object:
        time.sleep(0.05)  # slow construction: every thread is past the check before any finishes
        return object()

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            reg.admit(f"s{i}", build)
            admitted.append(f"s{i}")
        except SessionRefused:
            refused.append(f"s{i}")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and len(refused) == 5 and len(reg) == 3
    first = admitted[0]
    old = reg.get(first)
    reg.release(first)
    new = reg.admit(first, object)  # a replacement under the same id ...
    reg.release(first, old)  # ... is not freed by the old session's late release
    assert reg.get(first) is new
    with pytest.raises(SessionRefused, match="too many sessions"):
        reg.admit("extra", object)
    assert reg.admit("extra", object, limit=4) is not None  # a caller's own limit (the server's setting)

    def broken() -> object:
        raise ValueError("no model")

    with pytest.raises(ValueError):
        reg.admit("broken", broken, limit=10)
    assert "broken" not in reg  # a failed construction gives the slot back
