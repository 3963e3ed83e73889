"""What defines a training run (:class:`TrainConfig`, stored in its checkpoints) and the `train` command's flags.

Apart from :mod:`models.train` (the losses and the loop, which need torch) so that ``styletalk-live train --help``
and argument errors answer at once: this module and what it imports need no torch; :func:`main` imports the trainer
only once the arguments parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from models.dataset import DEFAULT_HOLDOUT_CLIPS, DEFAULT_TAIL_FRACTION

if TYPE_CHECKING:
    from models.styletalk import StyleTalkConfig


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints)."""

    data_dir: str = ""  # empty: $STYLETALK_DATA, else data/styletalk-samples in the checkout
    out_dir: str = "runs/styletalk"
    export: str = ""  # fp16 checkpoint of the best model, written at the end
    export_style_codes: str = ""  # style_codes.npz from the best model, written at the end
    seed: int = 0
    steps: int = 600
    batch_size: int = 8  # supervised items per step (even)
    cross_style: int = 4  # cross-style items per step (even; 0 = none)
    seq_len: int = 32
    ref_min: int = 32  # shortest random style reference
    offset_aug: float = 0.0  # random expression offsets, in units of the spread of clip means (0 = off)
    offset_prob: float = 0.8
    real_batch: int = 8  # real sequences per discriminator step
    lr: float = 5e-4
    lr_min: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.01
    d_lr: float = 2e-4
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 = no weight averaging
    w_lower: float = 1.0
    w_upper: float = 1.0
    w_triplet: float = 0.1
    triplet_margin: float = 5.0  # codes have norm ~10 (post-LayerNorm features, d=128)
    w_sync: float = 0.05
    w_style: float = 0.05
    w_temporal: float = 0.02
    w_stat_mean: float = 0.0  # style statistics: output mean vs reference mean (L1, 64 coefficients)
    w_stat_std: float = 0.0  # output std over time vs the reference's (L1, 64 coefficients)
    w_open_r: float = 0.0  # supervised items: 1 - r over time of the mouth opening vs the ground truth
    w_open_teacher: float = 0.0  # all items: 1 - r of the mouth opening vs the frozen timing teacher's
    open_teacher: str = ""  # timing teacher checkpoint for w_open_teacher (empty: the --init model)
    w_hold_mean: float = 0.0  # all items: L1 of the lower face's mean over time vs the frozen --init model's
    w_hold_std: float = 0.0  # all items: L1 of the lower face's std over time vs the frozen --init model's
    trainable: list[str] = field(default_factory=list)  # parameter name prefixes to train (empty: all)
    style_residual: bool = False  # linear style-code -> expression path (see StyleTalkConfig)
    recognized_labels: str = ""  # JSON of recognizer labels per source clip (benchmarks.recognized_labels)
    recognized_prob: float = 0.5  # share of items trained on recognized labels (when the file is given)
    select_style: bool = False  # model selection on tail mouth L1 + style offset L1 (else mouth L1 only)
    select_open_r: float = 0.0  # selection score minus this x tail mouth-opening r (0 = not used)
    select_ident: float = 0.0  # selection score minus this x validation style identification (0 = not used)
    init: str = ""  # start from this checkpoint's weights (fine-tuning); new modules keep their init
    intensity_aug: float = 0.0  # share of cross-style items decoded at a random intensity (0 = off)
    intensity_max: float = 2.0  # their intensity k ~ U(0.5, intensity_max)
    # model size (the official full model: 256 / 8 / 1024 / 3 / 128)
    d_model: int = 128
    nhead: int = 4
    dim_feedforward: int = 256
    layers: int = 2
    ph_embed_dim: int = 64
    dynamic_k: int = 8
    dropout: float = 0.1
    holdout: list[str] = field(default_factory=lambda: list(DEFAULT_HOLDOUT_CLIPS))
    tail_fraction: float = DEFAULT_TAIL_FRACTION
    val_every: int = 50
    ckpt_every: int = 50
    threads: int = 1  # 1: OpenMP barriers stall on a shared, busy 2-core machine
    progress: bool = True

    def model_config(self) -> StyleTalkConfig:
        from models.styletalk import StyleTalkConfig

        return StyleTalkConfig(
            d_model=self.d_model,
            nhead=self.nhead,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            num_content_layers=self.layers,
            num_style_layers=self.layers,
            num_decoder_layers=self.layers,
            ph_embed_dim=self.ph_embed_dim,
            dynamic_k=self.dynamic_k,
            style_residual=self.style_residual,
        )

    def discriminators(self) -> list[str]:
        weights = {"sync": self.w_sync, "style": self.w_style, "temporal": self.w_temporal}
        return [name for name, w in weights.items() if w > 0]


