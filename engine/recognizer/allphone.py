"""Allphone recognizers on the pocketsphinx ``en-us`` model: the posterior one (default) and the Viterbi baseline.

:class:`AllphoneRecognizer` (backend ``"allphone"``, the default): our Sphinx-compatible front end, the model's
CI senones and a fixed-lag forward-backward over the phone loop with pocketsphinx's phone bigram
(:mod:`engine.recognizer.phone_loop`). Frame ``t``'s label is the argmax of the phone posterior interpolated at
the frame centre shifted by ``offset_ms`` (phone posteriors of this model peak ~30 ms late against the
reference labels - a systematic offset, compensated here, which also shortens the lag), passed through the
learned confusion map and viseme-first decision of :mod:`engine.recognizer.rescorer` (``rescorer="default"``;
``None`` = plain posterior argmax). A label is emitted
as soon as the posterior has ``lookahead_ms`` of future audio, and is final: the lag is a constant known in
advance (:attr:`lag`), 66 ms with the defaults (lookahead 60 ms).

:class:`ViterbiAllphoneRecognizer` (backend ``"allphone-viterbi"``): pocketsphinx's own allphone search
(1-best path, ``lw=1``, ``beam=pbeam=1e-20``), streaming by reading the partial segmentation after every
chunk; a label is taken once its frame is ``stable_ms`` behind the decoder's newest frame (the 1-best path
rarely changes further back). Kept as the baseline the posterior decoder is measured against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from engine.recognizer.base import PhonemeEvent, Recognizer
from engine.recognizer.frontend import DEFAULT_CMN_PRIOR, SphinxFrontEnd
from engine.recognizer.phone_loop import PhoneLoop, PhoneLoopParams
from engine.recognizer.phones import phone_map, sphinx_phone_id
from engine.recognizer.rescorer import ConfusionRescorer, load_rescorer
from engine.recognizer.sphinx_model import SenoneScorer, default_model_dir, load_sphinx_model
from models.phonemes import NUM_PHONEMES, SIL

FRAME_SHIFT = 160  # acoustic frame shift (samples, 10 ms)


@dataclass(frozen=True)
class AllphoneConfig:
    """Settings of :class:`AllphoneRecognizer`.

    Tuned on the shared samples with three knobs only - ``ascale`` (0.2-1.0 tried), ``offset_ms`` (-50..-10)
    and ``lookahead_ms`` (the latency/accuracy trade-off); the rest are the model's or pocketsphinx's values.
    """

    # future audio each posterior uses (multiple of 10 ms). 60: with the rescorer as accurate as 120 was without
    # it (leave-one-speaker-out 50.7 / 59.7 % frame / viseme vs 50.5 / 59.3 %), for half the lag (README.md)
    lookahead_ms: int = 60
    offset_ms: float = -30.0  # read the posterior this much before the frame centre
    ascale: float = 0.3
    lw: float = 1.0
    insertion: float = 0.0
    topn: int = 0  # Gaussians per codebook mixed per senone (0 = all 128; Sphinx decodes with 4)
    remove_noise: bool | None = None  # None = as the model's feat.params (yes)
    cmn_prior: tuple[float, ...] = DEFAULT_CMN_PRIOR
    cmn_prior_frames: float = 100.0
    silence_rms: float = 2.0  # frames quieter than this (int16 units) are silence whatever the models say
    model_dir: str | None = None
    # label decision: "default" = the committed confusion-map rescorer (assets/rescorer.npz), a path to
    # another one, or None / "none" = argmax of the posterior (the pre-rescorer behaviour)
    rescorer: str | None = "default"

    def __post_init__(self) -> None:
        if self.lookahead_ms < 0 or self.lookahead_ms % 10:
            raise ValueError(f"lookahead_ms must be a non-negative multiple of 10, got {self.lookahead_ms}")
        if not 0 < self.ascale <= 5:
            raise ValueError(f"ascale must be in (0, 5], got {self.ascale}")
        if len(self.cmn_prior) != 13:
            raise ValueError("cmn_prior needs 13 cepstral values")


class AllphoneRecognizer(Recognizer):
    """Streaming phone-posterior recognizer (default backend). See the module docstring."""

    def __init__(self, config: AllphoneConfig | None = None, **options: object) -> None:
        super().__init__()
        if config is None:
            config = AllphoneConfig(**options)  # type: ignore[arg-type]
        elif options:
            raise TypeError("pass either config or keyword options")
        self.config = config
        model = load_sphinx_model(config.model_dir)
        self.model = model
        self.frontend = SphinxFrontEnd(
            model.frontend, cmn_prior=config.cmn_prior, cmn_prior_frames=config.cmn_prior_frames,
            remove_noise=config.remove_noise,
        )
        self.scorer = SenoneScorer(model, topn=config.topn)
        params = PhoneLoopParams(
            ascale=config.ascale, lw=config.lw, insertion=config.insertion, lookahead=config.lookahead_ms // 10
        )
        self.loop = PhoneLoop(model, params)
        # (n_model_phones, 41) 0/1 matrix summing model-phone posteriors into phoneme classes
        ids = phone_map(model.phones)
        self._collapse = np.zeros((model.n_phones, NUM_PHONEMES))
        self._collapse[np.arange(model.n_phones), ids] = 1.0
        self._half_window = Fraction(int(round(model.frontend.window_length * model.frontend.sample_rate)), 2)
        self._affine = self._read_affine()
        self.rescorer: ConfusionRescorer | None = None
        if config.rescorer not in (None, "none"):
            self.rescorer = load_rescorer(None if config.rescorer == "default" else config.rescorer)
        # optional observer of the (41,) phoneme posterior each label is decided from: (stream frame, posterior);
        # the rescorer's fitting script collects its training data with it
        self.posterior_sink: Callable[[int, np.ndarray], None] | None = None
        # optional observer of the senone scores: (first acoustic frame of the stream, (n, phones, 3) loglik,
        # (n,) bool "digital silence"); the word route aligns pronunciations with them (no second acoustic pass)
        self.loglik_sink: Callable[[int, np.ndarray, np.ndarray], None] | None = None
        self._reset_stream()

    # ------------------------------------------------------------------ timing
    def _read_position(self, t: int) -> Fraction:
        """Acoustic-frame coordinate (may be fractional or negative) where frame ``t``'s label is read."""
        (a, b), d = self._affine
        return Fraction(a + b * t, d)

    def _read_floor(self, t: int) -> int:
        (a, b), d = self._affine
        return (a + b * t) // d

    def _read_affine(self) -> tuple[tuple[int, int], int]:
        """The read position x(t) = (a + b t) / d in integers: exact, and cheap in the per-frame loop."""
        centre0 = Fraction(self.sample_rate, 2 * self.fps)  # frame 0 centre (samples)
        step = Fraction(self.sample_rate, self.fps)
        offset = Fraction(self.config.offset_ms).limit_denominator(1000) * self.sample_rate / 1000
        a = (centre0 + offset - self._half_window) / FRAME_SHIFT
        b = step / FRAME_SHIFT
        d = math.lcm(a.denominator, b.denominator)
        return (int(a * d), int(b * d)), d

    def _needed_frame(self, t: int) -> int:
        """Last acoustic frame whose posterior frame ``t`` needs."""
        return max(0, self._read_floor(t) + 1)

    def _lag_seconds(self) -> float:
        # posterior k is final once features k+L exist; features k need cepstra k+3 -> samples 160(k+3)+410
        look = self.config.lookahead_ms // 10
        worst = Fraction(0)
        for t in range(0, 33):  # the pattern repeats every 3 frames (100 ms = 10 acoustic frames)
            if self._read_floor(t) < 0:
                continue  # labelled SIL at once
            k = self._needed_frame(t)
            needed = FRAME_SHIFT * (k + look + 3) + 2 * self._half_window
            end = Fraction((t + 1) * self.sample_rate, self.fps)
            worst = max(worst, needed - end)
        return float(worst / self.sample_rate)

    # ------------------------------------------------------------------ streaming
    def _reset_stream(self) -> None:
        self.frontend.reset(keep_cmn=True)
        self.loop.reset()
        self._n_acoustic = 0  # acoustic frames scored in this stream
        self._post = np.zeros((0, NUM_PHONEMES))  # phoneme posteriors of acoustic frames [_post_first, ...)
        self._post_first = 0

    def _append_posteriors(self, first: int, post: np.ndarray) -> None:
        if post.shape[0] == 0:
            return
        assert first == self._post_first + self._post.shape[0]
        self._post = np.concatenate([self._post, post @ self._collapse])

    def _label(self, t: int, n_avail: int) -> int:
        x = self._read_position(t)
        if x < 0 or n_avail == 0:  # read point before the stream's first acoustic frame: nothing said yet
            return SIL
        k0 = math.floor(x)
        w = float(x - k0)
        last = n_avail - 1
        a = min(max(k0, 0), last)
        b = min(max(k0 + 1, 0), last)
        p = (1 - w) * self._post[a - self._post_first] + w * self._post[b - self._post_first]
        if self.posterior_sink is not None:
            self.posterior_sink(t, p)
        if self.rescorer is None:
            return int(np.argmax(p))
        return int(self.rescorer.labels(p))

    def _emit(self, n_frames_limit: int | None) -> list[PhonemeEvent]:
        n_avail = self._post_first + self._post.shape[0]
        events = []
        t = self._stream_next
        while True:
            if n_frames_limit is not None:
                if t >= n_frames_limit:
                    break
            elif self._read_floor(t) < 0:  # labelled SIL, once its centre has been fed
                if t >= self.frames_with_centre(self._stream_samples):
                    break
            elif n_avail == 0 or self._needed_frame(t) >= n_avail:
                break
            events.append(self._event(t, self._label(t, n_avail)))
            t += 1
        # drop posteriors no future frame can need
        keep_from = max(0, self._read_floor(t) - 1)
        drop = min(keep_from - self._post_first, self._post.shape[0] - 1)
        if drop > 0:
            self._post = self._post[drop:]
            self._post_first += drop
        return events

    def _score(self, feats: np.ndarray) -> np.ndarray:
        ll = self.scorer(feats)
        quiet = self.frontend.rms < self.config.silence_rms
        if quiet.any():  # digital silence (a stalled input padded with zeros): make SIL certain
            sil = ll[quiet, self.model.silence].max(axis=-1)  # (q,)
            ll[quiet] = np.minimum(ll[quiet], sil[:, None, None] - 50.0)
            ll[quiet, self.model.silence] = sil[:, None]
        if self.loglik_sink is not None and ll.shape[0]:
            self.loglik_sink(self._n_acoustic, ll, quiet)
        self._n_acoustic += ll.shape[0]
        return ll

    def _feed(self, pcm: np.ndarray) -> list[PhonemeEvent]:
        feats = self.frontend.push(pcm)
        first, post = self.loop.push(self._score(feats))
        self._append_posteriors(first, post)
        return self._emit(None)

    def _flush(self) -> list[PhonemeEvent]:
        feats = self.frontend.finish()
        first, post = self.loop.push(self._score(feats))
        self._append_posteriors(first, post)
        first, post = self.loop.finish()
        self._append_posteriors(first, post)
        events = self._emit(self.frames_with_centre(self._stream_samples))
        return events


