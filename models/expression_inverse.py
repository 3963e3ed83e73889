"""The inverse of the expression → landmark map: 68 landmarks per frame → 64 expression coefficients.

One place for both users of the inverse: style extraction from a video (issue 18: a (T, 64) clip in the
official ``coeff[:, 80:144]`` convention from any talking-face video) and the avatar's rest expression (issue 17:
the photo's own expression, so the renderer can render relative to it).

Why this model. The forward map (``assets/exp2lmk.npz``, fitted by ``engine/landmark_fit.py``) says that after
removing the head's similarity (rotation, scale, shift, fitted on the STABLE points: nose and eye corners),
the 2-D landmark offsets from the Procrustes mean shape are linear in the expression coefficients, plus a part
explained by the out-of-plane head angles (the map's side inputs). Inverting 64 unknowns from 136 noisy
numbers is ill-posed (several coefficients barely move a dlib landmark), so the solve is the Bayesian one:

    y_t = z_t @ B + noise,  z_t = [exp_t, angle features_t] − prior mean,  z_t ~ N(0, Σ),  noise ~ N(0, N)

with ``B`` = [expression weights; head-angle weights] (73, 136), ``Σ`` the covariance of the sample clips'
coefficients and angle features, and ``N`` the covariance of what the map leaves unexplained (landmark noise
plus face-shape differences between people; correlated across points, shrunk towards its diagonal). The
posterior mean is one fixed (136, 73) matrix, so a whole video solves in one matrix product: the head-pose terms
are estimated jointly with the expression and then dropped. Temporal smoothing is a short binomial filter on the
aligned shapes (linear, so it commutes with the solve).

What 2-D landmarks cannot give: a person's face shape and their *average* expression move the same points.
``solve(..., neutral=...)`` takes rest frames of the same person and reads their rest face as the model's
neutral expression (the clip becomes their deviation from rest); without it the sample population's average
face stands in for theirs. Over a whole clip :meth:`ExpressionInverse.solve_clip` models the face shape as an
unknown constant of the clip, with a covariance learned from the sample speakers (the style-extraction solve).

Shapes: landmarks (T, 68, 2) in pixels or any similarity-transformed frame (the alignment removes it);
outputs exp (T, 64) float32, residual (T,) float32 in inter-ocular units (IOD, outer eye corners = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASSET_DIR = Path(__file__).resolve().parent / "assets"
MAP_PATH = ASSET_DIR / "exp2lmk.npz"  # the forward map (expression weights, mean shape)
PRIOR_PATH = ASSET_DIR / "exp_inverse.npz"  # head-angle weights, prior and noise statistics (exp_inverse.md)

STABLE = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)  # barely move with expression
EXP_DIM = 64
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
REST_FRACTION = 0.1  # share of a clip's frames taken as its rest frames
# A clip's solved average expression is pushed this far from the average over clips (see solve_clip: a posterior
# mean is shrunk towards the population, whose own style code matches no real style). Leave-one-speaker-out on
# the 25 sample clips (benchmarks/style_from_video.py): own-clip identification 36 / 44 / 48 / 52 / 52 % at 1 / 1.5 /
# 2 / 2.5 / 3 (48 % when the gain is itself chosen on the other speakers), decoded output closer to the .mat
# style's than the neutral style's 96-100 % throughout. The error of the average grows with the gain (the
# estimate overshoots), but the style code, not the average, is what the decoder uses.
STATIC_GAIN = 2.5
FRAMES_PER_SAMPLE = 5  # consecutive frames are correlated: a clip's average counts one sample per this many


@dataclass(frozen=True)
class InverseParams:
    """Everything the inverse needs; float64 arrays. ``side`` = head-angle features (nuisance terms)."""

    exp_weights: np.ndarray  # (64, 136) expression → face-frame offsets (x0, y0, x1, y1, …), IOD
    side_weights: np.ndarray  # (S, 136) head-angle features → offsets
    mean_shape: np.ndarray  # (68, 2) Procrustes mean shape, face frame (IOD)
    prior_mean: np.ndarray  # (64 + S,) mean of [exp, side features] over the sample frames
    prior_cov: np.ndarray  # (64 + S, 64 + S) their covariance
    noise_cov: np.ndarray  # (136, 136) offset covariance the map leaves unexplained
    neutral_exp: np.ndarray  # (64,) the expression a rest face is read as (see exp_inverse.md)
    # two-level model of a whole clip (solve_clip): the clip's average and its motion about that average
    clip_mean: np.ndarray  # (64 + S,) mean over clips of a clip's average [exp, side features]
    clip_var: np.ndarray  # (64 + S,) their variance over clips (diagonal prior: few speakers)
    shape_mean: np.ndarray  # (136,) mean over clips of what a clip's average offsets leave unexplained ...
    shape_cov: np.ndarray  # (136, 136) ... and its covariance: the person's face shape (+ landmark bias)
    motion_cov: np.ndarray  # (64 + S, 64 + S) covariance of [exp, side] about each clip's own average
    motion_noise: np.ndarray  # (136, 136) offset covariance about each clip's average left unexplained

    def __post_init__(self) -> None:
        k = EXP_DIM + self.side_weights.shape[0]
        shapes = {
            "exp_weights": (self.exp_weights.shape, (EXP_DIM, 136)),
            "side_weights": (self.side_weights.shape[1:], (136,)),
            "mean_shape": (self.mean_shape.shape, (68, 2)),
            "prior_mean": (self.prior_mean.shape, (k,)),
            "prior_cov": (self.prior_cov.shape, (k, k)),
            "noise_cov": (self.noise_cov.shape, (136, 136)),
            "neutral_exp": (self.neutral_exp.shape, (EXP_DIM,)),
            "clip_mean": (self.clip_mean.shape, (k,)),
            "clip_var": (self.clip_var.shape, (k,)),
            "shape_mean": (self.shape_mean.shape, (136,)),
            "shape_cov": (self.shape_cov.shape, (136, 136)),
            "motion_cov": (self.motion_cov.shape, (k, k)),
            "motion_noise": (self.motion_noise.shape, (136, 136)),
        }
        for name, (got, want) in shapes.items():
            if tuple(got) != want:
                raise ValueError(f"InverseParams.{name}: expected shape {want}, got {tuple(got)}")

    @classmethod
    def load(cls, map_path: str | Path | None = None, prior_path: str | Path | None = None,
             heldout_clip: str | None = None) -> InverseParams:
        """The shipped inverse; ``heldout_clip`` selects a variant fitted without that sample clip (the asset
        keeps a few, for honest tests; see exp_inverse.md)."""
        with np.load(Path(prior_path) if prior_path else PRIOR_PATH) as p:
            if heldout_clip is not None:
                pre = f"heldout/{heldout_clip}/"
                if pre + "exp_weights" not in p:
                    have = sorted({k.split("/")[1] for k in p.files if k.startswith("heldout/")})
                    raise KeyError(f"no held-out variant for {heldout_clip!r} (have {have})")
                return cls(**{f: p[pre + f].astype(np.float64) for f in _FIELDS})
            prior = {f: p[f].astype(np.float64) for f in _FIELDS if f not in ("exp_weights", "mean_shape")}
        with np.load(Path(map_path) if map_path else MAP_PATH) as m:
            return cls(exp_weights=m["weights"].astype(np.float64), mean_shape=m["mean_shape"].astype(np.float64),
                       **prior)

    def arrays(self, prefix: str = "", full: bool = False) -> dict[str, np.ndarray]:
        """float32 arrays for the asset file; without ``full`` the forward map's own arrays are left out."""
        return {prefix + f: getattr(self, f).astype(np.float32) for f in _FIELDS
                if full or f not in ("exp_weights", "mean_shape")}


