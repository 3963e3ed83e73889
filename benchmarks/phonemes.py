"""Phoneme recognizers against the reference labels of the shared samples: accuracy, lag, CPU.

For every backend and every ``source/wav/*.wav`` of the shared samples (16 kHz; compared with
``source/phoneme/*_seq.json``, one phoneme id per 30 fps frame):

- **frame accuracy**: recognized phoneme == reference phoneme, over all reference frames;
- **viseme accuracy**: same after mapping both to the 13 lip-shape groups of ``models.phonemes``
  (``VISEMES``/``PHONEME_TO_VISEME``, Neti et al. 2000: the project's single viseme table);
- **lag** of every label, streaming in ``--chunk-ms`` chunks: *audio* lag = audio fed when the label was
  returned minus the end of its frame; *wall* lag = audio lag + the CPU time of the ``feed`` call that
  returned it (what a real-time session would see on an otherwise idle core). Median and p90;
- **CPU** seconds per audio second (streaming run, process time);
- the same labels from one whole-file ``feed`` + ``flush`` ("whole"), and the streaming/whole agreement.

The shared samples are also where the defaults were chosen (three knobs of the allphone recognizer; see
``engine/recognizer/allphone.py``) and where the allphone label rescorer was fitted (its honest
leave-one-speaker-out figures are in ``engine/recognizer/assets/rescorer.md``), so these numbers are not an
independent test set.

    .venv/bin/python -m benchmarks.phonemes [--backends allphone,allphone-viterbi,words] [--clips N]

A backend spec may carry options after ``:`` (``key=value``, JSON values), each spec a separate row, e.g.
``--backends allphone:lookahead_ms=80,allphone:lookahead_ms=80:rescorer=null``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import write_results
from engine.recognizer import make_recognizer
from engine.recognizer.fit_rescorer import load_clip  # one reader of a sample clip (wav + labels)
from engine.timing import FPS, SAMPLE_RATE
from models.dataset import default_data_dir
from models.phonemes import PHONEME_TO_VISEME, SIL

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "phonemes.json"
DEFAULT_BACKENDS = ("allphone", "allphone-viterbi", "words", "labels")
RATE = SAMPLE_RATE


def _labels(events: list[Any], n: int) -> np.ndarray:
    out = np.full(n, SIL, dtype=np.int64)
    for ev in events:
        if ev.frame < n:
            out[ev.frame] = ev.phoneme
    return out


def run_stream(backend: str, options: dict[str, Any], pcm: np.ndarray, chunk: int) -> dict[str, Any]:
    rec = make_recognizer(backend, **options)
    events: list[Any] = []
    audio_lag: list[float] = []
    wall_lag: list[float] = []
    cpu = 0.0
    fed = 0
    for start in range(0, pcm.size, chunk):
        part = pcm[start : start + chunk]
        t0 = time.process_time()
        evs = rec.feed(part)
        dt = time.process_time() - t0
        cpu += dt
        fed += part.size
        for ev in evs:
            lag = fed / RATE - (ev.frame + 1) / FPS
            audio_lag.append(lag)
            wall_lag.append(lag + dt)
        events.extend(evs)
    t0 = time.process_time()
    events.extend(rec.flush())
    cpu += time.process_time() - t0
    return {"events": events, "audio_lag": audio_lag, "wall_lag": wall_lag, "cpu": cpu, "declared_lag": rec.lag}


def run_whole(backend: str, options: dict[str, Any], pcm: np.ndarray) -> list[Any]:
    rec = make_recognizer(backend, **options)
    return rec.feed(pcm) + rec.flush()


def scores(hyp: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {
        "frame_acc": float(np.mean(hyp == ref)),
        "viseme_acc": float(np.mean(PHONEME_TO_VISEME[hyp] == PHONEME_TO_VISEME[ref])),
    }


def _pct(x: list[float], q: float) -> float | None:
    return float(np.percentile(x, q)) if x else None


def bench_backend(backend: str, options: dict[str, Any], clips: list[str], data: Path, chunk_ms: int) -> dict:
    chunk = RATE * chunk_ms // 1000
    refs, hyp_s, hyp_w, per_clip = [], [], [], {}
    audio_lag: list[float] = []
    wall_lag: list[float] = []
    cpu = seconds = 0.0
    declared = None
    for name in clips:
        pcm, ref = load_clip(data, name)
        if backend == "labels":
            options = {**options, "labels": str(data / "source" / "phoneme" / f"{name}_seq.json")}
        s = run_stream(backend, options, pcm, chunk)
        w = run_whole(backend, options, pcm)
        hs, hw = _labels(s["events"], ref.size), _labels(w, ref.size)
        refs.append(ref)
        hyp_s.append(hs)
        hyp_w.append(hw)
        audio_lag += s["audio_lag"]
        wall_lag += s["wall_lag"]
        cpu += s["cpu"]
        seconds += pcm.size / RATE
        declared = s["declared_lag"]
        per_clip[name] = {"stream": scores(hs, ref), "whole": scores(hw, ref), "frames": int(ref.size)}
        print(f"  {backend:17s} {name:22s} stream {per_clip[name]['stream']['frame_acc']:.3f}"
              f"  whole {per_clip[name]['whole']['frame_acc']:.3f}", flush=True)
    r, s_, w_ = np.concatenate(refs), np.concatenate(hyp_s), np.concatenate(hyp_w)
    return {
        "options": {k: v for k, v in options.items() if k != "labels"},
        "stream": scores(s_, r),
        "whole": scores(w_, r),
        "stream_whole_agreement": float(np.mean(s_ == w_)),
        "lag_audio_ms": {"p50": 1000 * _pct(audio_lag, 50), "p90": 1000 * _pct(audio_lag, 90),
                         "max": 1000 * max(audio_lag)} if audio_lag else None,
        "lag_wall_ms": {"p50": 1000 * _pct(wall_lag, 50), "p90": 1000 * _pct(wall_lag, 90)} if wall_lag else None,
        "declared_lag_ms": None if declared is None else 1000 * declared,
        "cpu_per_audio_s": cpu / seconds,
        "frames": int(r.size),
        "clips": per_clip,
    }


def print_table(results: dict[str, dict]) -> None:
    width = max([18, *map(len, results)])
    head = (f"{'backend':{width}s} {'frame%':>7s} {'vis13%':>7s} {'whole%':>7s} {'agree%':>7s} "
            f"{'lag p50':>8s} {'lag p90':>8s} {'wall p90':>8s} {'cpu s/s':>8s}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        la, lw = r["lag_audio_ms"] or {}, r["lag_wall_ms"] or {}
        print(f"{name:{width}s} {100 * r['stream']['frame_acc']:7.1f} {100 * r['stream']['viseme_acc']:7.1f} "
              f"{100 * r['whole']['frame_acc']:7.1f} "
              f"{100 * r['stream_whole_agreement']:7.1f} {la.get('p50', float('nan')):6.0f}ms "
              f"{la.get('p90', float('nan')):6.0f}ms {lw.get('p90', float('nan')):6.0f}ms "
              f"{r['cpu_per_audio_s']:8.3f}")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"allphone:lookahead_ms=80:rescorer=null"`` -> ``("allphone", {"lookahead_ms": 80, "rescorer": None})``."""
    name, *items = spec.strip().split(":")
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"backend option {item!r} in {spec!r}: expected key=value")
        opts[key.strip()] = _value(value.strip())
    return name.strip(), opts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                    help="comma-separated backend specs: name[:key=value...] (see engine.recognizer.factory)")
    ap.add_argument("--clips", type=int, default=0, help="use only the first N clips (0 = all)")
    ap.add_argument("--chunk-ms", type=int, default=20)
    ap.add_argument("--data", type=Path, default=None, help="styletalk-samples directory")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--set", action="append", default=[], metavar="BACKEND.KEY=VALUE",
                    help="backend option, e.g. allphone.lookahead_ms=150 (repeatable)")
    args = ap.parse_args(argv)
    data = args.data or default_data_dir()
    clips = sorted(p.stem for p in (data / "source" / "wav").glob("*.wav"))
    if args.clips:
        clips = clips[: args.clips]
    if not clips:
        raise SystemExit(f"no clips under {data / 'source' / 'wav'}")
    options: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        backend, _, opt = key.partition(".")
        options.setdefault(backend, {})[opt] = _value(value)
    results = {}
    for spec in args.backends.split(","):
        backend, spec_options = parse_spec(spec)
        print(f"{spec.strip()}:", flush=True)
        opts = {**options.get(backend, {}), **spec_options}
        results[spec.strip()] = bench_backend(backend, opts, clips, data, args.chunk_ms)
    out = {
        "what": "phoneme recognizers vs reference labels of the shared samples (see benchmarks/phonemes.py)",
        "clips": clips,
        "chunk_ms": args.chunk_ms,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "results": results,
    }
    print()
    print_table(results)
    write_results(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
