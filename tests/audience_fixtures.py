"""Shared pieces of the audience tests (rooms, viewers, Janus): a presenter that speaks, viewers that watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from clients.client import MicrophoneTrack, StyleTalkClient, read_wav, to_16k
from clients.frame_index import find_offset, indices_of, merge_frame_maps, sent_between
from clients.viewer import RoomViewer, box_grey
from clients.viewer_fleet import ViewerProcess, spawn_viewers, stop_viewers
from tests.streaming_fixtures import MOUTH_BOX, SPEECH_WAV


async def speaking_presenter(port: int) -> tuple[StyleTalkClient, dict]:
    """A presenter client on ``port`` whose microphone loops the test speech, with an open room."""
    client = StyleTalkClient(f"ws://127.0.0.1:{port}/ws")
    await client.connect()
    return client, await speak_and_open_room(client)


async def speak_and_open_room(client: StyleTalkClient) -> dict:
    """A connected presenter starts its microphone (the test speech, looped) and opens a room: the room."""
    pcm, rate = read_wav(SPEECH_WAV)
    await client.start_media(MicrophoneTrack(to_16k(pcm, rate), loop=True))
    await client.wait_frames(5, timeout=60)
    return await client.request("open_room")


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


def frames_at(rtp: np.ndarray, table: dict[int, int], windows: list[np.ndarray]) -> list[np.ndarray]:
    """Per window of engine indices, a mask of the viewer frames (RTP timestamps ``rtp``) showing those frames,
    mapped by the room publisher's frame map ``table`` (:mod:`clients.frame_index`)."""
    offset, matches = find_offset(rtp, table)
    assert offset is not None, f"viewer frames not found in the publisher's frame map ({matches} matched)"
    index = indices_of(rtp, table, offset)
    return [np.isin(index, w) for w in windows]


async def viewers_reached(viewers: list[ViewerProcess], maps: list, until: float, timeout: float) -> None:
    """Wait until every viewer process has received the engine frames the room's publisher sent up to ``until``
    (monotonic), judged from the newest RTP timestamps in its progress summary (``--json``) and the publisher's
    frame maps ``maps`` (still being polled); a viewer that exited counts as done."""
    deadline = time.monotonic() + timeout
    while True:
        sent = sent_between(maps, 0.0, until)
        table = merge_frame_maps(maps)
        behind = []
        for v in viewers:
            if v.proc.poll() is not None:
                continue
            recent = v.summary().get("recent_rtp", []) if v.json_path.is_file() else []
            offset = find_offset(np.asarray(recent, np.int64), table)[0] if recent else None
            newest = int(indices_of(np.asarray(recent[-1:], np.int64), table, offset)[0]) if offset is not None else -1
            if len(sent) == 0 or newest < int(sent.max()):
                behind.append(newest)
        if not behind:
            return
        assert time.monotonic() < deadline, f"viewers still behind after {timeout} s: at {behind}, sent {sent[-1:]}"
        await asyncio.sleep(1.0)


def mouth_moves(talk: float, rest: float) -> bool:
    return talk > 2.0 * rest + 0.5


@contextlib.contextmanager
def viewer_processes(url: str, count: int, workdir: Path, seconds: float = 120.0) -> Iterator[list[ViewerProcess]]:
    """``count`` viewer processes (:mod:`clients.viewer_fleet`) on the watch link ``url``; leaving the block
    stops them (SIGTERM), after which their summaries and mouth traces can be read."""
    viewers = spawn_viewers(url, count, workdir, MOUTH_BOX, seconds)
    try:
        yield viewers
    finally:
        stop_viewers(viewers)
