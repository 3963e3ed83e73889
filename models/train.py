"""StyleTalk training with the paper's losses, sized for a CPU and the official sample set.

Losses (each switchable; a zero weight also skips building the matching discriminator):

* reconstruction - L1 of the 64 expression coefficients, lower face (13) and upper face (51) separately
  weighted (``--w-lower``, ``--w-upper``);
* triplet - style codes of two references of the same style closer than codes of other styles by a margin
  (``--w-triplet``); positives/negatives come from the same batch (items are drawn in same-style pairs);
* lip sync - a SyncNet-like discriminator of phoneme window vs mouth motion (``--w-sync``);
* style - a style classifier of sequences; generated sequences must be classified as their reference's
  style (``--w-style``);
* temporal - a PatchGAN over time, real vs generated sequences (``--w-temporal``);
* style statistics - every generated sequence's per-coefficient mean and spread over time must match its
  reference's (``--w-stat-mean``, ``--w-stat-std``). Unlike the adversarial style loss this is a direct
  target for the cross-style items, which have no ground truth: it teaches the decoder each style's static
  pose and how much each part of the face moves (brows, blinks, mouth amplitude).

``--style-residual`` adds a linear path from the style code to the output (``StyleTalkConfig``), and
``--recognized-labels <file>`` (``benchmarks.recognized_labels``) trains a share (``--recognized-prob``) of
the items on the streaming recognizer's labels of the same audio, so the decoder learns its boundary errors.

Batches are sequences of ``seq_len`` consecutive frames (the style, sync and temporal losses judge
sequences, not frames). Besides the supervised items, each batch holds *cross-style* items: phonemes of a
source clip with a reference from a style clip (angry, happy, ...). They have no ground truth but teach the
decoder, through the style / temporal / sync losses, to speak in styles for which no phonemes exist.

Reproducibility: step ``s`` draws its batch from ``numpy.random.default_rng([seed, s])`` and seeds torch
(dropout, negatives) with ``(seed, s)``, so a run resumed from a checkpoint continues exactly like an
uninterrupted one (same thread count). The learning rate is a pure function of the step.

    .venv/bin/python -m models.train --out runs/default --export models/assets/styletalk_default.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from models.clips import STYLE_CLIP_LENGTH
from models.dataset import (
    Batch,
    DataSplit,
    EvalItem,
    Sampler,
    default_data_dir,
    evaluation_items,
    list_clips,
    load_source_clip,
    load_style_clips,
    make_split,
    mouth_direction,
    pad_reference,
)
from models.discriminators import (
    DiscriminatorConfig,
    build_discriminators,
    style_d_loss,
    style_g_loss,
    sync_d_loss,
    sync_g_loss,
    temporal_d_loss,
    temporal_g_loss,
)
from models.styletalk import (
    CHECKPOINT_KIND,
    LOWER_FACE3D_INDICES,
    UPPER_FACE3D_INDICES,
    StyleTalk,
)
from models.train_config import TrainConfig, config_from_args, main

TRAIN_STATE_FORMAT = "styletalk-live-train"
LOWER = list(LOWER_FACE3D_INDICES)
UPPER = list(UPPER_FACE3D_INDICES)
# fields that may differ when resuming (they do not change what is computed)
_OPERATIONAL = {"out_dir", "export", "export_style_codes", "threads", "ckpt_every", "val_every", "progress"}


# ------------------------------------------------------------------------------------------------ losses
def reconstruction_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Mean L1 of the lower-face (13) and upper-face (51) coefficients; ``(B, L, 64)`` inputs."""
    err = (pred - target).abs()
    return err[..., LOWER].mean(), err[..., UPPER].mean()


