"""Model worker processes shared by the sessions: placement on the least-loaded one, and the session's lane.

:class:`ModelWorkers` keeps ``decoder.workers`` :class:`~engine.model_process.ModelProcess`es, started with the
runtime (each takes seconds to load torch and the models, so a session never waits for one in the normal case).
A session is placed on the worker with the fewest sessions (ties: the first), and stays there. A worker that dies
is replaced by a fresh one at once (unless it never started: then on the next placement, so a broken setup does
not respawn in a loop); its sessions each get one :class:`ModelWorkerError` (the session reports it as a
``model_worker`` error event) and move to a new placement on their next job, re-preparing their photo there.

:class:`ProcessRenderLane` is :class:`engine.contracts.RenderLane` over a worker: the session's rest expression
is computed in the server process (on the runtime's model thread: it needs the style bank) and sent; jobs carry
their style vectors, so a worker holds no style state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from engine.config import Config
from engine.live.render_stream import RenderSink
from engine.model_process import ANSWER_TIMEOUT_S, START_TIMEOUT_S, ModelProcess, ModelWorkerError
from engine.model_template import ModelTemplate
from engine.stream import DecodeJob

log = logging.getLogger(__name__)

MAX_MOVES = 3  # a session moves to a new worker at most this often; then it holds its last frame


class ModelWorkers:
    """A fixed number of model worker processes (see module docstring). Thread-safe."""

    def __init__(self, config: Config, count: int, template: ModelTemplate | None = None) -> None:
        """``template``: the template process the workers are forked from (owned by the pool from here; one is
        started when not given: start it early, its torch import overlaps the caller's own loading)."""
        if count < 1:
            raise ValueError(f"model workers: count must be >= 1, got {count}")
        self.config = config
        self.template = template if template is not None else ModelTemplate()
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count(1)
        self.replaced = 0  # workers replaced after dying (stats, tests)
        self._procs: list[ModelProcess | None] = [self._start() for _ in range(count)]

    def _start(self) -> ModelProcess:
        return ModelProcess(self.config, template=self.template, on_exit=self._exited)

    @property
    def processes(self) -> Sequence[ModelProcess | None]:
        """The current workers (a slot is None after a worker that never started ended)."""
        with self._lock:
            return list(self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.alive]

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: how many workers are configured and alive, their sessions, replacements so far."""
        procs = self.processes
        live = [p for p in procs if p is not None and p.alive]
        return {"count": len(procs), "alive": len(live), "sessions": [p.lanes for p in live],
                "pids": [p.pid for p in live], "replaced": self.replaced}

    def lane_id(self) -> int:
        return next(self._ids)

    def place(self) -> ModelProcess:
        """The live worker with the fewest sessions (dead slots restarted first); counts the new session."""
        with self._lock:
            if self._closed:
                raise ModelWorkerError("the model workers are closed")
            for i, p in enumerate(self._procs):
                if p is None or not p.alive:
                    if p is not None:  # died, its reader has not reported it yet
                        self.replaced += 1
                        p.close()
                    self._procs[i] = self._start()
            best = min((p for p in self._procs if p is not None), key=lambda p: p.lanes)
            best.lanes += 1
            return best

    def release(self, proc: ModelProcess) -> None:
        with self._lock:
            proc.lanes = max(0, proc.lanes - 1)

    def _exited(self, proc: ModelProcess) -> None:
        """A worker ended unexpectedly (its reader thread): start its replacement now if it had started."""
        started = proc.ready.done() and proc.ready.exception() is None
        old: ModelProcess | None = None
        with self._lock:
            if self._closed or proc not in self._procs:
                return
            i = self._procs.index(proc)
            self.replaced += 1
            old, self._procs[i] = proc, (self._start() if started else None)
        if old is not None:
            old.close()

    def close(self) -> None:
        """End every worker (their sessions' next jobs fail); idempotent."""
        with self._lock:
            self._closed = True
            procs, self._procs = list(self._procs), []
        for p in procs:
            if p is not None:
                p.close()
        self.template.close()


class ProcessRenderLane:
    """One session's decode + render on a model worker process (:class:`engine.contracts.RenderLane`)."""

    def __init__(self, pool: ModelWorkers, executor: Executor, delay_frames: int, sink: RenderSink,
                 rest: Callable[[], np.ndarray | None]) -> None:
        self._pool = pool
        self._executor = executor  # the runtime's model thread: computes the rest expression
        self._delay = int(delay_frames)
        self._sink = sink
        self._rest = rest
        self._id = pool.lane_id()
        self._proc: ModelProcess | None = None
        self._image: np.ndarray | None = None  # the prepared photo (to re-prepare on a new worker)
        self._reused = 0
        self._moves = 0
        self._given_up = False
        self._closed = False
        self._reported: ModelProcess | None = None  # the dead worker whose end this session already reported

    @property
    def delay_frames(self) -> int:
        return self._delay

    @property
    def reused(self) -> int:
        return self._reused

    def stats(self) -> dict[str, Any]:
        """The worker this session runs on (decoder counters stay in the worker process, so none here)."""
        proc = self._proc
        return {
            "runs_in": "model_worker",
            "worker_pid": proc.pid if proc is not None else None,
            "workers": len(self._pool.processes),
            "workers_replaced": self._pool.replaced,
            "moves": self._moves,
            "given_up": self._given_up,
            "accelerator": self._pool.config.decoder.accelerator,
        }

    @property
    def process(self) -> ModelProcess | None:
        """The worker this session is placed on (tests)."""
        return self._proc

    async def prepare(self, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image, np.uint8)
        await self._send_photo(self._placed(), image)
        self._image = image

    def refresh_rest(self, at_frame: int | None = None, frames: int = 0) -> None:
        proc = self._proc
        if proc is None or self._image is None:
            return
        lane_id = self._id

        def send(f: Future[np.ndarray | None]) -> None:
            if f.exception() is None and f.result() is not None:
                proc.post("rest", lane_id, f.result(), at_frame, frames)

        self._executor.submit(self._rest).add_done_callback(send)

    async def run(self, job: DecodeJob, pose: np.ndarray, blink: np.ndarray, submitted: float) -> None:
        if self._given_up or self._closed:
            return  # no worker: the session repeats its last frame (reported once, when it gave up)
        proc = self._proc
        if proc is not None and not proc.alive and self._reported is not proc:
            # it died between jobs: say so once (this job is dropped: the face holds), move on the next
            self._reported = proc
            raise ModelWorkerError(f"model worker process {proc.pid}: {proc.failure}; the session moves to a new "
                                   "worker")
        if proc is None or not proc.alive:
            proc = await self._move(proc)
        future = proc.request("job", self._id, job, pose, blink, sink=self._sink, job=job, submitted=submitted)
        try:
            self._reused += await self._await(proc, future, "job")
        except ModelWorkerError as exc:
            self._reported = proc
            raise ModelWorkerError(f"{exc}; the session moves to a new worker") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.post("close", self._id)
            self._pool.release(proc)

    # ---------------------------------------------------------------------------------------- internal
    def _placed(self) -> ModelProcess:
        if self._proc is None or not self._proc.alive:
            if self._proc is not None:
                self._pool.release(self._proc)
            self._proc = self._pool.place()
            self._proc.post("open", self._id)
        return self._proc

    async def _move(self, dead: ModelProcess | None) -> ModelProcess:
        """The worker died: a new placement, the photo prepared there (``MAX_MOVES`` times at most)."""
        self._moves += 1
        if self._moves > MAX_MOVES or self._image is None:
            self._given_up = True
            why = dead.failure if dead is not None else "never placed"
            raise ModelWorkerError(f"model worker: given up after {self._moves - 1} moves ({why}); the face holds")
        proc = self._placed()
        await self._send_photo(proc, self._image)
        log.info("session lane %d moved to model worker %d", self._id, proc.pid)
        return proc

    async def _send_photo(self, proc: ModelProcess, image: np.ndarray) -> None:
        """Prepare ``image`` as this lane's avatar on ``proc``, with the current rest (computed on the model thread)."""
        exp_rest = await asyncio.get_running_loop().run_in_executor(self._executor, self._rest)
        await self._await(proc, proc.request("prepare", self._id, image, exp_rest), "prepare")

    async def _await(self, proc: ModelProcess, future: Future[int], what: str) -> int:
        """The answer, without blocking the loop; a worker silent past the timeout is killed (never a hang)."""
        timeout = ANSWER_TIMEOUT_S if proc.ready.done() else START_TIMEOUT_S + ANSWER_TIMEOUT_S
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            proc.kill(f"no answer to {what} within {timeout:.0f} s (killed)")
            raise ModelWorkerError(f"model worker process {proc.pid}: no answer to {what} within {timeout:.0f} s "
                                   "(killed)") from None
