"""The expression inverse (models/expression_inverse.py) on real sample videos, scored against their .mat files.

The clips scored here are held out: the asset ships variants of the inverse fitted without them (the map, the
prior and the noise statistics; see models/assets/exp_inverse.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.inverse_fit import FitClip, compare
from engine.style_extract import video_landmarks
from models.clips import load_style_clip
from models.expression_inverse import (
    EXP_DIM,
    ExpressionInverse,
    InverseParams,
    mouth_opening_from_exp,
    rest_frames,
)

HELD_OUT = [("source", "KristiNoem"), ("style", "sadgirl_clip1")]


@pytest.fixture(scope="module")
def clips(samples_dir):
    """{name: (group, landmarks (F, 68, 2) from the extraction's own tracker, coeff (T, 257))}."""
    import scipy.io

    out = {}
    for group, name in HELD_OUT:
        lmk, fps, _, _ = video_landmarks(samples_dir / group / "video" / f"{name}.mp4")
        assert fps == pytest.approx(30.0)
        coeff = scipy.io.loadmat(str(samples_dir / group / "3dmm" / f"{name}.mat"))["coeff"].astype(np.float32)
        assert not np.isnan(lmk).any(), f"{name}: the face is found on every frame"
        out[name] = (group, lmk, coeff)
    return out


@pytest.mark.parametrize("solver", ["solve", "solve_clip"])
@pytest.mark.parametrize("name", [n for _, n in HELD_OUT])
def test_held_out_clip_motion_matches_its_3dmm_fit(clips, name, solver) -> None:
    """Frame by frame (``solve``: the avatar's rest) and whole clip at two levels (``solve_clip``: style
    extraction) both follow the held-out clip's 3DMM motion."""
    group, lmk, coeff = clips[name]
    inv = ExpressionInverse(InverseParams.load(heldout_clip=name))
    res = getattr(inv, solver)(lmk)
    assert res.exp.shape == (len(lmk), EXP_DIM) and res.exp.dtype == np.float32
    score = compare(res.exp.astype(np.float64), FitClip(name, group, lmk, coeff), inv.params.exp_weights)
    # issue 18's targets are on the mean over clips; frame by frame these two score mouth-opening r 0.95 / 0.96,
    # lower r 0.72 / 0.60
    assert score["mouth_opening_r"] >= 0.85, score
    assert score["lower_r"] >= 0.5, score
    assert np.median(res.residual) < 0.05  # inter-ocular units: the map explains the shapes


def test_shipped_map_differs_from_held_out_variant() -> None:
    full, held = InverseParams.load(), InverseParams.load(heldout_clip="KristiNoem")
    assert not np.allclose(full.prior_cov, held.prior_cov)
    with pytest.raises(KeyError, match="no held-out variant"):
        InverseParams.load(heldout_clip="nobody")


def test_solution_ignores_head_similarity(clips) -> None:
    _, lmk, _ = clips["sadgirl_clip1"]
    inv = ExpressionInverse.from_assets()
    a = 0.3
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * 2.5
    moved = lmk @ rot.T + np.array([400.0, -120.0])
    np.testing.assert_allclose(inv.solve(moved).exp, inv.solve(lmk).exp, atol=1e-4)


def test_single_photo_and_input_checks(clips) -> None:
    _, lmk, _ = clips["KristiNoem"]
    inv = ExpressionInverse.from_assets()
    res = inv.solve(lmk[10], smooth=0)  # the avatar-rest use: one (68, 2) face
    assert res.exp.shape == (1, EXP_DIM) and np.isfinite(res.exp).all()
    np.testing.assert_allclose(res.exp[0], inv.solve(lmk[10:11], smooth=0).exp[0])
    with pytest.raises(ValueError, match="NaN"):
        inv.solve(np.full((2, 68, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(T, 68, 2\)"):
        inv.solve(np.zeros((3, 5, 2)))


def test_open_mouth_solves_to_more_opening_than_closed(clips) -> None:
    _, lmk, _ = clips["KristiNoem"]
    inv = ExpressionInverse.from_assets()
    res = inv.solve(lmk, smooth=0)
    gap_lmk = (res.aligned[:, [67, 66, 65], 1] - res.aligned[:, [61, 62, 63], 1]).mean(1)
    gap_exp = mouth_opening_from_exp(res.exp, inv.params.exp_weights)
    top, low = np.argsort(gap_lmk)[-20:], np.argsort(gap_lmk)[:20]
    assert gap_exp[top].mean() > gap_exp[low].mean() + 0.05


def test_neutral_reference_places_rest_on_model_neutral(clips, samples_dir) -> None:
    _, lmk, _ = clips["KristiNoem"]
    inv = ExpressionInverse.from_assets()
    naive = inv.solve(lmk)
    rest = rest_frames(naive.aligned)
    assert 0 < len(rest) < len(lmk) // 5
    ref = inv.solve(lmk, neutral=lmk[rest])
    # the rest frames land on the model's neutral; motion (the frame-to-frame change) is untouched
    np.testing.assert_allclose(ref.exp[rest].mean(0), inv.params.neutral_exp, atol=0.05)
    np.testing.assert_allclose(np.diff(ref.exp, axis=0), np.diff(naive.exp, axis=0), atol=1e-4)
    half = inv.solve(lmk, neutral=lmk[rest], static_weight=1.0)
    np.testing.assert_allclose(half.exp, naive.exp, atol=1e-5)
    # and the clip as a whole stays within the range of real 3DMM clips
    mat = load_style_clip(samples_dir / "source" / "3dmm" / "KristiNoem.mat")
    assert np.abs(ref.exp).max() < 4 * np.abs(mat).max()


def test_clip_solve_reads_a_face_shape_change_as_shape_not_expression(clips) -> None:
    """The same motion on a face whose shape differs along the sample speakers' main face-shape direction: the
    clip solve moves the clip's average expression less than the frame-by-frame solve does (whose noise term
    also holds face shapes, so the margin is modest: ~20 %), and the gain only moves the average (the motion is
    the same at every gain)."""
    _, lmk, _ = clips["KristiNoem"]
    inv = ExpressionInverse(InverseParams.load(heldout_clip="KristiNoem"))
    base = inv.solve(lmk).aligned.astype(np.float64)
    _, vecs = np.linalg.eigh(inv.params.shape_cov)
    shift = 0.05 * vecs[:, -1].reshape(68, 2)  # 5 % of the inter-ocular distance along the main shape direction
    other = base + shift
    moved_clip = np.abs(inv.solve_clip(other, static_gain=1.0).exp.mean(0)
                        - inv.solve_clip(base, static_gain=1.0).exp.mean(0)).sum()
    moved_frame = np.abs(inv.solve(other).exp.mean(0) - inv.solve(base).exp.mean(0)).sum()
    assert moved_clip < 0.9 * moved_frame, (moved_clip, moved_frame)
    g1, g2 = inv.solve_clip(base, static_gain=1.0).exp, inv.solve_clip(base, static_gain=2.0).exp
    step = g2 - g1
    np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape), atol=1e-4)
    np.testing.assert_allclose(step[0], g1.mean(0) - inv.params.clip_mean[:EXP_DIM], atol=1e-4)
