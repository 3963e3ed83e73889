"""EngineRuntime: the process-wide part of the live engine - models loaded once, shared by every session.

Holds the ExpressionDecoder, the Renderer, the shared StyleBank (built-in style codes + clips), the avatar
photo and the *model worker*: one single-thread executor that runs every decode and render of every session.
Why one thread: torch ops on 2 cores do not get faster by running concurrently, a single consumer keeps the
models thread-confined (no locks in the hot path), and the asyncio loop never blocks on a model. Sessions
interleave on that worker in arrival order; each has at most one job outstanding.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import Config
from engine.decoder import ExpressionDecoder
from engine.stylebank import StyleBank
from engine.timing import Timebase

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "models" / "assets"
BUILTIN_CHECKPOINT = ASSETS / "styletalk_default.pt"
BUILTIN_STYLE_CODES = ASSETS / "style_codes.npz"
STYLE_CLIP_SUFFIXES = (".mat", ".npy", ".txt")

# Label-stable lag assumed for a recognizer that does not declare one (s); DESIGN.md: allphone p90 145 ms.
DEFAULT_RECOGNIZER_LAG_S = 0.15
COMPUTE_MARGIN_S = 0.03  # decode + render + hand-over of one frame on a busy 2-core machine


_RESERVED = object()  # placeholder in ``EngineRuntime.sessions`` for a slot whose session is being built


class RuntimeErrorConfig(RuntimeError):
    """The runtime cannot be built from the configuration (missing file, bad weights...)."""


def recognizer_lag_seconds(recognizer: object) -> float:
    """The recognizer's declared label lag in seconds (``lag_s``, or ``lag`` in seconds/frames), else a default."""
    for name in ("lag_s", "lag_seconds"):
        v = getattr(recognizer, name, None)
        if isinstance(v, int | float):
            return float(v)
    v = getattr(recognizer, "lag", None)
    if isinstance(v, Fraction):
        return float(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v / 30.0  # integer lag = frames
    if isinstance(v, float):
        return v
    return DEFAULT_RECOGNIZER_LAG_S


class EngineRuntime:
    """Models + worker shared by all sessions. Build with :meth:`load`, or inject parts (tests, benchmarks)."""

    def __init__(
        self,
        config: Config,
        decoder: ExpressionDecoder,
        renderer: Any,
        styles: StyleBank,
        avatar: np.ndarray,
        recognizer_factory: Callable[[], Any] | None = None,
        pose: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.timebase = Timebase(config.audio.sample_rate, config.fps)
        self.decoder = decoder
        self.renderer = renderer
        self.styles = styles
        self.avatar = avatar
        self.pose = np.zeros(9, np.float32) if pose is None else np.asarray(pose, np.float32).reshape(9)
        self._recognizer_factory = recognizer_factory
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="styletalk-model")
        self._threads = config.decoder.threads
        self.worker.submit(torch.set_num_threads, self._threads).result()
        self.sessions: dict[str, Any] = {}  # session id -> LiveSession (or _RESERVED while it is built)
        self._admission = threading.Lock()  # guards ``sessions``: check + reserve is one step
        self.frame_compute_s: float | None = None  # measured by warmup()
        if config.style.default not in styles:
            raise RuntimeErrorConfig(f"default style {config.style.default!r} is not among {styles.names()}")

    # --------------------------------------------------------------------------------------------- build
    @classmethod
    def load(cls, config: Config) -> EngineRuntime:
        """Build everything the configuration names (built-in weights, styles and avatar by default)."""
        config.validate()
        torch.set_num_threads(config.decoder.threads)
        decoder = build_decoder(config)
        styles = build_styles(config, decoder)
        renderer = build_renderer(config)
        avatar = load_avatar(config)
        runtime = cls(config, decoder, renderer, styles, avatar, recognizer_factory=None)
        runtime.warmup()
        return runtime

    def warmup(self, repeats: int = 3) -> float:
        """Run the models on the worker (lazy initialisation, graph builds) and measure one frame's compute.

        Returns and stores :attr:`frame_compute_s` = median time to decode + render one frame on this
        machine; :meth:`output_delay` budgets for it so a slow machine gets a longer (but stable) delay
        instead of missing every deadline.
        """
        import time

        def work() -> float:
            self.decoder.warmup()
            state = self.renderer.prepare(self.avatar)
            windows = np.random.default_rng(0).integers(0, 41, size=(repeats + 1, 11))
            code = self.styles.get(self.config.style.default)
            times = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                exp = self.decoder.decode(windows[i : i + 1], code)
                self.renderer.render(state, exp, self.pose[None])
                times.append(time.perf_counter() - t0)
            return float(np.median(times[1:]))

        self.frame_compute_s = self.worker.submit(work).result()
        return self.frame_compute_s

    # ----------------------------------------------------------------------------------------- recognizer
    def make_recognizer(self) -> Any:
        if self._recognizer_factory is not None:
            return self._recognizer_factory()
        from engine.recognizer import make_recognizer

        rc = self.config.recognizer
        opts: dict[str, Any] = {}
        if rc.backend == "labels":
            opts["labels"] = rc.labels
        if rc.backend == "vosk":
            opts["model"] = rc.vosk_model
        if rc.backend == "allphone" and rc.lookahead_ms is not None:
            opts["lookahead_ms"] = rc.lookahead_ms
        return make_recognizer(rc.backend, **opts)

    def output_delay(self, recognizer: object) -> Fraction:
        """Constant delay between input and output media time for a session (see DESIGN.md timing model).

        Frame t is ready once frames up to t+L are labelled: its audio ends at (t+L+1)/fps, arrives up to one
        capture chunk later, is labelled ``lag`` later, then decoded and rendered (:meth:`compute_margin`);
        a renderer that lags by k frames adds k/fps. ``audio.output_delay_ms`` overrides the computed value.
        """
        cfg = self.config
        if cfg.audio.output_delay_ms is not None:
            return Fraction(cfg.audio.output_delay_ms) / 1000
        tb = self.timebase
        frames = cfg.decoder.lookahead + 1 + renderer_delay_frames(self.renderer)
        seconds = (
            Fraction(cfg.audio.chunk_ms, 1000)
            + Fraction(recognizer_lag_seconds(recognizer)).limit_denominator(1000)
            + Fraction(self.compute_margin()).limit_denominator(1000)
        )
        return tb.frame_pts(frames) + seconds

    def compute_margin(self) -> float:
        """Time budgeted for decoding + rendering a frame: the default, or 1.5x the measured cost if larger."""
        measured = self.frame_compute_s
        return COMPUTE_MARGIN_S if measured is None else max(COMPUTE_MARGIN_S, 1.5 * measured + 0.01)

    # -------------------------------------------------------------------------------------------- sessions
    def new_session(self, session_id: str, **kwargs: Any) -> Any:
        """Admit and build a session; ``RuntimeError`` when ``server.max_sessions`` are running.

        Admission is atomic: the slot is reserved under a lock *before* the (slow: ~0.5 s recognizer set-up)
        construction, so concurrent callers in different threads can never all pass the check. A failed
        construction gives the slot back.
        """
        from engine.session import LiveSession

        limit = self.config.server.max_sessions
        with self._admission:
            if session_id in self.sessions:
                raise RuntimeError(f"session {session_id!r} is already running")
            if len(self.sessions) >= limit:
                raise RuntimeError(f"too many sessions ({len(self.sessions)}; max {limit})")
            self.sessions[session_id] = _RESERVED
        try:
            session = LiveSession(self, session_id, **kwargs)
        except BaseException:
            self._release(session_id, _RESERVED)
            raise
        with self._admission:
            self.sessions[session_id] = session
        return session

    def forget(self, session_id: str, session: Any = None) -> None:
        """Free ``session_id``'s slot (only if it still holds ``session``, when given). Idempotent."""
        self._release(session_id, session)

    def _release(self, session_id: str, holder: Any) -> None:
        with self._admission:
            current = self.sessions.get(session_id)
            if current is not None and (holder is None or current is holder):
                del self.sessions[session_id]

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)


