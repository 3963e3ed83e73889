"""Count-only receivers (clients/count_only.py) on real aiortc peers over loopback: the receiving path runs (ICE,
DTLS-SRTP, depacketisation, jitter buffer) and every assembled VP8 frame is counted with its RTP timestamp and
arrival, nothing is decoded, and a decoding receiver in the same process still decodes."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from clients.count_only import FrameLog, count_only, vp8_keyframe
from tests.streaming_fixtures import wait_for

SIZE = (96, 64)  # width, height: small, the test encodes two streams


class Pattern(MediaStreamTrack):
    """30 fps frames of a moving gradient (so VP8 has something to encode), pts on the 90 kHz clock."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.start = time.monotonic()

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(max(0.0, self.start + self.n / 30 - time.monotonic()))
        w, h = SIZE
        image = ((np.arange(w)[None, :, None] + 4 * self.n + np.zeros((h, 1, 3))) % 256).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self.n * 3000, Fraction(1, 90_000)
        self.n += 1
        return frame


async def connect(sender: RTCPeerConnection, receiver: RTCPeerConnection, counting: bool) -> dict[str, FrameLog]:
    sender.addTrack(Pattern())
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    logs = count_only(receiver) if counting else {}
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    return logs


def test_count_only_receiver_counts_assembled_frames_and_a_decoding_one_still_decodes() -> None:
    async def main() -> None:
        pcs = [RTCPeerConnection() for _ in range(4)]
        decoded: list[av.VideoFrame] = []
        pcs[3].on("track", lambda track: asyncio.ensure_future(read(track, decoded)))
        try:
            logs = await connect(pcs[0], pcs[1], counting=True)
            await connect(pcs[2], pcs[3], counting=False)
            await wait_for(lambda: len(logs["video"]) >= 45 and len(decoded) >= 45, timeout=60,
                           what=f"45 frames counted and decoded (got {len(logs['video'])}, {len(decoded)})")
        finally:
            for pc in pcs:
                await pc.close()
        log = logs["video"]
        assert len(log) >= 45 and len(decoded) >= 45, (len(log), len(decoded))
        assert log.keyframe[0] and log.dimensions == SIZE and log.bad_frames == 0  # counting starts at a keyframe
        rtp = np.asarray(log.rtp[: len(log)])
        assert rtp[0] == 0 and (np.diff(rtp) > 0).all() and np.median(np.diff(rtp)) == 3000  # 30 fps, 90 kHz
        arrival = np.asarray(log.arrival[: len(log)])
        assert (np.diff(arrival) >= 0).all() and 15 < (len(arrival) - 1) / (arrival[-1] - arrival[0]) < 60
        assert all(s > 0 for s in log.size[: len(log)])
        assert decoded[0].width == SIZE[0] and decoded[0].height == SIZE[1]  # the other receiver decodes

    asyncio.run(asyncio.wait_for(main(), 120))


async def read(track: MediaStreamTrack, out: list) -> None:
    while True:
        try:
            out.append(await track.recv())
        except Exception:  # noqa: BLE001 - the track ended
            return


def test_vp8_keyframe_header() -> None:
    key = bytes([0x10, 0x02, 0x00]) + b"\x9d\x01\x2a" + (320).to_bytes(2, "little") + (240).to_bytes(2, "little")
    assert vp8_keyframe(key) == (True, (320, 240))
    assert vp8_keyframe(bytes([0x11, 0, 0])) == (False, None)  # P bit set: an inter frame
    assert vp8_keyframe(bytes([0x10, 0, 0, 1, 2, 3, 0, 0, 0, 0])) == (True, None)  # no start code: not VP8
    assert vp8_keyframe(b"") == (False, None)
