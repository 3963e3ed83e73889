"""Do the speaking styles show in the output? Identification, static offset, spread, intensity, lip sync.

Every figure decodes the *same* held-out phonemes (``andrew_clip_2`` after its first 256 + 11 frames: a
recording never used in training or selection; reference labels) and varies only the style code, then
describes each output by its per-coefficient mean and spread over time (and by the style encoder's code of
the output). Which data scores what:

* **codes** come from the *training heads* of the style clips (first 70 %, ``models.dataset.make_split``);
  the **references** they are compared with are the held-out *tails* (last 30 %) of the clips. A code and
  the frames it is judged against never overlap (leave-the-judged-frames-out; ``--strict`` variant below).
* **identification** - for every style clip (20), decode with that clip's code; the output is correct when
  its nearest reference tail (standardised mean+std descriptor, 128 values) has the same style name (13
  styles, chance 1/13). ``ident_code`` does the same with the style encoder's code of the output vs the
  tails' codes. ``ident_loco``: the output's own clip is removed from the gallery (only the 10 clips of the
  3 styles that have more than one clip can score; chance then differs).
* **static offset** - per style (13): L1 (64 coefficients) between the output's mean and the mean of the
  style's held-out tails, divided by the same for a style-blind output (the mean training expression).
* **spread** - mean pairwise L1 between the 13 styles' output means / the same between the styles' tail
  means (1 = the outputs differ from each other as much as the real styles do).
* **intensity** - per style, the output at k = 0, 0.5, 1, 1.5, 2 through the engine's own intensity path
  (``StyleBank.styled`` + ``ExpressionDecoder.decode``); distance = mean |out_k - out_0| over frames and
  coefficients. Monotone for every style and d(2)/d(1) >= 1.7 are the targets. Three spaces are measured:
  ``hybrid`` (the engine default: code-space motion around a rest face moved linearly in output space,
  engine/decoder.py), ``code`` (the paper's line from ``neutral`` in code space, which saturates) and
  ``output`` (neutral output + k x (style output - neutral output), linear by construction). With each,
  the held-out clip's mouth-opening r vs ground truth at every k (mean over the 13 styles): intensity must
  not be bought with lips.
* **decoder step** (``--baseline OTHER.pt``) - the per-frame ``ExpressionDecoder.decode`` cost of both
  checkpoints, timed in alternating rounds.
* **lip sync (reference labels)** - mouth-opening r and mouth L1 against ground truth on the clip tails and
  on the held-out clip (as ``benchmarks.expression_quality``).
* **lip sync (audio-driven)** - every source clip's wav through the streaming recognizer (default
  lookahead; cached by ``benchmarks.recognized_labels``), decoded with a leave-one-clip-out code (mean code of
  the speaker's *other* source clips; the mean of all other source clips for a speaker with one clip), r of
  the mouth opening vs the clip's 3DMM; ``heldout`` = only the frames never trained on (tails + the held-out
  clip), ``all`` = whole clips. The same with reference labels for the gap.

    .venv/bin/python -m benchmarks.styles [--checkpoint ...] [--codes ...] [--out benchmarks/results/styles.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import recognized_labels
from benchmarks.expression_quality import _pearson, mouth_direction, score
from benchmarks.results_io import write_results
from engine.config import INTENSITY_SPACES
from engine.decoder import ExpressionDecoder
from engine.stylebank import StyleBank
from models.checkpoints import load_checkpoint
from models.dataset import (
    PHONEME_OFFSET,
    DataSplit,
    evaluation_items,
    list_clips,
    load_source_clip,
    make_split,
)
from models.phonemes import phoneme_windows
from models.styletalk import LOWER_FACE3D_INDICES, StyleTalk
from models.train import STYLE_NAMES, clip_style_code, describe, nearest_accuracy, predict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "models" / "assets" / "styletalk_default.pt"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "styles.json"
LOWER = list(LOWER_FACE3D_INDICES)
INTENSITIES = (0.0, 0.5, 1.0, 1.5, 2.0)


class Decoder:
    """The checkpoint's decoder on fixed phonemes; any code ``(C,)`` -> expression ``(T, 64)``."""

    def __init__(self, model: StyleTalk, windows: np.ndarray) -> None:
        self.model = model
        with torch.no_grad():
            self.content = model.encode_content(torch.from_numpy(np.ascontiguousarray(windows))[None])

    @torch.no_grad()
    def __call__(self, code: np.ndarray) -> np.ndarray:
        return self.model.decode(self.content, torch.from_numpy(np.array(code, np.float32))[None])[0].numpy()


