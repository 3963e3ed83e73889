"""A real Janus for the audience tests: started per test on free ports with a config the test writes.

``running_janus(tmp)`` starts ``janus`` (Debian package; ``tests/setup_system.py`` installs it) with the
project's config (:mod:`streaming.janus_config`) on a free websocket port and random UDP ranges, waits until its
websocket answers, and stops it (SIGTERM, then SIGKILL) on exit. Tests call :func:`require_janus` to skip with
the reason when Janus is not installed or cannot start.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streaming.janus_config import janus_command, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class JanusProcess:
    folder: Path
    ws_port: int
    rtp_ports: tuple[int, int] = (20_000, 20_999)  # the UDP range of its WebRTC media towards viewers
    proc: subprocess.Popen[bytes] | None = None

    def serves(self, port: int) -> bool:
        """Whether ``port`` (e.g. an ICE candidate in an SDP offer) is one of this instance's media ports."""
        return self.rtp_ports[0] <= port <= self.rtp_ports[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.folder / "janus.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(janus_command(self.folder), stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.nice(5))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.ws_port), 0.2):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"janus did not open its websocket within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kill(self) -> None:
        """Janus dies (SIGKILL): no goodbye on its websocket, mountpoints gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        path = self.folder / "janus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def require_janus() -> None:
    if shutil.which("janus") is None:
        pytest.skip("janus is not installed (make test installs it with apt-get: Debian package janus)")


@contextlib.contextmanager
def running_janus(folder: Path) -> Iterator[JanusProcess]:
    """A Janus on free ports (skips the test with Janus' own words when it cannot start)."""
    require_janus()
    base = random.choice([b for b in range(40_000, 58_000, 400) if b not in _BASES_IN_USE])
    _BASES_IN_USE.add(base)  # two instances in one test never share a port range
    jp = JanusProcess(folder, free_port(), (base, base + 199))
    write_config(folder, ws_port=jp.ws_port, rtp_ports=f"{base}-{base + 199}",
                 mount_ports=f"{base + 200}-{base + 399}")
    try:
        try:
            jp.start()
        except RuntimeError as exc:
            pytest.skip(f"janus could not start: {exc}")
        yield jp
    finally:
        jp.stop()
        _BASES_IN_USE.discard(base)


_BASES_IN_USE: set[int] = set()
