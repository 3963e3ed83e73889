"""Settings side by side in the real browser: ``benchmarks.browser_e2e`` runs for each variant in turn, round after
round (A B C A B C ...), so that a shared machine's drifting load falls on every variant alike.

    python -m benchmarks.browser_ab --rounds 3 \\
        --variant "aiortc_mic=--set server.mic_prefetch_packets=4" \\
        --variant "arrival_mic=--set server.mic_prefetch_packets=0"

Each run: ``--seconds`` of speech bursts, a short silent control, no as-sent reference (its A/V offset does not
depend on the wire settings). Prints per variant the medians over its runs of each run's p50 (and p95) and the
ratio to the first variant; writes every run's summary and load to ``benchmarks/results/browser_ab.json``
(``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import browser_e2e
from benchmarks.results_io import run_header, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "browser_ab.json"
METRICS = [  # (summary key, field) compared across variants
    ("onset_to_visible_mouth_ms", "p50"), ("onset_to_visible_mouth_ms", "p95"),
    ("onset_to_server_sent_mouth_ms", "p50"), ("onset_to_arrived_mouth_ms", "p50"),
    ("onset_to_remote_audio_ms", "p50"), ("onset_to_remote_audio_ms", "p95"),
    ("onset_to_remote_audio_tap_ms", "p50"), ("av_offset_seen_ms", "p50"), ("av_playout_skew_ms", "p50"),
    ("server_mic_hold_ms", "p50"), ("server_audio_send_hold_ms", "p50"), ("mic_packet_ms", None),
    ("fps_presented", None), ("freezes", None), ("video_jitter_buffer_ms", None), ("audio_jitter_buffer_ms", None),
]


def value(summary: dict[str, Any], key: str, field: str | None) -> float | None:
    v = summary.get(key)
    if field is not None:
        v = v.get(field) if isinstance(v, dict) else None
    return None if v is None else float(v)


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, field in METRICS:
        vals = [v for r in runs if (v := value(r["summary"], key, field)) is not None]
        out[f"{key}.{field}" if field else key] = statistics.median(vals) if vals else None
    return out


def frame_accounting(speech: dict[str, Any]) -> dict[str, Any]:
    """Where frames went in one run: the server's output (sent, repeated late, never rendered in time, skipped by
    a lagging consumer, send lateness) and the page's (decoded, dropped, presented, gaps between presentations)."""
    eng = speech.get("server_engine") or {}
    video = speech.get("video") or {}
    transport = speech.get("server_transport") or {}
    core_skipped = (eng.get("core") or {}).get("skipped_frames")
    dropped = eng.get("dropped_frames")
    return {
        "server_sent": eng.get("frames_sent"), "server_late": eng.get("late_frames"),
        "server_not_rendered": core_skipped,
        "server_output_skipped": dropped - core_skipped if dropped is not None and core_skipped is not None else None,
        "server_send_error_ms": eng.get("send_error_ms"),
        "server_video_send": transport.get("video_send"),
        "server_video_rate_changes": transport.get("video_rate_changes"),
        "page_decoded": video.get("framesDecoded"), "page_dropped": video.get("framesDropped"),
        "page_presented": speech.get("frames_presented"), "page_frame_gap_ms": speech.get("frame_gap_ms"),
        "page_keyframes": video.get("keyFramesDecoded"), "page_freezes": video.get("freezeCount"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.browser_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=ARGS",
                        help="a name and the browser_e2e arguments of one variant (e.g. '--set k=v --hint x=y')")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="speech measured per run")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    variants = []
    for item in args.variant:
        name, sep, rest = item.partition("=")
        if not sep:
            parser.error(f"--variant {item}: use NAME=ARGS")
        variants.append((name, shlex.split(rest)))

    started, load0 = time.time(), list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="browser-ab-") as tmp:
        for r in range(args.rounds):
            for name, extra in variants:
                out = Path(tmp) / f"{name}-{r}.json"
                load = os.getloadavg()[0]
                print(f"--- round {r + 1}/{args.rounds}: {name} {' '.join(extra)} (load {load:.1f})", flush=True)
                code = browser_e2e.main(["--seconds", str(args.seconds), "--control-seconds", "6", "--clicks", "1",
                                         "--no-reference", *extra, "--out", str(out)])
                if code != 0:
                    print(f"run failed ({code})", file=sys.stderr)
                    continue
                data = json.loads(out.read_text())
                runs[name].append({"round": r, "load_at_start": load, "load_at_end": os.getloadavg()[0],
                                   "date": data["date"], "summary": data["summary"],
                                   "answer_extmaps": data["speech"].get("answer_extmaps"),
                                   "server_engine_late_frames": (data["speech"].get("server_engine") or {})
                                   .get("late_frames"),
                                   "frames": frame_accounting(data["speech"])})
    table = {name: medians(rs) for name, rs in runs.items()}
    base = table[variants[0][0]]
    print(f"\nmedians over {args.rounds} rounds (each run's p50/p95); ratio to {variants[0][0]}")
    for key in base:
        cells = []
        for name, _ in variants:
            v, b = table[name][key], base[key]
            ratio = f" (x{v / b:.2f})" if v is not None and b not in (None, 0) and name != variants[0][0] else ""
            cells.append(f"{name} {'-' if v is None else f'{v:.1f}'}{ratio}")
        print(f"{key}: " + " | ".join(cells))
    result = {**run_header("browser_ab", started, load0), "rounds": args.rounds, "seconds": args.seconds,
              "variants": {name: extra for name, extra in variants}, "medians": table, "runs": runs}
    write_results(args.out, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
