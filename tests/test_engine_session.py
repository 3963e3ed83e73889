"""engine.live.LiveSession in real time, on tiny real models and the labels recognizer.

The 10 s run is the CI version of the pacing test (the 60 s / 10 min runs live in benchmarks/latency.py).
Timing checks here are about the media clock (cadence, A/V offset <= 1 frame), not about speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.live import LiveSession, SessionClosed
from engine.live.render_stream import RenderStream
from engine.motion import IdleMotion
from engine.stream import StreamCore
from engine.timing import DEFAULT_TIMEBASE as TB
from models.phonemes import SIL, phoneme_windows
from tests.engine_helpers import small_runtime

FRAME = 1 / 30


pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


def _offline(session: LiveSession, labels: np.ndarray, style: str) -> np.ndarray:
    dec = session.runtime.decoder
    with torch.inference_mode():
        w = torch.from_numpy(phoneme_windows(labels))[None]
        code = torch.from_numpy(np.array(session.styles.get(style)))[None]
        return dec.model.decode(dec.model.encode_content(w), code)[0].numpy()


async def _push_realtime(session: LiveSession, audio: np.ndarray, rate: int = 16000, chunk_s: float = 0.02) -> None:
    step = int(rate * chunk_s)
    t0 = time.monotonic()
    for k, i in enumerate(range(0, audio.shape[0], step)):
        await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk_s - time.monotonic()))
        session.push_audio(audio[i : i + step], rate)


async def _collect(session: LiveSession, n_video: int, n_audio: int):
    async def video():
        return [await session.next_video_frame() for _ in range(n_video)]

    async def audio():
        return [await session.next_audio_chunk() for _ in range(n_audio)]

    return await asyncio.gather(video(), audio())


def test_realtime_10s_keeps_30fps_av_sync_and_matches_offline() -> None:
    rng = np.random.default_rng(0)
    n_frames = 300
    labels = rng.integers(0, 41, n_frames + 10)
    labels[100:130] = SIL  # a pause
    audio = (rng.standard_normal(16000 * 10) * 2000).astype(np.int16)
    runtime = small_runtime(labels, lookahead=5)

    async def run():
        session = runtime.new_session("rt", record_expressions=True)
        await session.start()
        switch = session.set_style("lively", transition_ms=0, at_frame=200)
        (frames, chunks), _ = await asyncio.gather(_collect(session, n_frames, 500), _push_realtime(session, audio))
        stats = session.stats()
        await session.close()
        return session, switch, frames, chunks, stats

    session, switch, frames, chunks, stats = asyncio.run(run())
    runtime.close()
    # cadence: exact pts, increasing indices (a consumer stalled > 10 frames skips ahead rather than lag)
    idx = [f.index for f in frames]
    assert idx[0] == 0 and all(b > a for a, b in zip(idx, idx[1:], strict=False))
    assert all(f.pts == Fraction(f.index, 30) for f in frames)
    assert idx[-1] - (n_frames - 1) == stats["dropped_frames"] - stats["core"]["skipped_frames"]
    # no drift: the wall time between first and last frame is their pts difference (within one frame)
    sent_v = np.array([f.stamps["sent"] for f in frames])
    assert abs((sent_v[-1] - sent_v[0]) - (idx[-1] - idx[0]) * FRAME) <= FRAME
    # A/V: video frame t and the audio chunk with the same pts leave within one frame of each other
    audio_sent = {c.pts: c.stamps["sent"] for c in chunks}
    pairs = [(f.stamps["sent"], audio_sent[f.pts]) for f in frames if f.pts in audio_sent]
    assert len(pairs) >= 90  # every 100 ms a frame and a chunk share a pts
    assert max(abs(v - a) for v, a in pairs) <= FRAME
    av = stats["av_offset_ms"]
    assert av is not None and av["n"] >= 90 and av["max_abs"] <= 1000 * FRAME
    # the output audio is the input audio, delayed, bit-exact (unless the input arrived too late to be used)
    assert [c.pts for c in chunks[:3]] == [0, Fraction(1, 50), Fraction(2, 50)]
    assert stats["input"]["gap_ms"] < 1000  # stalls longer than the output delay are rare even on a busy CI
    if stats["input"]["gap_ms"] == 0:
        for c in chunks:
            start = int(c.pts * 16000)
            np.testing.assert_array_equal(c.pcm, audio[start : start + 320], err_msg=f"audio at {float(c.pts)} s")
    # streaming == offline, frame by frame, for every frame decoded with its full lookahead
    neutral, lively = _offline(session, labels, "neutral"), _offline(session, labels, "lively")
    assert switch == 200
    compared = 0
    for t, (exp, forced) in sorted(session.expressions.items()):
        if forced or t >= n_frames:
            continue
        np.testing.assert_allclose(exp, (neutral if t < switch else lively)[t], atol=1e-5, err_msg=f"frame {t}")
        compared += 1
    assert compared >= 30, f"only {compared} frames were decoded unforced on this machine"
    shown = [f for f in frames if f.exp is not None]  # the frames sent carry the expression they show
    for f in shown:
        np.testing.assert_array_equal(f.exp, session.expressions[f.index][0])
    assert stats["latency_ms"]["total"]["n"] > 0


def test_bad_audio_never_stalls_the_session() -> None:
    labels = np.full(200, 3)
    runtime = small_runtime(labels, lookahead=2)

    async def run():
        session = runtime.new_session("bad")
        await session.start()

        async def feed():
            rng = np.random.default_rng(1)
            await asyncio.sleep(0.1)
            session.push_audio(rng.standard_normal((2, 882)).astype(np.float32) * 0.1, 44100)  # stereo 44.1k
            session.push_audio(np.full(320, np.nan, np.float32), 16000)  # NaN
            session.push_audio(np.zeros(960, np.int32), 48000)  # silence, int32, 48 kHz
            with pytest.raises(ValueError):
                session.push_audio(np.zeros((3, 3, 3), np.float32), 16000)  # rejected at the edge
            with pytest.raises(ValueError):
                session.push_audio(np.zeros(100, np.float32), 0)
            await asyncio.sleep(0.8)  # a gap: nothing arrives
            session.push_audio((rng.standard_normal(3200) * 1000).astype(np.int16), 16000)

        (frames, chunks), _ = await asyncio.gather(_collect(session, 45, 75), feed())
        events = []
        while not session.events.empty():
            events.append(session.events.get_nowait())
        stats = session.stats()
        await session.close()
        return frames, chunks, events, stats

    frames, chunks, events, stats = asyncio.run(run())
    runtime.close()
    assert [f.index for f in frames] == list(range(45))  # kept its cadence through all of it
    assert len(chunks) == 75 and all(c.pcm.dtype == np.int16 and c.pcm.shape == (320,) for c in chunks)
    assert any(e["type"] == "error" and e["code"] == "bad_audio" for e in events)
    assert stats["input"]["nonfinite_samples"] == 320
    assert stats["input"]["gap_ms"] > 500  # the gap was filled with silence
    assert {16000, 44100, 48000} <= set(stats["input"]["rates"])


class _CollectSink:
    """Stands in for the session's event loop: collects what the render stream hands over on the worker."""

    def __init__(self) -> None:
        self.rendered_items: list[tuple[int, np.ndarray]] = []
        self.decoded_frames: list[int] = []
        self.costs: list[float] = []

    def decoded(self, job, exp, t_dec) -> None:
        self.decoded_frames += job.frames.tolist()

    def rendered(self, generation, items, t_ren) -> None:
        self.rendered_items.extend((f, img) for f, img, _ in items)

    def first_frame_cost(self, seconds) -> None:
        self.costs.append(seconds)


