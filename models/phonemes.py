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

# Viseme classes (mouth shapes) in the common 15-class layout used by lip-sync tools. Not used by StyleTalk
# itself (it sees phonemes); useful for evaluation (viseme accuracy is more forgiving than phoneme accuracy)
# and for renderers or fallbacks that only need a coarse mouth shape.
VISEMES: tuple[str, ...] = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou",
)  # fmt: skip
_VISEME_GROUPS: dict[str, tuple[str, ...]] = {
    # HH is an aspiration whose mouth shape is carried over from its neighbours: treat it as rest.
    "sil": ("SIL", "NSN", "HH"),
    "PP": ("P", "B", "M"),
    "FF": ("F", "V"),
    "TH": ("TH", "DH"),
    "DD": ("T", "D"),
    "kk": ("K", "G", "NG"),
    "CH": ("CH", "JH", "SH", "ZH"),
    "SS": ("S", "Z"),
    "nn": ("N", "L"),
    "RR": ("R", "ER"),
    "aa": ("AA", "AE", "AH", "AY", "AW"),
    "E": ("EH", "EY"),
    "ih": ("IH", "IY", "Y"),
    "oh": ("AO", "OW", "OY"),
    "ou": ("UH", "UW", "W"),
}
PHONEME_TO_VISEME: tuple[int, ...] = tuple(
    next(VISEMES.index(v) for v, members in _VISEME_GROUPS.items() if name in members) for name in PHONEMES
)
"""``PHONEME_TO_VISEME[phoneme_id]`` = index into ``VISEMES``."""


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