def triplet_loss(codes: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Hinge ``d(a, p) - d(a, n) + margin`` averaged over every valid (anchor, positive, negative) triple
    of the batch; ``codes (N, C)``, ``labels (N,)``. Zero when no triple exists."""
    sq = (codes.unsqueeze(1) - codes.unsqueeze(0)).pow(2).sum(-1)
    dist = sq.clamp_min(1e-12).sqrt()  # (N, N); clamped: sqrt has no gradient at 0
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    pos, neg = same & ~eye, ~same
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)  # (anchor, positive, negative)
    if not bool(valid.any()):
        return codes.sum() * 0.0
    hinge = (dist.unsqueeze(2) - dist.unsqueeze(1) + margin).clamp_min(0.0)
    return hinge[valid].mean()


def style_stat_loss(pred: Tensor, ref_mean: Tensor, ref_std: Tensor) -> tuple[Tensor, Tensor]:
    """L1 between a generated sequence's per-coefficient mean / std over time and its reference's;
    ``pred (B, L, 64)``, ``ref_mean``/``ref_std (B, 64)``."""
    mean_err = (pred.mean(1) - ref_mean).abs().mean()
    std_err = (pred.std(1) - ref_std).abs().mean()
    return mean_err, std_err


def open_r_loss(pred: Tensor, target: Tensor, direction: Tensor) -> Tensor:
    """``1 - r`` over time of the mouth opening, ``(B, L, 13)`` lower-face coefficients projected on
    ``direction (13,)``, averaged over sequences weighted by the target's motion (a nearly still target
    has no timing to teach). Offset- and scale-free: it asks only *when* the mouth opens, so it does not
    compete with the style statistics, which set the mouth's pose and amplitude."""
    a, b = pred @ direction, target @ direction  # (B, L)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
    w = b.norm(dim=1).detach()
    return ((1.0 - r) * w).sum() / w.sum().clamp_min(1e-6)


# --------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model: StyleTalk, windows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Expression ``(N, 64)`` for phoneme windows ``(N, 11)`` in the style of ``reference (T, 64)``."""
    clip, mask = pad_reference(reference)
    style = model.encode_style(torch.from_numpy(clip)[None], torch.from_numpy(mask)[None])
    content = model.encode_content(torch.from_numpy(np.ascontiguousarray(windows, np.int64))[None])
    return model.decode(content, style)[0].numpy()


@torch.no_grad()
def clip_style_code(model: StyleTalk, exp: np.ndarray, min_frames: int = 64) -> np.ndarray:
    """Style code of a whole clip: the mean of the codes of its consecutive 256-frame windows (a last
    partial window counts if it has ``min_frames``), so long clips use all their frames."""
    starts = list(range(0, max(1, len(exp)), STYLE_CLIP_LENGTH))
    windows = [exp[s : s + STYLE_CLIP_LENGTH] for s in starts]
    windows = [w for i, w in enumerate(windows) if i == 0 or len(w) >= min_frames]
    codes = []
    for w in windows:
        clip, mask = pad_reference(w)
        codes.append(model.encode_style(torch.from_numpy(clip)[None], torch.from_numpy(mask)[None])[0])
    return torch.stack(codes).mean(0).numpy().astype(np.float32)


def describe(exp: np.ndarray) -> np.ndarray:
    """Per-coefficient mean and spread over time ``(128,)`` of an expression sequence ``(T, 64)``: the
    descriptor by which an output's style is identified (``benchmarks.styles``)."""
    return np.concatenate([exp.mean(0), exp.std(0)])


def nearest_accuracy(queries: np.ndarray, labels: Sequence[str], gallery: np.ndarray,
                     gallery_labels: Sequence[str], exclude: Sequence[int | None] | None = None) -> float:
    """Share of ``queries (Q, D)`` whose nearest ``gallery (G, D)`` row (squared L2) has the same label;
    ``exclude[i]`` = a gallery row query ``i`` may not match."""
    d = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j is not None:
                d[i, j] = np.inf
    pred = [gallery_labels[int(j)] for j in d.argmin(1)]
    return float(np.mean([p == s for p, s in zip(pred, labels, strict=True)]))


