"""Geometry helpers and thin-plate-spline maths of the warp renderer (pure tensor functions, no state)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def px_to_norm(p: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel-centre coordinates → grid_sample's normalised coordinates (align_corners=False)."""
    return (p + 0.5) * (2.0 / size) - 1.0


def affine2(x: torch.Tensor, m: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ m.T (+ t)`` for (…, 2) points and a 2×2 matrix, written elementwise: CPU matmul kernels are slow
    on such skinny shapes."""
    out = x[..., 0:1] * m[:, 0] + x[..., 1:2] * m[:, 1]
    return out if t is None else out + t


def similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares similarity src (K, 2) → dst (K, 2): ``dst ≈ src @ A.T + t``."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = (src - ms).double(), (dst - md).double()
    den = (s**2).sum()
    a = (s * d).sum() / den
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / den
    A = torch.stack([torch.stack([a, -b]), torch.stack([b, a])]).float()
    return A, md - ms @ A.T


def interp_curve(xk: torch.Tensor, yk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear curves through (xk, yk) (…, K) evaluated at x (…, P); constant beyond the ends.

    Written as a sum of clamped ramps, y0 + Σ slope_k · clamp(x − x_k, 0, Δx_k). ``xk`` is made monotone
    first (a fold guard: a curve that doubles back would be ambiguous).
    """
    xk = torch.cummax(xk, dim=-1).values
    dx = (xk[..., 1:] - xk[..., :-1]).clamp_min(1e-6)  # (…, K-1)
    slope = (yk[..., 1:] - yk[..., :-1]) / dx
    ramp = torch.minimum((x.unsqueeze(-1) - xk[..., None, :-1]).clamp_min(0.0), dx.unsqueeze(-2))  # (…, P, K-1)
    return yk[..., :1] + (ramp * slope.unsqueeze(-2)).sum(-1)


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ramp01(x: torch.Tensor) -> torch.Tensor:
    """Linear 0 → 1 ramp (antialiased edges one sample wide; cheaper than a smoothstep)."""
    return x.clamp(0.0, 1.0)


def tps_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U(r) = r² log r² between point sets a (N, P, 2) and b (N or 1, M, 2) → (N, P, M)."""
    # |a|² + |b|² − 2 a·b: one matrix product (accumulating onto the squared norms) instead of a (P, M, 2)
    # difference tensor; then in place: five passes over (P, M) where a plain expression takes eight
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2)
    r2 = torch.baddbmm(sq, a * -2.0, b.transpose(1, 2).expand(a.shape[0], -1, -1))
    return _r2_log_r2(r2)


def _r2_log_r2(r2: torch.Tensor) -> torch.Tensor:
    """U = r² log r² in place on squared distances (floored at 1e-12: U(0) ≈ −3e-11 instead of 0, and the
    rounding error of |a|² + |b|² − 2 a·b cannot go negative)."""
    r2.clamp_min_(1e-12)
    return r2.mul_(torch.log(r2))


def tps_fit(ctrl: torch.Tensor, disp: torch.Tensor, reg: float) -> torch.Tensor:
    """Thin-plate spline through control points ctrl (N, M, 2) with displacements disp (N, M, 2).

    Returns the coefficients (N, M + 3, 2): M kernel weights, then the affine part (1, x, y). Solved in float64
    (a 100² system is cheap; float32 loses digits when control points nearly coincide).
    """
    n, m, _ = ctrl.shape
    c = ctrl.double()
    k = tps_kernel(c, c)
    k.diagonal(dim1=1, dim2=2).add_(reg)
    p = torch.cat([c.new_ones(n, m, 1), c], dim=2)  # (N, M, 3)
    top = torch.cat([k, p], dim=2)
    bottom = torch.cat([p.transpose(1, 2), c.new_zeros(n, 3, 3)], dim=2)
    system = torch.cat([top, bottom], dim=1)  # (N, M+3, M+3)
    rhs = torch.cat([disp.double(), c.new_zeros(n, 3, 2)], dim=1)
    # solve_ex: no host synchronisation for error checks (keeps the call graph-capturable); the regularised
    # system is never singular
    return torch.linalg.solve_ex(system, rhs, check_errors=False).result.float()


def tps_eval(coef: torch.Tensor, ctrl: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Displacement at pts (P, 2) of the splines (N, M+3, 2) fitted at ctrl (N, M, 2) → (N, 2, P).

    Channel-first output (ready for upsampling); the kernel is built as (N, M, P) so both products are
    wide-output matmuls (the (P, M) @ (M, 2) orientation is several times slower on CPU).
    """
    m = ctrl.shape[1]
    u = tps_kernel(ctrl, pts.unsqueeze(0))  # (N, M, P)
    homog = torch.cat([torch.ones_like(pts[:, :1]), pts], 1).T  # (3, P)
    coef_t = coef.transpose(1, 2)  # (N, 2, M+3)
    return torch.bmm(coef_t[:, :, :m], u) + coef_t[:, :, m:] @ homog


def tps_eval_at(coef: torch.Tensor, ctrl: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Displacement at per-spline points pts (N, P, 2) of the splines (N, M+3, 2) fitted at ctrl (N, M, 2)
    → (N, 2, P). As ``tps_eval``, but every spline is evaluated at its own points (a moving head's grid taken
    back to the still head)."""
    m = ctrl.shape[1]
    u = tps_kernel(ctrl, pts)  # (N, M, P)
    homog = torch.cat([torch.ones_like(pts[..., :1]), pts], -1).transpose(1, 2)  # (N, 3, P)
    coef_t = coef.transpose(1, 2)  # (N, 2, M+3)
    return torch.bmm(coef_t[:, :, :m], u) + torch.bmm(coef_t[:, :, m:], homog)


@dataclass(frozen=True)
class SplineGrid:
    """Fixed evaluation points of splines whose last control points never move (a still head's coarse grid;
    the forehead and border points): everything of ``tps_eval`` that does not depend on the moving points,
    computed once per avatar (``spline_grid``)."""

    rows: torch.Tensor  # (1, 3, P): −2x, −2y, 1 — with [a, |a|²] (N, K, 3) one product gives |a|² − 2 a·b
    sq: torch.Tensor  # (1, 1, P) |b|²
    fixed: torch.Tensor  # (F + 3, P): the fixed control points' kernel rows, then 1, x, y (the affine part)


def spline_grid(fixed: torch.Tensor, pts: torch.Tensor) -> SplineGrid:
    """Precompute ``tps_eval_grid`` for evaluation points pts (P, 2) and fixed control points (F, 2)."""
    u = tps_kernel(fixed.unsqueeze(0), pts.unsqueeze(0))[0]  # (F, P)
    return SplineGrid(rows=torch.cat([pts.T * -2.0, torch.ones(1, pts.shape[0])]).unsqueeze(0),
                      sq=(pts * pts).sum(-1).reshape(1, 1, -1),
                      fixed=torch.cat([u, torch.ones(1, pts.shape[0]), pts.T]).contiguous())


def tps_eval_grid(coef: torch.Tensor, moving: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``tps_eval`` at a ``SplineGrid``'s points of the splines (N, M+3, 2) fitted at control points whose first K
    (``moving`` (N, K, 2)) change per frame and whose other M − K are the grid's fixed ones → (N, 2, P).

    Only the moving points' kernel rows are computed per frame (K of M: 68 of 92 at the defaults)."""
    n, k = moving.shape[:2]
    a3 = torch.cat([moving, (moving * moving).sum(-1, keepdim=True)], -1)  # (N, K, 3)
    u = _r2_log_r2(torch.baddbmm(grid.sq, a3, grid.rows.expand(n, -1, -1)))  # (N, K, P)
    coef_t = coef.transpose(1, 2)  # (N, 2, M+3)
    return torch.baddbmm(coef_t[:, :, k:] @ grid.fixed, coef_t[:, :, :k], u)


@functools.lru_cache(maxsize=8)
def _cubic_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The knot spread and the 4×4 identity of :func:`cubic_curve`, made once per device (building a small
    tensor from Python values costs more than the arithmetic on it)."""
    return (torch.tensor([0.0, 1e-3, 2e-3, 3e-3], dtype=dtype, device=device),
            torch.eye(4, dtype=dtype, device=device))


def cubic_curve(xk: torch.Tensor, yk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The cubic through four knots (xk, yk) (…, 4) evaluated at x (…, P); constant beyond the end knots.

    An eyelid is an arc: the polyline through dlib's four lid points cuts under it near the corners, and a lid
    drawn from one polyline onto another imprints the difference as a wave. Lagrange form, with the knots made
    monotone and at least 1e-3 apart (lid knots are evenly spread, so the cubic does not overshoot). Written in
    few ops (the eye model runs it every frame): the products Π_{j≠k} (x − x_j) by pairing (d0 d1)(d2 d3).
    """
    spread, eye = _cubic_constants(xk.device, xk.dtype)
    xk = torch.cummax(xk, dim=-1).values + spread
    x = torch.clamp(x, min=xk[..., :1], max=xk[..., 3:])
    d = (x.unsqueeze(-1) - xk.unsqueeze(-2)).unflatten(-1, (2, 2))  # (…, P, 2, 2): (d0, d1), (d2, d3)
    swap = d.flip(-1)  # (d1, d0), (d3, d2)
    num = ((d * swap).flip(-2) * swap).flatten(-2)  # (d2 d3 d1, d2 d3 d0, d0 d1 d3, d0 d1 d2)
    den = (xk.unsqueeze(-1) - xk.unsqueeze(-2) + eye).prod(-1)
    return (num @ (yk / den).unsqueeze(-1)).squeeze(-1)
