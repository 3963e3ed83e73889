"""Many room viewers as separate processes (``python -m clients.viewer``), for tests and benchmarks.

Each aiortc viewer decodes VP8; hosted in the process that runs the engine (a test) or that measures (a
benchmark), they starve it. As processes niced to 19 they leave the engine its priority and can use every core;
each leaves a JSON summary and a mouth trace (see :mod:`clients.viewer`), read back after :func:`stop_viewers`.

A crowd (:func:`spawn_crowd`) is count-only viewers (:mod:`clients.count_only`: full receiving path, no
decoding), several per process, so that 50 viewers cost a few processes and little CPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ViewerProcess:
    """``python -m clients.viewer`` watching a room in its own process, leaving a summary and a mouth trace."""

    proc: subprocess.Popen[str]
    json_path: Path
    trace_path: Path
    log_path: Path

    def joined(self) -> bool:
        return "watching room" in self.log_path.read_text(errors="replace")

    def summary(self) -> dict:
        if not self.json_path.is_file():
            raise AssertionError(f"viewer exited {self.proc.returncode} without a summary: {self.log()}")
        result: dict = json.loads(self.json_path.read_text())
        return result

    def trace(self) -> tuple[np.ndarray, np.ndarray]:
        """(arrival (N,), grey mouth box (N, pixels))."""
        with np.load(self.trace_path) as npz:
            return npz["arrival"], npz["grey"].astype(np.float32)

    def rtp(self) -> np.ndarray:
        """(N,) each frame's RTP timestamp (from the first frame's), for :mod:`clients.frame_index`."""
        with np.load(self.trace_path) as npz:
            return npz["rtp"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@dataclass
class CrowdProcess(ViewerProcess):
    """``python -m clients.viewer --count-only --viewers N``: N count-only viewers in one process;
    ``trace_path`` is its ``--frames-out`` NPZ."""

    viewers: int = 1

    def joined(self) -> bool:
        return "count-only viewers" in self.log_path.read_text(errors="replace")

    def summaries(self) -> list[dict]:
        result: list[dict] = self.summary()["viewers"]
        return result

    def frames(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Viewer ``k``'s (arrival (N,), RTP timestamp (N,)) of every counted frame."""
        with np.load(self.trace_path) as npz:
            return npz[f"arrival_{k}"], npz[f"rtp_{k}"]


def spawn_crowd(url: str, count: int, per_process: int, workdir: Path, seconds: float = 120.0, first: int = 0,
                nice: int = 19) -> list[CrowdProcess]:
    """``count`` count-only viewers on ``url``, ``per_process`` per process (niced by ``nice``), files
    ``crowd<i>.*`` in ``workdir`` numbered from ``first``."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, start in enumerate(range(0, count, per_process), start=first):
        n = min(per_process, count - start)
        paths = workdir / f"crowd{i}.json", workdir / f"crowd{i}.npz", workdir / f"crowd{i}.log"
        with paths[2].open("w") as log:
            proc = subprocess.Popen(
                ["nice", "-n", str(nice), sys.executable, "-m", "clients.viewer", url, "--count-only",
                 "--viewers", str(n), "--seconds", str(seconds), "--json", str(paths[0]),
                 "--frames-out", str(paths[1])],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        procs.append(CrowdProcess(proc, *paths, viewers=n))
    return procs


def spawn_viewers(url: str, count: int, workdir: Path, box: tuple[float, float, float, float],
                  seconds: float = 120.0, first: int = 0, nice: int = 19) -> list[ViewerProcess]:
    """``count`` viewer processes on the watch link ``url`` (niced by ``nice``), files ``viewer<i>.*`` in
    ``workdir`` numbered from ``first``; each watches at most ``seconds`` (or until :func:`stop_viewers`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    viewers = []
    for i in range(first, first + count):
        paths = workdir / f"viewer{i}.json", workdir / f"viewer{i}.npz", workdir / f"viewer{i}.log"
        with paths[2].open("w") as log:
            proc = subprocess.Popen(
                ["nice", "-n", str(nice), sys.executable, "-m", "clients.viewer", url, "--seconds", str(seconds),
                 "--json", str(paths[0]), "--mouth-out", str(paths[1]),
                 "--mouth-box", ",".join(str(v) for v in box)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        viewers.append(ViewerProcess(proc, *paths))
    return viewers


def stop_viewers(viewers: Sequence[ViewerProcess], timeout: float = 60.0) -> None:
    """SIGTERM every viewer still watching and wait for them to write their records (kill after ``timeout``)."""
    for v in viewers:
        if v.proc.poll() is None:
            v.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for v in viewers:
        try:
            v.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            v.proc.kill()
            v.proc.wait()
