"""Phoneme table and the decoder's 11-frame windows vs the official sample and windowing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.phonemes import (
    NUM_PHONEMES,
    PHONEME_INDEX,
    PHONEME_TO_VISEME,
    PHONEMES,
    SIL,
    VISEMES,
    phoneme_windows,
    viseme_of,
    visemes,
)


@pytest.fixture(scope="module")
def windows_doc(fixtures_dir: Path) -> dict:
    path = fixtures_dir / "phoneme_windows.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def test_table_matches_official_index(windows_doc: dict) -> None:
    assert NUM_PHONEMES == 41 and SIL == 31 and PHONEMES[SIL] == "SIL"
    assert PHONEME_INDEX == windows_doc["phoneme_index"]
    assert windows_doc["pad_index"] == SIL and windows_doc["pad_symbol"] == "SIL"


def test_table_matches_sample_phindex(samples_dir: Path) -> None:
    path = samples_dir / "phindex.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert PHONEME_INDEX == json.loads(path.read_text())


def test_reference_windows_reproduced(windows_doc: dict) -> None:
    seq = windows_doc["phonemes"]
    got = phoneme_windows(seq, win=windows_doc["win_size"])
    expected = np.asarray(windows_doc["windows"], dtype=np.int64)
    assert got.dtype == np.int64
    assert got.shape == (windows_doc["num_frames"], windows_doc["window_length"]) == expected.shape
    np.testing.assert_array_equal(got, expected)
    # numpy input gives the same, and the default window is the official one
    np.testing.assert_array_equal(phoneme_windows(np.asarray(seq, dtype=np.int32)), expected)


def test_windows_definition_on_short_sequences() -> None:
    seq = [3, 7, 9]
    w = phoneme_windows(seq, win=5)
    assert w.shape == (3, 11)
    for t in range(3):
        for j in range(11):
            src = t - 5 + j
            assert w[t, j] == (seq[src] if 0 <= src < 3 else SIL)
    assert phoneme_windows([], win=5).shape == (0, 11)
    np.testing.assert_array_equal(phoneme_windows([4, 5], win=0), [[4], [5]])
    w[0, 0] = 0  # result is a writable copy, not a strided view
    assert w[0, 0] == 0


@pytest.mark.parametrize("bad", [[0, 41], [-1], [[1, 2]], [1.5]])
def test_invalid_sequences_rejected(bad: list) -> None:
    with pytest.raises(ValueError):
        phoneme_windows(bad)


def test_visemes_cover_every_phoneme() -> None:
    assert len(VISEMES) == 13 and PHONEME_TO_VISEME.shape == (NUM_PHONEMES,)
    assert set(PHONEME_TO_VISEME.tolist()) == set(range(len(VISEMES)))  # every class used
    assert VISEMES[PHONEME_TO_VISEME[SIL]] == "S" == viseme_of(PHONEME_INDEX["NSN"])
    assert {viseme_of(PHONEME_INDEX[p]) for p in ("P", "B", "M")} == {"E"}  # bilabial closure
    assert viseme_of(PHONEME_INDEX["F"]) != viseme_of(PHONEME_INDEX["P"])
    np.testing.assert_array_equal(visemes([[PHONEME_INDEX["S"], PHONEME_INDEX["Z"]]]), [[VISEMES.index("B")] * 2])
    with pytest.raises(ValueError):  # the shared table cannot be changed by accident
        PHONEME_TO_VISEME[0] = 1


def test_engine_viseme_names_are_the_models_table() -> None:
    from engine.recognizer import visemes as engine_visemes

    assert engine_visemes.PHONEME_TO_VISEME is PHONEME_TO_VISEME and engine_visemes.VISEMES is VISEMES
