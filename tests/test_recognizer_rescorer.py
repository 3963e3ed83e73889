"""The allphone label rescorer: committed asset, decision rule, fitting code, and its place in the recognizer."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from engine.recognizer import make_recognizer
from engine.recognizer.allphone import AllphoneConfig, AllphoneRecognizer
from engine.recognizer.fit_rescorer import ClipPosteriors, collect, decide, evaluate, soft_confusion, speaker_of
from engine.recognizer.rescorer import (
    DEFAULT_RESCORER,
    ConfusionRescorer,
    RescorerFormatError,
    load_rescorer,
)
from models.phonemes import NUM_PHONEMES, PHONEME_INDEX, PHONEME_TO_VISEME, SIL, VISEMES

DATA = Path(__file__).resolve().parent / "data"
AH, IH, IY, EH, S_ = (PHONEME_INDEX[p] for p in ("AH", "IH", "IY", "EH", "S"))


def test_committed_asset_loads_and_is_a_confusion_matrix() -> None:
    r = load_rescorer()
    assert DEFAULT_RESCORER.is_file() and DEFAULT_RESCORER.with_suffix(".md").is_file()
    assert r.confusion.shape == (NUM_PHONEMES, NUM_PHONEMES) and r.rule == "viseme" and 0 < r.beta < 1
    np.testing.assert_allclose(r.confusion.sum(axis=1), 1.0, atol=1e-5)
    # a learned correction, not a relabelling: every seen phone keeps most of its own mass after blending
    mixed = r.scores(np.eye(NUM_PHONEMES))
    assert np.mean(np.argmax(mixed, axis=1) == np.arange(NUM_PHONEMES)) > 0.8
    assert int(r.labels(np.eye(NUM_PHONEMES)[SIL])) == SIL


def test_load_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    a, b = load_rescorer(), load_rescorer()
    rng = np.random.default_rng(1)
    post = rng.dirichlet(np.full(NUM_PHONEMES, 0.3), size=200)
    np.testing.assert_array_equal(a.labels(post), b.labels(post))
    a.save(tmp_path / "r.npz", source="test")
    np.testing.assert_array_equal(load_rescorer(tmp_path / "r.npz").labels(post), a.labels(post))


def test_bad_assets_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_rescorer(tmp_path / "missing.npz")
    np.savez(tmp_path / "old.npz", version=np.array(99), confusion=np.eye(41), beta=np.array(0.5),
             rule=np.array("phone"))
    with pytest.raises(RescorerFormatError):
        load_rescorer(tmp_path / "old.npz")
    with pytest.raises(RescorerFormatError):
        ConfusionRescorer(np.eye(40))
    with pytest.raises(RescorerFormatError):
        ConfusionRescorer(np.eye(41), rule="word")


def test_identity_phone_rule_is_the_argmax() -> None:
    post = np.random.default_rng(2).dirichlet(np.ones(NUM_PHONEMES), size=100)
    np.testing.assert_array_equal(ConfusionRescorer.identity().labels(post), post.argmax(axis=1))


def test_viseme_rule_picks_the_viseme_first() -> None:
    # IH (0.30) is the best single phone, but the spread open-mid vowels (EH + EY + AE) hold more mass together
    p = np.zeros(NUM_PHONEMES)
    p[IH], p[EH], p[PHONEME_INDEX["EY"]], p[PHONEME_INDEX["AE"]], p[S_] = 0.30, 0.25, 0.2, 0.1, 0.15
    assert int(ConfusionRescorer.identity("phone").labels(p)) == IH
    got = int(ConfusionRescorer.identity("viseme").labels(p))
    assert got == EH and VISEMES[PHONEME_TO_VISEME[got]] == "V3"


def test_soft_confusion_learns_a_systematic_disagreement() -> None:
    """The recognizer says AH where the reference says IH: the fitted map moves AH's mass to IH, and the
    blended decision follows it once the evidence is strong enough."""
    n = 300
    post = np.full((n, NUM_PHONEMES), 0.0)
    ref = np.empty(n, dtype=np.int64)
    post[:100, AH], ref[:100] = 1.0, IH  # AH heard, IH meant
    post[100:200, IY], ref[100:200] = 1.0, IY
    post[200:, S_], ref[200:] = 1.0, S_
    clip = ClipPosteriors(post, np.full(n, SIL))
    m = soft_confusion([(clip, ref)])
    assert m[AH, IH] == pytest.approx(1.0) and m[IY, IY] == pytest.approx(1.0)
    assert m[EH, EH] == 1.0  # never heard: identity row
    np.testing.assert_array_equal(decide(clip, ConfusionRescorer(m, beta=0.6, rule="phone")), ref)
    assert speaker_of("Obama_clip2") == speaker_of("obama_clip1") != speaker_of("andrew_clip_1")


def test_cross_validation_holds_out_whole_speakers() -> None:
    """Speaker 'a' says AH for IH, speaker 'b' does not: LOSO-CV must not see a's habit when scoring a."""
    n = 60

    def clip(heard: int, meant: int) -> tuple[ClipPosteriors, np.ndarray]:
        post = np.zeros((n, NUM_PHONEMES))
        post[:, heard] = 1.0
        return ClipPosteriors(post, np.full(n, heard)), np.full(n, meant)

    (a1, ra1), (a2, ra2), (b1, rb1) = clip(AH, IH), clip(AH, IH), clip(IY, IY)
    clips = ["a_1", "a_2", "b_1"]
    posts = {"a_1": a1, "a_2": a2, "b_1": b1}
    res = evaluate(clips, {"a_1": ra1, "a_2": ra2, "b_1": rb1}, posts, posts)
    assert res["rescorer_fit_all"]["frame"] == 100.0  # in-sample: the habit is learned
    assert res["rescorer_cv"]["frame"] == pytest.approx(100 / 3, abs=0.01)  # held out: it cannot be
    assert res["argmax"]["frame"] == pytest.approx(100 / 3, abs=0.01)


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    with wave.open(str(DATA / "speech_16k.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def _run(rec: AllphoneRecognizer, pcm: np.ndarray) -> np.ndarray:
    events = []
    for i in range(0, pcm.size, 320):
        events += rec.feed(pcm[i : i + 320])
    events += rec.flush()
    return np.array([e.phoneme for e in events])


def test_fitting_features_are_the_recognizers_own(sentence: np.ndarray) -> None:
    """The posteriors the fit collects are exactly those the streaming recognizer decides from: applying the
    shipped asset to them reproduces the default recognizer's labels frame for frame."""
    n = make_recognizer("allphone").frames_with_centre(sentence.size)
    cp = collect(sentence, n, AllphoneConfig().lookahead_ms)  # at the default lookahead, as the recognizers below
    ok = ~np.isnan(cp.post[:, 0])
    assert ok.mean() > 0.9
    np.testing.assert_allclose(cp.post[ok].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(decide(cp, None), _run(AllphoneRecognizer(rescorer=None), sentence))
    np.testing.assert_array_equal(decide(cp, load_rescorer()), _run(AllphoneRecognizer(), sentence))


def test_rescorer_changes_few_labels_and_keeps_the_lag(sentence: np.ndarray) -> None:
    plain, learned = AllphoneRecognizer(rescorer=None), AllphoneRecognizer()
    assert learned.lag == plain.lag
    a, b = _run(plain, sentence), _run(learned, sentence)
    changed = np.mean(a != b)
    assert 0 < changed < 0.2  # a correction on top of the posteriors, not a different recognizer
    assert abs(np.mean(a == SIL) - np.mean(b == SIL)) < 0.05
    quiet = _run(AllphoneRecognizer(), np.zeros(16000, np.int16))  # digital silence stays silence
    assert np.all(quiet == SIL)


@pytest.mark.parametrize("lookahead_ms", [60, 80])
def test_shorter_lookahead_still_recognises_speech(sentence: np.ndarray, lookahead_ms: int) -> None:
    short, long = AllphoneRecognizer(lookahead_ms=lookahead_ms), AllphoneRecognizer(lookahead_ms=120)
    assert short.lag < long.lag - (120 - lookahead_ms) / 1000 + 0.005
    a, b = _run(short, sentence), _run(long, sentence)
    assert np.mean(a == b) > 0.75 and np.mean(a != SIL) > 0.5
