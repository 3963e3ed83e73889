"""Word route: words (pocketsphinx LM or vosk) -> pronunciations -> phone alignment, with an allphone fallback.

Why: knowing the word gives its dictionary phonemes, which are what the reference labels (and StyleTalk's
training labels) contain - the word route reaches ~64 % frame accuracy against the allphone recognizer's
~50 %. The price is latency: a word is only known once it has ended and the search has stopped revising it.

How (per stream):
1. the audio goes through an :class:`AllphoneRecognizer`, which provides the fallback labels *and* the CI
   senone log-likelihoods of every 10 ms frame (its ``loglik_sink``);
2. a word recognizer runs on the same audio: pocketsphinx's n-gram search (``engine="pocketsphinx"``, the
   wheel's ``en-us`` LM and dictionary) or vosk (``engine="vosk"``, a model directory the user provides).
   Its partial segmentation is read after every chunk; a word becomes *final* once it has stayed unchanged
   for ``settle_ms`` and ended at least ``settle_ms`` ago (or when the utterance ends);
3. a final word's pronunciation (pocketsphinx's CMU dictionary; alternates like ``the(2)`` honoured) is
   force-aligned inside the word's frames by Viterbi over the CI phone HMMs and the stored log-likelihoods;
   silences and fillers become SIL;
4. frame ``t`` is emitted, in order, as soon as the word covering its (offset-compensated) centre is final,
   or at its deadline ``max_lag_ms`` after its end with the allphone label. So ``lag`` is bounded by
   ``max_lag_ms``: a small value gives allphone labels, a large one (the default, 1 s) mostly word labels.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.recognizer.allphone import AllphoneConfig, AllphoneRecognizer
from engine.recognizer.base import PhonemeEvent, Recognizer
from engine.recognizer.phones import sphinx_phone_id
from engine.recognizer.sphinx_model import SphinxModel, default_model_dir
from models.phonemes import SIL

FRAME_SHIFT = 160
WINDOW_CENTRE = 205  # samples from an acoustic frame's start to its window centre (410 / 2)


class WordModelError(ValueError):
    """The word recognizer cannot start (missing vosk model directory, unknown engine...)."""


@functools.lru_cache(maxsize=2)
def load_dictionary(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """The CMU pronouncing dictionary shipped with pocketsphinx: ``word`` / ``word(2)`` -> phones."""
    p = Path(path) if path else default_model_dir() / "cmudict-en-us.dict"
    out: dict[str, tuple[str, ...]] = {}
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0].lower()] = tuple(parts[1:])
    return out


@dataclass(frozen=True)
class Word:
    """A word (or filler) of the word recognizer, acoustic frames ``start..end`` inclusive (10 ms)."""

    text: str
    start: int
    end: int


def is_filler(text: str) -> bool:
    t = text.lower()
    return t.startswith(("<", "[", "+")) or t in {"sil", "<sil>"}


def align_phones(loglik: np.ndarray, phones: list[int], model: SphinxModel) -> np.ndarray:
    """Viterbi alignment of a phone sequence (model phone indices) to ``loglik`` (n, n_phone, 3).

    Left-to-right through 3 states per phone, every state at least one frame; returns the phone index per
    frame. A span shorter than ``3 * len(phones)`` frames is split evenly (too short to align).
    """
    n = loglik.shape[0]
    if n == 0 or not phones:
        return np.zeros(n, dtype=np.int64)
    states = np.array([(p, j) for p in phones for j in range(3)])
    if n < len(states):
        return np.array([phones[min(len(phones) - 1, f * len(phones) // n)] for f in range(n)], dtype=np.int64)
    emis = loglik[:, states[:, 0], states[:, 1]]  # (n, S)
    stay = model.transitions[states[:, 0], states[:, 1], 0]
    nxt = model.transitions[states[:, 0], states[:, 1], 1]
    s_count = len(states)
    neg = -1e30
    score = np.full(s_count, neg)
    score[0] = emis[0, 0]
    moved = np.zeros((n, s_count), dtype=bool)
    for t in range(1, n):
        st = score + stay
        adv = np.concatenate([[neg], score[:-1] + nxt[:-1]])
        moved[t] = adv > st
        score = np.maximum(st, adv) + emis[t]
    out = np.empty(n, dtype=np.int64)
    s = s_count - 1
    for t in range(n - 1, -1, -1):
        out[t] = states[s, 0]
        if moved[t, s]:
            s -= 1
    return out


class _SphinxWords:
    """pocketsphinx n-gram search read through partial segmentations."""

    MAX_UTTERANCE_FRAMES = 6000  # restart the search (at a silence if possible) to bound time and memory

    def __init__(self, options: dict[str, Any]) -> None:
        import pocketsphinx

        self._ps = pocketsphinx
        self.options = {"fwdflat": False, "bestpath": False, "loglevel": "FATAL", **options}
        self._dec = pocketsphinx.Decoder(**self.options)
        self._dec.start_utt()
        self.utt_start = 0  # acoustic frame (stream) of the utterance start
        self.samples = 0

    def lookup(self, word: str) -> tuple[str, ...] | None:
        pron = self._dec.lookup_word(word)
        return tuple(pron.split()) if pron else None

    def feed(self, pcm: np.ndarray) -> None:
        self._dec.process_raw(pcm.tobytes())
        self.samples += pcm.size

    def frames(self) -> int:
        return self.utt_start + self._dec.n_frames()

    def partial(self) -> list[Word]:
        off = self.utt_start
        return [Word(s.word, s.start_frame + off, s.end_frame + off) for s in self._dec.seg() or []]

    def maybe_restart(self, words: list[Word]) -> list[Word] | None:
        """Restart the search during a silence once the utterance is long; returns its final words."""
        if self._dec.n_frames() < self.MAX_UTTERANCE_FRAMES // 4 or self.samples % FRAME_SHIFT:
            return None
        in_silence = bool(words) and is_filler(words[-1].text) and words[-1].end - words[-1].start >= 30
        if not in_silence and self._dec.n_frames() < self.MAX_UTTERANCE_FRAMES:
            return None
        final = self.finish()
        self._dec.start_utt()
        self.utt_start = self.samples // FRAME_SHIFT
        return final

    def finish(self) -> list[Word]:
        self._dec.end_utt()
        return self.partial()


class _VoskWords:
    """vosk recognizer: final results at its endpoints, partial words (with times) in between."""

    def __init__(self, model_dir: str, sample_rate: int) -> None:
        if not model_dir or not Path(model_dir).is_dir():
            raise WordModelError(f"vosk model directory {model_dir!r} not found (download one from "
                                 "https://alphacephei.com/vosk/models and pass its path)")
        try:
            import vosk
        except ImportError as exc:  # pragma: no cover - vosk is a dependency
            raise WordModelError("the vosk package is not installed") from exc
        vosk.SetLogLevel(-1)
        try:
            self._model = vosk.Model(str(model_dir))
        except Exception as exc:  # noqa: BLE001 - vosk raises a bare Exception
            raise WordModelError(f"vosk could not load the model in {model_dir}: {exc}") from None
        self._rate = sample_rate
        self._new()
        self.samples = 0
        self._final: list[Word] = []
        self._partial: list[Word] = []

    def _new(self) -> None:
        import vosk

        self._rec = vosk.KaldiRecognizer(self._model, self._rate)
        self._rec.SetWords(True)
        if hasattr(self._rec, "SetPartialWords"):
            self._rec.SetPartialWords(True)

    @staticmethod
    def _words(items: list[dict[str, Any]]) -> list[Word]:
        return [Word(w["word"], int(round(w["start"] * 100)), max(int(round(w["start"] * 100)),
                                                                  int(round(w["end"] * 100)) - 1))
                for w in items if "start" in w]

    def lookup(self, word: str) -> tuple[str, ...] | None:
        return load_dictionary().get(word.lower())

    def feed(self, pcm: np.ndarray) -> None:
        self.samples += pcm.size
        if self._rec.AcceptWaveform(pcm.tobytes()):
            self._final += self._words(json.loads(self._rec.Result()).get("result", []))
            self._partial = []
        else:
            self._partial = self._words(json.loads(self._rec.PartialResult()).get("partial_result", []))

    def frames(self) -> int:
        return self.samples // FRAME_SHIFT

    def partial(self) -> list[Word]:
        return self._final + self._partial

    def maybe_restart(self, words: list[Word]) -> list[Word] | None:
        if self._final:  # vosk's own endpoint: these words are final
            final, self._final = self._final, []
            return final
        return None

    def finish(self) -> list[Word]:
        words = self._final + self._words(json.loads(self._rec.FinalResult()).get("result", []))
        self._final, self._partial = [], []
        self._new()
        return words


@dataclass(frozen=True)
class WordConfig:
    """Settings of :class:`WordRecognizer`."""

    engine: str = "pocketsphinx"  # pocketsphinx | vosk
    model: str | None = None  # vosk model directory (engine "vosk")
    max_lag_ms: int = 1000  # deadline after a frame's end; then the allphone label is used
    settle_ms: int = 100  # a partial word is final once unchanged and ended this long
    offset_ms: float = -40.0  # word-route labels sit ~40 ms late against the reference, like pocketsphinx's
    sphinx: dict[str, Any] = field(default_factory=dict)  # extra pocketsphinx options (lm=, dict=, beam=...)
    allphone: AllphoneConfig = field(default_factory=AllphoneConfig)

    def __post_init__(self) -> None:
        if self.engine not in ("pocketsphinx", "vosk"):
            raise WordModelError(f"engine must be pocketsphinx or vosk, got {self.engine!r}")
        if self.engine == "vosk" and not self.model:
            raise WordModelError("the vosk engine needs model=<vosk model directory>")
        if self.max_lag_ms < 0 or self.settle_ms < 0:
            raise ValueError("max_lag_ms and settle_ms must be >= 0")


class WordRecognizer(Recognizer):
    """The word route (backends ``words`` and ``vosk``). See the module docstring."""

    def __init__(self, config: WordConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is None:
            ap = options.pop("allphone", None)
            if isinstance(ap, dict):
                options["allphone"] = AllphoneConfig(**ap)
            elif ap is not None:
                options["allphone"] = ap
            config = WordConfig(**options)
        self.config = config
        self._ap = AllphoneRecognizer(config.allphone)
        self._ap.loglik_sink = self._on_loglik
        self.model = self._ap.model
        self._vosk_dir = config.model
        self._words_src: _SphinxWords | _VoskWords | None = None
        self._reset_stream()
        self.stats.extra.update({"word_frames": 0, "fallback_frames": 0, "words": 0, "oov": 0, "restarts": 0})

    # ------------------------------------------------------------------ stream state
    def _new_source(self) -> _SphinxWords | _VoskWords:
        if self.config.engine == "vosk":
            return _VoskWords(str(self._vosk_dir), self.sample_rate)
        return _SphinxWords(dict(self.config.sphinx))

    def _reset_stream(self) -> None:
        if self._stream_samples or self._words_src is None:
            self._words_src = self._new_source()
        self._ll: list[np.ndarray] = []  # senone log-likelihood blocks of acoustic frames [_ll_first, ...)
        self._ll_first = 0
        self._ll_count = 0
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}  # (word, start) -> (end, frames when seen)
        self._decided_until = 0  # acoustic frames before this are decided (final word or given up)
        self._word_lab: dict[int, int] = {}  # acoustic frame -> phoneme id from a final word
        self._ap_lab: dict[int, int] = {}  # stream frame -> allphone label
        self._t_next = 0  # next stream frame to emit
        self._quiet: set[int] = set()  # acoustic frames of digital silence

    def _lag_seconds(self) -> float:
        return max(self.config.max_lag_ms / 1000.0, self._ap.lag)

    def _on_loglik(self, first: int, ll: np.ndarray, quiet: np.ndarray) -> None:
        if first != self._ll_first + self._ll_count:  # a new stream of the inner recognizer
            self._ll, self._ll_first, self._ll_count = [], first, 0
        self._ll.append(ll)
        self._ll_count += ll.shape[0]
        for k in np.flatnonzero(quiet):  # digital silence is SIL whatever word the search put there
            self._quiet.add(first + int(k))

    def _loglik(self, start: int, end: int) -> np.ndarray:
        """Stored log-likelihoods of acoustic frames ``start..end`` (clipped to what exists)."""
        if not self._ll:
            return np.zeros((0, self.model.n_phones, 3))
        allll = np.concatenate(self._ll) if len(self._ll) > 1 else self._ll[0]
        self._ll = [allll]
        a = max(start - self._ll_first, 0)
        b = min(end + 1 - self._ll_first, allll.shape[0])
        return allll[a:b]

    def _trim_loglik(self, before: int) -> None:
        if not self._ll or before <= self._ll_first:
            return
        allll = np.concatenate(self._ll)
        cut = min(before - self._ll_first, allll.shape[0])
        self._ll = [allll[cut:]]
        self._ll_first += cut
        self._ll_count = allll.shape[0] - cut

    # ------------------------------------------------------------------ words -> labels
    def _accept(self, word: Word) -> None:
        """Label the frames of a final word (or filler)."""
        start = max(word.start, self._decided_until)
        if word.end < start:
            return
        text = word.text
        ids: np.ndarray
        if is_filler(text):
            ids = np.full(word.end - start + 1, SIL, dtype=np.int64)
        else:
            src = self._words_src
            pron = src.lookup(text) if src is not None else None
            if not pron:
                self.stats.extra["oov"] += 1
                self._decided_until = word.end + 1  # leave its frames to the allphone fallback
                return
            phones = [self.model.phones.index(p) for p in pron if p in self.model.phones]
            ll = self._loglik(start, word.end)
            if ll.shape[0] < word.end - start + 1:
                return  # scores not there yet (cannot happen with pocketsphinx's own timing)
            idx = align_phones(ll, phones, self.model)
            ids = np.array([sphinx_phone_id(self.model.phones[i]) for i in idx], dtype=np.int64)
            self.stats.extra["words"] += 1
        for k, p in enumerate(ids):
            self._word_lab[start + k] = SIL if start + k in self._quiet else int(p)
        self._decided_until = word.end + 1

    def _update_words(self, final_words: list[Word] | None = None) -> None:
        src = self._words_src
        assert src is not None
        n = src.frames()
        settle = self.config.settle_ms // 10
        if final_words is not None:
            for w in sorted(final_words, key=lambda w: w.start):
                if w.end >= self._decided_until:
                    self._accept(w)
            self._seen.clear()
            return
        words = src.partial()
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for w in words:
            prev = self._seen.get((w.text, w.start))
            since = prev[1] if prev is not None and prev[0] == w.end else n
            seen[(w.text, w.start)] = (w.end, since)
        self._seen = seen
        for w in sorted(words, key=lambda w: w.start):
            if w.end < self._decided_until:
                continue
            end, since = seen[(w.text, w.start)]
            if n - since >= settle and end <= n - settle:
                self._accept(w)
            else:
                break  # words are final in time order
        restarted = src.maybe_restart(words)
        if restarted is not None:
            self.stats.extra["restarts"] += 1
            self._update_words(restarted)

    # ------------------------------------------------------------------ emission
    def _read_frame(self, t: int) -> int:
        centre = (t + 0.5) * self.sample_rate / self.fps + self.config.offset_ms * self.sample_rate / 1000
        return max(0, math.floor((centre - WINDOW_CENTRE) / FRAME_SHIFT + 0.5))

    def _emit(self, final: bool) -> list[PhonemeEvent]:
        events = []
        t = self._t_next  # not _stream_next: several internal steps may emit before the base class sees them
        limit = self.frames_with_centre(self._stream_samples) if final else None
        deadline_samples = self.config.max_lag_ms * self.sample_rate // 1000
        while limit is None or t < limit:
            k = self._read_frame(t)
            if k in self._word_lab:
                events.append(self._event(t, self._word_lab[k]))
                self.stats.extra["word_frames"] += 1
            elif t in self._ap_lab and (
                final
                or k < self._decided_until
                or self._stream_samples >= self.tb.frame_end_sample(t) + deadline_samples
            ):
                events.append(self._event(t, self._ap_lab[t]))
                self.stats.extra["fallback_frames"] += 1
            elif final:
                events.append(self._event(t, self._ap_lab.get(t, SIL)))
            else:
                break
            self._ap_lab.pop(t, None)
            t += 1
        self._t_next = t
        if events:
            k_next = self._read_frame(t) - 2
            for k in [k for k in self._word_lab if k < k_next]:
                del self._word_lab[k]
            self._quiet = {k for k in self._quiet if k >= k_next}
            self._trim_loglik(min(k_next, self._decided_until) - 10)
        return events

    STEP = 320  # samples per internal step: long feeds are cut so word finality does not depend on chunking

    def _feed(self, pcm: np.ndarray) -> list[PhonemeEvent]:
        if pcm.size <= self.STEP:
            return self._step(pcm)
        events: list[PhonemeEvent] = []
        for i in range(0, pcm.size, self.STEP):
            # the base class counted the whole chunk already; expose only what this step has seen
            done = pcm.size - i - min(self.STEP, pcm.size - i)
            self._stream_samples -= done
            events += self._step(pcm[i : i + self.STEP])
            self._stream_samples += done
        return events

    def _step(self, pcm: np.ndarray) -> list[PhonemeEvent]:
        ap_events = self._ap.feed(pcm)
        first = self._ap._stream_first_frame  # read after feed: a new stream may have started
        for ev in ap_events:
            self._ap_lab[ev.frame - first] = ev.phoneme
        assert self._words_src is not None
        self._words_src.feed(pcm)
        self._update_words()
        return self._emit(final=False)

    def _flush(self) -> list[PhonemeEvent]:
        first = self._ap._stream_first_frame
        for ev in self._ap.flush():
            self._ap_lab[ev.frame - first] = ev.phoneme
        assert self._words_src is not None
        self._update_words(self._words_src.finish())
        events = self._emit(final=True)
        self._words_src = None
        return events
