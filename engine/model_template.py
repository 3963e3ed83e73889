"""A template process that forks model workers with torch and the engine already imported.

Why: a model worker (:mod:`engine.model_process`) must be a fresh interpreter, never a fork of the server (which
has threads and locks a fork would copy half-held); but importing torch is ~2.4 s of a worker's ~3.5 s start
on this 2-core machine, and a served process starts two workers beside loading its own models (serve ready in
12.2 s with two workers vs 6.3 s without, quiet). The template is a fresh interpreter too (started with one BLAS
thread) that imports torch and the worker's modules, and loads dlib's face models (each worker prepares its
avatar with them: ~2.5 CPU s apiece), but never runs a torch op, so it has a single thread and no thread pool
when it forks: the child inherits nothing half-held, builds its models and creates torch's pools itself (0.5 s).
Replacing a worker that died costs the same 0.5 s instead of a full interpreter start.

Wire (a Unix socket pair): the template says ``ready`` once imported; the parent sends ``fork SLOTS`` with the
worker's socket and frame-mapping descriptors attached (``SCM_RIGHTS``), the template forks, the child runs
:func:`engine.model_process.main` on them and the template answers ``pid N`` (or ``error TEXT``). The template
ignores ``SIGCHLD`` so its children are reaped as they end; the server is not their parent, so it watches and
kills a forked worker through a *pidfd* (:class:`ForkedChild`), which names the process, not a reusable number.
The template ends on EOF of its socket (the server closed it or died); its workers end on EOF of theirs.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.model_process import ChildProcess

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0  # interpreter + torch import on a loaded machine (as engine.model_process.START_TIMEOUT_S)
FORK_TIMEOUT_S = 10.0  # one fork answered (the template is idle between requests)


def end_child(sock: socket.socket, proc: ChildProcess, grace_s: float = 1.0) -> None:
    """End a child that serves one socket: shut the socket (the child reads EOF and returns), wait ``grace_s``,
    then kill it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already shut or closed
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=2.0)


class TemplateError(RuntimeError):
    """The template process could not start, died or did not answer (callers fall back to a fresh interpreter)."""


_STEP_S = 0.05  # a waiting ForkedChild releases its lock this often


class ForkedChild:
    """A process forked by the template, watched through a pidfd: the parts of :class:`subprocess.Popen` that
    :class:`engine.model_process.ModelProcess` uses. The exit status belongs to the template (the process's
    parent), so :meth:`poll` / :meth:`wait` say only *whether* it ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = os.pidfd_open(pid)
        # the pidfd is closed once the process ended (wait) while other threads may poll it: a select on a closed
        # (or, worse, reused) fd number raised EBADF in `speak`'s shutdown under load. The lock keeps the fd open
        # while a select uses it; long waits select in short steps so that close and kill never wait long.
        self._lock = threading.Lock()

    def _ended(self, timeout: float) -> bool:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            with self._lock:
                fd = self._fd
                if fd is None:
                    return True
                step = _STEP_S if deadline is None else max(0.0, min(_STEP_S, deadline - time.monotonic()))
                if select.select([fd], [], [], step)[0]:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def poll(self) -> int | None:
        """``None`` while the process runs, else ``-1`` (ended; its status is the template's)."""
        return -1 if self._ended(0.0) else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the process ended (``None``: its status is the template's)."""
        if not self._ended(timeout if timeout is not None else -1):
            raise subprocess.TimeoutExpired(f"model worker {self.pid}", timeout or 0.0)
        self.close()
        return None

    def kill(self) -> None:
        with self._lock:
            fd = self._fd
            if fd is not None:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:  # already ended
                    pass

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)


class ModelTemplate:
    """The server's handle on the template process (see module docstring). Thread-safe; forks one at a time."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            # one BLAS thread from the start: an OpenBLAS pool started at numpy's import would be forked half-alive
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
            self._proc = subprocess.Popen([sys.executable, "-m", "engine.model_template", str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        self._sock = ours
        self._replies = ours.makefile("rb")
        self._lock = threading.Lock()
        self._ready = False
        self._broken: str | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def fork(self, sock_fd: int, frames_fd: int, slots: int) -> ForkedChild:
        """A new worker on these descriptors (the caller keeps and closes its own copies); :class:`TemplateError`
        if the template cannot give one (then it is broken for good: later calls fail at once)."""
        with self._lock:
            if self._broken is not None:
                raise TemplateError(self._broken)
            try:
                if not self._ready:
                    self._expect(b"ready", READY_TIMEOUT_S)
                    self._ready = True
                socket.send_fds(self._sock, [f"fork {int(slots)}\n".encode()], [sock_fd, frames_fd])
                return ForkedChild(int(self._expect(b"pid", FORK_TIMEOUT_S)))
            except (OSError, ValueError, TemplateError) as exc:
                self._broken = f"model template process {self.pid}: {exc}"
                self._proc.kill()
                raise TemplateError(self._broken) from exc

    def _expect(self, word: bytes, timeout: float) -> bytes:
        self._sock.settimeout(timeout)
        try:
            line = self._replies.readline()
        except TimeoutError as exc:
            raise TemplateError(f"no answer in {timeout:.0f} s") from exc
        finally:
            self._sock.settimeout(None)
        head, _, rest = line.strip().partition(b" ")
        if head != word:
            raise TemplateError(rest.decode(errors="replace") if head == b"error" else
                                f"expected {word.decode()!r}, got {line[:80]!r} (ended?)")
        return rest

    def close(self) -> None:
        """End the template (EOF on its socket; killed after a second). Workers it forked go on; idempotent."""
        with self._lock:
            self._broken = self._broken or "closed"
        end_child(self._sock, self._proc)
        self._replies.close()
        self._sock.close()


# ============================================================================================ template process
def _child(fds: list[int], slots: int) -> None:
    """In the forked child: become a model worker on the two descriptors; never return into the template."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        from engine import model_process

        model_process.main([str(fds[0]), str(fds[1]), str(slots)])
    except BaseException:  # noqa: BLE001 - the child must exit here, whatever happened
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers or finalisers of the template's state


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.model_template SOCK_FD``: import, say ``ready``, fork on request until EOF."""
    (fd,) = argv if argv is not None else sys.argv[1:]
    sock = socket.socket(fileno=int(fd))
    try:
        import torch  # noqa: F401 - imported once here, inherited by every worker

        import engine.live.render_stream  # noqa: F401
        import engine.model_process  # noqa: F401
        import engine.runtime  # noqa: F401
        from engine.avatar import preload

        preload()  # dlib's models: each worker prepares its avatar with them

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they end
        sock.sendall(b"ready\n")
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 64, 2)
            if not msg:
                return  # EOF: the server closed or died
            try:
                word, slots = msg.split()
                if word != b"fork" or len(fds) != 2:
                    raise ValueError(f"bad request {msg[:40]!r} with {len(fds)} descriptors")
                pid = os.fork()
            except (ValueError, OSError) as exc:
                for f in fds:
                    os.close(f)
                sock.sendall(f"error {exc}\n".encode())
                continue
            if pid == 0:
                sock.close()
                _child(fds, int(slots))
            for f in fds:
                os.close(f)
            sock.sendall(f"pid {pid}\n".encode())
    except (OSError, KeyboardInterrupt):  # the server went away, or the terminal's Ctrl-C
        return


if __name__ == "__main__":
    main()
