"""EngineRuntime: the process-wide part of the live engine - models loaded once, shared by every session.

Holds the ExpressionDecoder, the Renderer, the shared StyleBank (built-in style codes + clips), the avatar
photo, the *model thread* (one single-thread executor: the models stay thread-confined, no locks in the hot path,
and the asyncio loop never blocks on a model) and, with ``decoder.workers > 0``, the *model worker processes*
(:mod:`engine.model_pool`) that decode and render the sessions off the server's GIL. Each session gets a
:class:`~engine.contracts.RenderLane` from :meth:`EngineRuntime.render_lane`: on a worker process when there are
workers, else on the model thread (``decoder.workers = 0``, and every runtime built from injected parts: a child
process can only rebuild the parts the configuration names). On the thread, sessions interleave in arrival
order; each has at most one job outstanding either way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine import latency
from engine.config import Config
from engine.contracts import Recognizer, Renderer
from engine.decoder import ExpressionDecoder
from engine.live.registry import SessionRegistry
from engine.stylebank import StyleBank
from engine.timing import Timebase
from models.clips import STYLE_CLIP_SUFFIXES

if TYPE_CHECKING:
    from engine.contracts import RenderLane
    from engine.live.render_lane import RestFn
    from engine.live.render_stream import RenderSink
    from engine.live.session import LiveSession
    from engine.model_pool import ModelWorkers
    from engine.model_template import ModelTemplate
    from engine.recognizer.process import WarmProcessRecognizers

log = logging.getLogger(__name__)

ISOLATED_BACKENDS = ("allphone", "allphone-viterbi", "words")  # pocketsphinx: holds the GIL (recognizer.isolate)

ASSETS = Path(__file__).resolve().parents[1] / "models" / "assets"
BUILTIN_CHECKPOINT = ASSETS / "styletalk_default.pt"
BUILTIN_STYLE_CODES = ASSETS / "style_codes.npz"

class RuntimeErrorConfig(RuntimeError):
    """The runtime cannot be built from the configuration (missing file, bad weights...)."""


def limit_blas_threads(threads: int = 1) -> None:
    """Run numpy's BLAS (OpenBLAS) single-threaded in this process.

    Why: the recognizers score a few feature frames at a time against ~5k Gaussians per call; from a handful of
    frames on, OpenBLAS splits such a matmul over all cores and its threads spin-wait, which on a shared 2-core
    machine cost 17x the CPU of one thread (2.9 vs 0.17 CPU s per 4 s of audio, 10-frame calls) and starved
    the sessions' media (py-spy of two served sessions: 46 % of the server's samples in the senone scorer).
    Every engine thread already owns one core's worth of work (model worker, recognizers, encoders).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; without it numpy keeps its default
        log.warning("threadpoolctl missing: numpy's BLAS keeps its default thread count")
        return
    threadpool_limits(limits=threads, user_api="blas")


