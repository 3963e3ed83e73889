"""Closed eyelids, rendered vs real (issue 17): the sample videos' own blinks against the warp's blink=1.

A closing lid is rendered by stretching the photo's lid skin over the eye (models/warp/eyes.py); on a photo whose
skin above the lid is not plain (eye make-up: a dark crease, a bright highlight) that stretch shows as a smear. The
sample clips blink: frames whose dlib eye aperture (lid gap / eye width, both eyes) drops below ``CLOSED`` × the
clip's median are blinks; the most closed frame of each run is compared with the clip's frame 2 rendered at
blink = 1 (neutral expression, still head), the real frame similarity-aligned onto the photo on the eye corners and
brows (those stay where they are while the lid closes). Per eye, a grey crop around the photo's eye:
- SSIM rendered vs real (``ssim``), and the open photo vs real as the baseline (``ssim_open``);
- smear: on the closed lid's skin (above each image's own lash line, below the crease: ``lid_mask``) the gradient
  energy (mean Sobel magnitude) and the luminance spread, rendered and real, and their ratio rendered / real (a
  smeared lid is busier than a real one: > 1).
Nothing here is fitted; the renderer's lid settings were chosen with it leave-one-clip-out (see ``loo``).

    .venv/bin/python -m benchmarks.lids [--clips KristiNoem Obama_clip1 ...] [--sheet]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.renderer import DATA, LUMA, SOURCE_OFFSET, crop_like, detect_all
from benchmarks.results_io import RESULTS
from engine.avatar import crop_face, detect_landmarks
from engine.landmark_fit import read_video_rgb, similarity_fit
from engine.renderer import WarpRenderer
from models.warp import WarpConfig

CLOSED = 0.6  # a blink: eye aperture below this share of the clip's median
ALIGN = list(range(17, 27)) + [36, 39, 42, 45]  # brows and eye corners: unmoved by a blink
EYES = (list(range(36, 42)), list(range(42, 48)))
CROP_W, CROP_H = 48, 32  # grey eye crop (px), box 1.7 × the eye's width, 2/3 as high, centred a little above the eye
CACHE = Path("/tmp/styletalk_lids_cache")


def aperture(lmk: np.ndarray) -> np.ndarray:
    """(F, 68, 2) → (F,) mean over both eyes of (upper–lower lid distance) / eye width."""
    out = []
    for e in EYES:
        p = lmk[:, e]
        gap = (np.linalg.norm(p[:, 1] - p[:, 5], axis=-1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1)) / 2
        out.append(gap / np.linalg.norm(p[:, 3] - p[:, 0], axis=-1))
    return np.mean(out, 0)


def clip_frames(name: str, only: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A clip's frames (from frame 2 on, framed like the renderer frames frame 2) and their dlib landmarks (all,
    cached; or ``only`` those frames', the rest NaN)."""
    video = read_video_rgb(DATA / "source" / "video" / f"{name}.mp4")[SOURCE_OFFSET:]
    first = video[0]
    framed = WarpRenderer(size=256).prepare(first).image
    if not np.array_equal(framed, first):
        crop = crop_face(first, 256, landmarks=detect_landmarks(first))
        video = np.stack([crop_like(f, crop) for f in video])
    if only is not None:
        lmk = np.full((len(video), 68, 2), np.nan, np.float32)
        lmk[only] = detect_all(np.stack([video[i] for i in only]))
        return video, lmk
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}.npy"
    if path.exists():
        lmk = np.load(path)
    else:
        lmk = detect_all(video)
        np.save(path, lmk)
    return video, lmk


def blink_frames(lmk: np.ndarray) -> list[int]:
    """Per run of frames below CLOSED × median aperture, its most closed frame."""
    ap = aperture(lmk)
    low = np.nan_to_num(ap, nan=np.inf) < CLOSED * np.nanmedian(ap)
    out, i = [], 0
    while i < len(low):
        if low[i]:
            j = i
            while j < len(low) and low[j]:
                j += 1
            out.append(i + int(np.argmin(ap[i:j])))
            i = j
        else:
            i += 1
    return out


