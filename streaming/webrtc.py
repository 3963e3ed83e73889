"""aiortc glue: one peer connection per client, bridging WebRTC media to an engine ``LiveSession``.

Three pieces, each a thin adapter so the engine stays transport-free:

- :class:`SessionVideoTrack` pulls ``OutputVideoFrame``s (paced at 30 fps by the session's media clock)
  and stamps them in the 90 kHz RTP clock from the frame's media-clock pts, so the receiver sees exactly the
  engine's timeline, including frames the engine dropped when behind.
- :class:`SessionAudioTrack` pulls the session's delayed 16 kHz input audio and re-chunks it to the 20 ms
  48 kHz frames aiortc's Opus encoder is built around, stamped from the same media clock.
- :func:`pump_microphone` feeds the remote microphone into ``session.push_audio`` as 16 kHz mono int16
  (aiortc decodes Opus to 48 kHz stereo; resampling here keeps that cost out of the engine's pacing loop).

:class:`MediaPeer` owns the ``RTCPeerConnection`` and the tasks of one client; ``close()`` releases all of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from engine.timing import SAMPLE_RATE, VIDEO_CLOCK_RATE
from streaming.contracts import MediaSession
from streaming.rtp_latency import (
    OPUS_RATE,
    SteadyVp8Encoder,
    TimedBuffer,
    answer_with_ptime,
    enable_playout_delay,
    install_audio_encoder,
    install_mic_buffer,
    install_playout_delay,
    install_video_encoder,
    percentiles_ms,
)

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
ENGINE_RATE = SAMPLE_RATE
PC_CLOSE_TIMEOUT_S = 5.0  # aiortc's close stops the senders/receivers and transports: well under a second


class _RateMeter:
    """Frames per second over a sliding window of recent arrival times (for the stats readout)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self, now: float) -> None:
        self._times.append(now)
        cut = now - self.window_s
        if self._times[0] < cut:
            self._times = [t for t in self._times if t >= cut]

    def rate(self, now: float) -> float:
        recent = [t for t in self._times if t >= now - self.window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0


class SessionVideoTrack(MediaStreamTrack):
    """Video out: the session's frames as ``av.VideoFrame`` with pts in the 90 kHz clock."""

    kind = "video"

    def __init__(self, session: MediaSession) -> None:
        super().__init__()
        self._session = session
        self.frames_sent = 0
        self.failure: BaseException | None = None
        self.first_index: int | None = None  # session frame index of the first frame handed to the encoder
        self.last_index: int | None = None
        self.meter = _RateMeter()
        # the send loop's timing (s): a frame handed on after its due time; aiortc's work on the previous frame
        # (conversion, encode in its executor, packetisation, SRTP, socket) between our return and its next call
        self.lateness: deque[float] = deque(maxlen=900)
        self.encode_send: deque[float] = deque(maxlen=900)
        self._returned: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._returned is not None:
            self.encode_send.append(time.monotonic() - self._returned)
        try:
            out = await self._session.next_video_frame()
        except Exception as exc:  # noqa: BLE001 - session closed or failed: end this track only
            self.failure = exc
            raise MediaStreamError from exc
        image = np.ascontiguousarray(out.image)  # (H, W, 3) uint8 RGB
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = round(Fraction(out.pts) * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        if self.first_index is None:
            self.first_index = int(out.index)
        self.last_index = int(out.index)
        self.frames_sent += 1
        now = time.monotonic()
        self.meter.tick(now)
        due = out.stamps.get("due")
        if due is not None:
            self.lateness.append(now - due)
        self._returned = time.monotonic()
        return frame

    def timing_ms(self) -> dict[str, Any]:
        """p50/p95 of ``lateness`` and ``encode_send`` in ms (the stats' ``video_send``)."""
        return {"late_ms": percentiles_ms(self.lateness), "encode_send_ms": percentiles_ms(self.encode_send)}


class SessionAudioTrack(MediaStreamTrack):
    """Audio out: the session's 16 kHz chunks resampled to 48 kHz and cut into exact ``frame_ms`` frames.

    The session releases a chunk at its own pts, all of its samples at once; a frame goes to the encoder as soon
    as its last sample is here. The 16 -> 48 kHz resampler keeps its filter's tail (~1 ms) until the next chunk
    comes, so a chunk alone never fills a frame of its length: every frame waited for the next chunk (one chunk,
    20 ms, per packet). The first chunk is front-padded with that many samples of silence instead (audio 1 ms
    later, once), and ``holds`` times each frame from the release of its last sample to its hand-off.
    """

    kind = "audio"

    def __init__(self, session: MediaSession, frame_ms: int = 20) -> None:
        super().__init__()
        self._session = session
        self.frame_samples = OPUS_RATE * frame_ms // 1000  # 48 kHz samples per frame
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        self._fifo = av.AudioFifo()
        self._next_pts: int | None = None
        self._pad = 0  # 48 kHz samples of silence put in front of the first chunk
        self._read = 0  # 48 kHz samples read from the fifo so far (pad included)
        self._content = 0  # 48 kHz samples of session audio released so far (chunk lengths x 3)
        # (session audio released up to, in 48 kHz samples; when), per chunk
        self._released: deque[tuple[int, float]] = deque()
        self.holds: deque[float] = deque(maxlen=1500)  # s: last sample released -> frame handed on
        self.chunks_received = 0
        self.frames_sent = 0
        self.failure: BaseException | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while self._fifo.samples < self.frame_samples:
            try:
                chunk = await self._session.next_audio_chunk()
            except Exception as exc:  # noqa: BLE001 - session closed or failed: end this track only
                self.failure = exc
                raise MediaStreamError from exc
            released = time.monotonic()
            pcm = np.ascontiguousarray(np.asarray(chunk.pcm, dtype=np.int16).reshape(1, -1))  # (1, n) s16
            source = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            source.sample_rate = ENGINE_RATE
            parts = self._resampler.resample(source)
            if self._next_pts is None:  # anchor the 48 kHz timeline on the media clock once
                self._next_pts = round(Fraction(chunk.pts) * OPUS_RATE)
                short = pcm.shape[1] * OPUS_RATE // ENGINE_RATE - sum(f.samples for f in parts)
                if short > 0:  # the resampler's filter tail (see the class docstring)
                    self._pad = short
                    pad = av.AudioFrame.from_ndarray(np.zeros((1, short), np.int16), format="s16", layout="mono")
                    pad.sample_rate = OPUS_RATE
                    parts.insert(0, pad)
            for resampled in parts:
                resampled.pts = None  # the fifo checks pts continuity; we stamp on the way out instead
                self._fifo.write(resampled)
            self._content += pcm.shape[1] * OPUS_RATE // ENGINE_RATE
            self._released.append((self._content, released))
            self.chunks_received += 1
        frame = self._fifo.read(self.frame_samples)
        assert frame is not None and self._next_pts is not None
        self._read += self.frame_samples
        end = self._read - self._pad  # the frame's last session sample (48 kHz count), wherever the resampler is
        while self._released and self._released[0][0] < end:  # chunks wholly before it
            self._released.popleft()
        if self._released:
            self.holds.append(time.monotonic() - self._released[0][1])
        frame.pts = self._next_pts
        frame.time_base = Fraction(1, OPUS_RATE)
        frame.sample_rate = OPUS_RATE
        self._next_pts += self.frame_samples
        self.frames_sent += 1
        return frame

    def hold_ms(self) -> dict[str, float | int] | None:
        """p50/p95 of ``holds`` in ms (None before the first frame)."""
        return percentiles_ms(self.holds)


@dataclass
class MicStats:
    frames: int = 0
    samples_16k: int = 0
    last_error: str | None = None


def frame_to_mono16k(resampler: av.AudioResampler, frame: av.AudioFrame) -> np.ndarray:
    """Any decoded audio frame → int16 mono 16 kHz samples ``(n,)`` (n may be 0 while the resampler fills)."""
    frame.pts = None  # decoder pts may jump after packet loss; the resampler only needs the samples
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.int16, copy=False) if parts else np.zeros(0, np.int16)


async def pump_microphone(track: MediaStreamTrack, session: MediaSession, stats: MicStats) -> None:
    """Read the remote microphone until it ends, pushing 16 kHz mono int16 into the session."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=ENGINE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        stats.frames += 1
        try:
            pcm = frame_to_mono16k(resampler, cast(av.AudioFrame, frame))
        except ValueError:
            # the peer changed rate/layout mid-stream (a resampler is fixed to its first frame's format):
            # start a new one rather than ending the microphone
            resampler = av.AudioResampler(format="s16", layout="mono", rate=ENGINE_RATE)
            try:
                pcm = frame_to_mono16k(resampler, cast(av.AudioFrame, frame))
            except ValueError as exc:
                stats.last_error = f"undecodable audio frame: {exc}"
                continue
        if pcm.size == 0:
            continue
        try:
            session.push_audio(pcm, ENGINE_RATE)
            stats.samples_16k += int(pcm.size)
        except Exception as exc:  # noqa: BLE001 - a refused chunk / closing session never ends the mic pump
            stats.last_error = str(exc)
            if not isinstance(exc, ValueError | RuntimeError):
                log.warning("microphone chunk refused by the session", exc_info=True)


class MediaPeer:
    """The WebRTC side of one client: peer connection, outgoing tracks, microphone pump."""

    def __init__(self, session: MediaSession, on_state: Callable[[str], None] | None = None, *,
                 mic_prefetch: int = 0, playout_delay: tuple[int, int] | None = None,
                 audio_frame_ms: int = 20, opus_application: str = "voip", mic_ptime_ms: int = 0,
                 video_bitrate: int = 0) -> None:
        """``mic_prefetch``: microphone packets held back before the session gets one (0 = none; aiortc's own
        buffer holds 4, 80 ms); ``playout_delay``: (min, max) ms written into the video's RTP playout-delay
        extension, None = not sent; ``audio_frame_ms``: length of the Opus packets sent (10 or 20), in libopus mode
        ``opus_application`` (``voip``: aiortc's, ``lowdelay``);
        ``mic_ptime_ms``: the microphone packet length the answer asks for (0 = the offerer's choice; see
        ``streaming/rtp_latency.py``); ``video_bitrate``: VP8 rate (bit/s) changed only by halving or doubling
        (0 = aiortc's encoder, re-created with a keyframe at every > 10 % move of the receiver's estimate)."""
        self.session = session
        self.mic_prefetch = int(mic_prefetch)
        self.audio_frame_ms = int(audio_frame_ms)
        self.opus_application = opus_application
        self.mic_ptime_ms = int(mic_ptime_ms)
        self.video_bitrate = int(video_bitrate)
        self.video_encoder: SteadyVp8Encoder | None = None
        self.playout_delay = playout_delay
        if playout_delay is not None:
            enable_playout_delay()  # before the offer is read: the answer keeps only extensions aiortc knows
        self.pc = RTCPeerConnection()
        self.video = SessionVideoTrack(session)
        self.audio = SessionAudioTrack(session, self.audio_frame_ms)
        self.mic = MicStats()
        self.mic_buffer: TimedBuffer | None = None  # the microphone receiver's buffer (accept_offer)
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_state = on_state
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            task = asyncio.get_running_loop().create_task(pump_microphone(track, self.session, self.mic))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("peer connection state %s", state)
        if self._on_state is not None:
            self._on_state(state)

    async def accept_offer(self, sdp: str) -> str:
        """Negotiate: remote offer → local answer SDP (aiortc gathers all ICE candidates into it)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if "video" not in kinds:
            raise ValueError("the offer has no video section: add a recvonly video transceiver")
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                self.mic_buffer = install_mic_buffer(transceiver.receiver, self.mic_prefetch)
        sender = self.pc.addTrack(self.video)
        if self.playout_delay is not None:
            install_playout_delay(sender, *self.playout_delay)
        if "audio" in kinds:
            self.pc.addTrack(self.audio)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        for transceiver in self.pc.getTransceivers():  # codecs are known now; the senders start after DTLS
            if transceiver.sender.track is self.audio:
                install_audio_encoder(transceiver, self.audio_frame_ms, self.opus_application)
            elif transceiver.sender.track is self.video:
                self.video_encoder = install_video_encoder(transceiver, self.video_bitrate)
        return answer_with_ptime(self.pc.localDescription.sdp, self.mic_ptime_ms)

    async def add_ice_candidate(self, candidate: str, sdp_mid: str | None, mline_index: int | None) -> None:
        """A trickled remote candidate (``candidate:...`` line as the browser gives it); empty = end."""
        if not candidate:
            return
        text = candidate.split(":", 1)[1] if candidate.startswith("candidate:") else candidate
        try:
            parsed = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:
            raise ValueError(f"unreadable ICE candidate: {exc or 'too few fields'}") from None
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = mline_index
        await self.pc.addIceCandidate(parsed)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "connection_state": self.pc.connectionState,
            "ice_state": self.pc.iceConnectionState,
            "video_frames_sent": self.video.frames_sent,
            "video_send_fps": round(self.video.meter.rate(now), 2),
            "video_send": self.video.timing_ms(),
            # SteadyVp8Encoder's rate (bit/s) and how often it changed (each change: a new encoder, a keyframe)
            "video_bitrate": self.video_encoder.target_bitrate if self.video_encoder is not None else None,
            "video_rate_changes": self.video_encoder.rate_changes if self.video_encoder is not None else None,
            "first_video_index": self.video.first_index,
            "last_video_index": self.video.last_index,
            "audio_frames_sent": self.audio.frames_sent,
            "audio_frame_ms": self.audio_frame_ms,
            "opus_application": self.opus_application,
            # how long sent audio waited in this track: its last sample released by the session -> to the encoder
            "audio_send_hold_ms": self.audio.hold_ms(),
            "mic_frames_received": self.mic.frames,
            "mic_seconds_received": round(self.mic.samples_16k / ENGINE_RATE, 3),
            # the microphone's packet length as it arrives (decoded frames are one packet each)
            "mic_packet_ms": round(1000 * self.mic.samples_16k / ENGINE_RATE / self.mic.frames, 1)
            if self.mic.frames else None,
            "mic_last_error": self.mic.last_error,
            # how long microphone packets waited in the receiver before decoding (streaming/rtp_latency.py)
            "mic_hold_ms": self.mic_buffer.hold_ms() if self.mic_buffer is not None else None,
            "playout_delay_ms": list(self.playout_delay) if self.playout_delay is not None else None,
        }

    async def close(self) -> None:
        """Stop tracks and tasks and close the peer connection; idempotent, and safe to cancel.

        The work runs in one task of its own that a cancelled caller does not interrupt: aiortc's
        ``RTCPeerConnection.close()`` cancelled halfway (or awaiting aiortc's own close, which it starts when
        the remote side closes DTLS) leaves the connection half-stopped and breaks that shared close
        (``InvalidStateError``, timers that never stop). Every caller waits for the same task.
        """
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close(), name="media-peer-close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closed = True
        self.video.stop()
        self.audio.stop()
        for task in list(self._tasks):
            task.cancel()
        pc_close = asyncio.ensure_future(self.pc.close())
        done, _ = await asyncio.wait({pc_close}, timeout=PC_CLOSE_TIMEOUT_S)
        if not done:  # never cancel it (see close()); report and move on
            log.warning("peer connection did not close within %.0f s", PC_CLOSE_TIMEOUT_S)
        elif pc_close.exception() is not None:
            log.warning("closing the peer connection failed: %r", pc_close.exception())
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
