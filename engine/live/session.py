"""LiveSession: one live stream - audio in, paced video frames + the same audio delayed out.

The session owns start, close and control (style, intensity, avatar, interrupt, pause); the work is done by
parts with one owner thread each:

====================================  ====================================================================
part                                  owner
====================================  ====================================================================
:class:`~engine.live.audio_input.AudioInput`        the pushing thread(s), serialised by its push lock
:class:`~engine.live.recognition.RecognitionWorker` the recognizer thread (feeds) + the event loop (watchdog)
:class:`~engine.contracts.RenderLane`              the runtime's model thread or a model worker process
:class:`~engine.live.deadlines.Deadlines`           the event loop (the worker only appends job costs)
:class:`~engine.live.output.SessionOutput`          the event loop (paced release, A/V pairing)
:class:`~engine.live.events.EventChannel`           the event loop (``post`` hands work over from threads)
====================================  ====================================================================

- ``push_audio`` (any thread) normalises the audio and places it on the session's
  :class:`~engine.pacing.AudioTimeline`, which hands every block to the recognizer thread;
- the recognizer thread posts stable phoneme events to the event loop;
- a *producer task* on the event loop plans decode jobs (:class:`~engine.stream.StreamCore`) and runs them -
  decode + render - on the session's render lane (:meth:`EngineRuntime.render_lane`: a model worker process, or
  the runtime's model thread; never on the loop);
- consumers call :meth:`LiveSession.next_video_frame` / :meth:`LiveSession.next_audio_chunk`, paced by the
  media clock: frame t and the audio at pts t/30 are both released at ``origin + delay + t/30``.

Latency model: the output runs a constant ``delay`` behind the input (recognizer lag + decoder lookahead +
compute margin, see :mod:`engine.latency`). The session never waits for a late stage, so it
never stalls and never drifts:
- a frame whose phonemes are late is decoded anyway shortly before its deadline (*forced*, window padded);
- a frame that can no longer be rendered in time is skipped, and a frame missing at its due time is replaced
  by a repeat of the previous image (*late*) - a machine too slow for 30 fps shows fewer fresh frames, in sync;
- input that stops is replaced by silence on the timeline; a source that (re)starts after a pause is aligned
  with the clock, while audio of a running source is placed contiguously unless it arrives later than the
  output could use it (then it is a gap: see :meth:`engine.live.deadlines.Deadlines.gap_tolerance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.contracts import Closeable, PhonemeEventLike, Recognizer, RestAware
from engine.latency import COMPUTE_MARGIN_S
from engine.live.audio_input import AudioInput
from engine.live.deadlines import Deadlines
from engine.live.events import EventChannel, EventCode
from engine.live.frames import OutputAudioChunk, OutputVideoFrame, SessionClosed
from engine.live.output import FrameBuffer, OutputCounters, SessionOutput
from engine.live.recognition import RecognitionWorker
from engine.live.render_stream import RenderedItem
from engine.live.stats import ProducerCounters, session_stats
from engine.model_process import ModelWorkerError
from engine.motion import IdleMotion
from engine.pacing import OutputPacer, StageMetrics
from engine.stream import DecodeJob, StreamCore
from engine.stylebank import MAX_INTENSITY, StyleBank, renderer_rest
from engine.timing import MediaClock

if TYPE_CHECKING:
    from engine.runtime import EngineRuntime

log = logging.getLogger(__name__)

MAX_IDLE_WAIT_S = 0.04  # the producer wakes at least this often (watchdog granularity)
MIN_BATCH = 2  # frames per decoder call in steady state (see _produce)


class LiveSession:
    """One live stream (see module docstring). Create with :meth:`EngineRuntime.new_session`."""

    def __init__(
        self,
        runtime: EngineRuntime,
        session_id: str,
        *,
        recognizer: Recognizer | None = None,
        clock: Callable[[], float] = time.monotonic,
        motion: IdleMotion | None = None,
        compact_silence: bool = True,
        record_expressions: bool = False,
    ) -> None:
        cfg = runtime.config
        self.runtime = runtime
        self.session_id = session_id
        self.config = cfg
        self.tb = runtime.timebase
        self.chunk_samples = self.tb.chunk_samples(cfg.audio.chunk_ms)
        self._clock = clock
        self._recognizer = recognizer if recognizer is not None else runtime.make_recognizer()
        self.styles = StyleBank(runtime.decoder.encode_style, neutral=runtime.styles.neutral)
        for name in runtime.styles.names():
            self.styles.add_code(name, runtime.styles.get(name))
        self._style_name = cfg.style.default
        self._intensity = float(cfg.style.intensity)
        self.core = StreamCore(
            lookahead=cfg.decoder.lookahead,
            style=self.styles.styled(self._style_name, self._intensity, cfg.style.intensity_space),
            pad=cfg.decoder.pad,
            crossfade_frames=cfg.style.crossfade_frames,
            max_batch=cfg.decoder.max_batch,
        )
        self.delay = runtime.output_delay(self._recognizer)
        self.motion = motion or IdleMotion(seed=zlib.crc32(session_id.encode()), fps=cfg.fps,
                                           base_pose=runtime.pose, head=cfg.avatar.head_motion)
        # frame -> (expression, forced) of every decoded frame, for tests and benchmarks (unbounded: opt-in)
        self.expressions: dict[int, tuple[np.ndarray, bool]] | None = {} if record_expressions else None
        self.channel = EventChannel(session_id)
        self.events = self.channel.queue
        self.metrics = StageMetrics()
        self.counters = OutputCounters()
        self.producer_counters = ProducerCounters()
        self.deadlines = Deadlines(float(self.delay), cfg.audio.chunk_ms / 1000.0, runtime.compute_margin,
                                   runtime.frame_compute_s or COMPUTE_MARGIN_S / 2)
        self.recognition = RecognitionWorker(
            session_id, self.tb, cfg.fps, clock, post=self.channel.post, on_recognized=self._on_recognized,
            error=self.channel.error, error_threadsafe=self.channel.error_threadsafe,
            # a stuck recognizer is replaced by a new one of the runtime's (not possible for a caller-supplied one)
            make_recognizer=runtime.make_recognizer if recognizer is None else None,
        )
        self.audio = AudioInput(
            self.tb, on_append=self.recognition.feed, error=self.channel.error_threadsafe,
            max_ahead_s=cfg.audio.max_input_queue_s, gap_tolerance_s=self.deadlines.gap_tolerance(),
            compact_silence=compact_silence,
        )
        self.timeline = self.audio.timeline
        self.render = runtime.render_lane(_LoopSink(self), clock, self._rest_expression)
        self.buffer = FrameBuffer(np.ascontiguousarray(runtime.avatar), 4 * cfg.decoder.max_batch + 64,
                                  self.counters)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closed_event: asyncio.Event | None = None
        self._producer: asyncio.Task[None] | None = None
        self._avatar_tasks: set[asyncio.Task[None]] = set()
        self.clock: MediaClock | None = None
        self.pacer: OutputPacer | None = None
        self.output: SessionOutput | None = None
        self._started = False
        self._closed = False
        self._paused = False

    @property
    def render_delay(self) -> int:
        """Frames by which the renderer's output lags its input."""
        return self.render.delay_frames

    # =========================================================================================== lifecycle
    async def start(self) -> None:
        """Prepare the avatar on the render lane, start the recognizer thread and the producer task."""
        if self._started:
            return
        if self._closed:
            raise SessionClosed(f"session {self.session_id} is closed")
        self._loop = asyncio.get_running_loop()
        self.channel.bind(self._loop)
        self._wake = asyncio.Event()
        self._closed_event = asyncio.Event()
        try:
            await self.render.prepare(self.runtime.avatar)
        except BaseException:
            self.render.close()
            raise
        self.clock = MediaClock(origin=self._clock(), delay=self.delay)
        self.deadlines.job_done(self.clock.origin)
        self.pacer = OutputPacer(self.clock, self.tb, self.chunk_samples)
        self.output = SessionOutput(self.pacer, self.tb, self.chunk_samples, self.buffer, self.timeline, self.core,
                                    self.metrics, self.counters, self._clock, self._sleep_until)
        recognizer = self._recognizer
        self.recognition.start(lambda: recognizer, None)
        self._producer = asyncio.create_task(self._produce(), name=f"producer-{self.session_id}")
        self._started = True
        self.channel.info(EventCode.STARTED, delay_ms=float(self.delay) * 1000, lookahead=self.core.lookahead)

    async def close(self) -> None:
        """Stop tasks and threads, drop queues; idempotent. Waiting consumers get :class:`SessionClosed`."""
        if self._closed:
            return
        self._closed = True
        if self._closed_event is not None:
            self._closed_event.set()
        if self._wake is not None:
            self._wake.set()
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._producer
        self.recognition.stop()
        if self.recognition.thread is not None:
            if not await asyncio.to_thread(self.recognition.join, 5.0):
                log.warning("session %s: recognizer thread did not stop within 5 s", self.session_id)
        if isinstance(self._recognizer, Closeable):  # a child process: end it now, not when this object is collected
            self._recognizer.close()
        self.render.close()
        self.buffer.clear()
        self.runtime.forget(self.session_id, self)  # only this session's slot (a replacement may hold the id)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threads_alive(self) -> bool:
        """Whether this session still owns a running thread or task (for tests of :meth:`close`)."""
        prod = self._producer is not None and not self._producer.done()
        return self.recognition.alive or prod

    # =============================================================================================== input
    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Accept audio of any rate/channels/dtype (thread-safe). Invalid audio raises ``ValueError``."""
        if self._closed:
            return
        if not self._started or self.clock is None:
            raise RuntimeError(f"session {self.session_id} is not started")
        self.audio.push(pcm, sample_rate, self.clock, self._clock())

    def _on_recognized(self, events: list[PhonemeEventLike], start: int, end: int, arrival: float,
                       now: float) -> None:
        if self._closed:
            return
        self.core.mark_audio(self.tb.frames_complete(start), self.tb.frames_complete(end), arrival)
        try:
            self.core.on_events(events, now)
        except (ValueError, TypeError) as exc:
            self.channel.error(EventCode.RECOGNIZER, f"bad phoneme event: {exc}")
        if self._wake is not None:
            self._wake.set()

    # ============================================================================================ producer
    async def _produce(self) -> None:
        assert self._loop is not None and self.pacer is not None and self.clock is not None and self._wake
        tb, dl, pacer = self.tb, self.deadlines, self.pacer
        while not self._closed:
            now = self._clock()
            self.recognition.check(now, self.timeline.write_pos)
            self.audio.keep_up(self.clock, now)
            # frames that cannot be rendered before their output time are useless: skip them instead of
            # rendering them late (a machine too slow for 30 fps then shows fewer fresh frames, in sync)
            hopeless = dl.skip_horizon(now)
            if now + hopeless >= self.clock.due(tb.frame_pts(0)):
                self.core.skip_to(pacer.frame_deadline(now, hopeless))
            horizon = dl.force_horizon()
            force_until = pacer.frame_deadline(now, horizon)
            # Batch: a decoder call costs nearly the same for 1 or 2 frames, so a lone ready frame waits for
            # the next one - unless waiting one more frame period would make it late.
            job = None
            pending = self.core.scheduler.pending(self.core.ring)
            urgent = self.core.next_frame < pacer.frame_deadline(now, horizon + float(tb.frame_pts(1)))
            if pending >= MIN_BATCH or urgent or self.core.next_frame < force_until:
                job = self.core.plan(now, force_until=force_until)
            if job is None:
                self._wake.clear()
                due = self.clock.due(tb.frame_pts(self.core.next_frame))
                wait = due - horizon - float(tb.frame_pts(1)) - now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(max(wait, 0.002), MAX_IDLE_WAIT_S))
                continue
            await self._run_job(job)

    async def _run_job(self, job: DecodeJob) -> None:
        assert self._loop is not None
        frames = job.frames
        pose = self.motion.poses(frames, job.windows)  # the head moves faster while the avatar speaks
        blink = self.motion.blink_amounts(frames)
        try:
            await self.render.run(job, pose, blink, self._clock())
        except asyncio.CancelledError:
            raise
        except ModelWorkerError as exc:  # the worker process ended: the lane moves to a new one on the next job
            log.error("session %s: %s", self.session_id, exc)
            self.channel.error(EventCode.MODEL_WORKER, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the stage failed for this session only; keep going
            log.exception("session %s: decode/render failed", self.session_id)
            self.channel.error(EventCode.PIPELINE, f"{type(exc).__name__}: {exc}")
            return  # the lane restarts its renderer stream on the next job
        self.producer_counters.jobs += 1
        self.deadlines.job_done(self._clock())

    def _on_decoded(self, job: DecodeJob, exp: np.ndarray, t_dec: float) -> None:
        if self.core.complete(job, exp, t_dec) is not None and self.expressions is not None:
            for f, e, forced in zip(job.frames.tolist(), exp, job.forced.tolist(), strict=True):
                self.expressions[f] = (e, forced)

    def _on_rendered(self, generation: int, items: list[RenderedItem], t_ren: float) -> None:
        if generation != self.core.generation or self._closed:
            self.counters.stale_frames += len(items)
            return
        first_unsent = self.pacer.next_video if self.pacer is not None else 0
        self.buffer.add(items, t_ren, first_unsent, self.core)

    # ============================================================================================= output
    async def _sleep_until(self, deadline: float) -> None:
        assert self._closed_event is not None
        delay = deadline - self._clock()
        if self._closed:
            raise SessionClosed(f"session {self.session_id} is closed")
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed_event.wait(), timeout=delay)
            if self._closed:
                raise SessionClosed(f"session {self.session_id} is closed")

    def _started_output(self) -> SessionOutput:
        if not self._started or self.output is None:
            raise RuntimeError(f"session {self.session_id} is not started")
        return self.output

    async def next_video_frame(self) -> OutputVideoFrame:
        """The next frame, released at its due time (``origin + delay + pts``); idle frames when silent."""
        return await self._started_output().next_video_frame()

    async def next_audio_chunk(self) -> OutputAudioChunk:
        """The next 20 ms of output audio (the input delayed), released at its due time."""
        return await self._started_output().next_audio_chunk()

    # ============================================================================================ control
    def list_styles(self) -> list[str]:
        return self.styles.names()

    @property
    def style(self) -> str:
        return self._style_name

    @property
    def intensity(self) -> float:
        return self._intensity

    @property
    def paused(self) -> bool:
        return self._paused

    def set_style(self, name: str, transition_ms: int = 250, at_frame: int | None = None) -> int:
        """Switch speaking style with a crossfade of ``transition_ms``; returns the frame where it lands.

        The switch lands on the next frame not yet decoded (or ``at_frame`` if later): the output shows it
        after the pipeline delay, in step with the audio of that frame.
        """
        if not 0 <= transition_ms <= 10_000:
            raise ValueError(f"transition_ms must be in 0..10000, got {transition_ms}")
        # raises StyleError for unknown names
        code = self.styles.styled(name, self._intensity, self.config.style.intensity_space)
        frames = self.tb.frames_for_ms(transition_ms, "round")
        landing = self.core.switch_style(code, at_frame, frames)
        self._style_name = name
        self._update_rest(landing, frames)
        self.channel.info(EventCode.STYLE, name=name, frame=landing, crossfade_frames=frames)
        return landing

    def set_intensity(self, k: float) -> None:
        """Scale the current style toward neutral (0) or beyond (up to 2); crossfaded."""
        k = float(k)
        if not 0.0 <= k <= MAX_INTENSITY:
            raise ValueError(f"intensity must be in 0..{MAX_INTENSITY}, got {k}")
        self._intensity = k
        frames = self.config.style.crossfade_frames
        landing = self.core.switch_style(self.styles.styled(self._style_name, k, self.config.style.intensity_space),
                                         None, frames)
        self._update_rest(landing, frames)

    def add_style(self, name: str, clip: np.ndarray) -> None:
        """Encode a style clip ``(T, 64)`` (once) and make it available to this session.

        Runs the style encoder synchronously (tens of ms); use :meth:`add_style_async` from the event loop.
        """
        self.styles.add(name, np.asarray(clip, np.float32))
        self.channel.info(EventCode.STYLE_ADDED, name=name)

    async def add_style_async(self, name: str, clip: np.ndarray) -> None:
        """:meth:`add_style` on the model worker, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.runtime.worker, self.styles.add, name, np.asarray(clip, np.float32))
        self.channel.info(EventCode.STYLE_ADDED, name=name)

    def _rest_expression(self) -> np.ndarray | None:
        """Model thread: the rest expression (64,) a rest-aware renderer draws as the photo: the current style's
        silence (silence = the photo's own mouth), or the neutral style's (``style.rest = "neutral"``: styles
        show as changes of the photo). None for other renderers."""
        renderer = self.runtime.renderer
        if not isinstance(renderer, RestAware):
            return None
        return renderer_rest(renderer, self.styles, self.runtime.decoder.idle, self._style_name, self._intensity,
                             self.config.style)

    def _update_rest(self, landing: int, frames: int) -> None:
        """After a style or intensity change: the new style's rest, set by the render lane (between jobs) and
        crossfaded in with the style code (from its landing frame over its crossfade)."""
        if self._started and self._loop is not None:
            self.render.refresh_rest(landing, frames)

    def set_avatar(self, image: np.ndarray) -> None:
        """Animate another photo (uint8 RGB (H, W, 3), already framed); prepared by the render lane."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 32:
            raise ValueError(f"avatar must be a uint8 RGB image (H, W, 3) of at least 32 px, got "
                             f"{image.dtype} {image.shape}")
        if not self._started or self._loop is None:
            raise RuntimeError(f"session {self.session_id} is not started")

        def done(f: asyncio.Task[None]) -> None:
            self._avatar_tasks.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.channel.error(EventCode.AVATAR_FAILED, str(exc))
            else:
                self.channel.info(EventCode.AVATAR)

        # the renderer stream starts over with the new state (the loop keeps only a weak reference to a task)
        task = self._loop.create_task(self.render.prepare(image))
        self._avatar_tasks.add(task)
        task.add_done_callback(done)

    def interrupt(self) -> int | None:
        """Stop speaking now: discard the delayed audio and pending phonemes; the mouth eases shut in 2 frames.

        Returns the first frame affected (None before start).
        """
        at = self._cut()
        if at is not None:
            self.channel.info(EventCode.INTERRUPTED, frame=at)
        return at

    def _cut(self) -> int | None:
        """:meth:`interrupt` without its event (pause reports itself)."""
        if not self._started or self.pacer is None:
            return None
        pacer = self.pacer
        at = pacer.next_video + (1 if pacer.next_video in self.buffer else 0)
        until = self.tb.frame_of_sample(self.timeline.write_pos) + 1
        self.core.interrupt(at, until, self.buffer.last_exp)
        self.buffer.drop_from(at)
        audio_from = max(pacer.next_audio * self.chunk_samples, self.tb.frame_start_sample(at))
        self.timeline.mute(audio_from, self.timeline.write_pos)
        if self._wake is not None:
            self._wake.set()
        return at

    def pause(self) -> None:
        """Interrupt and ignore input (treated as silence) until :meth:`resume`; the face idles."""
        at = self._cut()
        self.timeline.silent = True
        self._paused = True
        self.channel.info(EventCode.PAUSED, frame=at)

    def resume(self) -> None:
        self.timeline.silent = False
        self._paused = False
        self.channel.info(EventCode.RESUMED)

    # ============================================================================================== stats
    def stats(self) -> dict[str, Any]:
        return session_stats(
            session_id=self.session_id, now=self._clock(), counters=self.counters, metrics=self.metrics,
            core=self.core, pacer=self.pacer, audio=self.audio, delay=self.delay,
            control={"style": self._style_name, "intensity": self._intensity, "paused": self._paused},
            errors=self.channel.errors, recognizer_restarts=self.recognition.restarts,
            jobs=self.producer_counters.jobs, renders_reused=self.render.reused,
            decoder=self.render.stats(),
        )


class _LoopSink:
    """The render lane's results, handed from the model thread (or a worker's reader thread) to the event loop."""

    def __init__(self, session: LiveSession) -> None:
        self._s = session

    def decoded(self, job: DecodeJob, exp: np.ndarray, t_dec: float) -> None:
        self._s.channel.post(self._s._on_decoded, job, exp, t_dec)

    def rendered(self, generation: int, items: list[RenderedItem], t_ren: float) -> None:
        self._s.channel.post(self._s._on_rendered, generation, items, t_ren)

    def first_frame_cost(self, seconds: float) -> None:
        self._s.deadlines.record_cost(seconds)


__all__ = ["LiveSession"]
