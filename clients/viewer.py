"""Watch a room from Python: ``python -m clients.viewer http://127.0.0.1:8080/watch/<room>?t=<token>``.

A :class:`RoomViewer` is a :class:`~clients.client.StyleTalkClient` on ``/ws/watch``: ``watch(room, token)``
gets the server's (or Janus') SDP offer, answers it, and records the avatar like the presenter's client does.
When the server says the fan-out came back (``room_state`` live after ``fanout_down``/``ended``), it watches
again by itself (``auto_rewatch``).

For tests and benchmarks the command line can leave a machine-readable record, so that many viewers can run as
separate processes (decoding VP8 in the process that hosts the engine would starve the engine): ``--json PATH``
writes the summary, ``--mouth-out PATH.npz --mouth-box x0,y0,x1,y1`` saves every frame's arrival time
(``time.monotonic()``, one clock for every process on the machine) and the grey pixels of that box, so the caller
can compare the mouth while the presenter speaks and while it is paused, and each frame's RTP timestamp, which
:mod:`clients.frame_index` maps back to the engine's frame index.

A crowd: ``--count-only --viewers N`` runs N viewers in one process (asyncio), each with the full receiving path
(ICE, DTLS-SRTP, depacketisation, jitter buffer) but counting its frames instead of decoding them
(:mod:`clients.count_only`: 50 decoding viewers swamp 2 cores); ``--json`` then holds one summary per viewer and
``--frames-out PATH.npz`` every viewer's frames (RTP timestamp, arrival, size, keyframe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from clients.client import ClientError, ReceivedFrame, StyleTalkClient
from clients.count_only import FrameLog, count_only

REWATCH_STATES = ("live", "waiting")  # after a fan-out outage the server announces one of these


def split_watch_url(url: str) -> tuple[str, str, str]:
    """``http://host:port/watch/<room>?t=<token>`` -> (websocket URL of /ws/watch, room, token)."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 2 or segments[0] != "watch":
        raise ValueError(f"not a watch link (http://host:port/watch/<room>?t=<token>): {url}")
    token = parse_qs(parts.query).get("t", [""])[0]
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws/watch", segments[1], token


class RoomViewer(StyleTalkClient):
    """A viewer (or operator, with the control token) of one room."""

    def __init__(self, url: str = "ws://127.0.0.1:8080/ws/watch", keep_frames: int = 2_000,
                 auto_rewatch: bool = True) -> None:
        super().__init__(url, keep_frames=keep_frames)
        self.room: str | None = None
        self.token: str | None = None
        self.watch_result: dict[str, Any] | None = None
        self.auto_rewatch = auto_rewatch
        self.rewatches = 0
        self._seen_events = 0
        self._down = False

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        welcome = await super().connect(timeout)
        self._spawn(self._follow_states())
        return welcome

    async def watch(self, room: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
        """Join ``room``: negotiate the media (the server offers, we answer); returns the watch result."""
        self.room, self.token = room, token
        await self.stop_media()
        result = await self.request("watch", timeout=timeout, room=room, token=token)
        self.pc = RTCPeerConnection()
        self.pc.on("track", self._on_track)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=result["sdp"], type="offer"))
        self._receivers_ready(self.pc)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.request("answer", timeout=timeout, sdp=self.pc.localDescription.sdp)
        self.watch_result = result
        self._down = False
        return result

    def _receivers_ready(self, pc: RTCPeerConnection) -> None:
        """Called once the offer created the receivers, before media flows (a hook for count-only viewers)."""

    def states(self) -> list[str]:
        return [e.get("state", "") for e in self.events if e.get("event") == "room_state"]

    async def _follow_states(self) -> None:
        """Re-watch when the room comes back after an outage of the fan-out or of the media."""
        while True:
            await asyncio.sleep(0.1)
            new, self._seen_events = self.events[self._seen_events:], len(self.events)
            for event in new:
                if event.get("event") != "room_state":
                    continue
                state = event.get("state")
                if state in ("fanout_down", "ended"):
                    self._down = True
                    if state == "ended" and self.auto_rewatch:
                        await self._rewatch()
                elif state in REWATCH_STATES and self._down and self.auto_rewatch:
                    await self._rewatch()

    async def _rewatch(self) -> None:
        if self.room is None or self.token is None:
            return
        for _ in range(20):
            try:
                await self.watch(self.room, self.token)
                self.rewatches += 1
                return
            except ClientError as exc:
                if exc.code not in ("fanout_down", "rate_limited"):
                    return
            await asyncio.sleep(0.5)


