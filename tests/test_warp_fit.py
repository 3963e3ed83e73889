"""The pieces of the expression → landmark fit (engine/landmark_fit.py), on synthetic data with known answers."""

from __future__ import annotations

import numpy as np

from engine.landmark_fit import (
    STABLE,
    Clip,
    align,
    build_design,
    held_out_scores,
    mouth_opening,
    paired,
    procrustes_mean,
    ridge,
    similarity_fit,
)


def _rot(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_similarity_fit_recovers_transforms_vectorised() -> None:
    rng = np.random.default_rng(0)
    src = rng.standard_normal((5, 13, 2))
    A = np.stack([s * _rot(a) for s, a in zip([0.5, 1, 2, 3, 4], [0.1, -0.4, 1.0, 2.0, -2.5], strict=True)])
    t = rng.standard_normal((5, 2))
    dst = np.einsum("fij,fkj->fki", A, src) + t[:, None]
    A_hat, t_hat = similarity_fit(src, dst)
    np.testing.assert_allclose(A_hat, A, atol=1e-9)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)


def test_alignment_removes_pose_but_keeps_expression() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((68, 2))
    frames = np.repeat(base[None], 4, axis=0)
    frames[1, 62:68, 1] += 0.3  # an "expression": only non-stable points move
    posed = np.stack([s * f @ _rot(a).T + t for f, s, a, t in
                      zip(frames, [1, 2, 0.5, 3], [0, 0.3, -0.2, 1.0], rng.standard_normal((4, 2)), strict=True)])
    ref = procrustes_mean(posed)
    out = align(posed, ref)
    assert np.abs(out[0, STABLE] - out[2, STABLE]).max() < 1e-6  # same shape, different poses → same result
    assert abs(np.linalg.norm(ref[45] - ref[36]) - 1.0) < 1e-9  # inter-ocular units
    assert mouth_opening(out[1:2])[0] > mouth_opening(out[0:1])[0] + 0.05  # the lip motion survives alignment


def test_ridge_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 6))
    w = rng.standard_normal((6, 4))
    y = x @ w + 0.01 * rng.standard_normal((2000, 4))
    np.testing.assert_allclose(ridge(x, y, 1e-6), w, atol=0.01)
    assert np.abs(ridge(x, y, 10.0)).sum() < np.abs(w).sum()  # shrinkage


def test_pairing_offset_and_held_out_scores() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 136)) * 0.05
    clips = []
    for k in range(4):
        exp = rng.standard_normal((60, 64)).astype(np.float32)
        coeff = np.zeros((60, 257), np.float32)
        coeff[:, 80:144] = exp
        shapes = (exp @ w).reshape(60, 68, 2) + k  # per-clip identity offset, removed by centring
        lmk = np.concatenate([np.full((2, 68, 2), np.nan), shapes])  # video frame i + 2 ↔ row i
        clip = Clip(f"c{k}", "source", lmk.astype(np.float32), coeff)
        clip.aligned = lmk
        clips.append(clip)
    _, _, y = paired(clips[0], 2)
    np.testing.assert_allclose(y.reshape(60, -1), clips[0].coeff[:, 80:144] @ w, atol=1e-4)
    design = build_design(clips, {"source": 2}, quadratic=False)
    good = held_out_scores(design, clips, 1e-4)
    assert good["all_r2"] > 0.99
    bad = held_out_scores(build_design(clips, {"source": 3}, quadratic=False), clips, 1e-4)
    assert bad["all_r2"] < 0.2  # a one-frame misalignment destroys the fit
