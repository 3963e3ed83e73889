"""Built-in warp renderer: speed, and self-driven quality on the shared sample clips.

Speed: ms per frame of ``WarpRenderer.render`` for one frame at a time (the streaming case) at 256² and 512²,
with 1 and 2 intra-op threads (``WarpRenderer.threads``), still head and head motion; median (and p90) of
``--runs`` runs, the expression cycling through real coefficients. Wall time and the thread's CPU time are
both recorded: on a machine shared with other jobs the 1-thread CPU time is the better estimate of an
unloaded run. ``--compile`` adds torch.compile timings.

Quality (self-driven): each source clip's first frame (video frame 2, the first with a coefficient row;
``--first png`` uses source/image/*.png where it is the same shot) is driven with the clip's own
expression coefficients (row i ↔ video frame i + 2), using the expression map fitted *without* that clip
(``heldout/<clip>`` in models/assets/exp2lmk.npz) unless ``--in-sample``. dlib landmarks on the rendered and
the real frames; the real ones are similarity-aligned onto the first frame on the stable points (the warp
keeps the head still). M-LMD = mean distance over the 20 mouth points, F-LMD over all 68 (pixels of the 256²
frames), each against the static first frame as the baseline; plus the correlation of the inner-lip gap.
Side-by-side sheets (real / rendered / static) go to benchmarks/results/renderer_*.png.

    .venv/bin/python -m benchmarks.renderer [--runs 30] [--stride 3] [--compile] [--no-quality]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engine.avatar import builtin_avatar, detect_landmarks, load_image
from engine.landmark_fit import STABLE, read_video_rgb, similarity_fit
from engine.renderer import WarpRenderer
from models.dataset import default_data_dir
from models.warp import ExpressionMap

RESULTS = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = default_data_dir()
SOURCE_OFFSET = 2  # coefficient row i ↔ source video frame i + 2


# ------------------------------------------------------------------------------------------------ speed
def time_render(renderer: WarpRenderer, exp: np.ndarray, runs: int, pose: bool) -> dict[str, float]:
    state = renderer.prepare(builtin_avatar(renderer.size))
    zero_pose = np.zeros((1, 9), np.float32)
    sway = np.zeros((runs + 3, 9), np.float32)
    sway[:, 0:3] = 0.05 * np.sin(np.arange(runs + 3)[:, None] * np.array([0.3, 0.2, 0.1]))
    wall, cpu = [], []
    for i in range(runs + 3):
        p = sway[i : i + 1] if pose else zero_pose
        w0, c0 = time.perf_counter(), time.thread_time()
        renderer.render(state, exp[i % len(exp)][None], p)
        w1, c1 = time.perf_counter(), time.thread_time()
        if i >= 3:  # warm-up
            wall.append((w1 - w0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
    return {
        "wall_ms_median": float(np.median(wall)),
        "wall_ms_p90": float(np.percentile(wall, 90)),
        "cpu_ms_median": float(np.median(cpu)),
    }


def speed(args: argparse.Namespace, exp: np.ndarray) -> list[dict]:
    rows = []
    variants = [("eager", False)] + ([("compile", True)] if args.compile else [])
    for name, comp in variants:
        for size in args.sizes:
            renderer = WarpRenderer(size=size, compile=comp)
            if comp:  # compile outside the timed runs, and report how long it took
                t0 = time.perf_counter()
                st = renderer.prepare(builtin_avatar(size))
                renderer.render(st, exp[:1], np.zeros((1, 9), np.float32))
                compile_s = time.perf_counter() - t0
            for threads in args.threads:
                renderer.threads = threads
                for pose in (False, True):
                    r = time_render(renderer, exp, args.runs, pose)
                    r.update(variant=name, size=size, threads=threads, head_motion=pose, runs=args.runs)
                    if comp:
                        r["compile_s"] = compile_s
                    rows.append(r)
                    print(f"{name:8s} {size:4d}² threads {threads} motion {str(pose):5s}: "
                          f"wall {r['wall_ms_median']:6.2f} ms (p90 {r['wall_ms_p90']:6.2f})  "
                          f"cpu {r['cpu_ms_median']:6.2f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- quality
def aligned(lmk: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Landmarks (F, 68, 2) similarity-aligned onto ref (68, 2) on the stable points."""
    A, t = similarity_fit(lmk[:, STABLE].astype(np.float64), ref[STABLE].astype(np.float64))
    return np.einsum("fij,fkj->fki", A, lmk) + t[:, None, :]


