"""`styletalk-live speak`: argument validation and a short real recording (file -> live pipeline -> MP4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from engine.speak import Mp4Writer, main, run_speak
from tests.engine_helpers import small_runtime
from tests.test_engine_sources import _write_wav


def test_bad_arguments_exit_with_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--audio", str(tmp_path / "missing.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err
    wav = tmp_path / "a.wav"
    _write_wav(wav, np.zeros(1600, np.float32), 16000)
    assert main(["--audio", str(wav), "--set", "decoder.lookahead=9"]) == 2
    assert "0..5" in capsys.readouterr().err
    assert main(["--audio", str(wav), "--duration", "-1"]) == 2
    with pytest.raises(SystemExit):
        main([])  # --audio or --mic is required


def test_mp4_writer_muxes_h264_and_aac_with_matching_lengths(tmp_path: Path) -> None:
    out = tmp_path / "w.mp4"
    w = Mp4Writer(out, (64, 64), fps=30, sample_rate=16000)
    for i in range(30):
        w.write_video(i, np.full((64, 64, 3), i * 8, np.uint8))
    for k in range(50):
        w.write_audio(320 * k, np.full(320, 1000, np.int16))
    w.close()
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert v.frames == 30
        assert abs(float(v.duration * v.time_base) - 1.0) < 0.05
        assert abs(float(a.duration * a.time_base) - 1.0) < 0.1


def test_speak_records_the_live_pipeline(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    wav = tmp_path / "speech.wav"
    rng = np.random.default_rng(0)
    _write_wav(wav, rng.standard_normal(16000 * 2).astype(np.float32) * 0.1, 16000)
    runtime = small_runtime(rng.integers(0, 41, 120), lookahead=2)
    out = tmp_path / "out.mp4"
    try:
        stats = asyncio.run(run_speak(runtime, str(wav), False, str(out), duration=None))
    finally:
        runtime.close()
    expected = 2.0 + stats["delay_ms"] / 1000 + 0.5  # input + pipeline delay + tail
    assert abs(stats["frames_sent"] / 30 - expected) < 0.1
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.width, v.height) == (64, 64)
        assert abs(float(v.duration * v.time_base) - expected) < 0.1
        assert abs(float(a.duration * a.time_base) - expected) < 0.15
