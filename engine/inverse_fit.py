"""Fit the statistics of the expression inverse (writes models/assets/exp_inverse.npz) and score it.

Run: ``.venv/bin/python -m engine.inverse_fit [--cache DIR]`` (dlib landmarks on the 25 sample clips with video
and .mat, ~4 minutes on 2 cores, cached with ``--cache``; the fit itself takes seconds).

The inverse (models/expression_inverse.py) needs, besides the forward map's expression weights: the map's
head-angle weights (fitted jointly with the expression weights by the same ridge as engine/landmark_fit.py,
dropped by the renderer, kept here as nuisance terms), the Gaussian prior over [expression, angle features]
from the sample coefficients, the per-coordinate variance the map leaves unexplained, and the expression a
rest face is read as. Every one of them is refitted without the scored clip by :func:`fit_params` for the
leave-one-clip-out scores (``--score``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.landmark_fit import ANGLES, EXP, GROUP_OFFSETS, Clip, load_clips, procrustes_mean, ridge
from models.dataset import default_data_dir
from models.expression_inverse import (
    PRIOR_PATH,
    REST_FRACTION,
    ExpressionInverse,
    InverseParams,
    align,
    mouth_opening_from_exp,
    rest_frames,
    side_features,
    smooth_time,
)
from models.styletalk import LOWER_FACE3D_INDICES, UPPER_FACE3D_INDICES

LAMBDA = 0.001  # the forward map's ridge λ (exp2lmk.md)
# residual covariance shrunk this far towards its diagonal; leave-one-clip-out (lower r, upper r, mouth-opening r):
# 1.0 (diagonal) 0.648/0.244/0.911, 0.5 0.658/0.261/0.915, 0.2 0.654/0.267/0.916, 0.05 0.644/0.274/0.914
NOISE_SHRINK = 0.2
# the face-shape covariance (solve_clip) comes from ~14 speakers' average shapes, so it is low-rank: this share of
# its diagonal keeps other directions possible (leave-one-speaker-out identification 36 % at 0.05, 28 % at 0.2)
SHAPE_SHRINK = 0.05
HELDOUT_KEPT = ("KristiNoem", "sadgirl_clip1")  # variants fitted without these clips ship for honest tests


@dataclass
class FitClip:
    """A sample clip: landmarks (all video frames) and its .mat rows paired with frames."""

    name: str
    group: str
    landmarks: np.ndarray  # (F, 68, 2) pixels, NaN without a face
    coeff: np.ndarray  # (T, 257)

    def paired(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, frames) index arrays of coefficient rows paired with face-bearing frames."""
        rows = np.arange(len(self.coeff))
        frames = rows + GROUP_OFFSETS[self.group]
        keep = (frames >= 0) & (frames < len(self.landmarks))
        rows, frames = rows[keep], frames[keep]
        ok = ~np.isnan(self.landmarks[frames]).any(axis=(1, 2))
        return rows[ok], frames[ok]


def sample_clips(cache: Path | None = None, data: Path | None = None) -> list[FitClip]:
    clips: list[Clip] = load_clips(data or default_data_dir(), cache)
    return [FitClip(c.name, c.group, c.landmarks, c.coeff) for c in clips]


def shrink(cov: np.ndarray, share: float) -> np.ndarray:
    """``cov`` with ``share`` of it replaced by its diagonal."""
    return (1.0 - share) * cov + share * np.diag(np.diag(cov))


def fit_params(clips: list[FitClip], exclude: str | Collection[str] | None = None) -> InverseParams:
    """The inverse's parameters fitted on ``clips`` minus ``exclude`` (one clip name or several: a speaker's)."""
    skip = {exclude} if isinstance(exclude, str) else set(exclude or ())
    train = [c for c in clips if c.name not in skip]
    frames_all = np.concatenate([c.landmarks[c.paired()[1]] for c in train])
    ref = procrustes_mean(frames_all)
    xs, ys, zs, yabs, rest_exp = [], [], [], [], []
    for c in train:
        rows, frames = c.paired()
        e = c.coeff[rows, EXP].astype(np.float64)
        s = side_features(c.coeff[rows, ANGLES])
        a = align(c.landmarks[frames], ref)
        x = np.concatenate([e, s], 1)
        y = a.reshape(len(a), 136)
        xs.append(x - x.mean(0))
        ys.append(y - y.mean(0))
        zs.append(x)
        yabs.append(y - ref.reshape(-1))
        rest_exp.append(e[rest_frames(a)].mean(0))
    w = ridge(np.concatenate(xs), np.concatenate(ys), LAMBDA)  # (73, 136)
    z = np.concatenate(zs)
    mu = z.mean(0)
    cov = np.cov(z, rowvar=False)
    # what the map does not explain in absolute (uncentred) offsets: landmark noise + people's face shapes
    resid = np.concatenate(yabs) - (z - mu) @ w
    noise = shrink(np.cov(resid, rowvar=False), NOISE_SHRINK)
    # two-level statistics (ExpressionInverse.solve_clip): clip averages, and frames about their clip's average
    x_clip = np.array([x.mean(0) for x in zs])  # (clips, K)
    y_clip, y_motion = [], []
    for y in yabs:
        y = smooth_time(y, 1)  # as the solve sees it
        y_clip.append(y.mean(0))
        y_motion.append(y - y.mean(0))
    shape = np.array(y_clip) - (x_clip - mu) @ w  # what the .mat averages leave unexplained: face shapes
    x_motion = np.concatenate(xs)
    motion_resid = np.concatenate(y_motion) - x_motion @ w
    return InverseParams(
        exp_weights=w[:64], side_weights=w[64:], mean_shape=ref, prior_mean=mu, prior_cov=cov,
        noise_cov=noise, neutral_exp=np.mean(rest_exp, axis=0),
        clip_mean=x_clip.mean(0), clip_var=x_clip.var(0, ddof=1), shape_mean=shape.mean(0),
        shape_cov=shrink(np.cov(shape, rowvar=False), SHAPE_SHRINK), motion_cov=np.cov(x_motion, rowvar=False),
        motion_noise=shrink(np.cov(motion_resid, rowvar=False), NOISE_SHRINK),
    )


