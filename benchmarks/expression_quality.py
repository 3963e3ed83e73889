"""Expression quality of a StyleTalk checkpoint on held-out sample clips, against simple baselines.

Held-out data (the split of ``models.dataset.make_split``, the same the checkpoint was trained with):

* ``tail`` - the last 20 % of every training clip (unseen sentences of every speaker); style reference =
  the first <= 256 frames of the same clip (training part, disjoint from the evaluated frames);
* ``clip`` - whole held-out clips (default ``andrew_clip_2``); reference = its first 256 frames, evaluated
  on the frames after them.

Every method gets the reference phonemes (aligned as in training). Methods:

* ``model``      - the checkpoint, styled by the reference;
* ``mean``       - the mean training expression (baseline);
* ``lookup``     - per-phoneme mean training expression, at the window position (lag) that fits the
  training split best (baseline);
* ``ref_mean``   - the mean of the style reference (context: what the style reference alone gives);
* ``ref_lookup`` - reference mean + per-phoneme deviation from each training clip's mean (context: the
  strongest non-learned predictor here).

Metrics: L1 of the 13 lower-face (mouth) coefficients and of all 64; Pearson correlation with the ground
truth of the mouth-opening signal (projection on the first principal component of the within-clip-centred
lower-face training coefficients, which tracks open vowels vs. bilabials) and the mean per-coefficient
correlation of the 13 mouth coefficients (constant predictions have no correlation: reported as null).

Style transfer: for the style clips (no phonemes), the mean output expression in a style vs. the mean of
that style's held-out chunks (does the decoder reproduce a style's static expression?).

Style encoder: nearest-neighbour retrieval. Queries are held-out chunks (<= 64 frames) of every style clip's
last 30 % and of the source clips' tails; the gallery holds one code per training clip part; a query is
correct when its nearest gallery code has its style (speaker + emotion). A non-learned descriptor (per
coefficient mean and std, standardised) is the reference point.

    .venv/bin/python -m benchmarks.expression_quality [--checkpoint models/assets/styletalk_default.pt]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.results_io import write_results
from models.checkpoints import load_checkpoint
from models.dataset import STYLE_CHUNK, DataSplit, EvalItem, evaluation_items, make_split, mouth_direction
from models.styletalk import LOWER_FACE3D_INDICES, StyleTalk
from models.train import clip_style_code, predict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "models" / "assets" / "styletalk_default.pt"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "expression_quality.json"
LOWER = list(LOWER_FACE3D_INDICES)
MAX_LAG = 5

Predictor = Callable[[EvalItem], np.ndarray]


# ------------------------------------------------------------------------------------------- baselines
def fit_lookup(split: DataSplit, centred: bool) -> tuple[int, dict[int, np.ndarray], np.ndarray]:
    """Per-phoneme mean expression of the training split at the best lag (phoneme ``t + lag`` for frame
    ``t``, ``|lag| <= 5``, chosen by training mouth L1). ``centred``: fit deviations from each clip's mean."""
    exp = [s.exp - s.exp.mean(0) if centred else s.exp for s in split.train_sources]
    fallback = np.zeros(64, np.float32) if centred else np.concatenate(exp).mean(0)
    best: tuple[float, int, dict[int, np.ndarray]] | None = None
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        ph = np.concatenate([s.windows[:, MAX_LAG + lag] for s in split.train_sources])
        e = np.concatenate(exp)
        table = {int(p): e[ph == p].mean(0) for p in np.unique(ph)}
        pred = np.stack([table[int(p)] for p in ph])
        err = float(np.abs(pred - e)[:, LOWER].mean())
        if best is None or err < best[0]:
            best = (err, lag, table)
    assert best is not None
    return best[1], best[2], fallback


def baselines(split: DataSplit) -> dict[str, Predictor]:
    train_mean = np.concatenate([s.exp for s in split.train_sources]).mean(0)
    lag, table, fallback = fit_lookup(split, centred=False)
    lag_c, table_c, zero = fit_lookup(split, centred=True)

    def lookup(it: EvalItem) -> np.ndarray:
        return np.stack([table.get(int(p), fallback) for p in it.windows[:, MAX_LAG + lag]])

    def ref_lookup(it: EvalItem) -> np.ndarray:
        dev = np.stack([table_c.get(int(p), zero) for p in it.windows[:, MAX_LAG + lag_c]])
        return it.reference.mean(0) + dev

    return {
        "mean": lambda it: np.tile(train_mean, (len(it.target), 1)),
        "lookup": lookup,
        "ref_mean": lambda it: np.tile(it.reference.mean(0), (len(it.target), 1)),
        "ref_lookup": ref_lookup,
    }


