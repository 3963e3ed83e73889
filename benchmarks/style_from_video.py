"""Style from video (issue 18): extract every sample clip that has a video and a .mat, compare with the .mat.

    .venv/bin/python -m benchmarks.style_from_video [--cache DIR] [--sheet-clips N]

For each of the 25 clips (8 source + 17 style) the inverse (map, prior, noise, rest and clip-level statistics;
engine/inverse_fit.fit_params) is refitted without the clip (leave-one-clip-out, the ``methods`` table) and again
without every clip of its speaker (leave-one-speaker-out, ``methods_by_speaker``: furious_talk2 has 6 clips,
feifeili 3, Obama, andrew and furious_talk1 2 each, so a clip-out fit still knows the scored person's face), then
the clip's video landmarks (the product's own tracker, engine/style_extract.video_landmarks) are solved. Methods:

* ``ridge``     - plain isotropic ridge inversion of the shipped map, no head-angle terms, no prior (reference);
* ``naive``     - the regularised inverse (Gaussian prior, head-angle terms, 1-frame smoothing) with the sample
  population's average face standing in for the person's (the issue's calibration setting: "before");
* ``centred``   - the naive clip minus its own mean plus the prior mean (a style without its static part);
* ``rest``      - the person's least-active frames (10 % smallest inner-lip gap) read as the model's neutral
  expression: the clip is their deviation from rest placed on the model's neutral ("after");
* ``rest+w``    - ``rest`` with a share w ∈ {0, 0.25, 0.5, 0.75, 1} of the rest frames' solved expression kept
  (w chosen leave-one-clip-out on the other 24 clips' identification + output score; w = 1 is ``naive``);
* ``two-level ×g`` - the product (ExpressionInverse.solve_clip): the clip's average solved under a prior over
  clip averages with the person's face shape as a separate unknown (its covariance learned from the other
  speakers), the motion about it under the within-clip prior, the average pushed g times from the average over
  clips (g = 1: the plain posterior mean; the product ships models.expression_inverse.STATIC_GAIN);
* ``two-level, g chosen by speaker`` - g ∈ GAINS chosen, for each held-out speaker, on the other speakers' clips;
* ``oracle …``  - the .mat expression itself with its static part replaced (rest → the model's neutral, or the
  clip mean → the population mean): what those ideas could reach with perfect landmarks; and the split of a
  style into its average and its motion (the .mat average with the solved motion, the solved average with the
  .mat motion): the style code depends almost only on the average.

Metrics per method (means over clips): lower-face r (mean per-coefficient Pearson r of the 13 lower-face
coefficients, best offset within ±3 of the clip's row↔frame pairing), upper-face r, mouth-opening r (inner-lip
gap through the forward map), cosine of the extracted clip's style code with its .mat clip's code, own-clip
identification (the extracted code's nearest .mat code by cosine is its own clip's, among all 25; "speaker id":
the nearest is one of the same speaker's clips), and "closer":
the share of clips where decoding one sentence (andrew_clip_2's phonemes, the checkpoint's held-out clip) with
the extracted style lands closer (mean |Δ| of the 64 coefficients) to the .mat-style output than the neutral
style's output does. Also extraction seconds per video second on one core (median, load average recorded), and
a sheet: the same sentence rendered with the .mat style and with the extracted style.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import write_results
from engine.inverse_fit import FitClip, compare, fit_params, interpolate_missing
from models.dataset import default_data_dir, load_source_clip
from models.expression_inverse import (
    MAP_PATH,
    STATIC_GAIN,
    ExpressionInverse,
    InverseParams,
    mouth_opening_from_exp,
    rest_frames,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "benchmarks" / "results" / "style_from_video.json"
OUT_SHEET = ROOT / "benchmarks" / "results" / "style_from_video_sheet.png"
SENTENCE = ("andrew_clip_2", 0, 150)  # source clip, first frame, frames: the sentence every style speaks
WEIGHTS = (0.0, 0.25, 0.5, 0.75)
GAINS = (1.0, 1.5, 2.0, 2.5, 3.0)
PRODUCT = f"two-level ×{STATIC_GAIN:g}"


def speaker(clip: str) -> str:
    """The person in a sample clip (``furious_talk2_clip3`` → ``furious_talk2``)."""
    return re.sub(r"_clip.*$", "", clip)


def clip_landmarks(data: Path, cache: Path | None) -> tuple[list[FitClip], dict[str, float]]:
    """Landmarks of every clip through the product's tracker; per-clip seconds of work per video second."""
    import scipy.io

    from engine.avatar import _dlib_models
    from engine.style_extract import ExtractLimits, video_landmarks

    _dlib_models()
    clips, speed = [], {}
    limits = ExtractLimits(max_seconds=600.0)
    for group in ("source", "style"):
        for mat in sorted((data / group / "3dmm").glob("*.mat")):
            video = data / group / "video" / f"{mat.stem}.mp4"
            if not video.is_file():
                continue
            cached = cache / f"{group}_{mat.stem}.npz" if cache else None
            if cached and cached.is_file():
                with np.load(cached) as z:
                    lmk, rtf = z["lmk"], float(z["rtf"])
            else:
                t0 = time.perf_counter()
                lmk, fps, seconds, _ = video_landmarks(video, limits)
                rtf = (time.perf_counter() - t0) / seconds
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, lmk=lmk, rtf=rtf)
            coeff = scipy.io.loadmat(str(mat))["coeff"].astype(np.float32)
            clips.append(FitClip(mat.stem, group, lmk, coeff))
            speed[mat.stem] = rtf
            print(f"  {group}/{mat.stem}: {len(lmk)} frames, {rtf:.2f} s per video second", file=sys.stderr)
    return clips, speed


