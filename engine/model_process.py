"""A model worker process: the decoder and renderer of several sessions in a child interpreter, off the GIL.

Why: decode (~6 ms) + render (~10-13 ms, ~800 small torch ops) of every session ran on one thread of the server
process, and the GIL serialised it with the event loop, aiortc's VP8/Opus encoding and SRTP: two served sessions
reached 3-6 fresh fps at under one server core. In a child process that work runs on the other core.

As the recognizer's child (:mod:`engine.recognizer.process`), a worker is a fresh interpreter
(``python -m engine.model_process SOCK_FD FRAMES_FD SLOTS``) talking over a socket pair: it never
inherits the server's threads or locks, and does not re-import the parent's main module; normally it is forked by
the pool's template process (:mod:`engine.model_template`), a fresh interpreter that imported torch once and runs
no thread when it forks, so a worker starts in ~0.5 s instead of ~3.5 s. It builds the decoder
and renderer from the parent's configuration (the same builders: ``engine.runtime.build_decoder`` /
``build_renderer``), then serves *lanes* (one per session placed on it), each a
:class:`~engine.live.render_stream.RenderStream` with its own prepared avatar - the same code as in-process.

Wire (pickled tuples; images never pickled on the way back): the parent first sends its configuration (as a
dict: not on the command line, where ``ps`` would show the server's token), then ``open``/``prepare``/``rest``/
``job``/``close`` per lane and ``ack``; the child answers ``decoded``, ``rendered``, ``cost`` and ``done`` per
request. Rendered images go into a ring of ``SLOTS`` frame slots (``(SLOTS, S, S, 3)`` uint8) in an anonymous
shared mapping (``memfd``: nothing named to leak, gone with the last process holding it); a ``rendered`` message
names the slot sequence numbers, the parent copies the images out and acknowledges, and the child waits for an
acknowledgement before it would overwrite a slot not yet copied.

Times: the child stamps with ``time.monotonic`` (one clock for all processes on Linux); the parent maps a stamp
``t`` to the session's clock as ``submitted + (t - sent)`` (``sent``: its monotonic time when it sent the job).

Failure: a worker that dies, or does not answer within :data:`ANSWER_TIMEOUT_S` (then it is killed), fails every
request outstanding on it with :class:`ModelWorkerError`; the pool starts a fresh one (:mod:`engine.model_pool`).
The child ends when its parent goes away (EOF on its socket).
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.config import Config

if TYPE_CHECKING:
    from engine.live.render_stream import RenderedItem, RenderSink
    from engine.model_template import ModelTemplate
    from engine.stream import DecodeJob

log = logging.getLogger(__name__)

SLOTS = 48  # frame slots per worker: > the frames in flight of several sessions (max_batch 16 + reuse)
START_TIMEOUT_S = 90.0  # interpreter + torch + models + warm-up render, on a loaded machine
ANSWER_TIMEOUT_S = 10.0  # one request unanswered this long (a job is ~20 ms a frame): the worker is stuck


class ModelWorkerError(RuntimeError):
    """The model worker process failed to start, died or stopped answering (the session moves to a new one)."""


class ModelJobError(RuntimeError):
    """One request failed inside a healthy worker (the child's exception, as text)."""


# ============================================================================================ child process
class _Inbox:
    """The child's receive side: messages in order, with ``ack``s applied as soon as they are read."""

    def __init__(self, conn: Connection, slots: int) -> None:
        self.conn = conn
        self.slots = slots
        self.acked = 0  # frames the parent has copied out (sequence numbers below are free)
        self._held: deque[tuple[Any, ...]] = deque()

    def next(self) -> tuple[Any, ...]:
        while True:
            msg = self._held.popleft() if self._held else self.conn.recv()
            if msg[0] == "ack":
                self.acked = max(self.acked, int(msg[1]))
                continue
            return msg

    def wait_slot(self, seq: int) -> None:
        """Block until slot ``seq % slots`` was copied by the parent (other messages are held for later)."""
        while seq >= self.acked + self.slots:
            msg = self.conn.recv()
            if msg[0] == "ack":
                self.acked = max(self.acked, int(msg[1]))
            else:
                self._held.append(msg)


class _ChildSink:
    """A lane's :class:`RenderSink` in the child: results to the parent, images into the shared slots."""

    def __init__(self, conn: Connection, inbox: _Inbox, frames: np.ndarray, counter: Callable[[], int]) -> None:
        self.conn = conn
        self.inbox = inbox
        self.frames = frames  # (SLOTS, S, S, 3) uint8, shared with the parent
        self.next_seq = counter
        self.req = 0  # the request being served

    def decoded(self, job: DecodeJob, exp: np.ndarray, t_dec: float) -> None:
        self.conn.send(("decoded", self.req, np.asarray(exp, np.float32), t_dec))

    def rendered(self, generation: int, items: list[RenderedItem], t_ren: float) -> None:
        refs = []
        for frame, image, exp in items:
            seq = self.next_seq()
            self.inbox.wait_slot(seq)
            self.frames[seq % self.frames.shape[0]] = image
            refs.append((frame, seq, np.asarray(exp, np.float32)))
        self.conn.send(("rendered", self.req, generation, refs, t_ren))

    def first_frame_cost(self, seconds: float) -> None:
        self.conn.send(("cost", self.req, seconds))


def _serve(conn: Connection, frames_fd: int, slots: int, config: Config) -> None:
    """Child: build the models, say ``ready``, then serve lanes until the parent goes away."""
    import torch

    from engine.live.render_stream import RenderStream
    from engine.runtime import build_decoder, build_renderer, limit_blas_threads, load_avatar

    try:
        os.nice(config.decoder.worker_nice)  # the media path first when CPU is short (engine.config)
        limit_blas_threads()
        torch.set_num_threads(config.decoder.threads)
        decoder = build_decoder(config)
        renderer = build_renderer(config)
        size = config.renderer.size
        # warm-up: lazy initialisation happens here, not in a session's first frames
        decoder.warmup()
        state = renderer.prepare(load_avatar(config))
        for _ in range(2):
            renderer.render(state, np.zeros((1, 64), np.float32), np.zeros((1, 9), np.float32))
        del state
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails its requests with it
        conn.send(("start_error", f"{type(exc).__name__}: {exc}"))
        return
    shared = mmap.mmap(frames_fd, slots * size * size * 3)
    frames = np.ndarray((slots, size, size, 3), np.uint8, buffer=shared)
    inbox = _Inbox(conn, slots)
    seqs = itertools.count()
    lanes: dict[int, tuple[RenderStream, _ChildSink]] = {}
    conn.send(("ready", os.getpid()))
    while True:
        msg = inbox.next()
        kind, lane_id = msg[0], msg[1]
        if kind == "open":
            sink = _ChildSink(conn, inbox, frames, seqs.__next__)
            lanes[lane_id] = (RenderStream(decoder.decode, renderer, sink, time.monotonic,
                                           max_batch=config.decoder.max_batch), sink)
            continue
        if kind == "close":
            lanes.pop(lane_id, None)
            continue
        lane = lanes.get(lane_id)
        if kind == "rest":  # ("rest", lane, exp_rest, crossfaded in from frame, over frames)
            if lane is not None:  # (the stream ignores a rest without a RestAware renderer or an avatar)
                try:
                    lane[0].set_rest(msg[2], msg[3], msg[4])
                except Exception:  # noqa: BLE001 - as in-process: logged, the old rest stays
                    log.exception("model worker: setting the rest expression failed")
            continue
        req = msg[2]
        error: str | None = None
        reused = 0
        try:
            if lane is None:
                raise KeyError(f"no lane {lane_id}")
            stream, sink = lane
            sink.req = req
            if kind == "prepare":
                image, exp_rest = msg[3], msg[4]
                stream.set_state(renderer.prepare(image))
                if exp_rest is not None:
                    stream.set_rest(exp_rest)
            elif kind == "job":
                job, pose, blink, sent = msg[3], msg[4], msg[5], msg[6]
                before = stream.reused
                try:
                    stream.work(job, pose, blink, sent)
                except Exception:
                    stream.restart()
                    raise
                reused = stream.reused - before
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:  # noqa: BLE001 - this request failed, the worker goes on
            error = f"{type(exc).__name__}: {exc}"
        conn.send(("done", req, error, reused))


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m engine.model_process SOCK_FD FRAMES_FD SLOTS``; the configuration comes
    first on the socket."""
    sock_fd, frames_fd, slots = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    conn = Connection(int(sock_fd))
    try:
        kind, tree = conn.recv()
        if kind != "config":
            raise EOFError(f"expected the configuration, got {kind!r}")
        _serve(conn, int(frames_fd), int(slots), Config.from_dict(tree))
    except (EOFError, OSError, KeyboardInterrupt):  # the parent closed, died, or the terminal's Ctrl-C
        return


# ============================================================================================ parent side
class ChildProcess(Protocol):
    """The worker process as the parent sees it: a :class:`subprocess.Popen` (a fresh interpreter) or an
    :class:`engine.model_template.ForkedChild` (forked by the template: ``wait`` gives no exit status)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def kill(self) -> None: ...


def launch(template: ModelTemplate | None, sock_fd: int, frames_fd: int, slots: int) -> ChildProcess:
    """A worker on these descriptors: forked by ``template`` when it can (torch already imported), else a fresh
    interpreter (no template, or the template failed: logged, the worker still starts)."""
    if template is not None:
        from engine.model_template import TemplateError

        try:
            return template.fork(sock_fd, frames_fd, slots)
        except TemplateError as exc:
            log.warning("model worker: %s; starting a fresh interpreter instead", exc)
    return subprocess.Popen(
        [sys.executable, "-m", "engine.model_process", str(sock_fd), str(frames_fd), str(slots)],
        pass_fds=(sock_fd, frames_fd), stdin=subprocess.DEVNULL,
    )


@dataclass
class _Request:
    """A request in flight (parent): where its results go and how its stamps map to the session's clock."""

    future: Future[int]
    sink: RenderSink | None = None
    job: DecodeJob | None = None
    submitted: float = 0.0  # the session's clock when submitted
    sent: float = 0.0  # time.monotonic() when sent

    def stamp(self, t: float) -> float:
        return self.submitted + (t - self.sent)


def settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless it is already done (a caller that timed out cancelled it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class ModelProcess:
    """The parent's handle on one model worker process (see module docstring).

    ``request`` sends and returns a future that the reader thread completes (with the number of renders reused,
    or :class:`ModelJobError` / :class:`ModelWorkerError`); sink calls happen on the reader thread, in order,
    before the request's future completes. ``on_exit(self)`` is called once when the process ends unexpectedly.
    """

    def __init__(self, config: Config, *, slots: int = SLOTS, template: ModelTemplate | None = None,
                 on_exit: Callable[[ModelProcess], None] | None = None) -> None:
        size = config.renderer.size
        self.slots = slots
        frames_fd = os.memfd_create("styletalk-frames", os.MFD_CLOEXEC)
        try:
            os.ftruncate(frames_fd, slots * size * size * 3)
            self._shared = mmap.mmap(frames_fd, slots * size * size * 3)
            ours, theirs = socket.socketpair()
            with theirs:
                self._proc: ChildProcess = launch(template, theirs.fileno(), frames_fd, slots)
        finally:
            os.close(frames_fd)  # the mappings keep the memory
        self._frames: np.ndarray | None = np.ndarray((slots, size, size, 3), np.uint8, buffer=self._shared)
        self._sock = ours
        self._conn = Connection(os.dup(ours.fileno()))
        self._send_lock = threading.Lock()
        self._send(("config", config.to_dict()))
        self._lock = threading.Lock()  # _pending, _dead
        self._pending: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        self._dead: str | None = None
        self._closing = False
        self._on_exit = on_exit
        self.ready: Future[int] = Future()  # the child's pid once its models are built
        self.lanes = 0  # sessions placed here (the pool's count, under its lock)
        self._reader = threading.Thread(target=self._read, name=f"styletalk-model-io-{self._proc.pid}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc.poll() is None

    @property
    def failure(self) -> str | None:
        """Why the process ended (None while it runs)."""
        return self._dead

    # -------------------------------------------------------------------------------------- requests
    def post(self, *msg: Any) -> None:
        """Send a message that has no answer (``open``, ``rest``, ``close``); ignored once the process ended."""
        if self._dead is None:
            self._send(msg)

    def request(self, kind: str, lane_id: int, *args: Any, sink: RenderSink | None = None,
                job: DecodeJob | None = None, submitted: float = 0.0) -> Future[int]:
        """Send ``(kind, lane_id, req, *args)``; its future completes with the child's ``done``."""
        req = next(self._ids)
        entry = _Request(Future(), sink, job, submitted, time.monotonic())
        with self._lock:
            dead = self._dead
            if dead is None:
                self._pending[req] = entry
        if dead is not None:
            settle(entry.future, error=ModelWorkerError(f"model worker process {self.pid}: {dead}"))
            return entry.future
        if kind == "job":
            args = (*args, entry.sent)
        self._send((kind, lane_id, req, *args))
        return entry.future

    def kill(self, why: str) -> None:
        """End a stuck process now; its requests fail with ``why``."""
        with self._lock:
            self._dead = self._dead or why
        if self._proc.poll() is None:
            self._proc.kill()

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError) as exc:  # the child is gone: the reader reports it
            log.debug("model worker %d: send failed (%s)", self.pid, exc)

    # ---------------------------------------------------------------------------------- reader thread
    def _read(self) -> None:
        why = "ended"
        try:
            while True:
                msg = self._conn.recv()
                self._dispatch(msg)
        except (EOFError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - a bug here must still fail the requests, not hang them
            log.exception("model worker %d: reader failed", self.pid)
            why = f"its reader failed ({type(exc).__name__}: {exc})"
            self._proc.kill()
        self._ended(why)

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            settle(self.ready, int(msg[1]))
            return
        if kind == "start_error":
            with self._lock:
                self._dead = f"could not start: {msg[1]}"
            return
        with self._lock:
            entry = self._pending.get(msg[1])
        if entry is None:
            return
        if kind == "decoded":
            if entry.sink is not None and entry.job is not None:
                entry.sink.decoded(entry.job, msg[2], entry.stamp(msg[3]))
        elif kind == "rendered":
            frames = self._frames
            assert frames is not None
            items = [(frame, frames[seq % self.slots].copy(), exp) for frame, seq, exp in msg[3]]
            self._send(("ack", msg[3][-1][1] + 1))
            if entry.sink is not None:
                entry.sink.rendered(msg[2], items, entry.stamp(msg[4]))
        elif kind == "cost":
            if entry.sink is not None:
                entry.sink.first_frame_cost(msg[2])
        elif kind == "done":
            with self._lock:
                self._pending.pop(msg[1], None)
            if msg[2] is None:
                settle(entry.future, int(msg[3]))
            else:
                settle(entry.future, error=ModelJobError(msg[2]))

    def _ended(self, why: str) -> None:
        try:
            code: int | None = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        with self._lock:
            if self._dead is None:
                self._dead = why if code is None else f"{why} (exit code {code})"
            pending, self._pending = list(self._pending.values()), {}
            closing = self._closing
        error = ModelWorkerError(f"model worker process {self.pid}: {self._dead}")
        settle(self.ready, error=error)
        for entry in pending:
            settle(entry.future, error=error)
        if not closing:
            log.error("model worker process %d: %s", self.pid, self._dead)
            if self._on_exit is not None:
                self._on_exit(self)

    # ----------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """End the process (closing its socket ends its loop; killed after a second) and its reader; idempotent."""
        with self._lock:
            self._closing = True
            self._dead = self._dead or "closed"
        from engine.model_template import end_child

        end_child(self._sock, self._proc)  # also wakes the reader
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        self._conn.close()
        self._sock.close()
        self._frames = None
        try:
            self._shared.close()
        except BufferError:  # a view still exported somewhere: the mapping goes with the object
            pass


if __name__ == "__main__":
    main()
