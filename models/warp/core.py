"""The warp renderer's per-frame core: expression → target landmarks → spline → region models → pixels.

See the package docstring (models/warp/__init__.py) for the pipeline.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from models.warp.avatar import (
    Move,
    WarpAvatar,
    box_runs,
    head_falloff,
    head_radius,
    lattice_sources,
    neck_hold,
    prepare_avatar,
    to_box,
)
from models.warp.config import WarpConfig
from models.warp.eyes import eye_model
from models.warp.interior import BANK_PATH, MouthBank
from models.warp.landmarks import (
    _IDX,
    BROWS,
    EYE_LO,
    EYE_UP,
    LIPS,
    ExpressionMap,
    is_relative_pose,
    pose_features,
)
from models.warp.mouth import mouth_model
from models.warp.tps import affine2, tps_eval_at, tps_eval_grid, tps_fit

log = logging.getLogger(__name__)


class IndexSets(torch.nn.Module):
    """Landmark index sets as tensors on the renderer's device.

    Indexing with a Python list converts the list to a tensor on every call (about 2x the cost of the indexing
    itself, tens of times per frame); as buffers they are converted once and follow ``.to(device)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("eye_up", torch.tensor(EYE_UP), persistent=False)  # (2, 4)
        self.register_buffer("eye_lo", torch.tensor(EYE_LO), persistent=False)
        # knots of the region models' target curves in cat([tgt, spline], 1) (N, 136, 2), gathered in one index:
        # per eye its upper lid, the spline's upper lid, its lower lid (2, 3, 4); for the mouth the upper and
        # lower inner lip, the spline's lower inner lip (5 knots, the last repeated: a zero-length segment adds
        # nothing) and the lower outer lip (4, 7)
        self.register_buffer("eye_knots", torch.tensor(
            [[up, [68 + i for i in up], lo] for up, lo in zip(EYE_UP, EYE_LO, strict=True)]), persistent=False)
        up_in, lo_in = _IDX["lip_up_in"] + [64, 64], _IDX["lip_lo_in"] + [64, 64]
        self.register_buffer("mouth_knots", torch.tensor(
            [up_in, lo_in, [68 + i for i in lo_in], _IDX["lip_lo_out"]]), persistent=False)
        for name, idx in _IDX.items():
            self.register_buffer(f"idx_{name}", torch.tensor(idx), persistent=False)

    def get(self, name: str) -> torch.Tensor:
        """The landmark index set ``name`` of ``_IDX`` (current device; ``.to()`` replaces the buffers)."""
        return self._buffers[f"idx_{name}"]  # type: ignore[return-value]


def plate_weight(cfg: WarpConfig, avatar: WarpAvatar, maps: torch.Tensor, disp: torch.Tensor, home: torch.Tensor
                 ) -> torch.Tensor:
    """Per coarse-grid point (N, G*G), how much of the background plate to show: where the warp samples the head
    (neck excepted) but the rigidly moved head does not cover the point, the sample is head stretched over the band
    the head uncovered; lagging the rigid head by more than ``plate_from`` it gives way to the plate (a lag of a
    few pixels, e.g. an idle head's, keeps the stretch: the plate is a smooth fill, and hair cut off there looks
    cut). ``disp`` (N, 2, G*G) the coarse displacement, ``home`` (N, G*G, 2) the rigid sources, normalised."""
    n, k = disp.shape[0], disp.shape[2]
    src = avatar.grid_norm.unsqueeze(0) + disp.transpose(1, 2)  # (N, G*G, 2)
    m = F.grid_sample(maps.expand(n, -1, -1, -1), torch.cat([src, home], 1).unsqueeze(1), mode="bilinear",
                      padding_mode="border", align_corners=False)[:, :, 0]  # (N, 2, 2·G*G)
    lag = (src - home).norm(dim=-1) * (avatar.size / 2 / avatar.iod_px)  # (N, G*G) IOD
    ramp = ((lag - cfg.plate_from) / (cfg.plate_full - cfg.plate_from)).clamp(0.0, 1.0)
    # the rigid head fades out across the photo's edge, over a coarse cell either side (beyond it the head is
    # unknown and the plate shows; a step there, rotated with the head, became a staircase on the coarse grid)
    cells = avatar.size / (cfg.grid - 1)
    inside = ((1.0 - home.abs().amax(-1)) * (avatar.size / 2) / cells + 1.0).clamp(0.0, 2.0) * 0.5
    return (m[:, 0, :k] - m[:, 1, k:] * inside).clamp_min(0.0) * ramp


