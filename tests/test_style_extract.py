"""Style extraction from real videos (engine/style_extract.py): the command, and every kind of bad input.

The bad inputs are made from the sample videos with PyAV in the test (cut, pasted side by side, shrunk, blanked),
so each one is a real file FFmpeg reads, failing for exactly one reason.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.style_extract import ExtractLimits, StyleExtractError, extract_style, main, video_landmarks

CLIP = ("style", "sadgirl_clip1")  # 90 frames, 3 s, one face


def read_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def write_video(
    path: Path, frames: list[np.ndarray], fps: int = 30, codec: str = "libx264", container: str | None = None
) -> Path:
    """Encode RGB ``frames`` to ``path`` (the container from the suffix unless named, e.g. "yuv4mpegpipe")."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture(scope="module")
def frames(samples_dir) -> list[np.ndarray]:
    return read_frames(samples_dir / CLIP[0] / "video" / f"{CLIP[1]}.mp4")


@pytest.fixture(scope="module")
def video(samples_dir) -> Path:
    return samples_dir / CLIP[0] / "video" / f"{CLIP[1]}.mp4"


def test_command_writes_a_clip_with_one_row_per_frame(video, tmp_path, capsys) -> None:
    out = tmp_path / "clip.npy"
    assert main([str(video), "-o", str(out), "--no-progress"]) == 0
    clip = np.load(out)
    assert clip.shape == (90, 64) and clip.dtype == np.float32 and np.isfinite(clip).all()
    text = capsys.readouterr().out
    assert "90 frames" in text and "fit residual" in text and "real time" in text
    # the clip loads as a style clip like any .npy
    from models.clips import load_style_clip

    np.testing.assert_array_equal(load_style_clip(out), clip)


def test_webm_and_rescaled_input_give_the_same_motion(frames, video, tmp_path) -> None:
    """Another container/codec and a 2× larger frame: the motion (mouth) agrees with the original's."""
    from skimage.transform import resize

    big = [np.clip(resize(f, (512, 512), order=1, preserve_range=True), 0, 255).astype(np.uint8) for f in frames]
    webm = write_video(tmp_path / "big.webm", big, codec="libvpx")
    a = extract_style(video).exp
    b = extract_style(webm).exp
    assert len(a) == len(b) == 90
    r = np.corrcoef(a[:, 0], b[:, 0])[0, 1]  # coefficient 0: the strongest mouth-opening coefficient
    assert r > 0.8


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("too_short", "too_short"), ("no_face", "no_face"), ("several_faces", "several_faces"),
        ("face_too_small", "face_too_small"), ("corrupt", "unreadable"), ("audio_only", "no_video"),
        ("huge", "resolution"), ("long_gap", "face_lost"), ("not_a_file", "unreadable"),
    ],
)
def test_bad_input_gets_a_coded_error_and_writes_nothing(case, code, frames, samples_dir, tmp_path, capsys) -> None:
    path = tmp_path / f"{case}.mp4"
    if case == "too_short":
        write_video(path, frames[:30])  # 1 s
    elif case == "no_face":
        rng = np.random.default_rng(0)
        write_video(path, [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(75)])
    elif case == "several_faces":
        write_video(path, [np.concatenate([f, f[:, ::-1]], axis=1) for f in frames])
    elif case == "face_too_small":
        write_video(path, [f[::3, ::3][:84, :84] for f in frames])  # face box ~50 px < 64
    elif case == "corrupt":
        data = (samples_dir / CLIP[0] / "video" / f"{CLIP[1]}.mp4").read_bytes()
        path.write_bytes(data[:200] + bytes(len(data) - 200))  # header kept, everything else zeroed
    elif case == "audio_only":
        path = samples_dir / "source" / "wav" / "KristiNoem.wav"
    elif case == "huge":
        write_video(path, [np.zeros((2400, 4000, 3), np.uint8)] * 2)
    elif case == "long_gap":
        blank = np.full_like(frames[0], 128)
        write_video(path, frames[:30] + [blank] * 30 + frames[60:])  # 1 s without a face
    elif case == "not_a_file":
        path = tmp_path / "missing.mp4"
    out = tmp_path / "out.npy"
    assert main([str(path), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error [{code}]" in err, err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()


def test_too_long_is_refused_before_work(samples_dir) -> None:
    with pytest.raises(StyleExtractError) as exc:
        extract_style(samples_dir / "source" / "video" / "KristiNoem.mp4", ExtractLimits(max_seconds=5.0))
    assert exc.value.code == "too_long"


def test_short_face_loss_is_interpolated_and_reported(frames, tmp_path) -> None:
    blank = np.full_like(frames[0], 128)
    path = write_video(tmp_path / "gap.mp4", frames[:40] + [blank] * 6 + frames[46:])
    lmk, *_ = video_landmarks(path)
    lost = np.isnan(lmk).any(axis=(1, 2))
    assert lost[40:46].all()  # the blank frames are never given landmarks
    res = extract_style(path)
    assert len(res.exp) == 90 and np.isfinite(res.exp).all()
    (a, b), = res.interpolated
    assert a <= 40 and 45 <= b <= 50  # the blank frames, plus tracked frames no detection confirmed


def test_other_frame_rates_give_30_fps_rows(frames, tmp_path) -> None:
    """A 15 fps recording (webcams, browsers) is resampled by its timestamps: one row per 1/30 s."""
    path = write_video(tmp_path / "15fps.mp4", frames[::2], fps=15)
    res = extract_style(path)
    assert res.fps == 30.0
    assert abs(len(res.exp) - 89) <= 2 and np.isfinite(res.exp).all()
