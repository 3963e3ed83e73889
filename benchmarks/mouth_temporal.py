"""Mouth interior over time: does the rendered interior flicker where the real one holds?

The renderer's interior is chosen per frame (the exemplars nearest to the target inner-lip shape, models/warp/
interior.py), so a small change of shape can swap the exemplar and pop the teeth in or out: a viewer sees that as
flicker, which the per-frame figures of ``benchmarks.renderer`` (every k-th frame) cannot show. Here each sample
source clip's first ``--frames`` frames are rendered *consecutively* (the clip's first frame as the avatar, driven
by its own expression and pose, expression map held out per clip, mouth bank without the clip's speaker) and
compared with the real frames frame by frame:

- inside each image's own inner-lip outline (dlib landmarks 60–67): mean luminance and teeth share (bright,
  unsaturated pixels) per frame; their change from one frame to the next, |Δ luma| and |Δ teeth|;
- on *holds* (pairs of frames whose inner-lip gap changes < ``HOLD_PX`` px in both the real and the rendered
  frames, both open ≥ ``OPEN_PX``): median and p90 of |Δ luma| and |Δ teeth|, rendered vs real; a ratio near 1
  means the rendered interior is as steady as a real mouth; ≫ 1 flickers;
- pops: pairs on holds whose teeth share jumps by more than ``POP_TEETH``, per 100 holds.

Every clip is rendered twice: with the shipped ``WarpConfig.interior_hold`` ("rendered") and with each frame's
interior chosen alone ("alone", ``interior_hold`` 0, the behaviour before the hold). Writes
benchmarks/results/mouth_temporal.json and a sheet (``mouth_temporal_<clip>.png``: 12 consecutive mouth close-ups
where the interior chosen alone changed most: real, rendered, alone).

    .venv/bin/python -m benchmarks.mouth_temporal [--frames 300] [--clips ...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.renderer import (
    DATA,
    SOURCE_OFFSET,
    crop_like,
    detect_all,
    inner_gap,
    inner_mask,
    interior_stats,
    mouth_box,
    parse_set,
    tile,
)
from benchmarks.results_io import RESULTS, write_results

HOLD_PX = 0.5  # inner-lip gap change (px at 256²) under which a pair of frames counts as the shape holding
OPEN_PX = 3.0  # both frames' inner-lip gap at least this (px): a closed mouth has no interior to flicker
POP_TEETH = 0.15  # a teeth-share jump larger than this between two frames of a hold is a pop


def clip_frames(name: str, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exp (T, 64), pose (T, 9), real frames (T, 256, 256, 3) in the renderer's framing, the avatar frame)."""
    import scipy.io

    from engine.avatar import crop_face, detect_landmarks
    from engine.landmark_fit import read_video_rgb
    from engine.renderer import WarpRenderer
    from models.clips import load_pose
    from models.warp import WarpConfig

    mat = DATA / "source" / "3dmm" / f"{name}.mat"
    exp = scipy.io.loadmat(str(mat))["coeff"].astype(np.float32)[:, 80:144]
    pose = load_pose(mat)
    video = read_video_rgb(DATA / "source" / "video" / f"{name}.mp4")
    n = min(frames, len(exp), len(video) - SOURCE_OFFSET)
    real = np.stack(video[SOURCE_OFFSET : SOURCE_OFFSET + n])
    first = video[SOURCE_OFFSET]
    if not np.array_equal(WarpRenderer(size=256, config=WarpConfig(interior="painted")).prepare(first).image, first):
        crop = crop_face(first, 256, landmarks=detect_landmarks(first))  # re-framed photo: compare in its pixels
        real = np.stack([crop_like(f, crop) for f in real])
    return exp[:n], pose[:n], real, first


def render_clip(name: str, exp: np.ndarray, pose: np.ndarray, first: np.ndarray,
                overrides: dict[str, float] | None = None) -> np.ndarray:
    """The clip rendered consecutively, as a stream renders it (held-out map, bank without the speaker)."""
    import torch

    from engine.renderer import WarpRenderer
    from models.dataset import style_label
    from models.warp import ExpressionMap, MouthBank, WarpConfig

    cfg = WarpConfig(**(overrides or {}))  # type: ignore[arg-type]
    renderer = WarpRenderer(size=256, emap=ExpressionMap.load(heldout_clip=name), config=cfg,
                            bank=MouthBank.load(exclude=(style_label(name),)))
    state = renderer.prepare(first, exp_ref=exp[0])
    state.pose_ref = torch.from_numpy(pose[0].astype(np.float32))
    return np.concatenate([renderer.render(state, exp[i : i + 1], pose[i : i + 1]) for i in range(len(exp))])


