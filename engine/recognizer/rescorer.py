"""Learned label decision on top of the allphone posteriors: a soft confusion map plus a viseme-first rule.

Why a confusion map and not a bigger learned layer: the only labelled audio is the 8 shared clips (4 speakers,
4560 frames), which are also the evaluation set. Measured with leave-one-speaker-out cross-validation,
multinomial logistic regression over a window of log posteriors (and/or CI senone scores) *lost* 1-4 points
against the plain posterior argmax - it learns the training speakers, not the recognizer. What does carry over
to an unseen speaker is the recognizer's systematic disagreement with the reference labelling convention
(e.g. the reference's reduced vowels), which a 41 x 41 matrix captures:

    M[i, j] = sum_t p_t(i) [ref_t = j] / sum_t p_t(i)      (soft confusion counts, row-normalised)
    q_t     = p_t @ ((1 - beta) I + beta M)               (beta = 0.6: shrink toward the identity)

``q_t`` estimates P(reference label | audio). The decision is viseme-first (``rule="viseme"``): the viseme
with the largest summed ``q`` mass, then the best phoneme inside it - viseme accuracy is what the mouth shows,
and this rule buys ~+0.3 viseme points at no frame cost. Per frame it is one 41 x 41 product: free next to
the acoustic scoring, and it does not change the lag (same posterior, same read point).

The matrix is fitted by ``python -m engine.recognizer.fit_rescorer`` (deterministic, about a minute) and
shipped as ``assets/rescorer.npz``; its data card ``assets/rescorer.md`` has the source and the CV figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.phonemes import NUM_PHONEMES, NUM_VISEMES, PHONEME_TO_VISEME

ASSET_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_RESCORER = ASSET_DIR / "rescorer.npz"
RULES = ("phone", "viseme")
FORMAT_VERSION = 1


class RescorerFormatError(ValueError):
    """A rescorer file that is not what :func:`load_rescorer` expects."""


def _viseme_matrix() -> np.ndarray:
    vm = np.zeros((NUM_PHONEMES, NUM_VISEMES))
    vm[np.arange(NUM_PHONEMES), PHONEME_TO_VISEME] = 1.0
    return vm


@dataclass(frozen=True)
class ConfusionRescorer:
    """``labels(p)``: phoneme ids for rows of phoneme posteriors ``p`` (n, 41). See the module docstring."""

    confusion: np.ndarray  # (41, 41) row-stochastic soft confusion counts M (not yet blended)
    beta: float = 0.6
    rule: str = "viseme"

    def __post_init__(self) -> None:
        m = np.asarray(self.confusion, dtype=np.float64)
        if m.shape != (NUM_PHONEMES, NUM_PHONEMES) or not np.all(np.isfinite(m)) or (m < 0).any():
            raise RescorerFormatError(f"confusion must be a finite non-negative (41, 41) matrix, got {m.shape}")
        if not 0.0 <= self.beta <= 1.0:
            raise RescorerFormatError(f"beta must be in [0, 1], got {self.beta}")
        if self.rule not in RULES:
            raise RescorerFormatError(f"rule must be one of {RULES}, got {self.rule!r}")
        mix = (1.0 - self.beta) * np.eye(NUM_PHONEMES) + self.beta * m
        object.__setattr__(self, "_mix", mix)
        object.__setattr__(self, "_vm", _viseme_matrix())

    @classmethod
    def identity(cls, rule: str = "phone") -> ConfusionRescorer:
        """No learned correction (``rule="phone"`` = the plain posterior argmax)."""
        return cls(np.eye(NUM_PHONEMES), beta=0.0, rule=rule)

    def scores(self, post: np.ndarray) -> np.ndarray:
        """Estimated P(reference phoneme) per row: ``post @ ((1 - beta) I + beta M)``."""
        return np.asarray(post, dtype=np.float64) @ self._mix  # type: ignore[attr-defined]

    def labels(self, post: np.ndarray) -> np.ndarray:
        """Phoneme ids (int64) for posteriors ``post`` of shape (n, 41) (or (41,) -> shape ())."""
        q = self.scores(post)
        if self.rule == "phone":
            return np.argmax(q, axis=-1)
        best_vis = np.argmax(q @ self._vm, axis=-1)  # type: ignore[attr-defined]
        inside = PHONEME_TO_VISEME == np.expand_dims(best_vis, -1)
        return np.argmax(np.where(inside, q, -1.0), axis=-1)

    def save(self, path: Path, **meta: object) -> None:
        """Write the npz asset (``meta`` values are stored as strings, e.g. provenance)."""
        np.savez_compressed(
            path, version=np.array(FORMAT_VERSION), confusion=self.confusion.astype(np.float32),
            beta=np.array(self.beta), rule=np.array(self.rule),
            **{f"meta_{k}": np.array(str(v)) for k, v in meta.items()},  # type: ignore[arg-type]  # numpy stubs
        )


def load_rescorer(path: str | Path | None = None) -> ConfusionRescorer:
    """Load a rescorer npz (default: the committed ``assets/rescorer.npz``)."""
    p = Path(path) if path is not None else DEFAULT_RESCORER
    if not p.is_file():
        raise FileNotFoundError(f"rescorer asset {p} not found (rebuild: python -m engine.recognizer.fit_rescorer)")
    with np.load(p, allow_pickle=False) as z:
        try:
            version = int(z["version"])
            if version != FORMAT_VERSION:
                raise RescorerFormatError(f"{p}: format version {version}, expected {FORMAT_VERSION}")
            return ConfusionRescorer(z["confusion"].astype(np.float64), beta=float(z["beta"]), rule=str(z["rule"]))
        except KeyError as exc:
            raise RescorerFormatError(f"{p}: missing {exc}") from None