def _render_stream(runtime, sink) -> RenderStream:
    """A render stream alone (no session, no event loop) on the runtime's models."""
    stream = RenderStream(runtime.decoder.decode, runtime.renderer, sink, time.monotonic,
                          max_batch=runtime.config.decoder.max_batch)
    stream.set_state(runtime.renderer.prepare(runtime.avatar))
    return stream


def test_a_still_face_is_rendered_once() -> None:
    """In silence the expression, pose and eyelids repeat exactly: the image is reused, not re-rendered."""
    runtime = small_runtime(np.full(10, SIL))
    sink = _CollectSink()
    stream = _render_stream(runtime, sink)
    core = StreamCore(lookahead=5, style=runtime.styles.get("neutral"), max_batch=8)
    core.on_events([(f, SIL) for f in range(12)], 0.0)
    job = core.plan(0.0, max_frames=6)
    frames = job.frames
    blink = np.zeros(6, np.float32)
    blink[4] = 0.5  # one frame with the eyelids half closed
    still = IdleMotion(seed=0, head=0.0).poses(frames)  # a still head: the pose repeats too
    runtime.worker.submit(stream.work, job, still, blink, 0.0).result()
    runtime.close()
    posted = sink.rendered_items
    assert sink.decoded_frames == frames.tolist()
    assert [f for f, _ in posted] == frames.tolist()
    assert stream.reused == 3  # frames 1, 2, 3 repeat frame 0; 4 blinks; 5 differs from 4
    assert len(sink.costs) == 1  # the job's first rendered frame is its cost sample
    np.testing.assert_array_equal(posted[0][1], posted[3][1])
    assert not np.array_equal(posted[3][1], posted[4][1])  # the blink is rendered


