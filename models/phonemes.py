"""Phoneme table of the official StyleTalk model and the decoder's 11-frame phoneme windows.

StyleTalk's content encoder embeds 41 symbols: the 39 ARPAbet phonemes of CMUdict plus ``NSN`` (noise) and
``SIL`` (silence), numbered alphabetically as in the official ``phindex.json``. The ids are baked into the
trained embedding, so this table must never be reordered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PHONEMES: list[str] = [
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH",
    "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH", "K",
    "L", "M", "N", "NG", "NSN", "OW", "OY", "P", "R", "S",
    "SH", "SIL", "T", "TH", "UH", "UW", "V", "W", "Y", "Z",
    "ZH",
]  # fmt: skip
"""Phoneme names; the list index is the model's phoneme id."""

NUM_PHONEMES: int = len(PHONEMES)  # 41
PHONEME_INDEX: dict[str, int] = {name: i for i, name in enumerate(PHONEMES)}
SIL: int = PHONEME_INDEX["SIL"]  # 31: also the id used outside the sequence when windowing
NSN: int = PHONEME_INDEX["NSN"]
WIN_SIZE: int = 5  # official WIN_SIZE: the decoder sees frames t-5 .. t+5
WINDOW_LENGTH: int = 2 * WIN_SIZE + 1

# Viseme (lip-shape) classes: the 13 groups of Neti et al. (2000) - the single viseme table of the project
# (engine.recognizer.visemes re-exports it; the benchmarks score "viseme accuracy" with it). Why these 13: they
# are the standard viseme classes of audio-visual speech recognition (C. Neti, G. Potamianos et al.,
# "Audio-visual speech recognition", JHU CLSP workshop 2000 final report), derived from the visual
# confusability of English phonemes - "would the mouth look the same?", the question that matters for a
# talking head. Four vowel groups by lip rounding / opening, eight consonant groups by place of articulation,
# and silence. NSN (noise) counts as silence (mouth at rest); HH takes the shape of the vowel it precedes (V1).
# StyleTalk itself sees phonemes, not visemes.
VISEME_GROUPS: dict[str, tuple[str, ...]] = {
    "V1": ("AO", "AH", "AA", "ER", "OY", "AW", "HH"),  # open / lax vowels
    "V2": ("UW", "UH", "OW"),  # rounded vowels
    "V3": ("AE", "EH", "EY", "AY"),  # spread, open-mid vowels
    "V4": ("IH", "IY"),  # spread, close vowels
    "A": ("L", "R", "Y"),  # alveolar semivowels
    "B": ("S", "Z"),  # alveolar fricatives
    "C": ("T", "D", "N"),  # alveolar stops / nasal
    "D": ("SH", "ZH", "CH", "JH"),  # palato-alveolar (protruded lips)
    "E": ("P", "B", "M"),  # bilabial closure
    "F": ("TH", "DH"),  # dental
    "G": ("F", "V"),  # labio-dental
    "H": ("NG", "K", "G", "W"),  # velar (and W)
    "S": ("SIL", "NSN"),  # silence / rest
}
VISEMES: tuple[str, ...] = tuple(VISEME_GROUPS)
NUM_VISEMES: int = len(VISEMES)  # 13
VISEME_INDEX: dict[str, int] = {name: i for i, name in enumerate(VISEMES)}


def _viseme_table() -> np.ndarray:
    owner = {p: v for v, members in enumerate(VISEME_GROUPS.values()) for p in members}
    missing = [p for p in PHONEMES if p not in owner]
    if missing or len(owner) != NUM_PHONEMES:  # pragma: no cover - guarded by tests
        raise AssertionError(f"viseme groups must cover each phoneme once; missing {missing}")
    table = np.array([owner[p] for p in PHONEMES], dtype=np.int64)
    table.setflags(write=False)
    return table


PHONEME_TO_VISEME: np.ndarray = _viseme_table()
"""``PHONEME_TO_VISEME[phoneme_id]`` = index into ``VISEMES`` (read-only int64 array of 41; index it with arrays)."""


def viseme_of(phoneme: int) -> str:
    """Viseme name of one phoneme id."""
    return VISEMES[int(PHONEME_TO_VISEME[int(phoneme)])]


def visemes(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Map phoneme ids (any shape) to viseme indices."""
    return PHONEME_TO_VISEME[np.asarray(ids, dtype=np.int64)]


def phoneme_windows(seq: Sequence[int] | np.ndarray, win: int = WIN_SIZE) -> np.ndarray:
    """Per-frame phoneme windows ``(T, 2*win+1)`` int64: row t holds the ids of frames t-win .. t+win.

    Positions before the first or after the last frame are SIL (31) - the official inference pads both ends
    this way, so the first and last ``win`` frames are decoded as if the clip were surrounded by silence.
    """
    ids = np.asarray(seq)
    if ids.ndim != 1:
        raise ValueError(f"phoneme sequence must be 1-D, got shape {ids.shape}")
    if win < 0:
        raise ValueError(f"win must be >= 0, got {win}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not np.all(np.equal(np.mod(ids, 1), 0)):
            raise ValueError("phoneme ids must be integers")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= NUM_PHONEMES):
        bad = ids[(ids < 0) | (ids >= NUM_PHONEMES)]
        raise ValueError(f"phoneme ids must be in [0, {NUM_PHONEMES}), got {bad[:5].tolist()}")
    if ids.size == 0:
        return np.empty((0, 2 * win + 1), np.int64)
    padded = np.concatenate([np.full(win, SIL, np.int64), ids, np.full(win, SIL, np.int64)])
    # (T + 2*win,) -> (T, 2*win+1); copy so callers get a writable, contiguous array
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * win + 1).copy()
