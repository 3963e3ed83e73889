"""Viseme (lip-shape) classes used to score recognizers: 13 groups after Neti et al. (2000).

Why these 13: they are the standard viseme classes of audio-visual speech recognition (C. Neti, G. Potamianos
et al., "Audio-visual speech recognition", JHU CLSP workshop 2000 final report), derived from the visual
confusability of English phonemes - exactly the question "would the mouth look the same?" that matters for a
talking head. Four vowel groups by lip rounding / opening, eight consonant groups by place of articulation
(lips, teeth, alveolar ridge...), and silence. NSN (noise) counts as silence (mouth at rest).

``models.phonemes`` also carries a 15-class lip-sync layout (``VISEMES``/``PHONEME_TO_VISEME``, used by
renderers); the benchmark reports accuracy for both, the 13 groups here being the primary metric.
"""

from __future__ import annotations

import numpy as np

from models.phonemes import NUM_PHONEMES, PHONEME_INDEX, PHONEMES

VISEME_GROUPS: dict[str, tuple[str, ...]] = {
    "V1": ("AO", "AH", "AA", "ER", "OY", "AW", "HH"),  # open / lax vowels (HH takes the vowel's shape)
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


def _table() -> np.ndarray:
    out = np.full(NUM_PHONEMES, -1, dtype=np.int64)
    for v, (_, members) in enumerate(VISEME_GROUPS.items()):
        for p in members:
            out[PHONEME_INDEX[p]] = v
    missing = [PHONEMES[i] for i in np.flatnonzero(out < 0)]
    if missing:  # pragma: no cover - guarded by tests
        raise AssertionError(f"phonemes without a viseme: {missing}")
    return out


PHONEME_TO_VISEME: np.ndarray = _table()
"""``PHONEME_TO_VISEME[phoneme_id]`` = index into :data:`VISEMES` (int64 array of 41)."""


def viseme_of(phoneme: int) -> str:
    return VISEMES[int(PHONEME_TO_VISEME[int(phoneme)])]


def visemes(ids: np.ndarray | list[int]) -> np.ndarray:
    """Map an array of phoneme ids to viseme indices."""
    return PHONEME_TO_VISEME[np.asarray(ids, dtype=np.int64)]
