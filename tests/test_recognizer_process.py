"""The recognizer in a child process (engine/recognizer/process.py): same labels, clean failures, no leaks."""

from __future__ import annotations

import os
import signal
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.recognizer import PhonemeEvent, make_recognizer
from engine.recognizer.process import ProcessRecognizer, RecognizerProcessError, WarmProcessRecognizers

SPEECH = Path(__file__).parent / "data" / "speech_16k.wav"


def _speech() -> np.ndarray:
    with wave.open(str(SPEECH)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16)


def _run(rec, pcm: np.ndarray, block: int = 320) -> list[tuple[int, int]]:
    events = []
    for i in range(0, len(pcm), block):
        events += [tuple(e) for e in rec.feed(pcm[i : i + block])]
    return events + [tuple(e) for e in rec.flush()]


def test_child_labels_equal_the_in_process_recognizer_on_real_speech() -> None:
    pcm = _speech()
    local = make_recognizer("allphone")
    child = ProcessRecognizer("allphone")
    assert child.lag == local.lag
    assert all(isinstance(e, PhonemeEvent) for e in child.feed(pcm[:16000]))  # the same type as in-process
    child.close()
    child = ProcessRecognizer("allphone")
    ours, theirs = _run(child, pcm), _run(local, pcm)
    assert len(ours) > 50 and ours == theirs  # every frame labelled once, in order, identically
    assert child._proc.wait(timeout=5) == 0  # flush ended the child


def test_a_child_that_dies_fails_one_feed_then_labels_nothing() -> None:
    pcm = _speech()
    rec = ProcessRecognizer("allphone")
    rec.feed(pcm[:3200])
    os.kill(rec.pid, signal.SIGKILL)
    with pytest.raises(RecognizerProcessError, match="ended"):
        rec.feed(pcm[3200:6400])
    assert not rec.alive
    assert list(rec.feed(pcm[6400:9600])) == []  # no error storm: the session keeps running, mouth at rest
    assert list(rec.flush()) == []


def test_a_bad_backend_option_is_reported_from_the_child_at_first_use() -> None:
    rec = ProcessRecognizer("allphone", lookahead_ms=7)  # not a multiple of 10: the backend refuses it
    with pytest.raises(RecognizerProcessError, match="could not start.*lookahead"):
        rec.lag  # noqa: B018 - the first use waits for the child
    assert not rec.alive and list(rec.feed(np.zeros(320, np.int16))) == []


def test_warm_factory_hands_out_started_children_and_ends_its_spare() -> None:
    warm = WarmProcessRecognizers("allphone")
    spare = warm._spare
    assert spare is not None
    first = warm()
    second = warm()
    try:
        assert first is spare  # the one started ahead is handed out first
        assert first.alive and second.alive and first.pid != second.pid
        assert _run(first, _speech()[:16000])  # a handed-out child works
    finally:
        second.close()
        warm.close()
    assert second._proc.wait(timeout=5) is not None
    assert warm._spare is None
    with pytest.raises(RecognizerProcessError, match="closed"):
        warm()
