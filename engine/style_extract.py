"""Style clip from a video: frames → 68 landmarks → expression coefficients (T, 64) through the inverse map.

Run: ``styletalk-live extract-style VIDEO -o CLIP.npy`` (any container/codec FFmpeg reads, through PyAV).

Why tracking instead of detecting every frame: dlib's HOG detector costs ~15–30 ms on a 256² frame, the
68-point predictor ~1 ms. So the face is detected on the first frame and every ``redetect_every`` frames (which
also catches a face that left, or a second face that came in); in between, the predictor runs in the box of the
previous frame's landmarks. That keeps extraction several times faster than real time on one core.

Bad input is refused with a :class:`StyleExtractError` whose ``code`` is stable (for the CLI's message and the
server's error replies); nothing is written on failure. A face lost for a short stretch (≤ ``max_gap_s``) is
bridged by interpolating the landmarks (reported in ``ExtractResult.interpolated``); a longer loss is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.avatar import SECOND_FACE_RATIO, FaceBox, _dlib_models, detect_faces, landmarks_in_box
from models.expression_inverse import STATIC_GAIN, ExpressionInverse

log = logging.getLogger(__name__)

TARGET_FPS = 30  # the models' frame rate: clips are one row per 1/30 s

# stable error codes (also used by the server's upload_style replies)
ERROR_CODES = ("unreadable", "no_video", "too_short", "too_long", "resolution", "no_face", "several_faces",
               "face_too_small", "face_lost")


class StyleExtractError(ValueError):
    """The video cannot give a style clip. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ExtractLimits:
    """Input limits; the CLI and the server take them from ``engine.config.StyleConfig``."""

    min_seconds: float = 2.0
    max_seconds: float = 60.0
    max_pixels: int = 3840 * 2160  # larger frames are refused (decoding them alone would not be real time)
    detect_side: int = 320  # frames are scaled so the longer side is at most this before landmarks
    min_face_px: int = 64  # face box side in the original frame (the sample videos: ~150 px); smaller: refused
    max_gap_s: float = 0.5  # a face lost for up to this long is interpolated; longer is refused
    redetect_every: int = 5  # frames between full detections (tracking in between)


@dataclass
class ExtractResult:
    exp: np.ndarray  # (T, 64) float32, one row per video frame, official coeff[:, 80:144] convention
    residual: np.ndarray  # (T,) float32 landmark misfit of the motion about the clip average (inter-ocular units)
    fps: float
    seconds: float  # video duration
    elapsed: float  # wall seconds spent
    interpolated: list[tuple[int, int]] = field(default_factory=list)  # [first, last] frame ranges bridged
    size: tuple[int, int] = (0, 0)  # (width, height) of the video

    @property
    def realtime_factor(self) -> float:
        """Seconds of work per second of video (< 1 = faster than real time)."""
        return self.elapsed / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------------------------- decoding


