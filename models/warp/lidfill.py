"""The closing eyelid's colour (issue 17): a closed lid is the mobile lid unfolded, not the lid band stretched."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.warp.config import WarpConfig
from models.warp.landmarks import EYE_UP
from models.warp.tps import cubic_curve, px_to_norm, smoothstep


def lid_fill(cfg: WarpConfig, image: torch.Tensor, src: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The closing lid's colour, as a change to the photo (1, 3, S, S): zero outside the lids' skin bands.

    A closing lid is the photo's lid-skin band stretched down (``eye_model``). Where that band is not plain skin
    (eye make-up: a dark crease, a bright highlight under the brow) the stretch smears it into a V; a real closed lid
    is the mobile lid unfolded: smooth, the colour of the skin just above the lash line. So per eye the band
    [A, U − lash] of the photo is given that colour: sampled just above the lash margin, smoothed along the lid
    (σ = ``lid_fill_blur``); it takes over from the photo below A + ``lid_fill_from``·(band) (the crease near A
    stays) and gives way to the photo across the lash margin's top (the lash line stays). The renderer adds this
    change in proportion to how far each eye has closed (``eye_model``'s closed share), so an open eye, and the
    photo, are untouched. ``image`` (S, S, 3) 0–255, ``src`` (68, 2) face frame, pixel p = A f + t.
    """
    size = image.shape[0]
    img = image.permute(2, 0, 1).unsqueeze(0)  # (1, 3, S, S)
    a_inv = torch.linalg.inv(A)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    face = (torch.stack([xx, yy], -1).reshape(-1, 2) - t) @ a_inv.T  # (S², 2) face frame
    hp, vp = face[:, 0], face[:, 1]
    delta = torch.zeros(3, size * size)
    for up in EYE_UP:
        kx, ky = src[list(up), 0], src[list(up), 1]
        h0, h1 = float(kx[0]), float(kx[3])
        # the lid colour along h: the median of rows just above the lash margin, smoothed along the lid
        hs = torch.arange(h0 - 3 * cfg.lid_fill_blur, h1 + 3 * cfg.lid_fill_blur, 0.005)  # (L,)
        u_s = cubic_curve(kx, ky, hs)
        colour = _along_lid(cfg, img, A, t, hs, u_s, cfg.lid_fill_rows)  # (3, L)
        if cfg.lid_fill_shade > 0.0:  # brighter towards the top: the whole band's median there
            band = tuple(0.005 + 0.0075 * i for i in range(int((cfg.lid_band - cfg.lash_band) / 0.0075) + 1))
            top = _along_lid(cfg, img, A, t, hs, u_s, band)
        # each pixel's column and weight: inside the eye's corners (the ramp beyond them, as eye_model's), and
        # from A + lid_fill_from·(band) down to the lash margin
        near = (hp > h0 - cfg.ramp) & (hp < h1 + cfg.ramp)
        u_p = cubic_curve(kx, ky, hp.clamp(h0, h1))
        a, m = u_p - cfg.lid_band, u_p - cfg.lash_band
        start = a + max(cfg.lid_fill_from, 0.05) * (m - a)
        wv = smoothstep((vp - a) / (start - a)) * smoothstep((m + 0.005 - vp) / 0.01)
        wh = smoothstep(torch.minimum(hp - h0, h1 - hp) / cfg.ramp + 1.0)
        wgt = torch.where(near & (vp > a) & (vp < m + 0.005), wv * wh, 0.0)
        pos = ((hp - float(hs[0])) / 0.005).clamp(0, len(hs) - 1)
        i0 = pos.floor().long().clamp_max(len(hs) - 2)
        fr = pos - i0
        col = colour[:, i0] * (1 - fr) + colour[:, i0 + 1] * fr  # (3, S²)
        if cfg.lid_fill_shade > 0.0:
            up_share = ((m - vp) / (m - a)).clamp(0.0, 1.0)  # 0 at the lash margin, 1 at A
            col = col + cfg.lid_fill_shade * up_share * (top[:, i0] * (1 - fr) + top[:, i0 + 1] * fr - col)
        delta += wgt * (col - img[0].reshape(3, -1))
    return delta.reshape(1, 3, size, size)


def _along_lid(cfg: WarpConfig, img: torch.Tensor, A: torch.Tensor, t: torch.Tensor, hs: torch.Tensor,
               u_s: torch.Tensor, offsets: tuple[float, ...]) -> torch.Tensor:
    """The photo's colour (3, L) at columns hs: the median over rows ``offsets`` above the lash margin (a dark
    crease line is outvoted), smoothed along the lid (σ lid_fill_blur)."""
    size = img.shape[-1]
    pts = torch.stack([torch.stack([hs, u_s - cfg.lash_band - d], -1) for d in offsets])  # (R, L, 2) face frame
    q = px_to_norm(pts @ A.T + t, size)
    colour = F.grid_sample(img, q.unsqueeze(0), mode="bilinear", padding_mode="border",
                           align_corners=False)[0].median(1).values  # (3, L)
    k = torch.arange(-3 * cfg.lid_fill_blur, 3 * cfg.lid_fill_blur + 1e-6, 0.005)
    kern = torch.exp(-0.5 * (k / cfg.lid_fill_blur) ** 2)
    pad = (len(k) - 1) // 2
    num = F.conv1d(F.pad(colour.unsqueeze(1), (pad, pad), mode="replicate"), kern.reshape(1, 1, -1))[:, 0]
    return num / kern.sum()
