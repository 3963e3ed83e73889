"""Python client of the presenter server: aiortc peer + websocket control (protocol v1).

Plays a WAV (or any PCM pushed at run time) as its microphone, records the avatar video it receives (frames in
memory, optionally an MP4) and sends control requests. The tests and ``benchmarks/e2e.py`` use it to drive the
real server over loopback exactly like a browser would; ``python -m clients.client --help`` runs it by hand.

Timing: every frame carries ``time.monotonic()`` at arrival, and the microphone records the monotonic time at
which each 20 ms chunk left, so speech onset → mouth motion can be measured on one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.count_only import FrameLog
from clients.count_only import count_only as count_receivers
from engine.timing import SAMPLE_RATE
from streaming import protocol as P
from streaming.rtp_latency import install_receive_buffers

log = logging.getLogger(__name__)

MIC_RATE = SAMPLE_RATE  # the engine's input rate
MIC_CHUNK = MIC_RATE // 50  # 20 ms
SENT_HISTORY = 30_000  # chunks whose send time is kept (10 minutes): how far back time_of_sample can answer


class ClientError(Exception):
    """The server answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV → (int16 mono samples, sample rate); other layouts raise ValueError."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels, rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data.astype(np.int16), rate


def to_16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Resample int16 mono to 16 kHz with PyAV (identity when already 16 kHz)."""
    if rate == MIC_RATE:
        return np.asarray(pcm, np.int16)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=MIC_RATE)
    frame = av.AudioFrame.from_ndarray(np.asarray(pcm, np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)


class MicrophoneTrack(MediaStreamTrack):
    """A fake microphone: plays queued 16 kHz PCM in real time, 20 ms per frame, silence when queue is empty.

    ``sent`` records (monotonic send time, stream sample offset) per frame, so a caller can tell when any
    sample it queued actually left (``time_of_sample``).
    """

    kind = "audio"

    def __init__(self, pcm: np.ndarray | None = None, loop: bool = False, history: int = SENT_HISTORY) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.int16)
        self._loop_pcm = np.asarray(pcm, np.int16) if (loop and pcm is not None and len(pcm)) else None
        self._start: float | None = None
        self._samples_sent = 0
        # (handed to the encoder at, first sample) of the newest ``history`` chunks: bounded, or a looping
        # microphone grows by 50 entries/s (0.34 MiB/min: most of the 30-minute soak's RSS creep)
        self.sent: deque[tuple[float, int]] = deque(maxlen=history)
        if pcm is not None and self._loop_pcm is None:
            self.feed(pcm)

    def feed(self, pcm: np.ndarray) -> int:
        """Queue 16 kHz int16 samples; returns the stream offset of the first one."""
        offset = self._samples_sent + len(self._queue)
        self._queue = np.concatenate([self._queue, np.asarray(pcm, np.int16).reshape(-1)])
        return offset

    @property
    def samples_sent(self) -> int:
        return self._samples_sent

    @property
    def pending_samples(self) -> int:
        return len(self._queue)

    def time_of_sample(self, offset: int) -> float | None:
        """Monotonic time at which stream sample ``offset`` was handed to the encoder (None if not yet, or older
        than the newest ``history`` chunks)."""
        for t, first in reversed(self.sent):
            if first <= offset < first + MIC_CHUNK:
                return t
            if first + MIC_CHUNK <= offset:
                return None
        return None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._samples_sent / MIC_RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(self._queue) < MIC_CHUNK and self._loop_pcm is not None:
            self._queue = np.concatenate([self._queue, self._loop_pcm])
        chunk = self._queue[:MIC_CHUNK]
        self._queue = self._queue[len(chunk) :]
        if len(chunk) < MIC_CHUNK:
            chunk = np.concatenate([chunk, np.zeros(MIC_CHUNK - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = self._samples_sent
        frame.time_base = Fraction(1, MIC_RATE)
        self.sent.append((time.monotonic(), self._samples_sent))
        self._samples_sent += MIC_CHUNK
        return frame


@dataclass
class ReceivedFrame:
    pts: int  # 90 kHz, counted from the first received frame (aiortc's receiver zeroes the RTP clock)
    arrival: float  # time.monotonic() when decoded
    image: np.ndarray  # (H, W, 3) uint8 RGB

    def index(self, first_index: int) -> int:
        """Engine frame index, given the server's first sent index (stats: transport.first_video_index)."""
        return first_index + round(self.pts * 30 / 90_000)