def time_extraction(data: Path, names: list[str]) -> dict:
    """The whole product path (engine.style_extract.extract_style) on a few clips: wall and CPU seconds per
    video second. CPU time is the one-core figure that the other processes on a shared machine do not inflate."""
    from engine.style_extract import ExtractLimits, extract_style

    out = {}
    for name in names:
        group = "source" if (data / "source" / "video" / f"{name}.mp4").is_file() else "style"
        path = data / group / "video" / f"{name}.mp4"
        c0, w0 = time.process_time(), time.perf_counter()
        res = extract_style(path, ExtractLimits(max_seconds=600.0))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        out[name] = {"video_s": res.seconds, "wall_per_s": wall / res.seconds, "cpu_per_s": cpu / res.seconds,
                     "loadavg": os.getloadavg()[0]}
        print(f"  timing {name}: {out[name]}", file=sys.stderr)
    return out


def ridge_inverse(params: InverseParams, lmk: np.ndarray, lam: float = 1e-3) -> np.ndarray:
    """Plain isotropic ridge: argmin ‖y − (e − μ)W‖² + λ‖e − μ‖² per frame, no angle terms, no smoothing."""
    inv = ExpressionInverse(params)
    _, y = inv.aligned_offsets(lmk)
    w = params.exp_weights
    m = np.linalg.solve(w @ w.T + lam * np.eye(64), w)  # (64, 136)
    return (y @ m.T + params.prior_mean[:64]).astype(np.float32)


