"""Latency / quality benchmark of the live engine, at every decoder lookahead.

1. **lookahead quality** (offline, exact): for the official sample phoneme sequences and several style
   clips, the expression decoded with lookahead L (0..5) and the unknown future padded with SIL or with the
   last stable phoneme, against full lookahead (L = 5 = the offline decoder). Error on the 13 mouth
   (lower-face) coefficients: RMSE and RMSE relative to their spread during speech.
2. **live latency** (real time, one session per L): utterances separated by silence are pushed in real time;
   speech onset = the reference label's first non-silent frame, at the wall time its audio was pushed.
   First mouth motion = the first *sent* frame whose mouth coefficients (and, separately, whose mouth
   pixels) leave their resting value - measured on the expression coefficients and on the rendered frames.
   Plus the per-stage breakdown (recognizer, wait, decode, render, queue, total) p50/p95/p99.
3. **headroom**: decode + render throughput of the model worker (one thread) -> sessions that hold 30 fps.
4. **drift** (``--drift S``, e.g. 60 or 600): one long real-time session; max |sent - due| for video and
   audio, the A/V offset, frames lost.

    python -m benchmarks.latency                  # all sections (~2-3 min), writes benchmarks/results/latency.json
    python -m benchmarks.latency --quick          # shorter live runs
    python -m benchmarks.latency --drift 600      # add the 10-minute drift run
    python -m benchmarks.latency --sections quality   # only the offline lookahead-quality table
    python -m benchmarks.latency --set recognizer.backend=labels   # engine overrides as for `speak`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.results_io import write_results
from engine.config import Config, add_config_arguments, config_from_args
from engine.decoder import ExpressionDecoder
from engine.ring import PhonemeRing
from engine.timing import DEFAULT_TIMEBASE, FPS, SAMPLE_RATE
from models.dataset import default_data_dir
from models.phonemes import SIL, phoneme_windows
from models.styletalk import LOWER_FACE3D_INDICES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
SHARED = default_data_dir()
MOUTH = np.array(LOWER_FACE3D_INDICES)
MOTION_FRACTION = 0.1  # "first motion": at least this fraction of the typical mouth movement while speaking



# ------------------------------------------------------------------------------------------------ inputs
def sample_clips() -> dict[str, tuple[np.ndarray, Path]]:
    """Reference phoneme labels (30 fps) and the matching wav of each official sample."""
    out = {}
    for seq in sorted((SHARED / "source" / "phoneme").glob("*_seq.json")):
        name = seq.name[: -len("_seq.json")]
        wav = SHARED / "source" / "wav" / f"{name}.wav"
        if wav.is_file():
            out[name] = (np.array(json.loads(seq.read_text()), np.int64), wav)
    return out


def style_codes(decoder: ExpressionDecoder, styles: Any, n: int = 4) -> dict[str, np.ndarray]:
    """The runtime's styles (built-in codes) plus a few official style clips encoded by this decoder."""
    codes = {name: np.asarray(styles.get(name)) for name in styles.names()[:n]}
    from models.clips import load_style_clip

    for p in sorted((SHARED / "style" / "3dmm").glob("*.mat"))[:n]:
        codes[p.stem] = decoder.encode_style(load_style_clip(p))
    return codes


# ------------------------------------------------------------------------------------- 1. lookahead quality
def lookahead_quality(decoder: ExpressionDecoder, codes: dict[str, np.ndarray],
                      clips: dict[str, tuple[np.ndarray, Path]]) -> dict[str, Any]:
    """Mouth-coefficient error of lookahead L (with SIL / repeat padding) against full lookahead."""
    table: dict[str, dict[str, float]] = {}
    refs: dict[tuple[str, str], np.ndarray] = {}
    for pad in ("sil", "repeat", "hold"):
        for lookahead in range(0, 6):
            sq_err = sq_sig = 0.0
            n_err = n_sig = 0
            for name, (seq, _) in clips.items():
                ring = PhonemeRing(capacity=max(64, len(seq) + 16))
                ring.extend((f, int(p)) for f, p in enumerate(seq))
                ring.close(len(seq))
                # exactly L future frames known, as live; past the clip's end SIL is known (as offline)
                limited = np.stack([ring.window(t, known_end=t + lookahead + 1, pad=pad) for t in range(len(seq))])
                speech = seq != SIL
                for style, code in codes.items():
                    key = (name, style)
                    if key not in refs:
                        refs[key] = decoder.decode(phoneme_windows(seq), code)[:, MOUTH]
                    ref = refs[key]
                    got = decoder.decode(limited, code)[:, MOUTH]
                    sq_err += float(((got - ref) ** 2).sum())
                    n_err += got.size
                    sq_sig += float(((ref[speech] - ref[speech].mean(axis=0)) ** 2).sum())
                    n_sig += int(speech.sum()) * ref.shape[1]
            rmse = (sq_err / n_err) ** 0.5
            table[f"{pad}/L{lookahead}"] = {"pad": pad, "lookahead": lookahead, "mouth_rmse": rmse,
                                            "relative": rmse / max(1e-12, (sq_sig / max(1, n_sig)) ** 0.5)}
    return table


