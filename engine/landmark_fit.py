"""Fit the expression → landmark map of the built-in warp renderer.

Run: ``styletalk-live fit-landmarks [--data DIR] [--cache DIR] [--out PATH]``. The map is written to
``runs/fit-landmarks/exp2lmk.npz``; only ``--out models/assets/exp2lmk.npz`` replaces the built-in asset.

Why a linear map: the 64 StyleTalk expression coefficients are the coordinates of a linear 3DMM expression
basis, so after removing head pose the 2-D landmark offsets are close to linear in them. Recipe:

1. Detect dlib's 68 landmarks on every frame of the shared sample videos (source/ and style/ clips).
2. Pair frame and coefficient row (source clips: row i ↔ frame i+2, checked below; style clips: offset 0).
3. Remove head pose: similarity-align each frame to a Procrustes mean shape on the points that expressions
   barely move (nose 27–35, eye corners 36/39/42/45), in inter-ocular units (outer eye corners 36–45 = 1).
4. Centre each clip (removes identity and the clip's resting expression) and fit ridge regression from the
   centred coefficients, plus the 3 head angles as a side input (out-of-plane rotation still bends the aligned
   2-D shape; without the side input that variation leaks into the expression weights), to the 136 offsets.
   The angle weights are dropped: at inference only ``offsets = (exp - exp_ref) @ W``.
5. Evaluate on whole held-out clips (leave one clip out): mouth-opening R², per-region R².
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.contracts import FaceBoxLike, Landmarker
from engine.landmarker import default_landmarker
from models.dataset import default_data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = default_data_dir()
ASSET = REPO_ROOT / "models" / "assets" / "exp2lmk.npz"  # the tracked built-in map: written only when asked
DEFAULT_OUT = Path("runs") / "fit-landmarks" / "exp2lmk.npz"

STABLE = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
EXP = slice(80, 144)
ANGLES = slice(224, 227)
GROUP_OFFSETS = {"source": 2, "style": 0}  # video frame = coefficient row + offset (verified by `--check-offsets`)


@dataclass
class Clip:
    """One video's per-frame landmarks paired with its coefficient rows."""

    name: str
    group: str
    landmarks: np.ndarray  # (F, 68, 2) float32 pixel coordinates, NaN where no face was found
    coeff: np.ndarray  # (T, 257) float32
    aligned: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F, 68, 2) in inter-ocular units


def read_video_rgb(path: Path) -> list[np.ndarray]:
    """All frames of a video as (H, W, 3) uint8 RGB (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def video_landmarks(frames: list[np.ndarray], progress: tqdm | None = None,
                    landmarker: Landmarker | None = None) -> np.ndarray:
    """(F, 68, 2) landmarks per frame; a frame without detection reuses the previous face box (NaN if none)."""
    lm = landmarker or default_landmarker()
    out = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
    box: FaceBoxLike | None = None
    for i, frame in enumerate(frames):
        boxes = lm.detect_faces(frame, upsample=0) or lm.detect_faces(frame, upsample=1)
        if boxes:
            box = boxes[0]
        if box is not None:
            out[i] = lm.landmarks_in_box(frame, box)
        if progress is not None:
            progress.update(1)
    return out


def load_clips(data: Path, cache: Path | None) -> list[Clip]:
    """Landmarks for every clip that has both a video and a .mat (cached as .npy when ``cache`` is given)."""
    import scipy.io

    pairs = []
    for group in ("source", "style"):
        for mat in sorted((data / group / "3dmm").glob("*.mat")):
            video = data / group / "video" / f"{mat.stem}.mp4"
            if video.is_file():
                pairs.append((group, mat, video))
    if not pairs:
        raise SystemExit(f"no clips found under {data} (expected source|style/video/*.mp4 with 3dmm/*.mat)")
    clips, todo = [], []
    for group, mat, video in pairs:
        coeff = scipy.io.loadmat(str(mat))["coeff"].astype(np.float32)
        cached = cache / f"{group}_{mat.stem}.npy" if cache else None
        lmk = np.load(cached) if cached and cached.is_file() else None
        clips.append(Clip(mat.stem, group, lmk if lmk is not None else np.zeros(0), coeff))
        if lmk is None:
            todo.append((len(clips) - 1, video, cached))
    if todo:
        videos = [(i, read_video_rgb(v), c) for i, v, c in todo]
        with tqdm(total=sum(len(f) for _, f, _ in videos), desc="landmarks", unit="frame", mininterval=2) as bar:
            for i, frames, cached in videos:
                clips[i].landmarks = video_landmarks(frames, bar)
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, clips[i].landmarks)
    return clips


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) mapping src (..., K, 2) onto dst: returns A (..., 2, 2), t (..., 2).

    ``aligned = src @ A^T + t``. Vectorised over leading dimensions.
    """
    mu_s = src.mean(axis=-2, keepdims=True)
    mu_d = dst.mean(axis=-2, keepdims=True)  # dst may also carry the leading dimensions
    s, d = src - mu_s, dst - mu_d
    # complex-number form of the 2-D similarity: z_d ≈ c · z_s, c = <z_s, z_d> / |z_s|²
    zs = s[..., 0] + 1j * s[..., 1]
    zd = d[..., 0] + 1j * d[..., 1]
    c = (np.conj(zs) * zd).sum(-1) / (np.abs(zs) ** 2).sum(-1)
    a, b = c.real, c.imag
    A = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)
    t = mu_d[..., 0, :] - np.einsum("...ij,...j->...i", A, mu_s[..., 0, :])
    return A, t