def inner_gap(lmk: np.ndarray) -> np.ndarray:
    return (lmk[..., [67, 66, 65], 1] - lmk[..., [61, 62, 63], 1]).mean(-1)


def detect_all(frames: np.ndarray) -> np.ndarray:
    out = np.full((len(frames), 68, 2), np.nan, np.float32)
    for i, f in enumerate(frames):
        try:
            out[i] = detect_landmarks(f, allow_several=True)
        except ValueError:
            pass
    return out


def tile(images: list[np.ndarray], px: int) -> np.ndarray:
    from skimage.transform import resize

    return np.concatenate(
        [np.clip(resize(im, (px, px), anti_aliasing=True, preserve_range=True), 0, 255).astype(np.uint8)
         for im in images], axis=1)


def quality(args: argparse.Namespace) -> dict:
    import scipy.io
    import skimage.io

    clips = sorted(p.stem for p in (DATA / "source" / "image").glob("*.png"))
    if not clips:
        raise SystemExit(f"no sample clips under {DATA}")
    per_clip, pooled = {}, {"m_lmd": [], "m_lmd_static": [], "f_lmd": [], "f_lmd_static": [], "gap_r": [], "gap_t": []}
    for name in clips:
        coeff = scipy.io.loadmat(str(DATA / "source" / "3dmm" / f"{name}.mat"))["coeff"].astype(np.float32)
        exp = coeff[:, 80:144]
        video = read_video_rgb(DATA / "source" / "video" / f"{name}.mp4")
        rows = np.arange(0, min(len(exp), len(video) - SOURCE_OFFSET), args.stride)
        emap = ExpressionMap.load() if args.in_sample else ExpressionMap.load(heldout_clip=name)
        renderer = WarpRenderer(size=256, emap=emap)
        image = load_image(DATA / "source" / "image" / f"{name}.png")
        # The still is video frame 0, which has no coefficient row (rows start at frame 2, and the first frames
        # can differ: Obama_clip2), and for the feifeili clips it is another shot altogether. By default the
        # avatar is frame 2, whose expression is row 0 exactly (exp_ref); --first png uses the still.
        first_frame = video[SOURCE_OFFSET]
        png_matches = image.shape == first_frame.shape and np.abs(image.astype(np.float32) - first_frame).mean() < 5
        use_png = args.first == "png" and png_matches
        state = renderer.prepare(image if use_png else first_frame, exp_ref=exp[0])
        rendered = np.concatenate([renderer.render(state, exp[rows[i : i + 16]], None)
                                   for i in range(0, len(rows), 16)])
        real = np.stack([video[r + SOURCE_OFFSET] for r in rows])
        first = detect_landmarks(state.image)
        l_real, l_rend = detect_all(real), detect_all(rendered)
        ok = ~(np.isnan(l_real).any((1, 2)) | np.isnan(l_rend).any((1, 2)))
        a_real = aligned(l_real[ok], first)
        a_rend = aligned(l_rend[ok], first)

        def lmd(a: np.ndarray, b: np.ndarray, sl: slice) -> np.ndarray:
            return np.linalg.norm(a[:, sl] - b[:, sl], axis=-1).mean(-1)

        m, ms = lmd(a_rend, a_real, slice(48, 68)), lmd(first[None], a_real, slice(48, 68))
        f, fs = lmd(a_rend, a_real, slice(0, 68)), lmd(first[None], a_real, slice(0, 68))
        g_rend, g_real = inner_gap(a_rend), inner_gap(a_real)
        corr = float(np.corrcoef(g_rend, g_real)[0, 1])
        per_clip[name] = {
            "frames": int(ok.sum()), "m_lmd": float(m.mean()), "m_lmd_static": float(ms.mean()),
            "f_lmd": float(f.mean()), "f_lmd_static": float(fs.mean()), "mouth_opening_corr": corr,
            "avatar": "source/image png" if use_png else "video frame 2",
        }
        for k, v in (("m_lmd", m), ("m_lmd_static", ms), ("f_lmd", f), ("f_lmd_static", fs),
                     ("gap_r", g_rend), ("gap_t", g_real)):
            pooled[k].append(v)
        print(f"{name:22s} frames {ok.sum():4d}  M-LMD {m.mean():5.2f} (static {ms.mean():5.2f})  "
              f"F-LMD {f.mean():5.2f} (static {fs.mean():5.2f})  mouth-opening r {corr:5.2f}", flush=True)
        if name in args.sheets:
            pick = np.linspace(0, len(rows) - 1, 8).round().astype(int)
            sheet = np.concatenate([tile([real[i] for i in pick], 128), tile([rendered[i] for i in pick], 128),
                                    tile([state.image] * len(pick), 128)], axis=0)
            path = RESULTS / f"renderer_{name}.png"
            skimage.io.imsave(path, sheet, check_contrast=False)
            print(f"  wrote {path} ({path.stat().st_size // 1024} KiB): rows real / rendered / static", flush=True)
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    summary = {
        "m_lmd": float(cat["m_lmd"].mean()), "m_lmd_static": float(cat["m_lmd_static"].mean()),
        "f_lmd": float(cat["f_lmd"].mean()), "f_lmd_static": float(cat["f_lmd_static"].mean()),
        "mouth_opening_corr": float(np.corrcoef(cat["gap_r"], cat["gap_t"])[0, 1]),
        "frames": int(len(cat["m_lmd"])), "expression_map": "in-sample" if args.in_sample else "held-out per clip",
        "avatar": args.first,
    }
    print("pooled:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}))
    return {"summary": summary, "clips": per_clip}


def feature_sheet(exp_open: np.ndarray) -> Path:
    """The built-in avatar: neutral, open mouth, half/closed blink, head motion, an expressive style frame."""
    import skimage.io

    r = WarpRenderer(size=256)
    st = r.prepare(builtin_avatar(256))
    z = np.zeros((1, 64), np.float32)
    pose = np.zeros((2, 9), np.float32)
    pose[1, :3] = [0.05, 0.08, 0.06]
    frames = [
        r.render(st, z, None)[0],
        r.render(st, exp_open[None] * 0.5, None)[0],
        r.render(st, exp_open[None], None)[0],
        r.render(st, z, None, blink=np.array([0.5]))[0],
        r.render(st, z, None, blink=np.array([1.0]))[0],
        r.render(st, np.concatenate([z, z]), pose)[1],
    ]
    path = RESULTS / "renderer_features.png"
    skimage.io.imsave(path, tile(frames, 192), check_contrast=False)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--stride", type=int, default=3, help="evaluate every k-th frame of each clip")
    ap.add_argument("--in-sample", action="store_true", help="use the shipped map (fitted on all clips)")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--first", choices=["frame", "png"], default="frame",
                    help="avatar: video frame 2 (matches coefficient row 0) or the source/image still")
    ap.add_argument("--sheets", nargs="*", default=["Obama_clip1", "feifeili_clip1"])
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)

    import scipy.io

    mat = DATA / "source" / "3dmm" / "Obama_clip1.mat"
    exp = scipy.io.loadmat(str(mat))["coeff"][:, 80:144].astype(np.float32) if mat.is_file() else \
        (np.random.default_rng(0).standard_normal((64, 64)) * 0.3).astype(np.float32)
    result: dict = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_at_start": list(os.getloadavg())},
    }
    if not args.no_speed:
        result["speed"] = speed(args, exp)
    w = ExpressionMap.load().weights.numpy()
    exp_open = exp[int(np.argmax(exp @ (w[:, 66, 1] - w[:, 62, 1])))]
    result["feature_sheet"] = str(feature_sheet(exp_open).relative_to(REPO_ROOT))
    if not args.no_quality:
        result["quality"] = quality(args)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out = RESULTS / "renderer.json"
    if out.is_file() and (args.no_speed or args.no_quality):  # keep the other half of an earlier full run
        old = json.loads(out.read_text())
        result = {**{k: v for k, v in old.items() if k in ("speed", "quality")}, **result}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
