"""Build the warp renderer's mouth-interior bank (writes models/assets/mouth_bank.npz).

Why: the warp renderer moves the photo's own pixels, but an opening mouth exposes what the photo never showed
(lower teeth, tongue, the dark of the cavity). Painting it with flat colours looked like a painted band; real
mouth interiors cut from the sample videos (MIT) look like mouths. Each open-mouth frame's interior is
resampled into *lip-normalised coordinates*: s runs from the left inner-lip corner (60) to the right one (64),
t from the upper inner lip (60–64 through 61–63) to the lower one (through 67–65) at that s. In those
coordinates an interior can be stretched into any target inner-lip contour; the renderer
(models/warp/interior.py) picks the exemplars whose inner-lip shape is nearest to the target's.

Run: ``.venv/bin/python -m engine.mouth_bank [--cache DIR] [--out PATH]`` (see models/assets/mouth_bank.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.landmark_fit import STABLE, read_video_rgb, similarity_fit, video_landmarks
from models.dataset import default_data_dir, style_label
from models.warp.interior import BANK_PATH, PATCH_S, PATCH_T, shape_features

GROUP_OFFSETS = {"source": 2, "style": 0}
MIN_GAP_IOD = 0.035  # frames whose mean inner-lip gap is smaller (about 3 px at 256²) show no interior
STRIDE = 3  # every third frame: neighbouring frames are near duplicates
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def speaker_of(clip: str) -> str:
    """Speaker of a sample clip (Obama_clip1 → Obama; furious_talk2_clip3 → furious_talk2)."""
    return style_label(clip)


def lip_coordinates(lmk: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel positions (PATCH_T, PATCH_S, 2) of the lip-normalised sample grid, the shape features, the IOD px."""
    import torch

    from models.warp.tps import interp_curve

    A, t = similarity_fit(ref[None, STABLE].astype(np.float64), lmk[None, STABLE].astype(np.float64))
    A, t = A[0], t[0]  # face frame → pixels: p = A f + t
    face = (lmk - t) @ np.linalg.inv(A).T
    up = face[[60, 61, 62, 63, 64]]
    lo = face[[60, 67, 66, 65, 64]]
    s = (np.arange(PATCH_S) + 0.5) / PATCH_S
    tt = (np.arange(PATCH_T) + 0.5) / PATCH_T
    h = face[60, 0] + s * (face[64, 0] - face[60, 0])
    hs = torch.from_numpy(h).float()
    u = interp_curve(torch.from_numpy(up[:, 0]).float(), torch.from_numpy(up[:, 1]).float(), hs).numpy()
    lw = interp_curve(torch.from_numpy(lo[:, 0]).float(), torch.from_numpy(lo[:, 1]).float(), hs).numpy()
    v = u[None, :] + tt[:, None] * (lw - u)[None, :]
    f = np.stack([np.broadcast_to(h[None, :], v.shape), v], -1)  # (T, S, 2) face frame
    feats = shape_features(torch.from_numpy(face[None]).float())[0].numpy()
    return f @ A.T + t, feats, float(np.sqrt(abs(np.linalg.det(A))))


def sample_rgb(frame: np.ndarray, xy: np.ndarray) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    return np.stack([map_coordinates(frame[..., c].astype(np.float32), [xy[..., 1], xy[..., 0]], order=1,
                                     mode="nearest") for c in range(3)], -1)


def skin_colour(frame: np.ndarray, lmk: np.ndarray) -> np.ndarray:
    """Median colour at the cheeks and the nose bridge (the same points as the renderer's photo statistics)."""
    pts = np.stack([(lmk[31] + lmk[3]) / 2, (lmk[35] + lmk[13]) / 2, lmk[29], lmk[28]]).round().astype(int)
    pts = pts.clip(0, frame.shape[0] - 1)
    return np.median(frame[pts[:, 1], pts[:, 0]].astype(np.float32), 0)


def build(data: Path, cache: Path | None) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    from models.warp.landmarks import ExpressionMap

    ref = ExpressionMap.load().mean_shape.numpy().astype(np.float64)
    clips = []
    for group in ("source", "style"):
        clips += [(group, p.stem) for p in sorted((data / group / "video").glob("*.mp4"))]
    patches, feats, speakers, clip_ids, skins = [], [], [], [], {}
    names = [c for _, c in clips]
    spk_names = sorted({speaker_of(n) for n in names})
    for ci, (group, name) in enumerate(tqdm(clips, desc="mouth bank", unit="clip")):
        video = read_video_rgb(data / group / "video" / f"{name}.mp4")[::STRIDE]
        cached = cache / f"mouth_{group}_{name}_s{STRIDE}.npy" if cache else None
        if cached is not None and cached.is_file():
            lmks = np.load(cached)
        else:
            lmks = video_landmarks(video)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, lmks)
        spk = spk_names.index(speaker_of(name))
        for frame, lmk in zip(video, lmks, strict=True):
            if np.isnan(lmk).any():
                continue
            xy, f, _ = lip_coordinates(lmk, ref)
            skins.setdefault(spk, []).append(skin_colour(frame, lmk))
            if f[:3].mean() < MIN_GAP_IOD:
                continue
            patches.append(sample_rgb(frame, xy).round().clip(0, 255).astype(np.uint8))
            feats.append(f)
            speakers.append(spk)
            clip_ids.append(ci)
    patches_a = np.stack(patches)
    spk_a = np.asarray(speakers, np.int16)
    teeth, skin = [], []
    for k in range(len(spk_names)):
        px = patches_a[spk_a == k].reshape(-1, 3).astype(np.float32)
        luma = px @ LUMA
        sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
        bright = px[(luma >= np.quantile(luma, 0.9)) & (sat < 0.45)] if len(px) else px
        teeth.append(np.median(bright, 0) if len(bright) else np.full(3, np.nan, np.float32))
        skin.append(np.median(np.stack(skins[k]), 0))
    meta = {"clips": names, "speakers": spk_names, "stride": STRIDE, "min_gap_iod": MIN_GAP_IOD,
            "patch": [PATCH_T, PATCH_S], "frames": len(patches)}
    return {
        "patches": patches_a, "shape": np.asarray(feats, np.float32), "speaker": spk_a,
        "clip": np.asarray(clip_ids, np.int16), "teeth_rgb": np.asarray(teeth, np.float32),
        "skin_rgb": np.asarray(skin, np.float32), "meta": np.array(json.dumps(meta)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.mouth_bank", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="sample data directory (default: the shipped samples)")
    ap.add_argument("--cache", type=Path, default=None, help="directory to cache per-clip landmarks (.npy)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output file (default: a new file next to the tracked asset; --out {BANK_PATH} replaces it)")
    args = ap.parse_args(argv)
    out = args.out or BANK_PATH.with_name("mouth_bank.new.npz")
    bank = build(args.data or default_data_dir(), args.cache)
    np.savez_compressed(out, **bank)
    meta = json.loads(str(bank["meta"]))
    print(f"wrote {out}: {meta['frames']} interiors of {len(meta['speakers'])} speakers "
          f"({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
