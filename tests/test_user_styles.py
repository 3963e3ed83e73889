"""User styles (engine/user_styles.py): `styles add/remove`, listing, persistence across a restart, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import Config, StyleConfig
from engine.user_styles import UserStyles, default_dir, main, styles_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def user_dir(tmp_path) -> Path:
    return tmp_path / "styles"


def run(user_dir: Path, *args: str) -> int:
    return main(["--set", f"style.user_dir={user_dir}", *args])


def test_default_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_dir() == tmp_path / "styletalk-live" / "styles"
    assert styles_dir(StyleConfig()) == default_dir()
    assert styles_dir(StyleConfig(user_dir=str(tmp_path / "x"))) == tmp_path / "x"


def test_add_from_video_and_clip_then_available_after_restart(user_dir, samples_dir, capsys) -> None:
    video = samples_dir / "style" / "video" / "sadgirl_clip1.mp4"
    mat = samples_dir / "style" / "3dmm" / "nice_clip1.mat"
    assert run(user_dir, "add", "me", str(video), "--no-progress") == 0
    assert run(user_dir, "add", "nice-copy", str(mat)) == 0
    assert "added user style 'me' (90 frames" in capsys.readouterr().out
    clip = np.load(user_dir / "me.npy")
    assert clip.shape == (90, 64) and clip.dtype == np.float32
    assert '"kind": "video"' in (user_dir / "me.json").read_text()

    # a new process (a restart) lists both, next to the built-in styles
    out = subprocess.run(
        [sys.executable, "-m", "clients.cli", "styles", "--set", f"style.user_dir={user_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "me  (user: sadgirl_clip1.mp4, 90 frames)" in out
    assert "nice-copy  (user: nice_clip1.mat" in out
    assert "neutral  (built-in)" in out

    # and the runtime (render / speak / serve) encodes them by name
    from engine.runtime import build_decoder, build_styles

    config = Config(style=StyleConfig(user_dir=str(user_dir)))
    decoder = build_decoder(config)
    bank = build_styles(config, decoder)
    np.testing.assert_allclose(bank.get("me"), decoder.encode_style(clip), atol=1e-5)


def test_nothing_lost_on_bad_requests(user_dir, samples_dir, tmp_path, capsys) -> None:
    mat = samples_dir / "style" / "3dmm" / "nice_clip1.mat"
    assert run(user_dir, "add", "keep", str(mat)) == 0
    before = (user_dir / "keep.npy").read_bytes()
    capsys.readouterr()
    noise = tmp_path / "noise.npy"
    np.save(noise, np.full((10, 3), 1.0))
    audio = samples_dir / "source" / "wav" / "KristiNoem.wav"
    cases = [
        (["add", "keep", str(samples_dir / "style" / "3dmm" / "sadgirl_clip1.mat")], "exists"),
        (["add", "neutral", str(mat)], "builtin"),
        (["add", "../escape", str(mat)], "bad_name"),
        (["add", "other", str(noise)], "bad_clip"),
        (["add", "keep", str(audio), "--replace"], "no_video"),
        (["add", "other", str(tmp_path / "missing.mp4")], "unreadable"),
        (["remove", "nobody"], "unknown"),
    ]
    for args, code in cases:
        assert run(user_dir, *args) == 2, args
        err = capsys.readouterr().err
        assert f"error [{code}]" in err, (args, err)
    assert (user_dir / "keep.npy").read_bytes() == before
    assert sorted(p.name for p in user_dir.iterdir()) == ["keep.json", "keep.npy"]  # no temporary leftovers
    assert run(user_dir, "add", "keep", str(samples_dir / "style" / "3dmm" / "sadgirl_clip1.mat"), "--replace") == 0
    assert (user_dir / "keep.npy").read_bytes() != before
    assert run(user_dir, "remove", "keep") == 0
    assert list(user_dir.iterdir()) == []


def test_damaged_user_style_is_skipped_not_fatal(user_dir) -> None:
    user_dir.mkdir(parents=True)
    (user_dir / "broken.npy").write_bytes(b"not an npy file")
    np.save(user_dir / "fine.npy", np.zeros((20, 64), np.float32))
    assert sorted(UserStyles(user_dir).load()) == ["fine"]
