"""The renderer contract shared by all renderers, and the built-in warp renderer's adapter.

Contract (see docs/architecture.md): ``prepare(image) -> AvatarState`` once per avatar (detect, crop,
precompute); ``render(state, exp (N, 64), pose (N, 9)) -> uint8 (N, H, W, 3)``; ``reset(state)`` when the
stream restarts; attributes ``size`` (output H = W) and ``lookahead`` (frames by which the output lags the
input). The warp renderer has no temporal window, so its lookahead is 0, and it takes per-frame eyelid closure
(``supports_blink``) because a blink is a lid movement the expression coefficients barely encode.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from engine.avatar import AvatarError, detect_landmarks
from models.warp import ExpressionMap, MouthBank, WarpAvatar, WarpConfig, WarpCore

log = logging.getLogger(__name__)

EXP_DIM = 64
POSE_DIM = 9

__all__ = [
    "AvatarState", "Renderer", "WarpAvatarState", "WarpRenderer", "template_landmarks",
]


@dataclass
class AvatarState:
    """What a renderer keeps per avatar (and per stream). Subclasses add their precomputed data."""

    size: int


@runtime_checkable
class Renderer(Protocol):
    """A face renderer driven by expression and pose coefficients."""

    size: int
    lookahead: int

    def prepare(self, image: np.ndarray) -> AvatarState:
        """Once per avatar: a uint8 RGB (H, W, 3) face photo → the state to render it with."""
        ...

    def render(self, state: AvatarState, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """exp float32 (N, 64), pose float32 (N, 9) → frames uint8 (N, size, size, 3)."""
        ...

    def reset(self, state: AvatarState) -> None:
        """Forget per-stream history (the next render starts a new stream)."""
        ...


@dataclass
class WarpAvatarState(AvatarState):
    """A prepared photo for the warp renderer, plus the reference pose of the current stream."""

    image: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 3), np.uint8))  # the crop
    landmarks: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((68, 2), np.float32))
    warp: WarpAvatar | None = field(repr=False, default=None)
    template: bool = False  # no face was found in the crop: the standard layout was assumed
    pose_ref: torch.Tensor | None = None  # head motion is relative to the stream's first pose


def template_landmarks(mean_shape: np.ndarray, size: int) -> np.ndarray:
    """The mean face placed with the standard crop framing (engine.avatar): eye-to-mouth 0.27·size, centred."""
    from engine.avatar import EYE_MOUTH_FRACTION, EYE_MOUTH_MIDPOINT_Y

    shape = np.asarray(mean_shape, np.float64)
    eyes, mouth = shape[36:48].mean(0), shape[48:68].mean(0)
    scale = EYE_MOUTH_FRACTION * size / np.linalg.norm(mouth - eyes)
    centre = np.array([0.5, EYE_MOUTH_MIDPOINT_Y]) * size
    return ((shape - (eyes + mouth) / 2) * scale + centre).astype(np.float32)


class WarpRenderer:
    """The built-in renderer: thin-plate-spline warp of the avatar photo (models/warp/), CPU real-time.

    ``prepare`` expects a framed face crop (``engine.avatar.crop_face`` / ``builtin_avatar``; other photos are
    cropped here). When dlib finds no face in a crop (tiny or synthetic images) the standard layout is assumed
    so that tests and previews still run; a photo with several faces is refused (AvatarError).

    ``threads`` intra-op threads are used while rendering (in the calling thread only; None = leave as set).
    The default 1 is measured: the warp is hundreds of small ops, and with another busy process on a 2-core
    machine a second OpenMP thread makes each op wait for a descheduled partner (benchmarks/renderer.py:
    several times slower than one thread); unloaded, two threads gain little.

    ``compile=True`` wraps the core in ``torch.compile`` (measured by benchmarks/renderer.py; off by default:
    a minute of compilation for about a halving of the per-frame time). On CUDA, ``cuda_graphs=True`` replays
    a captured graph for the still-head path; any failure to capture falls back to eager execution.
    """

    lookahead = 0
    delay_frames = 0
    supports_blink = True

    def __init__(
        self,
        size: int = 256,
        config: WarpConfig | None = None,
        emap: ExpressionMap | None = None,
        device: str | torch.device | None = None,
        compile: bool = False,
        cuda_graphs: bool = True,
        threads: int | None = 1,
        bank: MouthBank | None = None,
    ) -> None:
        if size < 32:
            raise ValueError(f"renderer size {size} is too small (need at least 32)")
        self.size = int(size)
        self.device = torch.device(device if device is not None else "cpu")
        self.core = WarpCore(emap, config, bank).to(self.device)
        self._forward = torch.compile(self.core.forward, dynamic=True) if compile else self.core.forward
        self._graphs: dict[tuple[int, int], _GraphRun] = {}
        self._cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._lock = threading.Lock()
        self.threads = threads

    # ------------------------------------------------------------------------------------------ protocol
    def prepare(self, image: np.ndarray, exp_ref: np.ndarray | None = None) -> WarpAvatarState:
        """Crop (if needed), find the landmarks, precompute the warp. ``exp_ref``: the photo's expression."""
        from engine.avatar import crop_face

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise AvatarError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image[:, :, :3])
        template = False
        try:
            lmk = detect_landmarks(image)
            if image.shape[0] == image.shape[1] == self.size and _is_framed(lmk, self.size):
                crop = image  # already a face crop: no resampling
            else:
                face = crop_face(image, size=self.size, landmarks=lmk)
                crop, lmk = face.image, face.landmarks
        except AvatarError as exc:
            if "no face" not in str(exc) and "too small" not in str(exc):
                raise
            if image.shape[0] != image.shape[1] or image.shape[0] != self.size:
                raise
            log.warning("no face found in the %d² avatar crop; assuming the standard face layout", self.size)
            crop, lmk, template = image, template_landmarks(self.core.mean_shape.cpu().numpy(), self.size), True
        warp = _to_device(self.core.prepare(crop, lmk, exp_ref), self.device)
        return WarpAvatarState(size=self.size, image=crop, landmarks=lmk, warp=warp, template=template)

    def set_rest(self, state: AvatarState, exp_rest: np.ndarray) -> None:
        """Render relative to ``exp_rest`` (64,): that expression reproduces the photo as it is.

        Give the current style's silence output (``ExpressionDecoder.idle``): silence then shows the photo's own
        mouth, speech moves the lips relative to it and a bilabial closes them (models/warp/core.py).
        """
        if not isinstance(state, WarpAvatarState) or state.warp is None:
            raise TypeError("set_rest() needs the state returned by this renderer's prepare()")
        rest = _as_frames(exp_rest, EXP_DIM, "exp_rest")
        if rest.shape[0] != 1:
            raise ValueError(f"exp_rest must be one expression (64,), got {tuple(rest.shape)}")
        state.warp.exp_ref = rest[0].to(self.device)

    def lip_gap_directions(self) -> np.ndarray:
        """(64, 3) expression directions that open the inner lips (see ``WarpCore.lip_gap_directions``)."""
        return self.core.lip_gap_directions().detach().cpu().numpy().astype(np.float32)

    def lid_gap_directions(self) -> np.ndarray:
        """(64, 4) expression directions that open the eyelids (see ``WarpCore.lid_gap_directions``)."""
        return self.core.lid_gap_directions().detach().cpu().numpy().astype(np.float32)

    def expression_spread(self) -> np.ndarray:
        """(64,) each expression coefficient's spread over the sample clips (the map clamps a change at
        ``exp_clip`` × it): a rest face moves in these units (``engine.stylebank.rest_expression``)."""
        return self.core.exp_std.detach().cpu().numpy().astype(np.float32)

    def reset(self, state: AvatarState) -> None:
        """New stream: the next pose becomes the reference for head motion, and the mouth interior is chosen
        afresh (it holds the last frame's while the mouth shape holds)."""
        if isinstance(state, WarpAvatarState):
            state.pose_ref = None
            if state.warp is not None:
                state.warp.forget()

    def render(
        self, state: AvatarState, exp: np.ndarray, pose: np.ndarray | None = None, blink: np.ndarray | None = None
    ) -> np.ndarray:
        """exp (N, 64), pose (N, 9) or None (still head), blink (N,) eyelid closure 0–1 → uint8 (N, S, S, 3)."""
        if not isinstance(state, WarpAvatarState) or state.warp is None:
            raise TypeError("render() needs the state returned by this renderer's prepare()")
        exp_t = _as_frames(exp, EXP_DIM, "exp")
        n = exp_t.shape[0]
        if n == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        pose_t = None if pose is None else _as_frames(pose, POSE_DIM, "pose", n)
        blink_t = None
        if blink is not None:
            blink_t = torch.as_tensor(np.asarray(blink, np.float32).reshape(-1)).clamp(0.0, 1.0)
            if blink_t.shape[0] != n:
                raise ValueError(f"blink has {blink_t.shape[0]} frames, exp has {n}")
        if pose_t is not None:
            if state.pose_ref is None:
                state.pose_ref = pose_t[0].clone()
            if torch.equal(pose_t, state.pose_ref.expand_as(pose_t)):  # (one op and no host read: ne/any/bool were 3)
                pose_t = None  # a still head: skip the head-motion arithmetic
        dev = self.device
        exp_t = _on(exp_t, dev)
        pose_t, ref, blink_t = _on(pose_t, dev), _on(state.pose_ref, dev), _on(blink_t, dev)
        with self._lock, torch.inference_mode(), _intra_op_threads(self.threads):
            if self._cuda_graphs and pose_t is None:
                out = self._graph_run(state.warp, exp_t, blink_t)
            else:
                out = self._forward(state.warp, exp_t, pose_t, ref, blink_t)
        return np.ascontiguousarray(_on(out, torch.device("cpu")).numpy())  # (N, S, S, 3); encoders want contiguous

    # -------------------------------------------------------------------------------------- CUDA graphs
    def _graph_run(self, warp: WarpAvatar, exp: torch.Tensor, blink: torch.Tensor | None) -> torch.Tensor:
        key = (id(warp), exp.shape[0])
        run = self._graphs.get(key)
        if run is None:
            try:
                run = _GraphRun(self.core, warp, exp.shape[0])
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation; eager always works
                log.warning("CUDA graph capture failed (%s); rendering eagerly", exc)
                self._cuda_graphs = False
                return self.core(warp, exp, None, None, blink)
            self._graphs = {k: v for k, v in self._graphs.items() if k[0] == id(warp)}  # one avatar at a time
            self._graphs[key] = run
        return run(exp, blink)


