"""engine.sources: audio normalisation at the edge, file decoding/pacing, microphone guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest

from engine.sources import (
    AudioFormatError,
    AudioNormalizer,
    FileSource,
    MicrophoneError,
    MicrophoneSource,
    decode_audio_file,
    to_mono_float,
)


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float(np.fft.rfftfreq(x.shape[0], 1 / rate)[spec.argmax()])


def test_16k_int16_mono_passes_through_unchanged() -> None:
    norm = AudioNormalizer()
    pcm = (np.random.default_rng(0).standard_normal(320) * 1000).astype(np.int16)
    out = norm(pcm, 16000)
    assert out.dtype == np.int16 and np.abs(out.astype(int) - pcm).max() <= 1


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_streamed_resampling_keeps_length_and_pitch(rate: int) -> None:
    norm = AudioNormalizer()
    x = _tone(rate, 1.0)
    block = rate // 50  # 20 ms blocks, as WebRTC delivers them
    out = np.concatenate([norm(x[i : i + block], rate) for i in range(0, x.shape[0], block)] + [norm.flush()])
    assert abs(out.shape[0] - 16000) <= 32
    assert abs(_dominant_freq(out, 16000) - 440.0) < 2.0
    # no clicks at block boundaries: the resampled tone stays smooth
    assert np.abs(np.diff(out[100:-100].astype(np.int32))).max() < 32768 * 0.5 * 2 * np.pi * 440 / 16000 * 1.2


def test_stereo_layouts_and_dtypes() -> None:
    left = _tone(16000, 0.1)
    planar = np.stack([left, left])  # (channels, samples): PyAV planar
    packed = planar.T.copy()  # (samples, channels): sounddevice
    a = to_mono_float(planar)
    b = to_mono_float(packed)
    np.testing.assert_allclose(a, left, atol=1e-6)
    np.testing.assert_allclose(b, left, atol=1e-6)
    np.testing.assert_allclose(to_mono_float((left * 32767).astype(np.int16)), left, atol=1e-4)
    np.testing.assert_allclose(to_mono_float((left * 2**31 * 0.99).astype(np.int32)), left * 0.99, atol=1e-6)
    assert to_mono_float(np.full(4, 128, np.uint8)).tolist() == [0.0] * 4


def test_nan_and_out_of_range_are_made_harmless() -> None:
    norm = AudioNormalizer()
    x = np.array([0.1, np.nan, np.inf, -3.0, 0.2], np.float32)
    out = norm(x, 16000)
    assert out.tolist() == [round(0.1 * 32767), 0, 0, -32767, round(0.2 * 32767)]
    assert norm.stats.nonfinite == 2 and norm.stats.clipped == 1


@pytest.mark.parametrize(
    "pcm, rate, message",
    [
        (np.zeros((2, 3, 4), np.float32), 16000, "1-D"),
        (np.zeros((100, 100), np.float32), 16000, "channels"),
        (np.array(["a"]), 16000, "numeric"),
        (np.zeros(10, np.float32), 100, "sample_rate"),
        (np.zeros(10, np.float32), 16000.0, "integer"),
    ],
)
def test_uninterpretable_audio_raises_a_clear_value_error(pcm: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioNormalizer()(pcm, rate)


def _write_wav(path: Path, x: np.ndarray, rate: int, channels: int = 1) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono" if channels == 1 else "stereo")
        data = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        data = np.repeat(data[None], channels, axis=0).T.reshape(1, -1)  # packed
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_decode_audio_file_any_rate_and_channels(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    _write_wav(wav, _tone(44100, 0.5, 300.0), 44100, channels=2)
    pcm = decode_audio_file(wav)
    assert pcm.dtype == np.int16 and abs(pcm.shape[0] - 8000) <= 32
    assert abs(_dominant_freq(pcm, 16000) - 300.0) < 3.0
    with pytest.raises(AudioFormatError, match="does not exist"):
        decode_audio_file(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioFormatError):
        decode_audio_file(bad)


def test_file_source_pushes_everything_in_chunks(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    _write_wav(wav, _tone(16000, 0.3), 16000)
    got: list[np.ndarray] = []
    src = FileSource(wav, lambda pcm, rate: got.append(pcm), realtime=False, lead_silence_s=0.1)
    n = asyncio.run(src.run())
    assert n == 0.4 * 16000 and sum(g.shape[0] for g in got) == n
    assert {g.shape[0] for g in got[:-1]} == {320}
    assert np.all(got[0] == 0)  # the lead silence comes first


def test_microphone_without_portaudio_or_device_gives_a_clear_error() -> None:
    mic = MicrophoneSource(lambda pcm, rate: None)
    try:
        mic.start()
    except MicrophoneError as exc:
        assert "microphone" in str(exc) or "audio input" in str(exc)
    else:  # a machine with a real microphone
        mic.stop()