def _open(path: Path):
    import av

    if not path.is_file():
        raise StyleExtractError("unreadable", f"{path}: file not found")
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - any demuxer failure means "not a video we can read"
        raise StyleExtractError("unreadable", f"{path}: cannot open as a video ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        kind = "an audio-only file" if container.streams.audio else "no video stream"
        raise StyleExtractError("no_video", f"{path}: {kind}; a style needs a video of a talking face")
    return container


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


class _Tracker:
    """Landmarks per frame: full detection every few frames, the predictor in the last box in between.

    A tracked frame is only trusted once a later detection confirms the face: when a detection fails, the
    frames tracked since the last successful one are dropped too (so a face that left between two detections
    never yields landmarks fitted to the background).
    """

    def __init__(self, limits: ExtractLimits, scale: float) -> None:
        self.limits = limits
        self.scale = scale  # detection frame pixels per original pixel
        self.box: FaceBox | None = None
        self.index = 0
        self.rows: list[np.ndarray | None] = []
        self.last_detect = -1  # frame of the last successful detection
        self.detected: FaceBox | None = None  # the last detector box ...
        self.anchor: np.ndarray | None = None  # ... and the nose position in its frame

    def _detect(self, rgb: np.ndarray, frame_no: int) -> FaceBox | None:
        boxes = detect_faces(rgb)
        if not boxes:
            return None
        main = boxes[0]
        others = [b for b in boxes[1:] if b.size >= SECOND_FACE_RATIO * main.size]
        if others:
            raise StyleExtractError("several_faces", f"{1 + len(others)} faces at frame {frame_no}: a style "
                                    "video must show one person")
        if main.size / self.scale < self.limits.min_face_px:
            raise StyleExtractError("face_too_small", f"the face is {main.size / self.scale:.0f} px at frame "
                                    f"{frame_no}; need at least {self.limits.min_face_px} px")
        return main

    def __call__(self, rgb: np.ndarray) -> None:
        i = self.index
        self.index += 1
        if self.box is None or i % self.limits.redetect_every == 0:
            self.box = self._detect(rgb, i)
            if self.box is None:
                for j in range(self.last_detect + 1, i):  # tracked since the last confirmation: untrusted
                    self.rows[j] = None
                self.rows.append(None)
                return
            self.last_detect, self.detected, self.anchor = i, self.box, None
        lmk = landmarks_in_box(rgb, self.box)
        # Follow the head by shifting the detector's box with the nose, keeping the detector's size and
        # placement: dlib's predictor was trained on detector boxes, and a box re-derived from its own output
        # drifts (held-out lower-face r 0.57 → 0.62 on 7 clips, the same as detecting every frame).
        nose = lmk[27:36].mean(0)
        if self.anchor is None:
            self.anchor = nose
        dx, dy = np.round(nose - self.anchor).astype(int)
        b = self.detected
        assert b is not None
        self.box = FaceBox(b.left + int(dx), b.top + int(dy), b.right + int(dx), b.bottom + int(dy), b.score)
        self.rows.append(lmk)


ProgressFn = Callable[[int, "int | None"], None]  # (frames done, frames expected or None)


def video_landmarks(path: str | Path, limits: ExtractLimits = ExtractLimits(), progress: bool = False,
                    on_progress: ProgressFn | None = None) -> tuple[np.ndarray, float, float, tuple[int, int]]:
    """(F, 68, 2) landmarks in the detection frame (NaN where no face), fps, duration, (width, height).

    ``on_progress`` is called from this thread after every frame (the server forwards it, throttled)."""
    from tqdm import tqdm

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if not w or not h:
            raise StyleExtractError("unreadable", f"{path}: the video stream has no frame size")
        if w * h > limits.max_pixels:
            raise StyleExtractError("resolution", f"{path}: {w}×{h} is larger than the limit of "
                                    f"{limits.max_pixels / 1e6:.1f} megapixels; scale the video down")
        fps = float(stream.average_rate or stream.guessed_rate or 30.0)
        duration = _duration(container, stream)
        if duration is not None and duration > limits.max_seconds + 1.0:
            raise StyleExtractError("too_long", f"{path}: {duration:.1f} s; at most {limits.max_seconds:g} s")
        scale = min(1.0, limits.detect_side / max(w, h))
        dw, dh = (round(w * scale) // 2 * 2, round(h * scale) // 2 * 2) if scale < 1.0 else (w, h)
        tracker = _Tracker(limits, scale)
        rows = tracker.rows
        total = int(duration * fps) if duration else None
        max_frames = int(limits.max_seconds * max(fps, 30.0)) + 30
        times: list[float] = []
        with tqdm(total=total, desc="landmarks", unit="frame", disable=not progress, mininterval=0.5) as bar:
            try:
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24", width=dw, height=dh)
                    tracker(rgb)
                    if frame.time is not None:
                        times.append(float(frame.time))
                    bar.update(1)
                    if on_progress is not None:
                        on_progress(len(rows), total)
                    if len(rows) > max_frames:
                        raise StyleExtractError("too_long", f"{path}: longer than {limits.max_seconds:g} s")
            except StyleExtractError:
                raise
            except Exception as exc:  # noqa: BLE001 - a decoder error mid-stream: corrupt data
                if len(rows) < 2:
                    raise StyleExtractError("unreadable", f"{path}: cannot decode ({type(exc).__name__}: "
                                            f"{exc})") from exc
                log.warning("%s: decoding stopped at frame %d (%s); using the frames before it", path, len(rows),
                            exc)
    finally:
        container.close()
    if not rows:
        raise StyleExtractError("unreadable", f"{path}: no video frames could be decoded")
    lmk = np.full((len(rows), 68, 2), np.nan, np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            lmk[i] = r
    if len(times) == len(rows) > 1 and times[-1] > times[0]:
        # browser recordings (MediaRecorder webm) often declare no or a nominal rate: trust the timestamps
        fps = (len(rows) - 1) / (times[-1] - times[0])
        if abs(fps - TARGET_FPS) > 0.5:
            lmk = resample(lmk, np.asarray(times) - times[0], TARGET_FPS)
            fps = float(TARGET_FPS)
    return lmk, fps, len(lmk) / fps, (w, h)


def resample(lmk: np.ndarray, t: np.ndarray, fps: float) -> np.ndarray:
    """Landmarks (F, 68, 2) at times ``t`` (s) → a regular ``fps`` grid by linear interpolation (a frame next to
    a missing one is missing)."""
    grid = np.arange(0.0, t[-1] + 0.5 / fps, 1.0 / fps)
    j = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 2)
    w = np.clip((grid - t[j]) / np.maximum(t[j + 1] - t[j], 1e-9), 0.0, 1.0)[:, None, None]
    return ((1.0 - w) * lmk[j] + w * lmk[j + 1]).astype(np.float32)  # NaN propagates from either neighbour


def bridge_gaps(lmk: np.ndarray, max_gap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Fill frames without a face by linear interpolation; leading/trailing gaps are trimmed-by-copy.

    Returns the filled landmarks and the [first, last] ranges filled. Raises ``face_lost`` for a gap longer
    than ``max_gap`` frames, ``no_face`` when no frame has a face.
    """
    ok = ~np.isnan(lmk).any(axis=(1, 2))
    if not ok.any():
        raise StyleExtractError("no_face", "no face found in any frame")
    gaps: list[tuple[int, int]] = []
    i = 0
    while i < len(ok):
        if ok[i]:
            i += 1
            continue
        j = i
        while j < len(ok) and not ok[j]:
            j += 1
        gaps.append((i, j - 1))
        i = j
    for a, b in gaps:
        if b - a + 1 > max_gap:
            raise StyleExtractError("face_lost", f"the face is lost for {b - a + 1} frames (frames {a}–{b}); "
                                    f"at most {max_gap} frames are bridged")
    if not gaps:
        return lmk, []
    idx = np.arange(len(lmk))
    flat = lmk.reshape(len(lmk), -1).copy()
    for j in range(flat.shape[1]):
        flat[~ok, j] = np.interp(idx[~ok], idx[ok], flat[ok, j])
    return flat.reshape(lmk.shape), gaps


def extract_style(path: str | Path, limits: ExtractLimits = ExtractLimits(), inverse: ExpressionInverse | None = None,
                  progress: bool = False, static_gain: float = STATIC_GAIN,
                  on_progress: ProgressFn | None = None) -> ExtractResult:
    """The style clip of one video (see the module docstring); raises StyleExtractError on bad input.

    The whole clip is solved at once (:meth:`ExpressionInverse.solve_clip`): the clip's average expression
    under a prior over clip averages with the person's face shape as a separate unknown, the motion about it
    frame by frame; the average is then pushed ``static_gain`` times as far from the average over clips (1 =
    the plain posterior mean). On the 25 sample clips held out by speaker (benchmarks/style_from_video.py)
    this identifies the clip's own .mat style code for 52 % of clips at the default gain (frame-by-frame: 12 %).
    """
    _dlib_models()  # one-time model load (~100 MB), not part of the per-video cost
    t0 = time.perf_counter()
    lmk, fps, seconds, size = video_landmarks(path, limits, progress, on_progress)
    if seconds < limits.min_seconds:
        raise StyleExtractError("too_short", f"{path}: {seconds:.1f} s of video; at least {limits.min_seconds:g} s")
    lmk, gaps = bridge_gaps(lmk, max(1, int(round(limits.max_gap_s * fps))))
    inv = inverse or ExpressionInverse.from_assets()
    if not 0.0 <= static_gain <= 5.0:
        raise ValueError(f"static_gain must be in [0, 5], got {static_gain}")
    res = inv.solve_clip(lmk, static_gain=static_gain)
    return ExtractResult(res.exp, res.residual, fps, seconds, time.perf_counter() - t0, gaps, size=size)


def main(argv: list[str] | None = None) -> int:
    """`styletalk-live extract-style`: a style clip (.npy, (T, 64) float32) from a video of a talking face."""
    parser = argparse.ArgumentParser(
        prog="styletalk-live extract-style", description=main.__doc__,
        epilog="The clip works wherever a style clip does: `styles add NAME CLIP.npy`, style.clips_dir.")
    parser.add_argument("video", type=Path, help="a video FFmpeg reads (mp4, webm, mov, ...) showing one face")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .npy (T, 64) float32")
    parser.add_argument("--static-gain", type=float, default=STATIC_GAIN, metavar="G",
                        help=f"how far the clip's solved average expression is pushed from the average over "
                             f"people (default {STATIC_GAIN:g}; 1 = the plain estimate, 0 = the average person)")
    parser.add_argument("--min-seconds", type=float, default=ExtractLimits.min_seconds)
    parser.add_argument("--max-seconds", type=float, default=ExtractLimits.max_seconds)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() != ".npy":
        print("styletalk-live extract-style: error: the output must be a .npy file", file=sys.stderr)
        return 2
    limits = ExtractLimits(min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    try:
        result = extract_style(args.video, limits, progress=not args.no_progress,
                               static_gain=min(5.0, max(0.0, args.static_gain)))
    except StyleExtractError as exc:
        print(f"styletalk-live extract-style: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, result.exp)
    r = result.residual
    print(f"{args.output}: {len(result.exp)} frames ({result.seconds:.1f} s at {result.fps:.0f} fps, "
          f"{result.size[0]}×{result.size[1]}) in {result.elapsed:.1f} s ({result.realtime_factor:.2f}× real time)")
    print(f"fit residual (inter-ocular units): median {np.median(r):.4f}, 95th pct {np.percentile(r, 95):.4f}, "
          f"max {r.max():.4f} at frame {int(r.argmax())}")
    if result.interpolated:
        spans = ", ".join(f"{a}–{b}" for a, b in result.interpolated)
        print(f"face lost and interpolated on frames {spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
