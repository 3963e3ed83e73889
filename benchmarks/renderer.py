"""Built-in warp renderer: speed, and self-driven quality on the shared sample clips.

Speed: ms per frame of ``WarpRenderer.render`` for one frame at a time (the streaming case) at 256² and 512²,
with 1 and 2 intra-op threads (``WarpRenderer.threads``), still head and head motion; median (and p90) of
``--runs`` runs, the expression cycling through real coefficients. Wall time and the thread's CPU time are
both recorded: on a machine shared with other jobs the 1-thread CPU time is the better estimate of an
unloaded run; the eager rows also count the top-level ATen ops per frame (``ops_per_frame``: independent of
the load, and what mostly sets the eager time). ``--compile`` adds torch.compile timings.

Quality (self-driven): each source clip's first frame (video frame 2, the first with a coefficient row;
``--first png`` uses source/image/*.png where it is the same shot) is driven with the clip's own
expression coefficients (row i ↔ video frame i + 2), using the expression map fitted *without* that clip
(``heldout/<clip>`` in models/assets/exp2lmk.npz) unless ``--in-sample``. dlib landmarks on the rendered and
the real frames; the real ones are similarity-aligned onto the first frame on the stable points (the warp
keeps the head still). M-LMD = mean distance over the 20 mouth points, F-LMD over all 68 (pixels of the 256²
frames), each against the static first frame as the baseline; plus the correlation of the inner-lip gap.
Side-by-side sheets (real / rendered / static) go to benchmarks/results/renderer_*.png.

Face measures (issue 17), on the same self-driven clips but driven with the clip's own expression *and pose*
(``load_pose``, relative to row 0), unaligned, against the real frames:
- mouth appearance: SSIM and PSNR of a 64×64 grey crop of the box around the *real* mouth landmarks (×1.6,
  square), rendered vs real and static photo vs real; the same with each image's crop centred on its own mouth;
- inside the mouth on open frames (top third of the clip's real inner-lip gap): mean and spread of luminance
  (0–255) and the share of bright low-saturation ("teeth") pixels inside the real inner-lip outline (and inside
  the image's own outline), rendered vs real; the *flat lens* (issue 17: an opening filled with one light
  featureless tone) on the mouth's core (``core_stats``: spread, mean over the skin, share of lens frames), rendered
  (own outline) vs real, and on the sample photos (``photo_lens``);
- placement: rendered vs real mouth-centre distance (px, 256²);
- the band a far-travelling head uncovers (``far_band_streaks``, frames whose real mouth moved > 25 px
  sideways): streak anisotropy beside the face on the side it left, rendered vs real (stretched hair: > 1);
- the neck under far travel (``far_neck``, frames whose real mouth moved > 20 px): on the warp field
  (``neck_field``) the steepest sideways shear under the moved jaw vs an even one and the chin's share of its rigid
  travel; on the images the share of the head's sideways travel the rows under the chin take, rendered vs real
  (``neck_follow``), and the SSIM under the real jaw;
- rest and closure (``rest_and_closure``): the built-in avatar driven by every built-in style on the decoder's
  held-out clip (andrew_clip_2's reference labels, 2 s of SIL before and after): dlib inner-lip gap over
  silent runs (≥ 10 SIL frames) minus the photo's own gap; share of P/B/M frames whose gap is within 1 px of
  closed;
- head motion (``head_motion``): spread of the pose the engine feeds the renderer by default vs the sample
  speakers' (.mat angles, degrees), and the rendered vs real nose-tip travel in pixels; how head speed follows
  speech (``speech_driven_motion``): median angular speed in speech and in pauses and their ratio, the speed
  around phrase onsets, real vs generated, with the motion's tempo and speech gains fitted leave-one-clip-out on
  the 8 source clips that have reference phoneme labels;
- the idle blink, close-up (``blink_sheet``).
Every fitted piece is held out per clip: the expression map (``heldout/<clip>``); anything built from the sample
videos (the mouth-interior bank) is built without the scored clip's speaker. The decoder is the built-in
checkpoint, whose held-out clip is andrew_clip_2.

    .venv/bin/python -m benchmarks.renderer [--runs 30] [--stride 3] [--compile] [--no-quality] [--head-only]
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

from benchmarks.results_io import RESULTS, write_results
from engine.avatar import CroppedFace, builtin_avatar, crop_face, detect_landmarks, load_image
from engine.landmark_fit import STABLE, read_video_rgb, similarity_fit
from engine.renderer import WarpRenderer
from models.clips import load_pose
from models.dataset import default_data_dir, style_label
from models.warp import ExpressionMap, MouthBank, WarpConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = default_data_dir()
SOURCE_OFFSET = 2  # coefficient row i ↔ source video frame i + 2


# ------------------------------------------------------------------------------------------------ speed
def _sway(frames: int) -> np.ndarray:
    """The timed head motion (frames, 9): a slow sway of the three angles."""
    sway = np.zeros((frames, 9), np.float32)
    sway[:, 0:3] = 0.05 * np.sin(np.arange(frames)[:, None] * np.array([0.3, 0.2, 0.1]))
    return sway


OVERRIDES: dict[str, float] = {}  # --set: WarpConfig fields for the bank renderers scored (an A/B or a sweep)


def parse_set(items: list[str]) -> dict[str, float]:
    """``--set FIELD=VALUE ...`` → WarpConfig overrides (numbers); an unknown field or a bad value exits with a
    clear message (the benchmarks' shared way to A/B or sweep a renderer setting)."""
    from dataclasses import fields

    known = {f.name for f in fields(WarpConfig)}
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of WarpConfig's fields")
        try:
            out[key] = float(value)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {value!r} is not a number") from None
    return out


def config(**kw: object) -> WarpConfig:
    """The WarpConfig scored: ``kw`` over the --set overrides over the shipped defaults."""
    return WarpConfig(**{**OVERRIDES, **kw})  # type: ignore[arg-type]


def ops_per_frame(renderer: WarpRenderer, exp: np.ndarray, pose: bool, frames: int = 10) -> float:
    """Top-level ATen ops per streamed frame (as ``time_render`` drives it), counted by the torch profiler.

    Unlike the timings this does not depend on the machine's load, and it is what sets the eager renderer's
    time: a frame is hundreds of ops on small tensors, most of them costing their dispatch, not arithmetic.
    """
    from torch.profiler import ProfilerActivity, profile

    state = renderer.prepare(builtin_avatar(renderer.size))
    sway, zero_pose = _sway(frames + 1), np.zeros((1, 9), np.float32)
    renderer.render(state, exp[:1], sway[:1] if pose else zero_pose)  # the stream's reference pose
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, frames + 1):
            renderer.render(state, exp[i % len(exp)][None], sway[i : i + 1] if pose else zero_pose)
    top = [e for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(top) / frames


def time_render(renderer: WarpRenderer, exp: np.ndarray, runs: int, pose: bool) -> dict[str, float]:
    state = renderer.prepare(builtin_avatar(renderer.size))
    zero_pose = np.zeros((1, 9), np.float32)
    sway = _sway(runs + 3)
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
    variants = [("eager", False, "bank"), ("eager", False, "painted")] + (
        [("compile", True, "bank")] if args.compile else [])
    for name, comp, interior in variants:
        for size in args.sizes:
            renderer = WarpRenderer(size=size, compile=comp, config=config(interior=interior))
            if comp:  # compile outside the timed runs, and report how long it took
                t0 = time.perf_counter()
                st = renderer.prepare(builtin_avatar(size))
                renderer.render(st, exp[:1], np.zeros((1, 9), np.float32))
                compile_s = time.perf_counter() - t0
            for threads in args.threads:
                renderer.threads = threads
                for pose in (False, True):
                    r = time_render(renderer, exp, args.runs, pose)
                    if not comp and threads == args.threads[0]:
                        r["ops_per_frame"] = ops_per_frame(renderer, exp, pose)
                    r.update(variant=name, interior=interior, size=size, threads=threads, head_motion=pose,
                             runs=args.runs, loadavg=list(os.getloadavg()))
                    if comp:
                        r["compile_s"] = compile_s
                    rows.append(r)
                    print(f"{name:8s} {interior:8s} {size:4d}² threads {threads} motion {str(pose):5s}: "
                          f"wall {r['wall_ms_median']:6.2f} ms (p90 {r['wall_ms_p90']:6.2f})  "
                          f"cpu {r['cpu_ms_median']:6.2f} ms" + (f"  {r['ops_per_frame']:.0f} ops/frame"
                                                                 if "ops_per_frame" in r else ""), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- quality
def aligned(lmk: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Landmarks (F, 68, 2) similarity-aligned onto ref (68, 2) on the stable points."""
    A, t = similarity_fit(lmk[:, STABLE].astype(np.float64), ref[STABLE].astype(np.float64))
    return np.einsum("fij,fkj->fki", A, lmk) + t[:, None, :]


def inner_gap(lmk: np.ndarray) -> np.ndarray:
    return (lmk[..., [67, 66, 65], 1] - lmk[..., [61, 62, 63], 1]).mean(-1)


def inner_width(lmk: np.ndarray) -> np.ndarray:
    """Inner-lip corner-to-corner width 60–64 (rounding narrows it, spreading widens it)."""
    return np.linalg.norm(lmk[..., 64, :] - lmk[..., 60, :], axis=-1)


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


# ------------------------------------------------------------------------------------------ face measures
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
TEETH_LUMA = 120.0  # a "teeth" pixel: luminance at least this (0–255) ...
TEETH_SAT = 0.40  # ... and saturation (max − min) / max below this (lips and tongue are saturated, teeth are not)
PSNR_CAP = 60.0  # dB, for identical crops (the first frame is the avatar itself)
CROP = 64  # mouth crops are compared at 64×64 grey


def grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ LUMA


def mouth_box(lmk: np.ndarray, centre: np.ndarray | None = None, side: float | None = None) -> tuple[np.ndarray, float]:
    """Centre and side of the square box around the mouth landmarks 48–67, ×1.6."""
    m = lmk[48:68]
    lo, hi = m.min(0), m.max(0)
    return ((lo + hi) / 2 if centre is None else centre), (1.6 * float((hi - lo).max()) if side is None else side)


def crop_grey(image: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
    """A 64×64 grey crop of the box (bilinear; outside the image: edge pixels)."""
    from scipy.ndimage import map_coordinates

    t = (np.arange(CROP) + 0.5) / CROP - 0.5
    ys, xs = np.meshgrid(centre[1] + t * side, centre[0] + t * side, indexing="ij")
    return map_coordinates(grey(image), [ys, xs], order=1, mode="nearest")


def ssim_psnr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(a, b):  # PSNR is infinite: cap it
        return 1.0, PSNR_CAP
    return (float(structural_similarity(a, b, data_range=255.0)),
            min(float(peak_signal_noise_ratio(a, b, data_range=255.0)), PSNR_CAP))


def inner_mask(lmk: np.ndarray, size: int) -> np.ndarray:
    """Pixels inside the inner-lip outline 60–67."""
    from skimage.draw import polygon

    mask = np.zeros((size, size), bool)
    pts = lmk[60:68]
    rr, cc = polygon(pts[:, 1], pts[:, 0], (size, size))
    mask[rr, cc] = True
    return mask


def interior_stats(image: np.ndarray, mask: np.ndarray, skin: float | None = None) -> dict[str, float] | None:
    """Mean and spread of luminance, and the teeth share, of the pixels in ``mask`` (None when < 8 pixels); with
    the photo's ``skin`` luminance also the flat lens (``core_stats``)."""
    px = image[mask].astype(np.float32)
    if len(px) < 8:
        return None
    luma = px @ LUMA
    sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
    out = {"luma_mean": float(luma.mean()), "luma_std": float(luma.std()),
           "teeth": float(((luma >= TEETH_LUMA) & (sat < TEETH_SAT)).mean())}
    # how bright the teeth are, whatever their area (the teeth share counts pixels over a fixed luminance): the
    # brightest tenth of the unsaturated pixels' mean; and their texture, the spread of the brightest third's
    # (and their warmth, (R − B) / luminance: teeth take the light's and the skin's tint)
    order = np.argsort(luma[sat < TEETH_SAT])
    unsat, unsat_px = luma[sat < TEETH_SAT][order], px[sat < TEETH_SAT][order]
    if len(unsat) >= 10:
        top = slice(-max(1, len(unsat) // 10), None)
        out["bright"] = float(unsat[top].mean())
        out["bright_std"] = float(unsat[-max(3, len(unsat) // 3):].std())
        out["bright_warm"] = float(((unsat_px[top, 0] - unsat_px[top, 2]) / np.maximum(unsat[top], 1.0)).mean())
    else:
        out["bright"] = out["bright_std"] = out["bright_warm"] = float("nan")
    if skin is not None:
        out.update(core_stats(image, mask, skin))
    return out


# The flat lens (issue 17): an open mouth filled with one light, featureless tone. Measured on the mouth's *core* (the
# inner-lip outline less 2 px: the outline's edge pixels are lip, whose contrast with any interior hid the lens in the
# whole outline's spread): its luminance spread and its mean over the photo's skin luminance. On the real open frames
# of the 8 source clips (stride 6) the core's spread is 33 (p25 24, p10 18) and its mean 0.55-0.95 of the skin (per
# clip); the lens on renderer_photos.png (KristiNoem, feifeili_clip1 "open") is 15-22 and 1.2-1.4 × the skin.
CORE_ERODE = 2  # px
LENS_STD = 24.0  # a core flatter than this (the real open mouths' p25) ...
LENS_LUMA = 1.0  # ... and brighter than the skin × this is a lens frame


def core_stats(image: np.ndarray, mask: np.ndarray, skin: float) -> dict[str, float]:
    """The mouth core's luminance spread, mean over ``skin``, and whether it is a lens (1.0) or not (0.0); NaN
    when the core has < 8 pixels."""
    from scipy.ndimage import binary_erosion

    core = binary_erosion(mask, iterations=CORE_ERODE)
    if core.sum() < 8:
        return {"core_std": float("nan"), "core_vs_skin": float("nan"), "lens": float("nan")}
    luma = image[core].astype(np.float32) @ LUMA
    std, rel = float(luma.std()), float(luma.mean()) / max(skin, 1.0)
    return {"core_std": std, "core_vs_skin": rel, "lens": float(std < LENS_STD and rel > LENS_LUMA)}


def skin_luma(photo: np.ndarray, lmk: np.ndarray) -> float:
    """The photo's skin luminance where ``models.warp.avatar`` samples its skin colour (cheeks, nose bridge)."""
    pts = np.stack([(lmk[31] + lmk[3]) / 2, (lmk[35] + lmk[13]) / 2, lmk[29], lmk[28]]).round().astype(int)
    pts = pts.clip(0, photo.shape[0] - 1)
    return float(np.median(grey(photo[pts[:, 1], pts[:, 0]])))


def face_measures(real: np.ndarray, rend: np.ndarray, static: np.ndarray, l_real: np.ndarray, l_rend: np.ndarray,
                  l_static: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame mouth appearance, interior and placement figures (frames with landmarks on both sides)."""
    out: dict[str, list] = {k: [] for k in ("ssim", "psnr", "ssim_static", "psnr_static", "ssim_own", "psnr_own",
                                            "ssim_own_static", "centre_err", "gap_real")}
    interior: list[tuple[dict | None, dict | None, dict | None]] = []
    size = real.shape[1]
    skin = skin_luma(static, l_static)
    for i in range(len(real)):
        c, side = mouth_box(l_real[i])
        r_crop = crop_grey(real[i], c, side)
        for key, img in (("", rend[i]), ("_static", static)):
            ss, ps = ssim_psnr(crop_grey(img, c, side), r_crop)
            out["ssim" + key].append(ss)
            out["psnr" + key].append(ps)
        ss, ps = ssim_psnr(crop_grey(rend[i], mouth_box(l_rend[i])[0], side), r_crop)
        out["ssim_own"].append(ss)
        out["psnr_own"].append(ps)
        out["ssim_own_static"].append(ssim_psnr(crop_grey(static, mouth_box(l_static)[0], side), r_crop)[0])
        out["centre_err"].append(float(np.linalg.norm(l_rend[i, 48:68].mean(0) - l_real[i, 48:68].mean(0))))
        out["gap_real"].append(float(inner_gap(l_real[i])))
        m_real = inner_mask(l_real[i], size)
        interior.append((interior_stats(real[i], m_real, skin), interior_stats(rend[i], m_real),
                         interior_stats(rend[i], inner_mask(l_rend[i], size), skin)))
    res = {k: np.asarray(v) for k, v in out.items()}
    res["interior"] = np.asarray(interior, dtype=object)
    return res


def band_streaks(image: np.ndarray, l_first: np.ndarray, l_now: np.ndarray) -> float:
    """Streak anisotropy of the band a travelling head uncovers: sqrt(E[∂y²] / E[∂x²]) of the grey image (σ 0.7
    smoothed, Sobel, structure tensor σ 2) over the columns between the real face's jaw and the photo's edge on the
    side the head moved away from (``l_now`` the real frame's landmarks, ``l_first`` the first frame's). Horizontal
    streaks (a stretched band) raise it; compare rendered with real on the same region."""
    import scipy.ndimage as ndi

    g = ndi.gaussian_filter(image.astype(np.float32).mean(-1), 0.7)
    jxx = ndi.gaussian_filter(ndi.sobel(g, 1) ** 2, 2.0)
    jyy = ndi.gaussian_filter(ndi.sobel(g, 0) ** 2, 2.0)
    if l_now[48:68, 0].mean() < l_first[48:68, 0].mean():  # moved left: the band is on the right
        cols = slice(min(int(np.ceil(l_now[0:17, 0].max())), image.shape[1] - 4), None)
    else:
        cols = slice(0, max(int(np.floor(l_now[0:17, 0].min())), 4))
    return float(np.sqrt(jyy[:, cols].mean() / max(float(jxx[:, cols].mean()), 1e-6)))


def far_band_streaks(real: np.ndarray, posed: np.ndarray, l_real: np.ndarray, travel: float = 25.0
                     ) -> dict[str, float | int]:
    """``band_streaks`` on the frames whose real mouth centre travelled more than ``travel`` px sideways from the
    first frame's: mean rendered, mean real, mean ratio rendered / real (1: as streaky as the real band)."""
    ok = ~np.isnan(l_real).any((1, 2))
    c = l_real[:, 48:68].mean(1)
    far = np.flatnonzero(ok & (np.abs(c[:, 0] - c[0, 0]) > travel))
    if len(far) == 0 or not ok[0]:
        return {"band_frames": 0}
    rend = np.array([band_streaks(posed[i], l_real[0], l_real[i]) for i in far])
    true = np.array([band_streaks(real[i], l_real[0], l_real[i]) for i in far])
    return {"band_frames": int(len(far)), "band_streak": float(rend.mean()), "band_streak_real": float(true.mean()),
            "band_streak_ratio": float((rend / true).mean())}


def neck_field(core: object, warp: object, exp: np.ndarray, pose: np.ndarray, pose_ref: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The warp field's neck under head motion (issue 17, "a head that lives"): per frame (N,) the steepest sideways
    shear |∂x_src/∂y| (px per px) of the backward map in the band under the moved jaw (columns between jaw points 4
    and 12, from 3 px under the jaw line to the bottom row), and the same for a neck that sheared evenly from the
    jaw (moving with the head) to the bottom row (the head's sideways travel over the neck's height at the chin's
    column): their ratio is how concentrated the shear is (1: spread evenly; a smeared band: well above 1); and the
    chin's share of its rigid travel (1 - |map's error at the moved chin| / the chin's travel: 1 when the map samples
    the moving chin where the still head does, i.e. the face moves as one; a held chin shears the lower face).
    Frames whose head moves less than 10 px sideways are left out of the shear (nan), chins moving < 5 px too."""
    import torch

    with torch.no_grad():
        e = torch.as_tensor(exp, dtype=torch.float32)
        tgt, _, move, coarse, _ = core.field(  # type: ignore[attr-defined]
            warp, e, torch.as_tensor(pose, dtype=torch.float32), torch.as_tensor(pose_ref, dtype=torch.float32))
        still = core.field(warp, e)[3]  # type: ignore[attr-defined]
    size, g = int(warp.size), int(core.config.grid)  # type: ignore[attr-defined]
    lin, off, _ = move
    lm = (torch.bmm(tgt, lin.transpose(1, 2)) + off.unsqueeze(1)).numpy()  # (N, 68, 2) moved landmarks, px
    lm0 = (tgt @ warp.frame_a.T + warp.frame_t).numpy()  # type: ignore[attr-defined]  # the still head's
    step = (size - 1) / (g - 1)

    def px(c: torch.Tensor) -> np.ndarray:
        return (c.reshape(-1, 2, g, g).numpy() + 1.0) * (size / 2) - 0.5  # (N, 2, G, G) px, rows = y

    def at(f: np.ndarray, p: np.ndarray) -> np.ndarray:  # (2, G, G) bilinear at px point p (2,) → (2,)
        cx, cy = np.clip(p / step, 0, g - 1 - 1e-6)
        x0, y0 = int(cx), int(cy)
        fx, fy = cx - x0, cy - y0
        return (f[:, y0, x0] * (1 - fx) * (1 - fy) + f[:, y0, x0 + 1] * fx * (1 - fy)
                + f[:, y0 + 1, x0] * (1 - fx) * fy + f[:, y0 + 1, x0 + 1] * fx * fy)

    src, src0 = px(coarse), px(still)
    ys = np.linspace(0, size - 1, g)
    dxdy = np.abs(np.diff(src[:, 0], axis=1)) / step  # (N, G-1, G) between rows
    ymid = (ys[1:] + ys[:-1]) / 2
    worst, even, chin = [], [], []
    for i in range(len(lm)):
        jaw = lm[i, 4:13]
        cols = (ys >= jaw[:, 0].min()) & (ys <= jaw[:, 0].max())
        band = (ymid[:, None] >= np.interp(ys, jaw[:, 0], jaw[:, 1])[None, :] + 3.0) & cols[None, :]
        head = float(lm[i, 27:36, 0].mean() - lm0[i, 27:36, 0].mean())  # the nose's sideways travel: the head's
        worst.append(float(dxdy[i][band].max()) if band.any() and abs(head) > 10.0 else np.nan)
        even.append(abs(head) / max(size - 1.0 - float(lm[i, 8, 1]), 1.0))
        travel = float(np.linalg.norm(lm[i, 8] - lm0[i, 8]))
        err = float(np.linalg.norm(at(src[i], lm[i, 8]) - at(src0[i], lm0[i, 8])))
        chin.append(1.0 - err / travel if travel > 5.0 else np.nan)
    return np.asarray(worst), np.asarray(even), np.asarray(chin)


def row_shifts(first: np.ndarray, now: np.ndarray, top: float, cols: tuple[int, int], band: int = 8,
               search: int = 64) -> np.ndarray:
    """How far each band of rows of ``now`` (``band`` rows, from row ``top`` down to the bottom) moved sideways from
    ``first``: the shift (px) of the best normalised cross-correlation of their horizontal gradients (σ 1) over
    columns ``cols`` (the neck's edges, collar and hair carry the signal; bare skin does not), ± ``search`` px.
    (K, 3): the band's middle row, its shift, the correlation."""
    import scipy.ndimage as ndi

    ga, gb = (ndi.sobel(ndi.gaussian_filter(grey(f), 1.0), 1) for f in (first, now))
    size = first.shape[1]
    out = []
    for y in range(max(int(top), 0), first.shape[0] - band + 1, band):
        best, shift = -1.0, 0
        for sh in range(-search, search + 1):
            lo, hi = max(cols[0], -sh, 0), min(cols[1], size - sh, size)
            if hi - lo < 20:
                continue
            u, v = ga[y:y + band, lo:hi].ravel(), gb[y:y + band, lo + sh:hi + sh].ravel()
            u, v = u - u.mean(), v - v.mean()
            c = float(u @ v) / (float(np.linalg.norm(u) * np.linalg.norm(v)) + 1e-6)
            if c > best:
                best, shift = c, sh
        out.append((y + band / 2, shift, best))
    return np.asarray(out, np.float64).reshape(-1, 3)


def neck_follow(real: np.ndarray, posed: np.ndarray, l_real: np.ndarray, far: np.ndarray, min_corr: float = 0.5
                ) -> dict[str, float | int]:
    """How much of the head's sideways travel the rows under the chin take, real vs rendered: per far frame (real
    mouth centre > 20 px sideways from the first frame's) and band of 8 rows from the real chin down, the band's
    sideways shift from the first frame (``row_shifts``, columns of jaw points 3-13 in the first frame) over the
    mouth centre's. Bands whose correlation is below ``min_corr`` in either are left out. In the sample videos the
    rows under the chin move nearly as one (the body), by 0-1 of the head's travel from frame to frame: the
    shear of a real neck sits mostly at the jaw, which slides over it. Returns the mean ratio real and rendered
    and their mean absolute difference (per band)."""
    c = l_real[:, 48:68].mean(1)
    cols = (int(max(l_real[0, 3, 0], 0)), int(min(l_real[0, 13, 0], real.shape[2])))
    r_all, p_all = [], []
    for i in far:
        dx = float(c[i, 0] - c[0, 0])
        if abs(dx) <= 20.0:
            continue
        top = float(l_real[i, 8, 1]) + 2.0
        r, p = row_shifts(real[0], real[i], top, cols), row_shifts(posed[0], posed[i], top, cols)
        keep = (r[:, 2] > min_corr) & (p[:, 2] > min_corr)
        r_all.extend(r[keep, 1] / dx)
        p_all.extend(p[keep, 1] / dx)
    if not r_all:
        return {"follow_bands": 0}
    r_arr, p_arr = np.asarray(r_all), np.asarray(p_all)
    return {"follow_bands": len(r_arr), "follow_real": float(r_arr.mean()), "follow": float(p_arr.mean()),
            "follow_err": float(np.abs(p_arr - r_arr).mean())}


def far_neck(core: object, warp: object, exp: np.ndarray, pose: np.ndarray, pose_ref: np.ndarray, real: np.ndarray,
             posed: np.ndarray, l_real: np.ndarray, travel: float = 20.0) -> dict[str, float | int]:
    """On the frames whose real mouth centre travelled more than ``travel`` px from the first frame's: the neck's
    shear concentration and the chin's share of the travel (``neck_field``), and the SSIM of the region under the
    real jaw (grey, columns between jaw points 4 and 12, rows from the chin down to 0.5 jaw widths or the bottom),
    rendered vs real and the still photo vs real (the baseline); how much of the head's sideways travel the rows
    under the chin take, real vs rendered (``neck_follow``)."""
    from skimage.metrics import structural_similarity

    ok = ~np.isnan(l_real).any((1, 2))
    c = l_real[:, 48:68].mean(1)
    far = np.flatnonzero(ok & (np.linalg.norm(c - c[0], axis=1) > travel))
    if len(far) == 0 or not ok[0]:
        return {"neck_frames": 0}
    worst, even, chin = neck_field(core, warp, exp[far], pose[far], pose_ref)
    ssim, ssim_static = [], []
    for i in far:
        lm = l_real[i]
        x0, x1 = int(max(lm[4, 0], 0)), int(min(lm[12, 0], real.shape[2] - 1))
        y0 = int(lm[8, 1])
        y1 = int(min(y0 + 0.5 * (lm[16, 0] - lm[0, 0]), real.shape[1]))
        if y1 - y0 < 8 or x1 - x0 < 8:
            continue
        r = grey(real[i][y0:y1, x0:x1])
        ssim.append(structural_similarity(grey(posed[i][y0:y1, x0:x1]), r, data_range=255.0))
        ssim_static.append(structural_similarity(grey(posed[0][y0:y1, x0:x1]), r, data_range=255.0))
    ratio = worst / np.maximum(even, 1e-3)  # (nan where the head hardly moved sideways)
    follow = {f"neck_{k}": v for k, v in neck_follow(real, posed, l_real, far).items()}
    return {**follow, "neck_frames": int(len(far)), "neck_shear": float(np.nanmean(worst)),
            "neck_shear_even": float(np.mean(even)),
            "neck_shear_ratio": float(np.nanmean(ratio)), "chin_follow": float(np.nanmean(chin)),
            "neck_ssim": float(np.mean(ssim)) if ssim else float("nan"),
            "neck_ssim_static": float(np.mean(ssim_static)) if ssim_static else float("nan"),
            "neck_ssim_frames": len(ssim)}


def summarise_interior(rows: np.ndarray, gaps: np.ndarray) -> dict[str, float | int]:
    """Interior figures over the open-mouth frames (top third of the real gap); the flat lens on the real frames
    and inside the rendered mouth's own outline (where its interior is drawn)."""
    open_ = gaps >= np.quantile(gaps, 2 / 3)
    out: dict[str, float | int] = {"open_frames": int(open_.sum())}
    for j, who in enumerate(("real", "rendered", "rendered_own_outline")):
        vals = [r[j] for r in rows[open_] if r[j] is not None]
        both = ("luma_mean", "luma_std", "teeth", "bright", "bright_std", "bright_warm")
        for k in (*both, "core_std", "core_vs_skin", "lens"):
            if k in both or j != 1:
                out[f"{who}_{k}"] = float(np.nanmean([v[k] for v in vals])) if vals else float("nan")
    return out


_REAL: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def clip_real(name: str, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A source clip's expression (T, 64), video, scored rows, real frames at those rows and their dlib landmarks
    (detected once per run: the donor table and the quality loop share them)."""
    import scipy.io

    if (name, stride) not in _REAL:
        exp = scipy.io.loadmat(str(DATA / "source" / "3dmm" / f"{name}.mat"))["coeff"].astype(np.float32)[:, 80:144]
        video = read_video_rgb(DATA / "source" / "video" / f"{name}.mp4")
        rows = np.arange(0, min(len(exp), len(video) - SOURCE_OFFSET), stride)
        real = np.stack([video[r + SOURCE_OFFSET] for r in rows])
        l_real = detect_all(real)
        first = video[SOURCE_OFFSET]
        framed = WarpRenderer(size=256, config=WarpConfig(interior="painted")).prepare(first).image
        if not np.array_equal(framed, first):
            # The renderer re-frames a photo whose face is off the standard framing (engine.avatar.crop_face:
            # feifeili_clip2_short's face sits at the right edge): its frames are in the crop's pixels, so the real
            # frames are compared through the same crop (they were compared uncropped: ~9 px and 4 % off).
            crop = crop_face(first, 256, landmarks=detect_landmarks(first))
            real = np.stack([crop_like(f, crop) for f in real])
            l_real = (l_real - np.asarray(crop.origin, np.float32)) * crop.scale
        _REAL[(name, stride)] = (exp, video, rows, real, l_real)
    return _REAL[(name, stride)]


def crop_like(frame: np.ndarray, crop: CroppedFace) -> np.ndarray:
    """``frame`` through the square crop ``crop`` took from its photo (same origin and side, resized alike)."""
    from skimage.transform import resize

    side = int(round(crop.image.shape[0] / crop.scale))
    x0, y0 = crop.origin
    patch = resize(frame[y0 : y0 + side, x0 : x0 + side], crop.image.shape[:2], order=1,
                   anti_aliasing=side > crop.image.shape[0], preserve_range=True)
    return np.clip(np.round(patch), 0, 255).astype(np.uint8)


def donor_table(clips: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per clip and candidate donor (bank speakers with at least MIN_DONOR exemplars, never the clip's own
    speaker): rendered minus real teeth share inside the real inner-lip outline on the open frames (top third of
    the real gap), driven like the face measures (own expression and pose, held-out map)."""
    import torch

    from models.clips import load_pose
    from models.warp.interior import MIN_DONOR

    full = MouthBank.load()
    counts = np.bincount(full.speaker.numpy(), minlength=len(full.speakers))
    candidates = [s for s, c in zip(full.speakers, counts, strict=True) if c >= MIN_DONOR]
    table: dict[str, dict[str, float]] = {}
    for name in clips:
        exp, video, rows, real, l_real = clip_real(name, args.stride)
        ok = ~np.isnan(l_real).any((1, 2))
        gaps = inner_gap(l_real)
        open_ = np.flatnonzero(ok & (gaps >= np.nanquantile(gaps[ok], 2 / 3)))
        pose = load_pose(DATA / "source" / "3dmm" / f"{name}.mat")
        masks = [inner_mask(l_real[i], 256) for i in open_]
        real_teeth = [interior_stats(real[i], m) for i, m in zip(open_, masks, strict=True)]
        table[name] = {}
        bank = MouthBank.load(exclude=(style_label(name),))
        for donor in candidates:
            if donor == style_label(name):
                continue
            rnd = WarpRenderer(size=256, emap=ExpressionMap.load(heldout_clip=name), bank=bank,
                               config=config(donor=donor))
            st = rnd.prepare(video[SOURCE_OFFSET], exp_ref=exp[0])
            st.pose_ref = torch.from_numpy(pose[0].astype(np.float32))  # as in the quality loop: row 0
            out = rnd.render(st, exp[rows[open_]], pose[rows[open_]])
            errs = [b["teeth"] - a["teeth"] for a, b in
                    ((a, interior_stats(o, m)) for a, o, m in zip(real_teeth, out, masks, strict=True))
                    if a is not None and b is not None]
            table[name][donor] = float(np.mean(errs))
        print(f"{name:22s} teeth share error by donor: "
              + " ".join(f"{d} {e:+.3f}" for d, e in table[name].items()), flush=True)
    return table


def loo_donor(table: dict[str, dict[str, float]], clip: str) -> str:
    """The donor with the smallest mean |teeth share error| over the *other* clips (never fitted on ``clip``)."""
    mine = table[clip]
    score = {d: float(np.mean([abs(t[d]) for c, t in table.items() if c != clip and d in t])) for d in mine}
    return min(score, key=lambda d: score[d])


def quality(args: argparse.Namespace) -> dict:
    import skimage.io

    clips = sorted(p.stem for p in (DATA / "source" / "image").glob("*.png"))
    if args.clips:
        clips = [c for c in clips if c in args.clips]
    if not clips:
        raise SystemExit(f"no sample clips under {DATA}")
    donors = donor_table(clips, args)
    face_rows: dict[str, list[dict[str, np.ndarray]]] = {}
    per_clip: dict[str, dict] = {}
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in ("m_lmd", "m_lmd_static", "f_lmd", "f_lmd_static", "gap_r",
                                                            "gap_t")}
    for name in clips:
        exp, video, rows, real, l_real = clip_real(name, args.stride)
        emap = ExpressionMap.load() if args.in_sample else ExpressionMap.load(heldout_clip=name)
        speaker = style_label(name)
        bank = MouthBank.load(exclude=(speaker,))  # leave the scored speaker out of the interiors
        # The shipped donor (the clearest), not the one the teeth share prefers: fitted leave-one-clip-out on it
        # (``donors`` below) KristiNoem wins 7 of 8 clips (|error| 0.104 → 0.088), but its interiors fill the
        # opening with bright pink-beige that the teeth criterion counts as teeth (renderer_mouth_Obama_clip2: no
        # teeth, no cavity); by eye it is worse.
        donor = bank.speakers[bank.donor()]
        matte = not args.no_matte
        renderer = WarpRenderer(size=256, emap=emap, bank=bank, config=config(head_matte=matte))
        painted = WarpRenderer(size=256, emap=emap, config=WarpConfig(interior="painted", head_matte=matte))
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
        first = detect_landmarks(state.image)
        l_rend = detect_all(rendered)
        ok = ~(np.isnan(l_real).any((1, 2)) | np.isnan(l_rend).any((1, 2)))
        a_real = aligned(l_real[ok], first)
        a_rend = aligned(l_rend[ok], first)

        def lmd(a: np.ndarray, b: np.ndarray, sl: slice) -> np.ndarray:
            return np.linalg.norm(a[:, sl] - b[:, sl], axis=-1).mean(-1)

        m, ms = lmd(a_rend, a_real, slice(48, 68)), lmd(first[None], a_real, slice(48, 68))
        f, fs = lmd(a_rend, a_real, slice(0, 68)), lmd(first[None], a_real, slice(0, 68))
        g_rend, g_real = inner_gap(a_rend), inner_gap(a_real)
        corr = float(np.corrcoef(g_rend, g_real)[0, 1])
        # lip rounding / spreading: the inner-lip width 60–64, rendered vs real
        w_rend, w_real = inner_width(a_rend), inner_width(a_real)

        # face measures: driven by the clip's own pose too, unaligned
        pose = load_pose(DATA / "source" / "3dmm" / f"{name}.mat")
        faces, posed_by = {}, {}
        for key, rnd in (("bank", renderer), ("painted", painted)):
            st = state if rnd is renderer else rnd.prepare(image if use_png else first_frame, exp_ref=exp[0])
            rnd.reset(st)
            posed = np.concatenate([rnd.render(st, exp[rows[i : i + 16]], pose[rows[i : i + 16]])
                                    for i in range(0, len(rows), 16)])
            l_posed = detect_all(posed)
            okp = ~(np.isnan(l_real).any((1, 2)) | np.isnan(l_posed).any((1, 2)))
            fm = face_measures(real[okp], posed[okp], state.image, l_real[okp], l_posed[okp], first)
            fc = {k: float(np.mean(fm[k])) for k in fm if k not in ("interior", "gap_real")}
            fc.update(summarise_interior(fm["interior"], fm["gap_real"]))
            fc["frames"] = int(okp.sum())
            faces[key], posed_by[key] = fc, (posed, l_posed, okp, fm["gap_real"])
            face_rows.setdefault(key, []).append(fm)
        face = faces["bank"]
        face["donor"] = donor
        face.update(far_band_streaks(real, posed_by["bank"][0], l_real))
        face.update(far_neck(renderer.core, state.warp, exp[rows], pose[rows], pose[rows[0]], real,
                             posed_by["bank"][0], l_real))
        nose = l_real[~np.isnan(l_real).any((1, 2)), 30]
        face["real_nose_travel_px"] = float(np.linalg.norm(nose - nose.mean(0), axis=-1).max() * 2)
        per_clip[name] = {
            "frames": int(ok.sum()), "m_lmd": float(m.mean()), "m_lmd_static": float(ms.mean()),
            "f_lmd": float(f.mean()), "f_lmd_static": float(fs.mean()), "mouth_opening_corr": corr,
            "avatar": "source/image png" if use_png else "video frame 2", "face": face,
            "face_painted": faces["painted"], "gap_amplitude": float(g_rend.std() / g_real.std()),
            "width_amplitude": float(w_rend.std() / w_real.std()),
            "mouth_width_corr": float(np.corrcoef(w_rend, w_real)[0, 1]),
        }
        for k, v in (("m_lmd", m), ("m_lmd_static", ms), ("f_lmd", f), ("f_lmd_static", fs),
                     ("gap_r", g_rend), ("gap_t", g_real)):
            pooled[k].append(v)
        print(f"{name:22s} frames {ok.sum():4d}  M-LMD {m.mean():5.2f} (static {ms.mean():5.2f})  "
              f"F-LMD {f.mean():5.2f} (static {fs.mean():5.2f})  mouth-opening r {corr:5.2f}  width r "
              f"{per_clip[name]['mouth_width_corr']:5.2f} amplitude {per_clip[name]['width_amplitude']:4.2f}",
              flush=True)
        print(f"{'':22s} mouth SSIM {face['ssim']:.3f} (static {face['ssim_static']:.3f}, own-centred "
              f"{face['ssim_own']:.3f})  PSNR {face['psnr']:.2f}  centre err {face['centre_err']:.2f} px  teeth "
              f"{face['rendered_teeth']:.2f} (own {face['rendered_own_outline_teeth']:.2f}) vs real "
              f"{face['real_teeth']:.2f}  luma {face['rendered_luma_mean']:.0f}±{face['rendered_luma_std']:.0f} vs "
              f"{face['real_luma_mean']:.0f}±{face['real_luma_std']:.0f}  core (own outline) spread "
              f"{face['rendered_own_outline_core_std']:.0f} vs {face['real_core_std']:.0f}, / skin "
              f"{face['rendered_own_outline_core_vs_skin']:.2f} vs {face['real_core_vs_skin']:.2f}, lens frames "
              f"{face['rendered_own_outline_lens']:.2f} vs {face['real_lens']:.2f}", flush=True)
        if face["band_frames"]:
            print(f"{'':22s} uncovered band ({face['band_frames']} frames > 25 px travel): streak anisotropy "
                  f"{face['band_streak']:.2f} vs real {face['band_streak_real']:.2f} (ratio "
                  f"{face['band_streak_ratio']:.2f})", flush=True)
        if face["neck_frames"]:
            print(f"{'':22s} neck ({face['neck_frames']} frames > 20 px travel): steepest shear "
                  f"{face['neck_shear']:.2f} px/px vs even {face['neck_shear_even']:.2f} (ratio "
                  f"{face['neck_shear_ratio']:.2f}), chin follows {face['chin_follow']:.2f} of the head, SSIM under "
                  f"the jaw {face['neck_ssim']:.3f} (still photo {face['neck_ssim_static']:.3f})", flush=True)
            if face.get("neck_follow_bands"):
                print(f"{'':22s} rows under the chin follow {face['neck_follow']:.2f} of the head's sideways travel vs "
                      f"real {face['neck_follow_real']:.2f} (|error| {face['neck_follow_err']:.2f}, "
                      f"{face['neck_follow_bands']} bands)", flush=True)
        if name in args.sheets:
            pb, lb, okb, _ = posed_by["bank"]
            pp, _, okq, _ = posed_by["painted"]
            both = okb & okq
            mouth_sheet(name, real[both], pb[both], pp[both], state.image, l_real[both], lb[both], first,
                        inner_gap(l_real[both]))
        if name in args.sheets:
            pb, lb, okb, _ = posed_by["bank"]
            place_sheet(name, real[okb], pb[okb], l_real[okb], lb[okb])
        if name in args.sheets:
            pick = np.linspace(0, len(rows) - 1, 8).round().astype(int)
            sheet = np.concatenate([tile([real[i] for i in pick], 128), tile([rendered[i] for i in pick], 128),
                                    tile([state.image] * len(pick), 128)], axis=0)
            path = RESULTS / f"renderer_{name}.png"
            skimage.io.imsave(path, sheet, check_contrast=False)
            print(f"  wrote {path} ({path.stat().st_size // 1024} KiB): rows real / rendered / static", flush=True)
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    face_summaries = {}
    for key, fkey in (("bank", "face"), ("painted", "face_painted")):
        rows_k = face_rows[key]
        fcat = {k: np.concatenate([r[k] for r in rows_k]) for k in rows_k[0] if k != "interior"}
        fs = {k: float(np.mean(v)) for k, v in fcat.items() if k != "gap_real"}
        fs["centre_err_max_clip"] = max(c[fkey]["centre_err"] for c in per_clip.values())
        for k in ("real_teeth", "rendered_teeth", "rendered_own_outline_teeth", "real_luma_mean",
                  "rendered_luma_mean", "real_luma_std", "rendered_luma_std", "real_core_std",
                  "rendered_own_outline_core_std", "real_core_vs_skin", "rendered_own_outline_core_vs_skin",
                  "real_lens", "rendered_own_outline_lens"):
            fs[k] = float(np.nanmean([c[fkey][k] for c in per_clip.values()]))
        for k in ("real_bright", "rendered_bright", "real_bright_std", "rendered_bright_std", "real_bright_warm",
                  "rendered_bright_warm"):
            fs[k] = float(np.nanmean([c[fkey].get(k, np.nan) for c in per_clip.values()]))
        fs["warm_abs_err"] = float(np.nanmean(
            [abs(c[fkey]["rendered_bright_warm"] - c[fkey]["real_bright_warm"]) for c in per_clip.values()]))
        fs["bright_std_abs_err"] = float(np.nanmean(
            [abs(c[fkey]["rendered_bright_std"] - c[fkey]["real_bright_std"]) for c in per_clip.values()]))
        fs["bright_abs_err"] = float(np.nanmean(
            [abs(c[fkey]["rendered_bright"] - c[fkey]["real_bright"]) for c in per_clip.values()]))
        fs["teeth_abs_err"] = float(np.nanmean(
            [abs(c[fkey]["rendered_teeth"] - c[fkey]["real_teeth"]) for c in per_clip.values()]))
        fs["teeth_abs_err_own"] = float(np.nanmean(
            [abs(c[fkey]["rendered_own_outline_teeth"] - c[fkey]["real_teeth"]) for c in per_clip.values()]))
        print(f"face, {key} interior (pooled frames; interior: mean over clips):",
              json.dumps({k: round(v, 3) for k, v in fs.items()}))
        face_summaries[key] = fs
    face_summary = face_summaries["bank"]
    face_summary["real_nose_travel_px_max"] = max(c["face"]["real_nose_travel_px"] for c in per_clip.values())
    face_summary["ssim_vs_painted"] = face_summary["ssim"] / face_summaries["painted"]["ssim"]
    face_summary["ssim_own_vs_painted"] = face_summary["ssim_own"] / face_summaries["painted"]["ssim_own"]
    print(f"mouth SSIM bank / painted: real-box {face_summary['ssim_vs_painted']:.3f}, own-centred "
          f"{face_summary['ssim_own_vs_painted']:.3f}")
    summary = {
        "m_lmd": float(cat["m_lmd"].mean()), "m_lmd_static": float(cat["m_lmd_static"].mean()),
        "f_lmd": float(cat["f_lmd"].mean()), "f_lmd_static": float(cat["f_lmd_static"].mean()),
        "mouth_opening_corr": float(np.corrcoef(cat["gap_r"], cat["gap_t"])[0, 1]),
        "frames": int(len(cat["m_lmd"])), "expression_map": "in-sample" if args.in_sample else "held-out per clip",
        "avatar": args.first, "face": face_summary, "face_painted": face_summaries["painted"],
        "gap_amplitude": float(cat["gap_r"].std() / cat["gap_t"].std()),
        # per clip (a speaker's width varies around its own mean), then averaged
        "width_amplitude": float(np.mean([c["width_amplitude"] for c in per_clip.values()])),
        "mouth_width_corr": float(np.mean([c["mouth_width_corr"] for c in per_clip.values()])),
    }
    print("pooled:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}))
    ranked = sorted({d for t in donors.values() for d in t},
                    key=lambda d: float(np.mean([abs(t[d]) for t in donors.values() if d in t])))
    return {"summary": summary, "clips": per_clip, "donors": {
        "teeth_share_error": donors, "loo_pick": {c: loo_donor(donors, c) for c in donors},
        "rank_all_clips": {d: float(np.mean([abs(t[d]) for t in donors.values() if d in t])) for d in ranked}}}


# ------------------------------------------------------------------------------------------ rest and motion
SIL, BILABIAL = 31, (6, 21, 27)  # phindex.json: SIL; B, M, P
HELDOUT_SENTENCE = "andrew_clip_2"  # the built-in decoder's held-out clip (models/assets/styletalk_default.md)


def silent_runs(labels: np.ndarray, min_len: int = 10) -> np.ndarray:
    """Frame indices inside runs of at least ``min_len`` SIL labels."""
    idx, start = [], None
    for i, v in enumerate(np.append(labels, -1)):
        if v == SIL and start is None:
            start = i
        elif v != SIL and start is not None:
            if i - start >= min_len:
                idx.extend(range(start, i))
            start = None
    return np.asarray(idx, np.int64)


def rest_and_closure(args: argparse.Namespace) -> dict:
    """Silence gap per built-in style and bilabial closure, on the built-in avatar (see the module docstring)."""
    from engine.config import Config
    from engine.runtime import BUILTIN_STYLE_CODES, build_decoder
    from models.phonemes import phoneme_windows

    decoder = build_decoder(Config())
    seq = json.loads((DATA / "source" / "phoneme" / f"{HELDOUT_SENTENCE}_seq.json").read_text())[: args.sentence_frames]
    pad = np.full(60, SIL, np.int64)
    labels = np.concatenate([pad, np.asarray(seq, np.int64), pad])
    sil = silent_runs(labels)[:: args.stride]
    bil = np.flatnonzero(np.isin(labels, BILABIAL))
    renderer = WarpRenderer(size=256)
    state = renderer.prepare(builtin_avatar(256))
    photo_gap = float(inner_gap(detect_landmarks(state.image)))
    windows = phoneme_windows(labels)
    out: dict = {"photo_gap_px": photo_gap, "sentence": HELDOUT_SENTENCE, "silent_frames": int(len(sil)),
                 "bilabial_frames": int(len(bil)), "styles": {}}
    with np.load(BUILTIN_STYLE_CODES) as codes:
        names = [n for n in codes.files if n != "names"]
        for style in names:
            exp = decoder.decode(windows, codes[style])
            if not args.no_rest_reference:
                renderer.set_rest(state, decoder.idle(codes[style]))
            pick = np.concatenate([sil, bil])
            frames = renderer.render(state, exp[pick], None)
            gaps = inner_gap(detect_all(frames))
            g_sil, g_bil = gaps[: len(sil)], gaps[len(sil):]
            row = {"silence_gap_px": float(np.nanmean(g_sil) - photo_gap),
                   "silence_gap_abs_px": float(np.nanmean(np.abs(g_sil - photo_gap))),
                   "bilabial_closed": float(np.nanmean(g_bil <= 1.0)),
                   "bilabial_closed_2px": float(np.nanmean(g_bil <= 2.0)),
                   "bilabial_gap_px": float(np.nanmedian(g_bil))}
            out["styles"][style] = row
            print(f"  style {style:12s} silence gap − photo {row['silence_gap_px']:+6.2f} px   bilabial closed "
                  f"{row['bilabial_closed']:.0%} (median gap {row['bilabial_gap_px']:.1f} px)", flush=True)
    st = out["styles"].values()
    out["silence_gap_px_mean"] = float(np.mean([r["silence_gap_px"] for r in st]))
    out["silence_gap_px_worst"] = float(max((r["silence_gap_px"] for r in st), key=abs))
    out["bilabial_closed_mean"] = float(np.mean([r["bilabial_closed"] for r in st]))
    out["bilabial_closed_2px_mean"] = float(np.mean([r["bilabial_closed_2px"] for r in st]))
    out["bilabial_gap_px_median"] = float(np.median([r["bilabial_gap_px"] for r in st]))
    print(f"rest: photo gap {photo_gap:.1f} px; silence gap − photo mean {out['silence_gap_px_mean']:+.2f} px "
          f"(worst {out['silence_gap_px_worst']:+.2f}); bilabial closed {out['bilabial_closed_mean']:.0%} "
          f"(≤ 2 px: {out['bilabial_closed_2px_mean']:.0%})", flush=True)
    return out


def angle_speed(angles_deg: np.ndarray) -> np.ndarray:
    """Head angular speed (T,) in °/s of an angle track (T, 3) in degrees at 30 fps, smoothed over ±1.5 frames
    first (the per-frame 3DMM fits jitter); frame i's speed is that of the step i-1 → i (frame 0: step 0 → 1)."""
    from scipy.ndimage import gaussian_filter1d

    step = np.linalg.norm(np.diff(gaussian_filter1d(angles_deg, 1.5, axis=0), axis=0), axis=1) * 30.0
    return np.r_[step[:1], step]


def speaking_mask(labels: np.ndarray) -> np.ndarray:
    """Frames (T,) with speech in most of their ±5-frame neighbourhood (labels other than SIL/NSN)."""
    from scipy.ndimage import uniform_filter1d

    from models.phonemes import NSN

    return uniform_filter1d((~np.isin(labels, (SIL, NSN))).astype(float), 11) > 0.5


def onset_frames(labels: np.ndarray, pause: int = 8) -> np.ndarray:
    """Phrase onsets: the first speech frame after at least ``pause`` silent frames."""
    from models.phonemes import NSN

    speech = ~np.isin(labels, (SIL, NSN))
    return np.array([i for i in range(pause, len(labels))
                     if speech[i] and not speech[i - pause:i].any()], np.int64)


def sample_speakers() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The 8 source clips with reference phoneme labels: angles (T, 3) in degrees, 3DMM translation (T, 3) and
    labels (T,)."""
    import scipy.io

    out = {}
    for mat in sorted((DATA / "source" / "3dmm").glob("*.mat")):
        seq = DATA / "source" / "phoneme" / f"{mat.stem}_seq.json"
        coeff = scipy.io.loadmat(str(mat))["coeff"].astype(np.float64)
        labels = np.asarray(json.loads(seq.read_text()), np.int64)
        n = min(len(coeff), len(labels))
        out[mat.stem] = (np.degrees(coeff[:n, 224:227]), coeff[:n, 254:257], labels[:n])
    return out


# (rate in silence, in speech, added at onsets: engine.motion.HEAD_RATE) × a gain on the angles' amplitude
RATE_GRID = (np.round(np.arange(0.1, 0.61, 0.05), 2), np.round(np.arange(0.3, 1.01, 0.1), 2),
             np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]))
AMP_GRID = np.round(np.arange(0.7, 1.21, 0.1), 2)
MOTION_SEEDS = (0, 1, 2)  # generated motion is scored over three seeds (its rhythm is random)
Motion = tuple[float, float, float, float]  # (rate in silence, in speech, at onsets, angle gain)
OLD_MOTION = "amplitude gain 0.0 / 0.9 / 0.5 on the fast bands, tempo 0.5"  # the motion this replaced
SPEECH_INDEPENDENT: Motion = (0.5, 0.5, 0.0, 1.0)  # the same path at one constant rate


def _old_motion(seed: int, labels: np.ndarray) -> np.ndarray:
    """The previous generator (speech gain on the amplitude of the bands from 0.25 Hz, tempo 0.5, gains 0.0 /
    0.9 / 0.5), kept here only to show before / after on the same clips: pose (T, 9), angles in radians."""
    from engine.motion import HEAD_BAND_SHARE, HEAD_BANDS_HZ, HEAD_STD, speech_activity
    from models.phonemes import phoneme_windows

    gains = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6])  # its gains (the angles at 1.0)

    rng = np.random.default_rng([seed, 1])
    freq = 0.5 * np.stack([rng.uniform(lo, hi, size=9) for lo, hi in HEAD_BANDS_HZ])
    phase = rng.uniform(0, 2 * np.pi, size=freq.shape)
    amp = np.sqrt(2.0 * HEAD_BAND_SHARE / HEAD_BAND_SHARE.sum())[:, None] * (HEAD_STD * gains)[None, :]
    t = np.arange(len(labels))[:, None, None] / 30.0
    wave = np.sin(2 * np.pi * freq[None] * t + phase[None]) * amp[None]
    fast = np.array([lo >= 0.25 for lo, _ in HEAD_BANDS_HZ])
    activity, onset = speech_activity(phoneme_windows(labels))
    gain = 0.0 + 0.9 * activity + 0.5 * onset
    return wave[:, ~fast].sum(1) + gain[:, None] * wave[:, fast].sum(1)


class SpeakerSpeeds:
    """Per clip the angular speeds of speech, silence and near-onset frames and the angles' and translation's
    spread, real and generated (engine.motion.IdleMotion as a session drives it, the clip's labels as its
    phoneme windows) for every (rates, angle gain) of ``RATE_GRID`` × ``AMP_GRID`` (the gain scales speed and
    spread alike: generated once per rates)."""

    def __init__(self) -> None:
        from engine.motion import IdleMotion
        from models.phonemes import phoneme_windows

        self.real: dict[str, list[np.ndarray]] = {}
        self.gen: dict[Motion, dict[str, list[np.ndarray]]] = {}
        self.old: dict[str, list[np.ndarray]] = {}
        rates = [(float(a), float(b), float(c)) for a in RATE_GRID[0] for b in RATE_GRID[1] for c in RATE_GRID[2]]
        if SPEECH_INDEPENDENT[:3] not in rates:
            rates.append(SPEECH_INDEPENDENT[:3])  # type: ignore[arg-type]
        self.grid: list[Motion] = [(*r, float(g)) for r in rates for g in AMP_GRID]
        for name, (ang, trans, labels) in sample_speakers().items():
            sp = speaking_mask(labels)
            near = np.unique(np.concatenate([np.arange(max(o - 3, 0), min(o + 2, len(labels)))
                                             for o in onset_frames(labels)] or [np.zeros(0, np.int64)]))

            def split(a: np.ndarray, tr: np.ndarray, sp: np.ndarray = sp, near: np.ndarray = near
                      ) -> list[np.ndarray]:
                v = angle_speed(a)
                return [v[sp], v[~sp], v[near], a.std(0)[None], tr.std(0)[None]]

            self.real[name] = split(ang, trans)
            frames, win = np.arange(len(labels)), phoneme_windows(labels)
            for seed in MOTION_SEEDS:
                before = _old_motion(seed, labels)
                old = split(np.degrees(before[:, :3]), before[:, 3:6])
                acc = self.old.get(name)
                self.old[name] = old if acc is None else [np.concatenate([x, y]) for x, y in zip(acc, old, strict=True)]
                for r in rates:
                    pose = IdleMotion(seed=seed, rates=r).poses(frames, win).astype(np.float64)
                    base = split(np.degrees(pose[:, :3]), pose[:, 3:6])
                    for g in AMP_GRID:
                        parts = [base[0] * g, base[1] * g, base[2] * g, base[3] * g, base[4]]
                        key = (*r, float(g))
                        acc = self.gen.setdefault(key, {}).get(name)
                        self.gen[key][name] = parts if acc is None else \
                            [np.concatenate([x, y]) for x, y in zip(acc, parts, strict=True)]

    @staticmethod
    def stats(per_clip: list[list[np.ndarray]]) -> dict[str, float]:
        """Pooled median speed in speech and silence (°/s), their ratio, the mean speed near phrase onsets
        (3 frames before to 1 after) over the speech median, and the mean per-clip spread (std) of pitch, yaw
        and roll (°) and of the 3DMM translation x, y, z."""
        sp, si, near, spread, trans = (np.concatenate([c[k] for c in per_clip]) for k in range(5))
        out = {"speech_deg_s": float(np.median(sp)), "silence_deg_s": float(np.median(si)) if si.size else np.nan}
        out["speech_over_silence"] = out["speech_deg_s"] / out["silence_deg_s"]
        out["onset_over_speech"] = float(np.mean(near)) / out["speech_deg_s"] if near.size else np.nan
        for k, v in zip(("pitch", "yaw", "roll"), spread.mean(0), strict=True):
            out[f"{k}_std_deg"] = float(v)
        for k, v in zip("xyz", trans.mean(0), strict=True):
            out[f"trans_{k}_std"] = float(v)
        return out

    def clip_stats(self, key: Motion | None, clip: str) -> dict[str, float]:
        """``stats`` of one clip, real (key None) or generated; cached (the leave-one-out fits reuse them)."""
        cache = self.__dict__.setdefault("_stats", {})
        if (key, clip) not in cache:
            cache[key, clip] = self.stats([self.real[clip] if key is None else self.gen[key][clip]])
        return cache[key, clip]

    def fit(self, clips: list[str]) -> Motion:
        """The (rates, angle gain) whose generated motion best matches these clips' real speed in speech, in
        silence and near onsets and their angles' spread, as the median over the clips of each clip's figure
        (the clips differ widely: one pool is dominated by the long ones); error: sum of squared log ratios,
        the spread's averaged over the three angles."""
        keys = ("speech_deg_s", "silence_deg_s", "onset_over_speech", "speech_over_silence")
        spread = ("pitch_std_deg", "yaw_std_deg", "roll_std_deg")

        def med(key: Motion | None) -> dict[str, float]:
            per = [self.clip_stats(key, c) for c in clips]
            return {k: float(np.nanmedian([p[k] for p in per])) for k in keys + spread}

        target = med(None)

        def err(g: Motion) -> float:
            st = med(g)
            return float(sum(np.log(st[k] / target[k]) ** 2 for k in keys)
                         + np.mean([np.log(st[k] / target[k]) ** 2 for k in spread]))

        return min(self.grid, key=err)


def speech_driven_motion() -> dict:
    """How the sample speakers' head speed follows speech, and the generated motion's, leave-one-clip-out:
    the head clock's rates and the angle gain are fitted on 7 clips and the 8th clip's labels drive the motion
    scored against its real one. Also the shipped motion (engine.motion.HEAD_RATE, fitted on all 8) and the
    amplitude-gain generator it replaced, on every clip."""
    from engine.motion import HEAD_RATE

    data = SpeakerSpeeds()
    names = sorted(data.real)
    shipped: Motion = (*HEAD_RATE, 1.0)
    per_clip = {}
    for name in names:
        fitted = data.fit([c for c in names if c != name])
        r, g = data.stats([data.real[name]]), data.stats([data.gen[fitted][name]])
        s, o = data.stats([data.gen[shipped][name]]), data.stats([data.old[name]])
        u = data.stats([data.gen[SPEECH_INDEPENDENT][name]])
        per_clip[name] = {"rates_gain_fitted_without": fitted, "real": r, "generated": g, "shipped": s,
                          "before": o, "speech_independent": u}
        print(f"  {name:22s} fitted {fitted}  speech/silence speed real {r['speech_over_silence']:.2f} held-out "
              f"{g['speech_over_silence']:.2f} shipped {s['speech_over_silence']:.2f} before "
              f"{o['speech_over_silence']:.2f}; °/s speech {r['speech_deg_s']:.1f}/{g['speech_deg_s']:.1f}/"
              f"{o['speech_deg_s']:.1f}, silence {r['silence_deg_s']:.1f}/{g['silence_deg_s']:.1f}/"
              f"{o['silence_deg_s']:.1f}; onset surge {r['onset_over_speech']:.2f}/{g['onset_over_speech']:.2f}/"
              f"{o['onset_over_speech']:.2f}; yaw std {r['yaw_std_deg']:.1f}/{g['yaw_std_deg']:.1f}/"
              f"{o['yaw_std_deg']:.1f}", flush=True)
    keys = ("speech_over_silence", "speech_deg_s", "silence_deg_s", "onset_over_speech", "pitch_std_deg",
            "yaw_std_deg", "roll_std_deg", "trans_x_std", "trans_y_std", "trans_z_std")
    whos = ("real", "generated", "shipped", "before", "speech_independent")
    out = {"per_clip": per_clip, "shipped": list(shipped), "fitted_on_all": list(data.fit(names)),
           "before": OLD_MOTION, "generated_means": "leave-one-clip-out: rates and angle gain fitted without the clip",
           "median_over_clips": {w: {k: float(np.nanmedian([c[w][k] for c in per_clip.values()])) for k in keys}
                                 for w in whos}}
    m = out["median_over_clips"]
    print("head motion, median over the 8 clips (real / held-out fit / shipped / before / speech-independent): "
          + "; ".join(f"{k} " + " / ".join(f"{m[w][k]:.2f}" for w in whos) for k in keys[:7])
          + f"; fitted on all clips {out['fitted_on_all']} (shipped {out['shipped']})", flush=True)
    return out


def head_motion(args: argparse.Namespace) -> dict:
    """Default (unscripted) head motion of the engine vs the sample speakers: angle spread and nose travel,
    and (``speech_driven_motion``) how its speed follows speech."""
    import scipy.io

    from engine.motion import IdleMotion
    from models.phonemes import phoneme_windows

    real = []
    for mat in sorted((DATA / "source" / "3dmm").glob("*.mat")) + sorted((DATA / "style" / "3dmm").glob("*.mat")):
        ang = scipy.io.loadmat(str(mat))["coeff"][:, 224:227]
        real.append(np.degrees(ang.std(0)))
    real_std = np.mean(real, 0)
    # the engine's motion while speaking the held-out sentence (between 1 s of silence), as a session makes it
    seq = json.loads((DATA / "source" / "phoneme" / f"{HELDOUT_SENTENCE}_seq.json").read_text())[:600]
    labels = np.concatenate([np.full(30, SIL), np.asarray(seq, np.int64), np.full(30, SIL)])
    n = len(labels)
    motion = IdleMotion(seed=0, fps=30)
    poses = motion.poses(np.arange(n), phoneme_windows(labels))
    rend_std = np.degrees(poses[:, :3].std(0))
    renderer = WarpRenderer(size=256)
    state = renderer.prepare(builtin_avatar(256))
    frames = renderer.render(state, np.zeros((n, 64), np.float32)[::3], poses[::3])
    nose = detect_all(frames)[:, 30]
    travel = float(np.nanmax(np.linalg.norm(nose - np.nanmean(nose, 0), axis=-1)) * 2)
    out = {"real_angle_std_deg": real_std.tolist(), "rendered_angle_std_deg": rend_std.tolist(),
           "rendered_nose_travel_px": travel, "seconds": n / 30}
    print(f"head: angle std (pitch, yaw, roll) real {np.round(real_std, 2).tolist()} deg, rendered default "
          f"{np.round(rend_std, 2).tolist()} deg; rendered nose travel over {n / 30:.0f} s {travel:.1f} px",
          flush=True)
    out["speech"] = speech_driven_motion()
    return out


def heldout_sentence(frames: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out sentence's first ``frames`` reference labels between ``pad`` frames of silence, the built-in
    decoder's output for them in the neutral style, and that style's silence (the renderer's rest): labels (T,),
    expression (T, 64), rest (64,)."""
    from engine.config import Config
    from engine.runtime import BUILTIN_STYLE_CODES, build_decoder
    from models.phonemes import phoneme_windows

    seq = json.loads((DATA / "source" / "phoneme" / f"{HELDOUT_SENTENCE}_seq.json").read_text())[:frames]
    labels = np.concatenate([np.full(pad, SIL), np.asarray(seq, np.int64), np.full(pad, SIL)])
    with np.load(BUILTIN_STYLE_CODES) as codes:
        code = codes["neutral"]
    decoder = build_decoder(Config())
    return labels, decoder.decode(phoneme_windows(labels), code), decoder.idle(code)


def rest_motion_sheet() -> Path:
    """Built-in avatar, style neutral, the held-out sentence between 2 s of silence. Rows: the old behaviour
    (rendered relative to zero expression, painted interior, still head) / now (relative to the style's rest,
    real interiors) at silence, bilabials and open frames; then 6 s of the default head motion, 1 s apart."""
    import skimage.io

    from engine.motion import IdleMotion

    labels, exp, rest = heldout_sentence(120, 60)
    bil = np.flatnonzero(np.isin(labels, BILABIAL))
    gw = ExpressionMap.load().weights.numpy()
    gap = exp @ (gw[:, 66, 1] - gw[:, 62, 1])
    speech = np.arange(60, len(labels) - 60)
    pick = np.concatenate([[10, 40], bil[:: max(1, len(bil) // 3)][:3], speech[np.argsort(-gap[speech])[:3:1]]])
    old = WarpRenderer(size=256, config=WarpConfig(interior="painted"))
    st_old = old.prepare(builtin_avatar(256))
    new = WarpRenderer(size=256)
    st_new = new.prepare(builtin_avatar(256))
    new.set_rest(st_new, rest)
    rows = [tile(list(old.render(st_old, exp[pick], None)), 160), tile(list(new.render(st_new, exp[pick], None)), 160)]
    t = np.arange(0, 6 * 30, 30)
    poses = IdleMotion(seed=0).poses(np.arange(6 * 30))
    new.reset(st_new)
    moved = new.render(st_new, np.repeat(rest[None], len(t), 0), poses[t])
    rows.append(np.concatenate([tile(list(moved), 160), tile([st_new.image, st_new.image], 160)], 1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    path = RESULTS / "renderer_rest_motion.png"
    skimage.io.imsave(path, sheet, check_contrast=False)
    print(f"  wrote {path}: rows old / now (silence ×2, bilabials ×3, open ×3) / head motion over 6 s + photo",
          flush=True)
    return path


def mouth_sheet(name: str, real: np.ndarray, rend: np.ndarray, painted: np.ndarray, static: np.ndarray,
                l_real: np.ndarray, l_rend: np.ndarray, l_static: np.ndarray, gaps: np.ndarray) -> Path:
    """Mouth close-ups of 8 open frames: real / rendered / rendered (own box) / painted interior / static."""
    import skimage.io
    from scipy.ndimage import map_coordinates

    def crop(img: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
        t = (np.arange(128) + 0.5) / 128 - 0.5
        ys, xs = np.meshgrid(centre[1] + t * side, centre[0] + t * side, indexing="ij")
        return np.stack([map_coordinates(img[..., c].astype(np.float32), [ys, xs], order=1, mode="nearest")
                         for c in range(3)], -1).clip(0, 255).astype(np.uint8)

    pick = np.sort(np.argsort(-gaps)[: 8 * 3 : 3])
    rows = [[], [], [], [], []]
    for i in pick:
        c, side = mouth_box(l_real[i])
        rows[0].append(crop(real[i], c, side))
        rows[1].append(crop(rend[i], c, side))
        rows[2].append(crop(rend[i], mouth_box(l_rend[i])[0], side))
        rows[3].append(crop(painted[i], mouth_box(l_rend[i])[0], side))
        rows[4].append(crop(static, mouth_box(l_static)[0], side))
    sheet = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
    path = RESULTS / f"renderer_mouth_{name}.png"
    skimage.io.imsave(path, sheet, check_contrast=False)
    print(f"  wrote {path}: rows real / rendered (real box) / rendered (own box) / painted interior (same box) / "
          "static photo", flush=True)
    return path


SHEET_PHOTOS = (("source", "KristiNoem"), ("source", "andrew_clip_1"), ("source", "feifeili_clip2_short"),
                ("style", "trump_clip1"), ("style", "happyenglish_clip1"))  # first video frames used as avatars


def place_sheet(name: str, real: np.ndarray, posed: np.ndarray, l_real: np.ndarray, l_posed: np.ndarray) -> Path:
    """Placement sheet: real frames (top) and the frames rendered with the clip's own pose (bottom), the six frames
    whose real mouth centre lies farthest from the first frame's; dots: real mouth centre (green), rendered (red)."""
    import skimage.io
    from skimage.draw import disk

    centre_real, centre_rend = l_real[:, 48:68].mean(1), l_posed[:, 48:68].mean(1)
    pick = np.sort(np.argsort(-np.linalg.norm(centre_real - centre_real[0], axis=1))[:5])
    pick = np.concatenate([[0], pick])
    strips = []
    for images in (real, posed):
        row = []
        for i in pick:
            img = images[i].copy()
            for c, colour in ((centre_real[i], (0, 255, 0)), (centre_rend[i], (255, 0, 0))):
                rr, cc = disk((c[1], c[0]), 3, shape=img.shape[:2])
                img[rr, cc] = colour
            row.append(img)
        strips.append(np.concatenate(row, 1))
    path = RESULTS / f"renderer_place_{name}.png"
    skimage.io.imsave(path, np.concatenate(strips, 0), check_contrast=False)
    print(f"  wrote {path}: rows real / rendered with the clip's pose (dots: real / rendered mouth centre)", flush=True)
    return path


def corner_glare(frame: np.ndarray, lmk: np.ndarray, photo: np.ndarray, lmk_photo: np.ndarray) -> int:
    """Bright pixels at the mouth corners outside the outer-lip outline that the photo has not got there.

    Around each mouth corner (48, 54; a disc of a quarter of the mouth's width), outside the outline 48–59
    (grown by one pixel), the pixels brighter than the photo's brightest there (+15 grey levels): the "white
    fang-like triangles" of teeth or interior torn out past the lips.
    """
    from scipy.ndimage import binary_dilation
    from skimage.draw import disk, polygon

    def ring(image: np.ndarray, marks: np.ndarray) -> list[np.ndarray]:
        size = image.shape[0]
        lips = np.zeros((size, size), bool)
        rr, cc = polygon(marks[48:60, 1], marks[48:60, 0], (size, size))
        lips[rr, cc] = True
        lips = binary_dilation(lips, iterations=1)
        radius = 0.25 * float(np.linalg.norm(marks[54] - marks[48]))
        out = []
        for c in (48, 54):
            m = np.zeros((size, size), bool)
            rr, cc = disk((marks[c, 1], marks[c, 0]), radius, shape=(size, size))
            m[rr, cc] = True
            out.append(grey(image)[m & ~lips])
        return out

    count = 0
    for mine, theirs in zip(ring(frame, lmk), ring(photo, lmk_photo), strict=True):
        if len(mine) and len(theirs):
            count += int((mine > theirs.max() + 15.0).sum())
    return count


def speech_frames(exp: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Frames to show: silence, the widest opening, a rounded and a spread opening (narrowest / widest mouth
    among the open half, by the expression map), and a bilabial."""
    w = ExpressionMap.load().weights.numpy()
    gap = exp @ (w[:, [67, 66, 65], 1] - w[:, [61, 62, 63], 1]).mean(1)
    width = exp @ (w[:, 64, 0] - w[:, 60, 0])
    speech = np.flatnonzero(labels != SIL)
    open_ = speech[gap[speech] >= np.median(gap[speech])]
    bil = np.flatnonzero(np.isin(labels, BILABIAL))
    return {"silence": int(np.flatnonzero(labels == SIL)[10]), "open": int(speech[np.argmax(gap[speech])]),
            "rounded": int(open_[np.argmin(width[open_])]), "spread": int(open_[np.argmax(width[open_])]),
            "bilabial": int(bil[len(bil) // 2])}


def photo_sheet() -> dict:
    """The astronaut and first frames of sample videos as avatars, speaking the held-out sentence in the neutral
    style: per photo a row of mouth close-ups with the real interiors (photo, silence, open, rounded, spread,
    bilabial) and the same with the painted interior; plus the corner-glare count of every rendered frame."""
    import skimage.io
    from scipy.ndimage import map_coordinates

    labels, exp, rest = heldout_sentence(150, 30)
    pick = speech_frames(exp, labels)
    photos = [("astronaut", builtin_avatar(256))] + [
        (name, read_video_rgb(DATA / group / "video" / f"{name}.mp4")[0]) for group, name in SHEET_PHOTOS]
    bank = WarpRenderer(size=256, config=config())
    painted = WarpRenderer(size=256, config=WarpConfig(interior="painted"))

    def crop(img: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
        t = (np.arange(128) + 0.5) / 128 - 0.5
        ys, xs = np.meshgrid(centre[1] + t * side, centre[0] + t * side, indexing="ij")
        return np.stack([map_coordinates(img[..., c].astype(np.float32), [ys, xs], order=1, mode="nearest")
                         for c in range(3)], -1).clip(0, 255).astype(np.uint8)

    rows, glare, lens = [], {}, {}
    for name, photo in photos:
        for key, rnd in (("bank", bank), ("painted", painted)):
            st = rnd.prepare(photo)
            rnd.set_rest(st, rest)
            every = rnd.render(st, exp, None)
            c, side = mouth_box(st.landmarks)
            frames = [st.image] + [every[i] for i in pick.values()]
            rows.append(np.concatenate([crop(f, c, side) for f in frames], 1))
            if key == "bank":
                marks = detect_all(every[::3])
                ok = ~np.isnan(marks).any((1, 2))
                glare[name] = int(sum(corner_glare(f, m, st.image, st.landmarks)
                                      for f, m in zip(every[::3][ok], marks[ok], strict=True)))
                lens[name] = photo_lens(every[::3][ok], marks[ok], st.image, st.landmarks)
    path = RESULTS / "renderer_photos.png"
    skimage.io.imsave(path, np.concatenate(rows, 0), check_contrast=False)
    print(f"  wrote {path}: per photo (astronaut, {', '.join(n for _, n in SHEET_PHOTOS)}) rows real interior / "
          f"painted; columns photo, {', '.join(pick)}; corner glare pixels (every 3rd frame): {glare}", flush=True)
    print("  open mouth (top third of the rendered gap, every 3rd frame), its core: luma spread, mean / skin, lens "
          "frames: " + "; ".join(f"{n} {v['core_std']:.1f} {v['core_vs_skin']:.2f} {v['lens']:.2f}"
                                 for n, v in lens.items()), flush=True)
    return {"sheet": str(path.relative_to(REPO_ROOT)), "frames": pick, "corner_glare_px": glare, "open_mouth": lens}


def photo_lens(frames: np.ndarray, marks: np.ndarray, photo: np.ndarray, lmk_photo: np.ndarray) -> dict[str, float]:
    """The flat lens on a photo (no real frames to compare with): the mouth core's figures (``core_stats``) inside
    each rendered frame's own inner-lip outline, mean over its open frames (top third of the rendered gap)."""
    gaps = inner_gap(marks)
    skin = skin_luma(photo, lmk_photo)
    stats = [core_stats(frames[i], inner_mask(marks[i], frames.shape[1]), skin)
             for i in np.flatnonzero(gaps >= np.quantile(gaps, 2 / 3))]
    return {"open_frames": len(stats), **{k: float(np.nanmean([s[k] for s in stats])) for k in stats[0]}}


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


BLINK_AVATARS = ("astronaut", "Obama_clip1", "KristiNoem")


def blink_strips(config: WarpConfig | None = None) -> list[np.ndarray]:
    """Per avatar (the built-in one and two sample clips' frame 2), the 7 frames of an idle blink
    (engine.motion's closure profile), cropped to both eyes and enlarged 3×: one strip each (``config``: the
    renderer's, default if None)."""
    from skimage.transform import resize

    from engine.motion import IdleMotion

    closure = IdleMotion(seed=0).blink_amounts(np.arange(30, 37))  # the first blink starts at frame 30
    r = WarpRenderer(size=256, config=config)
    strips = []
    for name in BLINK_AVATARS:
        img = builtin_avatar(256) if name == "astronaut" else \
            read_video_rgb(DATA / "source" / "video" / f"{name}.mp4")[SOURCE_OFFSET]
        st = r.prepare(img)
        frames = r.render(st, np.zeros((len(closure), 64), np.float32), None, blink=closure)
        eyes = st.landmarks[36:48]
        (x0, y0), (x1, y1) = eyes.min(0), eyes.max(0)
        w = 1.3 * (x1 - x0)
        cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, 0.45 * w
        box = (slice(int(cy - h / 2), int(cy + h / 2)), slice(int(cx - w / 2), int(cx + w / 2)))
        crops = [resize(f[box], (3 * f[box].shape[0], 3 * f[box].shape[1]), order=0, preserve_range=True)
                 for f in frames]
        strips.append(np.concatenate(crops, 1).astype(np.uint8))
    return strips


def blink_sheet() -> Path:
    """The idle blink, close-up: one row per avatar (see :func:`blink_strips`)."""
    import skimage.io

    strips = blink_strips()
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0))) for s in strips], 0)
    path = RESULTS / "renderer_blink.png"
    skimage.io.imsave(path, sheet, check_contrast=False)
    print(f"  wrote {path}: rows {', '.join(BLINK_AVATARS)}; 7 frames of a blink each", flush=True)
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
    ap.add_argument("--no-rest", action="store_true", help="skip the silence / bilabial-closure measures")
    ap.add_argument("--no-rest-reference", action="store_true",
                    help="render relative to zero expression, not the style's silence (the old behaviour)")
    ap.add_argument("--sentence-frames", type=int, default=300,
                    help="frames of the held-out sentence used for the rest / closure measures")
    ap.add_argument("--first", choices=["frame", "png"], default="frame",
                    help="avatar: video frame 2 (matches coefficient row 0) or the source/image still")
    ap.add_argument("--sheets", nargs="*", default=["Obama_clip1", "feifeili_clip1"])
    ap.add_argument("--head-only", action="store_true",
                    help="only the head-motion measures and the blink sheet (the rest of renderer.json is kept)")
    ap.add_argument("--clips", nargs="*", default=None, help="score only these source clips (default: all)")
    ap.add_argument("--no-photos", action="store_true", help="skip the sample-photo mouth sheet")
    ap.add_argument("--no-matte", action="store_true",
                    help="quality: the moving head without its head+hair matte (WarpConfig.head_matte=False), the "
                         "path before it, for an A/B of the place sheets and the uncovered band's streaks")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="WarpConfig fields (numbers) for the bank renderers scored, e.g. interior_hold_stretch=0 (the "
                         "path before it); results are then written only to --out")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/renderer.json)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    OVERRIDES.update(parse_set(args.set))
    if args.head_only:
        out = RESULTS / "renderer.json"
        old = json.loads(out.read_text()) if out.is_file() else {}
        old["head_motion"] = {**head_motion(args), "loadavg": list(os.getloadavg())}
        old["blink_sheet"] = str(blink_sheet().relative_to(REPO_ROOT))
        write_results(out, old)
        return 0

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
    if not args.no_rest:
        result["blink_sheet"] = str(blink_sheet().relative_to(REPO_ROOT))
    if not args.no_quality:
        result["quality"] = quality(args)
    if not args.no_rest:
        result["rest"] = rest_and_closure(args)
        result["rest_motion_sheet"] = str(rest_motion_sheet().relative_to(REPO_ROOT))
        result["head_motion"] = head_motion(args)
    if not args.no_quality and not args.no_photos:
        result["photos"] = photo_sheet()
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out = Path(args.out) if args.out else RESULTS / "renderer.json"
    if OVERRIDES and not args.out:
        print("--set without --out: results not written")
        return 0
    if args.clips:  # a partial run (iterating on a few clips) prints; it does not replace the full results
        print("--clips: results not written")
        return 0
    if out.is_file() and (args.no_speed or args.no_quality):  # keep the other half of an earlier full run
        old = json.loads(out.read_text())
        if args.no_quality and args.no_rest and not args.no_speed:
            # speed only: its machine and load figures describe the speed rows; "machine" stays the quality run's
            result["speed_machine"] = result.pop("machine")
        keep = ("speed", "quality", "rest", "head_motion", "rest_motion_sheet", "blink_sheet", "machine",
                "speed_machine", "photos")
        result = {**{k: v for k, v in old.items() if k in keep}, **result}
    write_results(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
