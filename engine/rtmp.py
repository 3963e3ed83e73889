"""Push live audio+video to an RTMP URL (YouTube Live, Twitch, an nginx-rtmp relay) with PyAV.

One :class:`RtmpEncoder` takes a live session's output items (:class:`~engine.live.frames.OutputVideoFrame`,
:class:`~engine.live.frames.OutputAudioChunk`) through :meth:`RtmpEncoder.offer` and encodes them in one worker
thread: H.264 (libx264, ``ultrafast``/``zerolatency``: a live platform wants low delay, and the 2-core budget
belongs to the engine) and AAC, muxed as FLV. Encoding and the blocking network writes stay off the event loop;
the hand-over queue is bounded and drops the oldest item, so a slow or stalled RTMP server never slows the
producer. A failure (server unreachable, connection dropped) ends the push with ``error`` set and is logged; the
producer goes on.

The one implementation of RTMP out: ``serve --rtmp`` feeds it a room's broadcast
(:class:`streaming.rtmp_out.RtmpPush`), ``speak --rtmp`` the session it records (:mod:`engine.speak`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from fractions import Fraction
from typing import Any

import av
import numpy as np

from engine.live.frames import OutputAudioChunk, OutputVideoFrame
from engine.timing import FPS

log = logging.getLogger(__name__)

AAC_FRAME = 1024  # samples per AAC frame (the encoder wants exactly this many)
HANDOVER = 64  # items (~1 s of video + audio) between the producer and the encoder thread
_STOP = object()


class RtmpEncoder:
    """One RTMP push: ``start()``, ``offer(item)`` from any thread, ``close()`` (blocking, idempotent)."""

    def __init__(self, url: str, bitrate: int = 1_500_000) -> None:
        self.url = url
        self.bitrate = bitrate
        self.video_frames = 0  # encoded and written
        self.audio_frames = 0
        self.dropped = 0  # dropped at the hand-over (the encoder or the network was behind)
        self.error: str | None = None
        self._queue: queue.Queue[Any] = queue.Queue(HANDOVER)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._encode, name="styletalk-rtmp", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def offer(self, item: OutputVideoFrame | OutputAudioChunk) -> None:
        """Hand one output item over (never blocks: when the encoder is behind, the oldest item is dropped)."""
        if self.running:
            self._hand(item)

    def close(self, timeout: float = 10.0) -> None:
        """Flush the encoders and end the stream (blocks up to ``timeout``: call it off the event loop)."""
        self._hand(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "video_frames": self.video_frames, "audio_frames": self.audio_frames,
                "dropped": self.dropped, "error": self.error, "running": self.running}

    def _hand(self, item: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.dropped += 1

    # ---------------------------------------------------------------------------------- encoder thread
    def _encode(self) -> None:
        try:
            first = self._queue.get()  # open the connection only once there is something to send
            if first is _STOP:
                return
            with av.open(self.url, "w", format="flv") as out:
                self._mux(out, first)
        except Exception as exc:  # network or codec failure: the push ends, the producer goes on
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("RTMP push to %s ended: %s", self.url, self.error)

    def _mux(self, out: Any, first: Any) -> None:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "tune": "zerolatency"})
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = FPS  # a keyframe a second: a player joining waits at most 1 s
        video.bit_rate = self.bitrate
        audio = out.add_stream("aac", rate=16_000, layout="mono")
        fifo = av.AudioFifo()
        last_video = -1
        audio_pts = 0
        item = first
        while item is not _STOP:
            if isinstance(item, OutputVideoFrame):
                pts = round(item.pts * FPS)
                if pts > last_video:  # FLV needs increasing timestamps (a repeated source pts is skipped)
                    if last_video < 0:
                        video.width, video.height = item.image.shape[1], item.image.shape[0]
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(item.image), format="rgb24")
                    frame.pts, frame.time_base = pts, Fraction(1, FPS)
                    out.mux(video.encode(frame))
                    last_video = pts
                    self.video_frames += 1
            elif isinstance(item, OutputAudioChunk) and last_video >= 0:  # the header waits for the frame size
                pcm = np.ascontiguousarray(item.pcm, np.int16).reshape(1, -1)  # (1, samples) s16 mono 16 kHz
                chunk = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
                chunk.sample_rate = item.sample_rate
                fifo.write(chunk)
                while fifo.samples >= AAC_FRAME:
                    read = fifo.read(AAC_FRAME)
                    assert read is not None  # fifo.samples >= AAC_FRAME
                    block = read.to_ndarray().astype(np.float32) / 32768.0  # (1, 1024) fltp
                    aac_in = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                    aac_in.sample_rate, aac_in.pts, aac_in.time_base = 16_000, audio_pts, Fraction(1, 16_000)
                    audio_pts += AAC_FRAME
                    out.mux(audio.encode(aac_in))
                    self.audio_frames += 1
            item = self._queue.get()
        for stream in (video, audio):
            with contextlib.suppress(Exception):
                out.mux(stream.encode(None))
