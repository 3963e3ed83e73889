"""``make_recognizer(backend, **options)`` and the latency/accuracy choice of backend.

Backends (names as in ``engine.config.RECOGNIZER_BACKENDS`` plus aliases):

| name | class | lag | notes |
|---|---|---|---|
| ``allphone`` (default; alias ``pocketsphinx``) | :class:`AllphoneRecognizer` | 66 ms, fixed | posteriors + rescorer |
| ``allphone-viterbi`` | :class:`ViterbiAllphoneRecognizer` | ~0.12 s | pocketsphinx 1-best (baseline) |
| ``words`` | :class:`WordRecognizer` (pocketsphinx LM) | up to ``max_lag_ms`` | word route |
| ``vosk`` | :class:`WordRecognizer` (vosk; needs ``model=<dir>``) | up to ``max_lag_ms`` | word route |
| ``labels`` | :class:`LabelsRecognizer` (needs ``labels=<file>``) | 0 | reference labels |
| ``auto`` | by ``max_lag_ms``: <= 250 ms -> allphone, else words | | |
"""

from __future__ import annotations

from typing import Any

from engine.recognizer.base import Recognizer

BACKENDS = ("allphone", "allphone-viterbi", "words", "vosk", "labels", "auto")
ALIASES = {"pocketsphinx": "allphone", "default": "allphone", "viterbi": "allphone-viterbi"}
AUTO_WORDS_MIN_LAG_MS = 250.0  # below this the word route can label only a few frames in time


class RecognizerConfigError(ValueError):
    """Unknown backend or options that do not fit it."""


def choose_backend(max_lag_ms: float | None, vosk_model: str | None = None) -> str:
    """The engine's latency/accuracy choice: the allphone recognizer unless the caller allows a lag long
    enough for the word route to finish most words (it then refines the allphone labels it can)."""
    if max_lag_ms is None or max_lag_ms < AUTO_WORDS_MIN_LAG_MS:
        return "allphone"
    return "vosk" if vosk_model else "words"


def make_recognizer(backend: str = "allphone", **options: Any) -> Recognizer:
    """Build a recognizer by backend name. Options are the backend config's fields (see each class).

    ``labels`` backend: ``labels=<path or id list>``; ``vosk``: ``model=<vosk model dir>``;
    ``auto``: ``max_lag_ms=...`` (and optionally ``model=`` for vosk).
    """
    name = ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise RecognizerConfigError(f"unknown recognizer backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if name == "auto":
        max_lag = options.pop("max_lag_ms", None)
        name = choose_backend(max_lag, options.get("model"))
        if name != "allphone" and max_lag is not None:
            options["max_lag_ms"] = max_lag
        if name == "allphone":
            options.pop("model", None)
    try:
        if name == "allphone":
            from engine.recognizer.allphone import AllphoneRecognizer

            return AllphoneRecognizer(**options)
        if name == "allphone-viterbi":
            from engine.recognizer.allphone import ViterbiAllphoneRecognizer

            return ViterbiAllphoneRecognizer(**options)
        if name == "labels":
            from engine.recognizer.labels import LabelsRecognizer

            if "labels" not in options or options["labels"] is None:
                raise RecognizerConfigError("the labels backend needs labels=<*_seq.json path or id list>")
            return LabelsRecognizer(options.pop("labels"), **options)
        from engine.recognizer.words import WordRecognizer

        if name == "vosk":
            if not options.get("model"):
                raise RecognizerConfigError("the vosk backend needs model=<vosk model directory>")
            return WordRecognizer(engine="vosk", **options)
        return WordRecognizer(engine="pocketsphinx", **options)
    except TypeError as exc:  # unknown option names
        raise RecognizerConfigError(f"bad options for recognizer {name!r}: {exc}") from None