def renderer_delay_frames(renderer: object) -> int:
    """Frames by which a renderer's output lags its input (PIRenderer window lookahead; warp: 0)."""
    v = getattr(renderer, "delay_frames", None)
    if v is None:
        v = getattr(renderer, "lookahead", 0)
    return int(v or 0)


# ------------------------------------------------------------------------------------------------ builders
def build_decoder(config: Config) -> ExpressionDecoder:
    from models.styletalk import StyleTalk

    dc = config.decoder
    kwargs: dict[str, Any] = {"accelerator": dc.accelerator, "max_batch": dc.max_batch}
    if dc.checkpoint == "random":
        log.warning("decoder: random weights (decoder.checkpoint = random): for tests only")
        return ExpressionDecoder.random(seed=0, small=True, **kwargs)
    path = Path(dc.checkpoint) if dc.checkpoint else BUILTIN_CHECKPOINT
    if not path.is_file():
        if dc.checkpoint:
            raise RuntimeErrorConfig(f"decoder checkpoint {path} does not exist")
        log.warning("decoder: built-in checkpoint %s not found: using RANDOM weights (mouth motion is noise)", path)
        return ExpressionDecoder.random(seed=0, small=True, **kwargs)
    return ExpressionDecoder(StyleTalk.from_file(path), **kwargs)


