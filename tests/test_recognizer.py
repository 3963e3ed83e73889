"""engine.recognizer: interface, input handling, labels backend, acoustic front end and decoders.

Speech-level behaviour (real utterances) is in ``test_recognizer_speech.py``; accuracy against the shared
reference labels is measured by ``benchmarks/phonemes.py``, not asserted here.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.recognizer import (
    AudioInputError,
    AudioNormalizer,
    PhonemeEvent,
    RecognizerConfigError,
    choose_backend,
    coerce_pcm16,
    make_recognizer,
)
from engine.recognizer.allphone import AllphoneConfig, AllphoneRecognizer
from engine.recognizer.base import RecognizerStats
from engine.recognizer.frontend import SphinxFrontEnd
from engine.recognizer.labels import LabelsFileError, read_labels
from engine.recognizer.phone_loop import PhoneLoop, PhoneLoopParams
from engine.recognizer.phones import sphinx_phone_id
from engine.recognizer.sphinx_model import SenoneScorer, load_sphinx_model
from engine.recognizer.visemes import PHONEME_TO_VISEME, VISEMES, viseme_of
from engine.recognizer.words import WordModelError, align_phones
from models.phonemes import NUM_PHONEMES, PHONEME_INDEX, SIL

RATE = 16000
SPF = Fraction(RATE, 30)  # samples per video frame


def tone_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """A crude voiced signal (pulse train through changing resonances) - speech-like energy, not words."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = np.cumsum(f0 / RATE)
    src = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    out = np.zeros(n)
    for f in (500 + 300 * np.sin(2 * np.pi * 2 * t), 1500 + 500 * np.cos(2 * np.pi * 1.5 * t)):
        out += np.sin(2 * np.pi * np.cumsum(f) / RATE) * np.convolve(src, np.hanning(80), "same")
    out += 0.01 * rng.standard_normal(n)
    return np.round(out / np.abs(out).max() * 12000).astype(np.int16)


def feed_chunks(rec, pcm: np.ndarray, chunk: int) -> list[PhonemeEvent]:
    events = []
    for i in range(0, pcm.size, chunk):
        events += rec.feed(pcm[i : i + chunk])
    return events + rec.flush()


def frames_with_centre(n: int) -> int:
    """Frames t whose centre (t + 1/2) * 1600/3 lies before sample n: t < 3n/1600 - 1/2."""
    x = Fraction(3 * n, 1600) - Fraction(1, 2)
    return max(0, -((-x.numerator) // x.denominator))


# ------------------------------------------------------------------------------------------ events / input
def test_event_fields_and_unpacking() -> None:
    ev = PhonemeEvent(7, PHONEME_INDEX["M"])
    frame, ph = ev
    assert (frame, ph, ev.frame, ev.phoneme, ev.name) == (7, PHONEME_INDEX["M"], 7, PHONEME_INDEX["M"], "M")


def test_coerce_pcm16_accepts_bytes_floats_and_single_channels() -> None:
    x = np.array([0, 1000, -32768, 32767], np.int16)
    assert np.array_equal(coerce_pcm16(x.tobytes()), x)
    assert np.array_equal(coerce_pcm16(x[None, :]), x)
    assert np.array_equal(coerce_pcm16(x[:, None].astype(np.int32)), x)
    stats = RecognizerStats()
    out = coerce_pcm16(np.array([0.5, np.nan, np.inf, -2.0, 1.0], np.float32), stats)
    assert out.tolist() == [16384, 0, 0, -32767, 32767]
    assert (stats.nonfinite, stats.clipped) == (2, 1)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 100), np.int16), b"\x00\x01\x02", np.array(["a", "b"]), np.array([40000, 0], np.int32)],
)
def test_coerce_pcm16_rejects_what_it_cannot_interpret(bad: object) -> None:
    with pytest.raises(AudioInputError):
        coerce_pcm16(bad)


# ----------------------------------------------------------------------------------------------- labels
@pytest.fixture()
def labels_file(tmp_path: Path) -> Path:
    p = tmp_path / "clip_seq.json"
    p.write_text(json.dumps([31, 27, 27, 0, 0, 21, 31]))
    return p


