"""Tunables of the warp renderer (one frozen dataclass; lengths in inter-ocular units)."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
    lip_open_gain: float = 1.2  # an opening inner-lip gap is this much wider than the map predicts (~1/0.83)
    lip_width_gain: float = 1.8  # the lips' sideways motion (rounding / spreading) about the mouth's centre × this
    # on an opening mouth: the map predicts 0.75× the real inner-lip width variation (benchmarks/renderer.py width
    # amplitude, 8 source clips, held-out map, stride 6), 1.3 gave 0.85×. Chosen leave-one-clip-out over 1.0-2.5:
    # per clip the gain whose mean amplitude on the other 7 clips is nearest 1 (1.8 for 4 clips, 1.9 for 3, 1.6 for
    # feifeili_clip2_short) scores 1.004 held out (mean |amplitude − 1| 0.154; 1.3: 0.176); 1.8 on all 8: 0.999
    lip_close_drop: float = 0.04  # a predicted gap drop this large (a bilabial's, relative to rest) closes the lips
    # (0.05 closed 66 % of the held-out P/B/M frames over the 17 built-in styles, 0.04 more; see benchmarks)
    jaw_lift_cap: float = 0.08  # closing the photo's opening lifts the chin at most this much (more smears the chin)
    lip_min_thickness: float = 0.5  # a lip keeps at least this fraction of its thickness in the photo
    tps_lip_min_gap: float = 0.15  # inner-lip gap given to the spline, fraction of the photo's
    lid_band: float = 0.11  # eyelid skin above the upper lid that stretches over a closing eye
    lash_band: float = 0.025  # the lid margin with the lashes moves rigidly (stretching it smears the lashes)
    under_eye_band: float = 0.07  # skin below the lower lid that follows the lower lid
    lid_overlap: float = 0.02  # a closed lid reaches this far below dlib's lower-lid points (covers the rim)
    ramp: float = 0.03  # soft horizontal edge of the eye model at the eye corners
    # the closing lid's colour (models/warp/lidfill.py), added in proportion to how far the eye has closed (False:
    # the stretched band alone): the median of rows this far above the lash margin (IOD), smoothed along the lid
    # with σ lid_fill_blur; it takes over from the photo over this share of the band from A down (1: all of it,
    # a soft top edge). rows, from, shade and gain chosen leave-one-clip-out on benchmarks/lids.py (eye SSIM against
    # the clips' real blinks, shut and half-closed; shade 1 on 6 of 8 held-out clips, 0.5 on 2); blur not tuned
    lid_fill: bool = True
    lid_fill_rows: tuple[float, ...] = (0.005, 0.015, 0.025)
    lid_fill_blur: float = 0.04
    lid_fill_from: float = 1.0
    lid_fill_shade: float = 1.0  # towards A the colour moves this far to the whole band's median (0: flat)
    lid_fill_gain: float = 1.0  # the fill's share is the eye's closed share × this, capped at 1 (half-closed lids)
    eye_skip: float = 0.006  # lids moving less than this (about half a pixel at 256²) skip the eye model
    mouth_margin: float = 0.05  # the mouth model reaches this far above the upper inner lip and fades out there
    lip_close_inset: float = 0.04  # closed lips are drawn from at most this far outside dlib's inner-lip points ...
    # ... from where the photo's lips begin in each column (models/warp/closure.py; False: from lip_close_inset
    # everywhere, the behaviour before, which skipped most of a smiling photo's ~3-px lips)
    lip_edges: bool = True
    lip_touch: float = 0.02  # an inner-lip gap narrower than this (about 1.5 px at 256²) shows no interior
    # ... and the seam where they meet is painted (opaque: a pixel let through there is teeth or cavity), shaded
    # from the colour the photo's lips have at their edges (closure.lip_edges) × seam_shade in its middle
    seam_alpha: float = 1.0
    seam_shade: float = 0.75
    close_reach: float = 0.6  # closing the photo's opening, the upper lip rides rigidly this share of it further up
    lip_edge_inset: float = 0.015  # the lower lip's edge lies this much below dlib's inner-lip points
    slit_release: float = 0.01  # a photo's dark slit is fully replaced by the real interior this much wider
    teeth_upper: float = 0.095  # visible length of the upper incisors below the upper lip
    teeth_lower: float = 0.05  # visible length of the lower incisors (only when the mouth is wide open)
    lower_teeth_from: float = 0.2  # lower teeth start showing when the gap exceeds this
    lattice_step: float = 1.0 / 90.0  # region-model sample spacing (≈ one pixel of a 256² crop)
    forehead_lift: float = 0.45  # forehead control points sit this far above the brows / temples
    border_points: int = 5  # fixed points per image side (corners included)
    interior_jaws: bool = True  # exemplar rows keep their size below / above each lip (see mouth.exemplar_fill)
    interior_split: float = 0.8  # ... the exemplar's upper part down to this fraction of its height rides the upper lip
    # (split 0.5 → 0.8 and slit release 0.04 → 0.01 chosen leave-one-clip-out on the teeth share of the 8 source
    # clips over a 5-point grid: held-out |error| 0.104 → 0.097; real speakers show their upper teeth down into the
    # opening, and the photo's dark slit hid them: benchmarks/renderer.py, models/assets/mouth_bank.md)
    # the exemplars shown in the last frame count as this many σ² nearer (× their weight; interior.SIGMA): a mouth
    # shape that holds keeps its interior instead of swapping teeth for cavity on a sub-pixel change (0: each frame
    # alone). benchmarks/mouth_temporal.py, 8 sample clips × 300 consecutive frames, on holds: p90 |Δ luma| of the
    # interior 13.8 alone → 8.3 / 6.7 / 4.9 / 4.1 / 5.5 / 5.0 at 8 / 32 / 64 / 256 / 512 / 1024 (real 3.4-4.5),
    # picked leave-one-clip-out: 256 for every clip; at 1024 the interior goes stale (teeth error 0.10 → 0.14)
    interior_hold: float = 256.0
    # ... and fades out as the target's opening outgrows the shown exemplars' (none at this many times their gap, full
    # up to 0.25 less; 0: never): the margin alone kept a small opening's pale exemplar, its middle row stretched over
    # an opening 1.4-1.8× as tall (the flat lens of issue 17; Interior.blend). Over 1.2 / 1.3 / 1.4 / 1.5 only 1.4 kept
    # the flicker on holds (p90 4.38, pops 0.69 per 100; without: 4.37, 0.72); lens frames on the open frames of the 8
    # source clips 0.112 → 0.071 (real 0.061); leave one clip out it is chosen for 3 of 8 clips (models/assets/
    # mouth_bank.md, "The flat lens")
    interior_hold_stretch: float = 1.4
    # ... and as the opening moves: gone when the target's mean inner-lip gap changes by this much (IOD) from one frame
    # to the next, fully held under a tenth of it (0: never; see Interior.blend). benchmarks/mouth_temporal.py, the 8
    # clips pooled (not left out): off / 0.01 / 0.02 / 0.03 / 0.04 / 0.06 → flicker p90 on holds 4.63 / 6.24 / 5.21 /
    # 4.94 / 4.63 / 4.59 (real 3.9), pops per 100 1.05 / 2.78 / 1.67 / 1.02 / 0.69 / 0.70, teeth |error| frame by
    # frame 0.128 / 0.102 / 0.109 / 0.108 / 0.112 / 0.119 (each frame alone: 13.4, 7.5, 0.098): 0.04, the knee
    interior_hold_motion: float = 0.04
    # Cavity shade: inside the mouth, tissue (what the exemplar's teeth-likeness says is not teeth) darkens with its
    # depth behind the lip line, by cavity_shade at cavity_depth (IOD) from the nearer inner lip and more; teeth keep
    # their brightness (models/warp/interior.py). Without it a donor's lit tongue and lower lip filled the open mouth
    # with a flat pale lens (feifeili). Teeth share of the 8 source clips (benchmarks/renderer.py, stride 6) over
    # 0.4 / 0.6 / 0.8 at depth 0.1: 0.0875 / 0.0881 / 0.0969 on all 8; picked leave-one-clip-out 0.4 for 6 clips,
    # 0.6 for KristiNoem and Obama_clip2, 0.092 held out (the interior before it: 0.092 too). The figure does not
    # tell 0.4 from 0.6; the mouth sheets do (0.6: feifeili's opening graded, not a pale lens)
    cavity_shade: float = 0.6
    cavity_depth: float = 0.1
    # A photo without visible teeth (MouthBank.for_avatar): the donor's teeth take teeth_tint × the share of the
    # photo's skin tint that real teeth take (fitted on the bank's speakers, without the scored one: 0.62-0.64);
    # a grey gain made the donor's near-white teeth a cold blue-grey in a warm face. Chosen leave-one-clip-out over
    # 0 / 0.5 / 1 on the warmth (R − B) / luma of the brightest interior pixels, rendered vs real, on the open frames
    # of the 8 source clips (benchmarks/renderer.py, stride 6): 0.5 for all 8, |error| 0.088 → 0.049 held out (1:
    # 0.077, pink on Obama); teeth share |error| 0.0968 either way. Not shipped (0 / 1 are the behaviour before):
    # teeth_pool, the teeth's luminance moved this far (log) from the donor-anchored √(skin ratio) to the photo's
    # skin × the bank's pooled teeth-to-skin ratio (1.07-1.10), picked 0 for all 8 clips on the teeth share and on
    # the teeth's brightness (|error| 11.7 → 16.0 / 22.1 grey levels at 0.5 / 1: dark-skinned Obama's teeth are
    # 1.8 × his skin, feifeili's 0.9 ×); teeth_contrast, teeth luminance ∝ (l / the donor's teeth)^γ (its gaps and
    # shaded teeth darker), picked 2-3 on the brightest third's spread (|error| 4.11 → 3.99 held out) but it costs
    # the teeth share (0.097 → 0.102 at 2) and shows no structure on the mouth sheets that the donor's exemplar lacks
    teeth_tint: float = 0.5
    teeth_pool: float = 0.0
    teeth_contrast: float = 1.0
    donor: str | None = None  # mouth-interior donor speaker of the bank; None: the clearest (MouthBank.donor)
    interior: str = "bank"  # mouth interior: "bank" (real exemplars, assets/mouth_bank.npz) | "painted"
    head_max_rotation: float = math.radians(25.0)  # wide enough for the sample clips' own pose sequences
    head_max_shift: float = 0.9  # ≈ 75 px at 256²: a sample speaker's head travels up to 0.8 (feifeili_clip2_short)
    # wherever the pose takes it: the band it uncovers at the photo's edge is the photo's own background beyond the
    # face on that side stretched over it (never pixels beyond the photo), at least this wide (IOD) when the face
    # touches the edge
    edge_room_min: float = 0.05
    edge_band_per_travel: float = 2.0  # ... and at most this many times the travel (a short move stretches less)
    edge_release: float = 0.02  # an edge is held (head_edge_band) unless the head travels this far away from it
    head_max_log_scale: float = 0.15
    head_mask_above: float = 0.9  # head mask: this far above the brows (hair) ...
    head_mask_below: float = 0.6  # ... below the chin (the neck follows the head) ...
    head_mask_wide: float = 1.3  # ... and this many half jaw-widths to each side; full inside, zero beyond
    head_mask_outer: float = 1.45  # this many radii (a soft band between) ...
    head_band_per_shift: float = 1.6  # ... at least this many times the head motion's reach wide (no fold)
    head_edge_band: float = 0.45  # head motion fades out over this fraction of the half image at the photo's edges
    # it moves along or towards (see edge_room_min); the expression warp is confined by the head mask alone
    # the moving head's matte (models/warp/matte.py): hair is looked for within the head ellipse widened / heightened
    # by these factors, as pixels farther than hair_colour_distance (luma + weighted chroma, 0..255 scale) from
    # every background sample (pixels beyond that zone, above the chin); fewer samples than hair_min_background:
    # no matte (the ellipse alone moves the head)
    head_matte: bool = True  # False: the ellipse alone moves the head (the behaviour before the matte)
    hair_wide: float = 1.6
    hair_tall: float = 1.2
    hair_colour_distance: float = 25.0
    hair_min_background: int = 100
    hair_from: float = 0.45  # the matte moves the hair (and the plate fills) from this head reach (IOD) on ...
    hair_full: float = 0.7  # ... fully from this one (a real clip's far travel: 0.8; idle motion: < 0.1)
    hair_band_min: float = 1.1  # the matte's soft band: at least this many radii (the ellipse's: head_mask_outer)
    # where the head uncovers a band, a sample lagging behind the rigid head by more than plate_from (IOD) shows
    # the background plate instead of the head's stretched pixels, fully from plate_full
    plate_from: float = 0.0
    plate_full: float = 0.25
    # the head's sideways motion under the jaw (avatar.neck_hold): the neck shears evenly from neck_lift (IOD) above
    # the jaw line (where it was and where it is now) to its base neck_length below that; a base below the photo
    # lets the photo's bottom rows follow by the rest (neck_to_bottom: they stay still instead, which put the shear
    # back into a band under a short neck: steepest shear 1.12 px/px vs 0.43). neck_ramp False: the bottom edge's
    # level smoothstep hold over head_edge_band (the behaviour before: it held KristiNoem's chin at 0.58 of a
    # sideways travel and drew the jaw's shade into a diagonal band, but a chin higher in its photo not at all).
    # neck_length chosen leave-one-clip-out over 0.6 / 0.9 / 1.2 / 2.0 on benchmarks/renderer.py's neck follow
    # (rows under the chin: rendered vs real share of the head's sideways travel, frames > 20 px, stride 6; the 6
    # source clips with such frames): 0.9 for 5 clips, 0.6 for andrew_clip_1. The real rows follow less (~0.5)
    # than any ramp makes them (0.93 at 0.9; the old hold 0.50): a real jaw slides over a neck that moves with the
    # body, which a continuous warp cannot draw without a band. neck_lift: a real chin travels sideways less than
    # the nose (yaw: the chin sits behind it; chin / nose travel on the source clips' frames whose nose moved > 15
    # px: median 0.75, per clip 0.44-1.16); the chin takes 1 - neck_lift / neck_length of the head's shift. Chosen
    # leave-one-clip-out from the other clips' median ratio on a 0.1 grid: 0.2 for 5 of 7 clips (andrew_clip_2 0.1,
    # feifeili_clip2_short 0.3)
    neck_ramp: bool = True
    neck_length: float = 0.9
    neck_to_bottom: bool = False
    neck_lift: float = 0.2
    neck_slope: float = 1.0  # the ramp's start follows the jaw line no steeper than this (rows per column)