_FIELDS = ("exp_weights", "side_weights", "mean_shape", "prior_mean", "prior_cov", "noise_cov", "neutral_exp",
           "clip_mean", "clip_var", "shape_mean", "shape_cov", "motion_cov", "motion_noise")


@dataclass(frozen=True)
class InverseResult:
    """Per-frame solution. ``exp`` in the official convention (``coeff[:, 80:144]``)."""

    exp: np.ndarray  # (T, 64) float32
    residual: np.ndarray  # (T,) float32 RMS landmark misfit after the solve, IOD units
    side: np.ndarray  # (T, S) float32 head-angle features absorbed by the nuisance terms
    aligned: np.ndarray  # (T, 68, 2) float32 pose-removed landmarks (face frame, IOD)


# --------------------------------------------------------------------------------------------- geometry


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity mapping src (..., K, 2) onto dst (..., K, 2) → A (..., 2, 2), t (..., 2).

    ``aligned = src @ A^T + t``; vectorised over leading dimensions (complex-number form of the 2-D fit).
    """
    mu_s = src.mean(axis=-2, keepdims=True)
    mu_d = dst.mean(axis=-2, keepdims=True)
    s, d = src - mu_s, dst - mu_d
    zs = s[..., 0] + 1j * s[..., 1]
    zd = d[..., 0] + 1j * d[..., 1]
    c = (np.conj(zs) * zd).sum(-1) / np.maximum((np.abs(zs) ** 2).sum(-1), 1e-12)
    a, b = c.real, c.imag
    A = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)
    t = mu_d[..., 0, :] - np.einsum("...ij,...j->...i", A, mu_s[..., 0, :])
    return A, t


def align(shapes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Pose-removed shapes (T, 68, 2): each similarity-aligned onto ``ref`` (68, 2) on the STABLE points."""
    stable = list(STABLE)
    A, t = similarity_fit(shapes[:, stable].astype(np.float64), ref[stable])
    return np.einsum("fij,fkj->fki", A, shapes.astype(np.float64)) + t[:, None, :]