def test_labels_backend_emits_frame_once_its_end_is_fed(labels_file: Path) -> None:
    rec = make_recognizer("labels", labels=str(labels_file))
    assert rec.lag == 0.0
    end0 = -(-SPF.numerator // SPF.denominator)  # first sample after frame 0 (534)
    assert rec.feed(np.zeros(end0 - 1, np.int16)) == []
    assert rec.feed(np.zeros(1, np.int16)) == [PhonemeEvent(0, 31)]
    # one more frame and a half: frame 1 complete, frame 2 not
    evs = rec.feed(np.zeros(int(SPF * 3 / 2), np.int16))
    assert [e.frame for e in evs] == [1]
    # flush: frame 2's centre has been fed -> emitted; nothing after
    assert rec.flush() == [PhonemeEvent(2, 27)]
    assert rec.flush() == []


def test_labels_backend_pads_with_silence_and_continues_after_flush(labels_file: Path) -> None:
    rec = make_recognizer("labels", labels=str(labels_file))
    n = int(SPF * 10)
    events = feed_chunks(rec, np.zeros(n, np.int16), 320)
    assert [e.phoneme for e in events] == [31, 27, 27, 0, 0, 21, 31, SIL, SIL, SIL][: len(events)]
    assert [e.frame for e in events] == list(range(frames_with_centre(n)))
    more = feed_chunks(rec, np.zeros(n, np.int16), 1000)  # a second stream continues the frame count
    assert more[0].frame == events[-1].frame + 1


def test_read_labels_accepts_names_and_rejects_garbage(tmp_path: Path) -> None:
    assert read_labels(["sil", "AA", 27]).tolist() == [SIL, PHONEME_INDEX["AA"], 27]
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(LabelsFileError):
        read_labels(bad)
    with pytest.raises(LabelsFileError):
        read_labels([99])
    with pytest.raises(LabelsFileError):
        read_labels(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------- factory
def test_factory_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RecognizerConfigError, match="unknown recognizer backend"):
        make_recognizer("nope")
    with pytest.raises(RecognizerConfigError, match="labels"):
        make_recognizer("labels")
    with pytest.raises(RecognizerConfigError, match="vosk"):
        make_recognizer("vosk")
    with pytest.raises(WordModelError, match="not found"):
        make_recognizer("vosk", model=str(tmp_path / "no-model"))
    with pytest.raises(RecognizerConfigError, match="bad options"):
        make_recognizer("allphone", not_an_option=1)


def test_choose_backend_by_latency_budget() -> None:
    assert choose_backend(None) == "allphone"
    assert choose_backend(150) == "allphone"
    assert choose_backend(800) == "words"
    assert choose_backend(800, vosk_model="/models/vosk") == "vosk"
    assert type(make_recognizer("auto", max_lag_ms=100)).__name__ == "AllphoneRecognizer"


# -------------------------------------------------------------------------------------- model / features
def test_sphinx_model_tables() -> None:
    m = load_sphinx_model()
    assert m.n_phones == 42 and m.phones[m.silence] == "SIL"
    assert m.means.shape == (3, 42, 128, 13) and m.log_mixw.shape == (3, 126, 128)
    # mixture weights of every CI senone and stream are a distribution (quantised, so approximately)
    w = np.exp(m.log_mixw).sum(axis=-1)
    assert np.all((w > 0.9) & (w < 1.1))
    # transition probabilities: stay + next = 1 per state
    assert np.allclose(np.exp(m.transitions).sum(axis=-1), 1.0)


def test_phone_names_map_onto_the_41_classes() -> None:
    assert sphinx_phone_id("AH") == PHONEME_INDEX["AH"]
    assert sphinx_phone_id("+SPN+") == SIL and sphinx_phone_id("+NSN+") == SIL and sphinx_phone_id("SIL") == SIL
    assert sphinx_phone_id("ah1") == PHONEME_INDEX["AH"]


def test_frontend_is_independent_of_chunking() -> None:
    pcm = tone_speech(1.3)
    whole = SphinxFrontEnd()
    a = np.concatenate([whole.push(pcm), whole.finish()])
    parts = SphinxFrontEnd()
    rng = np.random.default_rng(1)
    out, i = [], 0
    while i < pcm.size:
        n = int(rng.integers(0, 700))
        out.append(parts.push(pcm[i : i + n]))
        i += n
    b = np.concatenate(out + [parts.finish()])
    assert a.shape == b.shape == ((pcm.size - 410) // 160 + 2, 39)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_phone_loop_posteriors_are_distributions_for_every_frame() -> None:
    m = load_sphinx_model()
    feats = SphinxFrontEnd().push(tone_speech(0.8))
    ll = SenoneScorer(m)(feats)
    loop = PhoneLoop(m, PhoneLoopParams(lookahead=5))
    first, post = loop.push(ll)
    first2, rest = loop.finish()
    assert first == 0 and first2 == post.shape[0]
    p = np.concatenate([post, rest])
    assert p.shape == (feats.shape[0], m.n_phones)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_align_phones_is_monotonic_and_visits_every_phone() -> None:
    m = load_sphinx_model()
    ll = SenoneScorer(m)(SphinxFrontEnd().push(tone_speech(0.5)))
    phones = [m.phones.index(p) for p in ("M", "AA", "P")]
    path = align_phones(ll, phones, m)
    order = [phones.index(p) for p in path]
    assert order[0] == 0 and order[-1] == 2 and all(b - a in (0, 1) for a, b in zip(order[:-1], order[1:], strict=True))


def test_viseme_groups_cover_all_phonemes() -> None:
    assert len(VISEMES) == 13 and PHONEME_TO_VISEME.shape == (NUM_PHONEMES,)
    assert {viseme_of(PHONEME_INDEX[p]) for p in ("P", "B", "M")} == {"E"}
    assert viseme_of(SIL) == viseme_of(PHONEME_INDEX["NSN"])
    assert viseme_of(PHONEME_INDEX["F"]) != viseme_of(PHONEME_INDEX["P"])


# ------------------------------------------------------------------------------------ allphone streaming
@pytest.fixture(scope="module")
def allphone_runs() -> dict[str, list[PhonemeEvent]]:
    pcm = tone_speech(2.0, seed=3)
    return {
        "20ms": feed_chunks(AllphoneRecognizer(), pcm, 320),
        "odd": feed_chunks(AllphoneRecognizer(), pcm, 777),
        "whole": feed_chunks(AllphoneRecognizer(), pcm, pcm.size),
        "n": pcm.size,  # type: ignore[dict-item]
    }


def test_allphone_emits_every_frame_once_in_order(allphone_runs) -> None:
    n = allphone_runs["n"]
    for key in ("20ms", "odd", "whole"):
        assert [e.frame for e in allphone_runs[key]] == list(range(frames_with_centre(n))), key
        assert all(0 <= e.phoneme < NUM_PHONEMES for e in allphone_runs[key])


def test_allphone_labels_do_not_depend_on_chunk_size(allphone_runs) -> None:
    a = np.array([e.phoneme for e in allphone_runs["20ms"]])
    b = np.array([e.phoneme for e in allphone_runs["odd"]])
    # fixed-lag posteriors: chunking changes only how much extra lookahead a block gets
    assert np.mean(a == b) > 0.9


@pytest.mark.parametrize("backend", ["allphone", "allphone-viterbi"])
def test_labels_never_come_later_than_the_declared_lag(backend: str) -> None:
    rec = make_recognizer(backend)
    pcm = tone_speech(1.5, seed=4)
    chunk = 320
    worst = -1.0
    for i in range(0, pcm.size, chunk):
        fed = min(i + chunk, pcm.size)
        for ev in rec.feed(pcm[i : i + chunk]):
            worst = max(worst, fed / RATE - (ev.frame + 1) / 30)
    assert 0.05 < rec.lag < 0.2
    assert worst <= rec.lag + chunk / RATE + 1e-9
    assert worst > rec.lag - 2 * chunk / RATE  # the bound is tight, not a loose guess


def test_allphone_config_validation() -> None:
    with pytest.raises(ValueError):
        AllphoneConfig(lookahead_ms=15)
    with pytest.raises(ValueError):
        AllphoneConfig(ascale=0)


@pytest.mark.parametrize("backend", ["allphone", "allphone-viterbi", "words"])
def test_bad_audio_never_crashes(backend: str) -> None:
    fast = {"sphinx": {"beam": 1e-30, "wbeam": 1e-20, "pbeam": 1e-30}} if backend == "words" else {}
    rec = make_recognizer(backend, **fast)
    norm = AudioNormalizer()
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32)
    nan = stereo.copy()
    nan[1000:5000] = np.nan
    clipped = np.clip(stereo * 50, -1.0, 1.0)
    events = []
    for block, rate in [(stereo, 44100), (nan, 44100), (clipped, 44100), (np.zeros(0, np.float32), 44100)]:
        events += rec.feed(norm(block, rate))
    events += rec.feed(np.zeros(0, np.int16))
    events += rec.feed(np.zeros(16000 * 3, np.int16))  # long digital silence
    events += rec.feed((rng.standard_normal(8000) * 30000).clip(-32768, 32767).astype(np.int16))  # clipping noise
    events += rec.feed(np.array([np.nan, 0.5, -3.0], np.float64))  # float NaN straight into the recognizer
    events += rec.flush()
    assert [e.frame for e in events] == list(range(len(events)))
    assert norm.stats.nonfinite > 0 and rec.stats.nonfinite == 1 and rec.stats.empty_chunks == 2
    assert len(events) == frames_with_centre(rec.stats.samples)


def test_digital_silence_is_silence() -> None:
    rec = AllphoneRecognizer()
    events = feed_chunks(rec, np.zeros(RATE * 2, np.int16), 320)
    ids = np.array([e.phoneme for e in events])
    assert np.mean(ids == SIL) > 0.9


@pytest.mark.parametrize("backend", ["allphone", "allphone-viterbi", "words"])
def test_flush_without_audio_and_twice(backend: str) -> None:
    rec = make_recognizer(backend)
    assert rec.flush() == [] and rec.flush() == []
    events = rec.feed(np.zeros(2000, np.int16)) + rec.flush()
    assert [e.frame for e in events] == list(range(frames_with_centre(2000)))
    assert rec.flush() == []


@pytest.mark.parametrize("n", [1, 150, 300, 533, 534, 900, 1700])
def test_tiny_streams(n: int) -> None:
    for backend in ("allphone", "allphone-viterbi"):
        rec = make_recognizer(backend)
        events = rec.feed(tone_speech(1.0)[:n]) + rec.flush()
        assert [e.frame for e in events] == list(range(frames_with_centre(n))), backend