class CountingViewer(RoomViewer):
    """A viewer that receives everything but decodes nothing: its video frames are in ``video`` (a
    :class:`~clients.count_only.FrameLog`), not in ``recording``."""

    def __init__(self, url: str = "ws://127.0.0.1:8080/ws/watch", auto_rewatch: bool = True) -> None:
        super().__init__(url, keep_frames=1, auto_rewatch=auto_rewatch)
        self.video = FrameLog("video")  # the current watch's frames (a re-watch starts a new log)
        self.audio = FrameLog("audio")
        self.watch_sent: float | None = None

    def _receivers_ready(self, pc: RTCPeerConnection) -> None:
        logs = count_only(pc)
        self.video, self.audio = logs.get("video", FrameLog("video")), logs.get("audio", FrameLog("audio"))

    def _on_track(self, track: Any) -> None:  # noqa: ANN401 - nothing comes out of a counting receiver's track
        pass

    async def watch(self, room: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
        self.watch_sent = time.monotonic()
        return await super().watch(room, token, timeout)

    async def wait_counted(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.video) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"counted {len(self.video)} of {count} frames in {timeout} s")
            await asyncio.sleep(0.05)

    def summary(self, since: float) -> dict[str, Any]:
        arrival = self.video.arrival[: len(self.video)]
        recent = [t for t in arrival if t >= since]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        return {"room": self.room, "mode": (self.watch_result or {}).get("mode"), "count_only": True,
                "frames": len(arrival), "keyframes": sum(self.video.keyframe[: len(arrival)]),
                "skipped_before_keyframe": self.video.skipped, "dimensions": self.video.dimensions,
                "bad_frames": self.video.bad_frames, "audio_frames": len(self.audio), "fps": round(fps, 2),
                "states": self.states(), "rewatches": self.rewatches, "watch_sent": self.watch_sent,
                "first_arrival": arrival[0] if arrival else None, "last_arrival": arrival[-1] if arrival else None}


def save_frame_logs(path: str, logs: list[FrameLog]) -> None:
    """NPZ with, per viewer k: ``rtp_k`` (N,) int64, ``arrival_k`` (N,) float64 monotonic s, ``size_k`` (N,)
    int32, ``key_k`` (N,) bool."""
    arrays: dict[str, Any] = {}
    for k, log in enumerate(logs):
        n = len(log)
        arrays |= {f"rtp_{k}": np.asarray(log.rtp[:n], np.int64), f"arrival_{k}": np.asarray(log.arrival[:n]),
                   f"size_{k}": np.asarray(log.size[:n], np.int32), f"key_{k}": np.asarray(log.keyframe[:n], bool)}
    np.savez_compressed(path, **arrays)


JOIN_GAP_S = 0.15  # between this process's joins: the room admits 10 joins/s (bursts of 30), several processes join


async def join_counting(ws_url: str, room: str, token: str, attempts: int = 10) -> CountingViewer:
    """A connected, watching :class:`CountingViewer` (retried while the room's join rate limit refuses it)."""
    for attempt in range(attempts):
        viewer = CountingViewer(ws_url)
        try:
            await viewer.connect()
            await viewer.watch(room, token)
            return viewer
        except ClientError as exc:
            await viewer.close()
            if exc.code != "rate_limited" or attempt == attempts - 1:
                raise
        await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


def write_crowd_records(args: argparse.Namespace, viewers: list[CountingViewer], since: float) -> list[dict]:
    summaries = [v.summary(since) for v in viewers]
    if args.json:
        Path(args.json).write_text(json.dumps({"viewers": summaries}))
    if args.frames_out:
        save_frame_logs(args.frames_out, [v.video for v in viewers])
    return summaries


async def _run_crowd(args: argparse.Namespace) -> int:
    ws_url, room, token = split_watch_url(args.url)
    viewers: list[CountingViewer] = []
    stop = asyncio.Event()  # SIGTERM ends the watch early, still leaving the records
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        for _ in range(args.viewers):
            viewers.append(await join_counting(ws_url, room, token))
            await asyncio.sleep(JOIN_GAP_S)
        print(f"watching room {room}: {len(viewers)} count-only viewers", file=sys.stderr)
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.seconds)
        summaries = write_crowd_records(args, viewers, start + 1.0)
        print(json.dumps({"viewers": len(viewers), "frames": [s["frames"] for s in summaries],
                          "fps": [s["fps"] for s in summaries]}))
        return 0 if all(s["frames"] for s in summaries) else 1
    except ClientError as exc:
        print(f"viewer: {exc.code}: {exc} ({len(viewers)} joined)", file=sys.stderr)
        if viewers:
            write_crowd_records(args, viewers, time.monotonic())
        return 2
    finally:
        await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (fractions of the frame, 0..1, x0 < x1, y0 < y1) -> a box."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4 or not (0 <= parts[0] < parts[2] <= 1 and 0 <= parts[1] < parts[3] <= 1):
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 as fractions with x0<x1, y0<y1: {text}")
    return parts[0], parts[1], parts[2], parts[3]


def box_grey(images: list[np.ndarray], box: tuple[float, float, float, float]) -> np.ndarray:
    """Grey pixels of ``box`` in each (H, W, 3) image -> (N, box pixels) float32."""
    h, w = images[0].shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    return np.stack([im[y0:y1, x0:x1].astype(np.float32).mean(axis=2).reshape(-1) for im in images])


