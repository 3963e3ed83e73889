"""Mouth interiors from real footage: an exemplar bank indexed by inner-lip shape (assets/mouth_bank.npz).

The bank (built by ``python -m engine.mouth_bank``, data card models/assets/mouth_bank.md) holds mouth
interiors cut from the sample videos in *lip-normalised coordinates*: s from the left inner-lip corner to the
right one, t from the upper inner lip to the lower one. Per avatar one donor speaker is chosen (one person's
teeth every frame: switching donors would flicker) and the donor's
colours are matched *teeth to teeth*: to the photo's own teeth when it shows them, else to the teeth the
donor's skin-to-teeth ratio predicts for the photo's skin. (Matching to the lips turned teeth mauve.) Only the
teeth take that gain: each exemplar pixel carries how teeth-like it is (a fourth channel); the rest (tongue, the
inside of the lips) is dimmed only half as much (never brightened) and shaded darker with its depth behind the
lips. Per frame
the k exemplars whose inner-lip shape is nearest to the target's are blended with smooth weights, so a held
shape gives the same interior (no flicker) and a changing one cross-fades.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BANK_PATH = Path(__file__).resolve().parents[1] / "assets" / "mouth_bank.npz"
PATCH_T, PATCH_S = 20, 40  # lip-normalised sample grid: rows upper → lower lip, columns corner → corner
FEATURE_WEIGHTS = (1.0, 1.0, 1.0, 0.5)  # inner-lip gaps at 61–67, 62–66, 63–65, then the corner-to-corner width
NEAREST = 4  # exemplars blended per frame
SIGMA = 0.006  # IOD: blend weights exp(−d² / σ²) relative to the nearest (small: the nearest dominates, crisp)
MIN_EXEMPLAR_GAP = 0.06  # IOD: exemplars with a smaller mean inner-lip gap are not used
MIN_DONOR = 100  # a donor speaker needs this many exemplars (enough shapes to follow the lips)
LUMA = (0.299, 0.587, 0.114)
RIM = 0.12  # fraction of an exemplar's height at each lip that is lip, not interior
# a pixel is teeth-like from TEETH_LUMA[0] to TEETH_LUMA[1] of its speaker's teeth luminance (dim: shade or tissue), and
# while its saturation (max − min) / max exceeds the teeth's by at most TEETH_SAT[0], not at all beyond TEETH_SAT[1]
# (a lit pale lower lip or tongue is as bright as teeth, and only ~0.08 more saturated on the clearest donor)
TEETH_LUMA = (0.45, 0.8)
TEETH_SAT = (0.03, 0.08)


def teeth_likeness(rgb: torch.Tensor, teeth: torch.Tensor) -> torch.Tensor:
    """How teeth-like (0..1) each pixel of patches (K, 3, T, S) 0..255 is, given its speaker's teeth colour (K, 3):
    bright and as unsaturated as the teeth → (K, 1, T, S). What the colour gain and the cavity shade tell apart."""
    luma = torch.einsum("kctq,c->ktq", rgb, torch.tensor(LUMA)).unsqueeze(1)
    hi, lo = rgb.amax(1, keepdim=True), rgb.amin(1, keepdim=True)
    sat = (hi - lo) / hi.clamp_min(1.0)
    t_luma = (teeth @ torch.tensor(LUMA)).clamp_min(1.0)[:, None, None, None]
    t_sat = ((teeth.amax(1) - teeth.amin(1)) / teeth.amax(1).clamp_min(1.0))[:, None, None, None]
    bright = ((luma / t_luma - TEETH_LUMA[0]) / (TEETH_LUMA[1] - TEETH_LUMA[0])).clamp(0.0, 1.0)
    white = ((t_sat + TEETH_SAT[1] - sat) / (TEETH_SAT[1] - TEETH_SAT[0])).clamp(0.0, 1.0)
    return bright * white


def shape_features(face: torch.Tensor) -> torch.Tensor:
    """Inner-lip shape (N, 4) of face-frame landmarks (N, 68, 2) in IOD: three gaps, then the width."""
    gaps = face[:, [67, 66, 65], 1] - face[:, [61, 62, 63], 1]
    width = face[:, 64, 0] - face[:, 60, 0]
    return torch.cat([gaps, width[:, None]], 1)


def feature_matrix(weights: torch.Tensor) -> torch.Tensor:
    """(136, 4): flattened landmarks (N, 68·2) @ it = ``shape_features`` × ``weights``, in one product (the
    render loop's version: a frame is hundreds of small ops, and the indexing and concatenation cost more than
    the arithmetic). Exact: each column has one +w and one −w entry, and the weights are powers of two."""
    m = torch.zeros(68, 2, 4)
    for k, (up, lo) in enumerate(((61, 67), (62, 66), (63, 65))):
        m[lo, 1, k], m[up, 1, k] = weights[k], -weights[k]
    m[64, 0, 3], m[60, 0, 3] = weights[3], -weights[3]
    return m.reshape(136, 4)


@dataclass(frozen=True)
class MouthBank:
    """The exemplar bank (all speakers, or all but some)."""

    patches: torch.Tensor  # (K, 4, PATCH_T, PATCH_S) float32: RGB 0..255, then teeth-likeness 0..1 (teeth_likeness)
    shape: torch.Tensor  # (K, 4) inner-lip features (IOD)
    speaker: torch.Tensor  # (K,) int64 index into ``speakers``
    speakers: tuple[str, ...]
    teeth_rgb: torch.Tensor  # (P, 3) each speaker's teeth colour (median of its brightest unsaturated pixels)
    skin_rgb: torch.Tensor  # (P, 3) each speaker's skin colour (cheeks, nose bridge)

    @classmethod
    def load(cls, path: str | Path | None = None, exclude: tuple[str, ...] = ()) -> MouthBank:
        """Load the shipped bank; ``exclude`` drops speakers (leave-one-speaker-out scoring)."""
        with np.load(Path(path) if path else BANK_PATH) as data:
            meta = json.loads(str(data["meta"]))
            speakers = tuple(meta["speakers"])
            unknown = set(exclude) - set(speakers)
            if unknown:
                raise KeyError(f"speakers {sorted(unknown)} not in the mouth bank (have {list(speakers)})")
            spk = data["speaker"].astype(np.int64)
            keep = ~np.isin(spk, [speakers.index(s) for s in exclude])
            rgb = torch.from_numpy(data["patches"][keep].astype(np.float32)).permute(0, 3, 1, 2)  # (K, 3, T, S)
            teeth_rgb = torch.from_numpy(data["teeth_rgb"].astype(np.float32))
            speaker = torch.from_numpy(spk[keep])
            # derived from the stored crops and each speaker's teeth colour (not stored: the asset holds the media)
            teeth = teeth_likeness(rgb, teeth_rgb[speaker])
            return cls(
                patches=torch.cat([rgb, teeth], 1).contiguous(),
                shape=torch.from_numpy(data["shape"][keep].astype(np.float32)),
                speaker=speaker,
                speakers=speakers,
                teeth_rgb=teeth_rgb,
                skin_rgb=torch.from_numpy(data["skin_rgb"].astype(np.float32)),
            )

    def donor(self, prefer: str | None = None) -> int:
        """The speaker whose interiors are used: ``prefer`` if present, else the clearest one.

        Clearest = the highest mean luminance contrast (p90 − p10) in the patches' centre among speakers with
        at least ``MIN_DONOR`` exemplars: crisp teeth against a dark cavity, rather than blurred, lip-filled
        or dim interiors (measured on the shipped bank: furious_talk2 119, Obama 85, KristiNoem 74, ...).
        """
        counts = torch.bincount(self.speaker, minlength=len(self.speakers))
        if prefer is not None and prefer in self.speakers and counts[self.speakers.index(prefer)] > 0:
            return self.speakers.index(prefer)
        luma = torch.einsum("kctq,c->ktq", self.patches[:, :3], torch.tensor(LUMA))
        centre = luma[:, PATCH_T // 5 : PATCH_T * 4 // 5, PATCH_S // 5 : PATCH_S * 4 // 5].reshape(len(luma), -1)
        contrast = torch.quantile(centre, 0.9, dim=1) - torch.quantile(centre, 0.1, dim=1)  # (K,)
        score = torch.zeros(len(self.speakers)).index_add_(0, self.speaker, contrast) / counts.clamp_min(1)
        eligible = counts >= min(MIN_DONOR, int(counts.max()))
        return int(torch.argmax(torch.where(eligible, score, -1.0)))

    def teeth_from_skin(self) -> tuple[float, float]:
        """How real teeth relate to the skin, pooled over the speakers with exemplars in this bank (a bank loaded
        without a speaker does not count that speaker's colours: leave-one-speaker-out): the median teeth-to-skin
        luminance ratio, and the share of the skin's tint the teeth take (least squares through the origin of the
        teeth's chromaticity − 1 on the skin's, colour / its luminance, over the speakers and channels)."""
        present = torch.bincount(self.speaker, minlength=len(self.speakers)) > 0
        luma = torch.tensor(LUMA)
        t_l, s_l = (self.teeth_rgb @ luma).clamp_min(1.0), (self.skin_rgb @ luma).clamp_min(1.0)
        ratio = float((t_l / s_l)[present].median())
        t_c = (self.teeth_rgb / t_l[:, None] - 1.0)[present]  # (P', 3)
        s_c = (self.skin_rgb / s_l[:, None] - 1.0)[present]
        return ratio, float((t_c * s_c).sum() / (s_c * s_c).sum().clamp_min(1e-6))

    def for_avatar(self, donor: int, photo_teeth: torch.Tensor | None, photo_skin: torch.Tensor,
                   cavity_shade: float = 0.0, cavity_depth: float = 0.1, teeth_pool: float = 0.0,
                   teeth_contrast: float = 1.0, teeth_tint: float = 0.0) -> Interior:
        """The donor's exemplars colour-matched to a photo: the teeth to its teeth, the tissue shaded by depth.

        Teeth, with teeth in the photo: the donor's teeth → the photo's teeth (one gain per channel, half the tint).
        Without: the square root of the photo-to-donor skin luminance ratio — lighting shows in the skin, but teeth
        do not darken with the skin's tone (a full skin ratio made teeth grey on dark skin) — and ``teeth_tint`` ×
        the share of the photo's skin tint real teeth take (``teeth_from_skin``; a grey gain made the donor's
        near-white teeth a cold blue-grey in a warm face). ``teeth_pool`` and ``teeth_contrast``: options, not
        shipped (WarpConfig; models/assets/mouth_bank.md).
        Each pixel takes that gain by its teeth-likeness; the rest of it (tongue, the inside of the lips: tissue) the
        square root of its grey part, at most 1, and is shaded darker with its depth behind the nearer lip, by
        ``cavity_shade`` from ``cavity_depth`` (IOD) on (``cavity_shade_map``). (With the teeth's gain on everything
        and no shade, a donor's lit tongue and lower lip filled an open mouth with a flat pale lens, feifeili's most
        visibly. Tissue matched skin to skin darkened the interiors, already darker than the real ones on 5 of the 8
        sample clips, further (teeth share |error| 0.118 at shade 0.6); tissue left at the donor's colour (0.089)
        showed a pale crescent of the donor's lower lip in a dim photo's mouth (renderer_photos.png,
        feifeili_clip2_short); the square root scores 0.088.)
        """
        # small openings are mostly lip rim in the crops (dlib's inner-lip points sit on the lips): a small
        # target opening takes the smallest open interior instead, squeezed (teeth edges and shade, not pink)
        sel = (self.speaker == donor) & (self.shape[:, :3].mean(1) >= MIN_EXEMPLAR_GAP)
        if not bool(sel.any()):
            sel = self.speaker == donor
        d_teeth, d_skin = self.teeth_rgb[donor], self.skin_rgb[donor].clamp_min(1.0)
        luma = torch.tensor(LUMA)
        d_luma = max(float((d_teeth * luma).sum()), 1.0)  # the donor's teeth luminance
        if photo_teeth is not None:
            # one gain per channel, bounded so that a strange photo cannot turn teeth into another colour
            gain = (photo_teeth / d_teeth.clamp_min(1.0)).clamp(0.5, 1.6)
            grey_gain = float((gain * luma).sum())
            gain = grey_gain + 0.5 * (gain - grey_gain)  # keep the donor's hue mostly: only half the tint moves
        else:
            skin = float((photo_skin * luma).sum())
            g = max(skin / float((d_skin * luma).sum()), 1e-6) ** 0.5
            ratio, slope = self.teeth_from_skin()
            if teeth_pool > 0.0:
                # shrink toward the teeth a pooled teeth-to-skin ratio predicts (log-linear, weight teeth_pool)
                g = g ** (1.0 - teeth_pool) * max(skin * ratio / d_luma, 1e-6) ** teeth_pool
            gain = torch.full((3,), min(g, 1.2))
            if teeth_tint > 0.0:
                # real teeth take part of the light's and the skin's tint (a grey gain made the donor's white teeth
                # a cold blue-grey in a warm face): the donor's teeth hue → white + teeth_tint × the pooled share of
                # the photo's skin tint (chromaticities: colour / luminance, luminance-neutral)
                want = 1.0 + teeth_tint * slope * (photo_skin / max(skin, 1.0) - 1.0)
                gain = (gain * want / (d_teeth / d_luma).clamp_min(0.05)).clamp(0.5, 1.6)
        rgb, teeth = self.patches[sel, :3], self.patches[sel, 3:]  # (K, 3, T, S), (K, 1, T, S)
        tissue = min(float((gain * luma).sum()), 1.0) ** 0.5  # tissue: dimmed half as much (in log) as the teeth
        tooth_gain = gain[None, :, None, None]  # (1, 3, 1, 1)
        if teeth_contrast != 1.0:
            # the exemplar's own contrast within the teeth, raised: luminance (l / l_teeth)^γ of the donor's teeth
            # (its gaps and shaded teeth darker, its highlights kept) instead of one flat gain
            rel = torch.einsum("kctq,c->ktq", rgb, luma).unsqueeze(1) / d_luma
            tooth_gain = tooth_gain * rel.clamp(0.05, 1.5) ** (teeth_contrast - 1.0)  # (K, 3→1, T, S)
        per_pixel = tissue + teeth * (tooth_gain - tissue)  # (K, 3, T, S)
        if cavity_shade > 0.0:
            per_pixel = per_pixel * cavity_shade_map(self.shape[sel, :3].mean(1), teeth, cavity_shade, cavity_depth)
        patches = (rgb * per_pixel).clamp(0.0, 255.0)
        shape = self.shape[sel] * torch.tensor(FEATURE_WEIGHTS)  # (K, 4) weighted features
        lip_feat = feature_matrix(torch.tensor(FEATURE_WEIGHTS))  # (136, 4)
        gap_feat = feature_matrix(torch.ones(4))[:, :3].sum(1, keepdim=True) / 3.0  # (136, 1)
        gap = self.shape[sel, :3].mean(1)
        return Interior(patches=patches.flatten(1), shape_sq=(shape * shape).sum(1),
                        lip_dot=lip_feat @ shape.T * -2.0, gap_feat=gap_feat,
                        gap_col=gap[:, None], gap_eps=torch.full((1, 1), 1e-6),
                        donor=self.speakers[donor], gain=gain, gap=gap)


def cavity_shade_map(gap: torch.Tensor, teeth: torch.Tensor, shade: float, depth: float) -> torch.Tensor:
    """Brightness factor (K, 1, T, S) of exemplars with mean inner-lip gaps ``gap`` (K,) IOD and teeth-likeness
    ``teeth`` (K, 1, T, S): 1 − shade · min(1, d / depth) · (1 − teeth), d a patch row's distance (IOD) behind the
    nearer lip (the rows within RIM of either lip are lip: depth 0).

    Why per exemplar row, not per rendered pixel: the renderer maps an exemplar's rows rigidly below the upper lip and
    above the lower one (mouth.exemplar_fill, interior_jaws), so a row's depth in the exemplar is its depth in the
    target wherever the two are within an exemplar's reach of a lip (only a target's stretched middle row is
    deeper); shading the exemplars once per avatar costs the frame nothing.
    """
    t = (torch.arange(PATCH_T, dtype=torch.float32) + 0.5) / PATCH_T  # patch row centres, upper → lower lip
    d = ((torch.minimum(t, 1.0 - t) - RIM).clamp_min(0.0)[None, :] * gap[:, None])  # (K, T) IOD
    k = (d * (shade / depth)).clamp(max=shade)[:, None, :, None]  # (K, 1, T, 1)
    return 1.0 - k * (1.0 - teeth)


@dataclass(frozen=True)
class Interior:
    """One avatar's colour-matched exemplars."""

    patches: torch.Tensor  # (K, 3·PATCH_T·PATCH_S) flattened (the blend is one matrix product)
    # the exemplars' weighted features s (K, 4) as what ``blend`` needs: |s|² (K,), and (136, K) flattened target
    # landmarks → −2 f·s (f their weighted features, ``feature_matrix``)
    shape_sq: torch.Tensor
    lip_dot: torch.Tensor
    gap_feat: torch.Tensor  # (136, 1) flattened target landmarks → their mean inner-lip gap (IOD)
    gap_col: torch.Tensor  # (K, 1) ``gap`` as a column, and (1, 1) 1e-6: what the hold's stretch test needs
    gap_eps: torch.Tensor
    donor: str
    gain: torch.Tensor  # (3,) colour gain applied to the teeth (by each pixel's teeth-likeness)
    gap: torch.Tensor  # (K,) each exemplar's mean inner-lip gap (IOD, unweighted)

    def blend(self, face: torch.Tensor, memory: torch.Tensor | None = None, hold: float = 0.0, stretch: float = 0.0,
              motion: float = 0.0, last_gap: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Interior patches (N, 3, PATCH_T, PATCH_S) for the inner lips of target landmarks (N, 68, 2), and the
        blended exemplars' own mean inner-lip gap (N, 1, 1) in IOD (the physical height the patch rows span).

        ``memory`` (1, K): the previous frame's weights over the exemplars (zeros: none), updated in place. With it
        the frames are blended in order and the exemplars shown last are nearer by ``hold`` × σ² × their weight:
        a shape that holds within that margin keeps its interior. (Without it the nearest exemplar decides alone,
        and a sub-pixel change of shape swapped teeth for cavity from one frame to the next:
        benchmarks/mouth_temporal.py.) A clearly new shape still takes its own exemplars at once, cross-faded
        over about a frame by the same weights.

        ``stretch`` (0: never): the hold fades out as the target's opening outgrows the shown exemplars' — fully
        held up to (``stretch`` − 0.25) × their mean inner-lip gap, not at all from ``stretch`` ×. Why: the margin
        is in squared feature distance, so it kept a shape it once matched until the mouth was 16 σ ≈ 0.1 IOD away,
        however near another exemplar was; a mouth opening from a rounded shape kept a small opening's exemplar
        (mostly lip rim, pale) and the rigid jaws stretched its middle row over the wider opening: the flat pale
        lens of issue 17 (renderer_photos.png "open": KristiNoem shown a 0.072 IOD exemplar in a 0.122 opening, ×1.7;
        trump_clip1 ×1.36, feifeili_clip1 ×1.76; the nearest exemplars were 0.010-0.036 IOD away). The opening,
        not the distance: releasing the hold whenever a much nearer exemplar existed (or a fixed reach of 0.05-0.08
        IOD) also released it in the slow drifts benchmarks/mouth_temporal.py counts as holds (flicker p90 4.4 →
        5.0-5.2, pops 0.7 → 1.4-1.8 per 100).

        ``motion`` (0: never), with ``last_gap`` (1, 1) the previous frame's target mean inner-lip gap (IOD, updated
        in place): the hold also fades as the opening moves, fully held while it changes by less than a tenth of
        ``motion`` per frame, not at all from ``motion``. Why: a held interior is a stale one; held while the mouth
        opened, the small opening's cavity stayed as the lips parted and the rendered mouth showed fewer teeth than
        the real one frame by frame (benchmarks/mouth_temporal.py: teeth error 0.098 alone → 0.128 held). A shape
        that holds, the case the hold is for, barely moves.
        """
        # squared feature distances |f − s|² less the target's own |f|², which neither the ranking nor the weights
        # (relative to the nearest) depend on: one product (torch.cdist cost ~10× as much)
        flat = face.reshape(-1, 136)
        d2 = torch.addmm(self.shape_sq, flat, self.lip_dot)  # (N, K)
        k = min(NEAREST, d2.shape[1])
        if memory is None or hold <= 0.0:
            w, idx = _weights(d2, k)
        else:
            bonus = -hold * SIGMA * SIGMA
            last = last_gap if motion > 0.0 else None
            gated = stretch > 0.0 or last is not None
            if gated:
                g_t = torch.mm(flat, self.gap_feat)  # (N, 1) the target's mean inner-lip gap (IOD)
            rows = []
            for i in range(d2.shape[0]):  # in order: each frame's choice depends on the one before
                di = d2 if d2.shape[0] == 1 else d2[i : i + 1]
                fade: torch.Tensor | None = None  # (1, 1) how much of the hold is left
                if gated:
                    g_i = g_t if d2.shape[0] == 1 else g_t[i : i + 1]
                    if stretch > 0.0:
                        # the shown exemplars' mean gap (+ a hair: no memory yet is 0, and so is its bonus)
                        g_s = torch.addmm(self.gap_eps, memory, self.gap_col)  # (1, 1)
                        fade = torch.rsub(g_i.div(g_s), 4.0 * stretch, alpha=4.0).clamp(0.0, 1.0)
                    if last is not None:
                        still = torch.rsub(torch.sub(g_i, last).abs(), 10.0 / 9.0, alpha=10.0 / (9.0 * motion))
                        still = still.clamp(0.0, 1.0)
                        fade = still if fade is None else fade * still
                        last.copy_(g_i)
                di = (torch.add(di, memory, alpha=bonus) if fade is None
                      else torch.addcmul(di, memory, fade, value=bonus))
                rows.append(_weights(di, k))
                memory.zero_().scatter_(1, rows[-1][1], rows[-1][0])
            w, idx = rows[0] if len(rows) == 1 else (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
        patches = torch.bmm(w.unsqueeze(1), self.patches[idx]).reshape(-1, 3, PATCH_T, PATCH_S)
        return patches, (w * self.gap[idx]).sum(1).reshape(-1, 1, 1)


def _weights(d2: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend weights (N, k) and exemplar indices (N, k) of the k nearest by (relative) squared distance d2 (N, K):
    exp(−(d² − d²_nearest) / σ²), normalised."""
    near, idx = torch.topk(d2, k, dim=1, largest=False)
    w = torch.exp((near[:, :1] - near) * (1.0 / (SIGMA * SIGMA)))
    return w / w.sum(1, keepdim=True), idx