# ---------------------------------------------------------------------------------------------- metrics
def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    for x in (a, b):  # constant (up to rounding): correlation undefined
        if np.ptp(x) <= 1e-6 * max(1.0, float(np.abs(x).max())):
            return None
    return float(np.corrcoef(a, b)[0, 1])


def _weighted(values: Sequence[tuple[float | None, int]]) -> float | None:
    vals = [(v, n) for v, n in values if v is not None]
    if not vals:
        return None
    return float(sum(v * n for v, n in vals) / sum(n for _, n in vals))


def score(preds: Sequence[np.ndarray], items: Sequence[EvalItem], direction: np.ndarray) -> dict[str, Any]:
    err = np.concatenate([np.abs(p - it.target) for p, it in zip(preds, items, strict=True)])
    open_corr, coef_corr = [], []
    for p, it in zip(preds, items, strict=True):
        n = len(it.target)
        open_corr.append((_pearson(p[:, LOWER] @ direction, it.target[:, LOWER] @ direction), n))
        per = [_pearson(p[:, k], it.target[:, k]) for k in LOWER]
        per_valid = [c for c in per if c is not None]
        coef_corr.append((float(np.mean(per_valid)) if per_valid else None, n))
    return {
        "mouth_l1": float(err[:, LOWER].mean()),
        "l1": float(err.mean()),
        "mouth_open_corr": _weighted(open_corr),
        "mouth_coef_corr": _weighted(coef_corr),
        "frames": int(err.shape[0]),
    }