def build_styles(config: Config, decoder: ExpressionDecoder) -> StyleBank:
    """Built-in codes (when they match the decoder) + ``style.clips_dir`` clips + user styles (``styles add``,
    ``style.user_dir``); a neutral fallback."""
    bank = StyleBank(decoder.encode_style)
    builtin_weights = config.decoder.checkpoint is None and BUILTIN_CHECKPOINT.is_file()
    if builtin_weights and BUILTIN_STYLE_CODES.is_file():
        with np.load(BUILTIN_STYLE_CODES, allow_pickle=False) as codes:
            for name in codes.files:
                code = codes[name]
                if code.reshape(-1).shape[0] == decoder.style_dim:
                    bank.add_code(name, code)
    if config.style.clips_dir:
        from models.clips import load_style_clip

        root = Path(config.style.clips_dir)
        if not root.is_dir():
            raise RuntimeErrorConfig(f"style.clips_dir {root} is not a directory")
        for p in sorted(root.iterdir()):
            if p.suffix.lower() in STYLE_CLIP_SUFFIXES:
                bank.add(p.stem, load_style_clip(p))
    from engine.user_styles import UserStyles, styles_dir

    for name, clip in UserStyles(styles_dir(config.style)).load().items():  # `styles add`, kept across restarts
        bank.add(name, clip)
    if "neutral" not in bank:
        # no trained codes: the resting (all-zero) expression clip is the closest thing to "neutral"
        bank.add("neutral", np.zeros((64, 64), np.float32))
    return bank


def build_renderer(config: Config) -> Any:
    rc = config.renderer
    if rc.kind == "pirenderer":
        from engine.renderer_pir import PIRendererRenderer

        if not rc.checkpoint:
            raise RuntimeErrorConfig("renderer.kind = pirenderer needs renderer.checkpoint (PIRenderer weights)")
        return PIRendererRenderer.from_file(rc.checkpoint, size=rc.size, lookahead=rc.window_lookahead)
    from engine.renderer import WarpRenderer

    return WarpRenderer(size=rc.size)


def load_avatar(config: Config) -> np.ndarray:
    from engine.avatar import builtin_avatar, crop_face, load_image

    size = config.renderer.size
    if config.avatar.image is None:
        return builtin_avatar(size)
    if not os.path.isfile(config.avatar.image):
        raise RuntimeErrorConfig(f"avatar image {config.avatar.image} does not exist")
    return crop_face(load_image(config.avatar.image), size=size).image
