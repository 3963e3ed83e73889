"""Two waits aiortc adds on the wire, and how a media peer removes them.

**Microphone in (uplink).** aiortc gives every audio receiver a jitter buffer that releases a packet only once
four later ones have arrived (``JitterBuffer(capacity=16, prefetch=4)``): each 20 ms Opus packet of the
presenter's microphone reached the engine 80 ms after it arrived, and that wait adds to everything the presenter
sees and hears back (the engine's output delay is counted from when the audio reaches it). The engine needs no
smoothing there: it places each block on its own media clock as it comes (``engine.pacing.AudioTimeline``:
a stall becomes inserted silence), and a smoother stream does not make phonemes earlier. So
:class:`ArrivalAudioBuffer` hands every packet on when it arrives and drops only duplicates and packets older than
one already handed on (a reordered 20 ms of speech is lost rather than the whole stream held back for it).

**Received video (a Python client).** aiortc's video buffer knows a frame is complete only when a packet of the
*next* frame arrives: every frame waited one frame interval (33 ms at 30 fps) before decoding.
:class:`MarkerVideoBuffer` also closes a frame on its RTP marker bit (set on a frame's last packet by aiortc and
by browsers). :func:`install_receive_buffers` gives a client's receivers both arrival buffers.

**Video out (downlink).** The receiver decides how long a frame waits before it is shown (its jitter buffer,
lengthened by A/V sync); the sender may bound that with the RTP *playout-delay* header extension
(``http://www.webrtc.org/experiments/rtp-hdrext/playout-delay``: 3 bytes, 12-bit minimum and maximum in 10 ms
units). aiortc neither negotiates nor writes it; :func:`enable_playout_delay` adds it to aiortc's list of video
header extensions (so an answer keeps it when the browser offers it) and :class:`PlayoutDelayExtensionsMap`
writes it into every video packet of one sender.

**Audio packet length.** aiortc's Opus encoder cuts the outgoing audio into 20 ms packets, and a browser sends its
microphone in 20 ms packets unless the answer asks for shorter ones. A packet leaves only once its last sample
exists, and a receiver's jitter buffer counts in packets: 10 ms packets halve both waits (at twice the packets,
each with its RTP/SRTP overhead). :class:`LowDelayOpusEncoder` is aiortc's encoder with 10 ms frames (and 2.5 ms
instead of 6.5 ms of lookahead)
(:func:`install_audio_encoder` gives it to one sender); :func:`answer_with_ptime` writes ``a=ptime`` into the
audio sections of an answer, which Chromium's Opus encoder takes as its frame length.

**Video bitrate steps.** aiortc's VP8 encoder follows the receiver's bandwidth estimate (REMB) and, whenever it
moves by more than 10 %, throws its libvpx encoder away and starts a new one: a keyframe (several times a normal
frame's bytes and encode time) each time. A browser's estimate climbs in such steps for the first tens of seconds:
10-15 keyframes a minute in Chromium, each a frame that comes late and a presented-frame gap of 67 ms.
:class:`SteadyVp8Encoder` starts at a fixed rate and re-creates its encoder only when the estimate falls below half
of it (a congested link) or, after such a fall, has doubled again.

All of these reach into aiortc's private state (name-mangled attributes) because aiortc has no setting for either;
:func:`install_mic_buffer` and :func:`install_playout_delay` check that the attribute they replace exists and
report it (logged) when an aiortc upgrade moved it, and ``tests/test_rtp_latency.py`` fails then.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import av
from aiortc.codecs import HEADER_EXTENSIONS
from aiortc.codecs.opus import SAMPLE_RATE as OPUS_RATE  # 48 kHz: aiortc's Opus encoder (and our audio track)
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import MIN_BITRATE, Vp8Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensions,
    HeaderExtensionsMap,
    RtpPacket,
    pack_header_extensions,
    unpack_header_extensions,
)

log = logging.getLogger(__name__)

PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
PLAYOUT_DELAY_OFFER_ID = 5  # the id aiortc offers it under (as an answerer it takes the offer's id)
PLAYOUT_DELAY_UNIT_MS = 10
PLAYOUT_DELAY_MAX_MS = 0xFFF * PLAYOUT_DELAY_UNIT_MS
_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_SENDER_MAP = "_RTCRtpSender__rtp_header_extensions_map"
_SENDER_ENCODER = "_RTCRtpSender__encoder"
OPUS_FRAME_MS = (10, 20)  # frame lengths both ends of our links handle (Opus allows 2.5..60)
OPUS_APPLICATIONS = ("voip", "lowdelay")  # libopus modes: aiortc's (6.5 ms lookahead), CELT only (2.5 ms)
_MAX_MISORDER = 100  # as aiortc's buffer: a packet this far behind the last one means the stream restarted


class ArrivalAudioBuffer(JitterBuffer):
    """Audio "jitter buffer" that waits for nothing: each RTP packet is one complete audio frame, handed on at once.

    Keeps aiortc's ``add(packet) -> (pli_flag, frame)`` contract; never asks for a picture loss indication.
    """

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None  # sequence number of the last packet handed on
        self.late = 0  # packets dropped: duplicates or older than one handed on (stats, tests)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = (seq - self._last) % 65536
            behind = (self._last - seq) % 65536
            if ahead == 0 or (ahead >= 0x8000 and behind < _MAX_MISORDER):
                self.late += 1
                return False, None
        self._last = seq
        return False, JitterFrame(data=getattr(packet, "_data", b""), timestamp=packet.timestamp)


class MarkerVideoBuffer(JitterBuffer):
    """aiortc's video jitter buffer (same capacity, loss handling and PLI), handing a frame on as soon as its packets
    from the first to the one with the marker bit are all here, not when the next frame's first packet comes."""

    def __init__(self, capacity: int = 512) -> None:
        super().__init__(capacity=capacity, is_video=True)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        """The oldest complete frame at the buffer's origin, removed; None while a packet of it is missing."""
        assert self._origin is not None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None
            if packets and packet.timestamp != packets[0].timestamp:  # the next frame began: no marker was set
                self.remove(count)
                return _joined(packets)
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return _joined(packets)
        return None


