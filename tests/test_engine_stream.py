"""engine.stream.StreamCore: streaming == offline, style landing frames, forcing, interrupt easing."""

from __future__ import annotations

import numpy as np
import pytest

from engine.decoder import ExpressionDecoder
from engine.stream import StreamCore, run_decode
from models.phonemes import SIL, phoneme_windows
from tests.engine_helpers import offline_decode

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dec() -> ExpressionDecoder:
    return ExpressionDecoder.random(seed=1, small=True, max_batch=8)


def _stream(core: StreamCore, dec: ExpressionDecoder, seq: np.ndarray, events_per_step: int,
            force_lag: int | None = None) -> dict[int, np.ndarray]:
    """Feed labels a few frames at a time (like a recognizer), decode every job as it comes."""
    out: dict[int, np.ndarray] = {}
    now = 0.0
    for i in range(0, len(seq), events_per_step):
        now += 0.02
        core.on_events([(f, int(seq[f])) for f in range(i, min(i + events_per_step, len(seq)))], now)
        force = None if force_lag is None else max(0, i - force_lag)
        while (job := core.plan(now, force_until=force)) is not None:
            exp = core.complete(job, run_decode(dec.decode, job), now)
            out.update(zip(job.frames.tolist(), exp, strict=True))
    core.end(len(seq))
    while (job := core.plan(now)) is not None:
        exp = core.complete(job, run_decode(dec.decode, job), now)
        out.update(zip(job.frames.tolist(), exp, strict=True))
    return out


@pytest.mark.parametrize("events_per_step", [1, 3, 10])
def test_streaming_with_full_lookahead_equals_offline(dec: ExpressionDecoder, events_per_step: int) -> None:
    rng = np.random.default_rng(events_per_step)
    seq = rng.integers(0, 41, 40)
    seq[15:22] = SIL  # a pause inside the utterance (served from the idle cache)
    style = dec.encode_style(rng.standard_normal((50, 64)).astype(np.float32))
    core = StreamCore(lookahead=5, style=style, max_batch=4)
    got = _stream(core, dec, seq, events_per_step)
    assert sorted(got) == list(range(40))  # every frame exactly once
    ref = offline_decode(dec, phoneme_windows(seq), style)
    np.testing.assert_allclose(np.stack([got[t] for t in range(40)]), ref, atol=1e-5)
    assert core.stats()["forced_frames"] == 0


@pytest.mark.parametrize("pad", ["sil", "repeat", "hold"])
def test_partial_lookahead_equals_offline_on_padded_windows(dec: ExpressionDecoder, pad: str) -> None:
    seq = np.random.default_rng(7).integers(0, 41, 25)
    style = np.zeros(dec.style_dim, np.float32)
    core = StreamCore(lookahead=2, style=style, pad=pad)
    out: dict[int, np.ndarray] = {}
    for f, p in enumerate(seq):  # one event per step: every frame decoded with exactly 2 future frames
        core.on_events([(f, int(p))], float(f))
        while (job := core.plan(float(f))) is not None:
            out.update(zip(job.frames.tolist(), run_decode(dec.decode, job), strict=True))
    t = 10
    window = phoneme_windows(seq)[t].copy()
    window[5 + 3 :] = SIL if pad == "sil" else seq[t + 2]  # frames t+3 .. t+5 are not known yet
    if pad == "hold":
        window[5 + 3 + 2 :] = SIL  # the last phoneme is held for two frames only
    np.testing.assert_allclose(out[t], dec.decode(window[None], style)[0], atol=1e-5)
    ref = offline_decode(dec, phoneme_windows(seq), style)
    assert not np.allclose(out[t], ref[t], atol=1e-4)  # the padding does change it


def test_style_switch_lands_on_the_requested_frame(dec: ExpressionDecoder) -> None:
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 41, 40)
    a = dec.encode_style(rng.standard_normal((60, 64)).astype(np.float32))
    b = dec.encode_style(rng.standard_normal((60, 64)).astype(np.float32) * 3)
    core = StreamCore(lookahead=5, style=a, crossfade_frames=4)
    assert core.switch_style(b, at_frame=17) == 17
    got = _stream(core, dec, seq, 2)
    ref_a, ref_b = offline_decode(dec, phoneme_windows(seq), a), offline_decode(dec, phoneme_windows(seq), b)
    for t in range(17):
        np.testing.assert_allclose(got[t], ref_a[t], atol=1e-5)
    assert np.abs(got[17] - ref_a[17]).max() > 1e-4  # frame 17 already moves toward b
    for t in range(20, 40):  # 17 + 4 - 1 = 20: fully b
        np.testing.assert_allclose(got[t], ref_b[t], atol=1e-5)


def test_switch_in_the_past_lands_on_the_next_undecoded_frame(dec: ExpressionDecoder) -> None:
    core = StreamCore(lookahead=0, style=np.zeros(dec.style_dim, np.float32))
    core.on_events([(f, 3) for f in range(10)], 0.0)
    assert len(core.plan(0.0)) == 10
    assert core.switch_style(np.ones(dec.style_dim, np.float32), at_frame=4) == 10


def test_forced_frames_follow_the_deadline_not_the_recognizer(dec: ExpressionDecoder) -> None:
    core = StreamCore(lookahead=5, style=np.zeros(dec.style_dim, np.float32))
    core.on_events([(0, 3), (1, 3)], 0.0)
    assert core.plan(0.0) is None  # nothing ready: lookahead 5 not stable
    job = core.plan(0.1, force_until=3)  # deadline for frames 0..2 reached
    assert job is not None and job.frames.tolist() == [0, 1, 2] and job.forced.all()
    st = core.stamps(0)
    assert st.forced and st.planned == 0.1


def test_interrupt_eases_to_silence_within_two_frames(dec: ExpressionDecoder) -> None:
    seq = np.random.default_rng(5).integers(0, 31, 30)  # no SIL: speech everywhere
    style = np.zeros(dec.style_dim, np.float32)
    core = StreamCore(lookahead=0, style=style, ease_frames=2)
    core.on_events([(f, int(p)) for f, p in enumerate(seq[:20])], 0.0)
    job = core.plan(0.0)
    exp = core.complete(job, run_decode(dec.decode, job), 0.0)
    shown = exp[9]  # frame 9 on screen when the user interrupts; frames 10.. were decoded but not shown
    stale = core.plan(0.0, force_until=20)  # a job planned before the interrupt ...
    core.interrupt(at_frame=10, until_frame=25, shown=shown)
    assert stale is None or core.complete(stale, run_decode(dec.decode, stale), 0.0) is None  # ... is dropped
    core.on_events([(f, int(seq[f])) for f in range(20, 30)], 0.1)  # late events for the discarded audio
    job = core.plan(0.1, force_until=14)
    assert job.frames.tolist()[:4] == [10, 11, 12, 13]
    exp = core.complete(job, run_decode(dec.decode, job), 0.1)
    idle = dec.idle(style)
    np.testing.assert_allclose(exp[0], 0.5 * shown + 0.5 * idle, atol=1e-5)  # halfway after one frame
    np.testing.assert_allclose(exp[1], idle, atol=1e-5)  # closed after two
    np.testing.assert_allclose(exp[2], idle, atol=1e-5)  # and stays there (muted audio is silence)
