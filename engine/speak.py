"""`styletalk-live speak`: run the live pipeline on a file or the microphone into a local recording.

It exercises exactly what a browser session runs - real-time audio source, recognizer thread, model worker,
paced video and delayed audio on one media clock - and records the two output tracks into an MP4 (H.264 +
AAC via PyAV), so the live engine can be checked without a browser: open the file and judge the lip sync;
``--stats out.json`` saves the session's latency metrics. ``--rtmp URL`` also pushes the same output live to an
RTMP server (the encoder ``serve --rtmp`` uses, :class:`engine.rtmp.RtmpEncoder`).

    styletalk-live speak --audio speech.wav -o out.mp4
    styletalk-live speak --mic --duration 20 --preview
    styletalk-live speak --mic -o '' --rtmp rtmp://live.example.com/app/<stream key>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ConfigError, add_config_arguments, config_from_args
from engine.timing import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

TAIL_S = 0.5  # keep recording this long after the input ended (plus the pipeline delay)


class Mp4Writer:
    """H.264 + AAC MP4 muxed on a background thread (encoding never blocks the event loop).

    Video pts are frame indices (time base 1/fps), audio pts sample positions (1/sample_rate): both come from
    the session's media clock, so the file's A/V alignment is the session's.
    """

    def __init__(self, path: str | Path, size: tuple[int, int], fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        h, w = size
        self._video = self._container.add_stream("libx264" if "libx264" in av.codecs_available else "h264",
                                                 rate=fps)
        self._video.width, self._video.height = w + (w % 2), h + (h % 2)
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = Fraction(1, fps)
        self._video.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "20"}
        self._audio = self._container.add_stream("aac", rate=sample_rate, layout="mono")
        self._audio.time_base = Fraction(1, sample_rate)
        self._fifo = av.AudioFifo()
        self._rate = sample_rate
        self._audio_next: int | None = None
        self._queue: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue(maxsize=600)
        self._thread = threading.Thread(target=self._run, name="mp4-writer", daemon=True)
        self.video_frames = 0
        self.audio_samples = 0
        self.error: BaseException | None = None
        self._thread.start()

    def write_video(self, index: int, image: np.ndarray) -> None:
        self._queue.put(("v", index, image))

    def write_audio(self, sample_pos: int, pcm: np.ndarray) -> None:
        self._queue.put(("a", sample_pos, pcm))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self.error}") from self.error

    def _run(self) -> None:
        import av

        try:
            while (item := self._queue.get()) is not None:
                kind, pos, data = item
                if kind == "v":
                    img = np.ascontiguousarray(data)
                    if img.shape[0] != self._video.height or img.shape[1] != self._video.width:
                        img = np.pad(img, ((0, self._video.height - img.shape[0]),
                                           (0, self._video.width - img.shape[1]), (0, 0)), mode="edge")
                    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                    frame.pts = pos
                    self._container.mux(self._video.encode(frame))
                    self.video_frames += 1
                else:
                    if self._audio_next is None:
                        self._audio_next = pos
                    frame = av.AudioFrame.from_ndarray(np.asarray(data, np.int16).reshape(1, -1), format="s16",
                                                       layout="mono")
                    frame.sample_rate = self._rate
                    frame.pts = None
                    self._fifo.write(frame)
                    self._drain_audio(final=False)
            self._drain_audio(final=True)
            self._container.mux(self._video.encode(None))
            self._container.mux(self._audio.encode(None))
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc
            with contextlib.suppress(Exception):
                while self._queue.get_nowait() is not None:
                    pass
        finally:
            with contextlib.suppress(Exception):
                self._container.close()

    def _drain_audio(self, final: bool) -> None:
        size = self._audio.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            frame = self._fifo.read(min(size, self._fifo.samples) if final else size)
            frame.pts = self._audio_next
            self._audio_next = (self._audio_next or 0) + frame.samples
            self.audio_samples += frame.samples
            self._container.mux(self._audio.encode(frame))


class Preview:
    """Show frames in a Tk window when a display is available; otherwise print a status line per second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._root = None
        self._label = None
        self._photo = None
        self._last_status = 0.0
        if not enabled:
            return
        try:
            import tkinter

            self._root = tkinter.Tk()
            self._root.title("styletalk-live speak")
            self._label = tkinter.Label(self._root)
            self._label.pack()
        except Exception as exc:  # noqa: BLE001 - no display (TclError), no Tk
            log.warning("preview window unavailable (%s): printing status lines instead", exc)
            self._root = None

    def show(self, image: np.ndarray, stats: Callable[[], dict[str, Any]] | None = None) -> None:
        """Display ``image``; once a second print ``stats()`` (called only then: it is not free)."""
        if not self.enabled:
            return
        if self._root is not None:
            import tkinter

            h, w = image.shape[:2]
            ppm = b"P6 %d %d 255 " % (w, h) + np.ascontiguousarray(image).tobytes()
            self._photo = tkinter.PhotoImage(data=ppm, format="PPM")
            self._label.configure(image=self._photo)  # type: ignore[union-attr]
            self._root.update()
        now = time.monotonic()
        if stats is not None and now - self._last_status >= 1.0:
            self._last_status = now
            stats = stats()
            lat = stats["latency_ms"]["total"]
            p50 = lat.get("p50")
            print(f"\rfps {stats['fps']:5.1f}  sent {stats['frames_sent']:6d}  late {stats['late_frames']:5d}  "
                  f"delay {stats['delay_ms']:5.0f} ms  audio->sent p50 {p50 or 0:5.0f} ms", end="", flush=True,
                  file=sys.stderr)

    def close(self) -> None:
        if self._root is not None:
            with contextlib.suppress(Exception):
                self._root.destroy()
        if self.enabled:
            print(file=sys.stderr)


