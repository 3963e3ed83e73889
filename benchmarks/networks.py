"""Parameter counts and CPU cost of one step of each network, official full configs (random weights).

- StyleTalk decoder step: one new frame (B=1, N=1 window) decoded with a cached style code — the live
  engine's per-frame work — both with the style's expert weights mixed per call and pre-mixed once
  (``prepare_style``: the mixed weights and each decoder stack's first self-attention block, whose query is the
  style code plus positions; what a session with a fixed style uses, engine/decoder.py); plus the built-in (small)
  checkpoint, both ways.
- PIRenderer: one 256x256 frame (B=1) of the full FaceGenerator.

Variants are timed in turn, round by round, so machine load hits them alike; medians and ratios are the
figures to quote. Usage: ``python -m benchmarks.networks [--runs 20] [--threads 1] [--skip-renderer]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.results_io import RESULTS, write_results
from models.pirenderer import FaceGenerator
from models.styletalk import StyleTalk, StyleTalkConfig

BUILTIN = Path(__file__).resolve().parents[1] / "models" / "assets" / "styletalk_default.pt"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed_rounds(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: lazy init, allocator
        fn()
    for _ in range(runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--renderer-runs", type=int, default=5, help="PIRenderer frames are seconds each on a CPU")
    ap.add_argument("--skip-renderer", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "networks.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    full = StyleTalk(StyleTalkConfig()).eval()
    small = StyleTalk.from_file(BUILTIN).eval() if BUILTIN.is_file() else None
    win = torch.full((1, 1, 11), 31, dtype=torch.long)
    win[0, 0, 3:8] = torch.tensor([2, 21, 0, 27, 17])
    clip = torch.randn(1, 256, 64) * 0.3
    mask = torch.zeros(1, 256, dtype=torch.bool)
    variants: dict[str, Callable[[], object]] = {}
    params: dict[str, int] = {
        "styletalk_full": count(full),
        "styletalk_full.content_encoder": count(full.content_encoder),
        "styletalk_full.style_encoder": count(full.style_encoder),
        "styletalk_full.decoder": count(full.decoder),
    }
    with torch.inference_mode():
        style = full.encode_style(clip, mask)
        prepared = full.prepare_style(style)
        variants["styletalk_full decode 1 frame"] = lambda: full.decode(full.encode_content(win), style)
        variants["styletalk_full decode 1 frame (pre-mixed style)"] = lambda: full.decode(
            full.encode_content(win), prepared)
        variants["styletalk_full style encode (256 frames, once per clip)"] = lambda: full.encode_style(clip, mask)
        if small is not None:
            params["styletalk_builtin"] = count(small)
            s_style = small.encode_style(clip, mask)
            s_prepared = small.prepare_style(s_style)
            variants["styletalk_builtin decode 1 frame"] = lambda: small.decode(small.encode_content(win), s_style)
            variants["styletalk_builtin decode 1 frame (prepared style)"] = lambda: small.decode(
                small.encode_content(win), s_prepared)
        times = timed_rounds(variants, args.runs)
        if not args.skip_renderer:
            gen = FaceGenerator().eval()
            params["pirenderer_full"] = count(gen)
            src = torch.rand(1, 3, 256, 256) * 2 - 1
            drv = torch.randn(1, 73, 27) * 0.2
            times.update(timed_rounds({"pirenderer_full frame 256x256": lambda: gen(src, drv)}, args.renderer_runs))

    base = statistics.median(times["styletalk_full decode 1 frame"])
    rows = {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "runs": len(t),
               "ratio_to_full_decode": statistics.median(t) / base}
        for name, t in times.items()
    }
    print(f"threads={args.threads} load={os.getloadavg()[0]:.2f}")
    for name, n in params.items():
        print(f"  params {name:<36} {n:>12,}")
    print(f"  {'step':<58} {'median ms':>10} {'min ms':>9} {'ratio':>7}")
    for name, r in rows.items():
        print(f"  {name:<58} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['ratio_to_full_decode']:>7.2f}")
    write_results(args.out, {"benchmark": "networks", "threads": args.threads, "load_avg_1m": os.getloadavg()[0],
                             "torch": torch.__version__, "parameters": params, "steps": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
