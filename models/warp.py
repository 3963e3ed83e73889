"""Built-in warp renderer: expression coefficients → landmarks → thin-plate-spline backward warp of one photo.

Why this design: it needs no trained generator (the only learned part is a 64 → 136 linear map fitted on the
shared sample videos, `assets/exp2lmk.npz`), runs in a few milliseconds on a CPU, and keeps the photo's own
pixels, so any face photo works as an avatar.

Pipeline per frame (all batched over N frames, float32, fixed shapes once an avatar is prepared):

1. ``offsets = clip(exp - exp_ref) @ W`` gives the 68 landmark offsets in the *face frame* (pose-free, h along
   the eyes, v down the face, in inter-ocular units, IOD = outer eye corners 36–45). ``exp_ref`` is the photo's
   own expression (zeros = assume the photo shows the 3DMM's neutral face).
2. Caps and fold guards in the face frame (brows/eyes capped for strong styles; lips and eyelids may touch but
   not cross; lips keep part of their thickness).
3. Optional head motion: the 9 pose parameters relative to a reference pose are mapped linearly (also fitted on
   the sample videos) to a small similarity of the face (rotation, scale, shift), clamped.
4. Backward thin-plate spline from target → source positions at the landmarks, forehead points (head motion
   only) and fixed border points; evaluated on a coarse grid, bilinearly upsampled, then ``grid_sample``.
5. Region models for what a smooth spline cannot express, each a 1-D remap along the face's vertical axis,
   computed on a small face-aligned lattice and resampled into the frame: the eyes (a closing lid slides *over*
   the eyeball instead of squashing it) and the mouth (teeth ride rigidly with their jaw; only area hidden in
   the photo is painted, with teeth coloured from the photo when it shows teeth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "exp2lmk.npz"

# dlib 68-point indices
STABLE = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)  # barely move with expression
BROWS = slice(17, 27)
EYE_CORNERS = (36, 39, 42, 45)
LIDS_UP = (37, 38, 43, 44)  # paired with LIDS_LO
LIDS_LO = (41, 40, 47, 46)
EYE_UP = ((36, 37, 38, 39), (42, 43, 44, 45))  # per eye, corner to corner
EYE_LO = ((36, 41, 40, 39), (42, 47, 46, 45))
LIP_UP_IN = (60, 61, 62, 63, 64)
LIP_LO_IN = (60, 67, 66, 65, 64)
LIP_LO_OUT = (48, 59, 58, 57, 56, 55, 54)
LIP_PAIRS_IN = ((61, 67), (62, 66), (63, 65))  # (upper inner, lower inner)
LIP_PAIRS_UP = ((50, 61), (51, 62), (52, 63))  # (upper outer, upper inner)
LIP_PAIRS_LO = ((58, 67), (57, 66), (56, 65))  # (lower outer, lower inner)
FOREHEAD_FROM = (0, 17, 19, 21, 22, 24, 26, 16)  # forehead control points sit above these

_IDX = {
    "stable": list(STABLE), "forehead": list(FOREHEAD_FROM), "corners": list(EYE_CORNERS),
    "lids_up": list(LIDS_UP), "lids_lo": list(LIDS_LO),
    "lip_up_in": list(LIP_UP_IN), "lip_lo_in": list(LIP_LO_IN), "lip_lo_out": list(LIP_LO_OUT),
    "pairs_in_u": [u for u, _ in LIP_PAIRS_IN], "pairs_in_l": [lo for _, lo in LIP_PAIRS_IN],
    "lip_outer": [o for o, _ in LIP_PAIRS_UP + LIP_PAIRS_LO], "lip_inner": [i for _, i in LIP_PAIRS_UP + LIP_PAIRS_LO],
}
# source-curve lookup table rows: eye 0 upper/lower, eye 1 upper/lower, lips upper inner/lower inner/lower outer
_LUT_CURVES = (EYE_UP[0], EYE_LO[0], EYE_UP[1], EYE_LO[1], LIP_UP_IN, LIP_LO_IN, LIP_LO_OUT)


@dataclass(frozen=True)
class WarpConfig:
    """Tunables of the warp renderer. Lengths are in inter-ocular units (IOD) unless noted."""

    grid: int = 32  # coarse grid on which the spline is evaluated (then upsampled); 32 vs 64: 0.3 grey levels
    tps_reg: float = 1e-4  # spline smoothing (normalised coordinates); keeps near-coincident targets solvable
    exp_clip: float = 4.0  # clip (exp − exp_ref) to ± this many training standard deviations per coefficient
    brow_cap: tuple[float, float] = (0.04, 0.07)  # max |Δh|, |Δv| of brow points (strong styles)
    eye_open_cap: float = 0.035  # the upper lid may rise at most this much; it may fall until the eye is closed
    lower_lid_cap: float = 0.03  # lower lid travel either way
    corner_cap: float = 0.03  # eye-corner travel
    lip_gap_cap: float = 0.40  # max inner-lip gap
    lip_min_thickness: float = 0.5  # a lip keeps at least this fraction of its thickness in the photo
    tps_lip_min_gap: float = 0.15  # inner-lip gap given to the spline, fraction of the photo's
    lid_band: float = 0.11  # eyelid skin above the upper lid that stretches over a closing eye
    lash_band: float = 0.025  # the lid margin with the lashes moves rigidly (stretching it smears the lashes)
    under_eye_band: float = 0.07  # skin below the lower lid that follows the lower lid
    ramp: float = 0.03  # soft horizontal edge of the eye model at the eye corners
    eye_skip: float = 0.006  # lids moving less than this (about half a pixel at 256²) skip the eye model
    lip_edge_inset: float = 0.015  # the lower lip's edge lies this much below dlib's inner-lip points
    teeth_upper: float = 0.095  # visible length of the upper incisors below the upper lip
    teeth_lower: float = 0.05  # visible length of the lower incisors (only when the mouth is wide open)
    lower_teeth_from: float = 0.2  # lower teeth start showing when the gap exceeds this
    lattice_step: float = 1.0 / 90.0  # region-model sample spacing (≈ one pixel of a 256² crop)
    forehead_lift: float = 0.45  # forehead control points sit this far above the brows / temples
    border_points: int = 5  # fixed points per image side (corners included)
    head_max_rotation: float = math.radians(6.0)
    head_max_shift: float = 0.1
    head_max_log_scale: float = 0.05


@dataclass(frozen=True)
class ExpressionMap:
    """The fitted linear maps (see engine/landmark_fit.py and assets/exp2lmk.md)."""

    weights: torch.Tensor  # (64, 68, 2) expression → face-frame landmark offsets (IOD)
    mean_shape: torch.Tensor  # (68, 2) face-frame mean shape (IOD, origin at the stable-point centroid)
    exp_std: torch.Tensor  # (64,) spread of the training coefficients
    pose_weights: torch.Tensor  # (9, 4) Δpose → [log scale, rotation (rad), dx, dy (IOD, image axes)]

    @classmethod
    def load(cls, path: str | Path | None = None, heldout_clip: str | None = None) -> ExpressionMap:
        """Load the shipped map; ``heldout_clip`` selects the variant fitted without that sample clip."""
        with np.load(Path(path) if path else ASSET_PATH) as data:
            key = "weights" if heldout_clip is None else f"heldout/{heldout_clip}"
            if key not in data:
                raise KeyError(f"{key!r} not in the expression map (have {sorted(data.files)})")
            return cls(
                weights=torch.from_numpy(data[key].astype(np.float32)).reshape(64, 68, 2),
                mean_shape=torch.from_numpy(data["mean_shape"].astype(np.float32)),
                exp_std=torch.from_numpy(data["exp_std"].astype(np.float32)),
                pose_weights=torch.from_numpy(data["pose_weights"].astype(np.float32)),
            )


@dataclass(frozen=True)
class Region:
    """A region model's face-aligned sample lattice and the fixed-size pixel box it is resampled into.

    The lattice lives in the target face frame before head motion; the box is placed per batch where the head
    moved it (whole pixels), so its size, and every shape, stays fixed. The ``still_*`` coordinates are the
    precomputed sampling positions for a still head.
    """

    h: torch.Tensor  # (Qh,) lattice columns
    v: torch.Tensor  # (Qv,) lattice rows
    step: float  # lattice spacing (IOD)
    pts: torch.Tensor  # (Qv*Qh, 2) lattice points (h, v)
    y0: int  # home position and size of the pixel box
    x0: int
    bh: int
    bw: int
    box_px: torch.Tensor  # (bh*bw, 2) pixel coordinates (x, y) of the box at home
    to_lattice: tuple[torch.Tensor, torch.Tensor]  # face frame → lattice-normalised [-1, 1]: scale (2,), offset (2,)
    centre: torch.Tensor  # (2,) lattice centre, face frame
    still_coarse: torch.Tensor  # (Qv*Qh, 2) lattice points in the coarse grid's normalised coordinates
    still_box: torch.Tensor  # (bh*bw, 2) box pixels in lattice-normalised coordinates


@dataclass
class WarpAvatar:
    """Everything precomputed for one photo. Tensors are float32."""

    size: int
    image: torch.Tensor  # (1, 3, S, S) 0..255
    landmarks: torch.Tensor  # (68, 2) pixels
    src_local: torch.Tensor  # (68, 2) face frame
    extra_local: torch.Tensor  # (E, 2) forehead points, face frame
    frame_a: torch.Tensor  # (2, 2) face frame → pixels: p = f @ frame_a.T + frame_t
    frame_t: torch.Tensor  # (2,)
    iod_px: float
    src_ctrl_norm: torch.Tensor  # (M, 2) spline source points, normalised [-1, 1] (grid_sample convention)
    border_norm: torch.Tensor  # (B, 2) fixed border points, normalised
    grid_norm: torch.Tensor  # (G*G, 2) coarse evaluation grid, normalised
    exp_ref: torch.Tensor  # (64,)
    eyes: tuple[Region, Region]  # equal lattice sizes (both eyes run as one batch)
    mouth: Region
    lut: torch.Tensor  # (7, L) source curves (_LUT_CURVES) sampled along h
    lut_h0: float
    lut_step: float
    norm_to_h: tuple[float, float, float]  # face-frame h of a normalised image point: k0·qx + k1·qy + c
    v_axis: tuple[float, float]  # one IOD along the face-frame v axis, in normalised image units
    lip_gap: torch.Tensor  # (3,) photo's inner-lip gaps (LIP_PAIRS_IN)
    lip_thickness: torch.Tensor  # (6,) photo's lip thickness (LIP_PAIRS_UP then LIP_PAIRS_LO)
    chin_drop: float  # photo's distance lower lip (57) → chin (8)
    teeth_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))  # 0..255
    cavity_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    photo_teeth: bool = False


# ----------------------------------------------------------------------------------------------- helpers


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
    """U(r) = r² log r² between point sets a (…, P, 2) and b (…, M, 2) → (…, P, M)."""
    # |a|² + |b|² − 2 a·b: one matrix product instead of a (P, M, 2) difference tensor
    r2 = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * (a @ b.transpose(-1, -2))
    r2 = r2.clamp_min(0.0)
    return r2 * torch.log(r2 + 1e-12)


def tps_fit(ctrl: torch.Tensor, disp: torch.Tensor, reg: float) -> torch.Tensor:
    """Thin-plate spline through control points ctrl (N, M, 2) with displacements disp (N, M, 2).

    Returns the coefficients (N, M + 3, 2): M kernel weights, then the affine part (1, x, y). Solved in float64
    (a 100² system is cheap; float32 loses digits when control points nearly coincide).
    """
    n, m, _ = ctrl.shape
    c = ctrl.double()
    k = tps_kernel(c, c) + reg * torch.eye(m, dtype=torch.float64, device=c.device)
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


# ------------------------------------------------------------------------------------------------ the core

Move = tuple[torch.Tensor, torch.Tensor] | None  # per-frame face→pixel map with head motion: lin (N,2,2), off (N,2)


class WarpCore(torch.nn.Module):
    """Expression-driven warp of prepared avatars. Stateless: the caller owns the reference pose."""

    def __init__(self, emap: ExpressionMap | None = None, config: WarpConfig | None = None) -> None:
        super().__init__()
        emap = emap or ExpressionMap.load()
        self.config = config or WarpConfig()
        self.register_buffer("weights", emap.weights.reshape(64, 136).clone(), persistent=False)
        self.register_buffer("mean_shape", emap.mean_shape.clone(), persistent=False)
        self.register_buffer("exp_std", emap.exp_std.clone(), persistent=False)
        self.register_buffer("pose_weights", emap.pose_weights.clone(), persistent=False)
        # outer lips move away from the inner lip: upper outer up (−1), lower outer down (+1)
        self.register_buffer("lip_sign", torch.tensor([-1.0] * 3 + [1.0] * 3), persistent=False)
        self.register_buffer("eye_up", torch.tensor(EYE_UP), persistent=False)  # (2, 4)
        self.register_buffer("eye_lo", torch.tensor(EYE_LO), persistent=False)
        self.register_buffer("eye_rows", torch.tensor([[0, 1], [2, 3]]), persistent=False)  # lookup-table rows
        self.register_buffer("mouth_rows", torch.tensor([4, 5, 6]), persistent=False)
        # landmark index sets as tensors on the module's device: indexing with a Python list converts the list
        # to a tensor on every call (about 2x the cost of the indexing itself, tens of times per frame)
        for name, idx in _IDX.items():
            self.register_buffer(f"idx_{name}", torch.tensor(idx), persistent=False)

    def _ix(self, name: str) -> torch.Tensor:
        """The landmark index set ``name`` of ``_IDX`` (current device; ``.to()`` replaces the buffers)."""
        return self._buffers[f"idx_{name}"]  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- prepare

    @torch.no_grad()
    def prepare(
        self, image: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor, exp_ref: np.ndarray | None = None
    ) -> WarpAvatar:
        """Precompute an avatar from a square (S, S, 3) uint8 photo and its (68, 2) pixel landmarks.

        ``exp_ref`` is the photo's own expression if known (e.g. its 3DMM fit); zeros otherwise.
        """
        cfg = self.config
        img = torch.as_tensor(np.asarray(image)).float()
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
            raise ValueError(f"expected a square (S, S, 3) image, got {tuple(img.shape)}")
        size = int(img.shape[0])
        lmk = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32).reshape(68, 2)
        A, t = similarity(self.mean_shape.cpu()[_IDX["stable"]], lmk[_IDX["stable"]])
        iod = float(torch.sqrt(torch.det(A)))
        src = affine2(lmk - t, torch.linalg.inv(A))  # (68, 2) face frame

        extra = src[_IDX["forehead"]].clone()
        extra[:, 1] = src[BROWS, 1].min() - cfg.forehead_lift  # a level line above brows and temples
        ticks = torch.linspace(-1.0, 1.0, cfg.border_points)
        inner = ticks[1:-1]
        border = torch.cat([
            torch.stack([ticks, torch.full_like(ticks, -1.0)], 1),
            torch.stack([ticks, torch.full_like(ticks, 1.0)], 1),
            torch.stack([torch.full_like(inner, -1.0), inner], 1),
            torch.stack([torch.full_like(inner, 1.0), inner], 1),
        ])
        src_ctrl = torch.cat([px_to_norm(lmk, size), px_to_norm(affine2(extra, A, t), size), border])
        g = torch.linspace(0, size - 1, cfg.grid)
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        grid_norm = px_to_norm(torch.stack([gx, gy], -1).reshape(-1, 2), size)

        # region lattices (face-frame boxes: h0, h1, v0, v1)
        eye_boxes = []
        for up, lo in zip(EYE_UP, EYE_LO, strict=True):
            pts = src[list(up) + list(lo)]
            eye_boxes.append((float(pts[:, 0].min()) - 0.04, float(pts[:, 0].max()) + 0.04,
                              float(src[list(up), 1].min()) - cfg.lid_band - 0.03,
                              float(src[list(lo), 1].max()) + cfg.under_eye_band + 0.03))
        mouth = src[48:68]
        mouth_box = (float(mouth[:, 0].min()) - 0.03, float(mouth[:, 0].max()) + 0.03,
                     float(src[_IDX["lip_up_in"], 1].min()) - 0.03,
                     float(src[_IDX["lip_lo_out"], 1].max()) + cfg.lip_gap_cap + 0.03)
        eyes = self._regions(eye_boxes, A, t, size, iod)
        (mouth_region,) = self._regions([mouth_box], A, t, size, iod)

        # source curves sampled along h: the region models look them up at the spline's source columns
        step = cfg.lattice_step / 4
        lut_h0 = float(src[:, 0].min()) - 0.5
        hs = torch.arange(lut_h0, float(src[:, 0].max()) + 0.5, step)
        lut = torch.stack([interp_curve(src[list(c), 0], src[list(c), 1], hs) for c in _LUT_CURVES])

        a_inv = torch.linalg.inv(A)
        k0, k1 = (a_inv[0] * (size / 2)).tolist()
        norm_to_h = (k0, k1, float(a_inv[0] @ (size / 2 - 0.5 - t)))
        avatar = WarpAvatar(
            norm_to_h=norm_to_h, v_axis=(float(A[0, 1]) * 2 / size, float(A[1, 1]) * 2 / size), size=size,
            # channels-last: grid_sample reads the 3 channels of a pixel together (~20 % faster on CPU)
            image=img.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last),
            landmarks=lmk, src_local=src,
            extra_local=extra, frame_a=A, frame_t=t, iod_px=iod, src_ctrl_norm=src_ctrl, border_norm=border,
            grid_norm=grid_norm,
            exp_ref=torch.zeros(64) if exp_ref is None else torch.as_tensor(np.asarray(exp_ref), dtype=torch.float32),
            eyes=(eyes[0], eyes[1]), mouth=mouth_region, lut=lut, lut_h0=lut_h0, lut_step=step,
            lip_gap=(src[_IDX["pairs_in_l"], 1] - src[_IDX["pairs_in_u"], 1]).clamp_min(0.0),
            lip_thickness=(src[_IDX["lip_outer"], 1] - src[_IDX["lip_inner"], 1]).abs(),
            chin_drop=float(src[8, 1] - src[57, 1]),
        )
        self._mouth_colours(avatar)
        return avatar

    def _regions(
        self, boxes: list[tuple[float, float, float, float]], A: torch.Tensor, t: torch.Tensor, size: int,
        iod: float,
    ) -> list[Region]:
        """Lattices of one common size for face-frame boxes (h0, h1, v0, v1), and their pixel boxes."""
        step = max(self.config.lattice_step, 1.0 / iod)  # about one pixel, never finer
        qh = max(math.ceil((b[1] - b[0]) / step) + 1 for b in boxes)
        qv = max(math.ceil((b[3] - b[2]) / step) + 1 for b in boxes)
        spans = []
        for h0, _, v0, _ in boxes:
            h1, v1 = h0 + (qh - 1) * step, v0 + (qv - 1) * step
            px = affine2(torch.tensor([[h0, v0], [h1, v0], [h0, v1], [h1, v1]]), A, t)
            spans.append((h0, v0, px.min(0).values.floor().int().tolist(), px.max(0).values.ceil().int().tolist()))
        grow = math.ceil(0.03 * iod)  # head motion within a batch
        bw = min(max(hi[0] - lo[0] for *_, lo, hi in spans) + 1 + 2 * grow, size)
        bh = min(max(hi[1] - lo[1] for *_, lo, hi in spans) + 1 + 2 * grow, size)
        a_inv = torch.linalg.inv(A)
        regions = []
        for h0, v0, lo, _ in spans:
            x0, y0 = min(max(lo[0] - grow, 0), size - bw), min(max(lo[1] - grow, 0), size - bh)
            yy, xx = torch.meshgrid(torch.arange(y0, y0 + bh).float(), torch.arange(x0, x0 + bw).float(), indexing="ij")
            box_px = torch.stack([xx, yy], -1).reshape(-1, 2)
            h = h0 + step * torch.arange(qh).float()
            v = v0 + step * torch.arange(qv).float()
            pts = torch.stack(torch.meshgrid(h, v, indexing="xy"), -1).reshape(-1, 2)
            scale = torch.tensor([2.0 / (h[-1] - h[0]), 2.0 / (v[-1] - v[0])])
            offset = torch.tensor([-1.0 - h[0] * scale[0], -1.0 - v[0] * scale[1]])
            regions.append(Region(
                h=h, v=v, step=step, pts=pts, y0=y0, x0=x0, bh=bh, bw=bw, box_px=box_px, to_lattice=(scale, offset),
                centre=pts.mean(0),
                # the coarse grid spans pixel centres 0 … S−1, i.e. align_corners=True on it
                still_coarse=affine2(pts, A, t) * (2.0 / (size - 1)) - 1.0,
                still_box=affine2(box_px - t, a_inv) * scale + offset,
            ))
        return regions

    def _mouth_colours(self, avatar: WarpAvatar) -> None:
        """Teeth and mouth-cavity colours: from the photo's teeth if it shows them, else from the lips/skin."""
        img = avatar.image[0]  # (3, S, S)
        lm = avatar.landmarks

        def sample(points: torch.Tensor) -> torch.Tensor:  # (K, 2) px → (K, 3)
            xy = points.round().long().clamp(0, avatar.size - 1)
            return img[:, xy[:, 1], xy[:, 0]].T

        lip = sample((lm[_IDX["lip_outer"]] + lm[_IDX["lip_inner"]]) / 2).median(0).values
        skin = sample(torch.stack([(lm[31] + lm[3]) / 2, (lm[35] + lm[13]) / 2, lm[29], lm[28]])).median(0).values
        avatar.cavity_rgb = lip * torch.tensor([0.30, 0.20, 0.20])

        m, s = avatar.mouth, avatar.src_local  # pixels of the photo's own mouth opening
        f = affine2(m.box_px - avatar.frame_t, torch.linalg.inv(avatar.frame_a))
        up = interp_curve(s[_IDX["lip_up_in"], 0], s[_IDX["lip_up_in"], 1], f[:, 0])
        lo = interp_curve(s[_IDX["lip_lo_in"], 0], s[_IDX["lip_lo_in"], 1], f[:, 0])
        inner = (f[:, 1] > up + 0.01) & (f[:, 1] < lo - 0.01) & (f[:, 0] > s[60, 0]) & (f[:, 0] < s[64, 0])
        rgb = img[:, m.y0:m.y0 + m.bh, m.x0:m.x0 + m.bw].reshape(3, -1).T[inner]
        avatar.teeth_rgb = torch.tensor([232.0, 226.0, 212.0]) * (skin.mean() / 170.0).clamp(0.6, 1.05)
        avatar.photo_teeth = False
        if len(rgb) >= 6:
            luma = rgb @ torch.tensor([0.299, 0.587, 0.114])
            sat = (rgb.max(1).values - rgb.min(1).values) / rgb.max(1).values.clamp_min(1.0)
            teeth = rgb[(luma >= torch.maximum(luma.quantile(0.6), 0.6 * skin.mean())) & (sat < 0.45)]
            if len(teeth) >= 4:
                avatar.teeth_rgb, avatar.photo_teeth = teeth.median(0).values, True

    # ---------------------------------------------------------------------------------------- render

    def target_local(
        self, avatar: WarpAvatar, exp: torch.Tensor, blink: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target landmarks (N, 68, 2) in the face frame, and the variant handed to the spline.

        ``blink`` (N,) in [0, 1] closes the upper lids onto the lower lids by that fraction (idle blinks).
        """
        cfg, src = self.config, avatar.src_local
        n = exp.shape[0]
        lim = cfg.exp_clip * self.exp_std
        delta = torch.maximum(torch.minimum(exp - avatar.exp_ref, lim), -lim)
        off = (delta @ self.weights).reshape(n, 68, 2)
        bx, by = cfg.brow_cap  # strong styles: cap brow travel
        off[:, BROWS, 0] = off[:, BROWS, 0].clamp(-bx, bx)
        off[:, BROWS, 1] = off[:, BROWS, 1].clamp(-by, by)
        c = self._ix("corners")
        off[:, c] = off[:, c].clamp(-cfg.corner_cap, cfg.corner_cap)
        tgt = src.unsqueeze(0) + off

        # eyelids: the lower lid moves a little; the upper lid may rise a little and fall onto the lower lid
        iu, il = self._ix("lids_up"), self._ix("lids_lo")
        lo = tgt[:, il, 1].clamp(src[il, 1] - cfg.lower_lid_cap, src[il, 1] + cfg.lower_lid_cap)
        up = torch.minimum(torch.maximum(tgt[:, iu, 1], src[iu, 1] - cfg.eye_open_cap), lo)
        if blink is not None:
            up = up + blink.unsqueeze(1) * (lo - up)
        tgt[:, il, 1], tgt[:, iu, 1] = lo, up
        # inner lips may touch but not cross; the gap is capped
        iu, il = self._ix("pairs_in_u"), self._ix("pairs_in_l")
        up, lo = tgt[:, iu, 1], tgt[:, il, 1]
        mid = (up + lo) / 2
        crossed = lo < up
        up = torch.where(crossed, mid, up)
        lo = torch.minimum(torch.where(crossed, mid, lo), up + cfg.lip_gap_cap)
        tgt[:, iu, 1], tgt[:, il, 1] = up, lo
        # lips keep part of their thickness; the chin stays below the lower lip
        io, ii = self._ix("lip_outer"), self._ix("lip_inner")
        keep = tgt[:, ii, 1] + self.lip_sign * cfg.lip_min_thickness * avatar.lip_thickness
        tgt[:, io, 1] = torch.where(self.lip_sign < 0, torch.minimum(tgt[:, io, 1], keep),
                                    torch.maximum(tgt[:, io, 1], keep))
        tgt[:, 8, 1] = torch.maximum(tgt[:, 8, 1], tgt[:, 57, 1] + 0.5 * avatar.chin_drop)

        # The spline must not fold: the upper lids only ride along with their eye (mean of the corners; a spline
        # pulling a lid down between fixed corners and brows ripples the brow) and the inner lips stay a little
        # apart. The eye and mouth models draw the true contours.
        spline = tgt.clone()
        rigid = off[:, c].reshape(n, 2, 2, 2).mean(2)  # (N, eye, 2)
        spline[:, self._ix("lids_up")] = src[self._ix("lids_up")] + rigid.repeat_interleave(2, dim=1)
        iu, il = self._ix("pairs_in_u"), self._ix("pairs_in_l")
        spline[:, il, 1] = torch.maximum(spline[:, il, 1], spline[:, iu, 1] + cfg.tps_lip_min_gap * avatar.lip_gap)
        return tgt, spline

    def head_motion(self, pose: torch.Tensor, pose_ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Δpose → clamped similarity: scale (N,), rotation (N, 2, 2), shift (N, 2) in IOD along image axes."""
        cfg = self.config
        y = (pose - pose_ref) @ self.pose_weights  # (N, 4)
        log_s = y[:, 0].clamp(-cfg.head_max_log_scale, cfg.head_max_log_scale)
        ang = y[:, 1].clamp(-cfg.head_max_rotation, cfg.head_max_rotation)
        shift = y[:, 2:4]
        norm = shift.norm(dim=1, keepdim=True).clamp_min(1e-9)
        shift = shift * (norm.clamp(max=cfg.head_max_shift) / norm)
        c, s = torch.cos(ang), torch.sin(ang)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return torch.exp(log_s), rot, shift

    @torch.no_grad()
    def forward(
        self, avatar: WarpAvatar, exp: torch.Tensor, pose: torch.Tensor | None = None,
        pose_ref: torch.Tensor | None = None, blink: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Render N frames: exp (N, 64), pose (N, 9) relative to pose_ref (9,), blink (N,) → (N, S, S, 3) uint8.

        ``pose=None`` renders a still head (and skips the head-motion arithmetic); ``pose_ref=None`` takes the
        first row of ``pose`` as the reference.
        """
        cfg, size = self.config, avatar.size
        n = exp.shape[0]
        tgt, spline = self.target_local(avatar, exp.float(), blink)
        A, t = avatar.frame_a, avatar.frame_t
        if pose is None:
            move = None
            lin, off = A.expand(n, 2, 2), t.expand(n, 2)
        else:  # face frame before head motion → pixels, per frame: lin · f + off
            scale, rot, shift_img = self.head_motion(pose.float(), (pose[0] if pose_ref is None else pose_ref).float())
            shift = affine2(shift_img, A.T / avatar.iod_px)  # image axes → face frame (R^T · shift)
            lin = A @ (rot * scale[:, None, None])
            off = affine2(shift, A) + t
            move = (lin, off)

        # ---- spline: target control points → source control points (backward map), normalised coordinates
        ctrl = torch.cat([spline, avatar.extra_local.unsqueeze(0).expand(n, -1, -1)], 1)  # (N, K, 2)
        ctrl_px = torch.baddbmm(off.unsqueeze(1), ctrl, lin.transpose(1, 2))
        tgt_ctrl = torch.cat([px_to_norm(ctrl_px, size), avatar.border_norm.unsqueeze(0).expand(n, -1, -1)], 1)
        coef = tps_fit(tgt_ctrl, avatar.src_ctrl_norm.unsqueeze(0) - tgt_ctrl, cfg.tps_reg)
        coarse = avatar.grid_norm.T.unsqueeze(0) + tps_eval(coef, tgt_ctrl, avatar.grid_norm)  # (N, 2, G*G)
        coarse = coarse.reshape(n, 2, cfg.grid, cfg.grid)

        # ---- region models on their lattices
        # The eye model corrects exactly the lid motion the spline leaves out; below a fraction of a pixel it is
        # skipped (on CPU only: a data-dependent branch would break CUDA graph capture).
        lids = self._ix("lids_up")
        eyes_move = tgt.is_cuda or bool((tgt[:, lids, 1] - spline[:, lids, 1]).abs().max() > cfg.eye_skip)
        eye_dv = self._eye_model(avatar, tgt, spline, coarse, move) if eyes_move else None  # (N, 2, Qv, Qh)
        mouth_fields = self._mouth_model(avatar, tgt, spline, coarse, move)  # (N, 5, Qv, Qh)

        # ---- full-resolution sampling grid, corrected inside the region boxes
        grid = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)  # (N, 2, S, S)
        f01, f11 = avatar.v_axis  # the face-frame v axis in normalised image units
        e0, e1 = avatar.eyes
        placed = []
        jobs = [] if eye_dv is None else [(e0, eye_dv[:, 0:1]), (e1, eye_dv[:, 1:2])]
        for region, fld in jobs + [(avatar.mouth, mouth_fields)]:
            y0, x0, values = self._to_box(avatar, region, fld, move)
            dv = values[:, 0]
            grid[:, 0, y0:y0 + region.bh, x0:x0 + region.bw] += f01 * dv
            grid[:, 1, y0:y0 + region.bh, x0:x0 + region.bw] += f11 * dv
            placed.append((y0, x0, values))

        # ---- sample the photo, paint the newly exposed mouth interior
        out = F.grid_sample(
            avatar.image.expand(n, -1, -1, -1), grid.permute(0, 2, 3, 1), mode="bilinear",
            padding_mode="border", align_corners=False,
        )  # (N, 3, S, S)
        y0, x0, values = placed[-1]
        m = avatar.mouth
        patch = out[:, :, y0:y0 + m.bh, x0:x0 + m.bw]
        patch += values[:, 1:2] * (values[:, 2:5] - patch)
        # (N, S, S, 3) in memory first, so that the rounding passes and the uint8 result are contiguous; round
        # half up and saturate (values are ≥ 0 after the clamp, so truncation rounds)
        out = out.permute(0, 2, 3, 1).contiguous()
        return out.clamp_(0.0, 255.0).add_(0.5).to(torch.uint8)

    # ---------------------------------------------------------------------------------------- regions

    def _lattice_sources(
        self, avatar: WarpAvatar, regions: tuple[Region, ...], coarse: torch.Tensor, move: Move
    ) -> torch.Tensor:
        """Face-frame h of the spline's source for every lattice point: (N, R, Qv*Qh)."""
        n, size = coarse.shape[0], avatar.size
        if move is None:
            q = torch.cat([r.still_coarse for r in regions]).expand(n, -1, -1)
        else:
            lin, off = move
            c = 2.0 / (size - 1)
            pts = torch.cat([r.pts for r in regions]).expand(n, -1, -1)
            q = torch.baddbmm(off.unsqueeze(1) * c - 1.0, pts, lin.transpose(1, 2) * c)  # (N, P, 2)
        src = F.grid_sample(coarse, q.unsqueeze(1), mode="bilinear", padding_mode="border",
                            align_corners=True)[:, :, 0]  # (N, 2, P) normalised source positions
        k0, k1, c0 = avatar.norm_to_h
        return (k0 * src[:, 0] + k1 * src[:, 1] + c0).reshape(n, len(regions), -1)

    def _lookup(self, avatar: WarpAvatar, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Source curves ``rows`` (C,) or (B, C) of the lookup table at h (B, …) → (B, C, …)."""
        b = h.shape[0]
        lut = avatar.lut[rows] if rows.dim() == 2 else avatar.lut[rows].expand(b, -1, -1)  # (B, C, L)
        x = ((h.reshape(b, 1, -1) - avatar.lut_h0) / avatar.lut_step).clamp(0.0, lut.shape[-1] - 1.001)
        i0 = x.long()
        frac = x - i0
        i0 = i0.expand(-1, lut.shape[1], -1)
        y0 = lut.gather(2, i0)
        y1 = lut.gather(2, i0 + 1)
        return (y0 + frac * (y1 - y0)).reshape((b, lut.shape[1]) + h.shape[1:])

    def _eye_model(
        self, avatar: WarpAvatar, tgt: torch.Tensor, spline: torch.Tensor, coarse: torch.Tensor, move: Move
    ) -> torch.Tensor:
        """Eyelid correction (source displacement along v) on both eye lattices → (N, 2, Qv, Qh).

        Per column, in coordinates relative to the mid-height of the eye corners (rigid eye motion cancels),
        the wanted map is: the lid-skin band [A, U] follows the lid down over the eye (its lash margin rigidly,
        the skin above stretching); the opening [U, L] keeps the eyeball in place while the lid closes (nothing
        is squashed) and stretches only when the eye opens wider than in the photo; the band below [L, Z]
        follows the lower lid. The spline already does roughly a piecewise-linear version of this with its own
        (unmoved) lids, so only the difference to that model is added: it vanishes at A, at Z and at the
        corners, leaving no seams.
        """
        cfg = self.config
        n = tgt.shape[0]
        e0, e1 = avatar.eyes
        h_t = torch.stack([e0.h, e1.h])  # (2, Qh) target columns (lattice)
        v_t = torch.stack([e0.v, e1.v])  # (2, Qv)
        qv, qh = e0.v.shape[0], e0.h.shape[0]
        h_s = self._lattice_sources(avatar, avatar.eyes, coarse, move).reshape(n, 2, qv, qh)
        src = avatar.src_local

        # target curves per lattice column: upper lid (true and spline's) and lower lid → (N, 2, 3, Qh)
        up_t, lo_t, up_p = tgt[:, self.eye_up], tgt[:, self.eye_lo], spline[:, self.eye_up]  # (N, 2, 4, 2)
        curves = interp_curve(torch.stack([up_t[..., 0], up_p[..., 0], lo_t[..., 0]], 2),
                              torch.stack([up_t[..., 1], up_p[..., 1], lo_t[..., 1]], 2),
                              h_t[None, :, None, :].expand(n, -1, 3, -1))
        o_t = ((up_t[:, :, 0, 1] + up_t[:, :, 3, 1]) / 2)[:, :, None]  # (N, 2, 1)
        o_s = ((src[self.eye_up[:, 0], 1] + src[self.eye_up[:, 3], 1]) / 2)[None, :, None, None]  # (1, 2, 1, 1)
        ut, up_, lt = [(curves[:, :, k] - o_t).unsqueeze(2) for k in range(3)]  # (N, 2, 1, Qh)
        # source curves at the spline's source columns → (N, 2, Qv, Qh)
        rows = self.eye_rows.repeat(n, 1)  # (2N, 2): eye e uses LUT rows 2e, 2e+1
        s_curves = self._lookup(avatar, rows, h_s.reshape(2 * n, -1)).reshape(n, 2, 2, *h_s.shape[2:])
        us, ls = s_curves[:, :, 0] - o_s, s_curves[:, :, 1] - o_s
        u = v_t[None, :, :, None] - o_t.unsqueeze(-1)  # (N, 2, Qv, 1)

        a = us - cfg.lid_band
        z = ls + cfg.under_eye_band
        lash = cfg.lash_band
        lt = torch.minimum(lt, z - 0.01)
        ut = torch.minimum(torch.maximum(ut, a + lash + 0.01), lt)
        up_ = torch.minimum(torch.maximum(up_, a + lash + 0.01), ut)
        gs = (ls - us).clamp_min(0.0)

        def lid_band(top: torch.Tensor) -> torch.Tensor:  # [A, top] → [A, us]: lash margin rigid, skin stretches
            skin = a + (u - a) * (us - lash - a) / (top - lash - a)
            return torch.where(u >= top - lash, us - (top - u), skin)

        v_under = ls + (u - lt) * (z - ls) / (z - lt).clamp_min(1e-6)
        gt = lt - ut
        keep_still = torch.minimum((us - ut).clamp_min(0.0), ls - lt)  # eyeball still while [ut, lt] fits inside
        v_open = torch.where(gt <= gs, u + keep_still, us + (u - ut) * gs / gt.clamp_min(1e-6))
        want = torch.where(u < ut, lid_band(ut), torch.where(u <= lt, v_open, v_under))
        gp = (lt - up_).clamp_min(1e-6)
        model = torch.where(u < up_, lid_band(up_), torch.where(u <= lt, us + (u - up_) * gs / gp, v_under))
        r = cfg.ramp
        c0 = up_t[:, :, 0, 0, None, None]  # (N, 2, 1, 1) target eye corners
        c1 = up_t[:, :, 3, 0, None, None]
        ht = h_t[None, :, None, :]
        w = smoothstep(torch.minimum(ht - c0, c1 - ht) / r + 1.0)
        return torch.where((u > a) & (u < z), w * (want - model), 0.0)

    def _mouth_model(
        self, avatar: WarpAvatar, tgt: torch.Tensor, spline: torch.Tensor, coarse: torch.Tensor, move: Move
    ) -> torch.Tensor:
        """Mouth correction and fill on the mouth lattice → (N, 5, Qv, Qh): dv, alpha, fill RGB.

        Inside the target opening the upper part rides with the upper lip and the lower part with the lower
        lip (rigidly: teeth do not stretch); the photo's opening is shared between the jaws as an incisor's
        length for the upper one and the rest for the lower one (all of it for the upper one when it is
        narrower than 1.6 incisors, as in a smile). Whatever lies beyond a jaw's share was hidden
        in the photo: it is newly exposed and painted (upper/lower teeth bands, dark cavity). Below, the lower
        lip body follows the lower lip. As for the eyes only the difference to what the spline roughly does
        (with its lips kept apart) is applied, over the band from the upper inner lip to the lower outer lip,
        so nothing changes at the band's edges.
        """
        cfg = self.config
        n = tgt.shape[0]
        reg = avatar.mouth
        px = reg.step  # one lattice step: the antialiasing width
        h_s = self._lattice_sources(avatar, (reg,), coarse, move).reshape(n, reg.v.shape[0], reg.h.shape[0])
        upl, lol, loo = self._ix("lip_up_in"), self._ix("lip_lo_in"), self._ix("lip_lo_out")

        # target curves per column → (N, 1, Qh); source curves at the source columns → (N, Qv, Qh)
        qh = reg.h.shape[0]
        inner = interp_curve(torch.stack([tgt[:, upl, 0], tgt[:, lol, 0], spline[:, lol, 0]], 1),
                             torch.stack([tgt[:, upl, 1], tgt[:, lol, 1], spline[:, lol, 1]], 1),
                             reg.h.expand(n, 3, qh))
        outer = interp_curve(tgt[:, loo, 0], tgt[:, loo, 1], reg.h.expand(n, qh))
        ut, lt, lp = inner[:, 0:1], inner[:, 1:2], inner[:, 2:3]
        ot = torch.maximum(outer.unsqueeze(1), lp + 1e-3)
        us, ls, os_ = self._lookup(avatar, self.mouth_rows, h_s).unbind(1)
        v_t = reg.v[None, :, None]  # (1, Qv, 1)
        h_t = reg.h[None, None, :]  # (1, 1, Qh)

        a, b = v_t - ut, lt - v_t
        gt, gs = lt - ut, (ls - us).clamp_min(0.0)
        # a smile's opening is all upper teeth; only a wide-open photo shows the lower jaw's side too
        keep_up = torch.where(gs < 1.6 * cfg.teeth_upper, gs, gs.clamp(max=cfg.teeth_upper))
        keep_lo = gs - keep_up
        h0, h1 = tgt[:, 60, 0, None, None], tgt[:, 64, 0, None, None]  # (N, 1, 1)
        upper = a * keep_lo <= b * keep_up  # when the lips close in, each lip covers its share
        interior = torch.where(upper, us + torch.minimum(a, keep_up), ls - torch.minimum(b, keep_lo))
        # dlib's lower inner-lip points sit on the teeth's edge in an open photo: the lip proper starts a little
        # lower (else a rim of teeth rides along the moving lip); phased in as the mouth opens beyond the photo's
        inset = cfg.lip_edge_inset
        ls_lip = ls + torch.where(gs > 2 * inset, ((gt - gs) / inset).clamp(0.0, 1.0) * inset, 0.0)
        lip_body = ls_lip + (v_t - lt) * (os_ - ls_lip) / (ot - lt).clamp_min(1e-6)
        # under the painted area, nearer the lower lip, show the lower jaw's edge (or the lip): the antialiased
        # border then blends cavity with what borders it
        exposed = torch.where(upper, a > keep_up, b > keep_lo)
        lower_edge = torch.where(keep_lo > 0, ls - keep_lo, ls_lip)
        interior = torch.where(exposed & (b < a), lower_edge, interior)
        want = torch.where(v_t < lt, interior, lip_body)
        model = torch.where(v_t < lp, us + a * gs / (lp - ut).clamp_min(1e-6), ls + (v_t - lp) * (os_ - ls) / (ot - lp))
        band = (a > 0) & (v_t < ot) & (h_t > h0) & (h_t < h1)
        dv = torch.where(band, want - model, 0.0)
        # antialiased: distance (in samples) to the nearest lip / corner / hidden-area edge
        edge = torch.minimum(torch.minimum(a, b), torch.where(upper, a - keep_up, b - keep_lo))
        alpha = ramp01(torch.minimum(edge, torch.minimum(h_t - h0, h1 - h_t)) / px)

        side = (2.0 * (h_t - h0) / (h1 - h0).clamp_min(1e-6) - 1.0).abs().clamp(max=1.0)  # (N, 1, Qh)
        narrow = 1.0 - 0.4 * side * side  # teeth look shorter towards the corners
        t_up = cfg.teeth_upper * narrow
        t_lo = ((gt - cfg.lower_teeth_from) * 0.5).clamp(0.0, cfg.teeth_lower) * narrow
        upper_teeth = ramp01((t_up - a) / px) * smoothstep((0.92 - side) / 0.1)
        lower_teeth = ramp01((t_lo - b) / px) * smoothstep((0.6 - side) / 0.2)  # only the front ones show
        teeth = torch.maximum(upper_teeth, lower_teeth)
        # darker towards the corners, in the upper lip's shadow, and for the (shaded, recessed) lower row
        shade = (1.0 - 0.55 * side * side) * (0.8 + 0.2 * smoothstep(a / (0.3 * cfg.teeth_upper)))
        shade = shade * torch.where(upper_teeth >= lower_teeth, 1.0, 0.75)
        cavity = avatar.cavity_rgb[None, :, None, None] * (0.6 + 0.4 * (1.0 - side)).unsqueeze(1)  # (N, 3, 1, Qh)
        teeth_col = avatar.teeth_rgb[None, :, None, None] * shade.unsqueeze(1)
        fill = cavity + teeth.unsqueeze(1) * (teeth_col - cavity)  # (N, 3, Qv, Qh)
        return torch.cat([dv.unsqueeze(1), alpha.unsqueeze(1), fill], 1)

    def _to_box(
        self, avatar: WarpAvatar, region: Region, fields: torch.Tensor, move: Move
    ) -> tuple[int, int, torch.Tensor]:
        """Resample lattice fields (N, C, Qv, Qh) into the region's pixel box, placed where the head moved it.

        Returns the box origin (y0, x0) and the fields per box pixel (N, C, bh, bw); zero outside the lattice.
        """
        n, size = fields.shape[0], avatar.size
        if move is None:
            y0, x0 = region.y0, region.x0
            q = region.still_box.expand(n, -1, -1)
        else:
            lin, off = move
            home = affine2(region.centre, avatar.frame_a, avatar.frame_t)
            d = ((lin @ region.centre + off).mean(0) - home).round()  # the lattice centre's shift, batch mean
            x0 = min(max(region.x0 + int(d[0]), 0), size - region.bw)
            y0 = min(max(region.y0 + int(d[1]), 0), size - region.bh)
            # pixel → face frame before head motion → lattice: (S·lin⁻¹) p + S·lin⁻¹(Δ − off) + o
            scale, offset = region.to_lattice
            k = torch.linalg.inv(lin) * scale[None, :, None]  # (N, 2, 2)
            delta = lin.new_tensor([float(x0 - region.x0), float(y0 - region.y0)])
            bias = torch.einsum("nij,nj->ni", k, delta - off) + offset
            q = torch.baddbmm(bias.unsqueeze(1), region.box_px.expand(n, -1, -1), k.transpose(1, 2))
        out = F.grid_sample(fields, q.reshape(n, region.bh, region.bw, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
        return y0, x0, out