async def run_speak(runtime: Any, audio: str | None, mic: bool, output: str | None, duration: float | None,
                    preview: bool = False, device: str | None = None, progress: bool = False,
                    rtmp: str | None = None) -> dict[str, Any]:
    """Run one live session from a file or the microphone, recording its output; returns the session stats.

    ``progress``: a bar over the output's media seconds on stderr (not with ``preview``, which prints status).
    ``rtmp``: also push the output to this RTMP URL; its outcome is the stats' ``rtmp`` entry (a failed push
    sets ``error`` there and the recording goes on).
    """
    from engine.rtmp import RtmpEncoder
    from engine.sources import FileSource, MicrophoneSource

    session = runtime.new_session("speak")
    await session.start()
    writer = Mp4Writer(output, (runtime.renderer.size, runtime.renderer.size), runtime.config.fps,
                       runtime.timebase.sample_rate) if output else None
    push = RtmpEncoder(rtmp) if rtmp else None
    if push is not None:
        push.start()
    view = Preview(preview)
    stop = asyncio.Event()
    mic_source = None
    try:
        if audio is not None:
            source = FileSource(audio, session.push_audio, chunk_ms=runtime.config.audio.chunk_ms)
            await source.load()
            length = source.duration_s if duration is None else min(duration, source.duration_s)
            feeder = asyncio.create_task(source.run())
        else:
            mic_source = MicrophoneSource(session.push_audio, device=device, chunk_ms=runtime.config.audio.chunk_ms)
            mic_source.start()
            length = duration if duration is not None else float("inf")
            feeder = None
        end_pts = Fraction(length).limit_denominator(1000) + session.delay + Fraction(TAIL_S).limit_denominator(10) \
            if length != float("inf") else None

        from tqdm import tqdm

        bar = tqdm(total=round(float(end_pts), 1) if end_pts is not None else None, unit="s", desc="speak",
                   disable=not progress or preview, file=sys.stderr,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s media [{elapsed}<{remaining}]"
                   if end_pts is not None else "{desc}: {n:.1f} s media [{elapsed}]")

        async def video() -> None:
            while not stop.is_set():
                frame = await session.next_video_frame()
                if end_pts is not None and frame.pts >= end_pts:
                    bar.n = bar.total
                    bar.refresh()
                    stop.set()
                    return
                if frame.index % runtime.config.fps == 0:  # once per media second
                    bar.n = float(frame.pts)
                    bar.refresh()
                if writer is not None:
                    writer.write_video(frame.index, frame.image)
                if push is not None:
                    push.offer(frame)
                view.show(frame.image, session.stats if preview else None)

        async def sound() -> None:
            while not stop.is_set():
                chunk = await session.next_audio_chunk()
                if end_pts is not None and chunk.pts >= end_pts:
                    return
                if writer is not None:
                    writer.write_audio(int(chunk.pts * chunk.sample_rate), chunk.pcm)
                if push is not None:
                    push.offer(chunk)

        tasks = [asyncio.create_task(video()), asyncio.create_task(sound())]
        try:
            await asyncio.gather(*tasks)
        finally:
            bar.close()
            for t in tasks:
                t.cancel()
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder
        stats = session.stats()
    finally:
        if mic_source is not None:
            mic_source.stop()
        await session.close()
        view.close()
        if writer is not None:
            await asyncio.to_thread(writer.close)
        if push is not None:
            await asyncio.to_thread(push.close)
    if push is not None:
        stats["rtmp"] = push.stats()
    return stats


