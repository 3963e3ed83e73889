"""Recognizers on real (synthesised) English speech: plausible phonemes, not exact strings.

Utterances are generated at test time with espeak-ng (installed by ``python -m tests.setup_system``; the
tests skip, naming the program, when it is absent) and brought to 16 kHz by the edge normaliser, exactly as
a 22.05 kHz file would be in a session. ``tests/data/speech_16k.wav`` (espeak-ng, committed) serves the
tests that need a longer utterance and no espeak.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from engine.recognizer import AudioNormalizer, make_recognizer
from engine.recognizer.visemes import PHONEME_TO_VISEME, VISEMES
from models.phonemes import PHONEME_INDEX, SIL

RATE = 16000
DATA = Path(__file__).resolve().parent / "data"
PAD_S = 0.5
VOWEL_VISEMES = {VISEMES.index(v) for v in ("V1", "V2", "V3", "V4")}
# narrower pocketsphinx beams: ~4x less CPU for the word search, enough for tests that check behaviour
FAST_WORDS = {"sphinx": {"beam": 1e-30, "wbeam": 1e-20, "pbeam": 1e-30}}
BILABIAL = {PHONEME_INDEX[p] for p in ("P", "B", "M")}


@lru_cache(maxsize=32)
def _espeak(text: str, voice: str) -> bytes:
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "140", "--stdout", text], capture_output=True, check=True, timeout=60
    ).stdout


def say(text: str, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng, 16 kHz int16, with PAD_S of digital silence on both sides."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (python -m tests.setup_system installs it)")
    with wave.open(io.BytesIO(_espeak(text, voice))) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    norm = AudioNormalizer()
    speech = np.concatenate([norm(pcm, rate), norm.flush()])
    pad = np.zeros(int(PAD_S * RATE), np.int16)
    return np.concatenate([pad, speech, pad])


def recognize(backend: str, pcm: np.ndarray, chunk: int = 320) -> np.ndarray:
    rec = make_recognizer(backend, **(FAST_WORDS if backend == "words" else {}))
    events = []
    for i in range(0, pcm.size, chunk):
        events += rec.feed(pcm[i : i + chunk])
    events += rec.flush()
    assert [e.frame for e in events] == list(range(len(events)))
    return np.array([e.phoneme for e in events], dtype=np.int64)


def speech_part(ids: np.ndarray) -> np.ndarray:
    """Labels of the frames between the silence paddings."""
    pad = int(PAD_S * 30)
    return ids[pad:-pad]


def runs(ids: np.ndarray) -> list[int]:
    out: list[int] = []
    for p in ids:
        if not out or out[-1] != p:
            out.append(int(p))
    return out


@pytest.mark.parametrize("text", ["mama", "baby", "Bob bought a map"])
def test_bilabials_are_recognised(text: str) -> None:
    ids = speech_part(recognize("allphone", say(text)))
    assert np.sum(np.isin(ids, list(BILABIAL))) >= 2, runs(ids)


def test_pa_pa_has_a_closure_between_two_vowels() -> None:
    # A voiceless stop's closure is acoustically silent, so the closed mouth may come out as P/B/M or SIL -
    # but never as a vowel. ("pa pa": espeak-ng reduces the second syllable of "papa" to a faint schwa.)
    seq = runs(speech_part(recognize("allphone", say("pa pa"))))
    is_vowel = [PHONEME_TO_VISEME[p] in VOWEL_VISEMES for p in seq]
    first = is_vowel.index(True)
    last = len(is_vowel) - 1 - is_vowel[::-1].index(True)
    middle = seq[first + 1 : last]
    assert first < last and any(p in BILABIAL or p == SIL for p in middle), seq


def test_vowel_is_recognised_as_a_vowel() -> None:
    ids = speech_part(recognize("allphone", say("ah")))
    spoken = ids[ids != SIL]
    assert spoken.size >= 5
    assert np.mean(np.isin(PHONEME_TO_VISEME[spoken], list(VOWEL_VISEMES))) > 0.7, runs(ids)


def test_fricative_and_close_vowel() -> None:
    ids = speech_part(recognize("allphone", say("see the sea")))
    assert np.any(np.isin(ids, [PHONEME_INDEX["S"], PHONEME_INDEX["Z"]])), runs(ids)
    assert np.any(np.isin(ids, [PHONEME_INDEX["IY"], PHONEME_INDEX["IH"]])), runs(ids)


@pytest.mark.parametrize("backend", ["allphone", "words"])
def test_silence_around_speech_is_silence(backend: str) -> None:
    ids = recognize(backend, say("hello there"))
    edge = int(PAD_S * 30) - 3  # frames fully inside the paddings (labels are read ~30 ms early)
    assert np.mean(ids[:edge] == SIL) > 0.9 and np.mean(ids[-edge:] == SIL) > 0.9, runs(ids)
    assert np.mean(speech_part(ids) != SIL) > 0.5


def test_quiet_noise_is_silence() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(2 * RATE) * 60).astype(np.int16)  # -55 dBFS hiss
    assert np.mean(recognize("allphone", noise) == SIL) > 0.9


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    with wave.open(str(DATA / "speech_16k.wav")) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


# allphone streams with a fixed lag (60 ms of future by default) while a whole file gives every posterior all of
# it, so labels near phone boundaries may differ: 81 % identical on this sentence, 91.5 % on the shared samples
# with equal accuracy (benchmarks/phonemes.py). A streaming bug (lost, shifted or repeated chunks) drops far lower.
@pytest.mark.parametrize("backend,min_agree", [("allphone", 0.75), ("words", 0.85)])
def test_streaming_matches_whole_file(sentence: np.ndarray, backend: str, min_agree: float) -> None:
    streamed = recognize(backend, sentence, chunk=320)
    whole = recognize(backend, sentence, chunk=sentence.size)
    assert streamed.shape == whole.shape
    assert np.mean(streamed == whole) >= min_agree
    # the same amount of speech either way
    assert abs(np.mean(streamed != SIL) - np.mean(whole != SIL)) < 0.1


def test_words_backend_labels_words_within_its_lag(sentence: np.ndarray) -> None:
    rec = make_recognizer("words", max_lag_ms=800)
    worst = 0.0
    events = []
    for i in range(0, sentence.size, 320):
        evs = rec.feed(sentence[i : i + 320])
        fed = min(i + 320, sentence.size) / RATE
        worst = max([worst] + [fed - (e.frame + 1) / 30 for e in evs])
        events += evs
    events += rec.flush()
    assert worst <= rec.lag + 0.02 + 1e-9
    assert rec.stats.extra["words"] >= 5  # it did recognise and align words
    assert rec.stats.extra["word_frames"] > rec.stats.extra["fallback_frames"]
    ids = np.array([e.phoneme for e in events])
    assert np.mean(ids != SIL) > 0.5


def test_long_streams_restart_the_searches_without_breaking_the_frames(sentence, monkeypatch) -> None:
    """Both pocketsphinx searches are restarted periodically (memory and time would grow with the stream);
    labels must stay continuous and recognition must go on after a restart."""
    from engine.recognizer import words

    monkeypatch.setattr(words._SphinxWords, "MAX_UTTERANCE_FRAMES", 200)  # restart after >= 0.5 s / 2 s
    pcm = np.concatenate([sentence, np.zeros(RATE, np.int16), sentence])
    half = (sentence.size + RATE) * 30 // RATE
    for backend, options in [("words", FAST_WORDS), ("allphone-viterbi", {"max_utterance_s": 2.0})]:
        rec = make_recognizer(backend, **options)
        events = []
        for i in range(0, pcm.size, 320):
            events += rec.feed(pcm[i : i + 320])
        events += rec.flush()
        ids = np.array([e.phoneme for e in events])
        assert [e.frame for e in events] == list(range(len(events))), backend
        assert np.mean(ids[:half] != SIL) > 0.4 and np.mean(ids[half:] != SIL) > 0.4, backend
        assert rec.stats.extra["restarts"] >= 1, backend
        assert rec.stats.frames == len(events)
