"""Faults and bad input inside one live session, through the real ``LiveSession`` API (what the WebRTC path
calls): audio of every wrong kind, recognizer crashes and hangs, renderer exceptions, a consumer that stops
reading, and bad style clips. The session must answer with a clear error (exception at the edge or an
``error`` event), keep producing frames, and free everything on close.

The test session's shared engine runtime (built-in defaults, ``tests/streaming_fixtures.py``); faults are
injected through the runtime's recognizer factory or by wrapping the shared renderer, always restored afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from engine.live import LiveSession
from tests.streaming_fixtures import shared_runtime

runtime = shared_runtime  # the session's engine (built-in defaults, a still head): an engine load is ~8 s


@pytest.fixture
def recognizer_factory(runtime) -> Iterator[list]:  # noqa: ANN001
    """Set ``factory[0]`` to a callable returning a recognizer; the runtime's factory is restored after."""
    before = runtime._recognizer_factory
    box: list = [None]
    runtime._recognizer_factory = lambda: box[0]() if box[0] is not None else None
    yield box
    runtime._recognizer_factory = before


def run(coro) -> object:  # noqa: ANN001
    return asyncio.run(asyncio.wait_for(coro, 90))


def tone(seconds: float, rate: int = 16000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def frames(session: LiveSession, n: int) -> list:
    return [await asyncio.wait_for(session.next_video_frame(), 10) for _ in range(n)]


def drain_events(session: LiveSession) -> list[dict]:
    out = []
    while not session.events.empty():
        out.append(session.events.get_nowait())
    return out


async def wait_event(session: LiveSession, code: str, seen: list[dict], timeout: float = 5.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        seen.extend(drain_events(session))
        for e in seen:
            if e.get("type") == "error" and e.get("code") == code:
                return e
        await asyncio.sleep(0.05)
    raise AssertionError(f"no error event {code!r} within {timeout} s; events: {seen[-5:]}")


# --- audio at the push_audio edge ----------------------------------------------------------------------

BAD_AUDIO = [
    ("rate 0", np.zeros(320, np.int16), 0),
    ("negative rate", np.zeros(320, np.int16), -16000),
    ("absurd rate", np.zeros(320, np.int16), 10**9),
    ("float rate", np.zeros(320, np.int16), 16000.5),
    ("bool rate", np.zeros(320, np.int16), True),
    ("string rate", np.zeros(320, np.int16), "16000"),
    ("3-D", np.zeros((2, 2, 80), np.float32), 16000),
    ("ambiguous 2-D", np.zeros((40, 40), np.float32), 16000),
    ("complex", np.zeros(320, np.complex64), 16000),
    ("object", np.array([object()] * 4), 16000),
    ("strings", np.array(["a", "b"]), 16000),
    ("bool samples", np.zeros(320, bool), 16000),
]


def test_bad_audio_is_refused_at_the_edge_and_the_session_keeps_going(runtime) -> None:
    async def main() -> None:
        session = runtime.new_session("rel-audio")
        with pytest.raises(RuntimeError):  # not started yet: a clear refusal, not a crash
            session.push_audio(np.zeros(320, np.int16), 16000)
        await session.start()
        try:
            for what, pcm, rate in BAD_AUDIO:
                with pytest.raises(ValueError) as info:
                    session.push_audio(pcm, rate)
                assert str(info.value), what
            session.push_audio(tone(0.1), 16000)  # valid audio still goes in
            assert len(await frames(session, 5)) == 5
        finally:
            await session.close()
        session.push_audio(tone(0.1), 16000)  # after close: ignored, no exception
        assert not session.threads_alive

    run(main())


def test_odd_but_valid_audio_is_normalised_and_reported(runtime) -> None:
    async def main() -> None:
        session = runtime.new_session("rel-audio2")
        await session.start()
        seen: list[dict] = []
        try:
            nan = tone(0.2)
            nan[::7] = np.nan
            nan[3] = np.inf
            session.push_audio(nan, 16000)
            await wait_event(session, "bad_audio", seen)
            session.push_audio(tone(0.2) * 8.0, 16000)  # clipping floats
            stereo48 = (np.stack([tone(0.2, 48000), tone(0.2, 48000)]) * 32767).astype(np.int16)  # (2, n)
            session.push_audio(stereo48, 48000)
            session.push_audio((tone(0.2, 8000)[:, None] * np.ones((1, 6))).astype(np.float64), 8000)  # 6 ch
            session.push_audio(np.zeros(0, np.float32), 16000)  # empty block
            session.push_audio(np.zeros(3 * 16000, np.int16), 16000)  # long silence in one block
            await asyncio.sleep(0.4)  # a gap in the input
            session.push_audio(tone(0.3), 22050)  # and a new rate after the gap
            got = await frames(session, 20)
            assert [f.index for f in got] == list(range(got[0].index, got[0].index + 20))
            stats = session.stats()
            assert stats["input"]["nonfinite_samples"] > 0 and stats["input"]["clipped_samples"] > 0
            assert {16000, 48000, 8000, 22050} <= set(stats["input"]["rates"])
        finally:
            await session.close()
        assert not session.threads_alive

    run(main())


# --- recognizer faults ---------------------------------------------------------------------------------


class CrashingRecognizer:
    """Raises on every ``feed`` (a broken model file, a bug in a backend)."""

    lag = 0.05

    def __init__(self) -> None:
        self.calls = 0

    def feed(self, pcm: np.ndarray) -> list:
        self.calls += 1
        raise RuntimeError("decoder state corrupt in /opt/models/hmm.bin")

    def flush(self) -> list:
        return []


class HangingRecognizer:
    """Blocks inside ``feed`` until released (a deadlocked native library)."""

    lag = 0.05

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def feed(self, pcm: np.ndarray) -> list:
        self.entered.set()
        self.release.wait(30)
        return []

    def flush(self) -> list:
        return []


def test_recognizer_crash_becomes_an_error_event_and_frames_keep_coming(runtime, recognizer_factory) -> None:
    rec = CrashingRecognizer()
    recognizer_factory[0] = lambda: rec

    async def main() -> None:
        session = runtime.new_session("rel-rec-crash")
        await session.start()
        seen: list[dict] = []
        try:
            for _ in range(10):
                session.push_audio(tone(0.02), 16000)
                await asyncio.sleep(0.02)
            event = await wait_event(session, "recognizer", seen)
            assert event["session"] == "rel-rec-crash" and event["message"]
            got = await frames(session, 15)
            assert got[-1].index - got[0].index == 14
            assert session.stats()["errors"] >= 1 and rec.calls >= 1
        finally:
            await session.close()
        assert not session.threads_alive

    run(main())


def test_recognizer_hang_does_not_stall_the_output(runtime, recognizer_factory) -> None:
    rec = HangingRecognizer()
    recognizer_factory[0] = lambda: rec

    async def main() -> None:
        session = runtime.new_session("rel-rec-hang")
        await session.start()
        try:
            session.push_audio(tone(0.1), 16000)
            assert await asyncio.to_thread(rec.entered.wait, 5)
            for _ in range(10):  # audio keeps arriving while the recognizer is stuck
                session.push_audio(tone(0.02), 16000)
                await asyncio.sleep(0.02)
            got = await frames(session, 30)  # ~1 s of output while the recognizer is hung
            assert got[-1].index - got[0].index == 29
            assert session.stats()["frames_sent"] >= 30
        finally:
            rec.release.set()
            await session.close()
        assert not session.threads_alive

    run(main())


class CountingRecognizer:
    """A working recognizer: labels every complete frame of its own input with one phoneme."""

    lag = 0.05

    def __init__(self, phoneme: int = 3) -> None:
        self.phoneme = phoneme
        self.samples = 0
        self.frames = 0

    def feed(self, pcm: np.ndarray) -> list:
        self.samples += len(pcm)
        done = self.samples * 30 // 16000
        out = [(f, self.phoneme) for f in range(self.frames, done)]
        self.frames = done
        return out

    def flush(self) -> list:
        return []


def test_recognizer_hang_is_reported_and_a_fresh_recognizer_takes_over(runtime, recognizer_factory) -> None:
    hung = HangingRecognizer()
    made: list = []

    def factory():  # noqa: ANN202 - first the one that hangs, then working ones
        made.append(hung if not made else CountingRecognizer())
        return made[-1]

    recognizer_factory[0] = factory

    async def main() -> None:
        session = runtime.new_session("rel-rec-hang2")
        await session.start()
        seen: list[dict] = []
        try:
            session.push_audio(tone(0.1), 16000)
            assert await asyncio.to_thread(hung.entered.wait, 5)
            event = None
            for _ in range(80):  # 4 s of audio while the first recognizer is stuck
                session.push_audio(tone(0.05), 16000)
                await asyncio.sleep(0.05)
                seen.extend(drain_events(session))
                if event is None:
                    event = next((e for e in seen if e.get("code") == "recognizer"), None)
            assert event is not None and "restarted" in event["message"]
            assert session.stats()["recognizer_restarts"] == 1
            assert len(made) == 2
            # the replacement's frames land on the session's frames: labels reach (nearly) the audio pushed
            pushed = session.tb.frames_complete(session.timeline.write_pos)
            stable = session.core.ring.stable_end
            assert pushed - 15 <= stable <= pushed, (stable, pushed)
            assert session.core.ring.get(stable - 1) == 3
            assert session.recognition.queue is not None and session.recognition.queue.qsize() < 20  # no backlog
        finally:
            hung.release.set()
            await session.close()
        assert not session.threads_alive

    run(main())


def test_recognizer_that_keeps_hanging_is_given_up_without_stalling(runtime, recognizer_factory) -> None:
    rec = HangingRecognizer()
    recognizer_factory[0] = lambda: rec  # every replacement hangs too

    async def main() -> None:
        import engine.live.recognition as es

        session = runtime.new_session("rel-rec-hang3")
        before = es.REC_HANG_S
        es.REC_HANG_S = 0.3
        await session.start()
        seen: list[dict] = []
        try:
            for _ in range(60):
                session.push_audio(tone(0.05), 16000)
                await asyncio.sleep(0.05)
            seen.extend(drain_events(session))
            messages = [e["message"] for e in seen if e.get("code") == "recognizer"]
            assert session.stats()["recognizer_restarts"] == es.REC_MAX_RESTARTS
            assert any("lip sync is off" in m for m in messages), messages
            assert session.recognition.queue is None  # audio is no longer queued for anyone
            got = await frames(session, 10)
            assert got[-1].index - got[0].index == 9
        finally:
            es.REC_HANG_S = before
            rec.release.set()
            await session.close()

    run(main())


# --- renderer faults -----------------------------------------------------------------------------------


def test_renderer_exception_is_reported_and_the_stream_recovers(runtime, monkeypatch) -> None:  # noqa: ANN001
    # the faults are injected into this process's renderer: the session renders on the model thread (a job that
    # fails in a model worker process: tests/test_model_workers.py)
    monkeypatch.setattr(runtime, "model_workers", None)
    renderer = runtime.renderer
    original = renderer.render
    failures = {"left": 3, "raised": 0}

    @functools.wraps(original)
    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if failures["left"] > 0:
            failures["left"] -= 1
            failures["raised"] += 1
            raise RuntimeError("CUDA error: illegal memory access")
        return original(*args, **kwargs)

    async def main() -> None:
        session = runtime.new_session("rel-render")
        await session.start()
        seen: list[dict] = []
        try:
            renderer.render = flaky
            session.push_audio(tone(0.3), 16000)
            await wait_event(session, "pipeline", seen)
            got = await frames(session, 30)
            assert got[-1].index - got[0].index == 29  # frames kept coming (repeats while failing)
            fresh_before: int | None = None
            for _ in range(30):  # rendering resumes once the faults are used up (a loaded machine is slow)
                session.push_audio(tone(0.1), 16000)
                await frames(session, 10)
                if failures["left"] == 0:
                    fresh = session.stats()["fresh_frames"]
                    if fresh_before is None:
                        fresh_before = fresh
                    elif fresh > fresh_before:
                        break
            assert failures["raised"] == 3 and fresh_before is not None
            assert session.stats()["fresh_frames"] > fresh_before, "rendering did not resume"
            assert session.stats()["errors"] >= 1
        finally:
            renderer.__dict__.pop("render", None)
            await session.close()
        assert renderer.render == original

    run(main())


# --- a consumer that stops reading ---------------------------------------------------------------------


def test_unread_output_is_dropped_not_buffered(runtime) -> None:
    async def main() -> None:
        session = runtime.new_session("rel-stall")
        await session.start()
        try:
            await frames(session, 3)
            start_index = session.pacer.next_video
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for _ in range(40):  # 2 s of audio and nobody reading video, audio or events
                session.push_audio(tone(0.05), 16000)
                await asyncio.sleep(0.05)
            elapsed = loop.time() - t0
            limit = 4 * runtime.config.decoder.max_batch + 64
            assert len(session.buffer) <= limit
            assert session.events.qsize() <= session.events.maxsize
            frame = await asyncio.wait_for(session.next_video_frame(), 5)
            # the reader resumes at the current time, skipping what it missed instead of replaying a backlog
            assert frame.index >= start_index + int(elapsed * runtime.config.fps) - 6, (frame.index, start_index)
            chunk = await asyncio.wait_for(session.next_audio_chunk(), 5)
            assert chunk.pts >= frame.pts - 1
        finally:
            await session.close()

    run(main())


# --- style clips ---------------------------------------------------------------------------------------


def test_bad_style_clips_are_refused_by_the_session(runtime) -> None:
    from engine.live import StyleError
    from models.clips import ClipError

    rng = np.random.default_rng(0)
    good = (0.2 * rng.standard_normal((40, 64))).astype(np.float32)
    with_nan = good.copy()
    with_nan[1, 1] = np.nan
    bad = {
        "wrong width": good[:, :63],
        "transposed": good.T,
        "3-D": good[None],
        "empty": good[:0],
        "NaN": with_nan,
        "inf": np.where(good > 0.3, np.inf, good),
        "-inf": np.full((10, 64), -np.inf, np.float32),
    }

    async def main() -> None:
        session = runtime.new_session("rel-styles")
        await session.start()
        try:
            names_before = session.list_styles()
            for i, (what, clip) in enumerate(bad.items()):
                with pytest.raises((StyleError, ClipError, ValueError)) as info:
                    await session.add_style_async(f"bad{i}", clip)
                assert str(info.value), what
            assert session.list_styles() == names_before
            await session.add_style_async("one", good[:1])  # too short: padded and masked
            await session.add_style_async("long", np.tile(good, (250, 1)))  # 10000 frames: cut to 256
            assert session.set_style("long", 0) >= 0
            assert len(await frames(session, 5)) == 5
        finally:
            await session.close()

    run(main())


# --- the WebRTC microphone path ------------------------------------------------------------------------


class FakeRemoteTrack:
    """Stands in for aiortc's remote audio track: yields the given frames, then ends."""

    kind = "audio"

    def __init__(self, frames: list) -> None:
        self.frames = list(frames)

    async def recv(self):  # noqa: ANN201 - av.AudioFrame
        from aiortc.mediastreams import MediaStreamError

        if not self.frames:
            raise MediaStreamError
        return self.frames.pop(0)


def _frame(samples: np.ndarray, fmt: str, layout: str, rate: int):  # noqa: ANN202 - av.AudioFrame
    import av

    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def test_webrtc_microphone_survives_odd_frames(runtime) -> None:
    from streaming.webrtc import MicStats, pump_microphone

    stereo = (np.stack([tone(0.02, 48000)] * 2) * 20000).astype(np.int16)  # (2, 960)
    packed = stereo.T.reshape(1, -1)  # s16 packed stereo (1, 1920)
    nan = tone(0.02, 44100)[None].copy()
    nan[0, ::5] = np.nan
    frames_in = (
        [_frame(packed, "s16", "stereo", 48000) for _ in range(20)]  # what aiortc's Opus decoder gives
        + [_frame(nan, "flt", "mono", 44100) for _ in range(5)]  # rate/layout change mid-stream, NaN samples
        + [_frame(np.zeros((1, 1920), np.int16), "s16", "stereo", 48000) for _ in range(50)]  # silence
        + [_frame((np.ones((1, 1920)) * 32767).astype(np.int16), "s16", "stereo", 48000) for _ in range(5)]
    )

    async def main() -> None:
        session = runtime.new_session("rel-mic")
        await session.start()
        stats = MicStats()
        try:
            await asyncio.wait_for(pump_microphone(FakeRemoteTrack(frames_in), session, stats), 10)
            assert stats.frames == len(frames_in)
            assert stats.samples_16k > 0.9 * 16000 * 80 * 0.02
            got = await frames(session, 10)
            assert got[-1].index - got[0].index == 9
            assert session.stats()["input"]["received_ms"] > 1000
        finally:
            await session.close()
        # a closed session refuses nothing loudly: the pump keeps reading until the track ends
        await pump_microphone(FakeRemoteTrack(frames_in[:3]), session, stats)

    run(main())


def test_a_closed_session_ends_its_recognizer_process(runtime) -> None:
    """recognizer.isolate (default): the session's pocketsphinx runs in a child; closing the session ends it at
    once (not whenever the session object is garbage-collected: a server kept one child per closed session)."""
    import os

    from engine.recognizer.process import ProcessRecognizer

    async def main() -> int:
        session = runtime.new_session("rel-rec-process")
        await session.start()
        rec = session._recognizer
        assert isinstance(rec, ProcessRecognizer) and rec.alive
        try:
            session.push_audio(tone(0.5), 16000)
            assert len(await frames(session, 5)) == 5
        finally:
            await session.close()
        assert not rec.alive
        return rec.pid

    pid = run(main())
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)
