"""CPU cost of the PIRenderer FaceGenerator, full official config, random weights, 256×256, batch 1.

Variants, timed round-robin (one run of each per round, so load from other processes hits all alike):

* ``reference``  – ``forward`` evaluating the editing res blocks' discarded branch, i.e. the reference code's work;
* ``forward``    – ``forward`` as implemented here (dead branch skipped; identical output);
* ``streaming``  – ``PIRendererRenderer.render`` of one frame: descriptor + cached-source render + uint8 conversion.

Per-avatar one-off costs (``encode_source``) and the mapping net alone (``descriptor``) are timed separately.
FLOPs come from ``torch.utils.flop_counter`` on the meta device. Medians of ``--runs`` runs (default 20);
"paired" = median over rounds of the same-round ratio to ``reference`` (robust to load changes).

    .venv/bin/python -m benchmarks.pirenderer [--runs 20] [--threads 2] [--size 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.results_io import write_results
from engine.renderer_pir import PIRendererRenderer
from models.pirenderer import FaceGenerator, RendererConfig, set_compute_discarded_branch

RESULTS = Path(__file__).resolve().parent / "results" / "pirenderer.json"


def _gflops(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_flops(size: int) -> dict[str, float]:
    """GFLOPs per frame (2 per multiply-add) of each variant, counted on the meta device (no compute)."""
    with torch.device("meta"), torch.inference_mode():
        model = FaceGenerator().eval()
        src, win = torch.empty(1, 3, size, size), torch.empty(1, 73, 27)
        set_compute_discarded_branch(model, True)
        ref = _gflops(lambda: model(src, win))
        set_compute_discarded_branch(model, False)
        fwd = _gflops(lambda: model(src, win))
        cache = model.encode_source(src)
        z = model.descriptor(win)
        return {
            "reference": ref,
            "forward": fwd,
            "streaming": _gflops(lambda: model.render_cached(cache, z)) + _gflops(lambda: model.descriptor(win)),
            "encode_source": _gflops(lambda: model.encode_source(src)),
            "descriptor": _gflops(lambda: model.descriptor(win)),
        }


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per variant first")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--size", type=int, default=256, help="image side (multiple of 32)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FaceGenerator(RendererConfig()).eval()
    params = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("mapping_net", "warpping_net", "editing_net")}  # fmt: skip
    params["total"] = sum(params.values())

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    exp = rng.normal(size=(1, 64)).astype(np.float32)
    pose = rng.normal(size=(1, 9)).astype(np.float32)
    renderer = PIRendererRenderer(model, size=args.size, lookahead=0)
    state = renderer.prepare(image)
    src = state.cache.image
    win = torch.from_numpy(rng.normal(size=(1, 73, 27)).astype(np.float32))

    def reference() -> None:
        set_compute_discarded_branch(model, True)
        model(src, win)
        set_compute_discarded_branch(model, False)

    loop: dict[str, Callable[[], object]] = {
        "reference": reference,
        "forward": lambda: model(src, win),
        "streaming": lambda: renderer.render(state, exp, pose),
    }
    single: dict[str, Callable[[], object]] = {
        "encode_source": lambda: model.encode_source(src),
        "descriptor": lambda: model.descriptor(win),
    }
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in [*loop, *single]}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in [*loop.values(), *single.values()]:
                fn()
        for r in range(args.runs):
            for name, fn in loop.items():
                times[name].append(_time(fn))
            print(f"  round {r + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items() if v),
                  flush=True)  # fmt: skip
        for name, fn in single.items():
            times[name] = [_time(fn) for _ in range(args.runs)]
    load_after = os.getloadavg()

    flops = count_flops(args.size)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {
        k: {
            "median_ms": med[k],
            "min_ms": min(times[k]),
            "max_ms": max(times[k]),
            "gflops": flops[k],
            "ratio_to_reference": med[k] / med["reference"],
            # median over rounds of (this variant / reference in the same round): robust to load drift
            "paired_ratio_to_reference": (
                statistics.median(a / b for a, b in zip(times[k], times["reference"], strict=True))
                if k in loop
                else None
            ),
            "runs_ms": times[k],
        }
        for k in times
    }
    result: dict[str, object] = {
        "benchmark": "pirenderer",
        "config": "official full (renderer_keys.json), random weights seed 0",
        "image_size": args.size,
        "batch": 1,
        "threads": args.threads,
        "runs": args.runs,
        "parameters": params,
        "variants": rows,
        "torch": torch.__version__,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "loadavg_1min_before_after": [load_before[0], load_after[0]],
        "note": "shared machine: medians and same-round ratios are meaningful, absolute ms depend on the load",
    }
    print(f"\nPIRenderer full config, {args.size}x{args.size}, B=1, threads={args.threads}, runs={args.runs}")
    print(f"parameters: {params['total']:,} (mapping {params['mapping_net']:,}, warping {params['warpping_net']:,}, "
          f"editing {params['editing_net']:,})")  # fmt: skip
    print(f"{'variant':<14}{'median ms':>11}{'min ms':>10}{'GFLOP':>9}{'vs reference':>14}{'paired':>9}")
    for k, row in rows.items():
        paired = row["paired_ratio_to_reference"]
        print(f"{k:<14}{row['median_ms']:>11.1f}{row['min_ms']:>10.1f}{row['gflops']:>9.2f}"
              f"{row['ratio_to_reference']:>14.3f}{'' if paired is None else f'{paired:.3f}':>9}")  # fmt: skip
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    write_results(args.out, result, indent=1)
    return result


if __name__ == "__main__":
    main()