# ------------------------------------------------------------------------------------------------- scoring


def pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Pearson r of (n, d) arrays (0 where a column is constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 1e-12, (a * b).sum(0) / np.maximum(den, 1e-12), 0.0)


def interpolate_missing(lmk: np.ndarray) -> np.ndarray:
    """Frames without a face (NaN) filled by linear interpolation in time (edge frames replicated)."""
    lmk = lmk.copy()
    ok = ~np.isnan(lmk).any(axis=(1, 2))
    if ok.all() or not ok.any():
        return lmk
    idx = np.arange(len(lmk))
    flat = lmk.reshape(len(lmk), -1)
    for j in range(flat.shape[1]):
        flat[~ok, j] = np.interp(idx[~ok], idx[ok], flat[ok, j])
    return flat.reshape(lmk.shape)


def compare(exp_video: np.ndarray, clip: FitClip, exp_weights: np.ndarray, max_shift: int = 3) -> dict:
    """Extracted rows (one per video frame) vs the clip's .mat expression at the best offset within ±3 of the
    group's pairing: mean per-coefficient r (lower / upper face), mouth-opening r."""
    mat = clip.coeff[:, EXP].astype(np.float64)
    base = GROUP_OFFSETS[clip.group]
    best: dict | None = None
    for shift in range(-max_shift, max_shift + 1):
        rows = np.arange(len(mat))
        frames = rows + base + shift
        keep = (frames >= 0) & (frames < len(exp_video))
        a, b = exp_video[frames[keep]], mat[rows[keep]]
        r = pearson_cols(a, b)
        mo = float(pearson_cols(mouth_opening_from_exp(a, exp_weights)[:, None],
                                mouth_opening_from_exp(b, exp_weights)[:, None])[0])
        score = {"shift": shift, "lower_r": float(r[list(LOWER_FACE3D_INDICES)].mean()),
                 "upper_r": float(r[list(UPPER_FACE3D_INDICES)].mean()), "mouth_opening_r": mo}
        if best is None or score["lower_r"] + score["mouth_opening_r"] > best["lower_r"] + best["mouth_opening_r"]:
            best = score
    assert best is not None
    return best


def score_loo(clips: list[FitClip], smooth: int = 1, neutral: bool = False) -> dict[str, dict]:
    """Leave-one-clip-out: per clip, fit without it, solve its landmarks, compare with its .mat."""
    out = {}
    for c in clips:
        inv = ExpressionInverse(fit_params(clips, exclude=c.name), smooth=smooth)
        lmk = interpolate_missing(c.landmarks)
        rest = None
        if neutral:
            aligned, _ = inv.aligned_offsets(lmk)
            rest = lmk[rest_frames(aligned)]
        res = inv.solve(lmk, neutral=rest)
        out[c.name] = compare(res.exp.astype(np.float64), c, inv.params.exp_weights) | {
            "residual": float(np.median(res.residual)), "exp": res.exp}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="styletalk-samples directory")
    ap.add_argument("--cache", type=Path, default=None, help="directory to cache per-clip landmarks (.npy)")
    ap.add_argument("--out", type=Path, default=PRIOR_PATH)
    ap.add_argument("--score", action="store_true", help="also print leave-one-clip-out scores")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    clips = sample_clips(args.cache, args.data)
    params = fit_params(clips)
    with np.load(Path(__file__).resolve().parents[1] / "models" / "assets" / "exp2lmk.npz") as m:
        dev = float(np.abs(m["weights"] - params.exp_weights).max() / np.abs(m["weights"]).max())
    print(f"refit expression weights vs shipped map: max relative difference {dev:.2e}")
    meta: dict = {"clips": [c.name for c in clips], "lambda": LAMBDA, "rest_fraction": REST_FRACTION,
                  "exp_weights_rel_diff_vs_shipped": dev}
    if args.score:
        scores = score_loo(clips)
        meta["loo"] = {k: {m: v[m] for m in ("lower_r", "upper_r", "mouth_opening_r", "shift")}
                       for k, v in scores.items()}
        for k in ("lower_r", "upper_r", "mouth_opening_r"):
            print(f"leave-one-clip-out mean {k}: {np.mean([v[k] for v in scores.values()]):.3f}")
    heldout = {}
    for name in HELDOUT_KEPT:
        heldout |= fit_params(clips, exclude=name).arrays(f"heldout/{name}/", full=True)
    np.savez_compressed(args.out, **params.arrays(), **heldout, meta=np.array(json.dumps(meta)))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
