"""The three discriminators of StyleTalk training and their losses.

* :class:`LipSyncDiscriminator` - does a mouth motion fit a phoneme window? (SyncNet-like: two encoders,
  cosine similarity as the logit). Trained on real data only (aligned vs time-shifted pairs); the generator
  is asked to make its mouth "in sync" for the discriminator.
* :class:`StyleDiscriminator` - which style (speaker + emotion) is a sequence? A classifier trained on real
  sequences; the generator is asked to make its output classified as the style of its reference.
* :class:`TemporalDiscriminator` - real or generated sequence? A 1-D PatchGAN over time (patches of about
  a third of a second), trained adversarially (non-saturating GAN loss).

The paper feeds the sync discriminator mouth vertices of the reconstructed face; without the 3DMM basis we
use the 13 lower-face expression coefficients, centred per sequence so that the discriminator judges
motion, not a speaker's resting mouth (that is the reconstruction loss's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.phonemes import NUM_PHONEMES


@dataclass
class DiscriminatorConfig:
    """Sizes of the three discriminators (small: they see 64-dim sequences of ~32 frames)."""

    num_styles: int = 17
    mouth_indices: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 14)
    mouth_frames: int = 5  # frames of mouth motion per sync sample (t-2 .. t+2)
    window_length: int = 11  # phoneme window (t-5 .. t+5)
    sync_embed: int = 64
    sync_hidden: int = 128
    ph_embed: int = 16
    channels: int = 128
    face3d_dim: int = 64

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mouth_indices"] = list(self.mouth_indices)
        return d


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, n_out),
    )


class LipSyncDiscriminator(nn.Module):
    """Phoneme windows ``(B, L, 11)`` + mouth coefficients ``(B, L, 13)`` -> sync logits ``(B, L - 4)``.

    Sample t pairs the phoneme window centred on frame t with mouth frames t-2 .. t+2 (only frames whose
    mouth window lies inside the sequence are scored).
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_mouth = len(cfg.mouth_indices)
        self.ph_embedding = nn.Embedding(NUM_PHONEMES, cfg.ph_embed)
        self.phoneme_net = _mlp(cfg.window_length * cfg.ph_embed, cfg.sync_hidden, cfg.sync_embed)
        self.mouth_net = _mlp(cfg.mouth_frames * n_mouth, cfg.sync_hidden, cfg.sync_embed)
        self.logit_scale = nn.Parameter(torch.tensor(5.0))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, windows: Tensor, mouth: Tensor) -> Tensor:
        m = self.cfg.mouth_frames
        half = m // 2
        b, length, _ = windows.shape
        mouth = mouth - mouth.mean(dim=1, keepdim=True)  # per-sequence centring: judge motion, not offset
        mwin = mouth.unfold(1, m, 1)  # (B, L-m+1, 13, m)
        mwin = mwin.transpose(2, 3).reshape(b, length - m + 1, -1)  # (B, L', m*13)
        ph = self.ph_embedding(windows[:, half : length - half])  # (B, L', 11, E)
        e_ph = F.normalize(self.phoneme_net(ph.flatten(2)), dim=-1)
        e_mouth = F.normalize(self.mouth_net(mwin), dim=-1)
        return self.logit_scale * (e_ph * e_mouth).sum(-1) + self.logit_bias  # (B, L')


class StyleDiscriminator(nn.Module):
    """Expression sequence ``(B, L, 64)`` -> style logits ``(B, num_styles)`` (temporal CNN + mean pool)."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.net = nn.Sequential(
            nn.Conv1d(cfg.face3d_dim, c, 5, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(c, c, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(c, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.head = nn.Linear(c, cfg.num_styles)

    def forward(self, seq: Tensor) -> Tensor:
        h = self.net(seq.transpose(1, 2))  # (B, C, L/4)
        return self.head(h.mean(dim=2))


class TemporalDiscriminator(nn.Module):
    """Expression sequence ``(B, L, 64)`` -> real/fake logits per temporal patch ``(B, ~L/4)``.

    The input is the sequence and its frame-to-frame difference, so jitter and frozen motion are as visible
    as wrong poses.
    """

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.net = nn.Sequential(
            nn.Conv1d(2 * cfg.face3d_dim, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(c, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(c, c, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(c, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, seq: Tensor) -> Tensor:
        diff = torch.diff(seq, dim=1, prepend=seq[:, :1])  # (B, L, 64), first difference 0
        x = torch.cat([seq, diff], dim=-1).transpose(1, 2)  # (B, 128, L)
        return self.net(x).squeeze(1)


# ------------------------------------------------------------------------------------------------ losses
def misaligned(mouth: Tensor, generator: torch.Generator | None = None, min_shift: int = 4) -> Tensor:
    """Negatives for the sync discriminator: each sequence's mouth rolled in time by a random shift of at
    least ``min_shift`` frames (phoneme runs are ~2 frames, so the shifted pairs are out of sync)."""
    b, length = mouth.shape[:2]
    if length <= 2 * min_shift:
        raise ValueError(f"sequences of {length} frames are too short for shifts >= {min_shift}")
    shifts = torch.randint(min_shift, length - min_shift + 1, (b,), generator=generator)
    idx = (torch.arange(length).unsqueeze(0) + shifts.unsqueeze(1)) % length  # (B, L)
    return torch.gather(mouth, 1, idx.unsqueeze(-1).expand_as(mouth))


def sync_d_loss(
    disc: LipSyncDiscriminator, windows: Tensor, mouth: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """BCE: real aligned pairs -> 1, real time-shifted pairs -> 0."""
    pos = disc(windows, mouth)
    neg = disc(windows, misaligned(mouth, generator))
    return 0.5 * (
        F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
        + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
    )


def sync_g_loss(disc: LipSyncDiscriminator, windows: Tensor, mouth: Tensor) -> Tensor:
    """Generator: its mouth should look in sync with the phonemes (-log D)."""
    logits = disc(windows, mouth)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def style_d_loss(disc: StyleDiscriminator, real: Tensor, style_id: Tensor) -> Tensor:
    """Cross-entropy of the style classifier on real sequences."""
    return F.cross_entropy(disc(real), style_id)


def style_g_loss(disc: StyleDiscriminator, fake: Tensor, style_id: Tensor) -> Tensor:
    """Generator: its output should be classified as the reference's style."""
    return F.cross_entropy(disc(fake), style_id)


def temporal_d_loss(disc: TemporalDiscriminator, real: Tensor, fake: Tensor) -> Tensor:
    """Non-saturating GAN discriminator loss (``fake`` must be detached by the caller)."""
    lr, lf = disc(real), disc(fake)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
        + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
    )


def temporal_g_loss(disc: TemporalDiscriminator, fake: Tensor) -> Tensor:
    logits = disc(fake)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def build_discriminators(cfg: DiscriminatorConfig, which: Sequence[str]) -> nn.ModuleDict:
    """The enabled discriminators by name (``sync``, ``style``, ``temporal``)."""
    classes = {"sync": LipSyncDiscriminator, "style": StyleDiscriminator, "temporal": TemporalDiscriminator}
    unknown = sorted(set(which) - set(classes))
    if unknown:
        raise ValueError(f"unknown discriminators {unknown}; choose from {sorted(classes)}")
    return nn.ModuleDict({name: classes[name](cfg) for name in which})