def style_figures(model: StyleTalk, split: DataSplit, windows: np.ndarray, intensity_mode: str,
                  truth_open: np.ndarray | None = None, direction: np.ndarray | None = None) -> dict[str, Any]:
    dec = Decoder(model, windows)
    heads = split.style_train  # training heads (70 %)
    tails: dict[str, list[np.ndarray]] = {}
    for ch in split.style_val_chunks:
        tails.setdefault(ch.name, []).append(ch.exp)
    clip_tail = {name: np.concatenate(parts) for name, parts in tails.items()}
    names = [h.name for h in heads]
    labels = [h.style for h in heads]

    # ---- identification (per clip)
    head_codes = {h.name: clip_style_code(model, h.exp) for h in heads}
    outputs = {n: dec(head_codes[n]) for n in names}
    g_desc = np.stack([describe(clip_tail[n]) for n in names])
    mu, sd = g_desc.mean(0), g_desc.std(0) + 1e-6
    q_desc = np.stack([describe(outputs[n]) for n in names])
    g_code = np.stack([clip_style_code(model, clip_tail[n]) for n in names])
    q_code = np.stack([clip_style_code(model, outputs[n]) for n in names])
    multi = [i for i, s in enumerate(labels) if labels.count(s) > 1]
    std_g, std_q = (g_desc - mu) / sd, (q_desc - mu) / sd
    ident = nearest_accuracy(std_q, labels, std_g, labels)
    ident_code = nearest_accuracy(q_code, labels, g_code, labels)
    ident_loco = nearest_accuracy(std_q[multi], [labels[i] for i in multi], std_g, labels, exclude=multi)
    per_clip = {}
    d = ((std_q[:, None] - std_g[None]) ** 2).sum(-1)
    for i, n in enumerate(names):
        per_clip[n] = {"style": labels[i], "nearest": labels[int(d[i].argmin())]}

    # ---- per style: static offset, spread, intensity
    source_mean = np.concatenate([s.exp for s in split.train_sources]).mean(0)
    style_labels = sorted(set(labels))
    style_code = {s: np.mean([head_codes[h.name] for h in heads if h.style == s], axis=0) for s in style_labels}
    style_mean = {
        s: np.concatenate([clip_tail[h.name] for h in heads if h.style == s]).mean(0) for s in style_labels
    }
    neutral = np.mean([clip_style_code(model, s.exp) for s in split.train_sources], axis=0)
    bank = StyleBank(encode=lambda clip: clip_style_code(model, clip))
    bank.add_code("neutral", neutral.astype(np.float32))
    for s in style_labels:
        bank.add_code(s, style_code[s].astype(np.float32))
    engine_dec = ExpressionDecoder(model, skip_silence=False)
    spaces = {sp: intensity_figures(engine_dec, bank, style_labels, windows, sp, truth_open, direction)
              for sp in (*INTENSITY_SPACES, "output")}
    rows: dict[str, Any] = {}
    out_means = {}
    for s in style_labels:
        out = dec(style_code[s])
        out_means[s] = out.mean(0)
        dist = spaces[intensity_mode]["distance"][s]
        rows[STYLE_NAMES.get(s, s)] = {
            "offset_model": float(np.abs(out.mean(0) - style_mean[s]).mean()),
            "offset_blind": float(np.abs(source_mean - style_mean[s]).mean()),
            "upper_offset_model": float(np.abs(out.mean(0) - style_mean[s])[UPPER].mean()),
            "lower_offset_model": float(np.abs(out.mean(0) - style_mean[s])[LOWER].mean()),
            "output_std": float(out.std(0).mean()),
            "style_std": float(np.concatenate([clip_tail[h.name] for h in heads if h.style == s]).std(0).mean()),
            "intensity_distance": dist,
            "intensity_monotone": bool(all(b > a for a, b in zip(dist[:-1], dist[1:], strict=True))),
            "intensity_ratio_2_1": dist[4] / dist[2] if dist[2] > 0 else None,
        }

    def pairwise(means: dict[str, np.ndarray]) -> float:
        m = np.stack([means[s] for s in style_labels])
        return float(np.abs(m[:, None] - m[None]).mean(-1)[np.triu_indices(len(m), 1)].mean())

    offset_model = float(np.mean([r["offset_model"] for r in rows.values()]))
    offset_blind = float(np.mean([r["offset_blind"] for r in rows.values()]))
    ratios = [r["intensity_ratio_2_1"] for r in rows.values() if r["intensity_ratio_2_1"] is not None]
    return {
        "phonemes_from": "andrew_clip_2 (held-out clip, frames after its reference)",
        "frames": int(len(windows)),
        "clips": len(names),
        "styles": len(style_labels),
        "identification": ident,
        "identification_code": ident_code,
        "identification_loco": ident_loco,
        "identification_loco_clips": len(multi),
        "chance": 1.0 / len(style_labels),
        "static_offset_ratio": offset_model / offset_blind,
        "static_offset_model_l1": offset_model,
        "static_offset_blind_l1": offset_blind,
        "spread_ratio": pairwise(out_means) / pairwise(style_mean),
        "intensity_mode": intensity_mode,
        "intensity_open_r_heldout": spaces[intensity_mode]["open_r_heldout"],
        "intensity_spaces": spaces,
        "intensity_all_monotone": bool(all(r["intensity_monotone"] for r in rows.values())),
        "intensity_ratio_2_1_min": float(min(ratios)) if ratios else None,
        "intensity_ratio_2_1_median": float(np.median(ratios)) if ratios else None,
        "per_style": rows,
        "per_clip": per_clip,
    }


