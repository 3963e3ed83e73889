"""Avatar preparation of the warp renderer: the face frame, spline control points, region lattices, source curves,
and the photo's mouth colours; plus the lattice ↔ pixel-box resampling the region models share.

Everything here is computed once per photo (``prepare_avatar``) or is a pure function of a prepared avatar, so
the per-frame code (core.py, eyes.py, mouth.py) only indexes fixed-shape tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.warp.closure import lip_edges
from models.warp.config import WarpConfig
from models.warp.interior import Interior
from models.warp.landmarks import _IDX, _LUT_CURVES, BROWS, EYE_LO, EYE_UP
from models.warp.lidfill import lid_fill
from models.warp.matte import HeadMatte, head_matte
from models.warp.tps import (
    SplineGrid,
    affine2,
    cubic_curve,
    interp_curve,
    px_to_norm,
    similarity,
    smoothstep,
    spline_grid,
)

# per-frame face→pixel map with head motion: lin (N, 2, 2), off (N, 2) and lin's inverse (computed once per frame
# batch: the grid, the eye boxes and the mouth box all map pixels back through it)
Move = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None

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


@dataclass(frozen=True)
class BoxGroup:
    """Regions whose pixel boxes share one size, stacked so that ``to_box`` resamples them all in one call (a
    frame is hundreds of small ops: per-region calls cost more in overhead than in arithmetic)."""

    y0: tuple[int, ...]  # home positions of the boxes
    x0: tuple[int, ...]
    bh: int
    bw: int
    box_px: torch.Tensor  # (R, bh*bw, 2) pixel coordinates (x, y) of the boxes at home
    still_box: torch.Tensor  # (R, bh*bw, 2) box pixels in lattice-normalised coordinates (still head)
    centre: torch.Tensor  # (R, 2) lattice centres, face frame
    home: torch.Tensor  # (R, 2) lattice centres in pixels (still head)
    scale: torch.Tensor  # (R, 2) face frame → lattice-normalised: scale, then offset
    offset: torch.Tensor  # (R, 2)


def box_group(regions: tuple[Region, ...], A: torch.Tensor, t: torch.Tensor) -> BoxGroup:
    """Stack regions of one box size (``_regions`` gives all regions of one call the same size)."""
    assert len({(r.bh, r.bw) for r in regions}) == 1, "a box group needs boxes of one size"
    centre = torch.stack([r.centre for r in regions])
    return BoxGroup(
        y0=tuple(r.y0 for r in regions), x0=tuple(r.x0 for r in regions), bh=regions[0].bh, bw=regions[0].bw,
        box_px=torch.stack([r.box_px for r in regions]), still_box=torch.stack([r.still_box for r in regions]),
        centre=centre, home=affine2(centre, A, t),
        scale=torch.stack([r.to_lattice[0] for r in regions]), offset=torch.stack([r.to_lattice[1] for r in regions]),
    )


@dataclass(frozen=True)
class TargetBounds:
    """The per-photo bounds of ``WarpCore.target_local`` with the config applied, each one op per frame."""

    lid_lo_min: torch.Tensor  # (4,) LIDS_LO: the lower lids' travel limits (v)
    lid_lo_max: torch.Tensor
    lid_up_min: torch.Tensor  # (4,) LIDS_UP: how high the upper lids may rise
    lid_src: torch.Tensor  # (4, 2) the photo's upper lids (the spline's lids ride with their eye from there)
    gap_per_drop: torch.Tensor  # (3,) the photo's inner-lip gaps / lip_close_drop (a closing scales them down)
    lip_keep: torch.Tensor  # (6,) the least thickness of each lip, signed: upper outer above (−), lower below (+)
    chin_keep: torch.Tensor  # () the least distance lower lip (57) → chin (8)
    spline_gap: torch.Tensor  # (3,) the least inner-lip gap handed to the spline


@dataclass
class WarpAvatar:
    """Everything precomputed for one photo. Tensors are float32."""

    size: int
    # (1, 3, S, S) the photo plus 0.5 (0.5..255.5): the frames are written by truncation, so the samples carry the
    # rounding offset instead of a pass over every output pixel (core.py)
    image: torch.Tensor
    landmarks: torch.Tensor  # (68, 2) pixels
    src_local: torch.Tensor  # (68, 2) face frame
    frame_a: torch.Tensor  # (2, 2) face frame → pixels: p = f @ frame_a.T + frame_t
    frame_t: torch.Tensor  # (2,)
    frame_a_norm: torch.Tensor  # (2, 2) the same map onto grid_sample's normalised coordinates: ...
    frame_t_norm: torch.Tensor  # (2,) ... q = f @ frame_a_norm.T + frame_t_norm (tps.px_to_norm folded in)
    frame_a_norm_t: torch.Tensor  # (2, 2) frame_a_norm.T, contiguous
    iod_px: float
    src_ctrl_norm: torch.Tensor  # (M, 2) spline source points, normalised [-1, 1] (grid_sample convention)
    # the spline's target control points that never move (forehead, then border: normalised, (E + B, 2)) and the
    # still head's spline evaluation on the coarse grid with them precomputed
    fixed_norm: torch.Tensor
    still_spline: SplineGrid
    grid_norm: torch.Tensor  # (G*G, 2) coarse evaluation grid, normalised
    grid_norm_t: torch.Tensor  # (1, 2, G*G) the same, channel-first (the displacement field's layout)
    # (G*G,) 1 on the head, 0 on the background: the still head's mask, the moving head's at zero motion. Every
    # displacement of the coarse grid, expression or head motion, is confined to it, so a frame renders the same
    # whether its batch moves or not. (The photo's edges hold only head motion, ``edge_hold``: an edge fade folded
    # in here also held the chin, which sits in the bottom edge band, at 0.3-0.7 of its expression motion, and a
    # jaw that barely drops reads as a thinner opening.)
    head_mask: torch.Tensor
    grid_face: torch.Tensor  # (G*G, 2) the coarse grid's points in the face frame (before head motion)
    head_ellipse: tuple[float, float, float, float]  # face frame: centre h, v and radii of the head mask
    exp_ref: torch.Tensor  # (64,)
    eyes: tuple[Region, Region]  # equal lattice sizes (both eyes run as one batch)
    mouth: Region
    # source curves (_LUT_CURVES) sampled at L points along h, as one-row images for ``lookup``: the eyes'
    # (2, 2, 1, L: eye e's upper and lower lid) and the mouth's (1, 5, 1, L: inner lips, lower outer lip, and how
    # far outside the upper / lower inner lip the lip itself begins: closure.lip_edges)
    eye_lut: torch.Tensor
    mouth_lut: torch.Tensor
    # a normalised image point q → (u, v): u its face-frame h as a position in the lookup tables (grid_sample's
    # normalised coordinate, align_corners: the region models only look h up there), v its face-frame v; as
    # norm_to_uv @ q + norm_to_uv_c, (2, 2) and (2, 1) (tensor operands: a Python scalar is wrapped into a tensor
    # on every op)
    norm_to_uv: torch.Tensor
    norm_to_uv_c: torch.Tensor
    v_axis: torch.Tensor  # (1, 2, 1, 1) one IOD along the face-frame v axis, in normalised image units
    eye_level: torch.Tensor  # (2, 1, 1, 1) per eye the mid-height of its corners (v), where the eye model's origin is
    # the region lattices' columns (face-frame h) and rows (v), shaped for the region models' broadcasts: the eyes'
    # (1, 2, 1, Qh) and (1, 2, Qv, 1), both eyes stacked; the mouth's (1, 1, Qh) and (1, Qv, 1)
    eye_h: torch.Tensor
    eye_v: torch.Tensor
    mouth_h: torch.Tensor
    mouth_v: torch.Tensor
    eye_boxes: BoxGroup  # both eyes' boxes (one size): resampled together
    mouth_box: BoxGroup
    lattice_pts: torch.Tensor  # (P, 2) all lattice points, eyes then mouth (one coarse-grid lookup per frame)
    lattice_still: torch.Tensor  # (1, 1, P, 2) the same in the coarse grid's normalised coordinates (still head)
    # head motion, per-avatar parts: the coarse grid in pixels, its head-ellipse radius (face frame), the
    # photo-edge fade, and the head ellipse's four extreme points (face frame and still pixels)
    grid_px: torch.Tensor  # (G*G, 2)
    # the coarse grid → full resolution, bilinear (align_corners): W @ coarse @ W.T with W (S, G). Two small
    # matrix products cost about half of F.interpolate on CPU (same weights; differences ~1e-7)
    upsample: torch.Tensor  # (S, G)
    upsample_t: torch.Tensor  # (G, S)
    grid_face_r: torch.Tensor  # (G*G,)
    # where the head moves away from an edge of the photo, the band it uncovers is the photo's own background
    # beside the head, stretched (core.py): per coarse-grid point its distance to the right, bottom, left and top
    # edge (4, G*G), and per side the background the photo has beyond the face there (4, 1), both normalised
    edge_dist: torch.Tensor
    edge_room: torch.Tensor
    # per side, the still edge's hold (a smoothstep over head_edge_band from that edge) and its complement (4, G*G),
    # and per axis the hold of the two edges along it (2, G*G: x by top and bottom, y by right and left)
    edge_hold: torch.Tensor
    edge_free: torch.Tensor
    edge_along: torch.Tensor
    reach_pts: torch.Tensor  # (4, 2)
    reach_still: torch.Tensor  # (4, 2)
    lip_gap: torch.Tensor  # (3,) photo's inner-lip gaps (LIP_PAIRS_IN)
    bounds: TargetBounds
    teeth_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))  # 0..255
    cavity_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    lip_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))  # lip body median
    # closed lips' seam (mouth.py): the lip colour and its shaded middle (× seam_shade), (1, 3, 1, 1) each
    seam_lip: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 3, 1, 1))
    seam_dark: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 3, 1, 1))
    photo_teeth: bool = False
    upper_teeth: float = 0.0  # IOD: how far the photo's upper teeth reach below its upper inner lip (0: not seen)
    skin_rgb: torch.Tensor = field(default_factory=lambda: torch.zeros(3))  # cheeks / nose bridge median
    interior: Interior | None = None  # colour-matched real mouth interiors (None: painted)
    # (1, K) the last rendered frame's weights over the interior's exemplars (Interior.blend): stream state, zeroed
    # by ``forget``; None without an interior
    interior_memory: torch.Tensor | None = None
    interior_last_gap: torch.Tensor | None = None  # (1, 1) the last frame's target inner-lip gap (IOD), stream state
    # the photo's opening shows teeth (brighter than its skin): they ride with the upper lip. Otherwise it is a
    # dark slit, which the real interior takes over as the mouth opens (models/warp/mouth.py)
    opening_teeth: bool = True
    # the neck's hold on the head's sideways motion (neck_hold): the lower jaw line's points in the face frame, pre-
    # scaled, (2, J): v / neck_length + 1 and h; the slope per h in units of neck_length; and the top edge's hold
    # (G*G,) it is combined with (None: WarpConfig.neck_ramp off)
    neck_jaw: torch.Tensor | None = None
    neck_slope: torch.Tensor | None = None
    neck_bottom: torch.Tensor | None = None  # (G*G,) distance to the bottom row / neck_length (neck_to_bottom)
    edge_top: torch.Tensor | None = None
    # the moving head's head-and-hair segmentation and background plate (models/warp/matte.py); None: the ellipse
    matte: HeadMatte | None = None
    # (2, 3, S, S) the closing lids' colour as a change to the photo, zero outside the lid-skin bands
    # (models/warp/lidfill.py), once per eye; None: the stretched band alone (cfg.lid_fill off)
    lid_fill: torch.Tensor | None = None

    def forget(self) -> None:
        """A new stream: no previous frame (the interior's choice and its hold start afresh)."""
        with torch.inference_mode():  # they may have been made in inference mode (inference tensors)
            for state in (self.interior_memory, self.interior_last_gap):
                if state is not None:
                    state.zero_()


def prepare_avatar(
    cfg: WarpConfig, mean_shape: torch.Tensor, image: np.ndarray | torch.Tensor,
    landmarks: np.ndarray | torch.Tensor, exp_ref: np.ndarray | None = None,
) -> WarpAvatar:
    """Precompute an avatar from a square (S, S, 3) uint8 photo and its (68, 2) pixel landmarks.

    ``exp_ref`` is the photo's own expression if known (e.g. its 3DMM fit); zeros otherwise.
    """
    img = torch.as_tensor(np.asarray(image)).float()
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square (S, S, 3) image, got {tuple(img.shape)}")
    size = int(img.shape[0])
    lmk = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32).reshape(68, 2)
    A, t = similarity(mean_shape.cpu()[_IDX["stable"]], lmk[_IDX["stable"]])
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
    grid_px = torch.stack([gx, gy], -1).reshape(-1, 2)
    grid_norm = px_to_norm(grid_px, size)
    grid_face = affine2(grid_px - t, torch.linalg.inv(A))
    ellipse = _head_ellipse(cfg, src)
    head_mask = head_mask_at(cfg, grid_face, ellipse)
    # sampling stays inside the photo's outer pixel centres; the room beyond the face on each side is measured
    # from the jaw (right, bottom, left), at least edge_room_min. Above, the skull and hair are not background
    # and no landmark says where they end: there only edge_room_min (a head moving down stretches the photo's
    # top rows; with the brows as the limit it stretched the crown into a point)
    inside = 1.0 - 1.0 / size
    edge_dist = torch.cat([inside - grid_norm, inside + grid_norm], 1).T.contiguous()  # (4, G*G)
    jaw_lo, jaw_hi = lmk[0:17].amin(0), lmk[0:17].amax(0)
    room = torch.stack([size - 1.0 - jaw_hi[0], size - 1.0 - jaw_hi[1], jaw_lo[0], torch.tensor(0.0)])
    room = room.clamp_min(cfg.edge_room_min * iod) * (2.0 / size)
    edge_room = room[:, None].contiguous()  # (4, 1)
    edge_hold = smoothstep(edge_dist / cfg.head_edge_band)
    neck_jaw, neck_k = neck_line(cfg, src) if cfg.neck_ramp else (None, None)
    # the coarse grid's distance to the photo's bottom row in units of neck_length (G*G,), if the neck stops there
    neck_bottom = edge_dist[1] * (size / 2 / iod / cfg.neck_length) if cfg.neck_to_bottom else None
    neck_still = None if neck_jaw is None or neck_k is None else neck_hold(neck_jaw, neck_k, 1.0 / cfg.neck_length,
                                                                           grid_face, neck_bottom)  # (G*G,)
    cx, cy, rx, ry = ellipse
    reach_pts = torch.tensor([[cx - rx, cy], [cx + rx, cy], [cx, cy - ry], [cx, cy + ry]])

    # region lattices (face-frame boxes: h0, h1, v0, v1)
    eye_boxes = []
    for up, lo in zip(EYE_UP, EYE_LO, strict=True):
        pts = src[list(up) + list(lo)]
        eye_boxes.append((float(pts[:, 0].min()) - 0.04, float(pts[:, 0].max()) + 0.04,
                          float(src[list(up), 1].min()) - cfg.lid_band - 0.03,
                          float(src[list(lo), 1].max()) + cfg.under_eye_band + 0.03))
    mouth = src[48:68]
    mouth_box = (float(mouth[:, 0].min()) - 0.03, float(mouth[:, 0].max()) + 0.03,
                 float(src[_IDX["lip_up_in"], 1].min()) - 0.06 - cfg.mouth_margin - cfg.close_reach * float(
                     (src[_IDX["pairs_in_l"], 1] - src[_IDX["pairs_in_u"], 1]).clamp_min(0.0).max()),
                 float(src[_IDX["lip_lo_out"], 1].max()) + cfg.lip_gap_cap + 0.03)
    eyes = _regions(cfg, eye_boxes, A, t, size, iod)
    (mouth_region,) = _regions(cfg, [mouth_box], A, t, size, iod)

    # source curves sampled along h: the region models look them up at the spline's source columns
    step = cfg.lattice_step / 4
    lut_h0 = float(src[:, 0].min()) - 0.5
    hs = torch.arange(lut_h0, float(src[:, 0].max()) + 0.5, step)
    # (the eyelids as cubics, like the eye model's target lids: models/warp/eyes.py)
    lut = torch.stack([(cubic_curve if i < 4 else interp_curve)(src[list(c), 0], src[list(c), 1], hs)
                       for i, c in enumerate(_LUT_CURVES)])  # (7, L)

    upsample = F.interpolate(torch.eye(cfg.grid)[None], size=size, mode="linear", align_corners=True)[0].T
    a_norm, t_norm = A * (2.0 / size), px_to_norm(t, size)
    fixed_norm = torch.cat([affine2(extra, a_norm, t_norm), border])
    a_inv = torch.linalg.inv(A)
    norm_to_face = a_inv * (size / 2)
    norm_c = torch.stack([a_inv[0] @ (size / 2 - 0.5 - t), a_inv[1] @ (size / 2 - 0.5 - t)])
    to_u = torch.tensor([[2.0 / (step * (lut.shape[1] - 1))], [1.0]])  # h → lookup-table position, v unchanged
    regions = (eyes[0], eyes[1], mouth_region)
    lip_gap = (src[_IDX["pairs_in_l"], 1] - src[_IDX["pairs_in_u"], 1]).clamp_min(0.0)
    lip_thickness = (src[_IDX["lip_outer"], 1] - src[_IDX["lip_inner"], 1]).abs()  # (6,) LIP_PAIRS_UP, LIP_PAIRS_LO
    chin_drop = float(src[8, 1] - src[57, 1])  # lower lip (57) → chin (8)
    lids_lo = src[_IDX["lids_lo"], 1]
    avatar = WarpAvatar(
        norm_to_uv=(norm_to_face * to_u).contiguous(),
        norm_to_uv_c=(norm_c[:, None] - torch.tensor([[lut_h0], [0.0]])) * to_u - torch.tensor([[1.0], [0.0]]),
        size=size, v_axis=torch.tensor([float(A[0, 1]) * 2 / size, float(A[1, 1]) * 2 / size]).reshape(1, 2, 1, 1),
        eye_level=torch.stack([(src[up[0], 1] + src[up[3], 1]) / 2 for up in EYE_UP]).reshape(2, 1, 1, 1),
        eye_h=torch.stack([eyes[0].h, eyes[1].h])[None, :, None, :],
        eye_v=torch.stack([eyes[0].v, eyes[1].v])[None, :, :, None],
        mouth_h=mouth_region.h[None, None, :], mouth_v=mouth_region.v[None, :, None],
        eye_boxes=box_group((eyes[0], eyes[1]), A, t), mouth_box=box_group((mouth_region,), A, t),
        lattice_pts=torch.cat([r.pts for r in regions]),
        lattice_still=torch.cat([r.still_coarse for r in regions]).reshape(1, 1, -1, 2),
        upsample=upsample, upsample_t=upsample.T.contiguous(),
        grid_px=(grid_norm + 1.0) * (size / 2) - 0.5, grid_face_r=head_radius(grid_face, ellipse),
        edge_dist=edge_dist, edge_room=edge_room,
        edge_hold=edge_hold, edge_free=1.0 - edge_hold,
        edge_along=torch.stack([edge_hold[1::2].amin(0) if neck_still is None else torch.minimum(
            edge_hold[3], neck_still), edge_hold[0::2].amin(0)]),
        neck_jaw=neck_jaw, neck_slope=neck_k, neck_bottom=neck_bottom,
        edge_top=edge_hold[3].contiguous() if cfg.neck_ramp else None,
        reach_pts=reach_pts, reach_still=affine2(reach_pts, A, t),
        # channels-last: grid_sample reads the 3 channels of a pixel together (~20 % faster on CPU)
        image=(img + 0.5).permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last),
        landmarks=lmk, src_local=src,
        frame_a=A, frame_t=t, iod_px=iod,
        frame_a_norm=a_norm, frame_t_norm=t_norm, frame_a_norm_t=a_norm.T.contiguous(), src_ctrl_norm=src_ctrl,
        fixed_norm=fixed_norm, still_spline=spline_grid(fixed_norm, grid_norm),
        grid_norm=grid_norm, grid_norm_t=grid_norm.T.unsqueeze(0).contiguous(), head_mask=head_mask,
        grid_face=grid_face, head_ellipse=ellipse,
        exp_ref=torch.zeros(64) if exp_ref is None else torch.as_tensor(np.asarray(exp_ref), dtype=torch.float32),
        eyes=(eyes[0], eyes[1]), mouth=mouth_region,
        eye_lut=lut[:4].reshape(2, 2, 1, -1), mouth_lut=lut[4:].reshape(1, 3, 1, -1),
        lip_gap=lip_gap,
        bounds=TargetBounds(
            lid_lo_min=lids_lo - cfg.lower_lid_cap, lid_lo_max=lids_lo + cfg.lower_lid_cap,
            lid_up_min=src[_IDX["lids_up"], 1] - cfg.eye_open_cap, lid_src=src[_IDX["lids_up"]],
            gap_per_drop=lip_gap / cfg.lip_close_drop,
            lip_keep=torch.tensor([-1.0] * 3 + [1.0] * 3) * cfg.lip_min_thickness * lip_thickness,
            chin_keep=torch.tensor(0.5 * chin_drop), spline_gap=cfg.tps_lip_min_gap * lip_gap),
    )
    if cfg.head_matte:
        avatar.matte = head_matte(cfg, img, src, torch.linalg.inv(A), t, ellipse, iod, grid_norm)
    if cfg.lid_fill:  # (one per eye box of a streamed frame: expanded, not copied)
        avatar.lid_fill = lid_fill(cfg, img, src, A, t).contiguous(memory_format=torch.channels_last).expand(
            2, -1, -1, -1)
    mouth_colours(avatar, img.permute(2, 0, 1))
    # where the lips really begin outside the inner-lip curves (closed lips are drawn from there): two more
    # mouth-table rows, looked up with the others at no extra cost per frame (models/warp/closure.py)
    reach, seam = torch.full((2, hs.shape[0]), cfg.lip_close_inset), avatar.lip_rgb
    if cfg.lip_edges:
        reach, seam = lip_edges(size, img.permute(2, 0, 1), A, t, hs, lut[4], lut[5], avatar.lip_rgb,
                                avatar.teeth_rgb if avatar.photo_teeth else None, cfg.lip_close_inset, 0.5 / iod,
                                (float(src[60, 0]), float(src[64, 0])))
    avatar.mouth_lut = torch.cat([lut[4:], reach]).reshape(1, 5, 1, -1)
    avatar.seam_lip = seam.reshape(1, 3, 1, 1).clone()
    avatar.seam_dark = avatar.seam_lip * cfg.seam_shade
    return avatar


