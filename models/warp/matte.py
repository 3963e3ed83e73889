"""Head-and-hair matte and background plate of a photo, for the warp renderer's moving head.

Why: the head mask is an ellipse sized from the landmarks. Long hair reaches beyond it, so a head travelling far
(a real clip's pose: 40–75 px sideways) left the hair outside the ellipse behind or stretched it into streaks
over the band it uncovered. Here the head is segmented once per photo against the photo's own background (colour
distance to pixels well away from the face), so that the hair travels rigidly with the face (the mask's
``hair_r``), and the band the head uncovers shows the photo's background, filled in where the head hid it
(``plate``), instead of stretched hair. Everything comes from inside the photo: the plate's filled pixels are
smooth extrapolations of the background around the head (a dark curtain, a wall), never pixels beyond the photo.

All of it is computed once at prepare time (numpy / scipy, ~50 ms at 256²); the still head never uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import torch

from models.warp.config import WarpConfig


@dataclass(frozen=True)
class HeadMatte:
    """A photo's head segmentation, as the moving head's per-frame code reads it."""

    r_map: torch.Tensor  # (1, 1, S, S) head "radius": 1 on the head and hair, 1 + distance / ellipse radius beyond
    grid_r: torch.Tensor  # (G*G,) r_map at the coarse grid's points (the still head's)
    maps: torch.Tensor  # (1, 2, S, S) soft mattes: [head without the neck (plate-filled when uncovered), head]
    plate: torch.Tensor  # (1, 3, S, S) 0..255 the photo with the head (neck excepted) filled from its background


def _features(img: np.ndarray) -> np.ndarray:
    """(…, 3) RGB → luma and two chroma axes, chroma weighted up: dark hair and a dark blue curtain differ
    mostly in hue (brown R > B vs navy B > R), hardly in brightness."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return np.stack([0.299 * r + 0.587 * g + 0.114 * b, 1.5 * (r - g), 1.5 * (b - (r + g) / 2)], -1)