def test_interrupt_discards_delayed_audio_and_closes_the_mouth() -> None:
    labels = np.full(400, SIL)
    labels[:30] = np.random.default_rng(2).integers(0, 31, 30)  # 1 s of speech, then silence
    runtime = small_runtime(labels, lookahead=0, output_delay_ms=400)  # ~12 frames of speech still queued

    async def run():
        session = runtime.new_session("int")
        await session.start()
        speech_done = asyncio.Event()

        async def pusher():
            await _push_realtime(session, np.full(16000, 1000, np.int16))
            speech_done.set()
            await _push_realtime(session, np.zeros(16000 * 2, np.int16))

        async def audio():
            return [await session.next_audio_chunk() for _ in range(75)]

        tasks = [asyncio.create_task(pusher()), asyncio.create_task(audio())]
        frames = []
        while not speech_done.is_set():
            frames.append(await session.next_video_frame())
        at = session.interrupt()  # the speech still queued in the output delay must not play
        frames += [await session.next_video_frame() for _ in range(12)]
        chunks = await tasks[1]
        tasks[0].cancel()
        idle = session.runtime.decoder.idle(session.core.styles.code_at(frames[-1].index))
        await session.close()
        return at, frames, chunks, idle

    at, frames, chunks, idle = asyncio.run(run())
    runtime.close()
    assert at is not None and at < 30  # the output was still inside the speech when interrupted
    after = [f for f in frames if f.index >= at + 1 and f.exp is not None]
    assert after, "no frame decoded after the interrupt"
    for f in after:  # at rest two frames after the interrupt (at: halfway, at+1: closed) and after
        np.testing.assert_allclose(f.exp, idle, atol=1e-5, err_msg=f"frame {f.index}")
    first_muted = -(-TB.frame_start_sample(at) // 320)
    pcm = np.concatenate([c.pcm for c in chunks])
    assert pcm[: 320 * min(first_muted, 10)].max() == 1000  # speech played before the interrupt ...
    assert pcm[320 * first_muted :].max() == 0  # ... and not after


def test_close_frees_threads_and_tasks_and_is_idempotent() -> None:
    runtime = small_runtime(np.zeros(10, np.int64))
    before = {t.name for t in threading.enumerate()}

    async def run():
        session = runtime.new_session("close")
        await session.start()
        assert session.threads_alive
        frame = await session.next_video_frame()
        waiter = asyncio.create_task(session.next_video_frame())
        await asyncio.sleep(0)
        await session.close()
        with pytest.raises(SessionClosed):
            await waiter
        await session.close()  # idempotent
        session.push_audio(np.zeros(320, np.int16), 16000)  # ignored after close
        with pytest.raises(SessionClosed):
            await session.next_video_frame()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return session, frame, tasks

    session, frame, tasks = asyncio.run(run())
    assert frame.index == 0
    assert not session.threads_alive and tasks == []
    assert {t.name for t in threading.enumerate()} - before <= {"styletalk-model_0"}
    assert "close" not in runtime.sessions
    runtime.close()


def test_windowed_renderer_output_is_mapped_back_to_its_frames() -> None:
    """A renderer lagging k frames (PIRenderer window lookahead) returns frame t's image k frames later."""
    from engine.renderer_pir import PIRendererRenderer
    from models.pirenderer import FaceGenerator, RendererConfig

    torch.manual_seed(0)
    cfg = RendererConfig.from_dict({
        "common": {"descriptor_nc": 20, "max_nc": 24}, "mapping_net": {"descriptor_nc": 20},
        "warpping_net": {"base_nc": 4}, "editing_net": {"base_nc": 8},
    })
    renderer = PIRendererRenderer(FaceGenerator(cfg).eval(), size=64, lookahead=2)
    runtime = small_runtime(np.random.default_rng(4).integers(0, 41, 40), renderer=renderer)
    session = runtime.new_session("pir")
    assert session.render_delay == 2
    sink = _CollectSink()
    stream = _render_stream(runtime, sink)
    motion = IdleMotion(seed=0)
    core = StreamCore(lookahead=5, style=runtime.styles.get("neutral"), max_batch=8)
    core.on_events([(f, 3 + f) for f in range(20)], 0.0)
    for _ in range(2):  # two consecutive jobs: the renderer stream continues across them
        job = core.plan(0.0, max_frames=4)
        pose, blink = motion.poses(job.frames), np.zeros(len(job), np.float32)
        runtime.worker.submit(stream.work, job, pose, blink, 0.0).result()
    runtime.close()
    posted = sink.rendered_items
    assert [f for f, _ in posted] == list(range(6))  # 8 frames fed, the first 2 outputs were warm-up holds
    # the same 8 frames rendered as one stream by a fresh state: output j shows frame j - 2
    exp = np.stack([stream.fed_exp[f] for f in range(8)])
    reference = renderer.render(renderer.prepare(runtime.avatar), exp, motion.poses(np.arange(8)))
    for f, image in posted:  # (batching differences move a few pixels by one level)
        assert np.abs(image.astype(int) - reference[f + 2].astype(int)).max() <= 1, f"frame {f}"
        assert np.abs(image.astype(int) - reference[f + 1].astype(int)).max() > 1  # and not its neighbour's
