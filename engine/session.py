"""LiveSession: one live stream - audio in, paced video frames + the same audio delayed out.

Threads and tasks of one session (all created in :meth:`LiveSession.start`, all freed by :meth:`close`):

- ``push_audio`` (any thread: event loop for WebRTC, PortAudio's thread for a microphone) validates and
  normalises the audio and places it on the session's :class:`~engine.pacing.AudioTimeline`;
- a recognizer *thread* feeds the timeline's samples to the recognizer and posts stable phoneme events to
  the event loop;
- a *producer task* on the event loop plans decode jobs (:class:`~engine.stream.StreamCore`) and runs them -
  decode + render - on the runtime's single model worker thread (never on the loop);
- consumers call :meth:`next_video_frame` / :meth:`next_audio_chunk`, which are paced by the media clock:
  frame t and the audio at pts t/30 are both released at ``origin + delay + t/30``.

Latency model: the output runs a constant ``delay`` behind the input (recognizer lag + decoder lookahead +
compute margin, see :meth:`engine.runtime.EngineRuntime.output_delay`). The session never waits for a late
stage, so it never stalls and never drifts:
- a frame whose phonemes are late is decoded anyway shortly before its deadline (*forced*, window padded);
- a frame that can no longer be rendered in time is skipped, and a frame missing at its due time is replaced
  by a repeat of the previous image (*late*) - a machine too slow for 30 fps shows fewer fresh frames, in sync;
- input that stops is replaced by silence on the timeline; a source that (re)starts after a pause is aligned
  with the clock, while audio of a running source is placed contiguously unless it arrives later than the
  output could use it (then it is a gap: see :meth:`LiveSession._gap_tolerance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from engine.motion import IdleMotion, apply_blink, render_with_blink, renderer_accepts_blink
from engine.pacing import AudioTimeline, OutputPacer, StageMetrics, percentile
from engine.renderer import RestAware
from engine.runtime import COMPUTE_MARGIN_S, EngineRuntime, renderer_delay_frames
from engine.sources import AudioFormatError, AudioNormalizer
from engine.stream import DecodeJob, StreamCore, run_decode
from engine.stylebank import MAX_INTENSITY, StyleBank, StyleError
from engine.timing import MediaClock

log = logging.getLogger(__name__)

MIN_GAP_TOLERANCE_S = 0.10  # input later than max(this, delay - one chunk) counts as a gap (stalled source)
IDLE_AFTER_S = 0.25  # no push for this long: the input is idle (no source, or a source that stopped)
IDLE_TOLERANCE_S = 0.04  # an idle timeline is kept this close to the clock with silence
MAX_IDLE_WAIT_S = 0.04  # the producer wakes at least this often (watchdog granularity)
FORCE_SAFETY_S = 0.01
REC_HANG_S = 2.0  # one recognizer call busy this long is stuck: report it, start a fresh recognizer
REC_MAX_RESTARTS = 3  # then give up on recognition for this session (frames keep coming, mouth at rest)
PROBE_AFTER_S = 0.3  # nothing rendered for this long: try the next frame even if the cost estimate says no
MIN_BATCH = 2  # frames per decoder call in steady state (see _produce)
RENDER_CHUNK = 1  # frames rendered per call (each result is posted as soon as it is ready)


class SessionClosed(RuntimeError):
    """The session was closed while (or before) waiting for output."""


@dataclass
class OutputVideoFrame:
    index: int
    pts: Fraction  # seconds on the session's media clock
    image: np.ndarray  # uint8 (H, W, 3)
    stamps: dict[str, float]  # wall times per stage (audio, stable, planned, decoded, rendered, sent)
    exp: np.ndarray | None = None  # float32 (64,) expression shown (None for a repeated frame)
    late: bool = False  # True: the frame was not ready in time and repeats the previous image


@dataclass
class OutputAudioChunk:
    pts: Fraction
    pcm: np.ndarray  # int16 mono 16 kHz: the input audio delayed by the pipeline latency
    sample_rate: int = 16000
    stamps: dict[str, float] = field(default_factory=dict)  # wall times: due, sent


@dataclass
class _Rendered:
    image: np.ndarray
    exp: np.ndarray
    rendered: float


@dataclass
class _SessionCounters:
    frames_sent: int = 0
    late_frames: int = 0  # repeated because the frame was not ready at its due time
    stale_frames: int = 0  # rendered but dropped (deadline passed / interrupt)
    audio_chunks: int = 0
    errors: int = 0
    jobs: int = 0
    recognizer_restarts: int = 0
    video_error: deque[float] = field(default_factory=lambda: deque(maxlen=900))  # sent - due (s)
    audio_error: deque[float] = field(default_factory=lambda: deque(maxlen=900))
    audio_sent: OrderedDict[Fraction, float] = field(default_factory=OrderedDict)  # recent chunk pts -> sent
    av_offset: deque[float] = field(default_factory=lambda: deque(maxlen=900))  # video - audio sent, same pts


class LiveSession:
    """One live stream (see module docstring). Create with :meth:`EngineRuntime.new_session`."""

    def __init__(
        self,
        runtime: EngineRuntime,
        session_id: str,
        *,
        recognizer: Any | None = None,
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
        # a stuck recognizer is replaced by a new one of the runtime's (not possible for a caller-supplied one)
        self._make_recognizer: Callable[[], Any] | None = runtime.make_recognizer if recognizer is None else None
        self.styles = StyleBank(runtime.decoder.encode_style, neutral=runtime.styles.neutral)
        for name in runtime.styles.names():
            self.styles.add_code(name, runtime.styles.get(name))
        self._style_name = cfg.style.default
        self._intensity = float(cfg.style.intensity)
        self.core = StreamCore(
            lookahead=cfg.decoder.lookahead,
            style=self.styles.intensity(self._style_name, self._intensity),
            pad=cfg.decoder.pad,
            crossfade_frames=cfg.style.crossfade_frames,
            max_batch=cfg.decoder.max_batch,
        )
        self.delay = runtime.output_delay(self._recognizer)
        self.render_delay = renderer_delay_frames(runtime.renderer)
        self.motion = motion or IdleMotion(seed=zlib.crc32(session_id.encode()), fps=cfg.fps,
                                           base_pose=runtime.pose)
        self.compact_silence = compact_silence
        self._last_push = float("-inf")  # wall time of the last push_audio (push lock)
        self._last_job_end = 0.0  # wall time the last decode/render job finished (start() sets the start time)
        self._video_sent_pts: dict[Fraction, float] = {}  # video pts waiting for their audio chunk (A/V)
        # frame -> (expression, forced) of every decoded frame, for tests and benchmarks (unbounded: opt-in)
        self.expressions: dict[int, tuple[np.ndarray, bool]] | None = {} if record_expressions else None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self.metrics = StageMetrics()
        self.counters = _SessionCounters()
        self._normalizer = AudioNormalizer(self.tb.sample_rate)
        self._push_lock = threading.Lock()
        # audio for the current recognizer thread; None once recognition was given up (REC_MAX_RESTARTS)
        self._rec_queue: queue.Queue[tuple[np.ndarray, int, float] | None] | None = queue.Queue()
        self._rec_gen = 0  # generation of the current recognizer thread; older (stuck) threads post nothing
        self._rec_busy_since: float | None = None  # clock time the current thread entered feed()
        self.timeline = AudioTimeline(
            self.tb,
            on_append=self._on_timeline_append,
            max_ahead_s=cfg.audio.max_input_queue_s,
            gap_tolerance_s=self._gap_tolerance(),
        )
        self._video_out: OrderedDict[int, _Rendered] = OrderedDict()
        self._last_image: np.ndarray = np.ascontiguousarray(runtime.avatar)
        self._last_exp: np.ndarray | None = None
        self._avatar_state: Any = None
        self._render_next: int | None = None  # worker-confined: next frame the renderer stream expects
        self._render_base = 0  # worker-confined
        self._render_count = 0  # worker-confined
        self._worker_exp: OrderedDict[int, np.ndarray] = OrderedDict()  # worker-confined: frame -> exp fed
        self._last_render: tuple[bytes | None, np.ndarray] | None = None  # worker-confined: (inputs, images)
        self.renders_reused = 0
        self._loop_thread: threading.Thread | None = None
        # job submitted -> its first frame rendered (s), recent jobs; seeded with the runtime's measurement
        self._first_costs: deque[float] = deque([runtime.frame_compute_s or COMPUTE_MARGIN_S / 2], maxlen=30)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closed_event: asyncio.Event | None = None
        self._producer: asyncio.Task[None] | None = None
        self._rec_thread: threading.Thread | None = None
        self.clock: MediaClock | None = None
        self.pacer: OutputPacer | None = None
        self._started = False
        self._closed = False
        self._paused = False

    # =========================================================================================== lifecycle
    async def start(self) -> None:
        """Prepare the avatar on the model worker, start the recognizer thread and the producer task."""
        if self._started:
            return
        if self._closed:
            raise SessionClosed(f"session {self.session_id} is closed")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.current_thread()
        self._wake = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._avatar_state = await self._loop.run_in_executor(self.runtime.worker, self._prepare, self.runtime.avatar)
        self.clock = MediaClock(origin=self._clock(), delay=self.delay)
        self._last_job_end = self.clock.origin
        self.pacer = OutputPacer(self.clock, self.tb, self.chunk_samples)
        self._start_recognizer_thread(lambda: self._recognizer, None)
        self._producer = asyncio.create_task(self._produce(), name=f"producer-{self.session_id}")
        self._started = True
        self._info("started", delay_ms=float(self.delay) * 1000, lookahead=self.core.lookahead)

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
        rec_queue, self._rec_queue = self._rec_queue, None
        self._rec_gen += 1  # a thread still inside feed() exits without posting when it returns
        if rec_queue is not None:
            while True:  # free queued audio
                try:
                    rec_queue.get_nowait()
                except queue.Empty:
                    break
            rec_queue.put(None)
        if self._rec_thread is not None:
            await asyncio.to_thread(self._rec_thread.join, 5.0)
            if self._rec_thread.is_alive():
                log.warning("session %s: recognizer thread did not stop within 5 s", self.session_id)
        self._video_out.clear()
        self.runtime.forget(self.session_id)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threads_alive(self) -> bool:
        """Whether this session still owns a running thread or task (for tests of :meth:`close`)."""
        rec = self._rec_thread is not None and self._rec_thread.is_alive()
        prod = self._producer is not None and not self._producer.done()
        return rec or prod

    # =============================================================================================== input
    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Accept audio of any rate/channels/dtype (thread-safe). Invalid audio raises ``ValueError``."""
        if self._closed:
            return
        if not self._started or self.clock is None:
            raise RuntimeError(f"session {self.session_id} is not started")
        now = self._clock()
        with self._push_lock:
            before = (self._normalizer.stats.nonfinite, self._normalizer.stats.clipped)
            pcm16 = self._normalizer(pcm, sample_rate)
            st = self._normalizer.stats
            if st.nonfinite > before[0]:
                self._error_threadsafe("bad_audio", f"{st.nonfinite - before[0]} NaN/inf samples replaced by 0")
            if pcm16.shape[0] == 0:
                return
            media_now = self.clock.media_time(now)
            if now - self._last_push >= IDLE_AFTER_S:
                # a source (re)starts: nothing arrived for a while, so the time before this block was silence;
                # align the block with the clock instead of appending it behind real time
                self.timeline.fill_until(self.tb.sample_at(max(media_now, Fraction(0))) - pcm16.shape[0])
            self._last_push = now
            if self.compact_silence:
                pcm16 = self._compact(pcm16, media_now)
            result = self.timeline.push(pcm16, media_now)
        if result.dropped:
            self._error_threadsafe("input_overflow", f"{result.dropped} samples dropped: audio arrives faster "
                                   "than real time")

    def _compact(self, pcm16: np.ndarray, media_now: Fraction) -> np.ndarray:
        """Drop silent input while the timeline runs ahead of real time (undoes latency added by stalls)."""
        ahead = self.timeline.write_pos + pcm16.shape[0] - self.tb.sample_at(max(media_now, Fraction(0)))
        slack = int(0.12 * self.tb.sample_rate)
        if ahead <= slack:
            return pcm16
        if np.abs(pcm16.astype(np.int32)).max(initial=0) > 100:  # not silence (-50 dBFS): keep it
            return pcm16
        keep = max(0, pcm16.shape[0] - (ahead - slack))
        return pcm16[:keep]

    def _on_timeline_append(self, samples: np.ndarray, start: int) -> None:
        # called under the timeline lock, in timeline order, from the pushing thread
        q = self._rec_queue
        if q is not None:
            q.put((samples, start, self._clock()))

    # ========================================================================================== recognizer
    def _start_recognizer_thread(self, make: Callable[[], Any], min_start: int | None) -> None:
        """Build a recognizer with ``make`` (in the new thread: loading a model may take a while) and run it on
        a new queue. ``min_start`` None: the session's recognizer, fed from sample 0. A restarted recognizer
        counts frames from the first sample it is fed, so it is fed from a sample that starts a video frame
        (``min_start`` or later) and its events are shifted to the session's frames.
        """
        q: queue.Queue[tuple[np.ndarray, int, float] | None] = queue.Queue()
        self._rec_queue = q
        self._rec_busy_since = None
        self._rec_thread = threading.Thread(
            target=self._recognizer_loop, args=(make, q, self._rec_gen, min_start),
            name=f"recognizer-{self.session_id}-{self._rec_gen}", daemon=True,
        )
        self._rec_thread.start()

    def _recognizer_loop(self, make: Callable[[], Any], q: queue.Queue, gen: int, min_start: int | None) -> None:
        try:
            rec = make()
        except Exception as exc:  # noqa: BLE001
            self._error_threadsafe("recognizer", f"could not start the recognizer: {type(exc).__name__}: {exc}")
            return
        # samples of the shortest whole number of frames (1600 = 3 frames at 16 kHz / 30 fps)
        step = self.tb.sample_rate // math.gcd(self.tb.sample_rate, self.config.fps)
        origin: int | None = 0 if min_start is None else None  # session sample where this recognizer's input starts
        base_frame = 0
        while gen == self._rec_gen:
            item = q.get()
            if item is None or gen != self._rec_gen:
                break
            samples, start, arrival = item
            if origin is None:
                origin = -(-max(start, min_start or 0) // step) * step
                base_frame = self.tb.frames_complete(origin)
            if start + samples.shape[0] <= origin:
                continue
            if start < origin:
                samples, start = samples[origin - start:], origin
            self._rec_busy_since = self._clock()
            try:
                events = list(rec.feed(samples))
                if base_frame:
                    events = [(int(f) + base_frame, p) for f, p in events]
            except Exception as exc:  # noqa: BLE001 - a recognizer failure is this session's error only
                events = []
                self._error_threadsafe("recognizer", f"{type(exc).__name__}: {exc}")
            if gen != self._rec_gen:  # replaced while stuck in feed(): the audio went to the new recognizer
                break
            self._rec_busy_since = None
            self._post(self._on_recognized, events, start, start + samples.shape[0], arrival, self._clock())
        with contextlib.suppress(Exception):
            if gen == self._rec_gen:
                rec.flush()

    def _check_recognizer(self, now: float) -> None:
        """Watchdog: a recognizer stuck in one ``feed`` call (a deadlocked native library) is reported and
        replaced; its queued audio is dropped (those frames get forced, the mouth rests) instead of queueing
        without bound. After :data:`REC_MAX_RESTARTS` recognition is given up for this session."""
        busy = self._rec_busy_since
        if busy is None or now - busy < REC_HANG_S or self._rec_queue is None:
            return
        self._rec_gen += 1  # the stuck thread exits without posting if feed() ever returns
        old, self._rec_queue = self._rec_queue, None
        old.put(None)
        self._rec_busy_since = None
        if self._make_recognizer is None or self.counters.recognizer_restarts >= REC_MAX_RESTARTS:
            self._error("recognizer", f"recognizer stuck in feed() for {now - busy:.1f} s; lip sync is off for the "
                        "rest of this session (start a new session)")
            return
        self.counters.recognizer_restarts += 1
        self._error("recognizer", f"recognizer stuck in feed() for {now - busy:.1f} s; restarted it "
                    f"({self.counters.recognizer_restarts}/{REC_MAX_RESTARTS})")
        self._start_recognizer_thread(self._make_recognizer, self.timeline.write_pos)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(fn, *args)

    def _on_recognized(self, events: list[Any], start: int, end: int, arrival: float, now: float) -> None:
        if self._closed:
            return
        self.core.mark_audio(self.tb.frames_complete(start), self.tb.frames_complete(end), arrival)
        try:
            self.core.on_events(events, now)
        except (ValueError, TypeError) as exc:
            self._error("recognizer", f"bad phoneme event: {exc}")
        if self._wake is not None:
            self._wake.set()

    # ============================================================================================ producer
    async def _produce(self) -> None:
        assert self._loop is not None and self.pacer is not None and self.clock is not None and self._wake
        while not self._closed:
            now = self._clock()
            self._watchdog(now)
            # frames that cannot be rendered before their output time are useless: skip them instead of
            # rendering them late (a machine too slow for 30 fps then shows fewer fresh frames, in sync)
            hopeless = self._skip_horizon(now)
            if now + hopeless >= self.clock.due(self.tb.frame_pts(0)):
                self.core.skip_to(self.pacer.frame_deadline(now, hopeless))
            horizon = self._force_horizon()
            force_until = self.pacer.frame_deadline(now, horizon)
            # Batch: a decoder call costs nearly the same for 1 or 2 frames, so a lone ready frame waits for
            # the next one - unless waiting one more frame period would make it late.
            job = None
            pending = self.core.scheduler.pending(self.core.ring)
            urgent = self.core.next_frame < self.pacer.frame_deadline(now, horizon + float(self.tb.frame_pts(1)))
            if pending >= MIN_BATCH or urgent or self.core.next_frame < force_until:
                job = self.core.plan(now, force_until=force_until)
            if job is None:
                self._wake.clear()
                due = self.clock.due(self.tb.frame_pts(self.core.next_frame))
                wait = due - horizon - float(self.tb.frame_pts(1)) - now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(max(wait, 0.002), MAX_IDLE_WAIT_S))
                continue
            await self._run_job(job)

    def _force_horizon(self) -> float:
        """How long before its due time a frame is decoded even without its lookahead (expected compute)."""
        # at most 3/4 of the budgeted margin: a frame whose phonemes arrive on time is never forced
        return min(0.75 * self.runtime.compute_margin(), FORCE_SAFETY_S + self._est_first())

    def _skip_horizon(self, now: float) -> float:
        """Frames due sooner than this cannot be rendered in time (expected cost of one frame).

        When nothing has been rendered for a while the estimate may be stale (one slow spell): then only
        frames already due are skipped, so the next job probes the real cost and rendering resumes.
        """
        if now - self._last_job_end > PROBE_AFTER_S:
            return 0.0
        return self._est_first()

    def _est_first(self) -> float:
        """80th percentile of recent job costs (submitted -> first frame rendered)."""
        costs = sorted(self._first_costs)
        return costs[int(0.8 * (len(costs) - 1))]

    def _gap_tolerance(self) -> float:
        """How late input may arrive and still be placed contiguously.

        Audio later than the output delay (minus one chunk) would be needed by the output before it arrives,
        so it is treated as a gap: zeros fill the timeline and the late audio follows them. Anything less
        late is placed where it belongs (jitter, a busy machine), keeping the output bit-exact.
        """
        return max(MIN_GAP_TOLERANCE_S, float(self.delay) - self.config.audio.chunk_ms / 1000.0)

    def _watchdog(self, now: float) -> None:
        """Keep the recognizer fed with silence when the input stalls (no source, network hiccup)."""
        assert self.clock is not None
        self._check_recognizer(now)
        # no input for a while: keep the timeline at the clock (minus a little), ready for a source to start;
        # while a source streams, only input later than the output can use counts as a gap
        idle = now - self._last_push >= IDLE_AFTER_S
        tolerance = IDLE_TOLERANCE_S if idle else self._gap_tolerance()
        behind = self.clock.media_time(now) - Fraction(tolerance).limit_denominator(10000)
        if behind > 0:
            self.timeline.fill_until(self.tb.sample_at(behind))

    async def _run_job(self, job: DecodeJob) -> None:
        assert self._loop is not None
        frames = job.frames
        pose = self.motion.poses(frames)
        blink = self.motion.blink_amounts(frames)
        try:
            await self._loop.run_in_executor(self.runtime.worker, self._work, job, pose, blink, self._clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stage failed for this session only; keep going
            log.exception("session %s: decode/render failed", self.session_id)
            self._error("pipeline", f"{type(exc).__name__}: {exc}")
            self._render_next = None  # restart the renderer stream on the next job
            return
        self.counters.jobs += 1
        self._last_job_end = self._clock()

    def _on_decoded(self, job: DecodeJob, exp: np.ndarray, t_dec: float) -> None:
        if self.core.complete(job, exp, t_dec) is not None and self.expressions is not None:
            for f, e, forced in zip(job.frames.tolist(), exp, job.forced.tolist(), strict=True):
                self.expressions[f] = (e, forced)

    def _on_rendered(self, generation: int, items: list[tuple[int, np.ndarray, np.ndarray]], t_ren: float) -> None:
        if generation != self.core.generation or self._closed:
            self.counters.stale_frames += len(items)
            return
        first_unsent = self.pacer.next_video if self.pacer is not None else 0
        for frame, image, e in items:
            if frame < first_unsent:  # its time has passed while rendering
                self.counters.stale_frames += 1
                continue
            st = self.core.peek_stamps(frame)
            if st is not None:
                st.rendered = t_ren
            self._video_out[frame] = _Rendered(image, e, t_ren)
        limit = 4 * self.config.decoder.max_batch + 64
        while len(self._video_out) > limit:
            self._video_out.popitem(last=False)
            self.counters.stale_frames += 1

    def _work(self, job: DecodeJob, pose: np.ndarray, blink: np.ndarray, submitted: float) -> None:
        """Model worker: decode one job, then render it in small chunks, posting each result to the loop.

        Rendering in chunks of ``RENDER_CHUNK`` frames gets the first frames of a catch-up batch out while
        the rest still render. A renderer that lags by k frames returns, for the frames fed, the images of
        the frames k earlier; its stream restarts (``reset``) whenever the frames fed are not contiguous
        (skip, interrupt, avatar change).
        """
        renderer = self.runtime.renderer
        exp = run_decode(self.runtime.decoder.decode, job)
        self._post(self._on_decoded, job, exp, self._clock())
        frames = job.frames.tolist()
        if self._render_next is None or frames[0] != self._render_next:
            if self._render_next is not None:
                renderer.reset(self._avatar_state)
            self._render_base = frames[0]
            self._render_count = 0
            self._worker_exp.clear()
            self._last_render = None
        for f, e in zip(frames, exp, strict=True):
            self._worker_exp[f] = e
        self._render_next = None  # in case rendering fails half-way: restart the stream next time
        for i in range(0, len(frames), RENDER_CHUNK):
            sl = slice(i, i + RENDER_CHUNK)
            # a still face (silence, no blink) renders to the same image: reuse it (delay-free renderers only)
            key = exp[sl].tobytes() + pose[sl].tobytes() + blink[sl].tobytes() if self.render_delay == 0 else None
            reused = key is not None and self._last_render is not None and self._last_render[0] == key
            if reused:
                images = self._last_render[1]  # type: ignore[index]
                self.renders_reused += 1
            else:
                images = render_with_blink(renderer, self._avatar_state, exp[sl], pose[sl], blink[sl])
                self._last_render = (key, images) if key is not None else None
            t_ren = self._clock()
            out: list[tuple[int, np.ndarray, np.ndarray]] = []
            for j in range(images.shape[0]):
                frame = self._render_base + self._render_count + j - self.render_delay
                if frame >= self._render_base:  # the first k outputs of a restarted stream are warm-up holds
                    out.append((frame, images[j], self._worker_exp[frame]))
            self._render_count += images.shape[0]
            if out:
                self._post(self._on_rendered, job.generation, out, t_ren)
            if i == 0 and not reused:
                # recent costs; the loop thread reads a high percentile for its deadlines (silence is cheap
                # and must not hide what speech frames cost, one hiccup must not dominate either)
                self._first_costs.append(t_ren - submitted)
        self._render_next = frames[-1] + 1
        while len(self._worker_exp) > self.render_delay + 2 * self.config.decoder.max_batch + 2:
            self._worker_exp.popitem(last=False)

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

    async def next_video_frame(self) -> OutputVideoFrame:
        """The next frame, released at its due time (``origin + delay + pts``); idle frames when silent."""
        if not self._started or self.pacer is None:
            raise RuntimeError(f"session {self.session_id} is not started")
        pacer = self.pacer
        pacer.catch_up_video(self._clock())
        t = pacer.next_video
        due = pacer.video_due(t)
        await self._sleep_until(due)
        pacer.next_video = t + 1
        item = self._video_out.pop(t, None)
        while self._video_out and next(iter(self._video_out)) < t:  # older frames can no longer be shown
            self._video_out.popitem(last=False)
            self.counters.stale_frames += 1
        now = self._clock()
        st = self.core.peek_stamps(t)
        stamps = st.as_dict() if st is not None else {}
        stamps["sent"] = now
        stamps["due"] = due
        if st is not None:
            st.sent = now
        self.counters.frames_sent += 1
        self.counters.video_error.append(now - due)
        self._pair_av(pacer.video_pts(t), video_sent=now)
        if item is None:
            self.counters.late_frames += 1
            stamps["late"] = 1.0
            self.metrics.add({k: v for k, v in stamps.items() if k in ("audio", "sent")} | {"late": 1.0})
            return OutputVideoFrame(t, pacer.video_pts(t), self._last_image, stamps, None, True)
        self._last_image = item.image
        self._last_exp = item.exp
        self.metrics.add(stamps)
        return OutputVideoFrame(t, pacer.video_pts(t), item.image, stamps, item.exp, False)

    async def next_audio_chunk(self) -> OutputAudioChunk:
        """The next 20 ms of output audio (the input delayed), released at its due time."""
        if not self._started or self.pacer is None:
            raise RuntimeError(f"session {self.session_id} is not started")
        pacer = self.pacer
        pacer.catch_up_audio(self._clock())
        k = pacer.next_audio
        due = pacer.audio_due(k)
        await self._sleep_until(due)
        pacer.next_audio = k + 1
        start = k * self.chunk_samples
        self.timeline.fill_until(start + self.chunk_samples)  # a stalled input is silence, also for the lips
        pcm = self.timeline.read(start, self.chunk_samples)
        self.counters.audio_chunks += 1
        sent = self._clock()
        self.counters.audio_error.append(sent - due)
        self._pair_av(pacer.audio_pts(k), audio_sent=sent)
        return OutputAudioChunk(pacer.audio_pts(k), pcm, self.tb.sample_rate, {"due": due, "sent": sent})

    def _pair_av(self, pts: Fraction, video_sent: float | None = None, audio_sent: float | None = None) -> None:
        """A/V offset: every 100 ms a video frame and an audio chunk share a pts; compare their send times."""
        c = self.counters
        if audio_sent is not None:
            c.audio_sent[pts] = audio_sent
            while len(c.audio_sent) > 200:
                c.audio_sent.popitem(last=False)
            if pts in self._video_sent_pts:
                c.av_offset.append(self._video_sent_pts.pop(pts) - audio_sent)
        elif video_sent is not None:
            if pts in c.audio_sent:
                c.av_offset.append(video_sent - c.audio_sent.pop(pts))
            elif pts.denominator in (1, 2, 5, 10):  # a multiple of 100 ms: its audio chunk comes later
                self._video_sent_pts[pts] = video_sent
                while len(self._video_sent_pts) > 100:
                    self._video_sent_pts.pop(next(iter(self._video_sent_pts)))

    # ============================================================================================ control
    def list_styles(self) -> list[str]:
        return self.styles.names()

    @property
    def style(self) -> str:
        return self._style_name

    def set_style(self, name: str, transition_ms: int = 250, at_frame: int | None = None) -> int:
        """Switch speaking style with a crossfade of ``transition_ms``; returns the frame where it lands.

        The switch lands on the next frame not yet decoded (or ``at_frame`` if later): the output shows it
        after the pipeline delay, in step with the audio of that frame.
        """
        if not 0 <= transition_ms <= 10_000:
            raise ValueError(f"transition_ms must be in 0..10000, got {transition_ms}")
        code = self.styles.intensity(name, self._intensity)  # raises StyleError for unknown names
        frames = self.tb.frames_for_ms(transition_ms, "round")
        landing = self.core.switch_style(code, at_frame, frames)
        self._style_name = name
        self._update_rest()
        self._info("style", name=name, frame=landing, crossfade_frames=frames)
        return landing

    def set_intensity(self, k: float) -> None:
        """Scale the current style toward neutral (0) or beyond (up to 2); crossfaded."""
        k = float(k)
        if not 0.0 <= k <= MAX_INTENSITY:
            raise ValueError(f"intensity must be in 0..{MAX_INTENSITY}, got {k}")
        self._intensity = k
        self.core.switch_style(self.styles.intensity(self._style_name, k), None, self.config.style.crossfade_frames)
        self._update_rest()

    def add_style(self, name: str, clip: np.ndarray) -> None:
        """Encode a style clip ``(T, 64)`` (once) and make it available to this session.

        Runs the style encoder synchronously (tens of ms); use :meth:`add_style_async` from the event loop.
        """
        self.styles.add(name, np.asarray(clip, np.float32))
        self._info("style_added", name=name)

    async def add_style_async(self, name: str, clip: np.ndarray) -> None:
        """:meth:`add_style` on the model worker, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.runtime.worker, self.styles.add, name, np.asarray(clip, np.float32))
        self._info("style_added", name=name)

    def set_avatar(self, image: np.ndarray) -> None:
        """Animate another photo (uint8 RGB (H, W, 3), already framed); prepared on the model worker."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 32:
            raise ValueError(f"avatar must be a uint8 RGB image (H, W, 3) of at least 32 px, got "
                             f"{image.dtype} {image.shape}")
        if not self._started or self._loop is None:
            raise RuntimeError(f"session {self.session_id} is not started")

        def swap() -> None:
            self._avatar_state = self._prepare(image)
            self._render_next = None  # the renderer stream starts over with the new state

        fut = self._loop.run_in_executor(self.runtime.worker, swap)
        fut.add_done_callback(lambda f: self._error("avatar", str(f.exception())) if f.exception() else
                              self._info("avatar"))

    def _prepare(self, image: np.ndarray) -> Any:
        """Model worker: prepare an avatar; a rest-aware renderer shows the style's silence as the photo."""
        state = self.runtime.renderer.prepare(image)
        self._set_rest(state)
        return state

    def _set_rest(self, state: Any) -> None:
        """Model worker: render relative to the current style's silence (silence = the photo's own mouth)."""
        renderer = self.runtime.renderer
        if isinstance(renderer, RestAware) and state is not None:
            code = self.styles.intensity(self._style_name, self._intensity)
            renderer.set_rest(state, self.runtime.decoder.idle(code))

    def _update_rest(self) -> None:
        if self._started and self._loop is not None:
            self._loop.run_in_executor(self.runtime.worker, lambda: self._set_rest(self._avatar_state))

    def interrupt(self) -> int | None:
        """Stop speaking now: discard the delayed audio and pending phonemes; the mouth eases shut in 2 frames.

        Returns the first frame affected (None before start).
        """
        if not self._started or self.pacer is None:
            return None
        pacer = self.pacer
        at = pacer.next_video + (1 if pacer.next_video in self._video_out else 0)
        until = self.tb.frame_of_sample(self.timeline.write_pos) + 1
        shown = self._last_exp if self._last_exp is not None else None
        self.core.interrupt(at, until, shown)
        for f in [f for f in self._video_out if f >= at]:
            del self._video_out[f]
            self.counters.stale_frames += 1
        audio_from = max(pacer.next_audio * self.chunk_samples, self.tb.frame_start_sample(at))
        self.timeline.mute(audio_from, self.timeline.write_pos)
        if self._wake is not None:
            self._wake.set()
        self._info("interrupted", frame=at)
        return at

    def pause(self) -> None:
        """Interrupt and ignore input (treated as silence) until :meth:`resume`; the face idles."""
        self.interrupt()
        self.timeline.silent = True
        self._paused = True

    def resume(self) -> None:
        self.timeline.silent = False
        self._paused = False

    # ============================================================================================== stats
    def stats(self) -> dict[str, Any]:
        now = self._clock()
        c = self.counters
        v = np.asarray(c.video_error, np.float64)
        a = np.asarray(c.audio_error, np.float64)
        o = np.asarray(c.av_offset, np.float64) * 1000.0
        av = None
        if o.size:  # video sent - audio sent for the same pts (ms): the lip-sync error the client receives
            av = {"p50": float(np.median(o)), "p95": float(np.percentile(np.abs(o), 95)),
                  "max_abs": float(np.abs(o).max()), "n": int(o.size)}
        n = self._normalizer.stats
        sr = self.tb.sample_rate
        return {
            "session": self.session_id,
            "fps": self.metrics.fps(now),
            "frames_sent": c.frames_sent,
            "late_frames": c.late_frames,
            "fresh_frames": c.frames_sent - c.late_frames,
            "dropped_frames": self.core.scheduler.skipped_frames + (self.pacer.skipped_video if self.pacer else 0),
            "stale_frames": c.stale_frames,
            "audio_chunks": c.audio_chunks,
            "delay_ms": float(self.delay) * 1000.0,
            "lookahead": self.core.lookahead,
            "latency_ms": self.metrics.latency(),
            "av_offset_ms": av,
            "send_error_ms": {"video_p95": _p(v, 95), "audio_p95": _p(a, 95)},
            "input": {
                "received_ms": n.samples_out * 1000.0 / sr,
                "gap_ms": self.timeline.gap_samples * 1000.0 / sr,
                "dropped_ms": self.timeline.dropped_samples * 1000.0 / sr,
                "nonfinite_samples": n.nonfinite,
                "clipped_samples": n.clipped,
                "rates": sorted(n.rates),
            },
            "core": self.core.stats(),
            "decoder": self.runtime.decoder.stats(),
            "style": self._style_name,
            "intensity": self._intensity,
            "paused": self._paused,
            "errors": c.errors,
            "recognizer_restarts": c.recognizer_restarts,
            "jobs": c.jobs,
            "renders_reused": self.renders_reused,
        }

    # ============================================================================================= events
    def _emit(self, event: dict[str, Any]) -> None:
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:  # nobody is reading: keep the newest
            with contextlib.suppress(asyncio.QueueEmpty):
                self.events.get_nowait()
            self.events.put_nowait(event)

    def _error(self, code: str, message: str) -> None:
        self.counters.errors += 1
        self._emit({"type": "error", "code": code, "message": message, "session": self.session_id})

    def _error_threadsafe(self, code: str, message: str) -> None:
        if self._loop_thread is threading.current_thread():
            self._error(code, message)
        else:
            self._post(self._error, code, message)

    def _info(self, code: str, **data: Any) -> None:
        self._emit({"type": "info", "code": code, "session": self.session_id, **data})


def _p(arr: np.ndarray, q: float) -> float | None:
    v = percentile(arr.tolist(), q)
    return None if v is None else v * 1000.0


# kept for callers written against the first version (engine/offline.py): use engine.motion's public names
_accepts_blink = renderer_accepts_blink
_apply_blink = apply_blink


__all__ = ["LiveSession", "OutputVideoFrame", "OutputAudioChunk", "SessionClosed", "AudioFormatError",
           "StyleError"]
