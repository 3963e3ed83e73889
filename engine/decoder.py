"""ExpressionDecoder: phoneme windows + style code -> 64 expression coefficients per frame, with accelerators.

The live engine decodes a few new frames at a time (incremental decoding: each frame's 11-frame window is
encoded and decoded exactly once; style codes come precomputed from the StyleBank). Two batch layouts:

- one style for all N frames (the usual case): content ``(1, N, 11, C)``, style ``(1, C)`` - the decoder's
  style-dependent expert weights are mixed once for the whole batch;
- one style per frame (during a crossfade): content ``(N, 1, 11, C)``, style ``(N, C)``.

Accelerators (``accelerator=``):
- ``eager``: plain PyTorch, any batch size.
- ``compile``: ``torch.compile`` per (layout, batch bucket); static shapes: N is padded up to a power of two
  (rows of SIL) so only a handful of graphs are ever built.
- ``cudagraph``: CUDA graphs captured per bucket with preallocated input/output buffers (CUDA only).
- ``tensorrt``: torch-tensorrt (optional dependency, CUDA only).
Anything that cannot run here (no CUDA, no compiler, package missing, compile error) falls back to eager with
the reason in :attr:`ExpressionDecoder.fallback_reason` - a knob must never take the engine down.

Intensity, "hybrid" (the default; :meth:`engine.stylebank.StyleBank.styled`): a *style vector* is either a
plain code ``(C,)`` or the packed triple ``[code s (C), neutral n (C), k (1)]`` ``(2C+1,)``, decoded as

    out_k(t) = dec(c_k)(t) - idle(c_k) + idle(n) + k * (idle(s) - idle(n)),   c_k = n + k * (s - n)

i.e. the *motion* around the rest face comes from the paper's code-space line (which keeps lip sync: the
decoder was trained on codes) and the *rest face* itself moves along the output-space line from the
neutral silence to the style's silence (linear in k, so the static pose keeps growing where the code line
saturates: d(2)/d(1) 1.41 in code space, >= 1.9 hybrid; scaling the whole output instead costs held-out
mouth-opening r 0.38 -> 0.24 at k = 2, hybrid keeps 0.37; ``benchmarks.styles``). k = 0 and k = 1 are
bit-identical to the plain neutral / style code; other k cost one decode plus cached silences. Packed
vectors crossfade like codes (elementwise lerp).

Silent windows (all 11 phonemes SIL) are answered from a per-style cache (:meth:`ExpressionDecoder.idle`):
during silence the decoder then costs nothing and the closed mouth is exactly constant (no jitter).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import torch

from models.clips import pad_style_clip
from models.phonemes import SIL
from models.styletalk import PreparedStyle, StyleTalk, StyleTalkConfig

log = logging.getLogger(__name__)

ACCELERATORS = ("eager", "compile", "cudagraph", "tensorrt")


def _bucket(n: int, max_batch: int) -> int:
    """Smallest power of two >= n (capped at max_batch): the static batch shapes of graph accelerators."""
    b = 1
    while b < n:
        b *= 2
    return min(b, max(max_batch, n))


class ExpressionDecoder:
    """Thread-confined wrapper around :class:`StyleTalk` for streaming decoding (call from one worker thread)."""

    def __init__(
        self,
        model: StyleTalk,
        accelerator: str = "eager",
        max_batch: int = 16,
        device: str | torch.device | None = None,
        skip_silence: bool = True,
    ) -> None:
        if accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device or ("cuda" if accelerator in ("cudagraph", "tensorrt")
                                              and torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg: StyleTalkConfig = model.cfg
        self.window_length = self.cfg.window_length
        self.style_dim = self.cfg.d_model
        self.max_batch = max_batch
        self.skip_silence = skip_silence
        self.requested_accelerator = accelerator
        self.accelerator = "eager"
        self.fallback_reason: str | None = None
        self._idle_cache: dict[bytes, np.ndarray] = {}
        self._prepared_cache: dict[bytes, PreparedStyle] = {}
        self._lock = threading.Lock()  # decode() may be called from tests on several threads; keep it safe
        self._compiled: dict[tuple[str, int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
        self._graphs: dict[tuple[str, int], _CapturedGraph] = {}
        self.calls = 0
        self.frames_decoded = 0
        self.frames_from_cache = 0
        self._setup_accelerator(accelerator)

    # --------------------------------------------------------------------------------------- construction
    @classmethod
    def random(cls, seed: int = 0, small: bool = True, **kwargs: object) -> ExpressionDecoder:
        """A seeded random-weight model (tests, benchmarks, or before trained weights exist)."""
        torch.manual_seed(seed)
        cfg = StyleTalkConfig(d_model=48, nhead=4, dim_feedforward=80, num_content_layers=2,
                              num_style_layers=2, num_decoder_layers=2, ph_embed_dim=16) if small else None
        return cls(StyleTalk(cfg).eval(), **kwargs)  # type: ignore[arg-type]

    def _setup_accelerator(self, accelerator: str) -> None:
        if accelerator == "eager":
            return
        try:
            if accelerator == "compile":
                if not hasattr(torch, "compile"):
                    raise RuntimeError("torch.compile is not available in this torch build")
            elif accelerator == "cudagraph":
                if self.device.type != "cuda":
                    raise RuntimeError("CUDA graphs need a CUDA device (none available)")
            elif accelerator == "tensorrt":
                if self.device.type != "cuda":
                    raise RuntimeError("TensorRT needs a CUDA device (none available)")
                import torch_tensorrt  # noqa: F401  (optional dependency)
            self.accelerator = accelerator
            # build the smallest graph now so a broken toolchain shows up at start-up, not mid-session
            with torch.inference_mode():
                self._run_static("shared", 1, *self._dummy("shared", 1))
        except Exception as exc:  # noqa: BLE001 - any failure means: run eager
            self.accelerator = "eager"
            self._compiled.clear()
            self._graphs.clear()
            self.fallback_reason = f"{accelerator} unavailable ({type(exc).__name__}: {exc}); using eager"
            log.warning("decoder: %s", self.fallback_reason)

    # --------------------------------------------------------------------------------------------- style
    def encode_style(self, clip: np.ndarray) -> np.ndarray:
        """Expression clip ``(T, 64)`` -> style code ``(C,)`` (cut/zero-padded to 256 frames with a mask)."""
        padded, mask = pad_style_clip(np.asarray(clip, np.float32))
        with self._lock, torch.inference_mode():
            code = self.model.encode_style(
                torch.from_numpy(padded[None]).to(self.device), torch.from_numpy(mask[None]).to(self.device)
            )  # (1, C)
        return code[0].float().cpu().numpy()

    @property
    def packed_dim(self) -> int:
        """Length of a packed output-space intensity vector ``[code, base, k]`` (see module docstring)."""
        return 2 * self.style_dim + 1

    def idle(self, style: np.ndarray) -> np.ndarray:
        """Expression ``(64,)`` of an all-SIL window in ``style`` (the resting face), cached per style code."""
        style = np.ascontiguousarray(style, np.float32).reshape(-1)
        if style.shape[0] == self.packed_dim:
            code, base, k = _unpack(style, self.style_dim)
            if k == 1.0:
                return self.idle(code)
            if k == 0.0:
                return self.idle(base)
            out = self.idle(base) + np.float32(k) * (self.idle(code) - self.idle(base))  # the rest moves linearly
            out.setflags(write=False)
            return out
        key = style.tobytes()
        cached = self._idle_cache.get(key)
        if cached is None:
            windows = np.full((1, self.window_length), SIL, np.int64)
            cached = self._decode_model(windows, style)[0]
            cached.setflags(write=False)
            if len(self._idle_cache) > 64:  # crossfades create many transient codes: keep the cache bounded
                self._idle_cache.clear()
            self._idle_cache[key] = cached
        return cached

    # -------------------------------------------------------------------------------------------- decode
    def decode(self, windows: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Windows int ``(N, 11)`` + style ``(C,)`` or ``(N, C)`` -> expression float32 ``(N, 64)``."""
        windows = np.asarray(windows)
        if windows.ndim != 2 or windows.shape[1] != self.window_length:
            raise ValueError(f"windows must be (N, {self.window_length}), got {windows.shape}")
        style = np.asarray(style, np.float32)
        n = windows.shape[0]
        if style.shape in ((self.packed_dim,), (n, self.packed_dim)):
            return self._decode_packed(windows, style)
        if style.shape not in ((self.style_dim,), (n, self.style_dim)):
            raise ValueError(f"style must be ({self.style_dim},) or ({n}, {self.style_dim}) (packed: "
                             f"{self.packed_dim}), got {style.shape}")
        out = np.empty((n, self.cfg.face3d_dim), np.float32)
        if n == 0:
            return out
        windows = windows.astype(np.int64, copy=False)
        todo = np.arange(n)
        if self.skip_silence:
            silent = (windows == SIL).all(axis=1)
            if silent.any():
                for i in np.flatnonzero(silent):
                    out[i] = self.idle(style if style.ndim == 1 else style[i])
                self.frames_from_cache += int(silent.sum())
                todo = np.flatnonzero(~silent)
        for start in range(0, todo.shape[0], self.max_batch):
            idx = todo[start : start + self.max_batch]
            st = style if style.ndim == 1 else style[idx]
            if st.ndim == 2 and (st == st[0]).all():
                st = st[0]
            out[idx] = self._decode_model(windows[idx], st)
        return out

    def _decode_packed(self, windows: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Hybrid intensity (module docstring): code-space motion around an output-space rest face."""
        c = self.style_dim
        code, base, k = style[..., :c], style[..., c : 2 * c], style[..., 2 * c]  # (C,)/(N, C), k () or (N,)
        if np.all(k == 1.0):
            return self.decode(windows, code)
        if np.all(k == 0.0):
            return self.decode(windows, base)
        gain = np.asarray(k, np.float32)[..., None]  # (1,) or (N, 1)
        line = (base + gain * (code - base)).astype(np.float32)  # c_k, (C,) or (N, C)
        out = self.decode(windows, line)
        if style.ndim == 1:
            rest_k = self.idle(style)  # idle(n) + k (idle(s) - idle(n))
            return (out - self.idle(line) + rest_k).astype(np.float32)
        sil = np.full((style.shape[0], self.window_length), SIL, np.int64)
        idle_line, idle_code, idle_base = (self._decode_model(sil, v) for v in (line, code, base))  # (N, 64)
        return (out - idle_line + idle_base + gain * (idle_code - idle_base)).astype(np.float32)

    def _decode_model(self, windows: np.ndarray, style: np.ndarray) -> np.ndarray:
        n = windows.shape[0]
        layout = "shared" if style.ndim == 1 else "per_frame"
        with self._lock, torch.inference_mode():
            self.calls += 1
            self.frames_decoded += n
            if self.accelerator == "eager":
                w = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)
                s = torch.from_numpy(np.array(style, np.float32)).to(self.device)  # copy: codes are read-only
                if layout == "shared":
                    exp = self.model.decode(self.model.encode_content(w[None]), self._prepared(style, s))[0]  # (N, 64)
                else:
                    exp = self.model.decode(self.model.encode_content(w[:, None]), s)[:, 0]  # (N, 64)
                return exp.float().cpu().numpy()
            b = _bucket(n, self.max_batch)
            w_pad = np.full((b, self.window_length), SIL, np.int64)
            w_pad[:n] = windows
            if layout == "shared":
                s_pad = style
            else:
                s_pad = np.empty((b, self.style_dim), np.float32)
                s_pad[:n] = style
                s_pad[n:] = style[-1]
            exp = self._run_static(layout, b, torch.from_numpy(w_pad), torch.from_numpy(np.array(s_pad, np.float32)))
            return exp[:n].float().cpu().numpy()

    def _prepared(self, style: np.ndarray, code: torch.Tensor) -> PreparedStyle:
        """The model's style-only work for one code (mixed expert weights, the first decoder blocks), cached.

        A style is decoded thousands of times between switches; what depends on the style alone is computed
        once (bit-identical output, tests/test_styletalk_parity.py). The mixing alone reads all K=8 expert
        matrices (~50 MB for the full model): per call it was the largest fixed cost of a one-frame decode
        (measured: 45 -> 26 ms). Only the one-style layout uses it: a per-frame batch has a different code in
        every row (``decode`` folds equal rows into one style). Bounded: crossfades make transient codes.
        """
        key = np.ascontiguousarray(style, np.float32).tobytes()
        hit = self._prepared_cache.get(key)
        if hit is None:
            if len(self._prepared_cache) >= 4:
                self._prepared_cache.clear()
            hit = self._prepared_cache[key] = self.model.prepare_style(code[None])
        return hit

    # ------------------------------------------------------------------------------ static-shape backends
    def _forward(self, layout: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        model = self.model

        if layout == "shared":
            def fn(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # w (B, 11), s (C,) -> (B, 64)
                return model.decode(model.encode_content(w[None]), s[None])[0]
        else:
            def fn(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # w (B, 11), s (B, C) -> (B, 64)
                return model.decode(model.encode_content(w[:, None]), s)[:, 0]
        return fn

    def _dummy(self, layout: str, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.full((b, self.window_length), SIL, dtype=torch.int64)
        s = torch.zeros((self.style_dim,) if layout == "shared" else (b, self.style_dim))
        return w, s

    def _run_static(self, layout: str, b: int, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        key = (layout, b)
        if self.accelerator == "cudagraph":
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = _CapturedGraph(self._forward(layout), *self._dummy(layout, b),
                                                           device=self.device)
            return graph(w, s)
        fn = self._compiled.get(key)
        if fn is None:
            if self.accelerator == "compile":
                fn = torch.compile(self._forward(layout), dynamic=False, fullgraph=False)
            elif self.accelerator == "tensorrt":
                fn = _tensorrt_module(self._forward(layout), *self._dummy(layout, b), device=self.device)
            else:
                fn = self._forward(layout)
            self._compiled[key] = fn
        return fn(w.to(self.device), s.to(self.device))

    def warmup(self, batches: tuple[int, ...] = (1, 2, 4)) -> None:
        """Run (and for graph accelerators build) the common batch shapes once, before real time starts."""
        style = np.zeros(self.style_dim, np.float32)
        for n in batches:
            windows = np.random.default_rng(n).integers(0, 41, size=(n, self.window_length))
            self.decode(windows, style)
            if self.accelerator != "eager":
                self.decode(windows, np.zeros((n, self.style_dim), np.float32) + np.arange(n)[:, None])

    def stats(self) -> dict[str, object]:
        return {
            "accelerator": self.accelerator,
            "requested_accelerator": self.requested_accelerator,
            "fallback_reason": self.fallback_reason,
            "calls": self.calls,
            "frames_decoded": self.frames_decoded,
            "frames_from_cache": self.frames_from_cache,
        }


def _unpack(style: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Packed ``(2C+1,)`` -> code ``(C,)``, base ``(C,)``, k."""
    return style[:dim], style[dim : 2 * dim], float(style[2 * dim])


class _CapturedGraph:
    """One CUDA graph with static input/output buffers: copy inputs in, replay, read the output buffer."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w: torch.Tensor, s: torch.Tensor,
                 device: torch.device) -> None:
        self.w = w.to(device).clone()
        self.s = s.to(device).clone()
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as graph capture requires
                fn(self.w, self.s)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.w, self.s)

    def __call__(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        self.w.copy_(w, non_blocking=True)
        self.s.copy_(s, non_blocking=True)
        self.graph.replay()
        return self.out.clone()


def _tensorrt_module(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w: torch.Tensor, s: torch.Tensor,
                     device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import torch_tensorrt

    class _Wrap(torch.nn.Module):
        def forward(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return fn(w, s)

    return torch_tensorrt.compile(_Wrap().eval(), ir="dynamo", inputs=[w.to(device), s.to(device)])