class EngineRuntime:
    """Models + worker shared by all sessions. Build with :meth:`load`, or inject parts (tests, benchmarks)."""

    def __init__(
        self,
        config: Config,
        decoder: ExpressionDecoder,
        renderer: Renderer,
        styles: StyleBank,
        avatar: np.ndarray,
        recognizer_factory: Callable[[], Recognizer] | None = None,
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
        self._warm: WarmProcessRecognizers | None = None  # recognizer.isolate: children started ahead
        self._warm_lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="styletalk-model")
        self._threads = config.decoder.threads
        self.worker.submit(torch.set_num_threads, self._threads).result()
        # running sessions; admission against server.max_sessions happens there (engine.live.registry)
        self.sessions: SessionRegistry[LiveSession] = SessionRegistry(lambda: self.config.server.max_sessions)
        self.frame_compute_s: float | None = None  # measured by warmup()
        self.model_workers: ModelWorkers | None = None  # decoder.workers > 0 (load): sessions render there
        if config.style.default not in styles:
            raise RuntimeErrorConfig(f"default style {config.style.default!r} is not among {styles.names()}")

    # --------------------------------------------------------------------------------------------- build
    @classmethod
    def load(cls, config: Config) -> EngineRuntime:
        """Build everything the configuration names (built-in weights, styles and avatar by default)."""
        config.validate()
        limit_blas_threads()
        torch.set_num_threads(config.decoder.threads)
        template = None
        if config.decoder.workers > 0:  # the workers' template imports torch while the models load here
            from engine.model_template import ModelTemplate

            template = ModelTemplate()
        try:
            decoder = build_decoder(config)
            styles = build_styles(config, decoder)
            renderer = build_renderer(config)
            avatar = load_avatar(config)
            runtime = cls(config, decoder, renderer, styles, avatar, recognizer_factory=None)
        except BaseException:
            if template is not None:
                template.close()
            raise
        runtime.start_model_workers(wait=False, template=template)  # their start-up overlaps the warm-up here
        try:
            runtime.warmup()
            runtime.start_recognizers()
            runtime.start_model_workers()
        except BaseException:
            runtime.close()
            raise
        return runtime

    def start_model_workers(self, wait: bool = True, template: ModelTemplate | None = None) -> None:
        """With ``decoder.workers > 0``: start the model worker processes (each loads the models in seconds) and,
        with ``wait``, wait until they are ready: the server then listens with its workers warm, and a setup on
        which a worker cannot start fails here (``RuntimeErrorConfig`` with the child's error), not per session.
        ``template``: a started :class:`~engine.model_template.ModelTemplate` for the new pool (owned from here)."""
        if self.config.decoder.workers <= 0 or self.model_workers is not None:
            if template is not None:
                template.close()
        if self.config.decoder.workers <= 0:
            return
        from engine.model_process import START_TIMEOUT_S

        if self.model_workers is None:
            from engine.model_pool import ModelWorkers

            self.model_workers = ModelWorkers(self.config, self.config.decoder.workers, template)
        pool = self.model_workers
        if wait:
            for proc in pool.processes:
                try:
                    if proc is not None:
                        proc.ready.result(timeout=START_TIMEOUT_S)
                except Exception as exc:
                    pool.close()
                    self.model_workers = None
                    raise RuntimeErrorConfig(f"model worker process: {exc}") from exc

    def start_recognizers(self) -> None:
        """With ``recognizer.isolate``: start the first child recognizer now, so the first session finds one ready
        (a child takes about a second to start; sessions take the spare and a new one starts behind them)."""
        rc = self.config.recognizer
        if self._recognizer_factory is None and rc.isolate and rc.backend in ISOLATED_BACKENDS:
            self._warm_factory()

    def warmup(self, repeats: int = 3) -> float:
        """Run the models on the worker (lazy initialisation, graph builds) and measure one frame's compute.

        Returns and stores :attr:`frame_compute_s` = median time to decode + render one frame on this
        machine; :meth:`output_delay` budgets for it so a slow machine gets a longer (but stable) delay
        instead of missing every deadline.
        """
        import time

        from engine.motion import IdleMotion

        # the head moves as in a session (a still head skips the head-motion arithmetic and under-measured the
        # render by a third: sessions then missed half their deadlines)
        poses = IdleMotion(seed=0, fps=self.config.fps, base_pose=self.pose,
                           head=self.config.avatar.head_motion).poses(np.arange(repeats + 2) * 7)

        def work() -> float:
            self.decoder.warmup()
            state = self.renderer.prepare(self.avatar)
            windows = np.random.default_rng(0).integers(0, 41, size=(repeats + 2, 11))
            code = self.styles.get(self.config.style.default)
            times = []
            for i in range(repeats + 2):
                t0 = time.perf_counter()
                exp = self.decoder.decode(windows[i : i + 1], code)
                self.renderer.render(state, exp, poses[i : i + 1])
                times.append(time.perf_counter() - t0)
            return float(np.median(times[2:]))  # the first two: lazy initialisation, the head's reference pose

        self.frame_compute_s = self.worker.submit(work).result()
        return self.frame_compute_s

    # ----------------------------------------------------------------------------------------- recognizer
    def make_recognizer(self) -> Recognizer:
        if self._recognizer_factory is not None:
            return self._recognizer_factory()
        from engine.recognizer import make_recognizer

        rc = self.config.recognizer
        opts = self._recognizer_options()
        if rc.isolate and rc.backend in ISOLATED_BACKENDS:
            return self._warm_factory()()
        return make_recognizer(rc.backend, **opts)

    def _recognizer_options(self) -> dict[str, Any]:
        rc = self.config.recognizer
        opts: dict[str, Any] = {}
        if rc.backend == "labels":
            opts["labels"] = rc.labels
        if rc.backend == "vosk":
            opts["model"] = rc.vosk_model
        if rc.backend == "allphone" and rc.lookahead_ms is not None:
            opts["lookahead_ms"] = rc.lookahead_ms
        return opts

    def _warm_factory(self) -> WarmProcessRecognizers:
        from engine.recognizer.process import WarmProcessRecognizers

        with self._warm_lock:
            if self._warm is None:
                self._warm = WarmProcessRecognizers(self.config.recognizer.backend, **self._recognizer_options())
            return self._warm

    def output_delay(self, recognizer: Recognizer) -> Fraction:
        """Constant delay between input and output media time for a session with ``recognizer``
        (:func:`engine.latency.output_delay`: lookahead + capture chunk + recognizer lag + compute margin)."""
        return latency.output_delay(self.config, self.timebase, recognizer, self.renderer, self.frame_compute_s)

    def compute_margin(self) -> float:
        """Time budgeted for decoding + rendering a frame (:func:`engine.latency.compute_margin`)."""
        return latency.compute_margin(self.frame_compute_s)

    # -------------------------------------------------------------------------------------------- sessions
    def render_lane(self, sink: RenderSink, clock: Callable[[], float], rest: RestFn) -> RenderLane:
        """Where a session's decode + render runs (module docstring): results to ``sink``; ``rest`` computes the
        session's rest expression (called on the model thread)."""
        if self.model_workers is not None:
            from engine.model_pool import ProcessRenderLane

            return ProcessRenderLane(self.model_workers, self.worker, int(self.renderer.delay_frames), sink, rest)
        from engine.live.render_lane import ThreadRenderLane

        return ThreadRenderLane(self.worker, self.decoder.decode, self.renderer, sink, clock, rest,
                                max_batch=self.config.decoder.max_batch, decoder_stats=self.decoder.stats)

    def workers_health(self) -> dict[str, Any]:
        """Where sessions decode and render, for ``/healthz``: ``{"mode": "model_thread"}`` or
        ``{"mode": "model_workers", "count", "alive", "sessions" (per live worker), "pids", "replaced"}``."""
        pool = self.model_workers
        if pool is None:
            return {"mode": "model_thread"}
        return {"mode": "model_workers", **pool.health()}

    def new_session(self, session_id: str, max_sessions: int | None = None, **kwargs: Any) -> LiveSession:
        """Admit (:class:`engine.live.registry.SessionRegistry`, atomic) and build a session;
        ``SessionRefused`` (a ``RuntimeError``) when ``max_sessions`` (default ``server.max_sessions``) run."""
        from engine.live.session import LiveSession

        return self.sessions.admit(session_id, lambda: LiveSession(self, session_id, **kwargs), max_sessions)

    def forget(self, session_id: str, session: object | None = None) -> None:
        """Free ``session_id``'s slot (only if it still holds ``session``, when given). Idempotent."""
        self.sessions.release(session_id, session)

    def close(self) -> None:
        if self.model_workers is not None:
            self.model_workers.close()
        self.worker.shutdown(wait=True, cancel_futures=True)
        with self._warm_lock:
            warm, self._warm = self._warm, None
        if warm is not None:
            warm.close()


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


def build_renderer(config: Config) -> Renderer:
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