# ------------------------------------------------------------------------------------------- retrieval
def retrieval(model: StyleTalk, split: DataSplit) -> dict[str, Any]:
    """Nearest-neighbour style retrieval of held-out chunks (codes vs. a mean/std descriptor)."""
    gallery = [(s.style, s.exp) for s in split.train_sources] + [(s.style, s.exp) for s in split.style_train]
    queries = [(c.style, c.exp) for c in split.style_val_chunks]
    for tail in split.val_tails:  # source tails in chunks of <= 64 frames, as the style clips
        for a in range(0, len(tail) - STYLE_CHUNK // 2 + 1, STYLE_CHUNK):
            queries.append((tail.style, tail.exp[a : a + STYLE_CHUNK]))

    def nn_accuracy(g: np.ndarray, q: np.ndarray) -> float:
        d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
        pred = [gallery[int(i)][0] for i in d.argmin(1)]
        return float(np.mean([p == s for p, (s, _) in zip(pred, queries, strict=True)]))

    g_codes = np.stack([clip_style_code(model, e) for _, e in gallery])
    q_codes = np.stack([clip_style_code(model, e) for _, e in queries])

    def descriptor(e: np.ndarray) -> np.ndarray:
        return np.concatenate([e.mean(0), e.std(0)])

    g_desc = np.stack([descriptor(e) for _, e in gallery])
    q_desc = np.stack([descriptor(e) for _, e in queries])
    mu, sd = g_desc.mean(0), g_desc.std(0) + 1e-6
    return {
        "queries": len(queries),
        "gallery": len(gallery),
        "styles": len(split.styles),
        "chance": 1.0 / len(split.styles),
        "style_code_accuracy": nn_accuracy(g_codes, q_codes),
        "mean_std_descriptor_accuracy": nn_accuracy((g_desc - mu) / sd, (q_desc - mu) / sd),
    }


# ------------------------------------------------------------------------------------------- style transfer
def style_transfer(model: StyleTalk, split: DataSplit) -> dict[str, Any]:
    """Does the output carry a style's static expression? For every style-clip style (no phonemes, so no
    ground-truth sequence exists), decode the held-out clip's phonemes with a code from that style's
    training parts and compare the mean output expression with the mean of the style's held-out chunks.
    Reference point: the mean training expression of the source clips (what a style-blind model would
    produce on average)."""
    items = evaluation_items(split, kinds=("clip",)) or evaluation_items(split, kinds=("tail",))
    windows = items[0].windows
    source_mean = np.concatenate([s.exp for s in split.train_sources]).mean(0)
    rows = {}
    for label in sorted({c.style for c in split.style_train}):
        parts = [c.exp for c in split.style_train if c.style == label]
        held = np.concatenate([c.exp for c in split.style_val_chunks if c.style == label])
        code = np.mean([clip_style_code(model, e) for e in parts], axis=0)
        with torch.no_grad():
            content = model.encode_content(torch.from_numpy(windows)[None])
            out = model.decode(content, torch.from_numpy(code)[None])[0].numpy()
        rows[label] = {
            "model": float(np.abs(out.mean(0) - held.mean(0)).mean()),
            "source_mean": float(np.abs(source_mean - held.mean(0)).mean()),
        }
    return {
        "per_style": rows,
        "model_mean_offset_l1": float(np.mean([r["model"] for r in rows.values()])),
        "source_mean_offset_l1": float(np.mean([r["source_mean"] for r in rows.values()])),
        "phonemes_from": items[0].name,
    }


# ---------------------------------------------------------------------------------------------------- main
def run(checkpoint: Path, data_dir: str | None) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    model = StyleTalk.from_checkpoint(checkpoint)
    train_cfg = ckpt.extra.get("train_config", {})
    split = make_split(
        data_dir or train_cfg.get("data_dir") or None,
        holdout=train_cfg.get("holdout", ["andrew_clip_2"]),
        tail_fraction=train_cfg.get("tail_fraction", 0.2),
    )
    direction = mouth_direction(split)
    methods: dict[str, Predictor] = {"model": lambda it: predict(model, it.windows, it.reference)}
    methods.update(baselines(split))
    results: dict[str, Any] = {}
    for kind in ("tail", "clip"):
        items = evaluation_items(split, kinds=(kind,))
        if not items:
            continue
        results[kind] = {
            name: score([f(it) for it in items], items, direction) for name, f in methods.items()
        }
        results[kind]["items"] = [it.name for it in items]
    t0 = time.perf_counter()
    results["retrieval"] = retrieval(model, split)
    results["retrieval"]["seconds"] = round(time.perf_counter() - t0, 2)
    results["style_transfer"] = style_transfer(model, split)
    results["checkpoint"] = {
        "path": str(checkpoint),
        "bytes": checkpoint.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": ckpt.config,
        "summary": ckpt.extra.get("summary", {}),
    }
    return results


def print_table(res: dict[str, Any]) -> None:
    def fmt(v: float | None) -> str:
        return "   —  " if v is None else f"{v:6.3f}"

    for kind in ("tail", "clip"):
        if kind not in res:
            continue
        rows = {k: v for k, v in res[kind].items() if isinstance(v, dict)}
        frames = next(iter(rows.values()))["frames"]
        print(f"\n{kind} ({', '.join(res[kind]['items'])}; {frames} frames)")
        print(f"{'method':<11} {'mouth L1':>8} {'vs model':>8} {'L1(64)':>7} {'open r':>7} {'coef r':>7}")
        ref = rows["model"]["mouth_l1"]
        for name, m in rows.items():
            print(
                f"{name:<11} {m['mouth_l1']:8.4f} {m['mouth_l1'] / ref:7.2f}x {m['l1']:7.4f} "
                f"{fmt(m['mouth_open_corr'])} {fmt(m['mouth_coef_corr'])}"
            )
    r = res["retrieval"]
    head = f"{r['queries']} held-out chunks, {r['gallery']} gallery clips, {r['styles']} styles"
    print(f"\nstyle retrieval ({head}):")
    acc, desc = r["style_code_accuracy"], r["mean_std_descriptor_accuracy"]
    print(f"  style codes {acc:.3f}, mean/std descriptor {desc:.3f}, chance {r['chance']:.3f}")
    st = res["style_transfer"]
    print(
        f"style transfer (mean expression vs. held-out chunks of each style clip, L1 over 64): "
        f"model {st['model_mean_offset_l1']:.3f}, style-blind source mean {st['source_mean_offset_l1']:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", default=None, help="sample data directory (default: as in training)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        print(f"checkpoint {args.checkpoint} not found", file=sys.stderr)
        return 1
    res = run(args.checkpoint, args.data)
    print_table(res)
    write_results(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