def warp_onto(frame: np.ndarray, lmk: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``frame`` similarity-aligned so that its ALIGN landmarks land on ``ref``'s (grey, float)."""
    from skimage.transform import SimilarityTransform, warp

    A, t = similarity_fit(lmk[ALIGN].astype(np.float64), ref[ALIGN].astype(np.float64))
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = A, t
    return warp(frame.astype(np.float32) @ LUMA, SimilarityTransform(m).inverse, order=1, mode="edge",
                preserve_range=True)


def eye_crop(grey: np.ndarray, ref: np.ndarray, eye: list[int]) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    p = ref[eye]
    w = 1.7 * np.linalg.norm(p[3] - p[0])
    c = p.mean(0) - [0.0, 0.12 * w]
    ys, xs = np.meshgrid(c[1] + ((np.arange(CROP_H) + 0.5) / CROP_H - 0.5) * w * CROP_H / CROP_W,
                         c[0] + ((np.arange(CROP_W) + 0.5) / CROP_W - 0.5) * w, indexing="ij")
    return map_coordinates(grey, [ys, xs], order=1, mode="nearest")


def lid_mask(ref: np.ndarray, eye: list[int], crop: np.ndarray) -> np.ndarray:
    """In crop pixels: the closed lid's skin in ``crop``, from a third of the photo's eye height above its upper
    lid down to 2 px above the crop's own lash line (per column the darkest row, smoothed, between the photo's
    lids), between the photo's eye corners shrunk by 15 % (the crease above, the lash line and its ends excluded:
    real and rendered lash lines lie at different heights, and a line is not a smear)."""
    from scipy.ndimage import gaussian_filter1d

    p = ref[eye]
    w = 1.7 * np.linalg.norm(p[3] - p[0])
    c = p.mean(0) - [0.0, 0.12 * w]
    to_px = CROP_W / w
    q = (p - c) * to_px + [CROP_W / 2, CROP_H / 2]
    ys, xs = np.mgrid[0:CROP_H, 0:CROP_W] + 0.5
    x0, x1 = q[0, 0], q[3, 0]
    inner = (xs > x0 + 0.15 * (x1 - x0)) & (xs < x1 - 0.15 * (x1 - x0))
    up = np.interp(xs, [q[0, 0], q[1, 0], q[2, 0], q[3, 0]], [q[0, 1], q[1, 1], q[2, 1], q[3, 1]])
    lo = np.interp(xs, [q[0, 0], q[5, 0], q[4, 0], q[3, 0]], [q[0, 1], q[5, 1], q[4, 1], q[3, 1]])
    h = float(lo.max() - up.min())
    dark = np.where((ys > up - 1) & (ys < lo + 2), gaussian_filter1d(crop, 1.0, axis=0), np.inf)
    lash = np.argmin(dark, axis=0)[None, :] + 0.5  # (1, W) the lash line's row per column
    return inner & (ys > up - max(h, 2.0) / 3) & (ys < lash - 2)


def smear(crop: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Gradient energy (mean Sobel magnitude) and luminance spread inside ``mask``."""
    from scipy.ndimage import sobel

    g = np.hypot(sobel(crop, 0), sobel(crop, 1)) / 8.0
    return float(g[mask].mean()), float(crop[mask].std())


def score_clip(name: str, cfg: WarpConfig | None = None, frames: list[int] | None = None) -> dict:
    """Per blink frame and eye: SSIM (rendered, open photo) vs real, smear figures; and their means."""
    from skimage.metrics import structural_similarity

    video, lmk = clip_frames(name, frames)
    r = WarpRenderer(size=256, config=cfg or WarpConfig())
    st = r.prepare(video[0])
    ref = st.landmarks
    rend = r.render(st, np.zeros((1, 64), np.float32), None, blink=np.array([1.0]))[0]
    g_rend, g_open = rend.astype(np.float32) @ LUMA, st.image.astype(np.float32) @ LUMA
    idx = blink_frames(lmk) if frames is None else frames
    rows = []
    for f in idx:
        g_real = warp_onto(video[f], lmk[f], ref)
        for e, eye in enumerate(EYES):
            cr, cn, co = (eye_crop(g, ref, eye) for g in (g_real, g_rend, g_open))
            (gr, sr), (gn, sn) = smear(cr, lid_mask(ref, eye, cr)), smear(cn, lid_mask(ref, eye, cn))
            rows.append({"frame": f + SOURCE_OFFSET, "eye": e,
                         "ssim": float(structural_similarity(cn, cr, data_range=255.0)),
                         "ssim_open": float(structural_similarity(co, cr, data_range=255.0)),
                         "grad_real": gr, "grad_rend": gn, "std_real": sr, "std_rend": sn})
    if not rows:
        return {"clip": name, "blinks": 0}
    mean = {k: float(np.mean([x[k] for x in rows])) for k in rows[0] if k not in ("frame", "eye")}
    mean["grad_ratio"] = mean["grad_rend"] / mean["grad_real"]
    mean["std_ratio"] = mean["std_rend"] / mean["std_real"]
    if frames is None:
        mean.update(half_closed(r, st, video, lmk, idx))
    return {"clip": name, "blinks": len(idx), "frames": [f + SOURCE_OFFSET for f in idx], **mean, "rows": rows}


HALF = (0.6, 0.85)  # a half-closed frame: aperture in this share of the clip's median, within HALF_REACH of a blink
HALF_REACH = 3


def half_closed(r: WarpRenderer, st, video, lmk: np.ndarray, idx: list[int]) -> dict:  # type: ignore[no-untyped-def]
    """Lids on their way: the real frames near a blink whose aperture is HALF of the clip's median, against the
    photo rendered at the blink amount that closes the same share of the way from open (1) to what dlib reads on
    the clip's shut eyes (its blink frames' median share; dlib never reads a shut lid as 0). Mean eye SSIM, and the
    lid's gradient energy and luminance spread rendered / real."""
    from skimage.metrics import structural_similarity

    ap = aperture(lmk)
    share = ap / np.nanmedian(ap)
    half = sorted({g for f in idx for g in range(f - HALF_REACH, f + HALF_REACH + 1)
                   if 0 < g < len(share) and HALF[0] <= share[g] < HALF[1]})
    if not half:
        return {}
    shut = float(np.median(share[idx]))  # what dlib reads on this clip's shut eyes (never 0)
    amounts = np.clip((1.0 - share[half]) / (1.0 - shut), 0.0, 1.0)
    rend = r.render(st, np.zeros((len(half), 64), np.float32), None, blink=amounts.astype(np.float32))
    ref = st.landmarks
    ss, gr, gn, sr, sn = [], [], [], [], []
    for f, im in zip(half, rend, strict=True):
        g_real, g_rend = warp_onto(video[f], lmk[f], ref), im.astype(np.float32) @ LUMA
        for eye in EYES:
            cr, cn = eye_crop(g_real, ref, eye), eye_crop(g_rend, ref, eye)
            ss.append(structural_similarity(cn, cr, data_range=255.0))
            (a, b), (c, d) = smear(cr, lid_mask(ref, eye, cr)), smear(cn, lid_mask(ref, eye, cn))
            gr.append(a)
            sr.append(b)
            gn.append(c)
            sn.append(d)
    return {"half_frames": len(half), "half_amount": float(np.mean(amounts)), "half_ssim": float(np.mean(ss)),
            "half_grad_ratio": float(np.mean(gn) / np.mean(gr)), "half_std_ratio": float(np.mean(sn) / np.mean(sr))}


def clips_with_blinks() -> list[str]:
    names = sorted(p.stem for p in (DATA / "source" / "video").glob("*.mp4"))
    return [n for n in names if blink_frames(clip_frames(n)[1])]


def sheet(names: list[str], path: Path, configs: dict[str, WarpConfig]) -> Path:
    """Per clip a row: real closed frame (aligned), then each config's blink = 1, both eyes, 3× (grey)."""
    import skimage.io

    rows = []
    for name in names:
        video, lmk = clip_frames(name)
        idx = blink_frames(lmk)
        if not idx:
            continue
        f = idx[int(np.argmin(aperture(lmk[idx])))]
        tiles = []
        for label, cfg in [("real", None), *configs.items()]:
            r = WarpRenderer(size=256, config=cfg or WarpConfig())
            st = r.prepare(video[0])
            ref = st.landmarks
            if label == "real":
                g = warp_onto(video[f], lmk[f], ref)
            else:
                g = r.render(st, np.zeros((1, 64), np.float32), None, blink=np.array([1.0]))[0].astype(
                    np.float32) @ LUMA
            crops = [eye_crop(g, ref, eye) for eye in EYES[::-1]]  # image left first
            tiles.append(np.concatenate(crops, 1))
        row = np.concatenate([np.pad(t, ((0, 0), (0, 2)), constant_values=0) for t in tiles], 1)
        rows.append(np.kron(row, np.ones((3, 3))))
    width = max(r.shape[1] for r in rows)
    img = np.concatenate([np.pad(r, ((0, 3), (0, width - r.shape[1]))) for r in rows], 0)
    skimage.io.imsave(path, np.clip(img, 0, 255).astype(np.uint8), check_contrast=False)
    return path


ROWS = {"low": (0.005, 0.015, 0.025), "band": tuple(np.round(np.arange(0.005, 0.085, 0.0075), 4).tolist()),
        "high": tuple(np.round(np.arange(0.03, 0.085, 0.0075), 4).tolist())}


FIGURES = ("ssim", "grad_rend", "grad_real", "grad_ratio", "std_rend", "std_real", "std_ratio", "half_ssim",
           "half_grad_ratio", "half_std_ratio")


def candidates() -> dict[str, WarpConfig]:
    """The lid-fill settings tried: off, and rows × from (``WarpConfig.lid_fill_*``)."""
    out = {"off": WarpConfig(lid_fill=False)}
    for rk, rows in ROWS.items():
        for fr in (0.6, 1.0):
            out[f"{rk}_from{fr}"] = WarpConfig(lid_fill_rows=rows, lid_fill_from=fr)
    for shade in (0.5, 1.0):  # brighter towards the top (the whole band's median)
        out[f"low_from1.0_shade{shade}"] = WarpConfig(lid_fill_rows=ROWS["low"], lid_fill_from=1.0,
                                                      lid_fill_shade=shade)
    for gain in (1.5, 2.0, 3.0):  # a half-closed lid filled more than its closed share
        out[f"low_from1.0_gain{gain}"] = WarpConfig(lid_fill_rows=ROWS["low"], lid_fill_from=1.0, lid_fill_gain=gain)
    return out


def loo(names: list[str]) -> dict:
    """Per clip, the fill setting with the best mean eye SSIM (shut and half-closed frames alike) on the *other*
    clips, and its score on this one (against "off", the stretched band alone: the baseline the fill replaces, not
    a candidate)."""
    table = {k: {n: score_clip(n, c) for n in names} for k, c in candidates().items()}
    out = {}
    for n in names:
        best = max((k for k in table if k != "off"), key=lambda k: np.mean(
            [table[k][m]["ssim"] + table[k][m].get("half_ssim", table[k][m]["ssim"]) for m in names if m != n]))
        out[n] = {"chosen": best, **{f: table[best][n][f] for f in FIGURES},
                  "off": {f: table["off"][n][f] for f in FIGURES}}
        print(f"{n:22s} chosen {best:14s} ssim {out[n]['off']['ssim']:.3f} → {out[n]['ssim']:.3f}  "
              f"grad rend/real {out[n]['off']['grad_ratio']:.2f} → {out[n]['grad_ratio']:.2f}  "
              f"spread rend/real {out[n]['off']['std_ratio']:.2f} → {out[n]['std_ratio']:.2f}  "
              f"half-closed ssim {out[n]['off']['half_ssim']:.3f} → {out[n]['half_ssim']:.3f}", flush=True)
    return {"loo": out, "table": {k: {n: {f: v[n][f] for f in FIGURES} for n in names}
                                  for k, v in table.items()}}


def blink_before_after() -> Path:
    """The idle blink sheet (benchmarks.renderer.blink_strips) without the lid fill, then with it: one row per
    avatar each."""
    import skimage.io

    from benchmarks.renderer import blink_strips

    strips = blink_strips(WarpConfig(lid_fill=False)) + blink_strips(WarpConfig())
    width = max(s.shape[1] for s in strips)
    img = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0))) for s in strips], 0)
    path = RESULTS / "lids_blink_before_after.png"
    skimage.io.imsave(path, img, check_contrast=False)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="*", default=None)
    ap.add_argument("--out", default="lids.json")
    ap.add_argument("--loo", action="store_true", help="choose the lid-fill settings leave-one-clip-out")
    ap.add_argument("--sheet", action="store_true", help="real / before / after close-ups")
    args = ap.parse_args(argv)
    names = args.clips or clips_with_blinks()
    if args.sheet:
        print(blink_before_after())
        print(sheet(names, RESULTS / "lids_before_after.png", {"before": WarpConfig(lid_fill=False),
                                                                "after": WarpConfig()}))
    if args.loo:
        (RESULTS / "lids_loo.json").write_text(json.dumps(loo(names), indent=1) + "\n")
        return 0
    res = []
    for n in names:
        s = score_clip(n)
        res.append(s)
        if s["blinks"]:
            print(f"{n:22s} blinks {s['blinks']:2d}  ssim {s['ssim']:.3f} (open photo {s['ssim_open']:.3f})  "
                  f"grad rend/real {s['grad_rend']:.2f}/{s['grad_real']:.2f} = {s['grad_ratio']:.2f}  "
                  f"std {s['std_rend']:.1f}/{s['std_real']:.1f} = {s['std_ratio']:.2f}", flush=True)
        else:
            print(f"{n:22s} no blinks", flush=True)
    (RESULTS / args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