def normalise_reference(shape: np.ndarray) -> np.ndarray:
    """Reference frame: eye corners 36–45 horizontal at distance 1, stable-point centroid at the origin."""
    v = shape[45] - shape[36]
    scale = 1.0 / np.linalg.norm(v)
    ang = -np.arctan2(v[1], v[0])
    R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * scale
    out = shape @ R.T
    return out - out[STABLE].mean(axis=0)


def procrustes_mean(shapes: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Generalised Procrustes mean (on the stable points) of (F, 68, 2) shapes."""
    ref = normalise_reference(shapes[0].astype(np.float64))
    for _ in range(iterations):
        A, t = similarity_fit(shapes[:, STABLE].astype(np.float64), ref[STABLE])
        aligned = np.einsum("fij,fkj->fki", A, shapes) + t[:, None, :]
        ref = normalise_reference(aligned.mean(axis=0))
    return ref


def align(shapes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Pose-removed shapes (F, 68, 2) in the reference frame (inter-ocular units)."""
    A, t = similarity_fit(shapes[:, STABLE].astype(np.float64), ref[STABLE])
    return np.einsum("fij,fkj->fki", A, shapes) + t[:, None, :]


def mouth_opening(shapes: np.ndarray) -> np.ndarray:
    """Inner-lip gap (mean of pairs 61–67, 62–66, 63–65) along the aligned vertical axis. (F,)"""
    return (shapes[..., [67, 66, 65], 1] - shapes[..., [61, 62, 63], 1]).mean(axis=-1)


def paired(clip: Clip, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows paired with frames: (X_exp (n,64), X_angles (n,3), Y (n,68,2)); drops frames without a face."""
    rows = np.arange(len(clip.coeff))
    frames = rows + offset
    keep = (frames >= 0) & (frames < len(clip.aligned))
    rows, frames = rows[keep], frames[keep]
    ok = ~np.isnan(clip.aligned[frames]).any(axis=(1, 2))
    rows, frames = rows[ok], frames[ok]
    return clip.coeff[rows, EXP], clip.coeff[rows, ANGLES], clip.aligned[frames]


@dataclass
class Design:
    """Clip-centred design matrices for a set of clips."""

    x: np.ndarray  # (n, 64 + side) centred inputs
    y: np.ndarray  # (n, 136) centred aligned landmarks
    clip_index: np.ndarray  # (n,) which clip each row came from


def side_features(angles: np.ndarray, quadratic: bool) -> np.ndarray:
    """Head-angle side input: the 3 angles, optionally with their squares and pairwise products."""
    if not quadratic:
        return angles
    a = angles
    return np.concatenate([a, a**2, a[:, [0]] * a[:, [1]], a[:, [0]] * a[:, [2]], a[:, [1]] * a[:, [2]]], 1)


def build_design(clips: list[Clip], offsets: dict[str, int], quadratic: bool) -> Design:
    xs, ys, idx = [], [], []
    for i, clip in enumerate(clips):
        e, a, y = paired(clip, offsets[clip.group])
        x = np.concatenate([e, side_features(a, quadratic)], axis=1)
        xs.append(x - x.mean(axis=0))
        y = y.reshape(len(y), -1)
        ys.append(y - y.mean(axis=0))
        idx.append(np.full(len(x), i))
    return Design(np.concatenate(xs), np.concatenate(ys), np.concatenate(idx))


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_B mean‖y − xB‖² + λ‖B‖² (no intercept: inputs are centred). (d, 136)"""
    n = len(x)
    gram = x.T @ x / n + lam * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y / n)


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    return float(1.0 - ((pred - true) ** 2).sum() / max(((true - true.mean(0)) ** 2).sum(), 1e-12))


def held_out_scores(design: Design, clips: list[Clip], lam: float, test: list[int] | None = None) -> dict:
    """Leave-one-clip-out predictions (expression weights only, as at inference) pooled over ``test`` clips."""
    test = list(range(len(clips))) if test is None else test
    preds, trues = [], []
    for i in test:
        train = design.clip_index != i
        w = ridge(design.x[train], design.y[train], lam)
        sel = design.clip_index == i
        preds.append(design.x[sel, :64] @ w[:64])
        # The target is the held-out motion minus the part the (training-fitted) head-angle side input
        # explains: the renderer is scored on expression-driven motion only.
        trues.append(design.y[sel] - design.x[sel, 64:] @ w[64:])
    p = np.concatenate(preds).reshape(-1, 68, 2)
    t = np.concatenate(trues).reshape(-1, 68, 2)
    return {
        "mouth_opening_r2": r2(mouth_opening(p), mouth_opening(t)),
        "mouth_r2": r2(p[:, 48:68].reshape(len(p), -1), t[:, 48:68].reshape(len(t), -1)),
        "jaw_r2": r2(p[:, 0:17].reshape(len(p), -1), t[:, 0:17].reshape(len(t), -1)),
        "brows_r2": r2(p[:, 17:27].reshape(len(p), -1), t[:, 17:27].reshape(len(t), -1)),
        "eyes_r2": r2(p[:, 36:48].reshape(len(p), -1), t[:, 36:48].reshape(len(t), -1)),
        "all_r2": r2(p.reshape(len(p), -1), t.reshape(len(t), -1)),
        "frames": len(p),
    }


def check_offsets(clips: list[Clip], lam: float, candidates: range = range(-2, 5)) -> dict[str, dict[int, float]]:
    """Held-out mouth-opening R² of each group fitted alone at each candidate frame offset."""
    result: dict[str, dict[int, float]] = {}
    for group in ("source", "style"):
        members = [c for c in clips if c.group == group]
        result[group] = {}
        for off in candidates:
            design = build_design(members, {group: off}, quadratic=False)
            result[group][off] = round(held_out_scores(design, members, lam)["mouth_opening_r2"], 3)
    return result


def fit_pose_map(
    clips: list[Clip], mats: dict[str, np.ndarray], heldout: list[int] | None = None,
) -> tuple[np.ndarray, list[float], dict[str, np.ndarray]]:
    """Linear map from the pose features (models.warp.landmarks.pose_features) to the head's 2-D similarity
    motion in the video frame.

    Pose = [angles (3), translation (3), crop scale/tx/ty (3)] as the clip readers give it. Target per frame:
    the similarity taking the clip's mean shape (stable points, about their centroid) onto the frame:
    [log scale, rotation angle (rad, image axes, y down), dx / IOD, dy / IOD]. Both sides are clip-centred, so
    the map describes motion *relative* to a reference pose, which is how the renderer uses it. Clips whose crop
    scale is far from the others' (sad_emotion_clip1: s ≈ 0.31, its crop was taken at another resolution, so
    its crop translation is in other pixels) are left out of the fit. Returns the (15, 4) weights, the held-out
    (leave one clip out) R² of each output, and the weights fitted without each clip in ``heldout`` (for the
    renderer benchmark).
    """
    import torch

    from models.warp.landmarks import POSE_FEATURES, pose_features

    xs, ys, idx = [], [], []
    names: list[str] = []
    for clip in clips:
        scale = float(np.median(mats[clip.name][:, 2]))
        if not 0.5 < scale < 2.0:
            print(f"pose map: {clip.name} left out (crop scale {scale:.2f}, the others 0.85-1.22)")
            continue
        rows = np.arange(len(clip.coeff))
        frames = rows + GROUP_OFFSETS[clip.group]
        keep = frames < len(clip.landmarks)
        rows, frames = rows[keep], frames[keep]
        lmk = clip.landmarks[frames].astype(np.float64)
        ok = ~np.isnan(lmk).any(axis=(1, 2))
        rows, lmk = rows[ok], lmk[ok]
        mean = lmk.mean(axis=0)
        # per frame, the similarity A_f taking the clip mean onto the frame (stable points)
        a_f, _ = similarity_fit(np.broadcast_to(mean[STABLE], lmk[:, STABLE].shape), lmk[:, STABLE])
        iod = float(np.linalg.norm(mean[45] - mean[36]))
        y = np.stack(
            [
                0.5 * np.log(np.linalg.det(a_f)),
                np.arctan2(a_f[:, 1, 0], a_f[:, 0, 0]),
                (lmk[:, STABLE, 0].mean(1) - mean[STABLE, 0].mean()) / iod,
                (lmk[:, STABLE, 1].mean(1) - mean[STABLE, 1].mean()) / iod,
            ],
            axis=1,
        )
        c = clip.coeff[rows]
        pose = np.concatenate([c[:, ANGLES], c[:, 254:257], mats[clip.name][rows, 2:5]], axis=1)
        x = pose_features(torch.from_numpy(pose), False).numpy()
        xs.append(x - x.mean(axis=0))
        ys.append(y - y.mean(axis=0))
        idx.append(np.full(len(x), len(names)))
        names.append(clip.name)
    x, y, ci = np.concatenate(xs), np.concatenate(ys), np.concatenate(idx)
    assert x.shape[1] == POSE_FEATURES
    scale = x.std(axis=0) + 1e-9  # pose inputs differ by 3 orders of magnitude (radians vs crop pixels)
    preds = np.zeros_like(y)
    for i in range(len(names)):
        tr = ci != i
        preds[~tr] = (x[~tr] / scale) @ ridge(x[tr] / scale, y[tr], 1e-4)
    weights = ridge(x / scale, y, 1e-4) / scale[:, None]
    held = {}
    for i in heldout or []:
        if clips[i].name in names:
            tr = ci != names.index(clips[i].name)
            held[clips[i].name] = (ridge(x[tr] / scale, y[tr], 1e-4) / scale[:, None]).astype(np.float32)
    return weights.astype(np.float32), [r2(preds[:, j], y[:, j]) for j in range(4)], held


def main(argv: list[str] | None = None) -> int:
    from engine.config import HelpFormatter

    ap = argparse.ArgumentParser(
        prog="styletalk-live fit-landmarks",
        description="Fit the expression -> landmark map of the built-in warp renderer on the sample videos "
        "(dlib landmarks on every frame, ridge regression; held-out R2 per clip group is printed). "
        f"Writes {DEFAULT_OUT} unless --out says otherwise; --out {ASSET.relative_to(REPO_ROOT)} replaces "
        "the built-in map.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                    help="StyleTalk sample data (source/ and style/ videos + 3DMM .mat)")
    ap.add_argument("--cache", type=Path, default=None, metavar="DIR",
                    help="directory to cache per-clip landmarks (.npy); reruns skip the detection")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="PATH", help="where to write the map (.npz)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1], metavar="L",
                    help="ridge penalties to scan (the best on held-out clips is kept)")
    ap.add_argument("--check-offsets", action="store_true", help="also scan frame offsets per clip group")
    ap.add_argument("--quadratic-angles", action=argparse.BooleanOptionalAction, default=True,
                    help="add squared head angles to the design (pose-dependent landmark shifts)")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    clips = load_clips(args.data, args.cache)
    all_frames = np.concatenate([c.landmarks[~np.isnan(c.landmarks).any(axis=(1, 2))] for c in clips])
    ref = procrustes_mean(all_frames)
    for clip in clips:
        clip.aligned = align(clip.landmarks, ref)
    missing = {c.name: int(np.isnan(c.landmarks).any(axis=(1, 2)).sum()) for c in clips}
    print(f"{len(clips)} clips, {len(all_frames)} frames with a face; frames without: "
          f"{ {k: v for k, v in missing.items() if v} }")

    report: dict = {"clips": {c.name: c.group for c in clips}}
    if args.check_offsets:
        report["offset_scan_mouth_opening_r2"] = check_offsets(clips, 0.03)
        print("held-out mouth-opening R² by frame offset:", json.dumps(report["offset_scan_mouth_opening_r2"]))

    design = build_design(clips, GROUP_OFFSETS, args.quadratic_angles)
    sources = [i for i, c in enumerate(clips) if c.group == "source"]
    scan = {}
    for lam in args.lambdas:
        scan[lam] = held_out_scores(design, clips, lam)
        print(f"λ={lam:<6} held-out (all clips): " + ", ".join(f"{k} {v:.3f}" for k, v in scan[lam].items()
                                                                if k != "frames"))
    # mouth shape matters most for a talking head; the mouth-opening R² alone is flat over λ
    best = max(scan, key=lambda k: scan[k]["mouth_opening_r2"] + scan[k]["mouth_r2"])
    report["lambda_scan"] = {str(k): v for k, v in scan.items()}
    report["lambda"] = best
    report["held_out_source_clips"] = held_out_scores(design, clips, best, sources)
    print(f"chosen λ={best}; held-out on source clips only: {report['held_out_source_clips']}")

    weights = ridge(design.x, design.y, best)
    w_exp = weights[:64].astype(np.float32)  # (64, 136) expression → offsets (x0, y0, x1, y1, ...)
    # Per-source-clip held-out matrices (float16) so the renderer benchmark can drive a clip with a map that
    # never saw it.
    heldout = {
        f"heldout/{clips[i].name}": ridge(design.x[design.clip_index != i], design.y[design.clip_index != i],
                                          best)[:64].astype(np.float16)
        for i in sources
    }
    import scipy.io

    mats = {
        c.name: scipy.io.loadmat(str(args.data / c.group / "3dmm" / f"{c.name}.mat"))["transform_params"]
        for c in clips
    }
    pose_weights, pose_r2, pose_heldout = fit_pose_map(clips, mats, sources)
    report["pose_map_held_out_r2"] = dict(zip(["log_scale", "rotation", "dx", "dy"], pose_r2, strict=True))
    print("pose → head similarity, held-out R²:", {k: round(v, 3) for k, v in report["pose_map_held_out_r2"].items()})
    # Per-coefficient spread of the training data: the renderer clamps extreme inputs to this range.
    exp_all = np.concatenate([c.coeff[:, EXP] for c in clips])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        weights=w_exp,
        mean_shape=ref.astype(np.float32),
        exp_std=exp_all.std(axis=0).astype(np.float32),
        pose_weights=pose_weights,
        lam=np.float32(best),
        meta=np.array(json.dumps({k: v for k, v in report.items() if k != "lambda_scan"})),
        **heldout, **{f"heldout_pose/{k}": v for k, v in pose_heldout.items()},  # type: ignore[arg-type]
        # (numpy stubs type **kwds as the bool allow_pickle)
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