def series(frames: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: inner-lip gap (px), mean luminance and teeth share inside the own inner-lip outline (NaN where
    no landmarks or too few pixels)."""
    gap = np.full(len(frames), np.nan)
    luma = np.full(len(frames), np.nan)
    teeth = np.full(len(frames), np.nan)
    for i, (f, lm) in enumerate(zip(frames, lmk, strict=True)):
        if np.isnan(lm).any():
            continue
        gap[i] = float(inner_gap(lm))
        st = interior_stats(f, inner_mask(lm, f.shape[0]))
        if st is not None:
            luma[i], teeth[i] = st["luma_mean"], st["teeth"]
    return gap, luma, teeth


def steadiness(real: tuple[np.ndarray, ...], rend: tuple[np.ndarray, ...]) -> dict[str, float | int]:
    """Frame-to-frame interior change on holds, rendered vs real (see the module docstring)."""
    (g_r, l_r, t_r), (g_p, l_p, t_p) = real, rend
    hold = ((np.abs(np.diff(g_r)) < HOLD_PX) & (np.abs(np.diff(g_p)) < HOLD_PX)
            & (g_r[:-1] >= OPEN_PX) & (g_r[1:] >= OPEN_PX) & (g_p[:-1] >= OPEN_PX) & (g_p[1:] >= OPEN_PX))
    hold &= ~np.isnan(np.diff(l_r) + np.diff(l_p))
    out: dict[str, float | int] = {"holds": int(hold.sum()), "pairs": int(len(g_r) - 1)}
    if not hold.any():
        return out
    for who, lum, tee in (("real", l_r, t_r), ("rendered", l_p, t_p)):
        dl, dt = np.abs(np.diff(lum))[hold], np.abs(np.diff(tee))[hold]
        out[f"{who}_dluma_median"] = float(np.median(dl))
        out[f"{who}_dluma_p90"] = float(np.percentile(dl, 90))
        out[f"{who}_dteeth_median"] = float(np.median(dt))
        out[f"{who}_dteeth_p90"] = float(np.percentile(dt, 90))
        out[f"{who}_pops_per_100"] = float(100.0 * (dt > POP_TEETH).mean())
    return out


def teeth_error(real: np.ndarray, rend: np.ndarray, l_real: np.ndarray) -> dict[str, float]:
    """How right the interior is, frame by frame: on the open frames (top third of the real inner-lip gap) the
    rendered minus real teeth share inside the *real* inner-lip outline (as benchmarks.renderer scores it), mean
    and mean |·|. A hold that kept a stale interior while the mouth changed would raise it."""
    ok = ~np.isnan(l_real).any((1, 2))
    gaps = np.where(ok, inner_gap(np.nan_to_num(l_real)), np.nan)
    errs = []
    for i in np.flatnonzero(ok & (gaps >= np.nanquantile(gaps, 2 / 3))):
        mask = inner_mask(l_real[i], real.shape[1])
        a, b = interior_stats(real[i], mask), interior_stats(rend[i], mask)
        if a is not None and b is not None:
            errs.append(b["teeth"] - a["teeth"])
    if not errs:
        return {}
    return {"teeth_error": float(np.mean(errs)), "teeth_abs_error": float(np.mean(np.abs(errs))),
            "open_frames": len(errs)}


def strip(frames: np.ndarray, lmk: np.ndarray, start: int, count: int = 12) -> np.ndarray:
    """``count`` consecutive mouth close-ups (96 px) from ``start``, boxed on each frame's own mouth."""
    from benchmarks.renderer import crop_grey

    crops = []
    for i in range(start, min(start + count, len(frames))):
        lm = lmk[i] if not np.isnan(lmk[i]).any() else lmk[start]
        centre, side = mouth_box(lm)
        rgb = np.stack([crop_grey(frames[i][..., [c, c, c]], centre, side) for c in range(3)], -1)
        crops.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return tile(crops, 96)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="consecutive frames per clip (from the first)")
    ap.add_argument("--clips", nargs="*", default=None, help="only these source clips (default: all)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="WarpConfig fields (numbers) for the rendered variant, e.g. interior_hold=64 or "
                         "interior_hold_motion=0; results are then written only to --out")
    ap.add_argument("--out", default=None,
                    help="write the results here (default: benchmarks/results/mouth_temporal.json, and only for a "
                         "full run without --set)")
    args = ap.parse_args(argv)
    import skimage.io

    clips = sorted(p.stem for p in (DATA / "source" / "image").glob("*.png"))
    if args.clips:
        clips = [c for c in clips if c in args.clips]
    overrides = parse_set(args.set)
    # the same frames with each frame's interior chosen alone (interior_hold 0), unless that is what is scored
    variants = {"rendered": overrides}
    if overrides.get("interior_hold") != 0.0:
        variants["alone"] = {**overrides, "interior_hold": 0.0}
    per_clip: dict[str, dict[str, dict]] = {v: {} for v in variants}
    series_by: dict[str, list[np.ndarray]] = {"real": [], **{v: [] for v in variants}}
    worst: tuple[float, str, int] = (-1.0, "", 0)
    frames_by: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in clips:
        exp, pose, real, first = clip_frames(name, args.frames)
        l_real = detect_all(real)
        s_real = series(real, l_real)
        series_by["real"].append(np.stack(s_real))
        frames_by[name] = {"real": (real, l_real)}
        for v, cfg in variants.items():
            rend = render_clip(name, exp, pose, first, cfg)
            l_rend = detect_all(rend)
            s_rend = series(rend, l_rend)
            per_clip[v][name] = {**steadiness(s_real, s_rend), **teeth_error(real, rend, l_real)}
            series_by[v].append(np.stack(s_rend))
            frames_by[name][v] = (rend, l_rend)
            c = per_clip[v][name]
            print(f"{name:22s} {v:8s} holds {c['holds']:3d}/{c['pairs']}"
                  + (f"  |Δluma| median real {c['real_dluma_median']:.2f} rendered {c['rendered_dluma_median']:.2f}"
                     f"  |Δteeth| p90 real {c['real_dteeth_p90']:.3f} rendered {c['rendered_dteeth_p90']:.3f}"
                     f"  pops/100 real {c['real_pops_per_100']:.1f} rendered {c['rendered_pops_per_100']:.1f}"
                     if c["holds"] else ""), flush=True)
        # the sheet: the clip and 12 frames where the interior blended frame by frame alone changed most
        last = list(variants)[-1]
        dt = np.nan_to_num(np.abs(np.diff(series_by[last][-1][2])))
        start = int(np.argmax(np.convolve(dt, np.ones(11), "valid"))) if len(dt) >= 11 else 0
        score = float(np.convolve(dt, np.ones(11), "valid").max()) if len(dt) >= 11 else 0.0
        if score > worst[0]:
            worst = (score, name, start)
    result: dict = {"frames": args.frames, "overrides": overrides,
                    "hold_px": HOLD_PX, "open_px": OPEN_PX,
                    "pop_teeth": POP_TEETH, "loadavg": list(os.getloadavg())}
    for v in variants:
        both = steadiness(*(tuple(np.concatenate([np.append(p[k], np.nan) for p in series_by[who]]) for k in range(3))
                            for who in ("real", v)))
        scored = [c for c in per_clip[v].values() if "teeth_error" in c]
        both["teeth_abs_error"] = float(np.mean([c["teeth_abs_error"] for c in scored]))
        both["teeth_error_abs_mean"] = float(np.mean([abs(c["teeth_error"]) for c in scored]))
        if both["holds"]:
            both["dluma_ratio"] = both["rendered_dluma_median"] / max(both["real_dluma_median"], 1e-6)
            both["dteeth_p90_ratio"] = both["rendered_dteeth_p90"] / max(both["real_dteeth_p90"], 1e-6)
        print(f"pooled {v}: " + ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}"
                                          for k, x in both.items()))
        result[v] = {"pooled": both, "clips": per_clip[v]}
    if worst[1]:
        rows = [strip(*frames_by[worst[1]][who], worst[2]) for who in ("real", *variants)]
        path = RESULTS / f"mouth_temporal_{worst[1]}.png"
        skimage.io.imsave(path, np.concatenate(rows, 0), check_contrast=False)
        result["sheet"] = {"clip": worst[1], "start_frame": worst[2], "path": path.name, "rows": ["real", *variants]}
        print(f"wrote {path}: frames {worst[2]}–{worst[2] + 11} of {worst[1]}; rows: real, " + ", ".join(variants))
    if args.out:
        write_results(Path(args.out), result)
    elif not args.clips and not overrides:
        write_results(RESULTS / "mouth_temporal.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