def _run_loop(coro: Any) -> Any:
    """Run with uvloop when installed (lower scheduling jitter), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="styletalk-live speak",
        description="Run the live pipeline (real time) on an audio file or the microphone and record the "
        "talking head with the delayed input audio into an MP4.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", metavar="FILE", help="audio (or video) file, played in real time")
    src.add_argument("--mic", action="store_true", help="the server's microphone (sounddevice)")
    parser.add_argument("-o", "--output", metavar="OUT.mp4", default="speak.mp4",
                        help="recording (H.264 + AAC); '' to record nothing (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds of input (default: the file's length; required-ish for --mic)")
    parser.add_argument("--device", default=None, help="microphone device (name or index) for --mic")
    parser.add_argument("--preview", action="store_true", help="show the frames while running (or print status)")
    parser.add_argument("--rtmp", metavar="URL", default=None,
                        help="also push the output live to this RTMP URL (H.264 + AAC in FLV), e.g. "
                        "rtmp://127.0.0.1/live/key; a failed push is reported (exit 1), the recording goes on")
    parser.add_argument("--stats", metavar="FILE.json", default=None, help="write the session statistics here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"styletalk-live speak: {exc}", file=sys.stderr)
        return 2
    if args.audio is not None and not Path(args.audio).is_file():
        print(f"styletalk-live speak: audio file {args.audio} does not exist", file=sys.stderr)
        return 2
    if args.rtmp is not None and not args.rtmp.startswith(("rtmp://", "rtmps://")):
        print(f"styletalk-live speak: --rtmp needs an rtmp:// or rtmps:// URL, got {args.rtmp!r}", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print("styletalk-live speak: --duration must be > 0", file=sys.stderr)
        return 2
    from engine.runtime import EngineRuntime
    from engine.sources import AudioFormatError, MicrophoneError

    # one session: a second model worker would never be placed on (each session stays on one worker)
    config = replace(config, decoder=replace(config.decoder, workers=min(config.decoder.workers, 1)))
    try:
        runtime = EngineRuntime.load(config)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        print(f"styletalk-live speak: cannot load the engine: {exc}", file=sys.stderr)
        return 1
    device: Any = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    try:
        stats = _run_loop(run_speak(runtime, args.audio, args.mic, args.output or None, args.duration,
                                    args.preview, device, progress=not args.no_progress, rtmp=args.rtmp))
    except MicrophoneError as exc:
        print(f"styletalk-live speak: {exc}", file=sys.stderr)
        return 1
    except AudioFormatError as exc:
        print(f"styletalk-live speak: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats).write_text(json.dumps(stats, indent=2, default=str))
    total = stats["latency_ms"]["total"]
    print(f"speak: {stats['frames_sent']} frames ({stats['late_frames']} late), delay {stats['delay_ms']:.0f} ms, "
          f"audio->sent p50 {total['p50'] or 0:.0f} ms p95 {total['p95'] or 0:.0f} ms"
          + (f"; wrote {args.output}" if args.output else ""))
    push = stats.get("rtmp")
    if push is not None:
        if push["error"]:
            print(f"styletalk-live speak: the RTMP push to {push['url']} failed: {push['error']}", file=sys.stderr)
            return 1
        print(f"speak: pushed {push['video_frames']} video / {push['audio_frames']} audio frames to {push['url']}"
              + (f" ({push['dropped']} dropped behind the encoder)" if push["dropped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