# ------------------------------------------------------------------------------------------- 2. live latency
def utterance_track(clips: dict[str, tuple[np.ndarray, Path]], seconds: float, lead_s: float = 1.0,
                    clip_s: float = 3.0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Silence + speech excerpts, repeated: (pcm int16 16 kHz, labels per frame, onset frames)."""
    from engine.sources import decode_audio_file

    pcm_parts, lab_parts, onsets = [], [], []
    frames = 0
    names = list(clips)
    i = 0
    while frames < seconds * FPS:
        seq, wav = clips[names[i % len(names)]]
        i += 1
        audio = decode_audio_file(wav)
        lead = int(lead_s * FPS)
        start = int(np.argmax(seq != SIL))  # skip a leading pause so the excerpt starts with speech
        n = int(clip_s * FPS)
        lab = seq[start : start + n]
        pcm = audio[start * SAMPLE_RATE // FPS : (start + lab.shape[0]) * SAMPLE_RATE // FPS]
        onsets.append(frames + lead + int(np.argmax(lab != SIL)))
        lab_parts += [np.full(lead, SIL, np.int64), lab]
        pcm_parts += [np.zeros(lead * SAMPLE_RATE // FPS, np.int16), pcm]
        frames += lead + lab.shape[0]
    lab_parts.append(np.full(FPS, SIL, np.int64))
    pcm_parts.append(np.zeros(SAMPLE_RATE, np.int16))
    labels = np.concatenate(lab_parts)
    pcm = np.concatenate(pcm_parts)
    tail = labels.shape[0] * SAMPLE_RATE // FPS + DEFAULT_TIMEBASE.frame_group_samples - pcm.shape[0]
    pcm = np.concatenate([pcm, np.zeros(max(0, tail), np.int16)])
    return pcm, labels, onsets


def _first_motion(values: np.ndarray, indices: np.ndarray, onset: int, threshold: float,
                  window: tuple[int, int] = (-10, 60)) -> int | None:
    sel = (indices >= onset + window[0]) & (indices < onset + window[1])
    hit = np.flatnonzero(sel & (values > threshold))
    return int(indices[hit[0]]) if hit.size else None


async def live_run(runtime: Any, pcm: np.ndarray, onsets: list[int], lookahead: int,
                   recognizer: Any | None = None) -> dict[str, Any]:
    """One real-time session; returns onset->motion latencies and the session's stage metrics."""
    runtime.config.decoder.lookahead = lookahead
    session = runtime.new_session(f"bench-L{lookahead}", **({"recognizer": recognizer} if recognizer else {}))
    await session.start()
    tb = runtime.timebase
    push_wall: dict[int, float] = {}
    chunk = tb.chunk_samples(runtime.config.audio.chunk_ms)
    n_frames = tb.frames_complete(pcm.shape[0]) - 1
    frames: list[Any] = []

    async def feed() -> None:
        t0 = time.monotonic()
        for k, i in enumerate(range(0, pcm.shape[0], chunk)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk / tb.sample_rate - time.monotonic()))
            session.push_audio(pcm[i : i + chunk], tb.sample_rate)
            push_wall[i + chunk] = time.monotonic()

    async def video() -> None:
        while True:
            f = await session.next_video_frame()
            frames.append((f.index, f.stamps["sent"], f.exp, f.image))
            if f.index >= n_frames:
                return

    async def audio() -> None:
        while True:
            c = await session.next_audio_chunk()
            if c.pts * FPS >= n_frames:
                return

    await asyncio.gather(feed(), video(), audio())
    stats = session.stats()
    origin = session.clock.origin if session.clock else 0.0
    idle = runtime.decoder.idle(session.core.styles.code_at(0))
    await session.close()

    def onset_wall(frame: int) -> float:
        sample = tb.frame_start_sample(frame) + 1
        ends = sorted(e for e in push_wall if e >= sample)
        return push_wall[ends[0]] if ends else origin + float(tb.frame_pts(frame))

    idx = np.array([f[0] for f in frames])
    sent = {f[0]: f[1] for f in frames}
    # "first motion" = the first frame whose mouth departs from rest by more than the rest's own jitter
    # (3x its p95 just before the onsets) and by at least MOTION_FRACTION of the typical speech movement
    def threshold(dev: np.ndarray, at: np.ndarray) -> float:
        before = np.zeros(at.shape, bool)
        speaking = np.zeros(at.shape, bool)
        for o in onsets:
            before |= (at >= o - 25) & (at < o - 12)
            speaking |= (at >= o + 5) & (at < o + 60)
        noise = 3.0 * float(np.percentile(dev[before], 95)) if before.any() else 0.0
        typical = float(np.median(dev[speaking])) if speaking.any() else 1.0
        return max(noise, MOTION_FRACTION * typical, 1e-6)

    exp_rows = [(f[0], f[2]) for f in frames if f[2] is not None]
    e_idx = np.array([i for i, _ in exp_rows])
    e_dev = np.array([float(np.abs(e[MOUTH] - idle[MOUTH]).max()) for _, e in exp_rows])
    e_thr = threshold(e_dev, e_idx)
    # pixels: mean abs difference of the lower-middle face region (mouth) from the resting image
    size = frames[0][3].shape[0]
    rows = slice(int(0.58 * size), int(0.80 * size))
    cols = slice(int(0.33 * size), int(0.67 * size))
    rest = np.median(np.stack([f[3][rows, cols].astype(np.float32) for f in frames
                               if any(o - 25 <= f[0] < o - 12 for o in onsets)] or
                              [frames[0][3][rows, cols].astype(np.float32)]), axis=0)
    p_dev = np.array([float(np.abs(f[3][rows, cols].astype(np.float32) - rest).mean()) for f in frames])
    p_thr = threshold(p_dev, idx)
    exp_lat, pix_lat, offsets = [], [], []
    for o in onsets:
        if o + 60 > n_frames:
            continue
        w = onset_wall(o)
        m = _first_motion(e_dev, e_idx, o, e_thr)
        if m is not None and m in sent:
            exp_lat.append((sent[m] - w) * 1000.0)
            offsets.append(m - o)
        m = _first_motion(p_dev, idx, o, p_thr)
        if m is not None:
            pix_lat.append((sent[m] - w) * 1000.0)
    return {
        "lookahead": lookahead,
        "delay_ms": stats["delay_ms"],
        "onsets": len(exp_lat),
        "onset_to_mouth_exp_ms": _pct(exp_lat),
        "onset_to_mouth_pixels_ms": _pct(pix_lat),
        "motion_frame_minus_onset_frame": _pct([float(x) for x in offsets]),
        "stages_ms": stats["latency_ms"],
        "frames_sent": stats["frames_sent"],
        "late_frames": stats["late_frames"],
        "dropped_frames": stats["dropped_frames"],
        "forced_frames": stats["core"]["forced_frames"],
        "av_offset_ms": stats["av_offset_ms"],
    }


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "n": len(values)}


