"""The shipped default StyleTalk checkpoint and style codes (models/assets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import load_checkpoint
from models.phonemes import PHONEME_INDEX, phoneme_windows
from models.styletalk import StyleTalk
from models.train import load_style_codes

ASSETS = Path(__file__).resolve().parents[1] / "models" / "assets"
CHECKPOINT = ASSETS / "styletalk_default.pt"
CODES = ASSETS / "style_codes.npz"

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def model() -> StyleTalk:
    return StyleTalk.from_checkpoint(CHECKPOINT)


def _windows() -> torch.Tensor:
    words = "SIL SIL HH AH L OW OW SIL M AA M AA P AA P AA SIL SIL".split()
    seq = [PHONEME_INDEX[p] for p in words for _ in range(2)]  # 2 frames per phone, as in speech
    return torch.from_numpy(phoneme_windows(seq))[None]  # (1, N, 11)


def test_checkpoint_file_is_small_fp16_and_documented() -> None:
    assert CHECKPOINT.stat().st_size <= 25_000_000
    ckpt = load_checkpoint(CHECKPOINT)
    assert ckpt.kind == "styletalk"
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values() if t.is_floating_point())
    raw = torch.load(CHECKPOINT, weights_only=True)
    assert len(raw["half_keys"]) > 0  # stored as float16
    assert (ASSETS / "styletalk_default.md").is_file()
    assert "train_config" in ckpt.extra  # the command that reproduces it is recorded


def test_default_model_decodes_finite_expressions(model: StyleTalk) -> None:
    codes = load_style_codes(CODES)
    windows = _windows()
    outs = {}
    with torch.no_grad():
        content = model.encode_content(windows)
        for name in ("neutral", "happy", "furious"):
            style = torch.from_numpy(codes[name])[None]
            out = model.decode(content, style)[0]
            assert out.shape == (windows.shape[1], 64)
            assert torch.isfinite(out).all()
            outs[name] = out
        # a raw style clip gives a code of the same size, and decoding with it works too
        clip = torch.zeros(1, 256, 64)
        clip[0, :100] = outs["happy"][:1].expand(100, 64)
        mask = torch.ones(1, 256, dtype=torch.bool)
        mask[0, :100] = False
        assert torch.isfinite(model(windows, clip, mask)).all()
    # the style code matters, and the mouth moves with the phonemes
    assert (outs["happy"] - outs["furious"]).abs().mean() > 1e-3
    assert outs["neutral"][:, 0].std() > 1e-3


def test_style_codes_asset(model: StyleTalk) -> None:
    codes = load_style_codes(CODES)
    with np.load(CODES, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
    assert names == list(codes) and len(set(names)) == len(names)
    assert {"neutral", "happy", "furious", "angry", "sad", "surprised", "nice", "crooked"} <= set(names)
    for name, code in codes.items():
        assert code.dtype == np.float32 and code.shape == (model.cfg.d_model,), name
        assert np.isfinite(code).all(), name
    assert not np.allclose(codes["neutral"], codes["angry"])