class _GraphRun:
    """A captured still-head render of one avatar at a fixed batch size (CUDA only)."""

    def __init__(self, core: WarpCore, warp: WarpAvatar, n: int) -> None:
        dev = warp.image.device
        self.exp = torch.zeros(n, EXP_DIM, device=dev)
        self.blink = torch.zeros(n, device=dev)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up allocations outside the capture
                core(warp, self.exp, None, None, self.blink)
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = core(warp, self.exp, None, None, self.blink)

    def __call__(self, exp: torch.Tensor, blink: torch.Tensor | None) -> torch.Tensor:
        self.exp.copy_(exp)
        if blink is None:
            self.blink.zero_()
        else:
            self.blink.copy_(blink)
        self.graph.replay()
        return self.out.clone()


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads in the calling thread only (OpenMP's setting is per thread), then restore."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_framed(lmk: np.ndarray, size: int) -> bool:
    """Whether a square image already has the standard face framing (within a loose tolerance)."""
    from engine.avatar import EYE_MOUTH_FRACTION, EYE_MOUTH_MIDPOINT_Y

    eyes, mouth = lmk[36:48].mean(0), lmk[48:68].mean(0)
    ratio = np.linalg.norm(mouth - eyes) / (EYE_MOUTH_FRACTION * size)
    off = np.abs((eyes + mouth) / 2 / size - np.array([0.5, EYE_MOUTH_MIDPOINT_Y]))
    return bool(0.75 < ratio < 1.33 and (off < 0.12).all())


@typing.overload
def _on(x: torch.Tensor, device: torch.device) -> torch.Tensor: ...
@typing.overload
def _on(x: None, device: torch.device) -> None: ...
def _on(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``x`` on ``device``; no op (not even a no-op ``to``) when it is there already."""
    return x if x is None or x.device == device else x.to(device)


def _as_frames(x: np.ndarray, dim: int, name: str, n: int | None = None) -> torch.Tensor:
    """Validate a (N, dim) float array (a single (dim,) row is accepted) → float32 tensor."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} frames, exp has {n}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to_device(obj: object, device: torch.device) -> object:
    """Move every tensor of a (nested) dataclass to ``device``."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    return obj