# ---------------------------------------------------------------------------------------------- 3. headroom
def headroom(runtime: Any, seconds: float = 4.0) -> dict[str, Any]:
    """Frames/s the model worker sustains (decode in batches of 2 + render 1 by 1) -> concurrent sessions."""
    seq = np.random.default_rng(0).integers(0, 41, 4096)
    windows = phoneme_windows(seq)
    code = runtime.styles.get(runtime.config.style.default)
    pose = np.repeat(runtime.pose[None], 2, axis=0)

    def work() -> dict[str, float]:
        state = runtime.renderer.prepare(runtime.avatar)
        t_dec = t_ren = 0.0
        n = 0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            exp = runtime.decoder.decode(windows[n : n + 2], code)
            t1 = time.perf_counter()
            for j in range(2):
                runtime.renderer.render(state, exp[j : j + 1], pose[j : j + 1])
            t2 = time.perf_counter()
            t_dec += t1 - t0
            t_ren += t2 - t1
            n += 2
        return {"frames": n, "decode_ms_per_frame": 1000 * t_dec / n, "render_ms_per_frame": 1000 * t_ren / n,
                "fps_capacity": n / (t_dec + t_ren)}

    r = runtime.worker.submit(work).result()
    r["sessions_at_30fps"] = int(r["fps_capacity"] // 30)
    return r


# ------------------------------------------------------------------------------------------------- 4. drift
async def drift_run(runtime: Any, seconds: float) -> dict[str, Any]:
    session = runtime.new_session(f"drift-{seconds:.0f}")
    await session.start()
    rng = np.random.default_rng(0)
    n = int(seconds * FPS)
    sent_v: list[tuple[int, float, float]] = []
    sent_a: list[tuple[float, float]] = []

    async def feed() -> None:
        t0 = time.monotonic()
        for k in range(int(seconds * 50)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
            session.push_audio((rng.standard_normal(320) * 1500).astype(np.int16), 16000)

    async def video() -> None:
        for _ in range(n):
            f = await session.next_video_frame()
            sent_v.append((f.index, f.stamps["sent"], f.stamps["due"]))

    async def audio() -> None:
        for _ in range(int(seconds * 50)):
            c = await session.next_audio_chunk()
            sent_a.append((float(c.pts), time.monotonic()))

    await asyncio.gather(feed(), video(), audio())
    stats = session.stats()
    clock = session.clock
    await session.close()
    v_err = np.array([s - d for _, s, d in sent_v])
    a_err = np.array([s - clock.due(p) for p, s in sent_a]) if clock else np.zeros(1)
    indices = [i for i, _, _ in sent_v]
    return {
        "seconds": seconds,
        "frames": len(sent_v),
        "frames_skipped": int(indices[-1] - indices[0] + 1 - len(indices)),
        "video_send_error_ms": {"max": float(np.abs(v_err).max() * 1000), "p99": float(np.percentile(v_err, 99) * 1000),
                                "first_min_mean": float(v_err[: FPS * 60].mean() * 1000),
                                "last_min_mean": float(v_err[-FPS * 60 :].mean() * 1000)},
        "audio_send_error_ms": {"max": float(np.abs(a_err).max() * 1000)},
        "av_offset_ms": stats["av_offset_ms"],
        "late_frames": stats["late_frames"],
        "fps": (len(sent_v) - 1) / max(1e-9, sent_v[-1][1] - sent_v[0][1]),
        "fresh_fps": stats["fresh_frames"] / max(1e-9, sent_v[-1][1] - sent_v[0][1]),
    }


# -------------------------------------------------------------------------------------------------- main
def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short live runs (8 s per lookahead)")
    parser.add_argument("--lookaheads", default="0,1,2,3,4,5", help="live runs at these lookaheads")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of input per live run")
    parser.add_argument("--drift", type=float, default=0.0, help="add a drift run of this many seconds (60, 600)")
    parser.add_argument("--sections", default="quality,headroom,live",
                        help="comma-separated parts to run: quality, headroom, live (drift: see --drift)")
    parser.add_argument("--quality-clips", type=int, default=3, help="sample clips in the quality part")
    parser.add_argument("--quality-styles", type=int, default=3, help="style codes in the quality part")
    parser.add_argument("--output", default=str(RESULTS))
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config: Config = config_from_args(args)
    torch.set_num_threads(config.decoder.threads)
    clips = sample_clips()
    if not clips:
        print(f"no sample data under {SHARED} (set STYLETALK_DATA)", file=sys.stderr)
        return 2
    from engine.runtime import (
        BUILTIN_CHECKPOINT,
        EngineRuntime,
        build_decoder,
        build_renderer,
        build_styles,
        load_avatar,
    )

    decoder = build_decoder(config)
    styles = build_styles(config, decoder)
    weights = config.decoder.checkpoint or (str(BUILTIN_CHECKPOINT) if BUILTIN_CHECKPOINT.is_file() else "random")
    result: dict[str, Any] = {
        "benchmark": "latency",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_avg_1m_at_start": os.getloadavg()[0]},
        "config": {"recognizer": config.recognizer.backend, "renderer": config.renderer.kind,
                   "size": config.renderer.size, "accelerator": decoder.accelerator,
                   "threads": config.decoder.threads, "decoder_weights": weights},
    }
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if "quality" in sections:
        codes = dict(list(style_codes(decoder, styles).items())[: args.quality_styles])
        q_clips = dict(list(clips.items())[: args.quality_clips])
        t0 = time.perf_counter()
        quality = lookahead_quality(decoder, codes, q_clips)
        result["lookahead_quality"] = {"styles": list(codes), "clips": list(q_clips), "rows": quality,
                                       "seconds": time.perf_counter() - t0}
        print("\nlookahead quality: mouth-coefficient error vs full lookahead (L=5)")
        rows = [["pad", "L", "latency +ms", "mouth RMSE", "relative"]]
        for r in quality.values():
            rows.append([r["pad"], str(r["lookahead"]), f"{r['lookahead'] * 1000 / FPS:.0f}",
                         f"{r['mouth_rmse']:.4f}", f"{r['relative']:.3f}"])
        print(_table(rows))
    if not sections & {"headroom", "live"} and not args.drift:
        _write(result, args.output)
        return 0

    runtime = EngineRuntime(config, decoder, build_renderer(config), styles, load_avatar(config))
    runtime.warmup()
    result["config"]["frame_compute_ms"] = (runtime.frame_compute_s or 0) * 1000
    try:
        if "headroom" in sections:
            result["headroom"] = headroom(runtime)
            h = result["headroom"]
            print(f"\nheadroom: decode {h['decode_ms_per_frame']:.1f} ms/frame + render "
                  f"{h['render_ms_per_frame']:.1f} ms/frame -> {h['fps_capacity']:.0f} frames/s on one worker "
                  f"thread = {h['sessions_at_30fps']} session(s) at 30 fps")

        if "live" in sections:
            seconds = args.seconds or (8.0 if args.quick else 16.0)
            pcm, labels, onsets = utterance_track(clips, seconds)
            recognizer = None
            if config.recognizer.backend == "labels":
                recognizer = "labels"
            live = []
            for lookahead in [int(x) for x in args.lookaheads.split(",")]:
                rec = _labels_recognizer(labels) if recognizer else None
                live.append(asyncio.run(live_run(runtime, pcm, onsets, lookahead, rec)))
            result["live"] = live
            print(f"\nlive sessions ({seconds:.0f} s, {len(onsets)} onsets each, recognizer "
                  f"{config.recognizer.backend}): speech onset -> first mouth motion on sent frames")
            rows = [["L", "A/V delay", "exp p50", "exp p95", "pix p50", "pix p95", "motion-onset", "recog p50",
                     "decode p95", "render p95", "total p95", "late", "forced"]]
            for r in live:
                e, p, st = r["onset_to_mouth_exp_ms"], r["onset_to_mouth_pixels_ms"], r["stages_ms"]
                rows.append([str(r["lookahead"]), _f(r["delay_ms"]), _f(e["p50"]), _f(e["p95"]), _f(p["p50"]),
                             _f(p["p95"]), _f(r["motion_frame_minus_onset_frame"]["p50"], 1),
                             _f(st["recognize"]["p50"]), _f(st["decode"]["p95"], 1), _f(st["render"]["p95"], 1),
                             _f(st["total"]["p95"]), str(r["late_frames"]), str(r["forced_frames"])])
            print(_table(rows))
        if args.drift:
            result["drift"] = asyncio.run(drift_run(runtime, args.drift))
            d = result["drift"]
            print(f"\ndrift ({d['seconds']:.0f} s): {d['frames']} frames, skipped {d['frames_skipped']}, video send "
                  f"error max {d['video_send_error_ms']['max']:.1f} ms, audio max "
                  f"{d['audio_send_error_ms']['max']:.1f} ms, A/V offset {d['av_offset_ms']}")
    finally:
        runtime.close()
    _write(result, args.output)
    return 0


def _write(result: dict[str, Any], path: str) -> None:
    write_results(path, result, indent=1)


def _labels_recognizer(labels: np.ndarray) -> Any:
    """The ``labels`` backend fed with the track's reference labels (lag-free recognition)."""
    from engine.recognizer import make_recognizer

    return make_recognizer("labels", labels=[int(x) for x in labels])


if __name__ == "__main__":
    sys.exit(main())