class WarpCore(torch.nn.Module):
    """Expression-driven warp of prepared avatars. Stateless: the caller owns the reference pose."""

    def __init__(
        self, emap: ExpressionMap | None = None, config: WarpConfig | None = None, bank: MouthBank | None = None
    ) -> None:
        super().__init__()
        emap = emap or ExpressionMap.load()
        self.config = config or WarpConfig()
        if self.config.interior not in ("bank", "painted"):
            raise ValueError(f"WarpConfig.interior must be 'bank' or 'painted', got {self.config.interior!r}")
        if bank is None and self.config.interior == "bank":
            if BANK_PATH.is_file():
                bank = MouthBank.load()
            else:
                log.warning("mouth bank %s not found: the mouth interior is painted", BANK_PATH)
        self.bank = bank if self.config.interior == "bank" else None
        self.register_buffer("weights", emap.weights.reshape(64, 136).clone(), persistent=False)
        self.register_buffer("mean_shape", emap.mean_shape.clone(), persistent=False)
        self.register_buffer("exp_std", emap.exp_std.clone(), persistent=False)
        self.register_buffer("pose_weights", emap.pose_weights.clone(), persistent=False)
        # outer lips move away from the inner lip: the upper outer ones (the first three of "lip_outer") up
        self.register_buffer("lip_up", torch.tensor([True] * 3 + [False] * 3), persistent=False)
        self.ix = IndexSets()
        # target_local's constants as tensors, so that each rule is one op on all points it concerns (a frame is
        # hundreds of ops on tiny tensors: their count, not their size, sets the time)
        cfg = self.config
        self.register_buffer("exp_lim", cfg.exp_clip * self.exp_std, persistent=False)  # (64,)
        self.register_buffer("exp_lo", -self.exp_lim, persistent=False)
        cap = torch.full((68, 2), math.inf)  # travel caps of brows (strong styles) and eye corners; others free
        cap[BROWS] = torch.tensor(cfg.brow_cap)
        cap[_IDX["corners"]] = cfg.corner_cap
        self.register_buffer("off_cap", cap, persistent=False)
        self.register_buffer("off_lo", -cap, persistent=False)
        # lip rounding and spreading: the lips' sideways offsets (N, 20) → their spread about the mouth's own centre,
        # gained (a centring matrix × (lip_width_gain − 1)); and the gap change's mean per lip_close_drop
        n_lips = LIPS.stop - LIPS.start
        self.register_buffer("lip_spread", (cfg.lip_width_gain - 1.0) * (torch.eye(n_lips) - 1.0 / n_lips),
                             persistent=False)
        self.register_buffer("gap_opening", torch.full((3, 1), 1.0 / (3 * cfg.lip_close_drop)), persistent=False)
        self.register_buffer("mean3", torch.full((3, 1), 1.0 / 3), persistent=False)  # (a product: mean() costs more)
        # an inner-lip gap correction (N, 3) → vertical offsets (N, 68): the lower inner lip and the lower outer
        # lip below it take it fully, the outer lip's sides 0.6 of the mean, the chin 0.8 of the mean
        carry = torch.zeros(3, 68)
        for k, (i, o) in enumerate(zip(_IDX["pairs_in_l"], _IDX["lo_out_mid"], strict=True)):
            carry[k, i] = carry[k, o] = 1.0
        carry[:, _IDX["lo_out_side"]] = 0.6 / 3
        self.register_buffer("lip_carry", carry, persistent=False)
        # the chin and the jaw beside it take part of the mean correction, a lift capped at jaw_lift_cap (a laughing
        # photo's lips closed by lifting the chin ~25 px stretched the chin's shadow into the neck: a smear); the
        # skin between lip and chin stretches instead
        jaw = torch.zeros(68)
        for i, w in ((8, 0.8), (7, 0.5), (9, 0.5), (6, 0.2), (10, 0.2)):
            jaw[i] = w
        self.register_buffer("jaw_carry", jaw, persistent=False)
        # the upper lids ride with their eye: the mean of that eye's corners' offsets (corners → upper lids)
        ride = torch.zeros(4, 4)
        ride[0:2, 0:2] = ride[2:4, 2:4] = 0.5
        self.register_buffer("lid_ride", ride, persistent=False)

    def _ix(self, name: str) -> torch.Tensor:
        return self.ix.get(name)

    @torch.no_grad()
    def prepare(
        self, image: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor, exp_ref: np.ndarray | None = None
    ) -> WarpAvatar:
        """Precompute an avatar from a square (S, S, 3) uint8 photo and its (68, 2) pixel landmarks.

        ``exp_ref`` is the photo's own expression if known (e.g. its 3DMM fit); zeros otherwise.
        """
        avatar = prepare_avatar(self.config, self.mean_shape, image, landmarks, exp_ref)
        if self.bank is not None:
            # the photo's "teeth" are trusted as a colour reference only when brighter than its skin (a slightly
            # open mouth's pixels are often lip and shade)
            luma = torch.tensor([0.299, 0.587, 0.114])
            bright = avatar.photo_teeth and float(avatar.teeth_rgb @ luma) > 1.1 * float(avatar.skin_rgb @ luma)
            avatar.interior = self.bank.for_avatar(
                self.bank.donor(self.config.donor), avatar.teeth_rgb if bright else None, avatar.skin_rgb,
                self.config.cavity_shade, self.config.cavity_depth, self.config.teeth_pool, self.config.teeth_contrast,
                self.config.teeth_tint)
            avatar.interior_memory = torch.zeros(1, len(avatar.interior.gap))
            avatar.interior_last_gap = torch.zeros(1, 1)
            # the photo's opening is teeth (they ride with the upper lip) when about as bright as its skin or more;
            # a darker one is a shaded slit (e.g. 0.6–0.7 of the skin on two sample speakers; their teeth 0.95–1.15)
            avatar.opening_teeth = avatar.photo_teeth and float(avatar.teeth_rgb @ luma) > 0.85 * float(
                avatar.skin_rgb @ luma)
        return avatar

    def target_local(
        self, avatar: WarpAvatar, exp: torch.Tensor, blink: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target landmarks (N, 68, 2) in the face frame, and the variant handed to the spline.

        ``blink`` (N,) in [0, 1] closes the upper lids onto the lower lids by that fraction (idle blinks).
        """
        cfg, src, lim = self.config, avatar.src_local, avatar.bounds
        n = exp.shape[0]
        delta = torch.clamp(exp - avatar.exp_ref, self.exp_lo, self.exp_lim)
        off = (delta @ self.weights).reshape(n, 68, 2).clamp(self.off_lo, self.off_cap)  # brows, eye corners
        tgt = off + src
        ty = tgt[..., 1]  # (N, 68) vertical positions, a view: writes go to tgt

        # eyelids: the lower lid moves a little; the upper lid may rise a little and fall onto the lower lid
        iu, il = self._ix("lids_up"), self._ix("lids_lo")
        lo = ty[:, il].clamp(lim.lid_lo_min, lim.lid_lo_max)
        up = torch.minimum(torch.maximum(ty[:, iu], lim.lid_up_min), lo)
        if blink is not None:
            up = torch.lerp(up, lo, blink.unsqueeze(1))
        ty[:, il], ty[:, iu] = lo, up
        # inner-lip gap, relative to the photo's own: an opening is amplified (the fitted map, a least-squares
        # regression, under-predicts amplitude: ~0.83× on held-out clips); a closing scales the photo's gap down
        # so that the lips meet at a bilabial-sized drop, whatever the photo's gap (a smile closes too)
        iu, il = self._ix("pairs_in_u"), self._ix("pairs_in_l")
        oy = off[..., 1]
        dg = oy[:, il] - oy[:, iu]  # (N, 3) predicted change of the gap
        if cfg.lip_width_gain != 1.0:
            # lip rounding ("oo") and spreading ("ee"): the lips' sideways motion about the mouth's own centre,
            # amplified like the opening (the least-squares map under-predicts it; see WarpConfig) on an opening
            # mouth only: on closing lips it cost bilabial closure (dlib saw spread closed lips as apart)
            opening = (dg @ self.gap_opening).clamp(0.0, 1.0)  # (N, 1)
            tgt[:, LIPS, 0].addcmul_(opening, off[:, LIPS, 0] @ self.lip_spread)
        g_p = avatar.lip_gap  # (signbit: dg < 0, and −0 opens nothing either way)
        gap = torch.where(torch.signbit(dg), torch.addcmul(g_p, dg, lim.gap_per_drop).clamp_min(0.0),
                          torch.add(g_p, dg, alpha=cfg.lip_open_gain))
        corr = gap - (ty[:, il] - ty[:, iu])  # (N, 3)
        ty += corr @ self.lip_carry  # the lower lip (and its body) carries the correction ...
        ty.addcmul_((corr @ self.mean3).clamp_min(-cfg.jaw_lift_cap), self.jaw_carry)  # ... and the jaw part of it
        # inner lips may touch but not cross (crossed: both go to the middle); the gap is capped
        up, lo = ty[:, iu], ty[:, il]
        mid = torch.lerp(up, lo, 0.5)
        up = torch.minimum(up, mid)
        lo = torch.minimum(torch.maximum(lo, mid), up + cfg.lip_gap_cap)
        ty[:, iu], ty[:, il] = up, lo
        # lips keep part of their thickness; the chin stays below the lower lip
        io, ii = self._ix("lip_outer"), self._ix("lip_inner")
        keep, outer = ty[:, ii] + lim.lip_keep, ty[:, io]
        ty[:, io] = torch.where(self.lip_up, torch.minimum(outer, keep), torch.maximum(outer, keep))
        ty[:, 8] = torch.maximum(ty[:, 8], ty[:, 57] + lim.chin_keep)

        # The spline must not fold: the upper lids only ride along with their eye (mean of the corners; a spline
        # pulling a lid down between fixed corners and brows ripples the brow) and the inner lips stay a little
        # apart. The eye and mouth models draw the true contours.
        spline = tgt.clone()
        spline[:, self._ix("lids_up")] = torch.baddbmm(lim.lid_src, self.lid_ride.expand(n, -1, -1),
                                                      off[:, self._ix("corners")])
        sy = spline[..., 1]
        sy[:, il] = torch.maximum(sy[:, il], sy[:, iu] + lim.spline_gap)
        return tgt, spline

    def lip_gap_directions(self) -> torch.Tensor:
        """(64, 3): how each expression coefficient opens the three inner-lip gaps (the map's linear part, before
        the clip and the opening gain of ``target_local``). The engine uses it to keep the lips of a rest face
        closed while the rest of the face changes (engine.stylebank.rest_expression)."""
        iu, il = self._ix("pairs_in_u"), self._ix("pairs_in_l")
        w = self.weights.reshape(-1, 68, 2)
        return w[:, il, 1] - w[:, iu, 1]

    def lid_gap_directions(self) -> torch.Tensor:
        """(64, 4): how each expression coefficient opens the four upper-to-lower eyelid gaps (the map's linear part,
        before the caps of ``target_local``). The engine uses it to draw a style's silent eyelids as the photo's
        (engine.stylebank.rest_expression): the sample speakers' expression coefficients carry their own eye shape."""
        iu, il = self._ix("lids_up"), self._ix("lids_lo")
        w = self.weights.reshape(-1, 68, 2)
        return w[:, il, 1] - w[:, iu, 1]

    def head_motion(self, pose: torch.Tensor, pose_ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Δpose → clamped similarity: scale (N,), rotation (N, 2, 2), shift (N, 2) in IOD along image axes."""
        cfg = self.config
        rel = is_relative_pose(pose_ref)
        y = (pose_features(pose, rel) - pose_features(pose_ref[None], rel)) @ self.pose_weights  # (N, 4)
        log_s = y[:, 0].clamp(-cfg.head_max_log_scale, cfg.head_max_log_scale)
        ang = y[:, 1].clamp(-cfg.head_max_rotation, cfg.head_max_rotation)
        shift = y[:, 2:4]
        norm = shift.norm(dim=1, keepdim=True).clamp_min(1e-9)
        shift = shift * (norm.clamp(max=cfg.head_max_shift) / norm)
        c, s = torch.cos(ang), torch.sin(ang)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return torch.exp(log_s), rot, shift

    def motion_reach(self, avatar: WarpAvatar, lin: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """How far (IOD, per frame (N,)) the head motion moves the head ellipse's four extreme points."""
        now = torch.baddbmm(off.unsqueeze(1), avatar.reach_pts.expand(lin.shape[0], -1, -1), lin.transpose(1, 2))
        return (now - avatar.reach_still).norm(dim=-1).amax(1) / avatar.iod_px

    def moving_field(self, avatar: WarpAvatar, coef: torch.Tensor, tgt_ctrl: torch.Tensor,
                     move: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The moving head's coarse backward displacement (N, 2, G*G), normalised (head motion composed with the
        still head's spline, ``coef`` fitted on ``tgt_ctrl``), and where the background plate shows (N, G*G) or
        None. A method of its own so that the warp field can be measured (benchmarks, tests) without sampling."""
        cfg = self.config
        n = coef.shape[0]
        plate: torch.Tensor | None = None
        # each grid point taken back through the head motion (face frame, then the still head's pixels),
        # where the still spline gives its source
        lin, off, _ = move
        to_face = (avatar.grid_px.unsqueeze(0) - off.unsqueeze(1)).transpose(1, 2)
        moved = torch.bmm(move[2], to_face).transpose(1, 2)
        home = affine2(moved, avatar.frame_a_norm, avatar.frame_t_norm)  # (N, G*G, 2) normalised
        head = (home - avatar.grid_norm.unsqueeze(0)).transpose(1, 2)  # (N, 2, G*G) the head motion's part
        # active where the head was and where it is now; the soft band widens with the motion's reach so
        # that it stretches and compresses but never folds (its steepest slope is 1.5 / width)
        reach = self.motion_reach(avatar, lin, off)  # (N,) IOD
        rmin = min(avatar.head_ellipse[2], avatar.head_ellipse[3])
        outer = torch.clamp(1.0 + cfg.head_band_per_shift * reach / rmin, min=cfg.head_mask_outer).unsqueeze(1)
        # (the fall-off decreases with the radius: the larger of the two masks is the one at the smaller radius)
        mask = head_falloff(cfg, torch.minimum(avatar.grid_face_r, head_radius(moved, avatar.head_ellipse)),
                            outer)  # (N, G*G)
        # The head travels as the pose asks. Where it moves away from an edge of the photo, the band it
        # uncovers there shows the photo's own background beyond the face on that side, stretched: along each
        # side's normal the head part's weight (per axis) is at most dist / (travel + band), band = the room
        # beyond the face on that side (avatar.edge_room) or edge_band_per_travel × the travel if less. It
        # reaches 1 at the moved face's edge, samples no further than the photo's edge and never folds (its
        # slope times the travel stays below 1). The background away from the head stays still (mask). The
        # expression part keeps the still head's confinement (the head mask, not edge-faded: the spline is
        # already fixed at the photo's border points, and fading it held the chin, in the bottom edge band, at
        # a fraction of its motion): at zero motion a frame renders as the still path renders it.
        toward = torch.cat([head, -head], 1).clamp_min(0.0)  # (N, 4, G*G): right, bottom, left, top
        band = torch.minimum(toward * cfg.edge_band_per_travel, avatar.edge_room)
        # per axis (a small approach to the top edge must not hold back a large sideways travel): (N, 2, G*G)
        edge = ((avatar.edge_dist + 1e-3) / (toward + band + 1e-3)).unflatten(1, (2, 2)).amin(1).clamp(max=1.0)
        # The edges stay put as before (avatar.edge_hold: the background's corners stay still) except where
        # the head travels away from one: within edge_release of such travel that edge's hold on its own axis
        # is released and the stretch above takes over. Along an edge (x by the top and bottom edges, y by
        # the sides) the hold stays: motion along an edge shears the band there, it cannot fold it.
        free = (toward / cfg.edge_release).clamp(max=1.0)
        hold = (avatar.edge_hold + avatar.edge_free * free).unflatten(1, (2, 2)).amin(1)  # (N, 2, G*G)
        along = avatar.edge_along  # (2, G*G), or per frame (N, 2, G*G) with the neck's hold:
        if avatar.neck_jaw is not None and avatar.neck_slope is not None and avatar.edge_top is not None:
            # the neck holds the head's sideways motion from the jaw line down (avatar.neck_hold) where the jaw was
            # (edge_along) and where the head motion takes it (the moved chin goes all the way with the head)
            now = torch.minimum(avatar.edge_top, neck_hold(avatar.neck_jaw, avatar.neck_slope, 1.0 / cfg.neck_length,
                                                           moved, avatar.neck_bottom))  # (N, G*G)
            along = torch.stack([torch.maximum(avatar.edge_along[0], now), avatar.edge_along[1].expand_as(now)], 1)
        weight = mask.unsqueeze(1) * torch.minimum(hold, along)
        matte = avatar.matte
        far = None if matte is None else ((reach - cfg.hair_from) / (cfg.hair_full - cfg.hair_from)).clamp(0, 1)
        if matte is not None and far is not None and (far.is_cuda or bool(far.max() > 0.0)):  # (N,); short: skip
            # A far-travelling head (reach beyond hair_from) carries the head and hair as segmented
            # (models/warp/matte.py) rigidly too, with a soft band as wide as the motion needs beyond them
            # (long hair outside the ellipse stayed behind, stretched into streaks), and lets its hair go
            # along the photo's edges (hair cut by the top edge and held there sheared into a step). A short
            # move renders as before: the ellipse's band is enough, and the background's corners stay still.
            r_now = F.grid_sample(matte.r_map.expand(n, -1, -1, -1), home.unsqueeze(1), mode="bilinear",
                                  padding_mode="border", align_corners=False)[:, 0, 0]  # (N, G*G)
            band = (1.0 + cfg.head_band_per_shift * reach / rmin).clamp(min=cfg.hair_band_min).unsqueeze(1)
            hair = head_falloff(cfg, torch.minimum(matte.grid_r, r_now), band) * far[:, None]
            along = along + (1.0 - along) * far[:, None, None]  # (N, 2, G*G)
            weight = torch.maximum(weight, hair.unsqueeze(1) * torch.minimum(hold, along))
        else:
            matte = None
        disp = head * torch.minimum(weight, edge) + tps_eval_at(coef, tgt_ctrl, home) * mask.unsqueeze(1)
        if matte is not None and far is not None:
            plate = plate_weight(cfg, avatar, matte.maps, disp, home) * far[:, None]
        return disp, plate

    def field(
        self, avatar: WarpAvatar, exp: torch.Tensor, pose: torch.Tensor | None = None,
        pose_ref: torch.Tensor | None = None, blink: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Move, torch.Tensor, torch.Tensor | None]:
        """``forward``'s warp before the region models: target landmarks and the spline's (N, 68, 2), the head
        motion (or None), the coarse backward map (N, 2, G*G, normalised) and the plate's weight (N, G*G) or None.
        Separate so that benchmarks and tests can measure the warp field itself (e.g. the neck's shear)."""
        cfg = self.config
        n = exp.shape[0]
        tgt, spline = self.target_local(avatar, exp.float(), blink)
        A, t = avatar.frame_a, avatar.frame_t
        plate: torch.Tensor | None = None  # (N, G*G) where the background plate replaces stretched head pixels
        if pose is None:
            move = None
        else:  # face frame before head motion → pixels, per frame: lin · f + off
            scale, rot, shift_img = self.head_motion(pose.float(), (pose[0] if pose_ref is None else pose_ref).float())
            # A is a similarity (A·Aᵀ = iod²·I): the shift in pixels is iod · shift, and lin⁻¹ = rotᵀ·Aᵀ/(s·iod²)
            # in closed form (a batched LU inverse of 2×2 matrices cost more than the rest of this block)
            lin = A @ (rot * scale[:, None, None])
            off = shift_img * avatar.iod_px + t
            move = (lin, off, rot.transpose(1, 2) @ (A.T / avatar.iod_px**2) / scale[:, None, None])

        # ---- spline: target control points → source control points (backward map), normalised coordinates.
        # It is fitted for the still head only: head motion is composed rigidly after it (below), so a large
        # shift cannot bend the face (a spline asked to move the face's points far from the fixed border points
        # folded the cheek).
        moving = torch.addmm(avatar.frame_t_norm, spline.reshape(-1, 2), avatar.frame_a_norm_t).reshape(n, -1, 2)
        tgt_ctrl = torch.cat([moving, avatar.fixed_norm.expand(n, -1, -1)], 1)  # (N, K, 2): landmarks, then fixed
        coef = tps_fit(tgt_ctrl, avatar.src_ctrl_norm - tgt_ctrl, cfg.tps_reg)
        if move is None:
            # confined to the head like a moving head's (below, at zero motion): the expression warp stops at the
            # neck instead of dragging the chest and the background with a wide-open jaw
            coarse = torch.addcmul(avatar.grid_norm_t, tps_eval_grid(coef, moving, avatar.still_spline),
                                   avatar.head_mask)  # (N, 2, G*G)
        else:  # a moving head leaves the background where it is
            disp, plate = self.moving_field(avatar, coef, tgt_ctrl, move)
            coarse = avatar.grid_norm_t + disp
        return tgt, spline, move, coarse, plate

    @torch.no_grad()
    def forward(
        self, avatar: WarpAvatar, exp: torch.Tensor, pose: torch.Tensor | None = None,
        pose_ref: torch.Tensor | None = None, blink: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Render N frames: exp (N, 64), pose (N, 9) relative to pose_ref (9,), blink (N,) → (N, S, S, 3) uint8.

        ``pose=None`` renders a still head (and skips the head-motion arithmetic); ``pose_ref=None`` takes the
        first row of ``pose`` as the reference.
        """
        cfg = self.config
        n = exp.shape[0]
        tgt, spline, move, coarse, plate = self.field(avatar, exp, pose, pose_ref, blink)
        coarse = coarse.reshape(n, 2, cfg.grid, cfg.grid)

        # ---- region models on their lattices
        # The eye model corrects exactly the lid motion the spline leaves out; below a fraction of a pixel it is
        # skipped (on CPU only: a data-dependent branch would break CUDA graph capture).
        # one coarse-grid lookup for all lattices: where the spline samples the photo, (u, v) (lattice_sources)
        uv = lattice_sources(avatar, coarse, move)  # (N, P, 2): eyes, then mouth
        e, m = avatar.eyes[0], avatar.mouth
        pe = 2 * e.pts.shape[0]
        eyes_move = tgt.is_cuda or float((tgt - spline)[:, self._ix("lids_up"), 1].abs().max()) > cfg.eye_skip
        eye_dv = shut = None
        if eyes_move:
            uv_eyes = uv[:, :pe].reshape(n, 2, e.v.shape[0], e.h.shape[0], 2)
            eye_dv, shut = eye_model(cfg, avatar, tgt, spline, uv_eyes, self.ix)  # (N, 2, Qv, Qh), (2N, 1, 1, 1)
        mouth_fields = mouth_model(cfg, avatar, tgt, spline, uv[:, pe:].reshape(n, m.v.shape[0], m.h.shape[0], 2),
                                   self.ix)  # (N, 5, Qv, Qh)

        # ---- full-resolution sampling grid, corrected inside the region boxes (along the face's v axis)
        grid = avatar.upsample @ coarse @ avatar.upsample_t  # (N, 2, S, S) bilinear upsampling
        lids = []  # per eye box run, eye-major: its frames, origin and grid (the lids' colour is added once sampled)
        if eye_dv is not None:  # both eyes in one resampling: (2N, 1, Qv, Qh), eye-major
            g = avatar.eye_boxes
            origins, values = to_box(avatar, g, eye_dv.transpose(0, 1).reshape(2 * n, 1, *eye_dv.shape[2:]), move)
            # (in place on the slice: ``grid[...] += x`` would also write the slice back onto itself)
            for i, per_frame in enumerate(origins):
                eye = values[i * n:(i + 1) * n]
                for fs, y0, x0 in box_runs(per_frame):
                    box = grid[fs, :, y0:y0 + g.bh, x0:x0 + g.bw]
                    box.addcmul_(avatar.v_axis, eye[fs])
                    lids.append((fs, y0, x0, box))
        g = avatar.mouth_box
        (mouth_at,), values = to_box(avatar, g, mouth_fields, move)
        runs = box_runs(mouth_at)
        for fs, y0, x0 in runs:
            grid[fs, :, y0:y0 + g.bh, x0:x0 + g.bw].addcmul_(avatar.v_axis, values[fs, 0:1])

        # ---- sample the photo, paint the newly exposed mouth interior
        out = F.grid_sample(
            avatar.image.expand(n, -1, -1, -1), grid.permute(0, 2, 3, 1), mode="bilinear",
            padding_mode="border", align_corners=False,
        )  # (N, 3, S, S) 0.5..255.5: the photo carries the rounding offset (WarpAvatar.image); so do fill, plate
        if plate is not None and avatar.matte is not None:
            # the band a far-travelling head uncovers shows the photo's background (plate), not stretched hair
            beta = avatar.upsample @ plate.reshape(n, cfg.grid, cfg.grid) @ avatar.upsample_t  # (N, S, S)
            out.lerp_(avatar.matte.plate, beta.unsqueeze(1))
        if shut is not None and avatar.lid_fill is not None:
            # closing lids take the mobile lid's colour (models/warp/lidfill.py) in proportion to how far each eye
            # has closed: the change sampled through the eye boxes' grid (both eyes at once), (2N, 3, bh, bw)
            gb = avatar.eye_boxes
            boxes = torch.cat([box for *_, box in lids])
            lid = avatar.lid_fill if n == 1 else avatar.lid_fill[:1].expand(2 * n, -1, -1, -1)
            fill = F.grid_sample(lid, boxes.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                                 align_corners=False).mul_(shut)
            for (fs, y0, x0, _), part in zip(lids, fill.split([box.shape[0] for *_, box in lids]), strict=True):
                out[fs, :, y0:y0 + gb.bh, x0:x0 + gb.bw].add_(part)
        for fs, y0, x0 in runs:
            patch = out[fs, :, y0:y0 + g.bh, x0:x0 + g.bw]
            # (the fill may leave 0..255; bilinear samples of the photo cannot)
            patch.lerp_(values[fs, 2:5] + 0.5, values[fs, 1:2]).clamp_(0.5, 255.5)
        # rounded half up by truncation (the offset is in; values are ≥ 0.5, and 255 plus a rounding error still
        # truncates to 255), as (N, S, S, 3) uint8 one channel at a time: a copy per channel runs along the image
        # rows, where one permuted copy of all three ran along the channels, three elements at a time (measured
        # 1-3 % of a frame)
        frames = torch.empty(n, out.shape[2], out.shape[3], 3, dtype=torch.uint8, device=out.device)
        for c in range(3):
            frames[..., c].copy_(out[:, c])
        return frames