def neck_line(cfg: WarpConfig, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``neck_hold``'s constants from the face-frame landmarks ``src`` (68, 2): the lower jaw line (points 4-12; its
    sides above them are as steep as the cheek) raised by neck_lift, (2, J) as v / neck_length + 1 and h, and the
    slope in those units."""
    jaw = src[4:13]
    return (torch.stack([(jaw[:, 1] - cfg.neck_lift) / cfg.neck_length + 1.0, jaw[:, 0]]),
            torch.tensor(cfg.neck_slope / cfg.neck_length))


def neck_hold(jaw: torch.Tensor, slope: torch.Tensor, inv_length: float, pts: torch.Tensor,
              bottom: torch.Tensor | None = None) -> torch.Tensor:
    """How much of the head's sideways motion face-frame points ``pts`` (…, 2) take under the bottom edge's hold
    (…,): 1 down to the jaw line, then falling linearly to 0 at the neck's base ``neck_length`` below it (the chest
    and shoulders below stay still; where the base lies below the photo, the photo's bottom rows of the neck follow
    the head by the rest; with ``bottom``, the points' distance to the photo's bottom row in units of neck_length,
    the ramp reaches 0 there: the bottom row stays still). ``jaw``, ``slope``: ``neck_line``'s; ``inv_length``
    1 / neck_length.

    Why: the bottom edge's hold was a smoothstep over the bottom head_edge_band of the photo (~58 px at 256²), level
    across the image. On a photo whose chin is ~30 px above the bottom it cut through the lower face: the chin took
    0.6 of the head's sideways travel and the neck under it ~0.3, and the jaw's shaded edge was drawn out into a
    diagonal band. A real neck shears under the jaw while the jaw moves with the head (a little less than the nose:
    ``neck_lift``); here the hold starts at the jaw line raised by neck_lift (the lower envelope of cones of
    ``neck_slope`` from its points: the jaw line, no steeper than that, falling away beside it) and spreads the
    shear evenly (linear: the least steep ramp) over the lower face and the neck. (Along the
    jaw's steep sides up to the ears the ramp's start jumped by tens of rows within a few columns, and the hold
    with it: a far sideways travel folded the cheek's edge over the hair beside it, on feifeili_clip2_short.)
    The core evaluates it where each point is and where the head motion takes it from (the jaw where it was and
    where it is now), like the head mask."""
    top = torch.addcmul(jaw[0], (pts[..., 0:1] - jaw[1]).abs(), slope).amin(-1)  # (…,) 1 + jaw's v / neck_length
    w = torch.sub(top, pts[..., 1], alpha=inv_length)  # (…,) 1 - depth under the jaw / neck_length
    if bottom is not None:  # ... and no more than the share of the way from the jaw to the photo's bottom row
        w = torch.minimum(w, bottom / (bottom + 1.0 - w).clamp_min(1e-6))
    return w.clamp_(0.0, 1.0)


def _head_ellipse(cfg: WarpConfig, src: torch.Tensor) -> tuple[float, float, float, float]:
    """The head mask's ellipse in the face frame: over face, hair and chin, sized from the jaw line and brows."""
    jaw, brows = src[0:17], src[17:27]
    top = float(brows[:, 1].min()) - cfg.head_mask_above
    bottom = float(jaw[:, 1].max()) + cfg.head_mask_below
    rx = cfg.head_mask_wide * float(jaw[:, 0].max() - jaw[:, 0].min()) / 2
    return float(jaw[:, 0].mean()), (top + bottom) / 2, rx, (bottom - top) / 2


def head_mask_at(
    cfg: WarpConfig, pts: torch.Tensor, ellipse: tuple[float, float, float, float],
    outer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Soft head mask at face-frame points (…, 2): 1 inside the ellipse, a smooth fall-off to 0 beyond.

    Head motion moves what is inside and leaves the background still (no bending window bars); the band in
    between stretches. ``outer`` (default ``cfg.head_mask_outer``; a tensor broadcasting against the points'
    leading dims, e.g. (N, 1)) is where the fall-off ends, in ellipse radii: a large head motion needs a wider
    band, or the band folds.
    """
    return head_falloff(cfg, head_radius(pts, ellipse), outer)


def head_radius(pts: torch.Tensor, ellipse: tuple[float, float, float, float]) -> torch.Tensor:
    """Elliptic radius (…,) of face-frame points (…, 2): 1 on the head ellipse."""
    cx, cy, rx, ry = ellipse
    return torch.sqrt(((pts[..., 0] - cx) / rx) ** 2 + ((pts[..., 1] - cy) / ry) ** 2)


def head_falloff(cfg: WarpConfig, r: torch.Tensor, outer: torch.Tensor | float | None = None) -> torch.Tensor:
    """``head_mask_at`` from elliptic radii: the part a fixed point set (the coarse grid) can precompute."""
    o = cfg.head_mask_outer if outer is None else outer
    x = ((o - r) / (o - 1.0)).clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _regions(
    cfg: WarpConfig, boxes: list[tuple[float, float, float, float]], A: torch.Tensor, t: torch.Tensor, size: int,
    iod: float,
) -> list[Region]:
    """Lattices of one common size for face-frame boxes (h0, h1, v0, v1), and their pixel boxes."""
    step = max(cfg.lattice_step, 1.0 / iod)  # about one pixel, never finer
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

def mouth_colours(avatar: WarpAvatar, img: torch.Tensor) -> None:
    """Teeth and mouth-cavity colours of the photo img (3, S, S): from its teeth if it shows them, else from the
    lips/skin."""
    lm = avatar.landmarks

    def sample(points: torch.Tensor) -> torch.Tensor:  # (K, 2) px → (K, 3)
        xy = points.round().long().clamp(0, avatar.size - 1)
        return img[:, xy[:, 1], xy[:, 0]].T

    lip = sample((lm[_IDX["lip_outer"]] + lm[_IDX["lip_inner"]]) / 2).median(0).values
    skin = sample(torch.stack([(lm[31] + lm[3]) / 2, (lm[35] + lm[13]) / 2, lm[29], lm[28]])).median(0).values
    avatar.cavity_rgb = lip * torch.tensor([0.30, 0.20, 0.20])
    avatar.lip_rgb = lip
    avatar.skin_rgb = skin

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
            avatar.upper_teeth = upper_teeth_length(f[inner], (f[inner, 1] - up[inner]), luma, sat, s, avatar.teeth_rgb)


def upper_teeth_length(f: torch.Tensor, depth: torch.Tensor, luma: torch.Tensor, sat: torch.Tensor, s: torch.Tensor,
                       teeth_rgb: torch.Tensor) -> float:
    """How far (IOD) the photo's upper teeth reach below the upper inner lip, between the middle points 61 and 63:
    the depth at which the rows stop being mostly teeth (bright, unsaturated). A laughing photo's incisors are
    longer than the mouth model's default (WarpConfig.teeth_upper): split there, the teeth cracked as it opened."""
    mid = (f[:, 0] > s[61, 0]) & (f[:, 0] < s[63, 0])
    bright = (luma >= 0.75 * float(teeth_rgb @ torch.tensor([0.299, 0.587, 0.114]))) & (sat < 0.45)
    step = 0.01
    length = 0.0
    for k in range(1, 60):  # (the opening's pixels start 0.01 below the lip: ``inner`` in mouth_colours)
        band = mid & (depth >= k * step) & (depth < (k + 1) * step)
        if int(band.sum()) < 3 or float(bright[band].float().mean()) < 0.5:
            break
        length = (k + 1) * step
    return length


def lattice_sources(avatar: WarpAvatar, coarse: torch.Tensor, move: Move) -> torch.Tensor:
    """Where the spline samples the photo for every lattice point (``avatar.lattice_pts``: eyes, then mouth), as
    (u, v) (``avatar.norm_to_uv``: u the lookup-table position of the face-frame h, v face-frame) → (N, P, 2):
    one coarse-grid lookup for all regions."""
    n, size = coarse.shape[0], avatar.size
    if move is None:
        q = avatar.lattice_still.expand(n, -1, -1, -1)
    else:
        lin, off, _ = move
        c = 2.0 / (size - 1)
        q = torch.baddbmm(off.unsqueeze(1) * c - 1.0, avatar.lattice_pts.expand(n, -1, -1),
                          lin.transpose(1, 2) * c).unsqueeze(1)
    src = F.grid_sample(coarse, q, mode="bilinear", padding_mode="border",
                        align_corners=True)  # (N, 2, 1, P) normalised source positions
    return torch.baddbmm(avatar.norm_to_uv_c, avatar.norm_to_uv.expand(n, -1, -1), src.flatten(2)).transpose(1, 2)

def lookup(lut: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """The C source curves of ``lut`` (B or 1, C, 1, L) at lattice points uv (B, …, 2) (``lattice_sources``)
    → (B, C, …), linearly interpolated along u and constant beyond the table's ends: one grid_sample. Only u
    counts: on a one-row image (align_corners) every v lands on that row."""
    b = uv.shape[0]
    out = F.grid_sample(lut.expand(b, -1, -1, -1), uv.reshape(b, 1, -1, 2), mode="bilinear", padding_mode="border",
                        align_corners=True)  # (B, C, 1, P)
    return out.reshape((b, lut.shape[1]) + uv.shape[1:-1])


Origins = list[tuple[tuple[int, int], ...]]  # per region, per frame: the pixel box's top-left (y0, x0)


def to_box(avatar: WarpAvatar, group: BoxGroup, fields: torch.Tensor, move: Move) -> tuple[Origins, torch.Tensor]:
    """Resample lattice fields (R·N, C, Qv, Qh), region-major, into the group's R pixel boxes, placed where the
    head moved them in each frame.

    Returns each box's origin (y0, x0) per frame and the fields per box pixel (R·N, C, bh, bw); zero outside the
    lattice. Each frame's box follows that frame's head (a box placed once per batch, at its mean position, cut
    off the mouth of a fast-moving head: a vertical seam in an offline batch); ``box_runs`` groups frames that
    share an origin, so a still head or a streaming batch of one pastes with one slice.
    """
    r, n, size = len(group.y0), fields.shape[0] // len(group.y0), avatar.size
    if move is None:
        origins = [((y0, x0),) * n for y0, x0 in zip(group.y0, group.x0, strict=True)]
        q = group.still_box.unsqueeze(1).expand(-1, n, -1, -1)
    else:
        lin, off, lin_inv = move
        # the lattice centres' shift per frame (N, R, 2): one host read for all boxes and frames
        d = (torch.matmul(group.centre, lin.transpose(1, 2)) + (off.unsqueeze(1) - group.home)).round_().tolist()
        origins = [tuple((min(max(y0 + int(df[i][1]), 0), size - group.bh),
                          min(max(x0 + int(df[i][0]), 0), size - group.bw)) for df in d)
                   for i, (y0, x0) in enumerate(zip(group.y0, group.x0, strict=True))]
        # pixel p of the box placed at Δ from home → face frame before head motion → lattice:
        # S·lin⁻¹ (p + Δ − off) + o, with the box's pixels shifted first (one pass over them saves a dozen ops
        # on the tiny per-frame matrices, which cost more)
        delta = lin.new_tensor([[[float(x - x0), float(y - y0)] for y, x in orr]
                                for orr, y0, x0 in zip(origins, group.y0, group.x0, strict=True)])  # (R, N, 2)
        box_px = (group.box_px.unsqueeze(1) + (delta - off).unsqueeze(2)).reshape(r * n, -1, 2)  # (R·N, P, 2)
        k_t = (lin_inv.transpose(1, 2).unsqueeze(0) * group.scale[:, None, None, :]).reshape(r * n, 2, 2)
        q = torch.baddbmm(group.offset.repeat_interleave(n, 0).unsqueeze(1), box_px, k_t)
    out = F.grid_sample(fields, q.reshape(r * n, group.bh, group.bw, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return origins, out


def box_runs(origins: tuple[tuple[int, int], ...]) -> list[tuple[slice, int, int]]:
    """Consecutive frames whose box shares an origin, as (frame slice, y0, x0): one slice op per run."""
    runs: list[tuple[slice, int, int]] = []
    start = 0
    for i in range(1, len(origins) + 1):
        if i == len(origins) or origins[i] != origins[start]:
            runs.append((slice(start, i), *origins[start]))
            start = i
    return runs
