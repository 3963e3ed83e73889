"""Offline render: phoneme labels or speech audio -> an MP4 of the avatar talking (H.264 video, AAC audio).

Same models and the same per-frame path as the live engine (runtime builders, decoder, renderer, idle
blinks), but frames are produced as fast as the machine allows instead of paced at 30 fps, and every window
sees its full future (lookahead 5), so this is also the quality reference the live engine is compared with.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.config import Config, ConfigError, HelpFormatter, add_config_arguments, config_from_args
from engine.contracts import RestAware
from engine.motion import IdleMotion, render_with_blink
from engine.timing import Timebase
from models.clips import STYLE_CLIP_SUFFIXES, ClipError, load_pose, load_style_clip
from models.phonemes import PHONEME_INDEX, SIL, phoneme_windows

log = logging.getLogger(__name__)

RENDER_BATCH = 8  # frames per renderer call: large enough to amortise overhead, small enough for a smooth bar


class InputError(ValueError):
    """A user-supplied input (phoneme file, audio, style, pose) cannot be used; the message says why."""


@dataclass
class RenderResult:
    path: Path
    frames: int
    seconds: float
    style: str


# ------------------------------------------------------------------------------------------------- inputs
def load_phonemes(path: str | Path) -> np.ndarray:
    """A phoneme label file: JSON list of ids (0..40) or names ("SIL", "AA", ...), one per 30 fps frame."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"phoneme file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"phoneme file {path} is not readable JSON: {exc}") from exc
    if isinstance(data, dict):  # tolerate {"phonemes": [...]} wrappers
        data = data.get("phonemes", data.get("labels"))
    if not isinstance(data, list) or not data:
        raise InputError(f"phoneme file {path} must hold a non-empty JSON list of phoneme ids or names")
    ids = []
    for i, item in enumerate(data):
        if isinstance(item, str) and item.upper() in PHONEME_INDEX:
            ids.append(PHONEME_INDEX[item.upper()])
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(PHONEME_INDEX):
            ids.append(item)
        else:
            raise InputError(f"phoneme file {path}: item {i} ({item!r}) is not a phoneme id 0..40 or name")
    return np.asarray(ids, np.int64)


def recognize_audio(pcm16: np.ndarray, recognizer, config: Config, timebase: Timebase) -> np.ndarray:
    """Run ``recognizer`` over a whole 16 kHz mono recording -> one phoneme id per frame."""
    n_frames = max(1, timebase.frames_complete(pcm16.shape[0]))
    labels = np.full(n_frames, SIL, np.int64)
    chunk = timebase.chunk_samples(config.audio.chunk_ms)
    events = []
    for start in range(0, pcm16.shape[0], chunk):
        events.extend(recognizer.feed(pcm16[start : start + chunk]))
    events.extend(recognizer.flush())
    for ev in events:
        if 0 <= ev.frame < n_frames:
            labels[ev.frame] = ev.phoneme
    return labels


def resolve_style(runtime, config: Config) -> tuple[str, np.ndarray]:
    """``--style`` is a style name of the bank or a clip file (.mat/.npy/.txt) encoded on the spot."""
    spec = config.style.default
    path = Path(spec)
    if path.suffix.lower() in STYLE_CLIP_SUFFIXES:
        try:
            clip = load_style_clip(path)
        except ClipError as exc:
            raise InputError(str(exc)) from exc
        runtime.styles.add(path.stem, clip)
        spec = path.stem
    if spec not in runtime.styles:
        raise InputError(f"unknown style {spec!r}; built-in styles: {', '.join(runtime.styles.names())}")
    return spec, runtime.styles.styled(spec, config.style.intensity, config.style.intensity_space)


# ------------------------------------------------------------------------------------------------- output
def write_mp4(path: Path, frames, n_frames: int, fps: int, audio: np.ndarray | None, sample_rate: int,
              progress: bool = True) -> None:
    """Encode ``frames`` (an iterator of uint8 (H, W, 3) images) and optional int16 mono audio to H.264/AAC."""
    import av
    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": "20", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        bar = tqdm(total=n_frames, unit="frame", desc="render", disable=not progress, file=sys.stderr)
        first = True
        for image in frames:
            if first:
                vstream.height, vstream.width = image.shape[:2]
                first = False
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in vstream.encode(frame):
                container.mux(packet)
            bar.update(1)
        bar.close()
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None and audio is not None and audio.size:
            step = 1024
            for i, start in enumerate(range(0, audio.shape[0], step)):
                block = np.ascontiguousarray(audio[start : start + step], np.int16)[None, :]
                aframe = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = i * step
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)