@dataclass
class StyleProbe:
    """Validation of style transfer without touching the held-out clip: the phonemes of the clip tails
    decoded with each style clip style's code (from the clips' training heads), mean output vs the mean
    of the style's held-out chunks (L1 over 64); and a validation identification that uses neither the
    held-out clip nor the style clips' tails (see :meth:`identification`)."""

    windows: np.ndarray  # (N, 11)
    heads: dict[str, list[np.ndarray]]  # style -> training heads
    means: dict[str, np.ndarray]  # style -> mean of its held-out chunks (64,)
    clips: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (style, training head) per clip

    @classmethod
    def from_split(cls, split: DataSplit) -> StyleProbe | None:
        labels = sorted({c.style for c in split.style_train})
        if not labels or not split.val_tails:
            return None
        windows = np.concatenate([t.windows for t in split.val_tails])
        heads = {s: [c.exp for c in split.style_train if c.style == s] for s in labels}
        means = {}
        for s in labels:
            chunks = [c.exp for c in split.style_val_chunks if c.style == s]
            means[s] = np.concatenate(chunks).mean(0) if chunks else np.concatenate(heads[s]).mean(0)
        return cls(windows, heads, means, [(c.style, c.exp) for c in split.style_train])

    @torch.no_grad()
    def offset(self, model: StyleTalk) -> float:
        content = model.encode_content(torch.from_numpy(self.windows)[None])
        errs = []
        for s, parts in self.heads.items():
            code = np.mean([clip_style_code(model, e) for e in parts], axis=0)
            out = model.decode(content, torch.from_numpy(code)[None])[0].numpy()
            errs.append(float(np.abs(out.mean(0) - self.means[s]).mean()))
        return float(np.mean(errs))

    @torch.no_grad()
    def identification(self, model: StyleTalk) -> float:
        """``benchmarks.styles``' identification on validation data: every style clip's code (from its
        training head) decodes the clip tails' phonemes, and the output is correct when the nearest
        training head by standardised mean+std descriptor has its style. The benchmark's phonemes (held-out
        clip) and gallery (style clips' tails) are not used, so selecting on this leaves them a test."""
        content = model.encode_content(torch.from_numpy(self.windows)[None])
        labels = [s for s, _ in self.clips]
        gallery = np.stack([describe(e) for _, e in self.clips])
        queries = []
        for _, exp in self.clips:
            code = clip_style_code(model, exp)
            queries.append(describe(model.decode(content, torch.from_numpy(code)[None])[0].numpy()))
        mu, sd = gallery.mean(0), gallery.std(0) + 1e-6
        return nearest_accuracy((np.stack(queries) - mu) / sd, labels, (gallery - mu) / sd, labels)


def evaluate(
    model: StyleTalk, items: Sequence[EvalItem], direction: np.ndarray | None = None
) -> dict[str, float]:
    """Mouth (13 lower-face) and full L1 per item kind, frame-weighted; the model is used as given. With a
    mouth-opening ``direction (13,)`` also ``<kind>_open_r``: Pearson r of predicted vs true mouth opening
    per item, frame-weighted (as ``benchmarks.expression_quality`` scores it)."""
    out: dict[str, float] = {}
    for kind in sorted({it.kind for it in items}):
        chosen = [it for it in items if it.kind == kind]
        preds = [predict(model, it.windows, it.reference) for it in chosen]
        err = np.concatenate([np.abs(p - it.target) for p, it in zip(preds, chosen, strict=True)])
        out[f"{kind}_mouth_l1"] = float(err[:, LOWER].mean())
        out[f"{kind}_l1"] = float(err.mean())
        if direction is not None:
            rs = [
                (float(np.corrcoef(p[:, LOWER] @ direction, it.target[:, LOWER] @ direction)[0, 1]), len(it.target))
                for p, it in zip(preds, chosen, strict=True)
            ]
            out[f"{kind}_open_r"] = sum(r * n for r, n in rs) / sum(n for _, n in rs)
    return out