def solve_methods(clips: list[FitClip], by_speaker: bool = False
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """{method: {clip: exp (F, 64)}} for every method except the chosen-share ones, and each held-out map's
    weights. ``by_speaker``: every clip of the scored clip's speaker is left out of the fit (fewer methods)."""
    names = [c.name for c in clips]
    groups = ([[n for n in names if speaker(n) == s] for s in dict.fromkeys(map(speaker, names))] if by_speaker
              else [[n] for n in names])
    methods = ["naive"] if by_speaker else ["ridge", "naive", "centred", "rest", *[f"rest{w}" for w in WEIGHTS[1:]]]
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods + [f"two-level ×{g:g}" for g in GAINS]}
    maps = {}
    for held in groups:
        params = fit_params(clips, exclude=held)
        inv = ExpressionInverse(params)
        for c in (c for c in clips if c.name in held):
            lmk = interpolate_missing(c.landmarks)
            naive = inv.solve(lmk)
            out["naive"][c.name] = naive.exp
            for g in GAINS:
                out[f"two-level ×{g:g}"][c.name] = inv.solve_clip(lmk, static_gain=g).exp
            maps[c.name] = params.exp_weights
            if by_speaker:
                continue
            rest = lmk[rest_frames(naive.aligned)]
            out["ridge"][c.name] = ridge_inverse(params, lmk)
            out["centred"][c.name] = (naive.exp - naive.exp.mean(0) + params.prior_mean[:64]).astype(np.float32)
            out["rest"][c.name] = inv.solve(lmk, neutral=rest).exp
            for w in WEIGHTS[1:]:
                out[f"rest{w}"][c.name] = inv.solve(lmk, neutral=rest, static_weight=w).exp
        print(f"  solved {', '.join(held)} ({'speaker' if by_speaker else 'clip'} out)", file=sys.stderr)
    return out, maps


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def score_codes(names: list[str], codes: np.ndarray, mat_codes: np.ndarray, outputs: np.ndarray,
                mat_outputs: np.ndarray, neutral_output: np.ndarray) -> dict[str, np.ndarray]:
    """Per clip: cosine with own .mat code, identified (bool), closer-than-neutral (bool)."""
    sim = cosine(codes, mat_codes)  # (N, N) extracted i vs .mat j
    own = np.diag(sim)
    ident = sim.argmax(1) == np.arange(len(names))
    same_speaker = np.array([speaker(names[j]) == speaker(n) for j, n in zip(sim.argmax(1), names, strict=True)])
    d_ext = np.abs(outputs - mat_outputs).mean(axis=(1, 2))
    d_neu = np.abs(neutral_output[None] - mat_outputs).mean(axis=(1, 2))
    return {"cos": own, "identified": ident, "speaker_identified": same_speaker, "closer": d_ext < d_neu,
            "d_ext": d_ext, "d_neutral": d_neu}


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="cache landmark tracks here (.npz per clip)")
    ap.add_argument("--sheet-clips", type=int, default=4)
    ap.add_argument("--timing-clips", type=int, default=5, help="clips timed through the whole extract_style")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--sheet", type=Path, default=OUT_SHEET)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = args.data or default_data_dir()
    load0 = os.getloadavg()
    print("landmarks (the extraction's tracker) ...", file=sys.stderr)
    clips, speed = clip_landmarks(data, args.cache)
    load1 = os.getloadavg()
    names = [c.name for c in clips]
    print("solving leave-one-clip-out ...", file=sys.stderr)
    sols, maps = solve_methods(clips)
    print("solving leave-one-speaker-out ...", file=sys.stderr)
    sols_spk, maps_spk = solve_methods(clips, by_speaker=True)

    from engine.config import Config
    from engine.runtime import build_decoder, build_styles

    decoder = build_decoder(Config())
    bank = build_styles(Config(), decoder)
    neutral_code = bank.get("neutral")
    sentence = load_source_clip(data, SENTENCE[0])
    windows = sentence.windows[SENTENCE[1] : SENTENCE[1] + SENTENCE[2]]
    mat_exp = {c.name: c.coeff[:, 80:144] for c in clips}
    mat_codes = np.stack([decoder.encode_style(mat_exp[n]) for n in names])
    mat_out = np.stack([decoder.decode(windows, code) for code in mat_codes])
    neutral_out = decoder.decode(windows, neutral_code)

    # oracles: the .mat expression itself with its static part replaced (what the rest / centring ideas could
    # reach with perfect landmarks): rest = the 10 % frames with the smallest mouth opening through the map
    with np.load(MAP_PATH) as m:
        shipped = m["weights"].astype(np.float64)  # the shipped forward map
    rest_means = {}
    for n in names:
        gap = mouth_opening_from_exp(mat_exp[n], shipped)
        rest_means[n] = mat_exp[n][np.argsort(gap)[: max(1, len(gap) // 10)]].mean(0)
    model_neutral = np.mean(list(rest_means.values()), axis=0)
    population = np.concatenate(list(mat_exp.values())).mean(0)
    naive = sols_spk["naive"]
    oracles = {
        "oracle .mat rest": {n: (mat_exp[n] - rest_means[n] + model_neutral).astype(np.float32) for n in names},
        "oracle .mat centred": {n: (mat_exp[n] - mat_exp[n].mean(0) + population).astype(np.float32)
                                for n in names},
        # the split of a style into its average and its motion (the solved side: speaker out, frame by frame)
        "oracle .mat average + solved motion": {n: (naive[n] - naive[n].mean(0) + mat_exp[n].mean(0))
                                                .astype(np.float32) for n in names},
        "oracle solved average + .mat motion": {n: (mat_exp[n] - mat_exp[n].mean(0) + naive[n].mean(0))
                                                .astype(np.float32) for n in names},
    }

    def score(exps: dict[str, np.ndarray], maps: dict[str, np.ndarray] | None) -> dict:
        codes = np.stack([decoder.encode_style(exps[n]) for n in names])
        outs = np.stack([decoder.decode(windows, code) for code in codes])
        if maps is None:
            motion = [{"lower_r": 1.0, "upper_r": 1.0, "mouth_opening_r": 1.0} for _ in clips]
        else:
            motion = [compare(exps[c.name].astype(np.float64), c, maps[c.name]) for c in clips]
        cs = score_codes(names, codes, mat_codes, outs, mat_out, neutral_out)
        return {"motion": motion, "codes": cs, "code": codes, "out": outs}

    per_method = {m: score(e, maps) for m, e in sols.items()} | {m: score(e, None) for m, e in oracles.items()}
    per_speaker = {m: score(e, maps_spk) for m, e in sols_spk.items()}

    def chosen_by_speaker(scored: dict, cands: list[str]) -> tuple[dict, list[str]]:
        """Per held-out speaker, the candidate scoring best (identification + closer) on the other speakers'
        clips; the held-out clips' scores under it."""
        picks, out = [], {k: [] for k in ("identified", "speaker_identified", "closer", "cos")}
        for n in names:
            others = [j for j, m in enumerate(names) if speaker(m) != speaker(n)]
            best = max(cands, key=lambda m: float(scored[m]["codes"]["identified"][others].mean()
                                                  + scored[m]["codes"]["closer"][others].mean()))
            picks.append(best)
            for k in out:
                out[k].append(float(scored[best]["codes"][k][names.index(n)]))
        return {k: float(np.mean(v)) for k, v in out.items()}, picks

    def row(pm: dict) -> dict:
        return {
            "lower_r": float(np.mean([m["lower_r"] for m in pm["motion"]])),
            "upper_r": float(np.mean([m["upper_r"] for m in pm["motion"]])),
            "mouth_opening_r": float(np.mean([m["mouth_opening_r"] for m in pm["motion"]])),
            "code_cosine": float(pm["codes"]["cos"].mean()),
            "identified": float(pm["codes"]["identified"].mean()),
            "speaker_identified": float(pm["codes"]["speaker_identified"].mean()),
            "closer_than_neutral": float(pm["codes"]["closer"].mean()),
        }

    rows = {m: row(pm) for m, pm in per_method.items()}
    rest_w, chosen = chosen_by_speaker(per_method, ["rest"] + [f"rest{w}" for w in WEIGHTS[1:]] + ["naive"])
    rows["rest+w (w chosen by speaker)"] = dict(rows["rest"]) | {
        "code_cosine": rest_w["cos"], "identified": rest_w["identified"],
        "speaker_identified": rest_w["speaker_identified"], "closer_than_neutral": rest_w["closer"]}
    rows_spk = {m: row(pm) for m, pm in per_speaker.items()}
    gains = [f"two-level ×{g:g}" for g in GAINS]
    for label, scored, table in (("clip", per_method, rows), ("speaker", per_speaker, rows_spk)):
        got, picks = chosen_by_speaker(scored, gains)
        table["two-level, g chosen by speaker"] = dict(table[PRODUCT]) | {
            "code_cosine": got["cos"], "identified": got["identified"],
            "speaker_identified": got["speaker_identified"], "closer_than_neutral": got["closer"],
            "g_chosen": {g: picks.count(g) for g in set(picks)}}
        print(f"  g chosen by speaker ({label} out): {dict((g, picks.count(g)) for g in set(picks))}",
              file=sys.stderr)
    rtf = np.array(list(speed.values()))
    timing = time_extraction(data, names[:: max(1, len(names) // args.timing_clips)][: args.timing_clips])
    cpu = np.array([t["cpu_per_s"] for t in timing.values()])
    wall = np.array([t["wall_per_s"] for t in timing.values()])
    report = {
        "clips": names,
        "speakers": {n: speaker(n) for n in names},
        "product": PRODUCT,
        "methods": rows,
        "methods_by_speaker": rows_spk,
        "rest_w_chosen": dict(zip(names, chosen, strict=True)),
        "per_clip": {
            f"{m} ({label} out)": {
                n: {**{k: round(v, 4) for k, v in scored[m]["motion"][i].items()},
                    "cos": round(float(scored[m]["codes"]["cos"][i]), 4),
                    "identified": bool(scored[m]["codes"]["identified"][i]),
                    "nearest": names[int(np.argmax(cosine(scored[m]["code"][i:i + 1], mat_codes)))],
                    "closer": bool(scored[m]["codes"]["closer"][i])}
                for i, n in enumerate(names)}
            for label, scored in (("clip", per_method), ("speaker", per_speaker)) for m in ("naive", PRODUCT)
        },
        "seconds_per_video_second": {
            "extract_style_cpu_median": float(np.median(cpu)), "extract_style_cpu_max": float(cpu.max()),
            "extract_style_wall_median": float(np.median(wall)), "extract_style_per_clip": timing,
            "landmark_pass_wall_median_all_clips": float(np.median(rtf)), "landmark_pass_wall_per_clip": speed,
            "loadavg_before": load0, "loadavg_after": load1, "threads": "one (dlib, PyAV decode, numpy solve)"},
        "sentence": {"clip": SENTENCE[0], "frames": SENTENCE[2]},
    }
    for title, table in (("leave one clip out", rows), ("leave one speaker out", rows_spk)):
        print(f"{title:<38}{'lower r':>9}{'upper r':>9}{'mouth r':>9}{'code cos':>10}{'own id':>8}{'spk id':>8}"
              f"{'closer':>8}")
        for m, r in table.items():
            print(f"{m:<38}{r['lower_r']:>9.3f}{r['upper_r']:>9.3f}{r['mouth_opening_r']:>9.3f}"
                  f"{r['code_cosine']:>10.3f}{r['identified']:>8.0%}{r['speaker_identified']:>8.0%}"
                  f"{r['closer_than_neutral']:>8.0%}")
    print(f"extract-style on {len(cpu)} clips: CPU {np.median(cpu):.2f} s per video second (max {cpu.max():.2f}), "
          f"wall {np.median(wall):.2f}; landmark pass over all clips wall median {np.median(rtf):.2f}; "
          f"load {os.getloadavg()}")
    write_results(args.out, report, indent=1)
    if args.sheet_clips:
        sheet(args.sheet, names, mat_out, per_speaker, neutral_out, args.sheet_clips)
        print(f"wrote {args.sheet}")
    return 0


def sheet(path: Path, names: list[str], mat_out: np.ndarray, per_method: dict, neutral_out: np.ndarray,
          n_clips: int) -> None:
    """Rows per clip: .mat style / extracted frame by frame (naive) / extracted by the product (two-level), both
    with the clip's speaker left out of the fit; columns:
    frames of the sentence; last row: the neutral style. Built-in avatar, warp renderer."""
    from PIL import Image, ImageDraw

    from engine.avatar import builtin_avatar
    from engine.renderer import WarpRenderer

    renderer = WarpRenderer(size=256)
    state = renderer.prepare(builtin_avatar(256))
    cols = [20, 45, 70, 95, 120]
    crop = (40, 48, 216, 224)  # the face of the 256² render (brows to chin), shown at 132²
    cell = 132

    def cells(frames: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(Image.fromarray(f[crop[1]:crop[3], crop[0]:crop[2]]).resize(
            (cell, cell), Image.BILINEAR)) for f in frames], axis=1)
    picks = np.linspace(0, len(names) - 1, n_clips).round().astype(int)
    rows_img = []
    labels = []
    for i in picks:
        for label, exp in ((".mat", mat_out[i]), ("naive", per_method["naive"]["out"][i]),
                           (PRODUCT, per_method[PRODUCT]["out"][i])):
            rows_img.append(cells(renderer.render(state, exp[cols])))
            labels.append(f"{names[i]} {label}")
    rows_img.append(cells(renderer.render(state, neutral_out[cols])))
    labels.append("neutral style")
    grid = np.concatenate(rows_img, axis=0)
    pad = 190
    canvas = Image.new("RGB", (grid.shape[1] + pad, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (pad, 0))
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(labels):
        draw.text((4, k * cell + cell // 2 - 6), text.replace("×", "x"), fill="black")  # the default font has no ×
    canvas.save(path)


if __name__ == "__main__":
    sys.exit(main())
