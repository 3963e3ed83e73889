"""StreamCore: the sans-I/O heart of one live stream - phoneme events in, decode jobs out.

It owns the per-stream state that the async session must not duplicate: the phoneme ring, the window
scheduler, the style schedule, interrupt easing and the per-frame stage stamps. It does no I/O, starts no
thread and never sleeps, so every policy (lookahead, forcing, style landing frames, easing, skipping when
behind) is unit-tested by calling methods with explicit times.

Life of a frame t:
1. recognizer events make phonemes stable (:meth:`StreamCore.on_events`, stamp ``stable``);
2. :meth:`StreamCore.plan` puts t into a :class:`DecodeJob` once t+L is stable - or earlier, *forced*, when
   its output deadline comes (the session passes ``force_until``);
3. the job runs on the model worker (:func:`run_decode` - a pure function of the job);
4. :meth:`StreamCore.complete` records the result (stamp ``decoded``) and returns the expressions.

A job carries a ``generation``; :meth:`StreamCore.interrupt` bumps it so results of jobs planned before the
interrupt are discarded, and rewinds the scheduler to the interrupt frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from engine.ring import PhonemeRing
from engine.scheduler import WindowScheduler
from engine.stylebank import StyleSchedule
from models.phonemes import SIL

STAGES = ("audio", "stable", "planned", "decoded", "rendered", "sent")


@dataclass
class DecodeJob:
    """Work for the model worker: decode ``frames`` and blend the first ones toward an interrupted face."""

    generation: int
    frames: np.ndarray  # int64 (N,)
    windows: np.ndarray  # int64 (N, 11)
    style: np.ndarray  # float32 (C,) when constant over the job, else (N, C)
    forced: np.ndarray  # bool (N,)
    ease_from: np.ndarray | None = None  # float32 (64,): expression shown when interrupted
    ease_weight: np.ndarray | None = None  # float32 (N,): weight of the decoded output (1 = no easing)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def run_decode(decode: Callable[[np.ndarray, np.ndarray], np.ndarray], job: DecodeJob) -> np.ndarray:
    """Decode a job (model worker side): expressions float32 ``(N, 64)`` with interrupt easing applied."""
    exp = decode(job.windows, job.style)
    if job.ease_from is not None and job.ease_weight is not None:
        w = job.ease_weight[:, None].astype(np.float32)
        exp = (job.ease_from[None, :] * (1.0 - w) + exp * w).astype(np.float32)
    return exp


@dataclass
class FrameStamps:
    """Wall-clock times (seconds) at which one frame passed each stage; None = not (yet) passed."""

    index: int
    audio: float | None = None  # its audio was fully captured (input side)
    stable: float | None = None  # its lookahead phonemes were stable (or it was forced)
    planned: float | None = None
    decoded: float | None = None
    rendered: float | None = None
    sent: float | None = None
    forced: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        out = {s: getattr(self, s) for s in STAGES if getattr(self, s) is not None}
        if self.forced:
            out["forced"] = 1.0
        out.update(self.extra)
        return out


class StreamCore:
    """Per-stream decode planning (see module docstring). Times are wall seconds supplied by the caller."""

    def __init__(
        self,
        *,
        lookahead: int,
        style: np.ndarray,
        pad: str = "sil",
        crossfade_frames: int = 8,
        ease_frames: int = 2,
        max_batch: int = 16,
        ring_capacity: int = 1024,
        history: int = 256,
    ) -> None:
        self.ring = PhonemeRing(capacity=ring_capacity, overrun="drop")
        self.scheduler = WindowScheduler(lookahead, pad=pad)
        self.styles = StyleSchedule(style, crossfade_frames)
        self.ease_frames = max(1, ease_frames)
        self.max_batch = max_batch
        self.generation = 0
        self._history = history
        self._stamps: OrderedDict[int, FrameStamps] = OrderedDict()
        self._exp: OrderedDict[int, np.ndarray] = OrderedDict()  # recent decoded expressions by frame
        self._ease: tuple[int, np.ndarray] | None = None  # (first frame, expression to ease from)
        self.interrupts = 0
        self._barrier: int | None = None  # frames >= barrier ignore phonemes before it (interrupt)

    @property
    def lookahead(self) -> int:
        return self.scheduler.lookahead

    @property
    def next_frame(self) -> int:
        """The next frame that will be decoded."""
        return self.scheduler.next_frame

    # -------------------------------------------------------------------------------------------- stamps
    def stamps(self, frame: int) -> FrameStamps:
        st = self._stamps.get(frame)
        if st is None:
            st = self._stamps[frame] = FrameStamps(frame)
            while len(self._stamps) > self._history:
                self._stamps.popitem(last=False)
        return st

    def peek_stamps(self, frame: int) -> FrameStamps | None:
        return self._stamps.get(frame)

    def mark_audio(self, first: int, stop: int, now: float) -> None:
        """Frames ``[first, stop)`` have their audio fully captured at ``now``."""
        for f in range(max(first, stop - self._history), stop):
            st = self.stamps(f)
            if st.audio is None:
                st.audio = now

    # --------------------------------------------------------------------------------------------- input
    def on_events(self, events: Iterable[object], now: float) -> int:
        """Recognizer events ``(frame, phoneme)`` became stable at ``now``. Returns how many were written."""
        before = self.ring.stable_end
        n = self.ring.extend(events)
        after = self.ring.stable_end
        # frame t's lookahead is stable once t + L < stable_end
        for t in range(max(before - self.lookahead, self.next_frame, after - self._history), after - self.lookahead):
            st = self.stamps(t)
            if st.stable is None:
                st.stable = now
        return n

    def end(self, end_frame: int | None = None) -> None:
        """The input ended (offline / flush): frames after ``end_frame`` are SIL and every frame is ready."""
        self.ring.close(end_frame)

    # ------------------------------------------------------------------------------------------ planning
    def plan(self, now: float, force_until: int | None = None, max_frames: int | None = None) -> DecodeJob | None:
        """The next job: ready frames (and forced ones before ``force_until``), or None if nothing to do."""
        batch = self.scheduler.take(self.ring, max_frames or self.max_batch, force_until)
        if not len(batch):
            return None
        frames = batch.frames
        first, last = int(frames[0]), int(frames[-1])
        if self._barrier is not None:
            # after an interrupt, frames from the barrier on must not see the discarded speech before it
            radius = self.scheduler.radius
            pos = frames[:, None] + np.arange(-radius, radius + 1)[None, :]
            hide = (frames[:, None] >= self._barrier) & (pos < self._barrier)
            batch.windows[hide] = SIL
            if first >= self._barrier + radius:
                self._barrier = None
        if self.styles.is_constant(first, last):
            style = self.styles.code_at(first)
        else:
            style = self.styles.codes(frames)
        ease_from = ease_weight = None
        if self._ease is not None:
            start, src = self._ease
            if first < start + self.ease_frames:
                k = (frames - start + 1).astype(np.float32)
                ease_weight = np.clip(k / self.ease_frames, 0.0, 1.0)
                ease_from = src
            if last >= start + self.ease_frames - 1:
                self._ease = None
        for f, forced in zip(frames.tolist(), batch.forced.tolist(), strict=True):
            st = self.stamps(f)
            st.planned = now
            st.forced = forced  # a forced frame has no "stable" stamp: its lookahead never became stable in time
        self.styles.prune(first)
        return DecodeJob(self.generation, frames, batch.windows, style, batch.forced, ease_from, ease_weight)

    def skip_to(self, frame: int) -> int:
        """Drop undecoded frames before ``frame`` (their deadline passed). Returns how many."""
        return self.scheduler.skip_to(frame)

    def complete(self, job: DecodeJob, exp: np.ndarray, now: float) -> np.ndarray | None:
        """Record a finished job; returns its expressions, or None if an interrupt made it stale."""
        if job.generation != self.generation:
            return None
        for f, e in zip(job.frames.tolist(), exp, strict=True):
            self._exp[f] = e
            self.stamps(f).decoded = now
        while len(self._exp) > self._history:
            self._exp.popitem(last=False)
        return exp

    def expression(self, frame: int) -> np.ndarray | None:
        """Decoded expression of a recent frame."""
        return self._exp.get(frame)

    # ------------------------------------------------------------------------------------------- control
    def switch_style(self, code: np.ndarray, at_frame: int | None = None, crossfade_frames: int | None = None) -> int:
        """Crossfade to ``code``; lands on ``at_frame`` (default: the next frame to decode). Returns it.

        Frames already decoded are never re-decoded, so a landing frame in the past is moved to the next
        undecoded frame.
        """
        at = self.next_frame if at_frame is None else max(int(at_frame), self.next_frame)
        return self.styles.switch(code, at, crossfade_frames)

    def interrupt(self, at_frame: int, until_frame: int, shown: np.ndarray | None) -> None:
        """Stop speaking at ``at_frame``: frames ``[at_frame, until_frame)`` become silence.

        ``shown`` is the expression on screen at the interrupt (None = nothing shown yet); the next
        ``ease_frames`` frames blend from it to the (silent) decoded face, so the mouth closes within that
        many frames without a jump. Decoding rewinds to ``at_frame``; pending jobs become stale.
        """
        at_frame = int(at_frame)
        self.generation += 1
        self.interrupts += 1
        self.ring.mute(at_frame, max(int(until_frame), at_frame))
        self._barrier = at_frame
        self.scheduler.next_frame = at_frame
        for f in [f for f in self._exp if f >= at_frame]:
            del self._exp[f]
        self._ease = (at_frame, np.asarray(shown, np.float32)) if shown is not None else None

    def stats(self) -> dict[str, int]:
        return {
            "forced_frames": self.scheduler.forced_frames,
            "skipped_frames": self.scheduler.skipped_frames,
            "ring_overruns": self.ring.overruns,
            "ring_late_writes": self.ring.late_writes,
            "ring_revisions": self.ring.revisions,
            "interrupts": self.interrupts,
        }
