"""Shared pieces of the audience tests (rooms, viewers, Janus): a presenter that speaks, viewers that watch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from clients.viewer import RoomViewer, box_grey
from tests.streaming_fixtures import MOUTH_BOX, SPEECH_WAV

REPO = Path(__file__).resolve().parents[1]


async def speaking_presenter(port: int) -> tuple[StyleTalkClient, dict]:
    """A presenter client on ``port`` whose microphone loops the test speech, with an open room."""
    pcm, rate = read_wav(SPEECH_WAV)
    client = StyleTalkClient(f"ws://127.0.0.1:{port}/ws")
    await client.connect()
    await client.start_media(MicrophoneTrack(to_16k(pcm, rate), loop=True))
    await client.wait_frames(5, timeout=60)
    room = await client.request("open_room")
    return client, room


async def joined_viewer(port: int, room: dict, token_key: str = "viewer_token") -> RoomViewer:
    viewer = RoomViewer(f"ws://127.0.0.1:{port}/ws/watch")
    await viewer.connect()
    await viewer.watch(room["room"], room[token_key])
    return viewer


def watch_path(room: dict) -> str:
    """The path + query of the room's watch link (the host part is the server's own)."""
    url = urlsplit(room["watch_url"])
    return f"{url.path}?{url.query}"


def _mouth_grey(images: list[np.ndarray]) -> np.ndarray:
    return box_grey(images, MOUTH_BOX)


def mouth_talk_vs_rest(frames: list, speaking: tuple[float, float], paused: tuple[float, float]) -> tuple[float, float]:
    """p90 deviation of the mouth box from its paused median: (while speaking, while paused).

    ``speaking``/``paused`` are arrival-time windows (monotonic). The paused window is the control: with the
    presenter paused only blinks move the face, so a moving mouth shows as speaking >> paused (the measure the
    presenter page's browser test uses).
    """
    talk = [f.image for f in frames if speaking[0] <= f.arrival <= speaking[1]]
    rest = [f.image for f in frames if paused[0] <= f.arrival <= paused[1]]
    assert len(talk) > 8 and len(rest) > 5, (len(talk), len(rest))  # a loaded machine delivers few fps
    return grey_talk_vs_rest(_mouth_grey(talk), _mouth_grey(rest))


def grey_talk_vs_rest(talk_g: np.ndarray, rest_g: np.ndarray) -> tuple[float, float]:
    """:func:`mouth_talk_vs_rest` on grey mouth boxes ``(N, pixels)`` already cut out."""
    median = np.median(rest_g, axis=0)
    return (float(np.percentile(np.abs(talk_g - median).mean(axis=1), 90)),
            float(np.percentile(np.abs(rest_g - median).mean(axis=1), 90)))


def mouth_moves(talk: float, rest: float) -> bool:
    return talk > 2.0 * rest + 0.5


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
            return npz["arrival"], npz["grey"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@contextlib.contextmanager
def viewer_processes(url: str, count: int, workdir: Path, seconds: float = 120.0) -> Iterator[list[ViewerProcess]]:
    """``count`` viewer processes on the watch link ``url`` (niced to 19: the engine under test keeps priority).

    Viewers decode VP8; hosted in the engine's own process they starve it. Leaving the block sends SIGTERM,
    on which each viewer stops and writes its summary and trace (call :func:`stop_viewers` to read them).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    viewers = []
    for i in range(count):
        paths = workdir / f"viewer{i}.json", workdir / f"viewer{i}.npz", workdir / f"viewer{i}.log"
        with paths[2].open("w") as log:
            proc = subprocess.Popen(
                ["nice", "-n", "19", sys.executable, "-m", "clients.viewer", url, "--seconds", str(seconds),
                 "--json", str(paths[0]), "--mouth-out", str(paths[1]),
                 "--mouth-box", ",".join(str(v) for v in MOUTH_BOX)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
        viewers.append(ViewerProcess(proc, *paths))
    try:
        yield viewers
    finally:
        stop_viewers(viewers)


def stop_viewers(viewers: list[ViewerProcess], timeout: float = 60.0) -> None:
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