@dataclass
class Recording:
    frames: list[ReceivedFrame] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)  # received int16 mono 48 kHz chunks
    audio_arrivals: list[float] = field(default_factory=list)
    max_frames: int = 10_000
    frames_total: int = 0  # every frame ever received (``frames`` keeps only the newest ``max_frames``)
    # called with every frame as it arrives (e.g. to keep a small trace of each while ``frames`` stays short)
    on_frame: Callable[[ReceivedFrame], None] | None = None

    def add_frame(self, frame: ReceivedFrame) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)
        self.frames.append(frame)
        self.frames_total += 1
        if len(self.frames) > self.max_frames:
            del self.frames[: len(self.frames) - self.max_frames]

    def fps(self, since: float | None = None) -> float:
        times = [f.arrival for f in self.frames if since is None or f.arrival >= since]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=<token>`` added to its query, URL-encoded (a token may hold ``+ & % =`` ...)."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'token': token})}"


class StyleTalkClient:
    """One connection to ``styletalk-live serve``: ``connect()``, ``start_media(mic)``, ``request(...)``."""

    def __init__(
        self, url: str = "ws://127.0.0.1:8080/ws", token: str | None = None, keep_frames: int = 10_000,
        arrival_buffers: bool = True,
    ):
        """``arrival_buffers``: received audio and video reach the decoder as they arrive (audio packet by packet,
        a video frame on its last packet; ``streaming/rtp_latency.py``) instead of after aiortc's waits (4 audio
        packets; one video frame interval): this client records, it does not play out, so it smooths nothing."""
        self.url = url if token is None else with_token(url, token)
        self.arrival_buffers = arrival_buffers
        self.receive_buffers: dict[str, Any] = {}  # what start_media installed, by kind
        self.ws: ClientConnection | None = None
        self.pc: RTCPeerConnection | None = None
        self.answer_sdp: str | None = None
        self.mic: MicrophoneTrack | None = None
        self.recording = Recording(max_frames=keep_frames)
        self.events: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frame_event = asyncio.Event()
        self.counted: dict[str, FrameLog] = {}  # start_media(count_only=True): frames counted, not decoded

    # --------------------------------------------------------------------------------------------- control
    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Open the websocket; returns the server's welcome event (session id, styles, limits)."""
        self.ws = await connect(self.url, max_size=None, open_timeout=timeout)
        first = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if first.get("event") != "welcome":
            await self.ws.close()
            raise ClientError(first.get("code", "refused"), first.get("message", str(first)))
        self.welcome = first
        self._spawn(self._reader())
        return first

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reader(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "event":
                    self.events.append(msg)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                elif msg.get("type") == "error":
                    self.events.append(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ClientError("closed", "connection closed"))
            self._pending.clear()

    async def send_raw(
        self, text: str | bytes, request_id: Any = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send any text (also malformed, for tests) and wait for the reply with ``request_id``."""
        assert self.ws is not None, "connect() first"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        await self.ws.send(text)
        return await asyncio.wait_for(fut, timeout)

    async def request(self, rtype: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send a request; returns its ``result`` or raises :class:`ClientError` with the error code."""
        rid = next(self._ids)
        msg = await self.send_raw(P.make_request(rtype, rid, **fields), rid, timeout)
        if msg.get("type") == "error":
            raise ClientError(msg.get("code", "?"), msg.get("message", ""))
        return msg["result"]

    # ----------------------------------------------------------------------------------------------- media
    async def start_media(self, mic: MicrophoneTrack | None = None, timeout: float = 30.0,
                          count_only: bool = False) -> None:
        """Negotiate the peer connection: our microphone out (optional), avatar video + audio in.

        ``count_only``: receive without decoding (:mod:`clients.count_only`); the frames are then in
        ``self.counted["video"]`` (RTP timestamp and arrival of each), not in ``recording``."""
        self.pc = RTCPeerConnection()
        self.mic = mic
        if mic is not None:
            self.pc.addTrack(mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        if self.arrival_buffers:
            self.receive_buffers = install_receive_buffers(self.pc.getTransceivers())
        self.pc.on("track", self._on_track)
        if count_only:
            self.counted = count_receivers(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.request("offer", timeout=timeout, sdp=self.pc.localDescription.sdp)
        self.answer_sdp = str(answer["sdp"])  # as the server wrote it (aiortc's remoteDescription drops a=ptime)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._spawn(self._read_video(track) if track.kind == "video" else self._read_audio(track))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            image = frame.to_ndarray(format="rgb24")
            self.recording.add_frame(ReceivedFrame(int(frame.pts or 0), arrival, image))
            self._frame_event.set()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            frame.pts = None
            arrival = time.monotonic()
            for out in resampler.resample(frame):
                self.recording.audio.append(out.to_ndarray().reshape(-1).astype(np.int16))
                self.recording.audio_arrivals.append(arrival)

    async def wait_frames(self, count: int, timeout: float = 20.0) -> list[ReceivedFrame]:
        """Wait until ``count`` frames in total have been received; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.recording.frames) < count:
            self._frame_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"received {len(self.recording.frames)} of {count} frames in {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._frame_event.wait(), remaining)
        return self.recording.frames

    async def stop_media(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def close(self) -> None:
        await self.stop_media()
        if self.ws is not None:
            await self.ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> StyleTalkClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------- recording
    def save_mp4(self, path: str | Path, fps: int = 30) -> Path:
        """Write the received video (and audio, when any) to an MP4 (H.264 if available, else MPEG-4)."""
        frames = self.recording.frames
        if not frames:
            raise ValueError("no video frames received")
        path = Path(path)
        rec = self.recording
        with av.open(str(path), "w") as out:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            vs = out.add_stream(codec, rate=fps)
            vs.height, vs.width = frames[0].image.shape[:2]
            vs.pix_fmt = "yuv420p"
            aus = out.add_stream("aac", rate=48_000, layout="mono") if rec.audio else None
            first = frames[0].pts
            last_pts = -1
            for f in frames:
                pts = max(last_pts + 1, round((f.pts - first) * fps / 90_000))
                last_pts = pts
                vf = av.VideoFrame.from_ndarray(f.image, format="rgb24")
                vf.pts = pts
                vf.time_base = Fraction(1, fps)
                out.mux(vs.encode(vf))
            out.mux(vs.encode(None))
            if aus is not None:
                # Place the audio against the video by arrival time; AAC wants 1024-sample frames.
                audio = np.concatenate(rec.audio).reshape(1, -1)  # (1, n) s16 mono 48 kHz
                start = max(0, round((rec.audio_arrivals[0] - frames[0].arrival) * 48_000))
                for i in range(0, audio.shape[1] - 1023, 1024):
                    chunk = np.ascontiguousarray(audio[:, i : i + 1024])
                    af = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                    af.sample_rate = 48_000
                    af.pts = start + i
                    af.time_base = Fraction(1, 48_000)
                    out.mux(aus.encode(af))
                out.mux(aus.encode(None))
        return path


async def _run(args: argparse.Namespace) -> int:
    mic = None
    if args.wav:
        pcm, rate = read_wav(args.wav)
        mic = MicrophoneTrack(to_16k(pcm, rate), loop=args.loop)
    client = StyleTalkClient(args.url, token=args.token, arrival_buffers=not args.aiortc_buffers)
    welcome = await client.connect()
    print(f"session {welcome['session']}; styles: {', '.join(welcome['styles'])}")
    await client.start_media(mic)
    if args.style:
        print(
            "set_style:", await client.request("set_style", name=args.style, transition_ms=args.transition_ms)
        )
    await asyncio.sleep(args.seconds)
    stats = await client.request("stats")
    received = {"frames": len(client.recording.frames), "fps": round(client.recording.fps(), 2)}
    if args.json:
        print(json.dumps({"received": received, "stats": stats}, indent=1))
    else:
        print(summarize(stats, received))
    if args.out:
        print("wrote", client.save_mp4(args.out))
    await client.close()
    return 0


def summarize(stats: dict[str, Any], received: dict[str, Any]) -> str:
    """A few lines a person reads after a run (``--json`` prints everything)."""
    eng = stats.get("engine") or {}

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    total = (eng.get("latency_ms") or {}).get("total") or {}
    av = eng.get("av_offset_ms") or {}
    lines = [
        f"received {received['frames']} frames at {received['fps']:.1f} fps",
        f"engine: {eng.get('frames_sent', 0)} frames sent ({eng.get('fresh_frames', 0)} fresh, "
        f"{eng.get('late_frames', 0)} repeated late, {eng.get('dropped_frames', 0)} skipped), "
        f"style {eng.get('style')}, output delay {ms(eng.get('delay_ms'))}",
        f"latency audio->sent: p50 {ms(total.get('p50'))}, p95 {ms(total.get('p95'))}; "
        f"A/V offset p95 {ms(av.get('p95'))}; errors {eng.get('errors', 0)}",
    ]
    return "\n".join(lines)


def _connect_error(url: str, exc: BaseException) -> str:
    """One line for a failed connection (no traceback): what happened and what to try."""
    from websockets.exceptions import InvalidStatus, InvalidURI

    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        hint = " (missing or wrong token? pass --token)" if code in (401, 403) else ""
        return f"the server at {url} refused the connection: HTTP {code}{hint}"
    if isinstance(exc, InvalidURI):
        return f"{url} is not a websocket URL: use ws://HOST:PORT/ws (or wss://)"
    if isinstance(exc, TimeoutError):
        return f"no answer from {url} in time"
    return f"cannot connect to {url}: {exc} (is `styletalk-live serve` running there?)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="websocket URL of the server")
    parser.add_argument("--token", default=None, help="access token, if the server requires one")
    parser.add_argument("--wav", default=None, help="16-bit WAV to send as microphone (default: silence)")
    parser.add_argument("--loop", action="store_true", help="loop the WAV")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to stream")
    parser.add_argument("--style", default=None, help="switch to this style after connecting")
    parser.add_argument("--transition-ms", type=int, default=250)
    parser.add_argument("--out", default=None, help="write the received video to this MP4")
    parser.add_argument("--aiortc-buffers", action="store_true",
                        help="receive through aiortc's own jitter buffers (4 audio packets, one video frame behind)")
    parser.add_argument("--json", action="store_true", help="print the full stats as JSON instead of a summary")
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in ("ws", "wss"):
        print(f"python -m clients.client: error: --url {args.url} is not a websocket URL: use "
              "ws://HOST:PORT/ws (or wss://)", file=sys.stderr)
        return 2
    if args.wav and not Path(args.wav).is_file():
        print(f"python -m clients.client: error: --wav {args.wav} does not exist", file=sys.stderr)
        return 2
    from websockets.exceptions import InvalidHandshake, InvalidURI

    try:
        return asyncio.run(_run(args))
    except ClientError as exc:
        print(f"python -m clients.client: server refused: {exc}", file=sys.stderr)
        return 1
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        print(f"python -m clients.client: error: {_connect_error(args.url, exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