@dataclass(frozen=True)
class ViterbiAllphoneConfig:
    """Settings of :class:`ViterbiAllphoneRecognizer` (the measured starting point of the issue)."""

    lw: float = 1.0
    beam: float = 1e-20
    pbeam: float = 1e-20
    offset_ms: float = -40.0  # the 1-best path's boundaries sit ~40 ms late
    stable_ms: int = 120  # a frame's label is final this long behind the decoder's newest frame
    max_utterance_s: float = 30.0  # restart the search (with 1 s of context) to bound its memory and time
    extra: dict[str, object] = field(default_factory=dict)  # more pocketsphinx config keys


class ViterbiAllphoneRecognizer(Recognizer):
    """pocketsphinx allphone search read through partial segmentations (baseline backend)."""

    CONTEXT_S = 1.0

    def __init__(self, config: ViterbiAllphoneConfig | None = None, **options: object) -> None:
        super().__init__()
        if config is None:
            config = ViterbiAllphoneConfig(**options)  # type: ignore[arg-type]
        self.config = config
        self._model = default_model_dir()
        self._reset_stream()

    def _decoder(self):  # noqa: ANN202 - pocketsphinx.Decoder
        import pocketsphinx

        c = self.config
        kw = dict(hmm=str(self._model / "en-us"), allphone=str(self._model / "en-us-phone.lm.bin"),
                  lw=c.lw, beam=c.beam, pbeam=c.pbeam, loglevel="FATAL")
        kw.update(c.extra)
        d = pocketsphinx.Decoder(**kw)
        d.start_utt()
        return d

    def _reset_stream(self) -> None:
        self._dec = self._decoder()
        self._utt_start = 0  # absolute acoustic frame of the decoder's frame 0
        self._labels = np.full(0, SIL, dtype=np.int64)  # labels of acoustic frames [_lab_first, ...)
        self._lab_first = 0
        self._final = 0  # acoustic frames whose label is final (absolute)
        self._audio = np.zeros(0, dtype=np.int16)  # recent audio (for restarts)
        self._audio_first = 0  # absolute sample index of _audio[0]

    def _lag_seconds(self) -> float:
        # frame t is read at acoustic frame k and final once the search is stable_ms past it; the search's
        # newest frame trails the audio by the delta window (3 frames) plus ~2 frames of internal buffering
        stable = self.config.stable_ms // 10
        worst = 0.0
        for t in range(30, 33):
            k = self._read_frame(t)
            needed = FRAME_SHIFT * (k + stable + 5) + 410
            worst = max(worst, (needed - (t + 1) * self.sample_rate / self.fps) / self.sample_rate)
        return worst

    def _read_frame(self, t: int) -> int:
        centre_ms = (t + 0.5) * 1000 / self.fps
        return max(0, int(math.floor((centre_ms + self.config.offset_ms) / 10)))

    def _update_labels(self, final: bool) -> int:
        """Refresh labels from the partial segmentation; return the number of acoustic frames now final."""
        n = self._utt_start + self._dec.n_frames()
        lab = np.full(max(0, n - self._lab_first), SIL, dtype=np.int64)
        for seg in self._dec.seg() or []:
            s = seg.start_frame + self._utt_start - self._lab_first
            e = seg.end_frame + self._utt_start - self._lab_first
            if e < 0:
                continue
            lab[max(s, 0) : e + 1] = sphinx_phone_id(seg.word)
        # labels already final stay as they are (they may have been emitted); the rest follow the new path
        keep = self._labels[: max(0, self._final - self._lab_first)]
        self._labels = np.concatenate([keep, lab[keep.size :]])
        self._final = max(self._final, n if final else n - self.config.stable_ms // 10)
        return self._final

    def _emit(self, stable: int, limit: int | None) -> list[PhonemeEvent]:
        events = []
        t = self._stream_next
        total = self._lab_first + self._labels.size
        while total > 0:
            k = self._read_frame(t)
            if limit is None and k >= stable:
                break
            if limit is not None and t >= limit:
                break
            k = min(k, total - 1)
            events.append(self._event(t, int(self._labels[k - self._lab_first])))
            t += 1
        drop = min(self._read_frame(t) - 1 - self._lab_first, self._labels.size - 1)
        if drop > 0:  # labels no later frame can read
            self._labels = self._labels[drop:]
            self._lab_first += drop
        return events

    def _maybe_restart(self) -> None:
        c = self.config
        if self._dec.n_frames() < c.max_utterance_s * 100:
            return
        # end this utterance; start a new one on the last CONTEXT_S of audio (labels before stay final)
        self.stats.extra["restarts"] = self.stats.extra.get("restarts", 0) + 1
        self._dec.end_utt()
        ctx = int(self.CONTEXT_S * self.sample_rate) // FRAME_SHIFT * FRAME_SHIFT
        start = max(self._audio_first, self._audio_first + self._audio.size - ctx)
        start -= (start - self._audio_first) % FRAME_SHIFT
        self._dec = self._decoder()
        self._utt_start = start // FRAME_SHIFT
        self._dec.process_raw(self._audio[start - self._audio_first :].tobytes())

    def _feed(self, pcm: np.ndarray) -> list[PhonemeEvent]:
        self._audio = np.concatenate([self._audio, pcm])
        excess = self._audio.size - int(2 * self.CONTEXT_S * self.sample_rate)
        if excess > 0:
            self._audio = self._audio[excess:]
            self._audio_first += excess
        self._dec.process_raw(pcm.tobytes())
        stable = self._update_labels(final=False)
        events = self._emit(stable, None)
        self._maybe_restart()
        return events

    def _flush(self) -> list[PhonemeEvent]:
        self._dec.end_utt()
        self._update_labels(final=True)
        events = self._emit(0, self.frames_with_centre(self._stream_samples))
        return events
