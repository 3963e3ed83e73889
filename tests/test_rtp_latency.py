"""streaming/rtp_latency.py on aiortc's own packets and on a real loopback peer.

The microphone buffer hands each packet on as it arrives (drops only duplicates and late packets); the
playout-delay extension is written into the video packets with the negotiated id and decodes to the bounds
asked for; against the real server, the answer keeps the extension the offer carries, the microphone's receiver
has the arrival buffer, and speech still reaches the session through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import RtpPacket, unpack_header_extensions

from clients.client import MicrophoneTrack, StyleTalkClient
from engine.live.frames import OutputAudioChunk
from streaming.rtp_latency import (
    PLAYOUT_DELAY_URI,
    ArrivalAudioBuffer,
    LowDelayOpusEncoder,
    MarkerVideoBuffer,
    PlayoutDelayExtensionsMap,
    SteadyVp8Encoder,
    TimedBuffer,
    answer_with_ptime,
    enable_playout_delay,
    playout_delay_bytes,
)
from streaming.server import PresenterServer
from streaming.webrtc import SessionAudioTrack
from tests.streaming_fixtures import run, server_settings, speech_16k, wait_for


def packet(seq: int, payload: bytes = b"x") -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=960 * seq % 2**32)
    p._data = payload  # type: ignore[attr-defined] # what aiortc's receiver sets after depayloading
    return p


def test_arrival_buffer_hands_on_every_packet_at_once_and_drops_late_ones() -> None:
    buf = ArrivalAudioBuffer()
    stock = JitterBuffer(capacity=16, prefetch=4)  # aiortc's own audio buffer, for comparison
    out = [buf.add(packet(s, bytes([s % 256])))[1] for s in range(65530, 65540)]  # across the wrap-around
    stock_out = [stock.add(packet(s))[1] for s in range(65530, 65540)]
    assert all(f is not None for f in out)
    assert [f.data for f in out if f is not None] == [bytes([s % 256]) for s in range(65530, 65540)]
    # the stock buffer hands the first packet on with the fifth (80 ms of 20 ms packets later), and so on
    assert [f is not None for f in stock_out] == [False] * 4 + [True] * 6
    assert buf.add(packet(65539))[1] is None  # duplicate
    assert buf.add(packet(65535))[1] is None  # reordered: older than one already handed on
    assert buf.late == 2
    assert buf.add(packet(65541))[1] is not None  # a gap (lost 65540) waits for nothing
    restart = packet(65541 - 500)  # far behind: the stream restarted, not a late packet
    assert buf.add(restart)[1] is not None
    assert all(not buf.add(packet(s))[0] for s in range(100, 103))  # never asks for a picture loss indication


def extensions_of(data: bytes) -> dict[int, bytes]:
    """Header extensions of a serialized RTP packet (no CSRCs), by id."""
    assert data[0] & 0x10, "no header extension"
    profile, words = struct.unpack("!HH", data[12:16])
    return dict(unpack_header_extensions(profile, data[16 : 16 + 4 * words]))


def test_playout_delay_written_with_the_negotiated_id() -> None:
    assert playout_delay_bytes(0, 0) == b"\x00\x00\x00"
    assert playout_delay_bytes(100, 400) == bytes([0x00, 0xA0, 0x28])  # 10 and 40 units of 10 ms
    assert playout_delay_bytes(5, 15) == playout_delay_bytes(10, 20)  # rounded up to 10 ms units
    for bad in ((-10, 0), (20, 10), (0, 50_000)):
        try:
            playout_delay_bytes(*bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")

    mapping = PlayoutDelayExtensionsMap(20, 200)
    p = RtpPacket(payload_type=96, sequence_number=1, timestamp=3000)
    p.extensions.mid = "0"
    assert not p.serialize(mapping)[0] & 0x10  # nothing negotiated yet: no extension at all
    mapping.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=9, uri=PLAYOUT_DELAY_URI),
    ]))
    ext = extensions_of(p.serialize(mapping))
    assert ext == {1: b"0", 9: playout_delay_bytes(20, 200)}
    value = int.from_bytes(ext[9], "big")
    assert (value >> 12, value & 0xFFF) == (2, 20)


@contextlib.asynccontextmanager
async def served_client(runtime, settings, mic: MicrophoneTrack) -> AsyncIterator[tuple[StyleTalkClient, Any]]:  # noqa: ANN001
    """A served session with a real aiortc client streaming ``mic``: (client, the server's peer) once frames come."""
    async with PresenterServer(runtime, settings) as server:
        client = StyleTalkClient(f"ws://127.0.0.1:{server.port}/ws")
        welcome = await client.connect()
        try:
            await client.start_media(mic)
            await client.wait_frames(5, timeout=60)
            assert client.pc is not None
            peer = server.clients[welcome["session"]].peer
            assert peer is not None
            yield client, peer
        finally:
            await client.close()


def test_served_peer_negotiates_playout_delay_and_hears_the_microphone_at_once(live_runtime) -> None:
    async def main() -> None:
        enable_playout_delay()  # the aiortc client then offers it, as Chromium does
        settings = server_settings(playout_delay_ms="0,100", mic_prefetch_packets=0)
        mic = MicrophoneTrack()
        mic.feed(np.zeros(16_000 // 2, np.int16))
        mic.feed(speech_16k()[:16_000])
        async with served_client(live_runtime, settings, mic) as (client, peer):
            answer = client.pc.remoteDescription.sdp
            assert PLAYOUT_DELAY_URI in answer, answer
            assert peer.playout_delay == (0, 100)
            (audio,) = [t for t in peer.pc.getTransceivers() if t.kind == "audio"]
            timed = audio.receiver._RTCRtpReceiver__jitter_buffer
            assert isinstance(timed, TimedBuffer) and isinstance(timed.inner, ArrivalAudioBuffer)
            await wait_for(lambda: peer.mic.samples_16k > 16_000, timeout=30, what="microphone audio")
            assert timed.inner.late == 0
            hold = peer.stats()["mic_hold_ms"]  # handed on as they arrive: no packet waits for another
            assert hold is not None and hold["n"] > 40 and hold["p95"] < 5.0, hold

    run(main(), 240)


class ClockedAudio:
    """The session's audio side as ``SessionOutput`` releases it: 20 ms chunks (a ramp), each at its own pts."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.k = 0

    async def next_audio_chunk(self) -> OutputAudioChunk:
        await asyncio.sleep(max(0.0, self.start + 0.02 * self.k - time.monotonic()))
        pcm = (np.arange(320 * self.k, 320 * (self.k + 1)) % 2000).astype(np.int16)
        self.k += 1
        return OutputAudioChunk(Fraction(self.k - 1, 50), pcm)


def test_sent_audio_frames_leave_when_their_chunk_is_released() -> None:
    """No frame waits for the next chunk (the resampler's filter tail used to make each wait 20 ms)."""
    async def main(frame_ms: int) -> tuple[list[av.AudioFrame], SessionAudioTrack]:
        track = SessionAudioTrack(cast(Any, ClockedAudio()), frame_ms)
        return [await track.recv() for _ in range(40 * 20 // frame_ms)], track

    for frame_ms in (10, 20):
        frames, track = run(main(frame_ms), 30)
        assert {f.samples for f in frames} == {48 * frame_ms}
        assert [f.pts for f in frames] == [48 * frame_ms * i for i in range(len(frames))]
        hold = track.hold_ms()
        assert hold is not None and hold["n"] == len(frames) and hold["p95"] < 5.0, (frame_ms, hold)
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        assert np.all(pcm[:40] == 0) and np.abs(pcm[200:]).max() > 1000  # ~1 ms of silence, then the ramp


def test_answer_asks_for_the_microphone_packet_length() -> None:
    offer_like = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ptime:20\r\na=mid:0\r\n"
                  "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n")
    out = answer_with_ptime(offer_like, 10)
    audio, video = out.split("m=video")
    assert "a=ptime:10" in audio and "a=ptime:20" not in audio and "ptime" not in video
    assert answer_with_ptime(offer_like, 0) == offer_like
    only_audio = answer_with_ptime("v=0\r\nm=audio 9 RTP/AVP 111\r\n", 10)
    assert only_audio.endswith("a=ptime:10\r\n")


def test_served_audio_goes_out_in_10ms_packets_at_once(live_runtime) -> None:
    async def main() -> None:
        settings = server_settings(audio_frame_ms=10, opus_application="lowdelay", mic_ptime_ms=10)
        mic = MicrophoneTrack()
        mic.feed(speech_16k()[:16_000])
        async with served_client(live_runtime, settings, mic) as (client, peer):
            answer = client.answer_sdp or ""
            assert "a=ptime:10" in answer.split("m=audio", 1)[1].split("m=video", 1)[0]
            (audio,) = [t for t in peer.pc.getTransceivers() if t.kind == "audio"]
            encoder = audio.sender._RTCRtpSender__encoder
            assert isinstance(encoder, LowDelayOpusEncoder) and encoder.application == "lowdelay"
            (video,) = [t for t in peer.pc.getTransceivers() if t.kind == "video"]
            assert isinstance(video.sender._RTCRtpSender__encoder, SteadyVp8Encoder)
            # each received packet decodes to one frame: 480 samples at 48 kHz is 10 ms (960 before)
            await wait_for(lambda: len(client.recording.audio) > 60, timeout=60, what="received audio")
            assert {len(a) for a in client.recording.audio[10:60]} == {480}
            hold = peer.stats()["audio_send_hold_ms"]
            assert hold is not None and hold["n"] > 50 and hold["p50"] < 10.0, hold

    run(main(), 240)


def video_packet(seq: int, frame: int, marker: bool, payload: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=3000 * frame, marker=int(marker))
    p._data = payload  # type: ignore[attr-defined]
    return p


def test_video_frame_handed_on_with_its_last_packet() -> None:
    marker, stock = MarkerVideoBuffer(), JitterBuffer(capacity=512, is_video=True)
    # frame 0 in two packets, frame 1 in one, frame 2's first packet
    packets = [video_packet(10, 0, False, b"a"), video_packet(11, 0, True, b"b"), video_packet(12, 1, True, b"c"),
               video_packet(13, 2, False, b"d")]
    got = [marker.add(p)[1] for p in packets]
    stock_got = [stock.add(p)[1] for p in packets]
    assert [None if f is None else (f.timestamp, f.data) for f in got] == [None, (0, b"ab"), (3000, b"c"), None]
    # aiortc's own buffer: each frame only when the next one's first packet is here
    assert [None if f is None else (f.timestamp, f.data) for f in stock_got] == [None, None, (0, b"ab"), (3000, b"c")]
    # a lost packet holds its frame back (never a partial frame to the decoder) until it comes
    gap = MarkerVideoBuffer()
    assert gap.add(video_packet(20, 5, False, b"x"))[1] is None
    assert gap.add(video_packet(22, 5, True, b"z"))[1] is None
    frame = gap.add(video_packet(21, 5, False, b"y"))[1]
    assert frame is not None and frame.data == b"xyz"
    # a sender without marker bits: the next frame's first packet closes the frame, as before
    plain = MarkerVideoBuffer()
    assert plain.add(video_packet(30, 7, False, b"p"))[1] is None
    frame = plain.add(video_packet(31, 8, False, b"q"))[1]
    assert frame is not None and (frame.timestamp, frame.data) == (21000, b"p")


def test_client_receives_through_arrival_buffers(live_runtime) -> None:
    """The client's receivers get the arrival buffers and decode real VP8 / Opus through them."""
    async def main() -> None:
        async with PresenterServer(live_runtime, server_settings()) as server:
            mic = MicrophoneTrack()
            mic.feed(speech_16k()[:16_000])
            client = StyleTalkClient(f"ws://127.0.0.1:{server.port}/ws")
            await client.connect()
            try:
                await client.start_media(mic)
                assert isinstance(client.receive_buffers["audio"], TimedBuffer)
                assert client.receive_buffers["video"] is True
                assert client.pc is not None
                kinds = {t.kind: t.receiver._RTCRtpReceiver__jitter_buffer for t in client.pc.getTransceivers()}
                assert isinstance(kinds["video"], MarkerVideoBuffer)
                frames = await client.wait_frames(60, timeout=60)
                assert len({f.pts for f in frames}) == len(frames) and frames[-1].image.std() > 5
                await wait_for(lambda: len(client.recording.audio) > 50, timeout=30, what="received audio")
                hold = client.receive_buffers["audio"].hold_ms()
                assert hold is not None and hold["p95"] < 5.0, hold
            finally:
                await client.close()

    run(main(), 240)


def keyframes_on_a_climbing_estimate(encoder: Vp8Encoder) -> int:
    """Encode 60 frames (256², real libvpx) while the receiver's estimate climbs as a browser's does, 8 % a step
    from 300 kbit/s; count the keyframes in the payloads."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (256, 256, 3), np.uint8)
    keyframes = 0
    for i in range(60):
        encoder.target_bitrate = int(300_000 * 1.08**i)  # what aiortc's sender does with each REMB
        image = np.roll(base, i, axis=1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = 3000 * i, Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame)
        _, vp8 = VpxPayloadDescriptor.parse(payloads[0])
        keyframes += int(vp8[0] & 1 == 0)  # VP8 frame tag: bit 0 clear = keyframe
    return keyframes


def test_steady_vp8_encoder_keeps_its_encoder_while_the_estimate_climbs() -> None:
    assert keyframes_on_a_climbing_estimate(Vp8Encoder()) > 10  # aiortc's: a new encoder every > 10 % move
    steady = SteadyVp8Encoder(800_000)
    assert keyframes_on_a_climbing_estimate(steady) <= 3, steady.rate_changes  # the first, the fall, a doubling
    assert steady.target_bitrate == 800_000
    steady.target_bitrate = 350_000  # a congested link: below half, followed at once
    assert steady.target_bitrate == 350_000
    steady.target_bitrate = 600_000  # not yet twice
    assert steady.target_bitrate == 350_000
    steady.target_bitrate = 5_000_000  # recovered: back to the configured rate, never above it
    assert steady.target_bitrate == 800_000


def test_low_delay_opus_encoder_looks_ahead_less_in_shorter_packets() -> None:
    """libopus's lookahead is the encoder's initial padding: the decoded sound starts that much later."""
    from aiortc.codecs.opus import OpusEncoder

    def first_packet(encoder: OpusEncoder) -> tuple[int, int]:
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, 0, Fraction(1, 48_000)
        for resampled in encoder.resampler.resample(frame):
            packets = encoder.codec.encode(resampled)
            if packets:
                return int(packets[0].pts), int(packets[0].duration)
        raise AssertionError("no packet")

    assert first_packet(OpusEncoder()) == (-312, 960)  # aiortc's: voip, 6.5 ms ahead, 20 ms packets
    assert first_packet(LowDelayOpusEncoder(10)) == (-120, 480)  # 2.5 ms ahead, 10 ms packets
    assert first_packet(LowDelayOpusEncoder(20, "voip")) == (-312, 960)
