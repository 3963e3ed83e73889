"""Encode a room once and send it as plain RTP (VP8 + Opus) to one or more Janus Streaming mountpoints.

Why plain RTP into a Streaming-plugin mountpoint rather than a VideoRoom publisher: the engine then needs no
second WebRTC stack (no ICE/DTLS/SRTP handshake with Janus, nothing to renegotiate after Janus restarts: only
new UDP ports), the same packets can be sent to several Janus instances at once (one encode, any number of
fan-out nodes), and Janus relays them untouched.

The encoders are aiortc's own (libvpx VP8 through PyAV, Opus), already producing RTP payloads; VP8 runs in a
worker thread like aiortc's sender does. Keyframes: every ``KEYFRAME_INTERVAL`` frames and on request (a viewer's
WebRTC came up). UDP to a port nobody listens on (Janus gone) is simply lost; the publisher never blocks the room.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from streaming.contracts import MediaSession
from streaming.webrtc import SessionAudioTrack, SessionVideoTrack

log = logging.getLogger(__name__)

VIDEO_PT = 96
AUDIO_PT = 111
# frames (1 s at 30 fps): the longest a viewer that lost packets waits to decode again (Janus cannot relay its
# keyframe request to a plain-RTP source)
KEYFRAME_INTERVAL = 30
VIDEO_BITRATE = 1_000_000
# (engine frame index, RTP timestamp) of the newest frames sent, in the room's stats: 10 s at 30 fps, so that a
# caller polling every few seconds can map every frame a viewer receives back to the engine's frame index
FRAME_MAP_LENGTH = 300


@dataclass(frozen=True)
class RtpTarget:
    host: str
    audio_port: int
    video_port: int


class _Sink(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: Janus gone; keep sending
        pass


@dataclass
class PublisherStats:
    frames: int = 0
    keyframes: int = 0
    audio_frames: int = 0
    packets: int = 0
    bytes: int = 0
    encode_ms: list[float] = field(default_factory=list)  # last 300 VP8 encode times
    # [engine frame index, RTP timestamp on the wire, time.monotonic() when sent] of the newest FRAME_MAP_LENGTH
    # frames. The RTP clock runs on the wall clock (see RtpPublisher._video), so no formula turns one into the
    # other: this table does. Janus and the viewer's receiver shift the timestamps by a constant, which
    # clients.frame_index finds. The send time says which engine frames went out in a time window (a pause or an
    # interrupt re-plans the session's pts, so pts alone does not).
    frame_map: deque[tuple[int, int, float]] = field(default_factory=lambda: deque(maxlen=FRAME_MAP_LENGTH))

    def as_dict(self) -> dict[str, Any]:
        times = sorted(self.encode_ms)
        p50 = times[len(times) // 2] if times else None
        return {"frames": self.frames, "keyframes": self.keyframes, "audio_frames": self.audio_frames,
                "packets": self.packets, "bytes": self.bytes, "encode_ms_p50": p50,
                "frame_map": [list(pair) for pair in self.frame_map]}


class RtpPublisher:
    """Reads one ``MediaSession`` (a broadcast subscriber), encodes it once, sends RTP to every target."""

    def __init__(self, source: MediaSession, targets: list[RtpTarget] | None = None,
                 bitrate: int = VIDEO_BITRATE) -> None:
        self.source = source
        self.targets: list[RtpTarget] = list(targets or [])
        self.stats = PublisherStats()
        self._bitrate = bitrate
        self._vp8 = Vp8Encoder()
        self._vp8.target_bitrate = bitrate
        self._opus = OpusEncoder()
        self._ssrc = {"v": random.getrandbits(32), "a": random.getrandbits(32)}
        self._seq = {"v": random.getrandbits(16), "a": random.getrandbits(16)}
        self._ts0 = {"v": random.getrandbits(32), "a": random.getrandbits(32)}
        self._keyframe = True
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("0.0.0.0", 0))
        self._transport = transport
        self._tasks = [loop.create_task(self._video(), name="rtp-video"),
                       loop.create_task(self._audio(), name="rtp-audio")]

    def request_keyframe(self) -> None:
        self._keyframe = True

    def set_targets(self, targets: list[RtpTarget]) -> None:
        self.targets = list(targets)
        self._keyframe = True  # a new mountpoint has no buffered keyframe yet

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - closing anyway
                pass
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _send(self, kind: str, payloads: list[bytes], timestamp: int, marker_last: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=VIDEO_PT if kind == "v" else AUDIO_PT,
                marker=int(marker_last and i == len(payloads) - 1),
                sequence_number=self._seq[kind],
                timestamp=(self._ts0[kind] + timestamp) & 0xFFFFFFFF,
                ssrc=self._ssrc[kind],
                payload=payload,
            )
            self._seq[kind] = (self._seq[kind] + 1) & 0xFFFF
            data = packet.serialize()
            for target in self.targets:
                port = target.video_port if kind == "v" else target.audio_port
                transport.sendto(data, (target.host, port))
                self.stats.packets += 1
                self.stats.bytes += len(data)

    async def _video(self) -> None:
        track = SessionVideoTrack(self.source)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        last_pts = -1
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # RTP time from the wall clock, strictly increasing: the session's own pts may step back (an
            # interrupt or pause re-plans frames), which libvpx refuses and viewers' jitter buffers dislike
            last_pts = max(last_pts + 1, round((time.monotonic() - start) * 90_000))
            frame.pts = last_pts
            force = self._keyframe or self.stats.frames % KEYFRAME_INTERVAL == 0
            self._keyframe = False
            t0 = time.perf_counter()
            try:
                payloads, timestamp = await loop.run_in_executor(None, self._vp8.encode, frame, force)
            except (ValueError, OSError) as exc:  # av errors: a fresh encoder (and a keyframe) next frame
                log.warning("VP8 encode failed (%s); restarting the encoder", exc)
                self._vp8 = Vp8Encoder()
                self._vp8.target_bitrate = self._bitrate
                self._keyframe = True
                continue
            self.stats.encode_ms.append((time.perf_counter() - t0) * 1000)
            del self.stats.encode_ms[:-300]
            self.stats.frames += 1
            self.stats.keyframes += int(force)
            if track.last_index is not None:
                self.stats.frame_map.append((track.last_index, (self._ts0["v"] + timestamp) & 0xFFFFFFFF,
                                             round(time.monotonic(), 4)))
            self._send("v", payloads, timestamp, marker_last=True)

    async def _audio(self) -> None:
        track = SessionAudioTrack(self.source)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            payloads, timestamp = self._opus.encode(frame)
            self.stats.audio_frames += 1
            self._send("a", payloads, timestamp, marker_last=False)
