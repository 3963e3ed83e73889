"""Bilabial closure on real photos (issue 17): how a photo that shows its teeth looks when driven to close its lips.

Every photo (the built-in astronaut, the first video frame of the 8 source clips and of the two style clips of
the photo sheet, trump_clip1 and happyenglish_clip1) speaks the built-in decoder's held-out sentence
(andrew_clip_2's reference labels, neutral style, rendered relative to the style's silence as the engine does);
its P/B/M frames (the renderer closes the lips there) are scored:

- ``specks``: pixels per frame inside the rendered lips' outer outline (the target landmarks 48–59, shrunk by a
  pixel) that are no lip: darker than the photo's darkest lip shade (its 5th percentile, or the seam's shade, 3/4
  of its median, if darker; less 15 grey levels: cavity squeezed into the seam) or bright
  and unsaturated like teeth (teeth squeezed between the lips);
- ``seam_rough``: how jagged the seam is (``seam_roughness``: the darkest pixel near the seam, its mean change from
  column to column, grey levels);
- ``lip_share``: of the pixels inside that outline, the share nearer the photo's lip colour than its skin colour
  (a mouth whose lips were skipped over closes to a skin-coloured "scar": low share);
- ``ssim_closed``: SSIM of a 64×64 grey mouth crop against a real closed-mouth frame of the same speaker from the
  photo's own video (the frame with the narrowest dlib inner-lip gap, similarity-aligned onto the photo on the
  stable points; each crop centred on its own mouth, the photo's box side), and the static photo's SSIM against
  it (the baseline: a renderer that does not close the mouth); ``ssim_lower`` the same on a crop 1.8× as large
  reaching down to the chin (a laugh closed by lifting the lower lip alone stretched the chin).
The lip and skin colours and the darkest lip shade are the photo's own (medians / 5th percentile of its lip body
and cheeks, from its dlib landmarks), not the renderer's.

    .venv/bin/python -m benchmarks.closure [--sheet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.renderer import (
    BILABIAL,
    CROP,
    DATA,
    LUMA,
    REPO_ROOT,
    SHEET_PHOTOS,
    TEETH_SAT,
    crop_grey,
    detect_all,
    heldout_sentence,
    inner_gap,
    mouth_box,
    ssim_psnr,
)
from benchmarks.results_io import RESULTS, write_results
from engine.avatar import builtin_avatar
from engine.landmark_fit import STABLE, read_video_rgb, similarity_fit
from engine.renderer import WarpAvatarState, WarpRenderer
from models.warp import WarpConfig

SOURCE_CLIPS = ("KristiNoem", "Obama_clip1", "Obama_clip2", "andrew_clip_1", "andrew_clip_2", "feifeili_clip1",
                "feifeili_clip2_short", "feifeili_clip3")
PHOTOS = (("builtin", "astronaut"),) + tuple(("source", c) for c in SOURCE_CLIPS) + tuple(
    (g, n) for g, n in SHEET_PHOTOS if g == "style")
DARK_MARGIN = 15.0  # grey levels below the photo's darkest lip shade (5th percentile) that count as a dark speck
BRIGHT_MARGIN = 15.0  # ... above its brightest lip shade (95th percentile), unsaturated: a teeth-like speck
LOWER = 1.8  # the lower-face crop's side, × the mouth box's
VIDEO_SCAN = 600  # video frames searched for the real closed mouth (every 3rd)


def polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros((size, size), bool)
    rr, cc = polygon(points[:, 1], points[:, 0], (size, size))
    mask[rr, cc] = True
    return mask


def photo_colours(photo: np.ndarray, lmk: np.ndarray) -> dict[str, np.ndarray | float]:
    """The photo's lip body (outer outline less the inner one, both a pixel in) and cheek colours: median RGB, the
    lip body's 5th / 95th luma percentiles."""
    from scipy.ndimage import binary_dilation, binary_erosion

    size = photo.shape[0]
    body = binary_erosion(polygon_mask(lmk[48:60], size)) & ~binary_dilation(polygon_mask(lmk[60:68], size))
    lips = photo[body].astype(np.float32)
    if len(lips) < 8:  # a closed photo: the outline itself
        lips = photo[polygon_mask(lmk[48:60], size)].astype(np.float32)
    cheeks = np.stack([(lmk[31] + lmk[3]) / 2, (lmk[35] + lmk[13]) / 2, (lmk[57] + lmk[8]) / 2])
    skin = np.stack([photo[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].reshape(-1, 3) for x, y in cheeks])
    luma = lips @ LUMA
    # the darkest a lip may look: its own darkest shade, or the shaded seam where closed lips meet (3/4 of its
    # median, mouth.py), whichever is darker
    dark = min(float(np.percentile(luma, 5)), 0.75 * float(np.median(luma)))
    return {"lip": np.median(lips, 0), "skin": np.median(skin.reshape(-1, 3).astype(np.float32), 0),
            "lip_dark": dark, "lip_bright": float(np.percentile(luma, 95))}


