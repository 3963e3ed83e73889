"""Offline render command: real models, real encoder, real files; errors are clear exit codes, not tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from clients.cli import main as cli_main
from models.phonemes import PHONEME_INDEX


def _read_video(path: Path) -> tuple[np.ndarray, list[str], float | None]:
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        audio_s = None
        if container.streams.audio:
            a = container.streams.audio[0]
            audio_s = float(a.duration * a.time_base) if a.duration else None
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return frames, kinds, audio_s


@pytest.fixture(scope="module")
def phoneme_file(tmp_path_factory) -> Path:
    # 1 s silence, then an open vowel held, a bilabial closure, vowel again, silence: 3 s in all
    seq = ["SIL"] * 30 + ["AA"] * 12 + ["M"] * 6 + ["AA"] * 12 + ["B"] * 6 + ["AO"] * 12 + ["SIL"] * 12
    path = tmp_path_factory.mktemp("offline") / "seq.json"
    path.write_text(json.dumps(seq))
    return path


def test_render_phonemes_writes_playable_mp4_with_mouth_motion(phoneme_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    assert cli_main(["render", "--phonemes", str(phoneme_file), "-o", str(out), "--no-progress"]) == 0
    frames, kinds, _ = _read_video(out)
    assert kinds == ["video"]
    n = len(json.loads(phoneme_file.read_text()))
    assert frames.shape[0] == n
    assert frames.shape[1:] == (256, 256, 3)
    # the lower-middle of the face (mouth) changes more during speech than the image corners do
    mouth = frames[:, 150:220, 88:168].astype(np.float32)
    corner = frames[:, :40, :40].astype(np.float32)
    speech = slice(30, 30 + 60)
    mouth_motion = np.abs(np.diff(mouth[speech], axis=0)).mean()
    corner_motion = np.abs(np.diff(corner[speech], axis=0)).mean()
    assert mouth_motion > 2 * corner_motion + 0.05, (mouth_motion, corner_motion)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (tests/setup_system.py)")
def test_render_audio_has_synced_aac_track(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Papa bought a big map."], check=True)
    out = tmp_path / "speech.mp4"
    assert cli_main(["render", "--audio", str(wav), "-o", str(out), "--no-progress"]) == 0
    frames, kinds, audio_s = _read_video(out)
    assert sorted(kinds) == ["audio", "video"]
    assert audio_s is not None and abs(frames.shape[0] / 30 - audio_s) <= 1 / 30 + 0.07  # AAC frame granularity


def test_render_style_clip_file(samples_dir: Path, phoneme_file: Path, tmp_path: Path) -> None:
    clip = samples_dir / "style/3dmm/happyenglish_clip1.mat"
    out = tmp_path / "happy.mp4"
    assert cli_main(["render", "--phonemes", str(phoneme_file), "--style", str(clip), "-o", str(out),
                     "--no-progress"]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize(
    "content,expected",
    [
        ("not json", "not readable JSON"),
        ("[]", "non-empty JSON list"),
        ('["AA", "XX"]', "item 1"),
        ("[0, 41]", "item 1"),
    ],
)
def test_bad_phoneme_files_are_clear_errors(tmp_path: Path, capsys, content: str, expected: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert cli_main(["render", "--phonemes", str(bad), "-o", str(tmp_path / "x.mp4"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_unknown_style_and_missing_audio_are_clear_errors(phoneme_file: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["render", "--phonemes", str(phoneme_file), "--style", "no-such-style",
                     "-o", str(tmp_path / "x.mp4")]) == 2
    assert "unknown style 'no-such-style'" in capsys.readouterr().err
    assert cli_main(["render", "--audio", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "y.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_phoneme_names_and_ids_are_equivalent(tmp_path: Path) -> None:
    from engine.offline import load_phonemes

    names = tmp_path / "names.json"
    ids = tmp_path / "ids.json"
    names.write_text(json.dumps(["SIL", "aa", "M"]))
    ids.write_text(json.dumps([PHONEME_INDEX["SIL"], PHONEME_INDEX["AA"], PHONEME_INDEX["M"]]))
    assert load_phonemes(names).tolist() == load_phonemes(ids).tolist()