def side_features(angles: np.ndarray) -> np.ndarray:
    """Head-angle features (T, 9): the 3 angles, their squares and pairwise products (as the map's fit)."""
    a = np.asarray(angles, np.float64)
    return np.concatenate([a, a**2, a[:, [0]] * a[:, [1]], a[:, [0]] * a[:, [2]], a[:, [1]] * a[:, [2]]], 1)


def smooth_time(x: np.ndarray, radius: int) -> np.ndarray:
    """Binomial filter of ``radius`` frames each side along axis 0 (edges replicated). radius 1 = [1, 2, 1]/4."""
    if radius <= 0 or len(x) < 2:
        return x
    kernel = np.array([1.0])
    for _ in range(2 * radius):
        kernel = np.convolve(kernel, [0.5, 0.5])
    pad = np.concatenate([np.repeat(x[:1], radius, 0), x, np.repeat(x[-1:], radius, 0)])
    out = np.zeros_like(x, dtype=np.float64)
    for k, w in enumerate(kernel):
        out += w * pad[k : k + len(x)]
    return out


def mouth_opening_from_exp(exp: np.ndarray, exp_weights: np.ndarray) -> np.ndarray:
    """Inner-lip gap (T,) that expression rows produce through the forward map (IOD): a 1-D mouth-opening
    signal defined on coefficients, so a solved clip and a 3DMM clip compare on the same axis."""
    off = (np.asarray(exp, np.float64) @ exp_weights).reshape(len(exp), 68, 2)
    return np.mean([off[:, lo, 1] - off[:, up, 1] for up, lo in INNER_LIP_PAIRS], axis=0)


def rest_frames(aligned: np.ndarray, fraction: float = REST_FRACTION) -> np.ndarray:
    """Indices of a clip's least-active frames: the smallest inner-lip gaps (at least one frame).

    Why the lip gap: speech moves the mouth most, and a closed mouth is the rest pose a request for "a second of
    rest" produces; brows and lids are too noisy in dlib's points to rank frames by.
    """
    gap = (aligned[:, [67, 66, 65], 1] - aligned[:, [61, 62, 63], 1]).mean(1)
    k = max(1, int(round(fraction * len(aligned))))
    return np.sort(np.argsort(gap, kind="stable")[:k])



# ------------------------------------------------------------------------------------------------ inverse


