"""The render stream of a live session: decode + render of planned jobs on the runtime's model worker.

Owner: the *model worker* thread (the runtime's single-thread executor). Every field here is touched only
from :meth:`RenderStream.work` / :meth:`RenderStream.set_state` running on that worker, except
:meth:`restart`, which the event loop calls only when no job of this session is running (each session has at
most one job outstanding). Results go back through ``sink`` - the session posts them to its event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from engine.contracts import Renderer, RestAware
from engine.motion import render_with_blink
from engine.stream import DecodeJob, run_decode

RENDER_CHUNK = 1  # frames rendered per call (each result is posted as soon as it is ready)

RenderedItem = tuple[int, np.ndarray, np.ndarray]  # (frame, uint8 image (H, W, 3), float32 exp (64,))


class RenderSink(Protocol):
    """Where the worker hands results (called on the worker thread: implementations post to the loop)."""

    def decoded(self, job: DecodeJob, exp: np.ndarray, t_dec: float) -> None: ...

    def rendered(self, generation: int, items: list[RenderedItem], t_ren: float) -> None: ...

    def first_frame_cost(self, seconds: float) -> None: ...


class RenderStream:
    """Decodes jobs and renders their frames as one continuous renderer stream per avatar state.

    A renderer that lags by k frames (``delay_frames``) returns, for the frames fed, the images of the frames
    k earlier; its stream restarts (``reset``) whenever the frames fed are not contiguous (skip, interrupt,
    avatar change).
    """

    def __init__(
        self,
        decode: Callable[[np.ndarray, np.ndarray], np.ndarray],
        renderer: Renderer,
        sink: RenderSink,
        clock: Callable[[], float],
        *,
        max_batch: int,
    ) -> None:
        self._decode = decode
        self.renderer = renderer
        self.delay = int(renderer.delay_frames)
        self._sink = sink
        self._clock = clock
        self._max_batch = max_batch
        self.state: Any = None  # the renderer's per-avatar state (set_state)
        self._next: int | None = None  # next frame the renderer stream expects
        self._base = 0
        self._count = 0
        self.fed_exp: OrderedDict[int, np.ndarray] = OrderedDict()  # frame -> exp fed (recent)
        self._last: tuple[bytes | None, np.ndarray] | None = None  # (inputs, images) of the last render
        self.reused = 0  # renders skipped because the inputs repeated exactly
        self._rest_renderer = renderer if isinstance(renderer, RestAware) else None
        self.rest: np.ndarray | None = None  # the rest expression (64,) set on the renderer now (RestAware)
        self._rest_fade: tuple[np.ndarray, np.ndarray, int, int] | None = None  # (from, to, first frame, frames)

    def set_state(self, state: Any) -> None:
        """A newly prepared avatar: the renderer stream starts over with it (worker); its rest is set anew."""
        self.state = state
        self._next = None
        self.rest, self._rest_fade = None, None

    def set_rest(self, rest: np.ndarray, at_frame: int | None = None, frames: int = 0) -> None:
        """Render relative to ``rest`` (64,) (a RestAware renderer; others ignore it): at once, or crossfaded from
        frame ``at_frame`` over ``frames`` frames, with the style code's own weights (engine.stylebank.StyleSchedule).

        Why crossfaded: a style switch crossfades the code over ``frames`` frames, and the rest set at once drew the
        old style's output against the new style's rest meanwhile: in silence, happy → neutral opened KristiNoem's
        lips from 3.7 to 18.9 px for 5 frames, neutral → surprised shut them. (worker)"""
        if self._rest_renderer is None or self.state is None:
            return
        rest = np.asarray(rest, np.float32)
        if at_frame is None or frames <= 0 or self.rest is None:
            self._rest_fade = None
            self._apply_rest(rest)
        else:
            self._rest_fade = (self._rest_at(int(at_frame) - 1), rest, int(at_frame), int(frames))

    def _rest_at(self, frame: int) -> np.ndarray:
        """The rest of ``frame``: the running fade's blend there, else the rest set now."""
        fade = self._rest_fade
        if fade is None:
            assert self.rest is not None  # (set_rest sets one before any fade)
            return self.rest
        src, dst, start, n = fade
        w = min(max((frame - start + 1) / n, 0.0), 1.0)
        return src if w <= 0.0 else dst if w >= 1.0 else (src * np.float32(1.0 - w) + dst * np.float32(w))

    def _apply_rest(self, rest: np.ndarray) -> None:
        if self._rest_renderer is not None and (self.rest is None or not np.array_equal(rest, self.rest)):
            self._rest_renderer.set_rest(self.state, rest)
            self.rest = rest

    def _rest_for(self, frame: int) -> None:
        """Before rendering ``frame``: its rest on the renderer (a fade ends once past its last frame)."""
        fade = self._rest_fade
        if fade is None:
            return
        self._apply_rest(self._rest_at(frame))
        if frame >= fade[2] + fade[3] - 1:
            self._rest_fade = None

    def restart(self) -> None:
        """Start the renderer stream over on the next job (after a failed job)."""
        self._next = None

    def work(self, job: DecodeJob, pose: np.ndarray, blink: np.ndarray, submitted: float) -> None:
        """Decode one job, then render it in chunks of :data:`RENDER_CHUNK` frames, handing each result over.

        Small chunks get the first frames of a catch-up batch out while the rest still render.
        ``pose`` (N, 9), ``blink`` (N,) per frame of the job; ``submitted`` = wall time the job was submitted.
        """
        renderer = self.renderer
        exp = run_decode(self._decode, job)  # (N, 64)
        self._sink.decoded(job, exp, self._clock())
        frames = job.frames.tolist()
        if self._next is None or frames[0] != self._next:
            if self._next is not None:
                renderer.reset(self.state)
            self._base = frames[0]
            self._count = 0
            self.fed_exp.clear()
            self._last = None
        for f, e in zip(frames, exp, strict=True):
            self.fed_exp[f] = e
        self._next = None  # in case rendering fails half-way: restart the stream next time
        for i in range(0, len(frames), RENDER_CHUNK):
            sl = slice(i, i + RENDER_CHUNK)
            self._rest_for(frames[i])  # (RENDER_CHUNK is 1: a chunk is one frame)
            # a still face (silence, no blink) renders to the same image: reuse it (delay-free renderers only)
            key = exp[sl].tobytes() + pose[sl].tobytes() + blink[sl].tobytes() if self.delay == 0 else None
            if key is not None and self.rest is not None:
                key += self.rest.tobytes()
            last = self._last
            if key is not None and last is not None and last[0] == key:
                images, reused = last[1], True
                self.reused += 1
            else:
                images, reused = render_with_blink(renderer, self.state, exp[sl], pose[sl], blink[sl]), False
                self._last = (key, images) if key is not None else None
            t_ren = self._clock()
            out: list[RenderedItem] = []
            for j in range(images.shape[0]):
                frame = self._base + self._count + j - self.delay
                if frame >= self._base:  # the first k outputs of a restarted stream are warm-up holds
                    out.append((frame, images[j], self.fed_exp[frame]))
            self._count += images.shape[0]
            if out:
                self._sink.rendered(job.generation, out, t_ren)
            if i == 0 and not reused:
                # recent costs; the loop reads a high percentile for its deadlines (silence is cheap and must
                # not hide what speech frames cost, one hiccup must not dominate either)
                self._sink.first_frame_cost(t_ren - submitted)
        self._next = frames[-1] + 1
        while len(self.fed_exp) > self.delay + 2 * self._max_batch + 2:
            self.fed_exp.popitem(last=False)
