"""CPU cost of one served session, part by part: what bounds the number of sessions per machine.

Each part of the served path runs alone on real data for a few seconds of media and is charged its CPU time
(``time.process_time``: all threads of this process, so a part that spreads over several threads pays for all
of them). CPU time, unlike wall time, barely depends on what else the machine runs, so the figures hold on a
shared machine; the sum says how many sessions the cores can carry at 30 fps (before scheduling overheads).

- **recognizer**: the default phoneme recognizer (allphone) fed 20 ms microphone chunks of speech, as a
  session's recognizer thread gets them; with numpy's BLAS at its default thread count and at one thread
  (``EngineRuntime.load`` sets one: ``engine.runtime.limit_blas_threads``), fed 20 ms and 200 ms at a time
  (a recognizer that fell behind gets its backlog in larger calls).
- **decode + render**: the expression decoder and the warp renderer, one frame at a time (the model worker).
- **VP8 encode**: aiortc's encoder on the rendered frames (the server's video sender).
- **Opus encode / decode**: the avatar's audio out, the microphone in (aiortc's codecs, 20 ms frames).
- **SRTP**: protecting the packets of one second of media (pylibsrtp, as aiortc does).

    python -m benchmarks.served_costs            # ~1 min, writes benchmarks/results/served_costs.json
    python -m benchmarks.served_costs --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.results_io import run_header

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "served_costs.json"
SPEECH_WAV = ROOT / "tests" / "data" / "speech_16k.wav"
FPS = 30


def cpu_per_media_second(work: Callable[[], float], repeats: int = 3) -> float:
    """Median over ``repeats`` of CPU seconds / media seconds; ``work`` returns the media seconds it covered."""
    costs = []
    for _ in range(repeats):
        t0 = time.process_time()
        media = work()
        costs.append((time.process_time() - t0) / media)
    return float(np.median(costs))


def recognizer_cost(speech: np.ndarray, seconds: float, chunk_ms: int, blas_threads: int | None) -> float:
    from threadpoolctl import threadpool_limits

    from engine.recognizer.factory import make_recognizer

    pcm = np.tile(speech, int(np.ceil(seconds * 16_000 / len(speech))))[: int(seconds * 16_000)]
    step = 16 * chunk_ms

    def work() -> float:
        rec = make_recognizer("allphone")
        for i in range(0, len(pcm), step):
            rec.feed(pcm[i : i + step])
        return len(pcm) / 16_000

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return cpu_per_media_second(work)


def render_cost(seconds: float) -> tuple[float, list[np.ndarray]]:
    """Decode + render, one frame per call, as the model worker does for a speaking session."""
    from engine.config import load_config
    from engine.runtime import EngineRuntime

    # the model thread, measured directly (worker processes would only add their start-up CPU to this process's)
    runtime = EngineRuntime.load(load_config(None, {"avatar.head_motion": "0", "decoder.workers": "0"}))
    frames: list[np.ndarray] = []
    try:
        n = int(seconds * FPS)
        windows = np.random.default_rng(0).integers(0, 41, size=(n, 11))
        code = runtime.styles.get(runtime.config.style.default)

        def work() -> float:
            state = runtime.renderer.prepare(runtime.avatar)
            frames.clear()
            for i in range(n):
                exp = runtime.decoder.decode(windows[i : i + 1], code)
                frames.append(runtime.renderer.render(state, exp, runtime.pose[None])[0])
            return n / FPS

        # on the model worker thread, as served (torch's thread settings live there)
        cost = runtime.worker.submit(cpu_per_media_second, work).result()
    finally:
        runtime.close()
    return cost, frames


def vp8_cost(frames: list[np.ndarray]) -> tuple[float, list[bytes]]:
    import av
    from aiortc.codecs.vpx import Vp8Encoder

    packets: list[bytes] = []

    def work() -> float:
        enc = Vp8Encoder()
        packets.clear()
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i * 3000, Fraction(1, 90_000)
            payloads, _ = enc.encode(frame)
            packets.extend(payloads)
        return len(frames) / FPS

    return cpu_per_media_second(work), packets


def opus_costs(speech: np.ndarray, seconds: float) -> tuple[float, float, list[bytes]]:
    import av
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    n = int(seconds * 50)
    pcm48 = np.repeat(np.tile(speech, 1 + int(seconds * 16_000) // len(speech)), 3)[: n * 960]
    encoded: list[bytes] = []

    def encode() -> float:
        enc = OpusEncoder()
        encoded.clear()
        for i in range(n):
            frame = av.AudioFrame.from_ndarray(pcm48[None, i * 960 : (i + 1) * 960], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, Fraction(1, 48_000)
            payloads, _ = enc.encode(frame)
            encoded.extend(payloads)
        return n / 50

    def decode() -> float:
        dec = OpusDecoder()
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)  # the server's microphone pump
        for i, data in enumerate(encoded):
            for frame in dec.decode(JitterFrame(data=data, timestamp=i * 960)):
                frame.pts = None
                resampler.resample(frame)
        return len(encoded) / 50

    enc_cost = cpu_per_media_second(encode)
    return enc_cost, cpu_per_media_second(decode), encoded


def audio_send_costs(speech: np.ndarray, seconds: float) -> dict[str, dict[str, float]]:
    """The avatar's audio sent in 10 or 20 ms packets (``server.audio_frame_ms``), CPU s per audio second: Opus
    encode (aiortc's encoder / ``LowDelayOpusEncoder``) and the per-packet path around it in aiortc's sender: the
    encode handed to the loop's executor and awaited, the RTP packet built and serialized, SRTP."""
    out: dict[str, dict[str, float]] = {}
    for frame_ms in (20, 10):
        enc, path = _audio_send_cost(speech, seconds, frame_ms)
        name = "20 ms voip (aiortc's)" if frame_ms == 20 else f"{frame_ms} ms lowdelay"
        out[name] = {"packets_per_s": 1000 / frame_ms, "opus_encode": enc, "send_path": path, "total": enc + path}
    return out


def _audio_send_cost(speech: np.ndarray, seconds: float, frame_ms: int) -> tuple[float, float]:
    import asyncio

    import av
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket
    from pylibsrtp import Policy, Session

    from streaming.rtp_latency import LowDelayOpusEncoder

    size = 48 * frame_ms
    n = int(seconds * 1000 / frame_ms)
    pcm48 = np.repeat(np.tile(speech, 1 + int(seconds * 16_000) // len(speech)), 3)[: n * size]
    frames = []
    for i in range(n):
        frame = av.AudioFrame.from_ndarray(pcm48[None, i * size : (i + 1) * size], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * size, Fraction(1, 48_000)
        frames.append(frame)

    def encode() -> float:
        enc = OpusEncoder() if frame_ms == 20 else LowDelayOpusEncoder(frame_ms)
        for frame in frames:
            enc.encode(frame)
        return seconds

    async def packets() -> None:
        loop = asyncio.get_running_loop()
        session = Session(policy=Policy(key=bytes(range(30)), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        extensions = HeaderExtensionsMap()
        for i in range(n):
            await loop.run_in_executor(None, len, b"")  # the hop alone: the encode is charged above
            packet = RtpPacket(payload_type=111, sequence_number=i % 65536, timestamp=i * size)
            packet.ssrc, packet.payload = 1, bytes(60)
            session.protect(packet.serialize(extensions))

    def send_path() -> float:
        asyncio.run(packets())
        return seconds

    return cpu_per_media_second(encode), cpu_per_media_second(send_path)


def srtp_cost(video: list[bytes], audio: list[bytes], video_seconds: float) -> float:
    """Protect one RTP packet per payload (12-byte header), both directions' worth of the session's media."""
    from pylibsrtp import Policy, Session

    key = bytes(range(30))
    packets = [bytes([0x80, 96, i >> 8 & 0xFF, i & 0xFF, 0, 0, 0, 0, 0, 0, 0, 1]) + p
               for i, p in enumerate(video + audio + audio)]  # audio out + microphone in

    def work() -> float:
        session = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        for i, p in enumerate(packets):
            session.protect(p[:2] + bytes([i >> 8 & 0xFF, i & 0xFF]) + p[4:])
        return video_seconds

    return cpu_per_media_second(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="media seconds per part (x3 repeats)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores for the session estimate")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from clients.client import read_wav, to_16k

    started, load0 = time.time(), list(os.getloadavg())
    pcm, rate = read_wav(SPEECH_WAV)
    speech = to_16k(pcm, rate)
    costs: dict[str, float] = {}
    recognizer = {
        f"chunk {ms} ms, BLAS {'default' if t is None else t} thread(s)": recognizer_cost(speech, args.seconds, ms, t)
        for ms in (20, 200) for t in (None, 1)
    }
    costs["recognizer (allphone)"] = recognizer["chunk 20 ms, BLAS 1 thread(s)"]
    costs["decode + render"], frames = render_cost(args.seconds)
    costs["VP8 encode"], video_packets = vp8_cost(frames)
    costs["Opus encode (avatar audio)"], costs["Opus decode + resample (microphone)"], audio_packets = opus_costs(
        speech, args.seconds)
    costs["SRTP protect"] = srtp_cost(video_packets, audio_packets, len(frames) / FPS)
    audio_send = audio_send_costs(speech, args.seconds)
    total = sum(costs.values())

    print("| part | CPU s per session-second |")
    print("|---|---|")
    for name, c in costs.items():
        print(f"| {name} | {c:.3f} |")
    print(f"| **sum** | **{total:.3f}** |")
    print(f"-> at most {args.cores / total:.1f} sessions on {args.cores} cores (parts only; no event loop, "
          "RTP/RTCP bookkeeping or browser)")
    print("avatar audio sent by packet length (CPU s per audio second: Opus encode + aiortc's per-packet path):")
    for name, row in audio_send.items():
        print(f"  {name}: {row['total']:.4f} ({row['opus_encode']:.4f} + {row['send_path']:.4f})")
    print("recognizer by feed size and BLAS threads (CPU s per audio second):")
    for name, c in recognizer.items():
        print(f"  {name}: {c:.3f}")
    result = {
        **run_header("served_costs", started, load0),
        "cpu_s_per_session_second": costs,
        "sum": total,
        "sessions_bound": args.cores / total,
        "recognizer_by_feed_and_blas_threads": recognizer,
        "audio_send_by_packet_ms": audio_send,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}  ({result['duration_s']:.0f} s, load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
