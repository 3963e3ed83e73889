"""engine.stylebank: encode once, blend, intensity, crossfaded switches landing on the requested frame."""

from __future__ import annotations

import numpy as np
import pytest

from engine.stylebank import StyleBank, StyleError, StyleSchedule


def _bank() -> tuple[StyleBank, list[np.ndarray]]:
    seen: list[np.ndarray] = []

    def encode(clip: np.ndarray) -> np.ndarray:
        seen.append(clip)
        return clip.mean(axis=0)[:8] * 2.0  # a deterministic stand-in for the style encoder

    return StyleBank(encode), seen


def test_add_encodes_once_and_caches() -> None:
    bank, seen = _bank()
    clip = np.arange(64 * 5, dtype=np.float32).reshape(5, 64)
    code = bank.add("happy", clip)
    assert len(seen) == 1 and bank.encode_calls == 1
    for _ in range(100):
        assert bank.get("happy") is code  # no re-encoding per frame
    assert len(seen) == 1
    assert bank.names() == ["happy"] and "happy" in bank
    with pytest.raises(ValueError):
        code[0] = 1.0  # cached codes are read-only


def test_blend_and_intensity() -> None:
    bank, _ = _bank()
    bank.add_code("neutral", np.zeros(8))
    bank.add_code("a", np.full(8, 2.0))
    bank.add_code("b", np.full(8, 4.0))
    np.testing.assert_allclose(bank.blend("a", "b", 0.25), np.full(8, 2.5))
    np.testing.assert_array_equal(bank.blend("a", "b", 0.0), bank.get("a"))
    np.testing.assert_allclose(bank.intensity("b", 0.5), np.full(8, 2.0))
    np.testing.assert_allclose(bank.intensity("b", 0.0), bank.get("neutral"))
    np.testing.assert_allclose(bank.intensity("b", 1.5), np.full(8, 6.0))
    with pytest.raises(ValueError):
        bank.intensity("b", 2.5)
    with pytest.raises(ValueError):
        bank.blend("a", "b", 1.5)


def test_errors_are_clear() -> None:
    bank, _ = _bank()
    bank.add_code("a", np.zeros(8))
    with pytest.raises(StyleError, match="unknown style 'zzz'"):
        bank.get("zzz")
    with pytest.raises(StyleError, match="NaN"):
        bank.add("bad", np.full((4, 64), np.nan, np.float32))
    with pytest.raises(StyleError, match=r"\(T, 64\)"):
        bank.add("bad", np.zeros((4, 63), np.float32))
    with pytest.raises(StyleError, match="values"):
        bank.add_code("c", np.zeros(9))
    with pytest.raises(StyleError):
        bank.add_code("", np.zeros(8))


@pytest.mark.parametrize("crossfade", [0, 1, 4])
def test_switch_lands_on_the_requested_frame(crossfade: int) -> None:
    old, new = np.zeros(3, np.float32), np.ones(3, np.float32)
    sched = StyleSchedule(old, crossfade_frames=crossfade)
    assert sched.switch(new, at_frame=10) == 10
    codes = sched.codes(range(20))
    np.testing.assert_array_equal(codes[:10], np.zeros((10, 3)))  # before: untouched, bit for bit
    assert not np.array_equal(codes[10], old)  # the requested frame already moves
    n = max(1, crossfade)
    np.testing.assert_allclose(codes[10 : 10 + n, 0], np.arange(1, n + 1) / n, rtol=1e-6)
    np.testing.assert_array_equal(codes[10 + n - 1 :], np.ones((10 - n + 1, 3)))
    assert sched.is_constant(0, 9) and sched.is_constant(10 + n, 19)
    assert not sched.is_constant(5, 10)


def test_switch_during_crossfade_starts_from_the_blend_and_newest_wins() -> None:
    a, b, c = (np.full(2, v, np.float32) for v in (0.0, 8.0, -8.0))
    sched = StyleSchedule(a, crossfade_frames=4)
    sched.switch(b, 10)
    mid = sched.code_at(11)  # halfway to b
    np.testing.assert_allclose(mid, [4.0, 4.0])
    sched.switch(c, 12)  # interrupts the fade
    np.testing.assert_allclose(sched.code_at(12), mid * 0.75 + c * 0.25)
    np.testing.assert_array_equal(sched.code_at(15), c)
    sched.switch(b, 30)
    sched.switch(a, 20)  # replaces the later switch
    np.testing.assert_array_equal(sched.code_at(40), a)
    sched.prune(40)
    np.testing.assert_array_equal(sched.code_at(41), a)
    assert sched._switches == []