# --------------------------------------------------------------------------------------------- the job
def render(config: Config, output: Path, phonemes: str | None = None, audio: str | None = None,
           pose: str | None = None, progress: bool = True, runtime=None) -> RenderResult:
    """Render one utterance to ``output``; builds the runtime from ``config`` unless one is given."""
    from engine.sources import decode_audio_file

    if (phonemes is None) == (audio is None):
        raise InputError("give exactly one of --phonemes FILE.json or --audio FILE")
    timebase = Timebase(config.audio.sample_rate, config.fps)
    pcm16 = None
    if audio is not None:
        if not Path(audio).is_file():
            raise InputError(f"audio file {audio} does not exist")
        try:
            pcm16 = decode_audio_file(audio, rate=config.audio.sample_rate)
        except ValueError as exc:
            raise InputError(f"audio file {audio}: {exc}") from exc
        if pcm16.size == 0:
            raise InputError(f"audio file {audio} holds no audio samples")

    if runtime is None and config.avatar.image is not None and Path(config.avatar.image).is_file():
        # a photo without one usable face is refused before the models load (a second, not the ~8 s of torch and
        # the models); the runtime below crops it again (a fraction of a second)
        from engine.avatar import detect_landmarks, load_image

        detect_landmarks(load_image(config.avatar.image))
    if runtime is None:
        from engine.runtime import EngineRuntime

        # load with the always-present neutral style: --style is resolved below, with a clear message; no model
        # worker processes (an offline render runs the models here, not in sessions)
        runtime = EngineRuntime.load(replace(config, style=replace(config.style, default="neutral"),
                                             decoder=replace(config.decoder, workers=0)))
    style_name, code = resolve_style(runtime, config)
    if audio is not None:
        log.info("recognizing phonemes in %s (%s backend)", audio, config.recognizer.backend)
        assert pcm16 is not None  # decoded above
        labels = recognize_audio(pcm16, runtime.make_recognizer(), config, timebase)
    else:
        assert phonemes is not None  # exactly one of the two (checked above)
        labels = load_phonemes(phonemes)
    n = labels.shape[0]
    log.info("%d frames (%.2f s) in style %r", n, n / config.fps, style_name)

    # (N, 11) windows -> (N, 64) expression; full future: the offline reference
    windows = phoneme_windows(labels)
    exp = runtime.decoder.decode(windows, code)
    motion = IdleMotion(seed=0, fps=config.fps, head=config.avatar.head_motion)
    frames_idx = np.arange(n)
    if pose is not None:
        try:
            poses = load_pose(pose)
        except ClipError as exc:
            raise InputError(str(exc)) from exc
        poses = poses[np.minimum(frames_idx, poses.shape[0] - 1)]  # too short: hold the last pose
    else:
        poses = motion.poses(frames_idx, windows)  # speech-driven speed, as in a session
    blink = motion.blink_amounts(frames_idx)
    renderer = runtime.renderer
    state = renderer.prepare(runtime.avatar)
    if isinstance(renderer, RestAware):  # silence shows the photo's own mouth (style.rest: whose silence)
        from engine.stylebank import renderer_rest

        s = config.style
        if s.rest == "style":
            exp_rest = np.array(runtime.decoder.idle(code), np.float32)
        else:
            exp_rest = renderer_rest(renderer, runtime.styles, runtime.decoder.idle, style_name, s.intensity, s)
        renderer.set_rest(state, exp_rest)
    delay = int(renderer.delay_frames)  # engine.contracts.Renderer

    def frames():
        emitted = 0
        for start in range(0, n, RENDER_BATCH):
            sl = slice(start, start + RENDER_BATCH)
            images = render_with_blink(renderer, state, exp[sl], poses[sl], blink[sl])
            for image in images:
                if emitted >= delay:  # a windowed renderer's first outputs are warm-up holds
                    yield image
                emitted += 1
        if delay:
            yield from renderer.flush(state)[: delay]

    output = Path(output)
    write_mp4(output, frames(), n, config.fps, pcm16, config.audio.sample_rate, progress=progress)
    log.info("wrote %s", output)
    return RenderResult(output, n, n / config.fps, style_name)


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="styletalk-live render",
        description=(
            "Render an avatar speaking an utterance to an MP4 (H.264 video; AAC audio when --audio is given). "
            "Runs on the built-in weights, styles, warp renderer and avatar unless told otherwise; official "
            "StyleTalk weights via --checkpoint, PIRenderer weights via --renderer pirenderer "
            "--renderer-checkpoint FILE (slow on a CPU: seconds per frame)."
        ),
        formatter_class=HelpFormatter,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--phonemes", metavar="SEQ.json", help="phoneme labels, one per 30 fps frame (ids or names)")
    src.add_argument("--audio", metavar="FILE", help="speech audio (WAV or anything FFmpeg reads); phonemes are "
                     "recognized with --recognizer (default: pocketsphinx allphone)")
    parser.add_argument("-o", "--output", metavar="OUT.mp4", default="out.mp4", help="output video")
    parser.add_argument("--pose", metavar="CLIP.mat", help="head pose sequence (.mat with coeff/transform_params "
                        "or (T, 9) .npy/.txt); default: the avatar's own pose with idle motion")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, exclude=("--workers",))  # offline rendering runs on one model thread
    parser.epilog = "--style takes a built-in style name (see `styletalk-live styles`) or a style clip .mat/.npy/.txt"
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and argument errors exit here, before torch is imported
    from engine.avatar import AvatarError

    try:
        config = config_from_args(args)
        result = render(config, Path(args.output), phonemes=args.phonemes, audio=args.audio, pose=args.pose,
                        progress=not args.no_progress)
    except (InputError, ConfigError, ClipError, AvatarError, RuntimeError) as exc:
        # engine.runtime (torch) is imported only once render() loads the models: its error class is read here
        runtime_module = sys.modules.get("engine.runtime")
        if isinstance(exc, RuntimeError) and not (
            runtime_module is not None and isinstance(exc, runtime_module.RuntimeErrorConfig)
        ):
            raise
        print(f"styletalk-live render: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.path}: {result.frames} frames, {result.seconds:.2f} s, style {result.style}")
    return 0

