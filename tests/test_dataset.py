"""Training data: phoneme/coefficient alignment, splits without leakage, batch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from models.dataset import (
    PHONEME_OFFSET,
    STYLE_CHUNK,
    DataSplit,
    Sampler,
    StyleClip,
    evaluation_items,
    load_source_clip,
    make_split,
    pad_reference,
    split_style_clip,
    style_label,
)
from models.phonemes import SIL, WIN_SIZE


@pytest.fixture(scope="module")
def data_dir(samples_dir: Path) -> Path:
    return samples_dir


@pytest.fixture(scope="module")
def split(data_dir: Path) -> DataSplit:
    return make_split(data_dir)


@pytest.mark.parametrize(
    "name,label",
    [
        ("feifeili_clip2_short", "feifeili"),
        ("andrew_clip_1", "andrew"),
        ("KristiNoem", "KristiNoem"),
        ("furious_talk2_clip3", "furious_talk2"),
        ("sad_emotion_clip1", "sad_emotion"),
        ("surprisegirl_clip2", "surprisegirl"),
    ],
)
def test_style_label(name: str, label: str) -> None:
    assert style_label(name) == label


def test_source_alignment_against_raw_files(data_dir: Path) -> None:
    name = "feifeili_clip3"
    coeff = loadmat(str(data_dir / "source" / "3dmm" / f"{name}.mat"))["coeff"]
    seq = json.loads((data_dir / "source" / "phoneme" / f"{name}_seq.json").read_text())
    clip = load_source_clip(data_dir, name)
    t = coeff.shape[0]
    assert len(seq) == t  # phoneme rows and coefficient rows have the same count ...
    assert clip.exp.shape == (t - PHONEME_OFFSET, 64)  # ... but are offset, so two rows pair with nothing
    assert clip.windows.shape == (t - PHONEME_OFFSET, 2 * WIN_SIZE + 1)
    np.testing.assert_array_equal(clip.exp, coeff[: t - PHONEME_OFFSET, 80:144].astype(np.float32))
    for i in (0, 7, t - PHONEME_OFFSET - 1):
        centre = i + PHONEME_OFFSET
        expected = [seq[j] if 0 <= j < t else SIL for j in range(centre - WIN_SIZE, centre + WIN_SIZE + 1)]
        assert clip.windows[i].tolist() == expected
    zero = load_source_clip(data_dir, name, offset=0)
    assert len(zero) == t and zero.phonemes.tolist() == seq


def test_split_has_no_leakage(split: DataSplit) -> None:
    train = {s.name: s for s in split.train_sources}
    assert "andrew_clip_2" not in train and [c.name for c in split.val_clips] == ["andrew_clip_2"]
    for tail in split.val_tails:
        head = train[tail.name]
        assert head.start == 0
        assert tail.start - (head.start + len(head)) == WIN_SIZE  # gap: no training window sees a target
        assert tail.start + len(tail) == head.start + len(head) + WIN_SIZE + len(tail)
        assert 0.15 < len(tail) / (len(head) + len(tail) + WIN_SIZE) < 0.25
    assert len(split.styles) == 17 and split.styles == sorted(split.styles)
    heads = {s.name: s for s in split.style_train}
    for chunk in split.style_val_chunks:
        assert 0 < len(chunk) < STYLE_CHUNK * 3 // 2
        assert chunk.start >= heads[chunk.name].start + len(heads[chunk.name])


def test_split_style_clip_merges_short_remainder() -> None:
    clip = StyleClip("x_clip1", "x", np.zeros((300, 64), np.float32))
    head, chunks = split_style_clip(clip, 0.3)
    assert len(head) == 210 and [len(c) for c in chunks] == [90]  # 64 + 26: remainder < 32 merged
    head, chunks = split_style_clip(StyleClip("y", "y", np.zeros((500, 64), np.float32)), 0.3)
    assert [len(c) for c in chunks] == [64, 86]
    assert sum(len(c) for c in chunks) + len(head) == 500


def test_evaluation_references_are_disjoint(split: DataSplit) -> None:
    items = evaluation_items(split)
    assert {it.kind for it in items} == {"tail", "clip"}
    for it in items:
        assert it.windows.shape == (len(it.target), 11) and it.target.shape[1] == 64
        assert 0 < len(it.reference) <= 256
        # the reference frames never reappear among the evaluated frames
        ref_rows = {r.tobytes() for r in it.reference}
        assert not any(r.tobytes() in ref_rows for r in it.target)
    clip = next(it for it in items if it.kind == "clip")
    assert len(clip.target) == len(split.val_clips[0]) - 256 - WIN_SIZE


def test_pad_reference() -> None:
    exp = np.arange(10 * 64, dtype=np.float32).reshape(10, 64)
    clip, mask = pad_reference(exp)
    assert clip.shape == (256, 64) and mask.shape == (256,)
    np.testing.assert_array_equal(clip[:10], exp)
    assert not mask[:10].any() and mask[10:].all() and not clip[10:].any()
    long_clip, long_mask = pad_reference(np.ones((300, 64), np.float32))
    assert long_clip.shape == (256, 64) and not long_mask.any()


def test_sampler_batches(split: DataSplit) -> None:
    sampler = Sampler(split, seq_len=32, ref_min=32)
    b = sampler.batch(4, np.random.default_rng(3), cross_style=2)
    assert b.windows.shape == (6, 32, 11) and b.target.shape == (6, 32, 64)
    assert b.reference.shape == (6, 256, 64) and b.reference_mask.shape == (6, 256)
    assert b.has_target.tolist() == [True] * 4 + [False] * 2
    assert not b.target[4:].any()
    ids = b.style_id.tolist()
    assert ids[0::2] == ids[1::2]  # same-style pairs: each reference has a triplet positive
    lengths = (~b.reference_mask).sum(1)
    assert ((lengths >= 32) & (lengths <= 256)).all()
    cross_styles = {split.styles[i] for i in ids[4:]}
    assert cross_styles <= {s.style for s in split.style_train}
    # every supervised item is a real (windows, expression) crop of a training segment of its style
    for k in range(4):
        win, tgt = b.windows[k].numpy(), b.target[k].numpy()
        found = False
        for seg in split.train_sources:
            if seg.style != split.styles[ids[k]]:
                continue
            for start in range(len(seg) - 31):
                if np.array_equal(seg.exp[start : start + 32], tgt):
                    found = np.array_equal(seg.windows[start : start + 32], win)
                    break
            if found:
                break
        assert found, f"item {k} is not an aligned crop of a training segment"
    # reproducible from the generator alone
    again = sampler.batch(4, np.random.default_rng(3), cross_style=2)
    assert all(
        (getattr(b, f) == getattr(again, f)).all()
        for f in ("windows", "target", "reference", "reference_mask", "style_id")
    )
    with pytest.raises(ValueError):
        sampler.batch(3, np.random.default_rng(0))


def test_real_sequences(split: DataSplit) -> None:
    real = Sampler(split, seq_len=32).real_sequences(16, np.random.default_rng(0))
    assert real.seq.shape == (16, 32, 64) and real.style_id.shape == (16,)
    assert real.seq.abs().sum(dim=(1, 2)).min() > 0  # real frames, not padding


def _find_shift(split: DataSplit, target: np.ndarray) -> np.ndarray | None:
    """The constant offset by which ``target`` differs from some training crop (None if there is none)."""
    n = len(target)
    for seg in split.train_sources:
        crops = np.lib.stride_tricks.sliding_window_view(seg.exp, n, axis=0).transpose(0, 2, 1)  # (S, n, 64)
        diff = target[None] - crops
        const = np.ptp(diff, axis=1).max(axis=1) < 1e-4  # same difference on every frame
        if const.any():
            return diff[int(np.argmax(const)), 0]
    return None


def test_offset_augmentation_shifts_reference_and_target_alike(split: DataSplit) -> None:
    sampler = Sampler(split, seq_len=32, offset_scale=1.0, offset_prob=1.0)
    assert sampler.offset_std.shape == (64,) and (sampler.offset_std > 0).all()
    draws = np.stack([sampler.offset(np.random.default_rng(i)) for i in range(400)])
    np.testing.assert_allclose(draws.std(0).mean(), sampler.offset_std.mean(), rtol=0.15)
    b = sampler.batch(2, np.random.default_rng(7))
    shifts = [_find_shift(split, b.target[k].numpy()) for k in range(2)]
    assert all(s is not None and np.abs(s).max() > 1e-2 for s in shifts)
    np.testing.assert_allclose(shifts[0], shifts[1], atol=1e-4)  # a pair shares its offset
    # the padded part of the reference stays zero (masked frames are zero vectors, as in the reference code)
    assert not b.reference[b.reference_mask].any()
    off = Sampler(split, seq_len=32, offset_scale=1.0, offset_prob=0.0)
    assert not off.offset(np.random.default_rng(0)).any()
