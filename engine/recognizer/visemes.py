"""Viseme (lip-shape) classes used to score recognizers: re-exported from :mod:`models.phonemes`.

The table (13 groups after Neti et al. 2000, with the reasons) lives in ``models.phonemes`` - the single source
for every package (``models`` cannot import ``engine``). This module keeps the engine-side names working.
"""

from __future__ import annotations

from models.phonemes import NUM_VISEMES, PHONEME_TO_VISEME, VISEME_GROUPS, VISEME_INDEX, VISEMES, viseme_of, visemes

__all__ = ["NUM_VISEMES", "PHONEME_TO_VISEME", "VISEMES", "VISEME_GROUPS", "VISEME_INDEX", "viseme_of", "visemes"]
