"""Shared builders for the engine tests: tiny real models and a runtime on the ``labels`` recognizer."""

from __future__ import annotations

import numpy as np
import torch

from engine.config import Config
from engine.decoder import ExpressionDecoder
from engine.recognizer import make_recognizer
from engine.renderer import WarpRenderer
from engine.runtime import EngineRuntime
from engine.stylebank import StyleBank


def small_renderer(size: int = 64) -> WarpRenderer:
    """The built-in warp renderer at a small size (fast enough for real-time tests on a busy machine)."""
    return WarpRenderer(size=size)


def small_runtime(labels: np.ndarray, lookahead: int = 5, renderer=None, **audio: object) -> EngineRuntime:
    """A runtime on tiny random-weight models, the (lag-free) labels recognizer and a random 64x64 avatar."""
    cfg = Config()
    cfg.recognizer.backend = "labels"
    cfg.recognizer.labels = "<in memory>"
    cfg.decoder.lookahead = lookahead
    cfg.decoder.max_batch = 8
    cfg.renderer.size = 64
    for k, v in audio.items():
        setattr(cfg.audio, k, v)
    cfg.validate()
    decoder = ExpressionDecoder.random(seed=0, small=True, max_batch=8)
    styles = StyleBank(decoder.encode_style)
    rng = np.random.default_rng(0)
    styles.add("neutral", np.zeros((32, 64), np.float32))
    styles.add("lively", rng.standard_normal((80, 64)).astype(np.float32) * 2)
    avatar = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    runtime = EngineRuntime(cfg, decoder, renderer if renderer is not None else small_renderer(64), styles, avatar,
                            recognizer_factory=lambda: make_recognizer("labels", labels=labels))
    runtime.warmup()
    return runtime


def offline_decode(dec: ExpressionDecoder, windows: np.ndarray, style: np.ndarray) -> np.ndarray:
    """The offline reference: one pass of the decoder over a whole clip's phoneme windows ``(T, W)`` with one
    style code ``(D,)``; returns ``(T, 64)`` expression coefficients."""
    with torch.inference_mode():
        w = torch.from_numpy(windows)[None]
        return dec.model.decode(dec.model.encode_content(w), torch.from_numpy(style)[None])[0].numpy()