UPPER = [i for i in range(64) if i not in LOWER_FACE3D_INDICES]


def intensity_figures(dec: ExpressionDecoder, bank: StyleBank, styles: Sequence[str], windows: np.ndarray,
                      space: str, truth_open: np.ndarray | None, direction: np.ndarray | None) -> dict[str, Any]:
    """Distance from the k=0 output at every intensity, per style, and the held-out mouth-opening r at every k
    (mean over styles). ``hybrid``/``code``: the engine's path (``StyleBank.styled`` -> ``decode``);
    ``output``: neutral output + k x (style output - neutral output), which the engine does not offer."""
    dist: dict[str, list[float]] = {}
    open_r: dict[float, list[float]] = {k: [] for k in INTENSITIES}
    for s in styles:
        if space == "output":
            base, full = dec.decode(windows, bank.get(bank.neutral)), dec.decode(windows, bank.get(s))
            seqs = [base + np.float32(k) * (full - base) for k in INTENSITIES]
        else:
            seqs = [dec.decode(windows, bank.styled(s, k, space)) for k in INTENSITIES]
        dist[s] = [float(np.abs(x - seqs[0]).mean()) for x in seqs]
        if truth_open is not None and direction is not None:
            for k, x in zip(INTENSITIES, seqs, strict=True):
                r = _pearson(x[:, LOWER] @ direction, truth_open)
                if r is not None:
                    open_r[k].append(r)
    ratios = [d[4] / d[2] for d in dist.values() if d[2] > 0]
    return {
        "space": space,
        "all_monotone": bool(all(all(b > a for a, b in zip(d[:-1], d[1:], strict=False)) for d in dist.values())),
        "ratio_2_1_min": float(min(ratios)),
        "ratio_2_1_median": float(np.median(ratios)),
        "open_r_heldout": {str(k): float(np.mean(v)) for k, v in open_r.items() if v},
        "distance": dist,
    }


# ------------------------------------------------------------------------------------------------ lip sync
def lip_sync(model: StyleTalk, split: DataSplit, direction: np.ndarray) -> dict[str, Any]:
    out = {}
    for kind in ("tail", "clip"):
        items = evaluation_items(split, kinds=(kind,))
        if items:
            out[kind] = score([predict(model, it.windows, it.reference) for it in items], items, direction)
    return out


