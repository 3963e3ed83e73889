"""Training for styles that show: the style residual path, the style statistics loss, recognizer labels,
fine-tuning from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import CheckpointError
from models.dataset import Sampler, make_split
from models.phonemes import SIL, phoneme_windows
from models.styletalk import StyleTalk, StyleTalkConfig
from models.train import TrainConfig, Trainer, load_recognized_labels, style_stat_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = dict(d_model=32, nhead=2, dim_feedforward=48, num_content_layers=1, num_style_layers=1,
             num_decoder_layers=1, ph_embed_dim=8, dynamic_k=2)
TINY = dict(d_model=32, nhead=2, dim_feedforward=48, layers=1, ph_embed_dim=8, dynamic_k=2, batch_size=4,
            cross_style=2, seq_len=16, ref_min=16, real_batch=4, progress=False)


def test_style_residual_is_off_by_default_and_linear_in_the_code() -> None:
    plain = StyleTalk(StyleTalkConfig(**SMALL))
    assert plain.decoder.style_residual is None
    assert not any("style_residual" in k for k in plain.state_dict())  # official layout untouched
    torch.manual_seed(0)
    model = StyleTalk(StyleTalkConfig(**SMALL, style_residual=True)).eval()
    with pytest.raises(ValueError, match="official"):
        model.cfg.to_yacs()
    content = model.encode_content(torch.randint(0, 41, (1, 7, 11)))
    a, b = torch.randn(1, 32), torch.randn(1, 32)
    with torch.no_grad():
        base_a, base_b = model.decode(content, a), model.decode(content, b)
        torch.nn.init.normal_(model.decoder.style_residual.weight)
        torch.nn.init.normal_(model.decoder.style_residual.bias)
        out_a, out_b = model.decode(content, a), model.decode(content, b)
    # zero-initialised: a new path does not change a model until trained
    shift = model.decoder.style_residual
    torch.testing.assert_close(out_a - base_a, shift(a)[:, None].expand_as(out_a))
    torch.testing.assert_close((out_a - base_a) - (out_b - base_b),
                               (shift.weight @ (a - b).T).T[:, None].expand_as(out_a), atol=1e-5, rtol=1e-5)


def test_style_stat_loss() -> None:
    pred = torch.zeros(2, 8, 64)
    pred[:, ::2] = 2.0  # mean 1, std ~1.07 per coefficient
    mean_err, std_err = style_stat_loss(pred, torch.ones(2, 64), pred.std(1))
    assert float(mean_err) == pytest.approx(0.0) and float(std_err) == pytest.approx(0.0)
    mean_err, std_err = style_stat_loss(pred, torch.zeros(2, 64), torch.zeros(2, 64))
    assert float(mean_err) == pytest.approx(1.0) and float(std_err) == pytest.approx(float(pred.std(1).mean()))


def test_recognized_labels_are_aligned_and_sampled(samples_dir: Path, tmp_path: Path) -> None:
    seq = json.loads((samples_dir / "source" / "phoneme" / "KristiNoem_seq.json").read_text())
    fake = np.roll(np.asarray(seq), 3)  # a recognizer 3 frames late
    split = make_split(samples_dir, recognized={"KristiNoem": fake})
    seg = next(s for s in split.train_sources if s.name == "KristiNoem")
    other = next(s for s in split.train_sources if s.name != "KristiNoem")
    assert other.recognized is None and seg.recognized is not None
    assert seg.recognized.shape == seg.windows.shape
    np.testing.assert_array_equal(seg.recognized[10:, 5], seg.windows[7:-3, 5])  # same frames, 3 late
    sampler = Sampler(split, seq_len=16, ref_min=16, recognized_prob=1.0)
    rng = np.random.default_rng(0)
    seen_recognized = False
    for _ in range(20):
        b = sampler.batch(2, rng)
        for w in b.windows.numpy():
            if any((w == seg.recognized[i : i + 16]).all() for i in range(len(seg) - 15)):
                seen_recognized = True
    assert seen_recognized
    ref = np.concatenate([np.zeros((16, 64)), np.ones((16, 64))]).astype(np.float32)
    mean, std = sampler.window_stats(ref)
    np.testing.assert_allclose(mean, 0.5)
    np.testing.assert_allclose(std, 0.0)  # per-window spread, not the spread of the whole reference
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="labels"):
        load_recognized_labels(bad)
    assert len(phoneme_windows([SIL])) == 1


def test_trainer_uses_style_losses_and_fine_tunes_from_a_checkpoint(samples_dir: Path, tmp_path: Path) -> None:
    split = make_split(samples_dir)
    base = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), **TINY), split)
    base.save_model(tmp_path / "base.pt", half=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "b"), init=str(tmp_path / "base.pt"), style_residual=True,
                      w_stat_mean=1.0, w_stat_std=1.0, select_style=True, **TINY)
    tuned = Trainer(cfg, split)
    for k, v in base.model.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[k], v)
    logs = tuned.train_step()
    assert np.isfinite(logs["stat_mean"]) and np.isfinite(logs["stat_std"])
    assert float(tuned.model.decoder.style_residual.weight.detach().abs().sum()) > 0  # the new path learns
    metrics = tuned.validate()
    assert np.isfinite(metrics["style_offset_l1"])
    wrong = TrainConfig(out_dir=str(tmp_path / "c"), init=str(tmp_path / "base.pt"), **{**TINY, "d_model": 48})
    with pytest.raises(CheckpointError, match="network size"):
        Trainer(wrong, split)


def test_intensity_augmentation_moves_code_and_targets_from_neutral(samples_dir: Path, tmp_path: Path) -> None:
    split = make_split(samples_dir)
    cfg = TrainConfig(out_dir=str(tmp_path / "r"), intensity_aug=1.0, w_stat_mean=1.0, w_stat_std=1.0, **TINY)
    trainer = Trainer(cfg, split)
    style = torch.randn(6, 32)
    has = torch.tensor([True, True, True, True, False, False])
    ref_mean, ref_std = torch.randn(6, 64), torch.rand(6, 64)
    code, mean, std = trainer._intensity_items(style, has, ref_mean, ref_std, np.random.default_rng(1))
    torch.testing.assert_close(code[:4], style[:4])  # supervised items keep their code and targets
    torch.testing.assert_close(mean[:4], ref_mean[:4])
    neutral = style[:4].mean(0)
    for i in (4, 5):
        k = float(((code[i] - neutral) / (style[i] - neutral)).mean())
        assert 0.5 <= k <= 2.0
        torch.testing.assert_close(code[i], neutral + k * (style[i] - neutral), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[i], trainer.neutral_mean + k * (ref_mean[i] - trainer.neutral_mean),
                                   atol=1e-5, rtol=1e-5)
        assert bool((std[i] >= 0).all())
    logs = trainer.train_step()
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["stat_mean"])
