"""Audio in: validation/normalisation at the edge, and the sources that feed a session.

Every source ends in ``sink(pcm, sample_rate)`` = :meth:`engine.live.LiveSession.push_audio`, which runs
:class:`AudioNormalizer` - so a browser track (48 kHz stereo), a microphone (any device rate) and a file all
reach the recognizer as 16 kHz mono int16. Bad input is made harmless here rather than deep in the pipeline:
NaN/inf become 0, floats are clipped to [-1, 1], stereo is averaged, any rate is resampled (stateful, so
chunk boundaries leave no clicks); what cannot be interpreted raises :class:`AudioFormatError` (a
``ValueError``) with the reason.

Sources:
- :class:`FileSource`: any audio/video file PyAV can decode, pushed in real time (20 ms chunks paced by the
  wall clock, as a microphone would deliver them) or as fast as the session accepts (``realtime=False``).
- :class:`MicrophoneSource`: the server's microphone through sounddevice; on a machine without PortAudio or
  without an input device it raises :class:`MicrophoneError` with a clear message instead of a traceback.
- WebRTC: the serving layer calls ``push_audio`` with each decoded ``av.AudioFrame.to_ndarray()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import av  # imported eagerly: a first lazy import inside push_audio would stall the event loop ~0.2 s
import numpy as np

from engine.timing import SAMPLE_RATE

log = logging.getLogger(__name__)

TARGET_RATE = SAMPLE_RATE  # what the engine runs at (engine.timing)
MIN_RATE, MAX_RATE = 4000, 384000
MAX_CHANNELS = 32
MAX_FILE_SECONDS = 3 * 3600

Sink = Callable[[np.ndarray, int], None]


class AudioFormatError(ValueError):
    """Audio that cannot be interpreted (wrong shape, dtype or sample rate)."""


class MicrophoneError(RuntimeError):
    """No usable microphone (PortAudio missing, no input device, device busy)."""


@dataclass
class NormalizerStats:
    blocks: int = 0
    samples_in: int = 0
    samples_out: int = 0
    nonfinite: int = 0  # NaN/inf samples replaced by 0
    clipped: int = 0  # float samples outside [-1, 1]
    rates: set[int] = field(default_factory=set)


def to_mono_float(pcm: np.ndarray) -> np.ndarray:
    """Any 1-D/2-D PCM array -> float32 mono in [-1, 1] (validates; see module docstring).

    2-D arrays are (channels, samples) when the first axis is the short one and (samples, channels)
    otherwise - the layouts of PyAV (planar/packed) and sounddevice respectively.
    """
    a = np.asarray(pcm)
    if a.dtype.kind not in "fiu":
        raise AudioFormatError(f"audio must be numeric PCM, got dtype {a.dtype}")
    if a.ndim == 2:
        if a.shape[0] <= MAX_CHANNELS and a.shape[0] <= a.shape[1]:
            a = a.mean(axis=0) if a.shape[0] > 1 else a[0]
        elif a.shape[1] <= MAX_CHANNELS:
            a = a.mean(axis=1) if a.shape[1] > 1 else a[:, 0]
        else:
            raise AudioFormatError(f"cannot tell channels from samples in audio of shape {a.shape}")
    elif a.ndim != 1:
        raise AudioFormatError(f"audio must be 1-D (mono) or 2-D (channels x samples), got shape {a.shape}")
    kind = np.asarray(pcm).dtype
    if kind.kind == "f":
        return a.astype(np.float32, copy=False)
    if kind == np.int16:
        return a.astype(np.float32) / 32768.0
    if kind == np.int32:
        return (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    if kind == np.uint8:
        return (a.astype(np.float32) - 128.0) / 128.0
    info = np.iinfo(kind)
    return (a.astype(np.float64) / max(abs(info.min), info.max)).astype(np.float32)


class AudioNormalizer:
    """Stateful ``(pcm, rate) -> int16 mono 16 kHz`` converter (not thread-safe: one per session)."""

    def __init__(self, target_rate: int = TARGET_RATE) -> None:
        self.target_rate = target_rate
        self.stats = NormalizerStats()
        self._resampler: av.AudioResampler | None = None
        self._rate: int | None = None

    def __call__(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise AudioFormatError(f"sample_rate must be an integer, got {sample_rate!r}")
        if not MIN_RATE <= int(sample_rate) <= MAX_RATE:
            raise AudioFormatError(f"sample_rate must be in {MIN_RATE}..{MAX_RATE} Hz, got {sample_rate}")
        x = to_mono_float(pcm)
        st = self.stats
        st.blocks += 1
        st.samples_in += x.shape[0]
        st.rates.add(int(sample_rate))
        bad = ~np.isfinite(x)
        if bad.any():
            st.nonfinite += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        over = np.abs(x) > 1.0
        if over.any():
            st.clipped += int(over.sum())
            x = np.clip(x, -1.0, 1.0)
        if int(sample_rate) == self.target_rate and self._resampler is None:
            out = np.round(x * 32767.0).astype(np.int16)
        else:
            out = self._resample(x, int(sample_rate))
        st.samples_out += out.shape[0]
        return out

    def _resample(self, x: np.ndarray, rate: int) -> np.ndarray:
        if self._resampler is None or rate != self._rate:
            # a new rate mid-stream: a fresh resampler (the old one's last ms of state is dropped)
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.target_rate)
            self._rate = rate
        if x.shape[0] == 0:
            return np.zeros(0, np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, :]), format="flt", layout="mono")
        frame.sample_rate = rate
        outs = self._resampler.resample(frame)
        if not outs:
            return np.zeros(0, np.int16)
        return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.int16, copy=False)

    def flush(self) -> np.ndarray:
        """Samples still inside the resampler (end of stream)."""
        if self._resampler is None:
            return np.zeros(0, np.int16)
        outs = self._resampler.resample(None)
        self._resampler = None
        if not outs:
            return np.zeros(0, np.int16)
        return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.int16, copy=False)


# ------------------------------------------------------------------------------------------------- files
def decode_audio_file(path: str | Path, rate: int = TARGET_RATE, max_seconds: float = MAX_FILE_SECONDS) -> np.ndarray:
    """Decode the first audio stream of any PyAV-readable file to int16 mono at ``rate`` (raises ValueError)."""
    p = Path(path)
    if not p.is_file():
        raise AudioFormatError(f"audio file {p} does not exist")
    try:
        container = av.open(str(p))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types
        raise AudioFormatError(f"cannot open {p}: {exc}") from None
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioFormatError(f"{p} has no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        parts: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * rate)
        try:
            for frame in container.decode(streams[0]):
                frame.pts = None  # resample by sample count; some files have broken timestamps
                for out in resampler.resample(cast(av.AudioFrame, frame)):  # an audio stream's frames
                    parts.append(out.to_ndarray().reshape(-1))
                    total += parts[-1].shape[0]
                if total > limit:
                    raise AudioFormatError(f"{p} is longer than {max_seconds:.0f} s")
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
        except AudioFormatError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AudioFormatError(f"cannot decode {p}: {exc}") from None
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)


class FileSource:
    """Push a decoded file into ``sink`` in chunks, paced like a live capture (``realtime=True``).

    Chunk k (``chunk_ms`` long) is pushed when it would have finished arriving live: at
    ``start + (k+1)·chunk``; sleeping to absolute deadlines keeps the long-run rate exact.
    """

    def __init__(self, path: str | Path, sink: Sink, chunk_ms: int = 20, realtime: bool = True,
                 lead_silence_s: float = 0.0, tail_silence_s: float = 0.0) -> None:
        self.path = Path(path)
        self.sink = sink
        self.chunk = TARGET_RATE * chunk_ms // 1000
        self.realtime = realtime
        self.lead = int(lead_silence_s * TARGET_RATE)
        self.tail = int(tail_silence_s * TARGET_RATE)
        self.pushed = 0
        self.audio: np.ndarray | None = None

    async def load(self) -> np.ndarray:
        if self.audio is None:
            pcm = await asyncio.to_thread(decode_audio_file, self.path)
            self.audio = np.concatenate([np.zeros(self.lead, np.int16), pcm, np.zeros(self.tail, np.int16)])
        return self.audio

    @property
    def duration_s(self) -> float:
        return 0.0 if self.audio is None else self.audio.shape[0] / TARGET_RATE

    async def run(self, clock: Callable[[], float] = time.monotonic) -> int:
        """Push the whole file; returns the number of samples pushed."""
        audio = await self.load()
        start = clock()
        for k, i in enumerate(range(0, audio.shape[0], self.chunk)):
            block = audio[i : i + self.chunk]
            if self.realtime:
                delay = start + (k + 1) * self.chunk / TARGET_RATE - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            self.sink(block, TARGET_RATE)
            self.pushed += block.shape[0]
        return self.pushed


# -------------------------------------------------------------------------------------------- microphone
def _import_sounddevice():  # noqa: ANN202 - module object
    try:
        import sounddevice
    except OSError as exc:  # PortAudio shared library missing
        raise MicrophoneError(
            f"no microphone support on this machine: {exc} (install the PortAudio library, e.g. "
            "`apt-get install libportaudio2`, or use --audio FILE)"
        ) from None
    except ImportError as exc:
        raise MicrophoneError(f"sounddevice is not installed: {exc}") from None
    return sounddevice


class MicrophoneSource:
    """The server's microphone via sounddevice; callbacks push from PortAudio's thread into ``sink``."""

    def __init__(self, sink: Sink, device: int | str | None = None, chunk_ms: int = 20) -> None:
        self.sink = sink
        self.device = device
        self.chunk_ms = chunk_ms
        self._stream: Any = None  # sounddevice.InputStream (imported lazily: PortAudio may be missing)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def start(self) -> None:
        sd = _import_sounddevice()
        try:
            info = sd.query_devices(self.device, "input")
        except Exception as exc:  # noqa: BLE001 - PortAudioError / ValueError
            raise MicrophoneError(f"no usable audio input device ({self.device or 'default'}): {exc}") from None
        rate = int(info.get("default_samplerate") or TARGET_RATE)

        def callback(indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
            if status:
                self.errors.append(str(status))
            try:
                self.sink(indata.copy(), rate)
            except Exception as exc:  # noqa: BLE001 - never raise into PortAudio's thread
                self.errors.append(str(exc))

        try:
            self._stream = sd.InputStream(device=self.device, channels=1, samplerate=rate, dtype="float32",
                                          blocksize=int(rate * self.chunk_ms / 1000), callback=callback)
            self._stream.start()
        except Exception as exc:  # noqa: BLE001
            raise MicrophoneError(f"cannot open the microphone: {exc}") from None
        log.info("microphone %s opened at %d Hz", info.get("name"), rate)

    def stop(self) -> None:
        with self._lock:
            if self._stream is not None:
                try:
                    self._stream.stop()
                    self._stream.close()
                finally:
                    self._stream = None