# ---------------------------------------------------------------------------------------------------- flags
# (group, help) of every TrainConfig field: `styletalk-live train --help` explains each flag
_FIELD_HELP: dict[str, tuple[str, str]] = {
    "data_dir": ("data and output", "StyleTalk-format sample data (default: $STYLETALK_DATA, else "
                 "data/styletalk-samples)"),
    "out_dir": ("data and output", "run directory: checkpoints, best.pt, train_state.pt, the validation log"),
    "export": ("data and output", "also write the best model as an fp16 checkpoint to this path at the end"),
    "export_style_codes": ("data and output", "also write style_codes.npz of the best model to this path"),
    "holdout": ("data and output", "source clips kept out of training (validation)"),
    "tail_fraction": ("data and output", "last fraction of every training clip held out for validation"),
    "seed": ("schedule", "random seed (data order, initialisation, augmentation)"),
    "steps": ("schedule", "optimiser steps"),
    "batch_size": ("schedule", "supervised items per step (even)"),
    "cross_style": ("schedule", "cross-style items per step (even; 0 = none)"),
    "seq_len": ("schedule", "frames per training sequence"),
    "ref_min": ("schedule", "shortest random style reference, in frames"),
    "offset_aug": ("schedule", "random expression offsets, in units of the spread of clip means (0 = off)"),
    "offset_prob": ("schedule", "probability of an expression offset per item"),
    "real_batch": ("schedule", "real sequences per discriminator step"),
    "lr": ("schedule", "peak learning rate (AdamW)"),
    "lr_min": ("schedule", "learning rate at the end of the cosine decay"),
    "warmup": ("schedule", "linear warm-up steps"),
    "weight_decay": ("schedule", "AdamW weight decay"),
    "d_lr": ("schedule", "discriminators' learning rate"),
    "grad_clip": ("schedule", "gradient norm clip"),
    "ema": ("schedule", "weight averaging decay of the exported model (0 = none)"),
    "val_every": ("schedule", "validate every N steps"),
    "ckpt_every": ("schedule", "write train_state.pt every N steps (for --resume)"),
    "threads": ("schedule", "torch threads (1 is fastest on a shared 2-core machine)"),
    "w_lower": ("loss weights", "L1 reconstruction of the 13 lower-face (mouth) coefficients"),
    "w_upper": ("loss weights", "L1 reconstruction of the 51 upper-face coefficients"),
    "w_triplet": ("loss weights", "style-code triplet loss"),
    "triplet_margin": ("loss weights", "triplet margin (style codes have norm ~10)"),
    "w_sync": ("loss weights", "lip-sync discriminator (adversarial)"),
    "w_style": ("loss weights", "style discriminator (adversarial)"),
    "w_temporal": ("loss weights", "temporal discriminator (adversarial)"),
    "w_stat_mean": ("loss weights", "style statistics: L1 of the output's mean over time vs the reference's"),
    "w_stat_std": ("loss weights", "style statistics: L1 of the output's spread over time vs the reference's"),
    "w_open_r": ("loss weights", "1 - r over time of the mouth opening vs the ground truth (supervised items)"),
    "w_open_teacher": ("loss weights", "1 - r of the mouth opening vs the frozen timing teacher's (all items)"),
    "open_teacher": ("data and output", "timing teacher of --w-open-teacher (default: the --init model)"),
    "w_hold_mean": ("loss weights", "L1 of the lower face's mean over time vs the frozen --init model's output "
                    "(same code): holds each style's mouth pose while lip-sync terms change the timing"),
    "w_hold_std": ("loss weights", "the same for the lower face's spread over time (mouth amplitude)"),
    "trainable": ("schedule", "train only parameters whose names start with these prefixes (default: all), "
                  "e.g. decoder.lower_decoder decoder.lower_tail_fc"),
    "select_ident": ("schedule", "selection score minus this x the validation style identification (tails' "
                     "phonemes, style clips' training heads as gallery)"),
    "init": ("data and output", "start from this checkpoint's weights (fine-tuning); new modules keep their init"),
    "recognized_labels": ("data and output", "JSON of the recognizer's labels per source clip "
                          "(python -m benchmarks.recognized_labels): trains on the recognizer's boundary errors"),
    "recognized_prob": ("schedule", "share of items trained on recognized labels (when --recognized-labels is given)"),
    "select_style": ("schedule", "select the exported model on tail mouth L1 + style offset (else mouth L1 only)"),
    "select_open_r": ("schedule", "selection score minus this x the tails' mouth-opening r (0 = not used)"),
    "intensity_aug": ("schedule", "share of cross-style items decoded at a random intensity (0 = off)"),
    "intensity_max": ("schedule", "those items' intensity k ~ U(0.5, this)"),
    "style_residual": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)",
                       "linear style-code -> expression path added to the output (not in the official model)"),
    "d_model": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)", "transformer width"),
    "nhead": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)", "attention heads"),
    "dim_feedforward": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)", "feed-forward width"),
    "layers": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)",
               "layers of each encoder and of the decoder"),
    "ph_embed_dim": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)", "phoneme embedding size"),
    "dynamic_k": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)",
                  "kernels of the style-dynamic decoder layers"),
    "dropout": ("model size (official full model: 256 / 8 / 1024 / 3 / 128)", "dropout"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones ("", False, None) that say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", []):  # not 0 / 0.0
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="styletalk-live train",
        description="Train StyleTalk on StyleTalk-format data (all paper losses, CPU-sized model by default). "
        "Writes checkpoints to --out; the held-out clips score the validation loss.",
        formatter_class=_HelpFormatter,
    )
    defaults = TrainConfig()
    flag_names = {"out_dir": "--out", "data_dir": "--data"}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        if f.name == "progress":
            continue
        group_name, help_text = _FIELD_HELP[f.name]
        group = groups.setdefault(group_name, p.add_argument_group(group_name))
        flag = flag_names.get(f.name, "--" + f.name.replace("_", "-"))
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=value, help=help_text)
        elif isinstance(value, list):
            metavar = "PREFIX" if f.name == "trainable" else "CLIP"
            group.add_argument(flag, dest=f.name, nargs="*", default=value, metavar=metavar, help=help_text)
        else:
            metavar = "PATH" if isinstance(value, str) else ("N" if isinstance(value, int) else "X")
            group.add_argument(flag, dest=f.name, type=type(value), default=value, metavar=metavar, help=help_text)
    losses = groups["loss weights"]
    for name in ("triplet", "sync", "style", "temporal", "upper"):
        losses.add_argument(f"--no-{name}", action="store_true", help=f"disable the {name} loss (weight 0)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "progress"}
    for name in ("triplet", "sync", "style", "temporal", "upper"):
        if getattr(args, f"no_{name}"):
            values[f"w_{name}"] = 0.0
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``styletalk-live train`` and ``python -m models.train``; returns an exit status."""
    args = build_parser().parse_args(argv)  # --help and argument errors exit here, before torch is imported
    from models.train import train_from_args

    return train_from_args(args)