def audio_lip_sync(model: StyleTalk, split: DataSplit, direction: np.ndarray, labels_path: Path,
                   data_dir: Path) -> dict[str, Any]:
    recognized = recognized_labels.ensure(labels_path, data_dir)
    names = list_clips(data_dir, "source")
    clips = {n: load_source_clip(data_dir, n) for n in names}
    codes = {n: clip_style_code(model, c.exp) for n, c in clips.items()}
    tail_start = {t.name: t.start for t in split.val_tails}
    held_start = {c.name: 256 + 11 for c in split.val_clips}
    rows: dict[str, Any] = {}
    for n, clip in clips.items():
        same = [m for m in names if m != n and clips[m].style == clip.style]
        others = same or [m for m in names if m != n]
        code = np.mean([codes[m] for m in others], axis=0)
        lab = recognized[n]
        # same alignment as training: coefficient row i <-> phoneme row i + PHONEME_OFFSET
        win_rec = phoneme_windows(lab)[clip.start + PHONEME_OFFSET : clip.start + PHONEME_OFFSET + len(clip)]
        begin = tail_start.get(n, held_start.get(n, len(clip)))
        row = {"code_from": others if same else "other speakers", "heldout_from": int(begin)}
        truth = clip.exp[:, LOWER] @ direction
        for src, win in (("recognized", win_rec), ("reference", clip.windows)):
            dec = Decoder(model, win)
            pred = dec(code)[:, LOWER] @ direction
            row[f"{src}_all"] = _pearson(pred, truth)
            row[f"{src}_heldout"] = _pearson(pred[begin:], truth[begin:]) if len(clip) - begin > 10 else None
        row["frames"], row["heldout_frames"] = len(clip), max(0, len(clip) - begin)
        rows[n] = row

    def weighted(key: str, nkey: str) -> float:
        vals = [(r[key], r[nkey]) for r in rows.values() if r[key] is not None and r[nkey] > 0]
        return float(sum(v * w for v, w in vals) / sum(w for _, w in vals))

    return {
        "labels": str(labels_path),
        "recognized_all": weighted("recognized_all", "frames"),
        "reference_all": weighted("reference_all", "frames"),
        "recognized_heldout": weighted("recognized_heldout", "heldout_frames"),
        "reference_heldout": weighted("reference_heldout", "heldout_frames"),
        "per_clip": rows,
    }


# ---------------------------------------------------------------------------------------------------- main
def run(checkpoint: Path, data_dir: str | None, labels_path: Path, intensity_mode: str) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    model = StyleTalk.from_checkpoint(checkpoint)
    train_cfg = ckpt.extra.get("train_config", {})
    data = Path(data_dir or train_cfg.get("data_dir") or "") if (data_dir or train_cfg.get("data_dir")) else None
    split = make_split(data, holdout=train_cfg.get("holdout", ["andrew_clip_2"]),
                       tail_fraction=train_cfg.get("tail_fraction", 0.2))
    from models.dataset import default_data_dir

    data = data or default_data_dir()
    held = evaluation_items(split, kinds=("clip",))[0]
    direction = mouth_direction(split)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT)
                                              else checkpoint),
                           "sha256_16": _sha(checkpoint)}
    truth_open = held.target[:, LOWER] @ direction
    res["styles"] = style_figures(model, split, held.windows, intensity_mode, truth_open, direction)
    res["lip_sync"] = lip_sync(model, split, direction)
    res["audio_lip_sync"] = audio_lip_sync(model, split, direction, labels_path, data)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["loadavg"] = os.getloadavg()
    return res


