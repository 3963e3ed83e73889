"""Streaming adapter for the PIRenderer ``FaceGenerator`` (engine ``Renderer`` protocol).

PIRenderer drives frame t with a 27-frame window of 73-dim vectors (64 expression + 9 pose), frames
t−13 … t+13. Offline the window is clamped to the sequence ends. Live, the future is unknown, so the adapter
keeps a rolling history in the :class:`PIRAvatarState` and waits for ``lookahead`` = k future frames (0–13):

* Every ``render`` call consumes N new driving frames and returns exactly N images — the video is **delayed
  by k frames**: output number j (counted since ``prepare``/``reset``) shows driving frame t = j − k, with
  window indices clamped to [0, j] (past edge repeated; future beyond the k known frames clamped to the newest
  known frame, t + k). The first k outputs of a stream (j < k) are "hold" frames of driving frame 0 with the
  window clamped to [0, j]. The caller delays audio by k frames (``delay_frames``).
* The result does not depend on how the input is chunked (one frame per call or all at once): the clamp
  uses j, not the number of frames that happen to be buffered.
* ``flush`` ends the stream: it returns the k frames still owed (the last k driving frames, future clamped to
  the last frame; padded with repeats of the last one when the stream was shorter than k), then resets.
  With k = 13 the stream's frames k… equal the offline ``FaceGenerator.forward`` on clamped windows.
* ``reset`` drops the history and any owed frames (interrupts).

Work on the source image that does not depend on the driving signal (two 7×7 convolutions) is cached at
``prepare``; the rest of the network is conditioned on the per-frame descriptor through AdaIN and runs per
frame. Inference runs under ``torch.inference_mode`` in float32; the torch thread count is the caller's.
An optional CUDA-graph path (``cuda_graphs=True``, only when CUDA is available) replays a captured graph for
fixed-size batches.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from models.pirenderer import (
    DRIVING_DIM,
    WINDOW_RADIUS,
    FaceGenerator,
    RendererConfig,
    SourceCache,
    image_to_tensor,
    tensor_to_image,
)

__all__ = ["PIRAvatarState", "PIRendererRenderer", "fit_image"]

EXP_DIM = 64
POSE_DIM = DRIVING_DIM - EXP_DIM  # 9: angles (3), translation (3), crop scale/tx/ty (3)
_AVATAR_IDS = itertools.count()


@dataclass
class PIRAvatarState:
    """Per-avatar, per-stream state: cached source work plus the rolling driving history."""

    cache: SourceCache
    size: int
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, DRIVING_DIM), np.float32))  # (M, 73)
    base: int = 0  # stream index of history[0]
    received: int = 0  # driving frames consumed since prepare/reset (= outputs returned by render)
    avatar_id: int = field(default_factory=lambda: next(_AVATAR_IDS))  # identifies the cache (CUDA graphs)

    def clear(self) -> None:
        self.history = np.zeros((0, DRIVING_DIM), np.float32)
        self.base = 0
        self.received = 0


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize (bilinear, antialiased) to ``size``²; no-op if already that size.

    Face framing is the caller's job (``engine.avatar.crop_face``); this only guarantees the model size.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = image[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(square)
    t = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None].float()  # [1, 3, s, s]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


class PIRendererRenderer:
    """``prepare(image) -> PIRAvatarState``; ``render(state, exp[N,64], pose[N,9]) -> uint8[N,H,W,3]``."""

    def __init__(
        self,
        generator: FaceGenerator,
        size: int = 256,
        lookahead: int = 0,
        max_batch: int = 4,
        device: str | torch.device = "cpu",
        cuda_graphs: bool = False,
    ) -> None:
        if not 0 <= lookahead <= WINDOW_RADIUS:
            raise ValueError(f"lookahead must be in 0..{WINDOW_RADIUS}, got {lookahead}")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        m = generator.cfg.min_image_multiple
        if size % m:
            raise ValueError(f"size {size} must be a multiple of {m} for this renderer config")
        self.size = size
        self.lookahead = lookahead
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.generator = generator.to(device=self.device, dtype=torch.float32).eval()
        self._offsets = np.arange(-WINDOW_RADIUS, WINDOW_RADIUS + 1)  # (27,)
        self.uses_cuda_graphs = False
        self._graph: _GraphRunner | None = None
        if cuda_graphs:
            if torch.cuda.is_available() and self.device.type == "cuda":
                self.uses_cuda_graphs = True
            else:
                warnings.warn("cuda_graphs requested but CUDA is not in use: running eagerly", stacklevel=2)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], cfg: RendererConfig | None = None, **kwargs: object
    ) -> PIRendererRenderer:
        """Load weights (own format or official ``net_G_ema`` file) and wrap them; kwargs go to ``__init__``."""
        return cls(FaceGenerator.from_file(path, cfg), **kwargs)  # type: ignore[arg-type]

    @property
    def delay_frames(self) -> int:
        """Frames by which the video lags the driving input (delay the audio by as much)."""
        return self.lookahead

    # ------------------------------------------------------------------------------------------ protocol
    def prepare(self, image: np.ndarray) -> PIRAvatarState:
        """Fit the avatar photo to the model size and cache the descriptor-independent source work."""
        fitted = fit_image(np.asarray(image), self.size)
        with torch.inference_mode():
            src = image_to_tensor(fitted).to(self.device)  # [1, 3, S, S] in [-1, 1]
            cache = self.generator.encode_source(src)
        return PIRAvatarState(cache=cache, size=self.size)

    def reset(self, state: PIRAvatarState) -> None:
        """Interrupt: forget the driving history and frames still owed; the next output is a new stream."""
        state.clear()

    def render(self, state: PIRAvatarState, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Consume N driving frames, return N images (delayed by ``lookahead``; see the module docstring)."""
        drive = self._driving(exp, pose)  # (N, 73)
        n = drive.shape[0]
        if n == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        state.history = np.concatenate([state.history, drive], axis=0)
        j = state.received + np.arange(n)  # output numbers
        t = np.maximum(j - self.lookahead, 0)  # driving frame shown by each output
        idx = np.clip(t[:, None] + self._offsets[None, :], 0, j[:, None])  # (N, 27), clamped to [0, j]
        frames = self._render_windows(state, idx)
        state.received += n
        self._trim(state)
        return frames

    def flush(self, state: PIRAvatarState) -> np.ndarray:
        """End of stream: the ``lookahead`` frames still owed (future clamped to the last frame), then reset."""
        k = self.lookahead
        if state.received == 0 or k == 0:
            state.clear()
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        last = state.received - 1
        first = max(state.received - k, 0)
        t = np.arange(first, state.received)
        idx = np.clip(t[:, None] + self._offsets[None, :], 0, last)
        frames = self._render_windows(state, idx)
        if len(frames) < k:  # stream shorter than the delay: keep the A/V timeline length (inputs + k)
            frames = np.concatenate([frames, np.repeat(frames[-1:], k - len(frames), axis=0)], axis=0)
        state.clear()
        return frames

    # ----------------------------------------------------------------------------------------- internals
    @staticmethod
    def _driving(exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        exp = np.asarray(exp, dtype=np.float32)
        pose = np.asarray(pose, dtype=np.float32)
        if exp.ndim != 2 or exp.shape[1] != EXP_DIM:
            raise ValueError(f"exp must be (N, {EXP_DIM}), got {exp.shape}")
        if pose.shape != (exp.shape[0], POSE_DIM):
            raise ValueError(f"pose must be ({exp.shape[0]}, {POSE_DIM}) to match exp, got {pose.shape}")
        return np.concatenate([exp, pose], axis=1)

    def _trim(self, state: PIRAvatarState) -> None:
        """Keep only the frames a future output can still read: from (next shown frame − radius) on."""
        keep_from = max(state.received - self.lookahead - WINDOW_RADIUS, 0)
        drop = keep_from - state.base
        if drop > 0:
            state.history = state.history[drop:]
            state.base = keep_from

    def _render_windows(self, state: PIRAvatarState, idx: np.ndarray) -> np.ndarray:
        """Render one image per row of stream indices ``idx`` (B, 27) → uint8 (B, S, S, 3)."""
        windows = state.history[idx - state.base]  # (B, 27, 73)
        windows = np.ascontiguousarray(windows.transpose(0, 2, 1))  # (B, 73, 27)
        out = []
        with torch.inference_mode():
            for s in range(0, len(windows), self.max_batch):
                w = torch.from_numpy(windows[s : s + self.max_batch]).to(self.device)
                if self.uses_cuda_graphs:
                    img = self._graph_run(state, w)
                else:
                    gen = self.generator
                    img = gen.render_cached(state.cache, gen.descriptor(w))["fake_image"]
                out.append(tensor_to_image(img))
        return np.concatenate(out, axis=0)

    def _graph_run(self, state: PIRAvatarState, windows: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._graph = _GraphRunner(self.generator, state, self.max_batch)
        return self._graph.run(state, windows)


class _GraphRunner:
    """CUDA graph of descriptor + cached render for a fixed batch of ``max_batch`` windows.

    The avatar cache lives in static buffers; switching avatars copies the new cache in before replay.
    Smaller batches are padded by repeating the last window and cut after replay.
    """

    def __init__(self, generator: FaceGenerator, state: PIRAvatarState, batch: int) -> None:
        cache = state.cache
        self.batch = batch
        self.generator = generator
        self.windows = torch.zeros(batch, DRIVING_DIM, 2 * WINDOW_RADIUS + 1, device=cache.image.device)
        self.cache = SourceCache(cache.image.clone(), cache.warp_stem.clone(), cache.edit_source_term.clone())
        self.avatar_id = state.avatar_id
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up (cuDNN autotuning, allocator) outside the capture
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self._step()

    def _step(self) -> torch.Tensor:
        gen = self.generator
        return gen.render_cached(self.cache, gen.descriptor(self.windows))["fake_image"]

    def run(self, state: PIRAvatarState, windows: torch.Tensor) -> torch.Tensor:
        if self.avatar_id != state.avatar_id:  # all avatars share the renderer's size, so shapes match
            self.cache.image.copy_(state.cache.image)
            self.cache.warp_stem.copy_(state.cache.warp_stem)
            self.cache.edit_source_term.copy_(state.cache.edit_source_term)
            self.avatar_id = state.avatar_id
        n = windows.shape[0]
        self.windows[:n].copy_(windows)
        if n < self.batch:
            self.windows[n:].copy_(windows[-1:].expand(self.batch - n, -1, -1))
        self.graph.replay()
        return self.output[:n].clone()