class MouthTrace:
    """Each frame's arrival (``time.monotonic()``) and the grey pixels of ``box`` (uint8), kept as frames arrive
    so that the frames themselves need not be (50 viewers x minutes of 256² frames would not fit in memory)."""

    def __init__(self, box: tuple[float, float, float, float]) -> None:
        self.box = box
        self.arrivals: list[float] = []
        self.rtp: list[int] = []
        self.grey: list[np.ndarray] = []

    def add(self, frame: ReceivedFrame) -> None:
        self.arrivals.append(frame.arrival)
        self.rtp.append(frame.pts)
        self.grey.append(np.round(box_grey([frame.image], self.box)[0]).astype(np.uint8))

    def save(self, path: str) -> None:
        """NPZ: ``arrival`` (N,) float64 seconds, ``rtp`` (N,) int64 RTP timestamps (from the first frame's),
        ``grey`` (N, box pixels) uint8."""
        grey = np.stack(self.grey) if self.grey else np.zeros((0, 0), np.uint8)
        np.savez_compressed(path, arrival=np.asarray(self.arrivals, np.float64),
                            rtp=np.asarray(self.rtp, np.int64), grey=grey)


RECENT_RTP = 40  # RTP timestamps of the newest frames in the --json summary (enough to place them: frame_index)


def write_summary(path: str, summary: dict[str, Any]) -> None:
    """Replace the summary file at once (a reader never sees half of it)."""
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(path)


def write_records(args: argparse.Namespace, summary: dict[str, Any], trace: MouthTrace) -> None:
    """The ``--json`` summary and the ``--mouth-out`` trace, when asked for."""
    if args.json:
        write_summary(args.json, summary)
    if args.mouth_out:
        trace.save(args.mouth_out)


async def _run(args: argparse.Namespace) -> int:
    ws_url, room, token = split_watch_url(args.url)
    viewer = RoomViewer(ws_url, keep_frames=2_000 if args.out else 300)  # --out saves the last 2000 frames
    trace = MouthTrace(args.mouth_box)  # small (the mouth box only); gives the first arrival too
    viewer.recording.on_frame = trace.add
    try:
        await viewer.connect()
        watch_sent = time.monotonic()
        result = await viewer.watch(room, token)
        print(f"watching room {room} as {result['role']} ({result['mode']} fan-out)", file=sys.stderr)
        start = time.monotonic()
        stop = asyncio.Event()  # SIGTERM ends the watch early, still leaving the summary and the trace
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        def summarize() -> dict[str, Any]:
            frames = viewer.recording.frames
            return {"room": room, "role": result["role"], "mode": result["mode"],
                    "frames": viewer.recording.frames_total, "fps": round(viewer.recording.fps(start + 1.0), 2),
                    "states": viewer.states(), "rewatches": viewer.rewatches,
                    "watch_sent": watch_sent, "first_arrival": trace.arrivals[0] if trace.arrivals else None,
                    "last_arrival": frames[-1].arrival if frames else None,
                    # the newest frames' RTP timestamps: with the room's frame map, which engine frame it is at
                    "recent_rtp": trace.rtp[-RECENT_RTP:]}

        while not stop.is_set() and time.monotonic() - start < args.seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(1.0, args.seconds - (time.monotonic() - start)))
            if args.json and not stop.is_set():  # progress, for a caller waiting for a lagging viewer
                write_summary(args.json, summarize())
        frames = viewer.recording.frames
        summary = summarize()
        print(json.dumps(summary))
        write_records(args, summary, trace)
        if args.out and frames:
            viewer.save_mp4(args.out)
        return 0 if frames else 1
    except ClientError as exc:
        print(f"viewer: {exc.code}: {exc}", file=sys.stderr)
        return 2
    finally:
        await viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.viewer", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the room's watch link: http://host:port/watch/<room>?t=<token>")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long to watch (SIGTERM stops earlier, still writing --json/--mouth-out/--out)")
    parser.add_argument("--out", help="save what was received to this MP4")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the summary (frames, fps, room states, first/last frame arrival in "
                             "time.monotonic() seconds) to PATH as JSON")
    parser.add_argument("--mouth-out", metavar="PATH.npz",
                        help="save each frame's arrival (time.monotonic()) and the grey pixels of --mouth-box")
    parser.add_argument("--mouth-box", type=parse_box, default=(0.33, 0.58, 0.67, 0.82), metavar="x0,y0,x1,y1",
                        help="the box --mouth-out keeps, as fractions of the frame (default: the avatar's mouth)")
    parser.add_argument("--count-only", action="store_true",
                        help="receive but do not decode: count each complete encoded frame (a light viewer for "
                             "crowds; no --out/--mouth-out)")
    parser.add_argument("--viewers", type=int, default=1, help="with --count-only: this many viewers here")
    parser.add_argument("--frames-out", metavar="PATH.npz",
                        help="with --count-only: every viewer's frames (rtp_k, arrival_k, size_k, key_k)")
    args = parser.parse_args(argv)
    if args.viewers < 1 or (args.viewers > 1 and not args.count_only):
        parser.error("--viewers N (N >= 1) needs --count-only")
    if args.count_only and (args.out or args.mouth_out):
        parser.error("--count-only decodes nothing: no --out or --mouth-out")
    return asyncio.run(_run_crowd(args) if args.count_only else _run(args))


if __name__ == "__main__":
    sys.exit(main())
