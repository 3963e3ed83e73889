"""engine.runtime and engine.latency (delay budget, recognizer lag, builders) and engine.motion (idle blinks/pose)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from engine.config import Config
from engine.contracts import Recognizer
from engine.decoder import ExpressionDecoder
from engine.latency import COMPUTE_MARGIN_S, compute_margin, recognizer_lag
from engine.motion import BLINK_FRAMES, IdleMotion
from engine.recognizer import make_recognizer
from engine.runtime import EngineRuntime, build_styles
from engine.stylebank import StyleBank
from tests.engine_helpers import small_renderer


class _Rec:
    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)

    def feed(self, pcm):
        return []

    def flush(self):
        return []


def test_recognizer_lag_is_seconds_and_checked() -> None:
    """One unit (seconds of audio, the Recognizer contract); nonsense is refused where the delay is sized."""
    assert recognizer_lag(_Rec(lag=0.12)) == 0.12
    assert recognizer_lag(_Rec(lag=Fraction(1, 10))) == 0.1
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lag must be"):
            recognizer_lag(_Rec(lag=bad))
    assert isinstance(_Rec(lag=0.1), Recognizer) and not isinstance(object(), Recognizer)


def test_compute_margin_grows_with_the_measured_cost() -> None:
    assert compute_margin(None) == COMPUTE_MARGIN_S
    assert compute_margin(0.001) == COMPUTE_MARGIN_S
    assert compute_margin(0.1) == pytest.approx(0.16)


@pytest.fixture(scope="module")
def runtime():
    torch.set_num_threads(1)
    cfg = Config()
    decoder = ExpressionDecoder.random(seed=0, small=True)
    styles = StyleBank(decoder.encode_style)
    styles.add("neutral", np.zeros((8, 64), np.float32))
    rt = EngineRuntime(cfg, decoder, small_renderer(64), styles, np.zeros((64, 64, 3), np.uint8),
                       recognizer_factory=lambda: make_recognizer("labels", labels=[31] * 10))
    yield rt
    rt.close()


def test_output_delay_budget(runtime: EngineRuntime) -> None:
    cfg = runtime.config
    cfg.decoder.lookahead = 2
    rec = _Rec(lag=0.1)
    runtime.frame_compute_s = None
    d = runtime.output_delay(rec)
    # (L + 1) frames + capture chunk + recognizer lag + compute margin
    expected = Fraction(3, 30) + Fraction(cfg.audio.chunk_ms, 1000) + Fraction(1, 10) + Fraction(COMPUTE_MARGIN_S)
    assert abs(float(d - expected)) < 1e-3
    cfg.decoder.lookahead = 4
    assert float(runtime.output_delay(rec) - d) == pytest.approx(2 / 30, abs=1e-9)  # each lookahead frame: 33 ms
    runtime.frame_compute_s = 0.2  # a slow machine gets a longer delay, not missed deadlines
    assert runtime.output_delay(rec) > d + Fraction(1, 5)
    cfg.audio.output_delay_ms = 500
    assert runtime.output_delay(rec) == Fraction(1, 2)
    cfg.audio.output_delay_ms = None


def test_warmup_measures_frame_compute(runtime: EngineRuntime) -> None:
    t = runtime.warmup(repeats=1)
    assert t > 0 and runtime.frame_compute_s == t


def test_too_many_sessions_is_refused(runtime: EngineRuntime) -> None:
    runtime.config.server.max_sessions = 1
    runtime.new_session("one")
    with pytest.raises(RuntimeError, match="too many sessions"):
        runtime.new_session("two")
    runtime.forget("one")
    runtime.config.server.max_sessions = 4


def test_builtin_styles_fall_back_to_a_neutral_code(tmp_path) -> None:
    decoder = ExpressionDecoder.random(seed=0, small=True)
    cfg = Config()
    cfg.decoder.checkpoint = "random"
    clips = tmp_path / "clips"
    clips.mkdir()
    np.save(clips / "wide.npy", np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32))
    cfg.style.clips_dir = str(clips)
    bank = build_styles(cfg, decoder)
    assert {"neutral", "wide"} <= set(bank.names())
    assert bank.get("wide").shape == (decoder.style_dim,)


def test_blinks_are_deterministic_bounded_and_spaced() -> None:
    a, b = IdleMotion(seed=3), IdleMotion(seed=3)
    frames = np.arange(0, 30 * 60)
    amounts = a.blink_amounts(frames)
    np.testing.assert_array_equal(amounts, b.blink_amounts(frames[::-1])[::-1])  # order-independent
    np.testing.assert_array_equal(amounts[100:200], a.blink_amounts(frames[100:200]))  # re-query: same value
    assert amounts.min() == 0.0 and amounts.max() == 1.0
    starts = np.flatnonzero((amounts > 0) & (np.r_[0.0, amounts[:-1]] == 0))
    gaps = np.diff(starts)
    assert 10 <= len(starts) <= 31  # one blink every 2-6 s over a minute
    assert gaps.min() >= 2 * 30 and gaps.max() <= 6 * 30
    assert ((amounts > 0).sum() / len(starts)) <= BLINK_FRAMES
    pose = IdleMotion(seed=1, sway=0.02, head=0.0).poses(frames[:90])
    assert pose.shape == (90, 9) and 0 < np.abs(pose[:, :3]).max() <= 0.02 and np.all(pose[:, 3:] == 0)
    np.testing.assert_array_equal(IdleMotion(head=0.0).poses(frames[:5]), np.zeros((5, 9), np.float32))


def test_loading_the_engine_runs_numpy_blas_on_one_thread() -> None:
    """OpenBLAS's worker threads spin on a shared machine (benchmarks/served_costs.py: the recognizer fed 200 ms
    at a time costs ~4x the CPU with them); the engine keeps numpy's BLAS on one thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from engine.runtime import limit_blas_threads

    with threadpool_limits(limits=None):  # restores the process's setting afterwards
        threadpool_limits(limits=2, user_api="blas")
        limit_blas_threads()
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas), blas