def decoder_step(paths: dict[str, Path], runs: int = 200) -> dict[str, Any]:
    """Median wall time of the live engine's per-frame work - ``ExpressionDecoder.decode`` of one new
    window with a cached style code - for each checkpoint, timed in alternating rounds (same load)."""
    from engine.decoder import ExpressionDecoder

    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 41, size=(1, 11)) for _ in range(16)]
    decs = {k: ExpressionDecoder(StyleTalk.from_checkpoint(p), skip_silence=False) for k, p in paths.items()}
    codes = {k: np.zeros(d.style_dim, np.float32) for k, d in decs.items()}
    times: dict[str, list[float]] = {k: [] for k in decs}
    for i in range(runs + 10):
        for k, d in decs.items():
            t0 = time.perf_counter()
            d.decode(windows[i % 16], codes[k])
            if i >= 10:
                times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v) * 1e3) for k, v in times.items()}
    first = next(iter(med))
    return {"median_ms": med, "ratio_to_" + first: {k: v / med[first] for k, v in med.items()},
            "runs": runs, "loadavg": os.getloadavg()}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def print_table(res: dict[str, Any]) -> None:
    s = res["styles"]
    print(f"styles ({s['clips']} clips, {s['styles']} styles; phonemes: {s['phonemes_from']}, {s['frames']} frames)")
    print(f"  identification  {s['identification']:.2f}  (style-code {s['identification_code']:.2f}, "
          f"strict leave-one-clip-out {s['identification_loco']:.2f} on {s['identification_loco_clips']} clips;"
          f" chance {s['chance']:.2f})   target >= 0.80")
    print(f"  static offset   {s['static_offset_ratio']:.2f}  ({s['static_offset_model_l1']:.3f} vs style-blind "
          f"{s['static_offset_blind_l1']:.3f})   target <= 0.5")
    print(f"  spread          {s['spread_ratio']:.2f}   target >= 0.7")
    print(f"  intensity ({s['intensity_mode']}) all monotone {s['intensity_all_monotone']}, d(2)/d(1) min "
          f"{s['intensity_ratio_2_1_min']:.2f} median {s['intensity_ratio_2_1_median']:.2f}   target >= 1.7")
    def open_r(d: dict[str, float]) -> str:
        return ", ".join(f"{k}: {v:.3f}" for k, v in d.items())

    print("  intensity by space (held-out mouth-opening r at k = 0 .. 2, mean over styles):")
    for o in s["intensity_spaces"].values():
        print(f"    {o['space']:<7} all monotone {o['all_monotone']}, d(2)/d(1) min {o['ratio_2_1_min']:.2f} median "
              f"{o['ratio_2_1_median']:.2f}; held-out open r {open_r(o['open_r_heldout'])}")
    print(f"  {'style':<12} {'offset':>7} {'blind':>6} {'upper':>6} {'lower':>6} {'std':>6} {'ref std':>7}  "
          "d(0, .5, 1, 1.5, 2)")
    for name, r in s["per_style"].items():
        dist = " ".join(f"{x:.3f}" for x in r["intensity_distance"])
        print(f"  {name:<12} {r['offset_model']:7.3f} {r['offset_blind']:6.3f} {r['upper_offset_model']:6.3f} "
              f"{r['lower_offset_model']:6.3f} {r['output_std']:6.3f} {r['style_std']:7.3f}  {dist}")
    for kind, m in res["lip_sync"].items():
        print(f"lip sync, reference labels, {kind}: open r {m['mouth_open_corr']:.3f}, mouth L1 {m['mouth_l1']:.3f}")
    a = res["audio_lip_sync"]
    print(f"lip sync, audio-driven (leave-one-clip-out codes): open r held-out frames recognized "
          f"{a['recognized_heldout']:.3f} vs reference labels {a['reference_heldout']:.3f}; whole clips "
          f"{a['recognized_all']:.3f} vs {a['reference_all']:.3f}")
    print(f"load average {tuple(round(x, 2) for x in res['loadavg'])}, {res['seconds']} s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", default=None, help="sample data directory (default: as in training)")
    p.add_argument("--labels", type=Path, default=recognized_labels.DEFAULT_OUT,
                   help="recognizer label cache (built on first use)")
    p.add_argument("--intensity", choices=INTENSITY_SPACES, default="hybrid",
                   help="intensity space of the main table (the others are measured alongside)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="also time the per-frame decoder step of this checkpoint against --checkpoint")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        print(f"checkpoint {args.checkpoint} not found", file=sys.stderr)
        return 1
    res = run(args.checkpoint.resolve(), args.data, args.labels, args.intensity)
    if args.baseline is not None:
        res["decoder_step"] = decoder_step({"baseline": args.baseline, "checkpoint": args.checkpoint})
    print_table(res)
    if "decoder_step" in res:
        ds = res["decoder_step"]
        print("decoder step (one frame, cached style), median ms: "
              + ", ".join(f"{k} {v:.2f}" for k, v in ds["median_ms"].items())
              + f"; ratio {ds['ratio_to_baseline']['checkpoint']:.2f}")
    write_results(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