def _joined(packets: list[RtpPacket]) -> JitterFrame:
    return JitterFrame(data=b"".join(getattr(p, "_data", b"") for p in packets), timestamp=packets[0].timestamp)


class TimedBuffer:
    """A receiver's buffer, timed: how long each packet waited in it (arrival -> handed to the decoder).

    aiortc only calls ``add`` on its buffer. The wait is the wire's first stage on the server; the stats report
    its p50/p95 (``mic_hold_ms``): ~0 with :class:`ArrivalAudioBuffer`, ~80 ms with aiortc's own.
    """

    def __init__(self, inner: JitterBuffer, keep: int = 1500) -> None:
        self.inner = inner
        self._arrived: dict[int, float] = {}  # RTP timestamp -> first arrival (monotonic s), in arrival order
        self.holds: deque[float] = deque(maxlen=keep)  # seconds, the newest ``keep`` packets (30 s of 20 ms)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = time.monotonic()
        self._arrived.setdefault(packet.timestamp, now)
        pli, frame = self.inner.add(packet)
        if frame is not None:
            arrived = self._arrived.pop(frame.timestamp, None)
            if arrived is not None:
                self.holds.append(now - arrived)
        while len(self._arrived) > 64:  # packets the buffer dropped or never handed on
            self._arrived.pop(next(iter(self._arrived)))
        return pli, frame

    def hold_ms(self) -> dict[str, float | int] | None:
        return percentiles_ms(self.holds)


