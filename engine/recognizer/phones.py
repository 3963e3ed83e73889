"""Mapping of pocketsphinx phone names onto the 41 StyleTalk phoneme classes (``models.phonemes``).

The CMU acoustic model has the 39 ARPAbet phones plus SIL and two fillers: ``+NSN+`` (noise) and ``+SPN+``
(spoken noise: breath, lip smack, hesitation). Both fillers map to SIL: the reference labels never use NSN,
and the mouth is at rest (or does something a phoneme class cannot describe) during noises.
"""

from __future__ import annotations

import numpy as np

from models.phonemes import PHONEME_INDEX, SIL

FILLER_TO_PHONEME: dict[str, int] = {"+NSN+": SIL, "+SPN+": SIL, "<sil>": SIL, "<s>": SIL, "</s>": SIL}


def sphinx_phone_id(name: str) -> int:
    """Phoneme id of a pocketsphinx phone or filler name (unknown names -> SIL)."""
    n = name.strip()
    if n in FILLER_TO_PHONEME:
        return FILLER_TO_PHONEME[n]
    n = n.upper().rstrip("012")  # lexical stress digits, if any
    return PHONEME_INDEX.get(n, SIL)


def phone_map(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """ids for a list of model phone names (int64 array)."""
    return np.array([sphinx_phone_id(n) for n in names], dtype=np.int64)
