"""Eyelid region model: a closing lid slides over the eyeball (a 1-D remap along the face's vertical axis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.warp.avatar import WarpAvatar, lookup
from models.warp.config import WarpConfig
from models.warp.tps import cubic_curve, smoothstep

if TYPE_CHECKING:
    from models.warp.core import IndexSets


def eye_model(
    cfg: WarpConfig, avatar: WarpAvatar, tgt: torch.Tensor, spline: torch.Tensor, uv: torch.Tensor, ix: IndexSets,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eyelid correction (source displacement along v) on both eye lattices → (N, 2, Qv, Qh), and per eye how far
    it has closed → (2N, 1, 1, 1), eye-major: the largest share of the photo's lid gap closed over its lattice (0
    for an eye as open as the photo's, 1 shut) × ``lid_fill_gain``, capped at 1: how much of the closing lid's
    colour to add (``avatar.lid_fill``, models/warp/lidfill.py).

    ``uv`` (N, 2, Qv, Qh, 2): where the spline samples the photo at each lattice point (``lattice_sources``).

    Per column, in coordinates relative to the mid-height of the eye corners (rigid eye motion cancels),
    the wanted map is: the lid-skin band [A, U] follows the lid down over the eye (its lash margin rigidly,
    the skin above stretching); the opening [U, L] keeps the eyeball in place while the lid closes (nothing
    is squashed) and stretches only when the eye opens wider than in the photo; the band below [L, Z]
    follows the lower lid. The spline already does roughly a piecewise-linear version of this with its own
    (unmoved) lids, so only the difference to that model is added: it vanishes at A, at Z and at the
    corners, leaving no seams.
    """
    n = tgt.shape[0]
    h_t, v_t = avatar.eye_h, avatar.eye_v  # (1, 2, 1, Qh) target columns, (1, 2, Qv, 1) rows of the lattices

    # target curves per lattice column: upper lid (true and spline's) and lower lid → (N, 2, 3, Qh)
    knots = torch.cat([tgt, spline], 1)[:, ix.eye_knots]  # (N, 2, 3, 4, 2)
    up_t = knots[:, :, 0]  # (N, 2, 4, 2) upper lids, corner to corner
    curves = cubic_curve(knots[..., 0], knots[..., 1], h_t.expand(n, -1, 3, -1))
    ends = up_t[:, :, ::3, None, None]  # (N, 2, 2, 1, 1, 2) the eye corners (the upper lid's end knots)
    o_t = torch.lerp(*ends[..., 1].unbind(2), 0.5)  # (N, 2, 1, 1) their mid-height
    ut, up_, lt = (curves - o_t).unsqueeze(3).unbind(2)  # (N, 2, 1, Qh)
    # source curves at the spline's source columns → (N, 2, Qv, Qh)
    lut = avatar.eye_lut if n == 1 else avatar.eye_lut.repeat(n, 1, 1, 1)  # (2N, 2, 1, L): eye-minor, as uv
    s_curves = lookup(lut, uv.reshape(2 * n, -1, 2)).reshape(n, 2, 2, *uv.shape[2:4])
    us, ls = (s_curves - avatar.eye_level).unbind(2)
    u = v_t - o_t  # (N, 2, Qv, 1)

    a = us - cfg.lid_band
    z = ls + cfg.under_eye_band
    lash = cfg.lash_band
    lt = torch.minimum(lt, z - (0.01 + cfg.lid_overlap))
    a_lash = a + (lash + 0.01)
    ut = torch.minimum(torch.maximum(ut, a_lash), lt)
    up_ = torch.minimum(torch.maximum(up_, a_lash), ut)
    u_a, a_l = u - a, a + lash
    us_a = cfg.lid_band - lash  # us − lash − A: the skin band's length in the photo

    # A closing lid also covers the lower lid's rim: dlib's lower-lid points lie on the eyeball's edge, and the
    # rim below them (wet line, a sliver of white) would peep out under a lid that stopped on them. As the gap
    # closes, the opening's bottom edge (and so the lid closing onto it) moves lid_overlap lower over that rim,
    # in target and source alike (the under-eye skin keeps its place); an eye as open as the photo's is untouched.
    gs = (ls - us).clamp_min(0.0)
    gt = lt - ut  # (cover moves both ends: the gap is unchanged)
    closed = ((gs - gt) / gs.clamp_min(0.02)).clamp(0.0, 1.0)  # 0 where gs = 0 (corners)
    cover = cfg.lid_overlap * closed
    ut_c, lt_c, ls_c = ut + cover, lt + cover, ls + cover
    # [A, top] → [A, us] for the target lid (ut_c) and the spline's (up_) in one pass: the lash margin rigid, the
    # skin [A, top − lash] ← [A, us − lash] by s(x) = c·x + (Y − c·X)·(x/X)², most of the stretch next to the
    # margin and little at A (the crease above an open lid stays nearly in place as the lid unfolds under it; a
    # uniform stretch dragged it down into a U); c = min(1, 1.5·Y/X) keeps s' > 0 (no fold)
    top = torch.stack([ut_c, up_])  # (2, N, 2, 1, Qh)
    span = (top - a_l).clamp_min(1e-6)  # X
    ratio = us_a / span  # Y / X
    c = (ratio * 1.5).clamp_max(1.0)
    skin = a + u_a * (c + (ratio - c) * (u_a / span))
    band_want, band_model = torch.where(u >= top - lash, us - (top - u), skin).unbind(0)

    v_under = ls_c + (u - lt_c) * (z - ls_c) / (z - lt_c).clamp_min(1e-6)  # (the spline's too, near enough)
    # what the spline does with its own (unmoved) lids
    gp = (lt - up_).clamp_min(1e-6)
    model = torch.where(u < up_, band_model, torch.where(u <= lt, us + (u - up_) * gs / gp, v_under))
    keep_still = torch.minimum((us - ut_c).clamp_min(0.0), ls - lt)  # eyeball still while [ut, lt] fits inside
    v_open = torch.where(gt <= gs, u + keep_still, us + (u - ut_c) * gs / gt.clamp_min(1e-6))
    want = torch.where(u < ut_c, band_want, torch.where(u <= lt_c, v_open, v_under))
    r = cfg.ramp
    c0, c1 = ends[..., 0].unbind(2)  # (N, 2, 1, 1) target eye corners (h)
    w = smoothstep(torch.minimum(h_t - c0, c1 - h_t) / r + 1.0)
    shut = closed.amax((-2, -1))  # (N, 2) → eye-major (2N, 1, 1, 1); one frame (streaming) is eye-major as it is
    shut = shut.view(2, 1, 1, 1) if n == 1 else shut.transpose(0, 1).reshape(2 * n, 1, 1, 1)
    if cfg.lid_fill_gain != 1.0:  # (a config constant: no per-frame branch)
        shut = (shut * cfg.lid_fill_gain).clamp_(max=1.0)
    return torch.where((u > a) & (u < z), w * (want - model), 0.0), shut