def percentiles_ms(seconds: Iterable[float]) -> dict[str, float | int] | None:
    """p50/p95 (ms) and count of waits in seconds; None for none (the transport stats' hold figures)."""
    ms = sorted(1000 * s for s in seconds)
    if not ms:
        return None
    return {"p50": round(ms[len(ms) // 2], 2), "p95": round(ms[int(0.95 * (len(ms) - 1))], 2), "n": len(ms)}


def _has_private(owner: Any, attr: str, kind: type | None, otherwise: str) -> bool:
    """Whether aiortc's ``owner`` still has the private ``attr`` we replace (an instance of ``kind`` when given);
    when an aiortc upgrade moved it, a warning saying what stays as aiortc does it (``otherwise``)."""
    present = hasattr(owner, attr) if kind is None else isinstance(getattr(owner, attr, None), kind)
    if not present:
        log.warning("aiortc's %s has no %s: %s", type(owner).__name__, attr, otherwise)
    return present


def install_mic_buffer(receiver: Any, prefetch: int = 0) -> TimedBuffer | None:
    """Give an aiortc audio ``RTCRtpReceiver`` its buffer (before its first packet): ``prefetch`` 0 = an
    :class:`ArrivalAudioBuffer`, else aiortc's own buffer holding ``prefetch`` packets back (aiortc's default: 4).

    Returns the installed buffer, timed (:class:`TimedBuffer`); None (and a warning) when the receiver has no
    such private buffer (an aiortc that changed): it keeps its own.
    """
    if not _has_private(receiver, _RECEIVER_BUFFER, JitterBuffer, "its audio keeps aiortc's 80 ms buffer"):
        return None
    buffer = TimedBuffer(ArrivalAudioBuffer() if prefetch == 0 else JitterBuffer(capacity=16, prefetch=prefetch))
    setattr(receiver, _RECEIVER_BUFFER, buffer)
    return buffer


def install_video_buffer(receiver: Any) -> bool:
    """Give an aiortc video ``RTCRtpReceiver`` a :class:`MarkerVideoBuffer` (before its first packet); False (and a
    warning) when the receiver has no such private buffer."""
    if not _has_private(receiver, _RECEIVER_BUFFER, JitterBuffer, "video keeps aiortc's one-frame wait"):
        return False
    setattr(receiver, _RECEIVER_BUFFER, MarkerVideoBuffer())
    return True


def install_receive_buffers(transceivers: Iterable[Any]) -> dict[str, TimedBuffer | bool | None]:
    """Arrival buffers for every receiver of a peer (a client recording what it receives, not playing it out):
    audio packets to the decoder as they arrive, video frames on their marker packet. By kind, what was installed
    (audio: its :class:`TimedBuffer`; video: True)."""
    out: dict[str, TimedBuffer | bool | None] = {}
    for transceiver in transceivers:
        if transceiver.kind == "audio":
            out["audio"] = install_mic_buffer(transceiver.receiver, 0)
        elif transceiver.kind == "video":
            out["video"] = install_video_buffer(transceiver.receiver)
    return out


def playout_delay_bytes(min_ms: int, max_ms: int) -> bytes:
    """The extension's 3 bytes: 12-bit minimum, 12-bit maximum, in 10 ms units (values rounded up)."""
    if not 0 <= min_ms <= max_ms <= PLAYOUT_DELAY_MAX_MS:
        raise ValueError(f"playout delay needs 0 <= min <= max <= {PLAYOUT_DELAY_MAX_MS} ms, got {min_ms}, {max_ms}")
    lo = -(-min_ms // PLAYOUT_DELAY_UNIT_MS)
    hi = -(-max_ms // PLAYOUT_DELAY_UNIT_MS)
    return ((lo << 12) | hi).to_bytes(3, "big")


def enable_playout_delay() -> None:
    """Let aiortc negotiate the playout-delay extension on video (idempotent; process-wide: aiortc keeps one list).

    A peer that negotiates it but writes nothing (every peer without :func:`install_playout_delay`) sends the same
    packets as before.
    """
    video = HEADER_EXTENSIONS["video"]
    if not any(x.uri == PLAYOUT_DELAY_URI for x in video):
        video.append(RTCRtpHeaderExtensionParameters(id=PLAYOUT_DELAY_OFFER_ID, uri=PLAYOUT_DELAY_URI))


class PlayoutDelayExtensionsMap(HeaderExtensionsMap):
    """aiortc's header-extension map of one sender, plus the playout-delay extension in every packet it writes
    (when the remote side negotiated it)."""

    def __init__(self, min_ms: int, max_ms: int) -> None:
        super().__init__()
        self.value = playout_delay_bytes(min_ms, max_ms)
        self.extension_id: int | None = None  # negotiated id; None = not negotiated, nothing written

    def configure(self, parameters: RTCRtpParameters) -> None:
        super().configure(parameters)
        self.extension_id = next((x.id for x in parameters.headerExtensions if x.uri == PLAYOUT_DELAY_URI), None)

    def set(self, values: HeaderExtensions) -> tuple[int, bytes]:
        profile, data = super().set(values)
        if self.extension_id is None:
            return profile, data
        extensions = unpack_header_extensions(profile, data) if data else []
        return pack_header_extensions([*extensions, (self.extension_id, self.value)])


def install_playout_delay(sender: Any, min_ms: int, max_ms: int) -> bool:
    """Make an aiortc video ``RTCRtpSender`` write playout delay ``min_ms..max_ms`` (before it starts sending).

    False (and a warning) when the sender has no such private map (an aiortc that changed).
    """
    if not _has_private(sender, _SENDER_MAP, HeaderExtensionsMap, "no playout-delay extension sent"):
        return False
    enable_playout_delay()
    setattr(sender, _SENDER_MAP, PlayoutDelayExtensionsMap(min_ms, max_ms))
    return True


class LowDelayOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder (same bitrate and channels) cutting ``frame_ms`` frames, not 20, in libopus's
    ``application`` mode: ``lowdelay`` (CELT only) looks 2.5 ms ahead where aiortc's ``voip`` looks 6.5 ms ahead
    (the encoder's initial padding: 120 vs 312 samples), and at aiortc's 96 kbit/s CELT carries speech well."""

    def __init__(self, frame_ms: int = 10, application: str = "lowdelay") -> None:
        if frame_ms not in OPUS_FRAME_MS:
            raise ValueError(f"Opus frame length must be one of {OPUS_FRAME_MS} ms, got {frame_ms}")
        if application not in OPUS_APPLICATIONS:
            raise ValueError(f"Opus application must be one of {OPUS_APPLICATIONS}, got {application!r}")
        super().__init__()
        self.frame_ms = frame_ms
        self.application = application
        # libopus (through FFmpeg) takes its frame length from this option; the resampler hands it frames of
        # exactly that many samples (the codec refuses any other size)
        self.codec.options = {**dict(self.codec.options), "frame_duration": str(frame_ms), "application": application}
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE,
                                           frame_size=OPUS_RATE * frame_ms // 1000)


def negotiated_codec(transceiver: Any) -> str:
    """The codec a transceiver sends with, lower-case (``audio/opus``, ``video/vp8``), "" before negotiation."""
    codecs = getattr(transceiver, "_codecs", None) or []
    return str(codecs[0].mimeType).lower() if codecs else ""


def install_audio_encoder(transceiver: Any, frame_ms: int, application: str = "voip") -> bool:
    """Make an aiortc audio transceiver's sender send ``frame_ms`` Opus packets in libopus mode ``application``
    (after the local description is set, before the sender starts; 20 ms ``voip`` = aiortc's own encoder, nothing
    installed). False (and a warning) when Opus was not negotiated or the sender has no such private slot."""
    if frame_ms == 20 and application == "voip":
        return True
    sender = transceiver.sender
    if negotiated_codec(transceiver) != "audio/opus":
        log.warning("audio codec %r is not Opus: its packets stay as aiortc makes them", negotiated_codec(transceiver))
        return False
    if not _has_private(sender, _SENDER_ENCODER, None, "audio keeps aiortc's 20 ms packets"):
        return False
    # aiortc creates an encoder only when this slot is empty
    setattr(sender, _SENDER_ENCODER, LowDelayOpusEncoder(frame_ms, application))
    return True


def answer_with_ptime(sdp: str, ptime_ms: int) -> str:
    """``sdp`` with ``a=ptime:ptime_ms`` in every audio section (replacing one already there): the packet length
    the answerer wants to receive (RFC 4566). 0 = unchanged."""
    if ptime_ms <= 0:
        return sdp
    out: list[str] = []
    audio = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if audio:
                out.append(f"a=ptime:{ptime_ms}")
            audio = line.startswith("m=audio")
        elif audio and line.startswith("a=ptime:"):
            continue
        out.append(line)
    if audio:
        out.append(f"a=ptime:{ptime_ms}")
    return "\r\n".join(out) + "\r\n"


class SteadyVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder whose bitrate (and so its libvpx encoder) changes only by factors of two.

    ``bitrate``: the rate it starts at and never exceeds (bit/s). aiortc's sender writes every REMB estimate into
    ``target_bitrate``; the encoder re-creates its codec when that moves by > 10 %, so this setter keeps the
    current value unless the estimate is below half of it or (after a fall) at least twice it.
    """

    def __init__(self, bitrate: int) -> None:
        super().__init__()
        self.max_bitrate = max(MIN_BITRATE, int(bitrate))
        self._rate = self.max_bitrate
        self.rate_changes = 0  # times the rate (and so the libvpx encoder, with a keyframe) changed

    @property
    def target_bitrate(self) -> int:
        return self._rate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        estimate = max(MIN_BITRATE, min(int(bitrate), self.max_bitrate))
        if estimate < self._rate / 2 or estimate >= min(2 * self._rate, self.max_bitrate) > self._rate:
            self._rate = estimate
            self.rate_changes += 1


def install_video_encoder(transceiver: Any, bitrate: int) -> SteadyVp8Encoder | None:
    """Give an aiortc video transceiver's sender a :class:`SteadyVp8Encoder` at ``bitrate`` bit/s (after the local
    description is set, before the sender starts: aiortc creates an encoder for the negotiated codec only when the
    slot is empty). 0 = aiortc's own; None when VP8 was not negotiated (another codec keeps aiortc's encoder) or
    (with a warning) the sender has no such private slot."""
    if bitrate <= 0 or negotiated_codec(transceiver) != "video/vp8":
        return None
    sender = transceiver.sender
    if not _has_private(sender, _SENDER_ENCODER, None, "VP8 follows every bandwidth estimate"):
        return None
    encoder = SteadyVp8Encoder(bitrate)
    setattr(sender, _SENDER_ENCODER, encoder)
    return encoder
