"""Online phoneme recognition: 16 kHz mono PCM in, stable 30 fps ``(frame, phoneme)`` events out (sans-I/O).

Use :func:`make_recognizer` (``"allphone"`` default, ``"words"``, ``"vosk"``, ``"labels"``,
``"allphone-viterbi"``, ``"auto"``); every backend implements :class:`Recognizer`:
``feed(pcm) -> list[PhonemeEvent]``, ``flush() -> list[PhonemeEvent]``, ``lag`` (seconds).
Audio of any rate/channel layout/dtype is normalised at the edge by :class:`AudioNormalizer`
(``engine.sources``, re-exported here lazily: the recognizer package itself is I/O-free - importing it loads
neither asyncio nor PyAV; only touching ``AudioNormalizer``/``AudioFormatError`` imports ``engine.sources``).
Scoring helpers: :mod:`engine.recognizer.visemes`; the allphone label rescorer:
:mod:`engine.recognizer.rescorer` (refit with ``python -m engine.recognizer.fit_rescorer``).
"""

from __future__ import annotations

from engine.recognizer.base import AudioInputError, PhonemeEvent, Recognizer, RecognizerStats, coerce_pcm16
from engine.recognizer.factory import BACKENDS, RecognizerConfigError, choose_backend, make_recognizer

_FROM_SOURCES = ("AudioFormatError", "AudioNormalizer")


def __getattr__(name: str) -> object:  # PEP 562: the edge's normaliser without importing I/O at package import
    if name in _FROM_SOURCES:
        import engine.sources

        return getattr(engine.sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "AudioFormatError",
    "AudioInputError",
    "AudioNormalizer",
    "PhonemeEvent",
    "Recognizer",
    "RecognizerConfigError",
    "RecognizerStats",
    "choose_backend",
    "coerce_pcm16",
    "make_recognizer",
]
