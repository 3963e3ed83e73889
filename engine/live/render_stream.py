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

from engine.contracts import Renderer
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

    def set_state(self, state: Any) -> None:
        """A newly prepared avatar: the renderer stream starts over with it (worker)."""
        self.state = state
        self._next = None

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
            # a still face (silence, no blink) renders to the same image: reuse it (delay-free renderers only)
            key = exp[sl].tobytes() + pose[sl].tobytes() + blink[sl].tobytes() if self.delay == 0 else None
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