class ExpressionInverse:
    """Landmarks → expression coefficients by regularised least squares (the posterior mean above).

    ``ExpressionInverse.from_assets().solve(lmk)`` for the shipped map; tests and the leave-one-clip-out
    benchmark build it from :class:`InverseParams` fitted without the clip they score.
    """

    def __init__(self, params: InverseParams, smooth: int = 1) -> None:
        self.params = params
        self.smooth = int(smooth)
        b = np.concatenate([params.exp_weights, params.side_weights])  # (K, 136)
        # the aligned shapes lose 4 degrees of freedom to the similarity, and Σ may be nearly singular: small
        # ridges keep both inverses finite
        noise_prec = np.linalg.inv(params.noise_cov + 1e-8 * np.eye(136))
        cov = params.prior_cov + 1e-6 * np.trace(params.prior_cov) / len(params.prior_cov) * np.eye(len(b))
        post_prec = b @ noise_prec @ b.T + np.linalg.inv(cov)
        self.post_cov = np.linalg.inv(post_prec)
        self._solve_matrix = noise_prec @ b.T @ self.post_cov  # (136, K)
        self._basis = b
        # solve_clip: motion about the clip's average under the within-clip prior, (136, K)
        mcov = params.motion_cov + 1e-6 * np.trace(params.motion_cov) / len(b) * np.eye(len(b))
        self._motion_matrix = np.linalg.solve(b.T @ mcov @ b + params.motion_noise, b.T @ mcov)
        self._clip_gain = b.T * params.clip_var  # (136, K): Σ_clip B (Σ_clip diagonal)

    @classmethod
    def from_assets(cls, map_path: str | Path | None = None, prior_path: str | Path | None = None,
                    smooth: int = 1) -> ExpressionInverse:
        return cls(InverseParams.load(map_path, prior_path), smooth=smooth)

    def aligned_offsets(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned shapes (T, 68, 2) and their offsets from the mean shape (T, 136), both IOD."""
        lmk = np.asarray(landmarks, np.float64)
        if lmk.ndim == 2:
            lmk = lmk[None]
        if lmk.ndim != 3 or lmk.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must be (T, 68, 2) or (68, 2), got {lmk.shape}")
        if not np.isfinite(lmk).all():
            raise ValueError("landmarks contain NaN/inf (fill or drop frames without a face first)")
        aligned = align(lmk, self.params.mean_shape)
        return aligned, (aligned - self.params.mean_shape).reshape(len(aligned), 136)

    def solve(self, landmarks: np.ndarray, smooth: int | None = None, neutral: np.ndarray | None = None,
              static_weight: float = 0.0) -> InverseResult:
        """Expression per frame from landmarks (T, 68, 2) (a single (68, 2) face is T = 1).

        ``smooth``: binomial radius in frames (default: the instance's, 1); 0 for a photo or independent frames.
        ``neutral``: rest-face landmarks (N, 68, 2) of the *same* person (e.g. their least-active frames, see
        :func:`rest_frames`, or a second of rest asked for in a recording). The result is then that person's
        deviation from their rest, placed on the model's neutral expression: ``exp − (1 − w)·(mean solved rest −
        neutral_exp)`` with ``w = static_weight`` (0 = the rest face *is* the model's neutral; 1 = ignore the rest
        frames, as without ``neutral``). Why: the rest frames' solved expression is mostly the person's face
        shape misread as expression, which 2-D landmarks cannot tell apart.
        """
        aligned, y = self.aligned_offsets(landmarks)
        y = smooth_time(y, self.smooth if smooth is None else int(smooth))
        z = y @ self._solve_matrix  # (T, K) deviation from the prior mean
        resid = y - z @ self._basis
        p = self.params
        exp = z[:, :EXP_DIM] + p.prior_mean[:EXP_DIM]
        if neutral is not None:
            _, yn = self.aligned_offsets(neutral)
            rest = (yn @ self._solve_matrix[:, :EXP_DIM]).mean(0) + p.prior_mean[:EXP_DIM]
            exp = exp - (1.0 - float(static_weight)) * (rest - p.neutral_exp)
        side = z[:, EXP_DIM:] + p.prior_mean[EXP_DIM:]
        rms = np.sqrt((resid.reshape(len(y), 68, 2) ** 2).sum(-1).mean(-1))
        return InverseResult(exp.astype(np.float32), rms.astype(np.float32), side.astype(np.float32),
                             aligned.astype(np.float32))

    def solve_clip(self, landmarks: np.ndarray, smooth: int | None = None,
                   static_gain: float = STATIC_GAIN) -> InverseResult:
        """Expression per frame of a whole clip of one person (T, 68, 2), the style-extraction solve.

        Why not :meth:`solve` frame by frame: a style code depends almost only on the clip's *average*
        expression (the sample clips' .mat averages with the solved motion identify every clip; the solved
        average with the .mat motion, 12 %), and a person's face shape is constant over the clip. So the clip
        is solved at two levels:

            mean offsets  ȳ = (x̄ − μ) B + s + n̄,  x̄ ~ N(clip_mean, diag clip_var),  s ~ N(shape_mean, shape_cov)
            per frame     y_t − ȳ = (x_t − x̄) B + n_t,  x_t − x̄ ~ N(0, motion_cov),  n_t ~ N(0, motion_noise)

        where ``s`` is what the sample speakers' average shapes leave unexplained by their .mat averages (their
        face shapes, learned across people), so the part of ȳ that looks like a face-shape difference is not
        read as expression. The posterior average is then pushed ``static_gain`` times as far from
        ``clip_mean`` (a posterior mean is shrunk towards the average over clips, whose style code is unlike
        every real style's; see :data:`STATIC_GAIN`). ``residual`` is the per-frame misfit about the average.
        """
        aligned, y = self.aligned_offsets(landmarks)
        y = smooth_time(y, self.smooth if smooth is None else int(smooth))
        p = self.params
        b = self._basis
        ybar = y.mean(0)
        t_eff = max(1.0, len(y) / FRAMES_PER_SAMPLE)
        cov_y = b.T @ self._clip_gain.T + p.shape_cov + p.motion_noise / t_eff  # (136, 136)
        expected = p.shape_mean + (p.clip_mean - p.prior_mean) @ b
        xbar_dev = np.linalg.solve(cov_y, ybar - expected) @ self._clip_gain  # (K,) x̄ − clip_mean
        motion = (y - ybar) @ self._motion_matrix  # (T, K)
        x = p.clip_mean + float(static_gain) * xbar_dev + motion
        resid = (y - ybar) - motion @ b
        rms = np.sqrt((resid.reshape(len(y), 68, 2) ** 2).sum(-1).mean(-1))
        return InverseResult(x[:, :EXP_DIM].astype(np.float32), rms.astype(np.float32),
                             x[:, EXP_DIM:].astype(np.float32), aligned.astype(np.float32))
