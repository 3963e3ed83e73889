"""The in-process render lane: a session's decode + render on the runtime's model-worker thread.

Owner: the event loop calls the lane; the work runs on the runtime's single-thread executor, which owns the
:class:`~engine.live.render_stream.RenderStream` (see there). This is the path of a runtime built from injected
parts (tests, benchmarks) or with ``decoder.workers = 0``; :class:`engine.model_pool.ProcessRenderLane` is the
same contract (:class:`engine.contracts.RenderLane`) in a model worker process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from engine.contracts import Renderer
from engine.live.render_stream import RenderSink, RenderStream
from engine.stream import DecodeJob

log = logging.getLogger(__name__)

RestFn = Callable[[], "np.ndarray | None"]  # the current style's rest expression (64,); runs on the model thread


class ThreadRenderLane:
    """:class:`engine.contracts.RenderLane` on the runtime's model-worker thread (``executor``)."""

    def __init__(self, executor: Executor, decode: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 renderer: Renderer, sink: RenderSink, clock: Callable[[], float], rest: RestFn, *,
                 max_batch: int, decoder_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self._executor = executor
        self._decoder_stats = decoder_stats  # the runtime's decoder counters (the one this thread decodes with)
        self._renderer = renderer
        self._rest = rest
        self.stream = RenderStream(decode, renderer, sink, clock, max_batch=max_batch)

    @property
    def delay_frames(self) -> int:
        return self.stream.delay

    @property
    def reused(self) -> int:
        return self.stream.reused

    def stats(self) -> dict[str, Any]:
        return {"runs_in": "model_thread", **(self._decoder_stats() if self._decoder_stats is not None else {})}

    async def prepare(self, image: np.ndarray) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._prepare, image)

    def refresh_rest(self, at_frame: int | None = None, frames: int = 0) -> None:
        self._executor.submit(self._apply_rest, at_frame, frames).add_done_callback(_log_failure)

    async def run(self, job: DecodeJob, pose: np.ndarray, blink: np.ndarray, submitted: float) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.stream.work, job, pose, blink,
                                                             submitted)
        except Exception:  # not a cancellation (a BaseException): the job itself failed
            self.stream.restart()  # the renderer stream starts over on the next job
            raise

    def close(self) -> None:
        """Nothing to free: the thread belongs to the runtime."""

    # ------------------------------------------------------------------------------------ model thread
    def _prepare(self, image: np.ndarray) -> None:
        self.stream.set_state(self._renderer.prepare(image))  # the renderer stream starts over with the new state,
        self._apply_rest(None, 0)  # drawn relative to the current style's rest at once

    def _apply_rest(self, at_frame: int | None, frames: int) -> None:
        """The current style's rest, crossfaded in from ``at_frame`` over ``frames`` (RenderStream.set_rest, which
        ignores it without a RestAware renderer or an avatar; the rest function gives None for other renderers)."""
        exp_rest = self._rest()
        if exp_rest is not None:
            self.stream.set_rest(exp_rest, at_frame, frames)


def _log_failure(f: Future[None]) -> None:
    exc = f.exception()
    if exc is not None:
        log.error("setting the rest expression failed: %s: %s", type(exc).__name__, exc)