def closure_damage(frame: np.ndarray, tgt_px: np.ndarray, colours: dict) -> dict[str, float]:
    """Specks (pixels) and lip share inside the rendered lips' outer outline ``tgt_px[48:60]`` (see the module
    docstring); ``colours`` from :func:`photo_colours` of the avatar's photo."""
    from scipy.ndimage import binary_erosion

    region = binary_erosion(polygon_mask(tgt_px[48:60], frame.shape[0]))
    px = frame[region].astype(np.float32)
    if len(px) == 0:
        return {"specks": 0.0, "dark": 0.0, "bright": 0.0, "lip_share": 0.0}
    luma = px @ LUMA
    sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
    dark = luma < colours["lip_dark"] - DARK_MARGIN
    bright = (luma > colours["lip_bright"] + BRIGHT_MARGIN) & (sat < TEETH_SAT)
    to_lip = np.linalg.norm(px - colours["lip"], axis=1)
    to_skin = np.linalg.norm(px - colours["skin"], axis=1)
    return {"specks": float(dark.sum() + bright.sum()), "dark": float(dark.sum()), "bright": float(bright.sum()),
            "lip_share": float((to_lip < to_skin).mean())}


def seam_roughness(frame: np.ndarray, tgt_px: np.ndarray) -> float:
    """How jagged the seam of closed lips is (grey levels): per column of the middle 70 % between the inner-lip
    corners the darkest pixel within 2 px of the target upper inner lip (where the lips meet), and the mean
    absolute change of that from column to column. A seam of teeth and cavity specks alternates (~11–15 on the
    smiling sample photos before the fix); a shaded line is smooth."""
    m = tgt_px
    x0, x1 = float(m[60, 0]), float(m[64, 0])
    xs = np.arange(int(x0 + 0.15 * (x1 - x0)), int(x1 - 0.15 * (x1 - x0)))
    if len(xs) < 3:
        return 0.0
    ys = np.round(np.interp(xs, m[60:65, 0], m[60:65, 1])).astype(int)
    luma = frame.astype(np.float32) @ LUMA
    rows = np.clip(ys[:, None] + np.arange(-2, 3), 0, frame.shape[0] - 1)
    darkest = luma[rows, xs[:, None]].min(1)
    return float(np.abs(np.diff(darkest)).mean())


def real_closed(group: str, name: str, st: WarpAvatarState) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The photo's video frame with the narrowest inner-lip gap (dlib, every 3rd of the first VIDEO_SCAN frames,
    gap relative to the inter-ocular distance), warped onto the avatar's crop by a similarity on the stable points:
    (image, its landmarks, video frame index), or None without a video."""
    from skimage.transform import SimilarityTransform, warp

    path = DATA / group / "video" / f"{name}.mp4"
    if not path.is_file():
        return None
    video = read_video_rgb(path)[:VIDEO_SCAN:3]
    marks = detect_all(video)
    iod = np.linalg.norm(marks[:, 45] - marks[:, 36], axis=-1)
    gap = inner_gap(marks) / iod
    # among the closed frames (within 1 % of the narrowest) the one whose head is nearest the photo's pose
    A, t = similarity_fit(marks[:, STABLE].astype(np.float64), np.asarray(st.landmarks)[STABLE].astype(np.float64))
    fitted = np.einsum("fij,fkj->fki", A, marks[:, STABLE]) + t[:, None, :]
    resid = np.linalg.norm(fitted - st.landmarks[STABLE], axis=-1).mean(-1)
    ok = ~np.isnan(gap)
    closed = np.flatnonzero(ok & (gap <= np.nanmin(gap) + 0.01))
    i = int(closed[np.argmin(resid[closed])])
    tf = SimilarityTransform(matrix=np.vstack([np.hstack([A[i], t[i][:, None]]), [0, 0, 1]]))
    size = st.image.shape[0]
    img = warp(video[i], tf.inverse, output_shape=(size, size), preserve_range=True, order=1, mode="edge")
    return np.clip(np.round(img), 0, 255).astype(np.uint8), marks[i] @ A[i].T + t[i], 3 * i


def target_px(renderer: WarpRenderer, st: WarpAvatarState, exp: np.ndarray) -> np.ndarray:
    """The renderer's target landmarks (N, 68, 2) in pixels (still head)."""
    w = st.warp
    assert w is not None
    tgt, _ = renderer.core.target_local(w, torch.as_tensor(exp, dtype=torch.float32))
    return (tgt @ w.frame_a.T + w.frame_t).numpy()


def load_photo(group: str, name: str) -> np.ndarray:
    if group == "builtin":
        return builtin_avatar(256)
    return read_video_rgb(DATA / group / "video" / f"{name}.mp4")[0]