def test_mix_of_styles_with_plus() -> None:
    bank, _ = _bank()
    bank.add_code("neutral", np.zeros(8))
    bank.add_code("a", np.full(8, 2.0))
    bank.add_code("b", np.full(8, 4.0))
    assert "a+b" in bank and "a + b" in bank and "a+zzz" not in bank and "zzz" not in bank
    np.testing.assert_allclose(bank.get("a+b"), np.full(8, 3.0))
    np.testing.assert_allclose(bank.get("a+b+neutral"), np.full(8, 2.0))
    np.testing.assert_allclose(bank.intensity("a+b", 2.0), np.full(8, 6.0))  # intensity works on mixes
    assert bank.names() == ["a", "b", "neutral"]  # a mix is computed, not stored
    with pytest.raises(StyleError, match="unknown style 'zzz'"):
        bank.get("a+zzz")
    with pytest.raises(StyleError, match="mix"):
        bank.add_code("a+b", np.zeros(8))  # '+' is reserved for mixes


def test_styled_packs_code_neutral_and_intensity() -> None:
    bank, _ = _bank()
    bank.add_code("neutral", np.zeros(8))
    bank.add_code("b", np.full(8, 4.0))
    np.testing.assert_array_equal(bank.styled("b", 1.5, "code"), bank.intensity("b", 1.5))
    packed = bank.styled("b", 1.5)  # hybrid: [code, neutral, k]
    assert packed.shape == (17,) and packed[-1] == np.float32(1.5)
    np.testing.assert_array_equal(packed[:8], bank.get("b"))
    np.testing.assert_array_equal(packed[8:16], bank.get("neutral"))
    with pytest.raises(ValueError):
        bank.styled("b", 2.5)
    with pytest.raises(StyleError):
        bank.styled("zzz", 1.0)


def test_rest_expression_is_the_styles_silence_or_the_neutral_one_with_the_styles_lips() -> None:
    from engine.stylebank import rest_expression

    bank, _ = _bank()
    bank.add_code("neutral", np.zeros(8))
    bank.add_code("b", np.full(8, 4.0))
    rng = np.random.default_rng(3)
    lift = rng.normal(size=(bank.styled("b", 2.0).size, 64)).astype(np.float32)

    def idle(code: np.ndarray) -> np.ndarray:  # a linear stand-in for the decoder's silence
        return (np.asarray(code, np.float32).reshape(-1) @ lift).astype(np.float32)

    style_idle, neutral_idle = idle(bank.styled("b", 2.0)), idle(bank.styled("neutral", 1.0))
    np.testing.assert_allclose(rest_expression(bank, idle, "b", 2.0, "hybrid", "style"), style_idle)
    np.testing.assert_allclose(rest_expression(bank, idle, "b", 2.0, "hybrid", "neutral"), neutral_idle)
    g = rng.normal(size=(64, 3))
    rest = rest_expression(bank, idle, "b", 2.0, "hybrid", "neutral", g)
    # the style's silence opens the lips by nothing relative to the rest...
    np.testing.assert_allclose(g.T @ (style_idle - rest), 0.0, atol=1e-3)
    # ...and the rest differs from the neutral silence only along the lip directions
    coef, *_ = np.linalg.lstsq(g, rest - neutral_idle, rcond=None)
    np.testing.assert_allclose(g @ coef, rest - neutral_idle, atol=1e-3)
    assert np.linalg.norm(style_idle - rest) > 0.5 * np.linalg.norm(style_idle - neutral_idle)  # the pose shows


@pytest.mark.parametrize("keep", [0.0, 0.25, 1.0])
def test_rest_expression_keeps_a_share_of_the_styles_eyelid_closure(keep: float) -> None:
    """Eyelids like lips, but only in part: the style's silence moves the lid gaps by ``keep`` × its move from the
    neutral silence, the lips by nothing, with or without coefficient spreads."""
    from engine.stylebank import rest_expression

    bank, _ = _bank()
    bank.add_code("neutral", np.zeros(8))
    bank.add_code("b", np.full(8, 4.0))
    rng = np.random.default_rng(5)
    lift = rng.normal(size=(bank.styled("b", 1.0).size, 64)).astype(np.float32)

    def idle(code: np.ndarray) -> np.ndarray:
        return (np.asarray(code, np.float32).reshape(-1) @ lift).astype(np.float32)

    s, n = idle(bank.styled("b", 1.0)), idle(bank.styled("neutral", 1.0))
    lips, lids = rng.normal(size=(64, 3)), rng.normal(size=(64, 4))
    spread = rng.uniform(0.2, 3.0, size=64)
    for sp in (None, spread):
        rest = rest_expression(bank, idle, "b", 1.0, "hybrid", "neutral", lips, lids, keep, sp)
        np.testing.assert_allclose(lips.T @ (s - rest), 0.0, atol=1e-3)
        moved = lids.T @ (s - n)
        np.testing.assert_allclose(lids.T @ (s - rest), keep * moved, atol=1e-3 * np.abs(moved).max())
    # with spreads the rest moves those units: narrow coefficients little (the renderer clamps them early)
    w = (rest - n) / spread**2
    coef, *_ = np.linalg.lstsq(np.concatenate([lips, lids], 1), w, rcond=None)
    np.testing.assert_allclose(np.concatenate([lips, lids], 1) @ coef, w, atol=1e-3 * np.abs(w).max())