def _fill(img: np.ndarray, known: np.ndarray, todo: np.ndarray) -> np.ndarray:
    """Fill the ``todo`` pixels of (S, S, 3) ``img`` from the ``known`` ones: normalised Gaussian averages, the
    finest scale that has support (a push-pull fill; smooth, like an out-of-focus background). Computed at a
    quarter of the resolution (a smooth fill needs no more; at full resolution it cost ~0.4 s per photo)."""
    size = img.shape[0]
    f = max(1, size // 64)
    n = size // f
    w = known[: n * f, : n * f].reshape(n, f, n, f).mean((1, 3)).astype(np.float32)  # (n, n) known share
    small = (img[: n * f, : n * f] * known[: n * f, : n * f, None]).reshape(n, f, n, f, 3).sum((1, 3)) / np.maximum(
        w[..., None] * f * f, 1e-6)
    out = small.copy()
    left = np.ones((n, n), bool)
    for sigma in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
        if not left.any():
            break
        den = ndi.gaussian_filter(w, sigma)
        ok = left & (den > 0.05)
        if ok.any():
            for c in range(3):
                num = ndi.gaussian_filter(small[..., c] * w, sigma)
                out[..., c][ok] = num[ok] / den[ok]
            left &= ~ok
    if left.any():
        out[left] = img[known].mean(0) if known.any() else img.reshape(-1, 3).mean(0)
    out = np.stack([ndi.gaussian_filter(out[..., c], 0.75) for c in range(3)], -1)  # the seams between scales
    big = np.stack([ndi.zoom(out[..., c], size / n, order=1, mode="nearest", grid_mode=True) for c in range(3)], -1)
    return np.where(todo[..., None], big[:size, :size], img)


def head_matte(
    cfg: WarpConfig, image: torch.Tensor, src: torch.Tensor, a_inv: torch.Tensor, t: torch.Tensor,
    ellipse: tuple[float, float, float, float], iod: float, grid_norm: torch.Tensor,
) -> HeadMatte | None:
    """Segment head and hair of an (S, S, 3) 0..255 photo; None when the photo has too little background away
    from the face to tell them apart (the moving head then keeps the ellipse alone).

    ``src`` are the landmarks in the face frame, ``a_inv``/``t`` map pixels to it, ``ellipse`` is the head mask's.
    """
    img = image.numpy().astype(np.float32)
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pix = np.stack([xx, yy], -1) - t.numpy()
    a = a_inv.numpy()
    h = pix[..., 0] * a[0, 0] + pix[..., 1] * a[0, 1]  # (S, S) face frame
    v = pix[..., 0] * a[1, 0] + pix[..., 1] * a[1, 1]
    cx, cy, rx, ry = ellipse
    chin = float(src[8, 1])
    jaw_half = float(src[0:17, 0].max() - src[0:17, 0].min()) / 2
    # where hair may be: a wider, taller ellipse, down to the head ellipse's bottom (the neck's level)
    rz = np.sqrt(((h - cx) / (rx * cfg.hair_wide)) ** 2 + ((v - cy) / (ry * cfg.hair_tall)) ** 2)
    zone = (rz <= 1.0) & (v <= cy + ry)
    feat = _features(np.stack([ndi.gaussian_filter(img[..., c], 1.0) for c in range(3)], -1))
    # background samples: the photo's left, right and top border beyond the head ellipse, less those that look like
    # the band above the forehead (hair reaching the edge)
    re = np.sqrt(((h - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    brow = float(src[17:27, 1].min())
    # (the band's middle only: beside a short-haired head it reaches a wall, which then counted as hair)
    ref = (v >= brow - 0.8) & (v <= brow - 0.4) & (np.abs(h - cx) <= 0.35 * rx)
    ring = np.zeros((size, size), bool)
    b = max(2, size // 64)
    ring[:b], ring[:, :b], ring[:, -b:] = True, True, True
    ring &= (re >= 1.0) & (v <= chin)
    rng = np.random.default_rng(0)
    if not ref.any():
        return None
    band = torch.from_numpy(feat[ref][rng.permutation(int(ref.sum()))[:1500]])
    bg = torch.from_numpy(feat[ring])
    bg = bg[torch.cdist(bg, band).amin(1) > cfg.hair_colour_distance]
    if len(bg) < cfg.hair_min_background:
        return None
    bg = bg[torch.from_numpy(rng.permutation(len(bg))[:600])]
    # every other pixel each way, then repeated (the matte is softened over a coarse-grid cell anyway): a quarter of
    # the colour distances (the full set cost ~0.7 s per photo)
    z2 = zone[::2, ::2]
    dist = torch.cdist(torch.from_numpy(feat[::2, ::2][z2]), bg).amin(1).numpy()
    fg2 = np.zeros(z2.shape, bool)
    fg2[z2] = dist > cfg.hair_colour_distance
    fg = np.repeat(np.repeat(fg2, 2, 0), 2, 1)[:size, :size] & zone
    core = np.sqrt(((h - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) <= 0.6  # surely the face
    # (morphology on an edge-padded copy: hair cut by the photo's edge stays in the matte up to the edge)
    pad = 4
    fg = np.pad(fg, pad, mode="edge")
    fg = ndi.binary_opening(fg, iterations=2) | np.pad(core, pad)
    lab, _ = ndi.label(fg)
    keep = np.unique(lab[np.pad(core, pad) & (lab > 0)])
    head = ndi.binary_fill_holes(ndi.binary_closing(np.isin(lab, keep), iterations=3))[pad:-pad, pad:-pad]
    # the neck below the chin stretches as before when the head moves (the plate has no neck to show there); the
    # plate's part fades out towards the neck and towards the zone's bottom (no hard edge where it stops)
    neck = (np.abs(h - float(src[0:17, 0].mean())) <= 0.8 * jaw_half) & (v >= chin - 0.1)
    # soft over about a coarse-grid cell: the per-frame code samples the mattes on the coarse grid and
    # interpolates bilinearly, which turns a sharp outline into a staircase
    soft = ndi.gaussian_filter(head.astype(np.float32), size / cfg.grid)
    fade = (1.0 - ndi.gaussian_filter(neck.astype(np.float32), 0.1 * iod)) * np.clip(
        (cy + ry - v) / max(cy + ry - chin, 1e-3), 0.0, 1.0)
    soft_nn = soft * fade
    rmin = min(rx, ry) * iod
    r = 1.0 + ndi.distance_transform_edt(~head).astype(np.float32) / rmin
    # filled from the background only (not from the neck, the shoulders or the clothes below the chin)
    grown = ndi.binary_dilation(head, iterations=2)
    plate = _fill(img, ~grown & (v <= chin), grown & (fade > 0.0))
    r_map = torch.from_numpy(r)[None, None]
    grid_r = torch.nn.functional.grid_sample(r_map, grid_norm[None, None], mode="bilinear", padding_mode="border",
                                             align_corners=False)[0, 0, 0]
    return HeadMatte(
        r_map=r_map, grid_r=grid_r, maps=torch.from_numpy(np.stack([soft_nn, soft]))[None].float(),
        plate=torch.from_numpy(plate).permute(2, 0, 1)[None].contiguous() + 0.5,  # NCHW; + the photo's rounding offset
    )
