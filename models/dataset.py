"""Training data for StyleTalk from the official sample set: aligned (phoneme window, expression) pairs,
style references, splits and a deterministic batch sampler.

Data layout (``styletalk-samples``):

* ``source/3dmm/<name>.mat`` + ``source/phoneme/<name>_seq.json`` - talking clips with reference phoneme
  labels (30 fps, one id per frame, same number of rows as the ``.mat`` coefficients). They give the
  supervised pairs.
* ``style/3dmm/<name>.mat`` - style clips (expression only, no phonemes). They give style references,
  triplets and real sequences for the discriminators.

Alignment (measured, see ``models/assets/styletalk_default.md``): a source video has two more frames than
its ``.mat`` has rows and coefficient row ``i`` is video frame ``i + 2``; the phoneme rows follow the audio,
which starts with video frame 0 (the labels line up with the audio energy at lag 0). So coefficient row
``i`` belongs to phoneme row ``i + PHONEME_OFFSET`` with ``PHONEME_OFFSET = 2``; the first two phoneme rows
have no face and the last two face rows no label. Pairing with this offset keeps audio and video in sync
at inference (the engine shows the expression decoded for phoneme frame ``t`` together with audio frame
``t``); the mouth still moves ahead of the sound by 1-3 frames, which the decoder learns from the future
half of its 11-frame window.

Style = speaker + emotion, read from the clip name (``furious_talk2_clip3`` -> ``furious_talk2``,
``feifeili_clip2_short`` -> ``feifeili``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.clips import LOWER_FACE3D_INDICES, STYLE_CLIP_LENGTH, load_style_clip
from models.phonemes import NUM_PHONEMES, WIN_SIZE, phoneme_windows

if TYPE_CHECKING:  # torch is imported where batches are built: `train --help` and `fit-landmarks` need no torch
    import torch

PHONEME_OFFSET = 2
"""Coefficient row ``i`` of a source clip pairs with phoneme row ``i + PHONEME_OFFSET``."""

DEFAULT_HOLDOUT_CLIPS: tuple[str, ...] = ("andrew_clip_2",)
DEFAULT_TAIL_FRACTION = 0.2
DEFAULT_STYLE_TAIL_FRACTION = 0.3
STYLE_CHUNK = 64


REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "data" / "styletalk-samples"
"""The StyleTalk sample data shipped in the checkout (MIT, see its LICENSE-MIT and ``data/README.md``)."""


def default_data_dir() -> Path:
    """``$STYLETALK_DATA`` if set, else the copy shipped in the checkout (``data/styletalk-samples``).

    The environment variable lets training and fitting run on a larger StyleTalk-format set without copying it.
    """
    env = os.environ.get("STYLETALK_DATA")
    return Path(env) if env else SAMPLES_DIR


def style_label(clip_name: str) -> str:
    """Style (speaker + emotion) of a clip from its name: drop ``_clip<k>`` / ``_clip_<k>`` / ``_short``."""
    label = re.sub(r"(_clip_?\d+)?(_short)?$", "", clip_name)
    return label or clip_name


# --------------------------------------------------------------------------------------------- clip types
@dataclass
class SourceClip:
    """A source clip (or a contiguous segment of one) with aligned phonemes.

    ``exp[i]`` is coefficient row ``start + i`` of the original clip and ``windows[i]`` the 11-frame phoneme
    window centred on its aligned phoneme row; windows are cut from the whole clip, so a segment's edge
    windows see the real neighbouring phonemes, not SIL.
    """

    name: str
    style: str
    exp: np.ndarray  # (T, 64) float32
    windows: np.ndarray  # (T, 11) int64
    start: int = 0
    # the same frames' windows from the streaming recognizer's labels (None: not available)
    recognized: np.ndarray | None = None  # (T, 11) int64

    def __post_init__(self) -> None:
        if self.exp.shape[0] != self.windows.shape[0]:
            raise ValueError(
                f"{self.name}: {self.exp.shape[0]} expression rows vs {self.windows.shape[0]} windows"
            )
        if self.recognized is not None and self.recognized.shape != self.windows.shape:
            raise ValueError(f"{self.name}: recognized windows {self.recognized.shape} vs {self.windows.shape}")

    def __len__(self) -> int:
        return int(self.exp.shape[0])

    @property
    def phonemes(self) -> np.ndarray:
        """Centre phoneme of every window ``(T,)``."""
        return self.windows[:, WIN_SIZE]

    def segment(self, begin: int, end: int) -> SourceClip:
        rec = None if self.recognized is None else self.recognized[begin:end]
        return SourceClip(
            self.name, self.style, self.exp[begin:end], self.windows[begin:end], self.start + begin, rec
        )


@dataclass
class StyleClip:
    """Expression-only clip (or segment) used as a style reference."""

    name: str
    style: str
    exp: np.ndarray  # (T, 64) float32
    start: int = 0

    def __len__(self) -> int:
        return int(self.exp.shape[0])

    def segment(self, begin: int, end: int) -> StyleClip:
        return StyleClip(self.name, self.style, self.exp[begin:end], self.start + begin)


def list_clips(data_dir: str | os.PathLike[str], kind: str) -> list[str]:
    """Sorted clip names under ``<data_dir>/<kind>/3dmm`` (``kind`` = ``source`` or ``style``)."""
    folder = Path(data_dir) / kind / "3dmm"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (is the sample data set at {data_dir}?)")
    return sorted(p.stem for p in folder.glob("*.mat"))


def load_source_clip(
    data_dir: str | os.PathLike[str],
    name: str,
    offset: int = PHONEME_OFFSET,
    recognized: np.ndarray | None = None,
) -> SourceClip:
    """Read a source clip and pair coefficient row ``i`` with phoneme row ``i + offset``.

    ``recognized``: the recognizer's labels of the clip's audio ``(P,)`` (same frames as the reference
    labels), windowed and aligned the same way into :attr:`SourceClip.recognized`."""
    root = Path(data_dir)
    exp = load_style_clip(root / "source" / "3dmm" / f"{name}.mat")
    with open(root / "source" / "phoneme" / f"{name}_seq.json", encoding="utf-8") as fh:
        seq = np.asarray(json.load(fh), dtype=np.int64)
    if seq.ndim != 1 or len(seq) == 0 or seq.min() < 0 or seq.max() >= NUM_PHONEMES:
        raise ValueError(f"{name}: phoneme sequence must be 1-D ids in [0, {NUM_PHONEMES})")
    windows = phoneme_windows(seq)  # (P, 11), row j centred on phoneme row j
    # coefficient rows i with 0 <= i + offset < P; rows without a label are dropped
    first = max(0, -offset)
    last = min(len(exp), len(seq) - offset)
    if last - first <= 0:
        raise ValueError(f"{name}: no overlap between {len(exp)} coefficient rows and {len(seq)} phonemes")
    rec = None
    if recognized is not None:
        recognized = np.asarray(recognized, np.int64)
        if recognized.shape != seq.shape:
            raise ValueError(f"{name}: {len(recognized)} recognized labels vs {len(seq)} reference labels")
        rec = phoneme_windows(recognized)[first + offset : last + offset]
    return SourceClip(
        name, style_label(name), exp[first:last], windows[first + offset : last + offset], first, rec
    )


def load_style_clips(data_dir: str | os.PathLike[str]) -> list[StyleClip]:
    """All style clips (``style/3dmm/*.mat``) with their style labels."""
    root = Path(data_dir)
    return [
        StyleClip(name, style_label(name), load_style_clip(root / "style" / "3dmm" / f"{name}.mat"))
        for name in list_clips(root, "style")
    ]


# ------------------------------------------------------------------------------------------------ splits
@dataclass
class DataSplit:
    """Which frames train and which validate.

    * ``train_sources``: supervised segments (first ``1 - tail_fraction`` of every non-held-out clip).
    * ``val_tails``: the last ``tail_fraction`` of those clips, separated by ``WIN_SIZE`` unused rows so no
      training target's window reaches a validation target. Every speaker is validated on sentences it
      was not trained on (a whole-clip split alone would validate a single speaker).
    * ``val_clips``: whole held-out clips (unseen recordings; their speaker may appear in training).
    * ``style_train`` / ``style_val_chunks``: style clips split the same way (head for training, tail cut
      into chunks of about ``STYLE_CHUNK`` frames for the retrieval evaluation).
    """

    train_sources: list[SourceClip]
    val_tails: list[SourceClip]
    val_clips: list[SourceClip]
    style_train: list[StyleClip]
    style_val_chunks: list[StyleClip]
    styles: list[str] = field(default_factory=list)  # all style labels, sorted; index = class id

    def style_id(self, label: str) -> int:
        return self.styles.index(label)

    def reference_for(self, clip: SourceClip) -> np.ndarray:
        """Style reference of a validation item: the first <= 256 frames of the same clip that do not
        overlap the evaluated frames (the training head for a tail, the clip's own start for a held-out
        clip - evaluation then skips those frames, see :func:`evaluation_items`)."""
        for seg in self.train_sources:
            if seg.name == clip.name:
                return seg.exp[:STYLE_CLIP_LENGTH]
        return clip.exp[:STYLE_CLIP_LENGTH]


def split_style_clip(
    clip: StyleClip, tail_fraction: float, chunk: int = STYLE_CHUNK
) -> tuple[StyleClip, list[StyleClip]]:
    """Head for training; tail cut into chunks of ``chunk`` frames (a remainder under half a chunk joins
    the last chunk, so chunks have ``chunk // 2`` .. ``1.5 * chunk`` frames unless the tail is shorter)."""
    n_tail = max(1, int(round(len(clip) * tail_fraction)))
    head = clip.segment(0, len(clip) - n_tail)
    tail = clip.segment(len(clip) - n_tail, len(clip))
    bounds = list(range(0, len(tail), chunk)) + [len(tail)]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < chunk // 2:
        bounds.pop(-2)
    return head, [tail.segment(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def make_split(
    data_dir: str | os.PathLike[str] | None = None,
    holdout: Sequence[str] = DEFAULT_HOLDOUT_CLIPS,
    tail_fraction: float = DEFAULT_TAIL_FRACTION,
    style_tail_fraction: float = DEFAULT_STYLE_TAIL_FRACTION,
    offset: int = PHONEME_OFFSET,
    recognized: dict[str, np.ndarray] | None = None,
) -> DataSplit:
    """Load the sample set and split it (deterministic: no randomness involved). ``recognized``: clip
    name -> recognizer labels, attached to the clips as :attr:`SourceClip.recognized`."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    names = list_clips(root, "source")
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise ValueError(f"held-out clips {unknown} not among the source clips {names}")
    if not 0.0 <= tail_fraction < 1.0:
        raise ValueError("tail_fraction must be in [0, 1)")
    train, tails, whole = [], [], []
    for name in names:
        clip = load_source_clip(root, name, offset, (recognized or {}).get(name))
        if name in holdout:
            whole.append(clip)
            continue
        n_tail = int(round(len(clip) * tail_fraction))
        if n_tail == 0:
            train.append(clip)
            continue
        train.append(clip.segment(0, len(clip) - n_tail - WIN_SIZE))
        tails.append(clip.segment(len(clip) - n_tail, len(clip)))
    style_train, style_chunks = [], []
    for sc in load_style_clips(root):
        head, chunks = split_style_clip(sc, style_tail_fraction)
        style_train.append(head)
        style_chunks.extend(chunks)
    styles = sorted({c.style for c in train + whole} | {c.style for c in style_train})
    return DataSplit(train, tails, whole, style_train, style_chunks, styles)


@dataclass
class EvalItem:
    """One evaluation sequence: phoneme windows, ground truth and the style reference (disjoint frames)."""

    name: str
    style: str
    windows: np.ndarray  # (N, 11) int64
    target: np.ndarray  # (N, 64) float32
    reference: np.ndarray  # (<=256, 64) float32
    kind: str  # "tail" or "clip"


def mouth_direction(split: DataSplit) -> np.ndarray:
    """Mouth opening: the first principal component ``(13,)`` of the within-clip-centred lower-face
    training coefficients (46 % of their variance). Validation and the benchmarks project the 13 mouth
    coefficients onto it and correlate with the ground truth, a figure the mouth L1 does not capture."""
    lower = list(LOWER_FACE3D_INDICES)
    x = np.concatenate([(s.exp - s.exp.mean(0))[:, lower] for s in split.train_sources])
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    return vt[0]


def evaluation_items(split: DataSplit, kinds: Sequence[str] = ("tail", "clip")) -> list[EvalItem]:
    """Validation sequences. For a held-out clip the reference is its first 256 frames and the targets
    start ``WIN_SIZE`` rows after them, so reference and evaluated frames never overlap."""
    items = []
    if "tail" in kinds:
        for seg in split.val_tails:
            items.append(
                EvalItem(seg.name, seg.style, seg.windows, seg.exp, split.reference_for(seg), "tail")
            )
    if "clip" in kinds:
        for clip in split.val_clips:
            ref = clip.exp[:STYLE_CLIP_LENGTH]
            begin = min(len(ref) + WIN_SIZE, len(clip) - 1)
            items.append(EvalItem(clip.name, clip.style, clip.windows[begin:], clip.exp[begin:], ref, "clip"))
    return items


# ------------------------------------------------------------------------------------------------ batches
def pad_reference(exp: np.ndarray, length: int = STYLE_CLIP_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad/cut ``(T, 64)`` to ``(length, 64)`` with a pad mask (True = padded), as the reference does."""
    out = np.zeros((length, exp.shape[1]), np.float32)
    n = min(len(exp), length)
    out[:n] = exp[:n]
    mask = np.ones(length, bool)
    mask[:n] = False
    return out, mask


@dataclass
class Batch:
    """One generator batch of ``B`` sequences of ``L`` frames.

    Items with ``has_target`` False are *cross-style* items: phonemes of a source clip spoken in the style
    of a style clip. They have no ground truth and feed only the style / temporal / lip-sync losses.
    """

    windows: torch.Tensor  # (B, L, 11) int64
    target: torch.Tensor  # (B, L, 64) float32 (zeros where has_target is False)
    reference: torch.Tensor  # (B, S, 64) float32, S = 256 (zero padded)
    reference_mask: torch.Tensor  # (B, S) bool, True = padded
    style_id: torch.Tensor  # (B,) int64: style class of the reference
    has_target: torch.Tensor  # (B,) bool
    ref_mean: torch.Tensor | None = None  # (B, 64) mean of the reference
    ref_std: torch.Tensor | None = None  # (B, 64) mean per-``L``-frame-window std of the reference


@dataclass
class RealBatch:
    """Real expression sequences with their style class, for the style and temporal discriminators."""

    seq: torch.Tensor  # (B, L, 64)
    style_id: torch.Tensor  # (B,)


class Sampler:
    """Draws batches from a :class:`DataSplit`; all randomness comes from the ``rng`` passed per call, so
    seeding one generator per training step makes a run (and a resumed run) reproducible.

    Augmentation: random crops of ``seq_len`` frames from the supervised segments; style references that
    are random sub-windows (``ref_min`` .. 256 frames) of any training clip of the same style - the encoder
    must recognise a style from a few seconds anywhere in a clip, not memorise one fixed window; and
    random expression offsets: with probability ``offset_prob`` a constant vector drawn from
    N(0, (``offset_scale`` * s)^2), s = per-coefficient spread of the training clips' mean expressions, is
    added to an item's reference *and* its target (and to real sequences for the discriminators). The
    mean expression of a recording differs a lot between recordings (spread of clip means 0.54 vs 0.23
    within a clip on the mouth coefficients) and the few training recordings cannot teach the decoder to
    carry an unseen recording's offset from its reference; shifted copies can.
    """

    def __init__(
        self,
        split: DataSplit,
        seq_len: int = 32,
        ref_min: int = 32,
        offset_scale: float = 0.0,
        offset_prob: float = 0.8,
        recognized_prob: float = 0.0,
    ) -> None:
        self.split = split
        self.seq_len = seq_len
        self.ref_min = ref_min
        self.offset_prob = offset_prob
        self.recognized_prob = recognized_prob
        self.sources = [s for s in split.train_sources if len(s) >= seq_len]
        if not self.sources:
            raise ValueError(f"no training segment has {seq_len} frames")
        # style pool: every training expression sequence, by style label
        pool: dict[str, list[np.ndarray]] = {}
        for seg in split.train_sources:
            pool.setdefault(seg.style, []).append(seg.exp)
        for sc in split.style_train:
            pool.setdefault(sc.style, []).append(sc.exp)
        self.pool = pool
        self.pool_styles = sorted(pool)
        self.style_only = sorted({sc.style for sc in split.style_train})
        self._src_weights = np.array([len(s) for s in self.sources], np.float64)
        self._src_weights /= self._src_weights.sum()
        long_enough = [st for st in self.pool_styles if any(len(x) >= seq_len for x in pool[st])]
        self.real_styles = long_enough
        clip_means = np.stack([x.mean(0) for clips in pool.values() for x in clips])  # (clips, 64)
        self.offset_std = (offset_scale * clip_means.std(0)).astype(np.float32)  # (64,)

    def offset(self, rng: np.random.Generator) -> np.ndarray:
        """A random expression offset ``(64,)`` (zeros when disabled or not drawn)."""
        if not self.offset_std.any() or rng.random() >= self.offset_prob:
            return np.zeros_like(self.offset_std)
        return rng.normal(0.0, 1.0, self.offset_std.shape).astype(np.float32) * self.offset_std

    # ---- primitives
    def _window(self, exp: np.ndarray, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
        length = int(rng.integers(min(lo, len(exp)), min(hi, len(exp)) + 1))
        begin = int(rng.integers(0, len(exp) - length + 1))
        return exp[begin : begin + length]

    def reference(self, style: str, rng: np.random.Generator) -> np.ndarray:
        """Random sub-window (``ref_min``..256 frames) of a random training clip of ``style``,
        clips chosen in proportion to their length."""
        clips = self.pool[style]
        w = np.array([len(c) for c in clips], np.float64)
        exp = clips[int(rng.choice(len(clips), p=w / w.sum()))]
        return self._window(exp, rng, self.ref_min, STYLE_CLIP_LENGTH)

    def _crop(self, rng: np.random.Generator, style: str | None = None) -> tuple[SourceClip, int]:
        """A random ``seq_len`` crop of a training segment (of ``style`` if given), segments chosen in
        proportion to their length."""
        if style is None:
            w = self._src_weights
        else:
            w = np.array([len(s) if s.style == style else 0 for s in self.sources], np.float64)
            w /= w.sum()
        src = self.sources[int(rng.choice(len(self.sources), p=w))]
        return src, int(rng.integers(0, len(src) - self.seq_len + 1))

    # ---- batches
    def window_stats(self, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(64,)`` and spread ``(64,)`` of a reference: the std is averaged over its consecutive
        ``seq_len``-frame windows, so it is comparable with the std of one generated ``seq_len`` sequence
        (a longer window has a larger std: slow drifts add to it)."""
        n = max(1, len(ref) // self.seq_len)
        chunks = ref[: n * self.seq_len].reshape(n, -1, ref.shape[1]) if len(ref) >= self.seq_len else ref[None]
        return ref.mean(0), chunks.std(1).mean(0)

    def batch(self, batch_size: int, rng: np.random.Generator, cross_style: int = 0) -> Batch:
        """``batch_size`` supervised items followed by ``cross_style`` cross-style items.

        With probability ``recognized_prob`` an item's phoneme windows are the recognizer's labels of the
        same frames instead of the reference labels (where the clip has them), so the decoder also learns
        the recognizer's boundary errors.

        Items come in pairs (2k, 2k+1) of the same style with independently drawn references, so every
        reference has a positive (its partner) and negatives (other styles) for the triplet loss without
        extra style-encoder passes. Both counts must be even.
        """
        if batch_size % 2 or cross_style % 2:
            raise ValueError("batch_size and cross_style must be even (items come in same-style pairs)")
        n = batch_size + cross_style
        win = np.zeros((n, self.seq_len, 2 * WIN_SIZE + 1), np.int64)
        tgt = np.zeros((n, self.seq_len, 64), np.float32)
        ref = np.zeros((n, STYLE_CLIP_LENGTH, 64), np.float32)
        mask = np.ones((n, STYLE_CLIP_LENGTH), bool)
        sid = np.zeros(n, np.int64)
        has = np.zeros(n, bool)
        rmean = np.zeros((n, 64), np.float32)
        rstd = np.zeros((n, 64), np.float32)
        style = ""
        shift = np.zeros(64, np.float32)
        for b in range(n):
            supervised = b < batch_size
            if b % 2 == 0:  # first of a pair chooses the style and the offset (same "recording")
                if supervised:
                    style = self._crop(rng)[0].style
                else:
                    style = self.style_only[int(rng.integers(len(self.style_only)))]
                shift = self.offset(rng)
            src, begin = self._crop(rng, style if supervised else None)
            windows = src.windows
            if self.recognized_prob > 0 and src.recognized is not None and rng.random() < self.recognized_prob:
                windows = src.recognized
            win[b] = windows[begin : begin + self.seq_len]
            if supervised:
                tgt[b] = src.exp[begin : begin + self.seq_len] + shift
                has[b] = True
            r = self.reference(style, rng) + shift
            ref[b], mask[b] = pad_reference(r)
            rmean[b], rstd[b] = self.window_stats(r)
            sid[b] = self.split.style_id(style)
        import torch

        return Batch(
            torch.from_numpy(win),
            torch.from_numpy(tgt),
            torch.from_numpy(ref),
            torch.from_numpy(mask),
            torch.from_numpy(sid),
            torch.from_numpy(has),
            torch.from_numpy(rmean),
            torch.from_numpy(rstd),
        )

    def real_sequences(self, batch_size: int, rng: np.random.Generator) -> RealBatch:
        """Real ``seq_len``-frame sequences, styles drawn uniformly (the few long source clips would
        otherwise dominate the style discriminator)."""
        seq = np.zeros((batch_size, self.seq_len, 64), np.float32)
        sid = np.zeros(batch_size, np.int64)
        for b in range(batch_size):
            st = self.real_styles[int(rng.integers(len(self.real_styles)))]
            clips = [c for c in self.pool[st] if len(c) >= self.seq_len]
            exp = clips[int(rng.integers(len(clips)))]
            begin = int(rng.integers(0, len(exp) - self.seq_len + 1))
            seq[b] = exp[begin : begin + self.seq_len] + self.offset(rng)
            sid[b] = self.split.style_id(st)
        import torch

        return RealBatch(torch.from_numpy(seq), torch.from_numpy(sid))