def score(config: WarpConfig | None = None, photos: tuple[tuple[str, str], ...] = PHOTOS,
          sentence: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
          closed_cache: dict | None = None) -> dict[str, dict[str, float]]:
    """Per photo: mean specks, dark, bright and lip share over the P/B/M frames, SSIM against its real closed mouth
    (and the static photo's)."""
    labels, exp, rest = sentence if sentence is not None else heldout_sentence(300, 30)
    bil = np.flatnonzero(np.isin(labels, BILABIAL))
    renderer = WarpRenderer(size=256, config=config)
    out: dict[str, dict[str, float]] = {}
    for group, name in photos:
        st = renderer.prepare(load_photo(group, name))
        renderer.set_rest(st, rest)
        frames = renderer.render(st, exp[bil], None)
        tgt = target_px(renderer, st, exp[bil])
        colours = photo_colours(st.image, st.landmarks)
        rows = [closure_damage(f, m, colours) | {"seam_rough": seam_roughness(f, m)}
                for f, m in zip(frames, tgt, strict=True)]
        res = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        key = (group, name)
        if closed_cache is not None and key in closed_cache:
            real = closed_cache[key]
        else:
            real = real_closed(group, name, st) if group != "builtin" else None
            if closed_cache is not None:
                closed_cache[key] = real
        if real is not None:
            img, marks, idx = real
            _, side = mouth_box(st.landmarks)
            ref = crop_grey(img, mouth_box(marks)[0], side)
            res["ssim_closed"] = float(np.mean([ssim_psnr(crop_grey(f, mouth_box(m)[0], side), ref)[0]
                                                for f, m in zip(frames, tgt, strict=True)]))
            res["ssim_static"] = ssim_psnr(crop_grey(st.image, mouth_box(st.landmarks)[0], side), ref)[0]
            # the lower face (mouth to chin: a closed laugh's chin): a crop 1.8× as large, centred 0.3 of it lower
            low = np.array([0.0, 0.3 * LOWER * side])
            ref = crop_grey(img, mouth_box(marks)[0] + low, LOWER * side)
            res["ssim_lower"] = float(np.mean([ssim_psnr(crop_grey(f, mouth_box(m)[0] + low, LOWER * side), ref)[0]
                                               for f, m in zip(frames, tgt, strict=True)]))
            res["real_frame"] = idx
        out[name] = res
    return out


def summary(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = ("specks", "dark", "bright", "seam_rough", "lip_share", "ssim_closed", "ssim_lower")
    return {k: float(np.mean([r[k] for r in rows.values() if k in r])) for k in keys}


def closure_sheet(configs: dict[str, WarpConfig], path: Path, photos: tuple[tuple[str, str], ...] = PHOTOS,
                  closed_cache: dict | None = None) -> Path:
    """Mouth close-ups of every photo (rows): the photo, its real closed mouth, then per config the rendered
    P/B/M frame (the middle one of the sentence's), ×2."""
    import skimage.io
    from scipy.ndimage import map_coordinates

    labels, exp, rest = heldout_sentence(300, 30)
    bil = np.flatnonzero(np.isin(labels, BILABIAL))
    pick = exp[bil[[len(bil) // 2]]]

    def crop(img: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
        t = (np.arange(2 * CROP * 2) + 0.5) / (4 * CROP) - 0.5
        ys, xs = np.meshgrid(centre[1] + t * side, centre[0] + t * side, indexing="ij")
        return np.stack([map_coordinates(img[..., c].astype(np.float32), [ys, xs], order=1, mode="nearest")
                         for c in range(3)], -1).clip(0, 255).astype(np.uint8)

    rows = []
    for group, name in photos:
        cells = []
        for i, cfg in enumerate(configs.values()):
            r = WarpRenderer(size=256, config=cfg)
            st = r.prepare(load_photo(group, name))
            r.set_rest(st, rest)
            c, side = mouth_box(st.landmarks)
            if i == 0:
                cells.append(crop(st.image, c, side))
                real = closed_cache.get((group, name)) if closed_cache is not None else None
                cells.append(crop(real[0], c, side) if real is not None else np.zeros_like(cells[0]))
            cells.append(crop(r.render(st, pick, None)[0], c, side))
        rows.append(np.concatenate(cells, 1))
    skimage.io.imsave(path, np.concatenate(rows, 0), check_contrast=False)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sheet", action="store_true", help="also write benchmarks/results/closure_photos.png")
    args = ap.parse_args(argv)
    cache: dict = {}
    rows = score(closed_cache=cache)
    for name, r in rows.items():
        print(f"{name:22s} " + " ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    result = {"photos": rows, "mean": summary(rows)}
    if args.sheet:
        path = closure_sheet({"now": WarpConfig()}, RESULTS / "closure_photos.png", closed_cache=cache)
        result["sheet"] = str(path.relative_to(REPO_ROOT))
    write_results(RESULTS / "closure.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
