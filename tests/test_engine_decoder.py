"""engine.decoder.ExpressionDecoder on a real (small, random-weight) StyleTalk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.decoder import ExpressionDecoder
from models.phonemes import SIL, phoneme_windows
from tests.engine_helpers import offline_decode

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dec() -> ExpressionDecoder:
    return ExpressionDecoder.random(seed=0, small=True, max_batch=4)


def test_incremental_decoding_equals_one_offline_pass(dec: ExpressionDecoder) -> None:
    rng = np.random.default_rng(0)
    windows = phoneme_windows(rng.integers(0, 41, 23))
    style = dec.encode_style(rng.standard_normal((70, 64)).astype(np.float32))
    ref = offline_decode(dec, windows, style)
    for step in (1, 3, 7):  # one frame at a time (B*N = 1 works), small and over-max batches
        out = np.concatenate([dec.decode(windows[i : i + step], style) for i in range(0, 23, step)])
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_per_frame_styles_match_separate_calls(dec: ExpressionDecoder) -> None:
    rng = np.random.default_rng(1)
    windows = phoneme_windows(rng.integers(0, 41, 6))
    styles = rng.standard_normal((6, dec.style_dim)).astype(np.float32)
    out = dec.decode(windows, styles)
    for i in range(6):
        np.testing.assert_allclose(out[i], offline_decode(dec, windows[i : i + 1], styles[i])[0], atol=1e-5)
    # the style matters: a different code changes the expression
    assert np.abs(out[0] - dec.decode(windows[:1], styles[1])[0]).max() > 1e-3


def test_silent_windows_come_from_the_idle_cache(dec: ExpressionDecoder) -> None:
    style = np.random.default_rng(2).standard_normal(dec.style_dim).astype(np.float32)
    windows = np.full((5, 11), SIL, np.int64)
    windows[2, 7] = 3  # one window hears a phoneme
    before = dec.frames_from_cache
    out = dec.decode(windows, style)
    assert dec.frames_from_cache - before == 4
    ref = offline_decode(dec, windows, style)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[4])  # rest is exactly constant: no jitter
    np.testing.assert_array_equal(dec.idle(style), out[0])


def test_style_encoding_pads_with_mask(dec: ExpressionDecoder) -> None:
    clip = np.random.default_rng(3).standard_normal((40, 64)).astype(np.float32)
    code = dec.encode_style(clip)
    with torch.inference_mode():
        unpadded = dec.model.encode_style(torch.from_numpy(clip)[None])[0].numpy()
    assert code.shape == (dec.style_dim,)
    np.testing.assert_allclose(code, unpadded, atol=1e-5)  # padding is masked out


def test_unavailable_accelerator_falls_back_to_eager_with_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: cudagraph would really be used")
    dec = ExpressionDecoder.random(seed=0, small=True, accelerator="cudagraph")
    assert dec.accelerator == "eager"
    assert "CUDA" in (dec.fallback_reason or "")
    windows = phoneme_windows([1, 2, 3])
    assert dec.decode(windows, np.zeros(dec.style_dim, np.float32)).shape == (3, 64)


def test_bad_shapes_are_rejected(dec: ExpressionDecoder) -> None:
    with pytest.raises(ValueError):
        dec.decode(np.zeros((2, 10), np.int64), np.zeros(dec.style_dim, np.float32))
    with pytest.raises(ValueError):
        dec.decode(np.zeros((2, 11), np.int64), np.zeros((3, dec.style_dim), np.float32))
    with pytest.raises(ValueError):
        ExpressionDecoder.random(accelerator="magic")
    assert dec.decode(np.zeros((0, 11), np.int64), np.zeros(dec.style_dim, np.float32)).shape == (0, 64)


def test_cached_style_mixing_never_serves_another_style(dec: ExpressionDecoder) -> None:
    rng = np.random.default_rng(9)
    windows = phoneme_windows(rng.integers(0, 41, 5))
    codes = [rng.standard_normal(dec.style_dim).astype(np.float32) for _ in range(6)]
    got = [dec.decode(windows, codes[i % 6]) for i in (0, 1, 0, 2, 3, 4, 5, 0)]  # more codes than cache slots
    assert dec._prepared_cache  # the style-only work was cached
    for g, i in zip(got, (0, 1, 0, 2, 3, 4, 5, 0), strict=True):  # against the model with plain codes: no cache
        np.testing.assert_allclose(g, offline_decode(dec, windows, codes[i % 6]), atol=1e-5)


def test_hybrid_intensity_moves_the_rest_linearly_and_keeps_code_space_motion(dec: ExpressionDecoder) -> None:
    from engine.stylebank import StyleBank

    rng = np.random.default_rng(5)
    bank = StyleBank(dec.encode_style)
    bank.add("neutral", rng.standard_normal((40, 64)).astype(np.float32))
    bank.add("s", rng.standard_normal((40, 64)).astype(np.float32) + 1.0)
    windows = phoneme_windows(rng.integers(0, 41, 9))
    # the ends of the line are bit-identical to the plain codes
    np.testing.assert_array_equal(dec.decode(windows, bank.styled("s", 1.0)), dec.decode(windows, bank.get("s")))
    np.testing.assert_array_equal(dec.decode(windows, bank.styled("s", 0.0)),
                                  dec.decode(windows, bank.get("neutral")))
    idle_n, idle_s = dec.idle(bank.get("neutral")), dec.idle(bank.get("s"))
    for k in (0.5, 2.0):
        packed = bank.styled("s", k)
        out = dec.decode(windows, packed)
        line = dec.decode(windows, bank.intensity("s", k))  # the paper's code-space line
        # the rest is linear in output space ...
        np.testing.assert_allclose(dec.idle(packed), idle_n + k * (idle_s - idle_n), atol=1e-5)
        # ... and the motion around it is the code line's (differences between frames are the same)
        np.testing.assert_allclose(out - out[:1], line - line[:1], atol=1e-5)
        np.testing.assert_allclose(out[0] - line[0], dec.idle(packed) - dec.idle(bank.intensity("s", k)),
                                   atol=1e-5)
        # a crossfade (one packed vector per frame) decodes like separate calls
        per_frame = np.stack([bank.styled("s", k), bank.styled("s", 1.0), bank.styled("neutral", 1.0)] * 3)
        sep = np.concatenate([dec.decode(windows[i : i + 1], per_frame[i]) for i in range(9)])
        np.testing.assert_allclose(dec.decode(windows, per_frame), sep, atol=1e-5)
    with pytest.raises(ValueError):
        bank.styled("s", 1.0, space="output")
