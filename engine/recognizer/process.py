"""A recognizer in its own process: the same :class:`~engine.recognizer.base.Recognizer` contract, off the GIL.

Why: pocketsphinx never releases the GIL while it scores audio (its extension module has no
``PyEval_SaveThread``), so in the server process every recognizer call stops the event loop and the model
worker, and each call waits for the GIL behind them in turn (up to ``sys.getswitchinterval()`` per hand-over).
Run in a child process the recognizer costs the server process one pipe round trip per audio block
(``feed`` blocks in ``recv``, which releases the GIL), and its CPU goes to the other core.

A child is a fresh interpreter (``python -m engine.recognizer.process``, talking over a socket pair): it never
inherits the server's threads or locks (``fork`` could), and unlike ``multiprocessing``'s spawn/forkserver it does
not re-import the parent's main module (a benchmark's would load torch into every child). A child that dies or
stops answering makes one ``feed`` raise :class:`RecognizerProcessError` (the session reports it); later calls
return no labels (the mouth rests) instead of repeating the error 50 times a second.
``flush`` ends the child; a recognizer dropped without ``flush`` ends it when garbage-collected.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import numpy as np

from engine.recognizer.base import PhonemeEvent

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0  # one feed this long unanswered: the child is stuck (the session's watchdog acts at 2 s)
START_TIMEOUT_S = 60.0  # starting the interpreter and building the recognizer (model loading) in the child


class RecognizerProcessError(RuntimeError):
    """The recognizer's process failed to start, died, or stopped answering."""


def _serve(conn: Connection, backend: str, options: dict[str, Any]) -> None:
    """Child process: build the recognizer, then answer ``feed`` (int16 bytes) and ``flush`` (empty) messages.

    Ends quietly when the parent goes away (its socket closes: EOF on receive, a broken pipe on send)."""
    try:
        _answer_loop(conn, backend, options)
    except (EOFError, OSError):  # BrokenPipeError, ConnectionResetError: the parent closed or died
        return


def _answer_loop(conn: Connection, backend: str, options: dict[str, Any]) -> None:
    from engine.recognizer.factory import make_recognizer

    try:
        rec = make_recognizer(backend, **options)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", float(rec.lag)))
    while True:
        data = conn.recv_bytes()
        try:
            if data:
                events = rec.feed(np.frombuffer(data, np.int16))
            else:
                events = rec.flush()
            answer: tuple[str, Any] = ("events", [(int(f), int(p)) for f, p in events])
        except Exception as exc:  # noqa: BLE001 - one bad block is the session's error, not the child's end
            answer = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(answer)
        if not data:
            return


def _stop(proc: subprocess.Popen[bytes], conn: Connection) -> None:
    """End a child (finalizer: must not reference the recognizer object). Closing the socket ends its loop."""
    try:
        conn.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=1.0)


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m engine.recognizer.process FD BACKEND OPTIONS_JSON``."""
    fd, backend, options = (argv if argv is not None else sys.argv[1:])
    _serve(Connection(int(fd)), backend, json.loads(options))


class ProcessRecognizer:
    """``make_recognizer(backend, **options)`` run in a child process (see module docstring).

    Construction only starts the child; the first use (``lag``, ``feed``) waits until it has built its recognizer
    and raises :class:`RecognizerProcessError` with the child's error if it could not. A recognizer made ahead
    (:class:`WarmProcessRecognizers`) is therefore ready when taken, and starting one needs no thread.
    """

    def __init__(self, backend: str = "allphone", **options: Any) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "engine.recognizer.process", str(theirs.fileno()), backend, json.dumps(options)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._conn)
        self._dead: str | None = None
        self._lag: float | None = None
        self.backend = backend

    def _ready(self) -> float:
        """The recognizer's lag, once the child has built it (waits for it the first time)."""
        if self._lag is None:
            kind, value = self._answer(START_TIMEOUT_S, "start")
            if kind != "ready":
                self._fail(f"could not start: {value}")
            self._lag = float(value)
            log.info("recognizer %s runs in process %d (lag %.0f ms)", self.backend, self._proc.pid, 1000 * self._lag)
        return self._lag

    @property
    def lag(self) -> float:
        return self._ready()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """The child runs and this recognizer has not failed or ended."""
        return self._dead is None and self._proc.poll() is None

    def feed(self, pcm: np.ndarray) -> Iterable[PhonemeEvent]:
        """Mono int16 samples → the events that became stable (as in-process: ``PhonemeEvent``)."""
        block = np.ascontiguousarray(pcm, np.int16)
        if block.size == 0:
            return []
        return self._call(block.tobytes(), "feed")

    def flush(self) -> Iterable[PhonemeEvent]:
        """End of the audio: the remaining events; the child ends."""
        try:
            return self._call(b"", "flush")
        finally:
            self.close()

    def close(self) -> None:
        """End the child now (idempotent)."""
        self._dead = self._dead or "closed"
        self._finalizer()

    # ------------------------------------------------------------------------------------------ internal
    def _call(self, payload: bytes, what: str) -> list[PhonemeEvent]:
        if self._dead is not None:
            return []
        self._ready()
        try:
            self._conn.send_bytes(payload)
        except (OSError, ValueError) as exc:
            # a killed child closes the pipe before or after the send: say it ended either way (a broken pipe
            # was reported only when the kill won the race), unless it still runs
            if self._exited(0.2):
                self._ended(what)
            self._fail(f"could not send audio ({exc})")
        kind, value = self._answer(ANSWER_TIMEOUT_S, what)
        if kind == "events":  # pairs on the wire (plain data), events again here
            return [PhonemeEvent(f, p) for f, p in value]
        raise RecognizerProcessError(f"recognizer {what} failed: {value}")

    def _answer(self, timeout: float, what: str) -> tuple[str, Any]:
        try:
            if not self._conn.poll(timeout):
                self._fail(f"no answer to {what} within {timeout:.0f} s")
            return self._conn.recv()
        except (EOFError, OSError):
            self._ended(what)

    def _exited(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _ended(self, what: str) -> NoReturn:
        code = self._proc.returncode if self._exited(1.0) else None
        self._fail(f"the process ended during {what} (exit code {code})")

    def _fail(self, why: str) -> NoReturn:
        self._dead = why
        self._finalizer()
        raise RecognizerProcessError(f"recognizer process {self.backend!r}: {why}; lip sync stops (labels: silence)")


class WarmProcessRecognizers:
    """A factory of :class:`ProcessRecognizer` that keeps one child started ahead (a "spare").

    A child takes about a second to start (interpreter, numpy, the acoustic model) against 0.1 s in-process;
    without a spare every session's first second of speech would be labelled late. Taking the spare starts the
    next one (a process start: no thread). ``close`` ends the spare.
    """

    def __init__(self, backend: str, **options: Any) -> None:
        self.backend = backend
        self.options = options
        self._lock = threading.Lock()
        self._spare: ProcessRecognizer | None = ProcessRecognizer(backend, **options)
        self._closed = False

    def __call__(self) -> ProcessRecognizer:
        with self._lock:
            if self._closed:
                raise RecognizerProcessError("the recognizer factory is closed")
            spare, self._spare = self._spare, ProcessRecognizer(self.backend, **self.options)
        if spare is not None and spare.alive:
            return spare
        if spare is not None:
            spare.close()
        return ProcessRecognizer(self.backend, **self.options)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()


if __name__ == "__main__":
    main()
