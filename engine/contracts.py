"""The engine's contracts as ``typing.Protocol``s: what a recognizer and a renderer must offer the live engine.

Structural: any object with these members fits (the built-in backends, PIRenderer, a test double); nothing is
probed with ``getattr``. Units are part of the contract: ``lag`` is seconds of audio, ``delay_frames`` frames.
Kept free of heavy imports (numpy only) so any layer may import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from engine.stream import DecodeJob

# A stable phoneme label: ``engine.recognizer.PhonemeEvent`` or a plain ``(frame, phoneme)`` pair.
PhonemeEventLike = Any


@runtime_checkable
class Recognizer(Protocol):
    """Online phoneme recognition (sans-I/O, see :mod:`engine.recognizer.base`): 16 kHz mono int16 in, stable
    30 fps ``(frame, phoneme)`` events out, frames from 0, each exactly once, in order."""

    @property
    def lag(self) -> float:
        """Upper bound, in seconds of audio, between a frame's end and the ``feed`` that makes its label stable."""
        ...

    def feed(self, pcm: np.ndarray) -> Iterable[PhonemeEventLike]: ...

    def flush(self) -> Iterable[PhonemeEventLike]: ...


@runtime_checkable
class Closeable(Protocol):
    """Holds an outside resource until closed (a recognizer's child process: engine/recognizer/process.py)."""

    def close(self) -> None: ...


@runtime_checkable
class Renderer(Protocol):
    """Photo + expression + pose -> frames (see :mod:`engine.renderer`). ``prepare`` builds a per-avatar state;
    ``render`` continues that state's stream; ``reset`` restarts it (frames fed are no longer contiguous).
    A renderer whose output lags its input by k frames (a temporal window) declares ``delay_frames = k``."""

    @property
    def delay_frames(self) -> int:
        """Frames by which the output lags the input (PIRenderer's window lookahead; the warp renderer: 0)."""
        ...

    def prepare(self, image: np.ndarray) -> Any: ...

    def render(self, state: Any, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """exp (N, 64) float32, pose (N, 9) float32 -> uint8 (N, S, S, 3)."""
        ...

    def reset(self, state: Any) -> None: ...


@runtime_checkable
class RestAware(Protocol):
    """A renderer that renders relative to a rest expression: the style's silence shows the photo as it is.

    The rest is the decoder's output for silence in the current style, ``ExpressionDecoder.idle(code)``; the
    engine sets it after ``prepare`` and on every style or intensity change (the warp renderer implements it).
    """

    def set_rest(self, state: Any, exp_rest: np.ndarray) -> None: ...

    def lip_gap_directions(self) -> np.ndarray:
        """(64, m): expression directions that open the inner lips; a rest face built from another style's
        silence keeps its lips where the current style's silence has them (``engine.stylebank.rest_expression``)."""
        ...

    def lid_gap_directions(self) -> np.ndarray:
        """(64, m): expression directions that open the eyelids; a rest face keeps a share ``style.lid_keep`` of
        how far the current style's silence closes them relative to the neutral silence."""
        ...

    def expression_spread(self) -> np.ndarray:
        """(64,) the coefficients' spread: a rest face moves the fewest of these units (the renderer follows each
        coefficient over a range in proportion to it)."""
        ...


class FaceBoxLike(Protocol):
    """A detected face rectangle in pixels (``engine.avatar.FaceBox``)."""

    @property
    def left(self) -> int: ...

    @property
    def top(self) -> int: ...

    @property
    def right(self) -> int: ...

    @property
    def bottom(self) -> int: ...

    @property
    def score(self) -> float: ...


@runtime_checkable
class Landmarker(Protocol):
    """Face detection + the 68-point landmark layout (iBUG 300-W order) that the avatar crop, the warp renderer
    and the expression->landmark fit are built on.

    The default (:class:`engine.landmarker.DlibLandmarker`) is dlib's HOG detector and the shape predictor of
    ``face_recognition_models``, whose training data (iBUG 300-W) excludes commercial use - see the README's
    licence section. Another model with the same 68-point layout replaces it by implementing these two methods.
    """

    def detect_faces(self, image: np.ndarray, upsample: int | None = None) -> Sequence[FaceBoxLike]:
        """All plausible faces in a uint8 RGB image (H, W, 3), largest first."""
        ...

    def landmarks_in_box(self, image: np.ndarray, box: FaceBoxLike) -> np.ndarray:
        """The 68 landmarks (68, 2) float32 (x, y) of the face in ``box``."""
        ...


class RenderLane(Protocol):
    """One session's decode + render, wherever it runs: the runtime's model-worker thread
    (:class:`engine.live.render_lane.ThreadRenderLane`) or a model worker process
    (:class:`engine.model_pool.ProcessRenderLane`). The session sees only this; results arrive through the
    :class:`~engine.live.render_stream.RenderSink` it gave (posted to its event loop). The awaitables never block
    the loop; at most one :meth:`run` is outstanding per lane.
    """

    @property
    def delay_frames(self) -> int:
        """Frames by which the renderer's output lags its input."""
        ...

    @property
    def reused(self) -> int:
        """Renders skipped because a still face repeated exactly (stats)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Where this lane decodes and renders (``runs_in``: ``model_thread`` | ``model_worker``) and its
        counters: the session's ``stats()["decoder"]``."""
        ...

    async def prepare(self, image: np.ndarray) -> None:
        """Prepare ``image`` (uint8 (H, W, 3)) as the avatar, with the current style's rest; the stream restarts.
        Raises if the photo cannot be prepared (the old avatar stays)."""
        ...

    def refresh_rest(self, at_frame: int | None = None, frames: int = 0) -> None:
        """The style or intensity changed: recompute the rest expression and apply it between jobs (no wait),
        crossfaded in from frame ``at_frame`` over ``frames`` frames like the style code (None / 0: at once)."""
        ...

    async def run(self, job: DecodeJob, pose: np.ndarray, blink: np.ndarray, submitted: float) -> None:
        """Decode ``job`` and render its frames (pose (N, 9), blink (N,)); ``submitted`` on the session's clock.
        Raises when the job failed (the stream restarts on the next job)."""
        ...

    def close(self) -> None:
        """Free what the lane holds (its place on a worker process); idempotent."""
        ...