# ------------------------------------------------------------------------------------------------ trainer
def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Trainer:
    """Holds the networks, optimisers and data of one run; ``train()`` advances it, ``save``/``load``
    make it resumable."""

    def __init__(self, cfg: TrainConfig, split: DataSplit | None = None) -> None:
        if cfg.batch_size < 2 or cfg.batch_size % 2 or cfg.cross_style % 2:
            raise ValueError("batch_size (>= 2) and cross_style must be even")
        self.cfg = cfg
        if split is None:
            recognized = load_recognized_labels(cfg.recognized_labels) if cfg.recognized_labels else None
            split = make_split(cfg.data_dir or None, cfg.holdout, cfg.tail_fraction, recognized=recognized)
        self.split = split
        self.sampler = Sampler(
            self.split,
            cfg.seq_len,
            cfg.ref_min,
            cfg.offset_aug,
            cfg.offset_prob,
            cfg.recognized_prob if cfg.recognized_labels else 0.0,
        )
        self.val_items = evaluation_items(self.split)
        self.mouth_direction = mouth_direction(self.split)
        self.style_probe = StyleProbe.from_split(self.split) if cfg.select_style or cfg.select_ident > 0 else None
        # statistics of the neutral face (source speakers' read speech): the k = 0 end of intensity
        src = self.split.train_sources
        self.neutral_mean = torch.from_numpy(np.mean([s.exp.mean(0) for s in src], axis=0).astype(np.float32))
        self.neutral_std = torch.from_numpy(
            np.mean([self.sampler.window_stats(s.exp)[1] for s in src], axis=0).astype(np.float32)
        )
        torch.manual_seed(cfg.seed)
        self.model = StyleTalk(cfg.model_config())
        if cfg.init:
            self._init_from(cfg.init)
        # the start model, frozen: the statistics it holds (w_hold_*) and, unless --open-teacher names
        # another checkpoint, the mouth timing that anchors the fine-tuning (w_open_teacher)
        wants_hold = cfg.w_hold_mean > 0 or cfg.w_hold_std > 0
        frozen_init = copy.deepcopy(self.model).eval() if cfg.init and (wants_hold or cfg.w_open_teacher > 0) else None
        self.holder = frozen_init if wants_hold else None
        self.teacher: StyleTalk | None = None
        if cfg.w_open_teacher > 0:
            self.teacher = StyleTalk.from_checkpoint(cfg.open_teacher) if cfg.open_teacher else frozen_init
        for frozen in (self.teacher, self.holder):
            if frozen is not None:
                frozen.requires_grad_(False)
        self._freeze_all_but(cfg.trainable)
        self.open_direction = torch.from_numpy(self.mouth_direction.astype(np.float32))
        self.ema_model = copy.deepcopy(self.model).eval() if cfg.ema > 0 else None
        if self.ema_model is not None:
            self.ema_model.requires_grad_(False)
        self.disc_cfg = DiscriminatorConfig(num_styles=len(self.split.styles))
        self.discs = build_discriminators(self.disc_cfg, cfg.discriminators())
        self.opt_g = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            weight_decay=cfg.weight_decay,
        )
        self.opt_d = (
            torch.optim.Adam(self.discs.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
            if len(self.discs)
            else None
        )
        self.step = 0
        self.best = math.inf
        self.best_step = -1
        self.history: list[dict[str, float]] = []
        self.out_dir = Path(cfg.out_dir)

    def _init_from(self, path: str) -> None:
        """Copy the weights of checkpoint ``path`` (same network size); modules it lacks (e.g. the style
        residual path) keep their initialisation, anything else that does not fit is an error."""
        ckpt = load_checkpoint(path)
        if ckpt.kind != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} holds a {ckpt.kind!r} checkpoint, not {CHECKPOINT_KIND!r}")
        own = self.model.state_dict()
        missing = sorted(set(own) - set(ckpt.state_dict))
        unknown = sorted(set(ckpt.state_dict) - set(own))
        shapes = sorted(k for k in own if k in ckpt.state_dict and own[k].shape != ckpt.state_dict[k].shape)
        if unknown or shapes or any(not k.startswith("decoder.style_residual.") for k in missing):
            raise CheckpointError(
                f"cannot start from {path}: unknown {unknown[:3]}, missing {missing[:3]}, shape mismatch "
                f"{shapes[:3]} (the network size options must match the checkpoint's)"
            )
        self.model.load_state_dict({**own, **ckpt.state_dict})

    def _freeze_all_but(self, prefixes: Sequence[str]) -> None:
        """Train only the parameters whose names start with one of ``prefixes`` (empty: all). Fine-tuning
        the lower-face decoder alone leaves the style codes and the 51 upper-face outputs exactly as they
        were, so lip-sync terms cannot move what identifies a style there."""
        if not prefixes:
            return
        names = [n for n, _ in self.model.named_parameters()]
        unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unknown:
            raise ValueError(f"--trainable {unknown} match no parameter (e.g. decoder.lower_decoder)")
        for n, p in self.model.named_parameters():
            p.requires_grad_(any(n.startswith(pre) for pre in prefixes))

    # ---- schedule
    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to ``lr_min`` at ``steps``."""
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        t = min(1.0, (step - c.warmup) / max(1, c.steps - c.warmup))
        return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1.0 + math.cos(math.pi * t))

    @property
    def eval_model(self) -> StyleTalk:
        return self.ema_model if self.ema_model is not None else self.model

    # ---- one step
    def train_step(self, batch: Batch | None = None) -> dict[str, float]:
        """One discriminator + generator update on the step's batch (or on ``batch`` if given)."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, self.step])
        torch.manual_seed(c.seed * 1_000_003 + self.step)
        for group in self.opt_g.param_groups:
            group["lr"] = self.lr_at(self.step)
        if batch is None:
            batch = self.sampler.batch(c.batch_size, rng, c.cross_style)
        has = batch.has_target
        self.model.train()
        # drop the padding columns no reference uses: same codes, up to ~2x less style-encoder work
        used = int((~batch.reference_mask).sum(1).max())
        style = self.model.encode_style(batch.reference[:, :used], batch.reference_mask[:, :used])  # (B, C)
        code, ref_mean, ref_std = style, batch.ref_mean, batch.ref_std
        if c.intensity_aug > 0 and ref_mean is not None and ref_std is not None and bool(has.any()):
            code, ref_mean, ref_std = self._intensity_items(style, has, ref_mean, ref_std, rng)
        pred = self.model.decode(self.model.encode_content(batch.windows), code)  # (B, L, 64)
        logs: dict[str, float] = {}

        # discriminators: real data vs the (detached) current generation
        if self.opt_d is not None:
            self.discs.train().requires_grad_(True)
            d_loss = pred.new_zeros(())
            if "sync" in self.discs:
                loss = sync_d_loss(self.discs["sync"], batch.windows[has], batch.target[has][..., LOWER])
                logs["d_sync"] = float(loss.detach())
                d_loss = d_loss + loss
            if "style" in self.discs or "temporal" in self.discs:
                real = self.sampler.real_sequences(c.real_batch, rng)
                if "style" in self.discs:
                    loss = style_d_loss(self.discs["style"], real.seq, real.style_id)
                    logs["d_style"] = float(loss.detach())
                    d_loss = d_loss + loss
                if "temporal" in self.discs:
                    loss = temporal_d_loss(self.discs["temporal"], real.seq, pred.detach())
                    logs["d_temporal"] = float(loss.detach())
                    d_loss = d_loss + loss
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            self.discs.requires_grad_(False)  # generator step: no discriminator gradients needed

        lower, upper = reconstruction_loss(pred[has], batch.target[has])
        g_loss = c.w_lower * lower + c.w_upper * upper
        logs["rec_lower"], logs["rec_upper"] = float(lower.detach()), float(upper.detach())
        if c.w_triplet > 0:
            loss = triplet_loss(style, batch.style_id, c.triplet_margin)
            logs["triplet"] = float(loss.detach())
            g_loss = g_loss + c.w_triplet * loss
        if "sync" in self.discs:
            loss = sync_g_loss(self.discs["sync"], batch.windows, pred[..., LOWER])
            logs["g_sync"] = float(loss.detach())
            g_loss = g_loss + c.w_sync * loss
        if "style" in self.discs:
            loss = style_g_loss(self.discs["style"], pred, batch.style_id)
            logs["g_style"] = float(loss.detach())
            g_loss = g_loss + c.w_style * loss
        if "temporal" in self.discs:
            loss = temporal_g_loss(self.discs["temporal"], pred)
            logs["g_temporal"] = float(loss.detach())
            g_loss = g_loss + c.w_temporal * loss
        if (c.w_stat_mean > 0 or c.w_stat_std > 0) and ref_mean is not None and ref_std is not None:
            mean_err, std_err = style_stat_loss(pred, ref_mean, ref_std)
            logs["stat_mean"], logs["stat_std"] = float(mean_err.detach()), float(std_err.detach())
            g_loss = g_loss + c.w_stat_mean * mean_err + c.w_stat_std * std_err
        if c.w_open_r > 0 and bool(has.any()):
            loss = open_r_loss(pred[has][..., LOWER], batch.target[has][..., LOWER], self.open_direction)
            logs["open_r"] = float(loss.detach())
            g_loss = g_loss + c.w_open_r * loss
        if self.teacher is not None:
            with torch.no_grad():  # the teacher reads the same phonemes and reference, at intensity 1
                t_style = self.teacher.encode_style(batch.reference[:, :used], batch.reference_mask[:, :used])
                t_pred = self.teacher.decode(self.teacher.encode_content(batch.windows), t_style)
            loss = open_r_loss(pred[..., LOWER], t_pred[..., LOWER], self.open_direction)
            logs["open_teacher"] = float(loss.detach())
            g_loss = g_loss + c.w_open_teacher * loss
        if self.holder is not None:
            with torch.no_grad():  # the start model's decoder with the same (possibly intensity-scaled) code
                h_pred = self.holder.decode(self.holder.encode_content(batch.windows), code.detach())
            mean_err, std_err = style_stat_loss(pred[..., LOWER], h_pred[..., LOWER].mean(1), h_pred[..., LOWER].std(1))
            logs["hold_mean"], logs["hold_std"] = float(mean_err.detach()), float(std_err.detach())
            g_loss = g_loss + c.w_hold_mean * mean_err + c.w_hold_std * std_err
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], c.grad_clip)
        self.opt_g.step()
        self._update_ema()
        logs["loss"] = float(g_loss.detach())
        self.step += 1
        return logs

    def _intensity_items(
        self, style: Tensor, has: Tensor, ref_mean: Tensor, ref_std: Tensor, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Interpolation/extrapolation augmentation: a share of the cross-style items is decoded with
        ``neutral + k (code - neutral)``, k ~ U(0.5, intensity_max), and its statistics targets move the same
        way from the neutral face's (``neutral_mean + k (ref_mean - neutral_mean)``, std likewise, >= 0).
        The neutral code is the mean code of the batch's source-speaker items, as ``style_codes`` defines
        ``neutral``. This teaches the decoder that intensity 2 means twice the style's departure from
        neutral, where plain code extrapolation saturates (softmax expert mixing, LayerNorm)."""
        c = self.cfg
        b = style.shape[0]
        pick = (~has).numpy() & (rng.random(b) < c.intensity_aug)
        k = np.ones(b, np.float32)
        k[pick] = rng.uniform(0.5, c.intensity_max, int(pick.sum()))
        if not pick.any():
            return style, ref_mean, ref_std
        kt = torch.from_numpy(k)[:, None]  # (B, 1)
        neutral = style[has].mean(0, keepdim=True).detach()  # (1, C)
        code = neutral + kt * (style - neutral)
        mean = self.neutral_mean + kt * (ref_mean - self.neutral_mean)
        std = (self.neutral_std + kt * (ref_std - self.neutral_std)).clamp_min(0.0)
        return code, mean, std

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))  # short memory early in training
        for p_ema, p in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)

    # ---- validation / checkpoints
    def validate(self) -> dict[str, float]:
        model = self.eval_model.eval()
        metrics = evaluate(model, self.val_items, self.mouth_direction)
        score = metrics.get("tail_mouth_l1", metrics.get("clip_mouth_l1", math.inf))
        if self.style_probe is not None and self.cfg.select_style:
            metrics["style_offset_l1"] = self.style_probe.offset(model)
            score += metrics["style_offset_l1"]
        if self.style_probe is not None and self.cfg.select_ident > 0:
            metrics["style_ident"] = self.style_probe.identification(model)
            score -= self.cfg.select_ident * metrics["style_ident"]
        if self.cfg.select_open_r > 0 and "tail_open_r" in metrics:  # tails only, never the held-out clip
            score -= self.cfg.select_open_r * metrics["tail_open_r"]
        metrics["step"] = float(self.step)
        self.history.append(metrics)
        if score < self.best:  # model selection on the clip tails only; held-out clips stay a clean test
            self.best, self.best_step = score, self.step
            self.save_model(self.out_dir / "best.pt", half=False)
        return metrics

    def save_model(
        self, path: str | os.PathLike[str], half: bool, extra: dict[str, Any] | None = None
    ) -> None:
        info = {"train_config": asdict(self.cfg), "step": self.step, "styles": list(self.split.styles)}
        info.update(extra or {})
        save_checkpoint(
            path,
            CHECKPOINT_KIND,
            self.eval_model.cfg.to_dict(),
            self.eval_model.state_dict(),
            half=half,
            extra=info,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAIN_STATE_FORMAT,
            "config": asdict(self.cfg),
            "step": self.step,
            "best": self.best,
            "best_step": self.best_step,
            "history": self.history,
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict() if self.ema_model is not None else {},
            "discs": self.discs.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else {},
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(path) if path is not None else self.out_dir / "train_state.pt"
        _atomic_torch_save(self.state_dict(), target)
        return target

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore a state written by :meth:`save`; the run's configuration must match (except fields that
        do not affect the computation, e.g. output paths and thread count)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise CheckpointError(f"{path} is not a {TRAIN_STATE_FORMAT} state")
        mine, theirs = asdict(self.cfg), state["config"]
        diff = sorted(k for k in mine if k not in _OPERATIONAL and mine[k] != theirs.get(k))
        if diff:
            raise ValueError(f"cannot resume {path}: configuration differs in {diff}")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema"])
        self.discs.load_state_dict(state["discs"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.history = list(state["history"])

    # ---- loop
    def train(self, num_steps: int | None = None) -> None:
        """Advance to ``step + num_steps`` (default: to ``cfg.steps``), validating and checkpointing."""
        c = self.cfg
        end = c.steps if num_steps is None else min(c.steps, self.step + num_steps)
        bar = tqdm(
            total=c.steps, initial=self.step, disable=not c.progress, dynamic_ncols=True, mininterval=5
        )
        log_path = self.out_dir / "log.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        while self.step < end:
            logs = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", lower=f"{logs['rec_lower']:.3f}", refresh=False)
            record: dict[str, Any] = {"step": self.step, "time": round(time.perf_counter() - t0, 2), **logs}
            if self.step % c.val_every == 0 or self.step == c.steps:
                metrics = self.validate()
                record.update({f"val_{k}": v for k, v in metrics.items() if k != "step"})
                bar.write(
                    f"step {self.step}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step")
                    + f" (best {self.best:.4f} @ {self.best_step})"
                )
            if self.step % 10 == 0 or "val_tail_mouth_l1" in record:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
            if self.step % c.ckpt_every == 0 or self.step == end:
                self.save()
        bar.close()


# -------------------------------------------------------------------------------------------- style codes
STYLE_NAMES: dict[str, str] = {
    # style label (from clip names) -> readable name; the label with more data gets the plain name
    "angryice": "angry",
    "crooked": "crooked",
    "furious_talk2": "furious",
    "furious_talk1": "furious_2",
    "happyenglish": "happy",
    "vscodehappy": "happy_2",
    "nice": "nice",
    "sad_emotion": "sad",
    "sadfather": "sad_father",
    "sadgirl": "sad_girl",
    "spata": "spata",
    "surprisegirl": "surprised",
    "trump": "trump",
    "Obama": "obama",
    "andrew": "andrew",
    "feifeili": "feifeili",
    "KristiNoem": "kristinoem",
}


def style_codes(model: StyleTalk, data_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """One code per style: the mean of its clips' codes (:func:`clip_style_code`), under a readable name,
    plus ``neutral`` = the mean of all source clips' codes (neutral read speech of four speakers; the
    mean cancels each speaker's habits while staying between real codes)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    model = model.eval()
    per_style: dict[str, list[np.ndarray]] = {}
    source_codes = []
    for name in list_clips(root, "source"):
        clip = load_source_clip(root, name)
        code = clip_style_code(model, clip.exp)
        source_codes.append(code)
        per_style.setdefault(clip.style, []).append(code)
    for sc in load_style_clips(root):
        per_style.setdefault(sc.style, []).append(clip_style_code(model, sc.exp))
    codes = {"neutral": np.mean(source_codes, axis=0).astype(np.float32)}
    for label in sorted(per_style):
        codes[STYLE_NAMES.get(label, label.lower())] = np.mean(per_style[label], axis=0).astype(np.float32)
    return codes


def save_style_codes(path: str | os.PathLike[str], codes: dict[str, np.ndarray]) -> None:
    """``np.savez`` of name -> float32 code plus ``names`` (loadable with ``allow_pickle=False``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(list(codes)), **{k: v.astype(np.float32) for k, v in codes.items()})


def load_recognized_labels(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Clip name -> recognizer label ids from a ``benchmarks.recognized_labels`` file."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    labels = raw.get("labels") if isinstance(raw, dict) else None
    if not isinstance(labels, dict):
        raise ValueError(f"{path}: no 'labels' mapping (write it with python -m benchmarks.recognized_labels)")
    return {str(k): np.asarray(v, np.int64) for k, v in labels.items()}


def load_style_codes(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {str(n): z[str(n)] for n in z["names"]}


def train_from_args(args: argparse.Namespace) -> int:
    """Train as parsed ``args`` (:func:`models.train_config.build_parser`) ask; returns an exit status."""
    cfg = config_from_args(args)
    torch.set_num_threads(max(1, cfg.threads))
    trainer = Trainer(cfg)
    state = Path(cfg.out_dir) / "train_state.pt"
    if args.resume and state.is_file():
        try:
            trainer.load(state)
        except (ValueError, CheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"resumed from {state} at step {trainer.step}", file=sys.stderr)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"model {n_params:,} parameters; discriminators {trainer.cfg.discriminators()}; "
        f"{sum(len(s) for s in trainer.split.train_sources)} supervised training frames",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    best_path = Path(cfg.out_dir) / "best.pt"
    if not best_path.is_file():  # e.g. steps < val_every
        trainer.validate()
    best = StyleTalk.from_checkpoint(best_path)
    ckpt = load_checkpoint(best_path)
    summary = {
        "best_step": trainer.best_step,
        "selection": ("tail mouth L1" + (" + style offset L1" if cfg.select_style else "")
                      + (f" - {cfg.select_open_r:g} x tail open r" if cfg.select_open_r > 0 else "")
                      + (f" - {cfg.select_ident:g} x validation identification" if cfg.select_ident > 0 else "")),
        "best_selection_score": trainer.best,
        "final_step": trainer.step,
        "train_seconds_this_session": round(elapsed, 1),
        "parameters": n_params,
    }
    best_metrics = next((h for h in trainer.history if int(h["step"]) == trainer.best_step), {})
    summary.update({f"val_{k}": v for k, v in best_metrics.items() if k != "step"})
    if cfg.export:
        save_checkpoint(
            cfg.export,
            CHECKPOINT_KIND,
            ckpt.config,
            ckpt.state_dict,
            half=True,
            extra={**ckpt.extra, "summary": summary},
        )
        print(f"wrote {cfg.export} ({Path(cfg.export).stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    if cfg.export_style_codes:
        save_style_codes(cfg.export_style_codes, style_codes(best, cfg.data_dir or None))
        print(f"wrote {cfg.export_style_codes}", file=sys.stderr)
    with open(Path(cfg.out_dir) / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
