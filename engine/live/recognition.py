"""The recognizer thread of a live session and its watchdog.

Owners:
- :meth:`RecognitionWorker.feed` runs on whichever thread pushes audio (under the timeline's lock, in timeline
  order): it only enqueues;
- the *recognizer thread* (one per generation) takes the queue, calls ``recognizer.feed`` and posts the stable
  phoneme events to the event loop through ``post``; it writes only ``busy_since``;
- :meth:`RecognitionWorker.check` (the watchdog), :meth:`start` and :meth:`stop` run on the event loop.

A recognizer stuck in one ``feed`` call (a deadlocked native library) is abandoned: its generation number no
longer matches, so it exits without posting if ``feed`` ever returns, and a fresh recognizer (built by the
factory, inside its new thread) is fed from the next sample that starts a video frame.

With ``recognizer.isolate`` (the default for the pocketsphinx backends) the recognizer is a
:class:`~engine.recognizer.process.ProcessRecognizer`: this thread then only waits on a socket (without the GIL)
while a child process scores the audio; the session ends the child when it closes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import numpy as np

from engine.contracts import PhonemeEventLike, Recognizer
from engine.live.events import EventCode
from engine.timing import Timebase

REC_HANG_S = 2.0  # one recognizer call busy this long is stuck: report it, start a fresh recognizer
REC_MAX_RESTARTS = 3  # then give up on recognition for this session (frames keep coming, mouth at rest)

AudioItem = tuple[np.ndarray, int, float]  # (int16 samples, timeline start sample, arrival wall time)
# events, first sample, end sample, arrival of the audio, wall time the events were produced
OnRecognized = Callable[[list[PhonemeEventLike], int, int, float, float], None]


class RecognitionWorker:
    """Feeds the session's timeline samples to a recognizer on its own thread (see module docstring)."""

    def __init__(
        self,
        name: str,
        timebase: Timebase,
        fps: int,
        clock: Callable[[], float],
        *,
        post: Callable[..., None],
        on_recognized: OnRecognized,
        error: Callable[[EventCode, str], None],
        error_threadsafe: Callable[[EventCode, str], None],
        make_recognizer: Callable[[], Recognizer] | None,
    ) -> None:
        self.name = name
        self.tb = timebase
        self.fps = fps
        self._clock = clock
        self._post = post
        self._on_recognized = on_recognized
        self._error = error
        self._error_threadsafe = error_threadsafe
        # a stuck recognizer is replaced by a new one from this factory (None: a caller-supplied recognizer)
        self._make_recognizer = make_recognizer
        # audio for the current recognizer thread; None once recognition was given up (REC_MAX_RESTARTS)
        self.queue: queue.Queue[AudioItem | None] | None = queue.Queue()
        self.generation = 0  # of the current recognizer thread; older (stuck) threads post nothing
        self.busy_since: float | None = None  # clock time the current thread entered feed()
        self.restarts = 0
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ pushing thread
    def feed(self, samples: np.ndarray, start: int) -> None:
        """Timeline ``on_append`` hook: queue a block for the recognizer thread (never blocks)."""
        q = self.queue
        if q is not None:
            q.put((samples, start, self._clock()))

    # ---------------------------------------------------------------------------------------- event loop
    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, make: Callable[[], Recognizer], min_start: int | None) -> None:
        """Build a recognizer with ``make`` (in the new thread: loading a model may take a while) and run it on
        a new queue. ``min_start`` None: the session's recognizer, fed from sample 0. A restarted recognizer
        counts frames from the first sample it is fed, so it is fed from a sample that starts a video frame
        (``min_start`` or later) and its events are shifted to the session's frames.
        """
        q: queue.Queue[AudioItem | None] = queue.Queue()
        self.queue = q
        self.busy_since = None
        self.thread = threading.Thread(
            target=self._run, args=(make, q, self.generation, min_start),
            name=f"recognizer-{self.name}-{self.generation}", daemon=True,
        )
        self.thread.start()

    def check(self, now: float, resume_from: int) -> None:
        """Watchdog: a recognizer stuck in one ``feed`` call is reported and replaced (fed from ``resume_from``,
        the timeline's write position); its queued audio is dropped (those frames get forced, the mouth rests)
        instead of queueing without bound. After :data:`REC_MAX_RESTARTS` recognition is given up."""
        busy = self.busy_since
        if busy is None or now - busy < REC_HANG_S or self.queue is None:
            return
        self.generation += 1  # the stuck thread exits without posting if feed() ever returns
        old, self.queue = self.queue, None
        old.put(None)
        self.busy_since = None
        if self._make_recognizer is None or self.restarts >= REC_MAX_RESTARTS:
            self._error(EventCode.RECOGNIZER, f"recognizer stuck in feed() for {now - busy:.1f} s; lip sync is off "
                        "for the rest of this session (start a new session)")
            return
        self.restarts += 1
        self._error(EventCode.RECOGNIZER, f"recognizer stuck in feed() for {now - busy:.1f} s; restarted it "
                    f"({self.restarts}/{REC_MAX_RESTARTS})")
        self.start(self._make_recognizer, resume_from)

    def stop(self) -> None:
        """Free queued audio and tell the thread to end (a thread inside ``feed`` exits when it returns)."""
        rec_queue, self.queue = self.queue, None
        self.generation += 1
        if rec_queue is not None:
            while True:
                try:
                    rec_queue.get_nowait()
                except queue.Empty:
                    break
            rec_queue.put(None)

    def join(self, timeout: float) -> bool:
        """Wait for the thread (blocking: call it via ``asyncio.to_thread``); True if it ended."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.alive

    # ---------------------------------------------------------------------------------- recognizer thread
    def _run(self, make: Callable[[], Recognizer], q: queue.Queue[AudioItem | None], gen: int,
             min_start: int | None) -> None:
        try:
            rec = make()
        except Exception as exc:  # noqa: BLE001
            self._error_threadsafe(EventCode.RECOGNIZER, f"could not start the recognizer: {type(exc).__name__}: {exc}")
            return
        step = self.tb.frame_group_samples  # a restarted recognizer starts on a frame (1600 = 3 frames)
        origin: int | None = 0 if min_start is None else None  # session sample where this recognizer's input starts
        base_frame = 0
        while gen == self.generation:
            item = q.get()
            if item is None or gen != self.generation:
                break
            samples, start, arrival = item
            if origin is None:
                origin = -(-max(start, min_start or 0) // step) * step
                base_frame = self.tb.frames_complete(origin)
            if start + samples.shape[0] <= origin:
                continue
            if start < origin:
                samples, start = samples[origin - start:], origin
            self.busy_since = self._clock()
            events: list[PhonemeEventLike]
            try:
                events = list(rec.feed(samples))
                if base_frame:
                    events = [(int(f) + base_frame, p) for f, p in events]
            except Exception as exc:  # noqa: BLE001 - a recognizer failure is this session's error only
                events = []
                self._error_threadsafe(EventCode.RECOGNIZER, f"{type(exc).__name__}: {exc}")
            if gen != self.generation:  # replaced while stuck in feed(): the audio went to the new recognizer
                break
            self.busy_since = None
            self._post(self._on_recognized, events, start, start + samples.shape[0], arrival, self._clock())
        with contextlib.suppress(Exception):
            if gen == self.generation:
                rec.flush()
