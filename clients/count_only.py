"""Receive WebRTC video without decoding it: count each assembled encoded frame and when it arrived.

What a crowd of viewers must exercise is the fan-out: ICE, DTLS-SRTP, RTP depacketisation, aiortc's jitter
buffer (frame assembly by RTP timestamp and marker, NACK and PLI), the same as a real viewer. What it need not do
is decode VP8: at 30 fps that is most of an aiortc viewer's CPU, and 50 decoding viewers swamp a 2-core machine
(the figure would then measure the viewers, not Janus). So a count-only receiver keeps all of aiortc's receiving
path and swaps only the decoder for :class:`FrameCounter`, which logs each complete frame (RTP timestamp,
``time.monotonic()`` arrival, size, keyframe) and returns no picture.

How it is injected, and why this way: aiortc has no decoder hook. Each ``RTCRtpReceiver`` runs a decoder
thread that calls the module-level ``aiortc.rtcrtpreceiver.get_decoder(codec)`` with a codec object from the
parameters given to ``RTCRtpReceiver.receive()``; the peer connection creates the receivers itself. So
:func:`count_only` wraps ``receive()`` of *that peer connection's* receivers to hand them a
:class:`CountOnlyCodec` (the same codec, marked, carrying its :class:`FrameLog`), and :func:`install` replaces
``get_decoder`` once per process by a dispatcher that returns a :class:`FrameCounter` for a marked codec and
aiortc's own decoder for every other one. Decoding receivers (the presenter's, full viewers) in the same
process are unaffected.

Frames before the first keyframe are not counted (a real decoder could not show them either), so the first
counted frame is what "joined" means for a decoding viewer too. A count-only arrival is taken when the frame
is handed to the decoder thread, i.e. without the few milliseconds a decoding viewer spends decoding it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiortc.rtcrtpreceiver as aiortc_receiver
from aiortc import RTCPeerConnection
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from av.frame import Frame

VP8_START_CODE = b"\x9d\x01\x2a"


@dataclass
class FrameLog:
    """Complete encoded frames of one receiver, appended by its decoder thread (list appends are atomic)."""

    kind: str
    rtp: list[int] = field(default_factory=list)  # RTP timestamp as aiortc's receiver gives it (from 0)
    arrival: list[float] = field(default_factory=list)  # time.monotonic() when the frame was complete
    size: list[int] = field(default_factory=list)  # bytes of the encoded frame
    keyframe: list[bool] = field(default_factory=list)
    skipped: int = 0  # frames before the first keyframe (video)
    dimensions: tuple[int, int] | None = None  # (width, height) from the last VP8 keyframe header
    bad_frames: int = 0  # VP8 keyframes without the VP8 start code: not VP8 at all

    def __len__(self) -> int:
        return len(self.arrival)


@dataclass(eq=False)
class CountOnlyCodec(RTCRtpCodecParameters):
    """A negotiated codec marked "count, don't decode", carrying the receiver's log."""

    log: FrameLog | None = None


def vp8_keyframe(data: bytes) -> tuple[bool, tuple[int, int] | None]:
    """(keyframe?, (width, height) from a keyframe's header) of one VP8 frame (RFC 6386, 9.1)."""
    if not data or data[0] & 0x01:
        return False, None
    if len(data) < 10 or data[3:6] != VP8_START_CODE:
        return True, None
    return True, (int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF)


class FrameCounter(Decoder):
    """The decoder of a count-only receiver: logs every complete frame, returns no picture."""

    def __init__(self, log: FrameLog, video: bool) -> None:
        self.log = log
        self.video = video
        self._keyframe_seen = not video

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        now = time.monotonic()
        key, dims = vp8_keyframe(encoded_frame.data) if self.video else (False, None)
        if key:
            self._keyframe_seen = True
            if dims is None:
                self.log.bad_frames += 1
            else:
                self.log.dimensions = dims
        if not self._keyframe_seen:
            self.log.skipped += 1
            return []
        self.log.rtp.append(int(encoded_frame.timestamp))
        self.log.size.append(len(encoded_frame.data))
        self.log.keyframe.append(key)
        self.log.arrival.append(now)  # last: a reader sees complete rows up to len(arrival)
        return []


_aiortc_get_decoder = aiortc_receiver.get_decoder
_install_lock = threading.Lock()


def _get_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    if isinstance(codec, CountOnlyCodec) and codec.log is not None:
        return FrameCounter(codec.log, video=codec.mimeType.lower().startswith("video/"))
    return _aiortc_get_decoder(codec)


def install() -> None:
    """Let count-only receivers pick :class:`FrameCounter` (idempotent; other receivers keep aiortc's decoders)."""
    with _install_lock:
        aiortc_receiver.get_decoder = _get_decoder


def marked(codec: RTCRtpCodecParameters, log: FrameLog) -> CountOnlyCodec:
    """``codec`` as a :class:`CountOnlyCodec` logging to ``log`` (same fields: depayloading is unchanged)."""
    return CountOnlyCodec(**{f.name: getattr(codec, f.name) for f in dataclasses.fields(codec)}, log=log)


def count_only(pc: RTCPeerConnection) -> dict[str, FrameLog]:
    """Make every receiver of ``pc`` count instead of decode; call after ``setRemoteDescription`` (the
    receivers exist) and before the connection comes up (``receive()`` runs then). Returns {kind: log}."""
    install()
    logs: dict[str, FrameLog] = {}
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        log = logs.setdefault(transceiver.kind, FrameLog(transceiver.kind))
        original = receiver.receive

        async def receive(parameters: RTCRtpReceiveParameters, original: Any = original,
                          log: FrameLog = log) -> None:
            codecs: list[RTCRtpCodecParameters] = [marked(c, log) for c in parameters.codecs]
            await original(dataclasses.replace(parameters, codecs=codecs))

        receiver.receive = receive  # type: ignore[method-assign]
    return logs
