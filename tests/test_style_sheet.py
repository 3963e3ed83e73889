"""`styletalk-live styles [--sheet]`: the style list and the style sheet drawn with the real built-in
checkpoint, style codes, avatar and warp renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.cli import main as cli_main
from engine.style_sheet import SheetError, main, pick_frames
from models.phonemes import PHONEME_INDEX, SIL

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_lists_styles_without_sheet(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["styles"]) == 0
    names = capsys.readouterr().out.split()
    assert {"neutral", "happy", "furious", "sad"} <= set(names)


def test_sheet_rows_are_styles_and_columns_the_same_frames(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    assert main(["--sheet", str(out), "--only", "neutral,furious,happy", "--columns", "3", "--tile", "64"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (3 * 64, 3 * 64, 3)
    rows = [img[i * 64 : (i + 1) * 64, :, :].astype(np.int32) for i in range(3)]
    # below the name label, every style draws a different face
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(rows[a][16:] - rows[b][16:]).mean() > 0.5, (a, b)
    one = tmp_path / "one.png"
    assert main(["--sheet", str(one), "--only", "neutral,sad", "--tile", "64"]) == 0
    assert np.asarray(Image.open(one)).shape == (64, 2 * 64, 3)  # one tile per style


def test_intensity_sheet_groups_silence_and_speech_per_intensity(tmp_path: Path) -> None:
    out = tmp_path / "k.png"
    assert main(["--sheet", str(out), "--only", "sad", "--columns", "1", "--tile", "64", "--intensities", "0,1,2",
                 "--silence", "--rest", "neutral"]) == 0
    img = np.asarray(Image.open(out)).astype(np.int32)
    assert img.shape == (64, 6 * 64, 3)  # (silence, speech) x 3 intensities
    tiles = [img[16:, i * 64 : (i + 1) * 64] for i in range(6)]
    # silence at k=0 is the neutral rest = the photo; the style's silence differs, more at k=2 than at k=1
    d1, d2 = np.abs(tiles[2] - tiles[0]).mean(), np.abs(tiles[4] - tiles[0]).mean()
    assert 0.2 < d1 < d2, (d1, d2)
    assert main(["--sheet", str(out), "--intensities", "0,3"]) == 2


def test_sheet_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sheet", str(tmp_path / "x.png"), "--only", "nosuchstyle"]) == 2
    err = capsys.readouterr().err
    assert "unknown style 'nosuchstyle'" in err and err.count("\n") == 1
    assert main(["--sheet", str(tmp_path / "x.png"), "--columns", "99"]) == 2
    assert not (tmp_path / "x.png").exists()


def test_pick_frames() -> None:
    aa = PHONEME_INDEX["AA"]
    labels = np.array([SIL] * 10 + [PHONEME_INDEX["M"]] * 5 + [aa] * 6 + [SIL] * 10)
    assert pick_frames(labels, 1)[0] in range(15, 21)
    many = pick_frames(labels, 4)
    assert len(many) == 4 and all(labels[i] != SIL for i in many) and list(many) == sorted(many)
    with pytest.raises(SheetError, match="silence"):
        pick_frames(np.full(20, SIL), 3)
