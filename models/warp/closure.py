"""Where a photo's lips really begin, per column: closed lips are drawn from there (models/warp/mouth.py).

dlib's inner-lip points of a smiling or laughing photo sit on the teeth (upper) or on the tongue and lower teeth
(lower) in some columns and on the lip itself in others. Closing such a mouth, the mouth model draws the meeting
lips from their true edges, or a line of teeth stays between them. A fixed inset outside the inner points
(``lip_close_inset`` everywhere, before) skipped most of a thin lip on a smiling photo (andrew_clip_1's lips are
~3 px, the inset 3.1 px; measured here, its lips begin 0.5 px above / at the inner points in the middle columns).
Here the edge is looked up in the photo instead: the first sample
outward from the inner-lip curve that is neither teeth (bright, unsaturated) nor cavity (dark), at most
``lip_close_inset`` away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.warp.interior import LUMA
from models.warp.tps import px_to_norm


def lip_edges(avatar_size: int, img: torch.Tensor, frame_a: torch.Tensor, frame_t: torch.Tensor,
              hs: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, lip_rgb: torch.Tensor,
              teeth_rgb: torch.Tensor | None, reach: float, step: float, corners: tuple[float, float]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per lookup-table column (face-frame h ``hs`` (L,)), how far (IOD) outside the inner-lip curves ``upper`` /
    ``lower`` (L,) the photo's lips begin → (2, L): upper (upwards), lower (downwards), in [0, reach]; and the
    colour of the lips there (3,): the median, over the columns of the middle 80 % between the inner-lip
    ``corners`` (h), of the sample just beyond each lip's edge (the edge sample itself is often half teeth). It
    is what borders the seam of closed lips (the lip-body median, sampled halfway to dlib's outer-lip points,
    is often skin on a thin smiling lip: its seam read as a grey line).

    ``img`` (3, S, S) 0..255; ``teeth_rgb`` the photo's teeth colour if it shows teeth (else only dark cavity
    counts as not-lip); ``step`` the search step (IOD, about half a pixel).
    """
    d = torch.arange(0.0, reach + 1e-6, step)  # (D,)
    v = torch.stack([upper[:, None] - d, lower[:, None] + d])  # (2, L, D) face-frame v
    face = torch.stack([hs[None, :, None].expand_as(v), v], -1)  # (2, L, D, 2)
    px = face @ frame_a.T + frame_t
    grid = px_to_norm(px, avatar_size)
    rgb = F.grid_sample(img[None], grid.reshape(1, 2 * len(hs), len(d), 2), mode="bilinear",
                        padding_mode="border", align_corners=False)[0]  # (3, 2L, D)
    w = torch.tensor(LUMA)
    luma = torch.einsum("c,cld->ld", w, rgb)
    sat = (rgb.amax(0) - rgb.amin(0)) / rgb.amax(0).clamp_min(1.0)
    lip_luma = float(lip_rgb @ w)
    not_lip = luma < 0.6 * lip_luma  # cavity (a lip's own shade stays above ~0.7 of its median)
    if teeth_rgb is not None:
        not_lip |= (luma >= max(0.75 * float(teeth_rgb @ w), lip_luma)) & (sat < 0.45)
    lip = ~not_lip
    lip[:, -1] = True  # none found within reach: the reach
    first = lip.float().argmax(1)  # (2L,) the first lip sample
    edge = d[first].reshape(2, len(hs))
    h0, h1 = corners
    mid = ((hs - h0).abs() > 0.1 * (h1 - h0)) & ((hs - h1).abs() > 0.1 * (h1 - h0)) & (hs > h0) & (hs < h1)
    inside = (first + 2).clamp(max=len(d) - 1)  # (2L,) a pixel beyond the edge
    at = rgb.permute(1, 2, 0)[torch.arange(2 * len(hs)), inside].reshape(2, len(hs), 3)[:, mid]  # (2, M, 3)
    colour = at.reshape(-1, 3).median(0).values if at.numel() else lip_rgb
    # a column's classification is noisy (a glint on a lip, a dark gap between teeth): a running median over
    # ~2 px along the lip (9 table columns of a quarter lattice step)
    k = 9
    padded = F.pad(edge[:, None], (k // 2, k // 2), mode="replicate")[:, 0]  # (2, L + k − 1)
    return padded.unfold(1, k, 1).median(-1).values, colour  # (2, L), (3,)
