"""Mouth region model: jaws ride rigidly with their lips; the newly exposed interior is filled."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from models.warp.avatar import WarpAvatar, lookup
from models.warp.config import WarpConfig
from models.warp.interior import RIM
from models.warp.tps import interp_curve, ramp01, smoothstep

if TYPE_CHECKING:
    from models.warp.core import IndexSets


def mouth_model(
    cfg: WarpConfig, avatar: WarpAvatar, tgt: torch.Tensor, spline: torch.Tensor, uv: torch.Tensor, ix: IndexSets,
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

    ``uv`` (N, Qv, Qh, 2): where the spline samples the photo at each lattice point (``lattice_sources``: u for
    the source-curve lookup, v face-frame).
    """
    n = tgt.shape[0]
    reg = avatar.mouth
    px = reg.step  # one lattice step: the antialiasing width
    v_spline = uv[..., 1]  # where the spline samples the photo

    # target curves per column → (N, 1, Qh); source curves at the source columns → (N, Qv, Qh)
    knots = torch.cat([tgt, spline], 1)[:, ix.mouth_knots]  # (N, 4, 7, 2)
    v_t, h_t = avatar.mouth_v, avatar.mouth_h  # (1, Qv, 1), (1, 1, Qh)
    curves = interp_curve(knots[..., 0], knots[..., 1], h_t.expand(n, 4, -1))  # (N, 4, Qh)
    ut, lt, lp, outer = curves.unsqueeze(2).unbind(1)  # (N, 1, Qh)
    ot = torch.maximum(outer, lp + 1e-3)
    us, ls, os_, edge_up, edge_lo = lookup(avatar.mouth_lut, uv).unbind(1)  # edges: closure.lip_edges

    a, b = v_t - ut, lt - v_t
    gt, gs = lt - ut, (ls - us).clamp_min(0.0)
    # a smile's opening is all upper teeth; only a wide-open photo shows the lower jaw's side too
    tu = max(cfg.teeth_upper, avatar.upper_teeth)  # the photo's own upper teeth when it shows longer ones
    keep_up = torch.where(gs < 1.6 * tu, gs, gs.clamp(max=tu))
    keep_lo = gs - keep_up
    if avatar.interior is not None and not avatar.opening_teeth:
        # A dark slit in the photo is cavity, not teeth: riding with the upper lip it stayed a dark band under the
        # lip and hid the exemplar's upper teeth (real speakers show their upper teeth as the mouth opens). As
        # the opening grows beyond the photo's the real interior takes the slit over; at the photo's own opening
        # (rest) nothing changes. (The painted fallback keeps the slit: it is the benchmark's baseline.)
        hold = 1.0 - ramp01((gt - gs) / cfg.slit_release)
        keep_up, keep_lo = keep_up * hold, keep_lo * hold
    h0, h1 = tgt[:, 60:65:4, 0].reshape(n, 2, 1, 1).unbind(1)  # (N, 1, 1) the inner-lip corners 60, 64
    upper = a * keep_lo <= b * keep_up  # when the lips close in, each lip covers its share
    interior = torch.where(upper, us + torch.minimum(a, keep_up), ls - torch.minimum(b, keep_lo))
    # dlib's lower inner-lip points sit on the teeth's edge in an open photo: the lip proper starts a little
    # lower (else a rim of teeth rides along the moving lip); phased in as the mouth opens beyond the photo's
    inset = cfg.lip_edge_inset
    ls_lip = torch.where(gs > 2 * inset, ls + (gt - gs).clamp(0.0, inset), ls)
    # closing below the photo's opening: the lips' true edges may lie a little outside dlib's inner points (which
    # sit on the teeth in a smile), so the meeting lips are drawn from there (else a line of teeth stays); where
    # they begin is measured per column in the photo (a fixed inset skipped thin lips: a scar)
    shut = ((gs - gt) / gs.clamp_min(1e-6)).clamp(0.0, 1.0)  # how much of the photo's opening is closed
    closing_up, closing_lo = shut * edge_up, shut * edge_lo
    ls_lip = ls_lip + closing_lo
    lip_body = ls_lip + (v_t - lt) * (os_ - ls_lip) / (ot - lt).clamp_min(1e-6)
    # under the painted area, nearer the lower lip, show the lower jaw's edge (or the lip): the antialiased
    # border then blends cavity with what borders it
    exposed = torch.where(upper, a > keep_up, b > keep_lo)
    lower_edge = torch.where(keep_lo > 0, ls - keep_lo, ls_lip)
    interior = torch.where(exposed & (b < a), lower_edge, interior)
    # a column whose lips (nearly) touch shows no interior: its sub-pixel gap sampled the photo's teeth rows (bright
    # specks along closed lips); it is lip meeting lip, each from its edge
    touch = (gt < cfg.lip_touch) & (gt < 0.5 * gs)  # (closed to under half the photo's gap there)
    interior = torch.where(touch, torch.where(a < 0.5 * gt, us - closing_up, ls_lip), interior)
    want = torch.where(v_t < lt, interior, lip_body)
    # Just above the upper lip's edge the upper lip rides rigidly (the smooth spline, compressing the photo's
    # opening between lips kept apart, pulls teeth rows up into view: a closed mouth kept a strip of teeth).
    # Closing a wide photo opening (a laugh, a toothy smile), the spline compresses the opening and drags the rows
    # above the upper lip down into the photo's teeth (a jagged line of teeth over closed lips): the rigid ride
    # then reaches further up, by a share of the closed part of the photo's opening.
    m = cfg.mouth_margin
    m_top = m + cfg.close_reach * shut * gs
    top_fade = ramp01((a + m_top) / m_top)
    lip_edge = us - closing_up * top_fade
    want = torch.where(a < 0, lip_edge + a, want)
    # the correction replaces the spline's actual sampling position inside the band, faded to zero over a
    # margin at its top, bottom and corners (continuous: no seams, no torn corners)
    r = cfg.ramp
    side = torch.minimum(h_t - h0, h1 - h_t)  # (N, 1, Qh) inside the corners
    fade = top_fade * ramp01((ot - v_t) / m) * smoothstep(side / r + 1.0)
    dv = fade * (want - v_spline)
    # and above the upper lip nothing is sampled from inside the photo's opening, however the spline bends there
    dv = torch.where((a < 0) & (side > 0), torch.minimum(dv, lip_edge - v_spline), dv)
    # antialiased: distance (in samples) to the nearest lip / corner / hidden-area edge
    edge = torch.minimum(torch.minimum(a, b), torch.where(upper, a - keep_up, b - keep_lo))
    alpha = ramp01(torch.minimum(edge, side) / px)
    # Where the lips touch, the sampling position jumps from the upper lip's edge to the lower lip's across the
    # photo's opening, and a pixel on the seam (its position interpolated) sampled teeth or cavity in between:
    # jagged specks along closed lips. The seam is painted instead: the shaded line where real lips meet. Painted
    # fully over the lattice points either side of the jump (a pixel between them interpolates across it: painted
    # over one step and faded, half of such a pixel was teeth or cavity, a dotted white and black line), then
    # faded out over a further step, lighter away from its middle: lip colour shading into the seam.
    dist = (a - 0.5 * gt).abs() / px  # (N, Qv, Qh) lattice steps from the seam
    seam = ramp01(2.0 - dist) * ramp01(side / px) * touch
    alpha = torch.where(touch, seam * cfg.seam_alpha, alpha)
    shade = torch.lerp(avatar.seam_dark, avatar.seam_lip, ramp01(dist).unsqueeze(1))

    if avatar.interior is not None:
        fill = exemplar_fill(cfg, avatar, tgt, a, b, gt, h0, h1, h_t)
    else:
        fill = painted_fill(cfg, avatar, a, b, gt, h0, h1, h_t)
    fill = torch.where(touch.unsqueeze(1), shade, fill)
    return torch.cat([dv.unsqueeze(1), alpha.unsqueeze(1), fill], 1)


def exemplar_fill(cfg: WarpConfig, avatar: WarpAvatar, tgt: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  gt: torch.Tensor, h0: torch.Tensor, h1: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """Real interiors stretched into the target inner-lip contour → (N, 3, Qv, Qh).

    Lattice point (h, v) → lip-normalised (s, t): s along the corners 60 → 64, t from the upper inner lip to the
    lower one in that column (a, b: below the upper and above the lower one; gt the gap); the blended exemplar
    is sampled there.
    """
    assert avatar.interior is not None
    patches, g_e = avatar.interior.blend(
        tgt, avatar.interior_memory, cfg.interior_hold, cfg.interior_hold_stretch, cfg.interior_hold_motion,
        avatar.interior_last_gap)  # (N, 3, T, S), (N, 1, 1)
    s = (h_t - h0) / (h1 - h0).clamp_min(1e-6)  # (N, 1, Qh)
    gt = gt.clamp_min(1e-6)
    if cfg.interior_jaws:
        # Rigid jaws in the exemplar too: its upper rows (upper teeth) keep their physical size below the upper
        # lip and its lower rows (lower teeth, tongue) above the lower lip; a narrower target loses the middle
        # of the exemplar (the cavity), a wider one stretches only its middle row. (Stretched uniformly, a small
        # opening squeezed the teeth into a line, and a large one stretched them into fangs.)
        u = cfg.interior_split
        g_e = g_e * (1.0 - 2.0 * RIM)  # the patch rows span the exemplar's gap less its two lip rims
        t = torch.where(a < u * gt, torch.clamp(a / g_e, max=u), torch.clamp(1.0 - b / g_e, min=u))
    else:
        t = a / gt  # (N, Qv, Qh)
    # skip the exemplars' lip rims (dlib's inner-lip points sit on the lips): RIM + (1 − 2·RIM)·t, normalised
    inner = 1.0 - 2.0 * RIM
    grid = torch.stack([(2.0 * s - 1.0).expand_as(t), t * (2.0 * inner) - inner], -1)
    return F.grid_sample(patches, grid, mode="bilinear", padding_mode="border", align_corners=False)


def painted_fill(cfg: WarpConfig, avatar: WarpAvatar, a: torch.Tensor, b: torch.Tensor, gt: torch.Tensor,
                 h0: torch.Tensor, h1: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """The painted interior (no bank): upper/lower teeth bands over a dark cavity → (N, 3, Qv, Qh)."""
    px = avatar.mouth.step
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
    return fill
