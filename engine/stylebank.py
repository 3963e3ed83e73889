"""Speaking styles: encode each style clip once, cache the code, blend, scale intensity, switch smoothly.

Intensity is "hybrid" by default (:meth:`StyleBank.styled`): the style vector packs the code, the neutral
code and k; the decoder moves the rest face linearly in output space and the motion along the code line.

The style encoder runs a 256-frame transformer; the decoder only needs its output, a C-dim code. So a clip is
encoded exactly once (:meth:`StyleBank.add`, through an injected ``encode(clip) -> code`` callable - the
bank itself knows no network and is tested without one) and every frame reuses the cached vector.

Per session, :class:`StyleSchedule` says which code frame t is decoded with. A switch requested at frame F
lands exactly on F: frames < F keep the old code bit for bit, frames F .. F+N-1 interpolate linearly
(weight (t-F+1)/N), frames >= F+N use the new code. Switching in code space (not output space) keeps the
decoder's style-dependent expert mixing consistent during the crossfade.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from engine.config import MAX_INTENSITY, StyleConfig
from engine.contracts import RestAware

MIX_SEPARATOR = "+"
"""``"a+b"`` names the equal mix of styles ``a`` and ``b`` (``"a+b+c"``: three styles), see :meth:`StyleBank.get`."""


class StyleError(KeyError):
    """Unknown style name or unusable style clip/code."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class StyleBank:
    """Named style codes (float32 ``(C,)``), encoded once per clip and shared by all sessions (thread-safe)."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], neutral: str = "neutral") -> None:
        self._encode = encode
        self.neutral = neutral
        self._codes: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.encode_calls = 0
        self.dim: int | None = None

    # ------------------------------------------------------------------------------------------- contents
    def add(self, name: str, clip: np.ndarray) -> np.ndarray:
        """Encode expression clip ``(T, 64)`` once and store it under ``name`` (replacing any old code)."""
        _check_name(name)
        clip = np.asarray(clip)
        if clip.ndim != 2 or clip.shape[1] != 64 or clip.shape[0] < 1:
            raise StyleError(f"style clip {name!r} must be (T, 64) with T >= 1, got {clip.shape}")
        if not np.isfinite(clip).all():
            raise StyleError(f"style clip {name!r} contains NaN or infinite values")
        code = np.asarray(self._encode(clip.astype(np.float32)), np.float32).reshape(-1)
        with self._lock:
            self.encode_calls += 1
        return self.add_code(name, code)

    def add_code(self, name: str, code: np.ndarray) -> np.ndarray:
        """Store a precomputed code (e.g. the built-in ``style_codes.npz``)."""
        _check_name(name)
        code = np.array(code, np.float32).reshape(-1)
        if not np.isfinite(code).all():
            raise StyleError(f"style code {name!r} contains NaN or infinite values")
        with self._lock:
            if self.dim is not None and code.shape[0] != self.dim:
                raise StyleError(f"style code {name!r} has {code.shape[0]} values, the bank holds {self.dim}")
            self.dim = code.shape[0]
            code.setflags(write=False)
            self._codes[name] = code
        return code

    def remove(self, name: str) -> None:
        with self._lock:
            self._codes.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._codes)

    def __contains__(self, name: object) -> bool:
        if name in self._codes:
            return True
        if not isinstance(name, str) or MIX_SEPARATOR not in name:
            return False
        return all(part.strip() in self._codes for part in name.split(MIX_SEPARATOR))

    def __len__(self) -> int:
        return len(self._codes)

    def get(self, name: str) -> np.ndarray:
        """The cached code of ``name`` (read-only array); ``"a+b"`` is the equal mix of styles ``a`` and
        ``b`` (the mean of their codes: the midpoint of the paper's style-space interpolation)."""
        code = self._codes.get(name)
        if code is not None:
            return code
        if isinstance(name, str) and MIX_SEPARATOR in name:
            parts = [p.strip() for p in name.split(MIX_SEPARATOR)]
            missing = [p for p in parts if p not in self._codes]
            if not missing:
                mixed = np.mean([self._codes[p] for p in parts], axis=0).astype(np.float32)
                mixed.setflags(write=False)
                return mixed
            name = missing[0]
        known = ", ".join(self.names()) or "none"
        raise StyleError(f"unknown style {name!r} (known: {known}; mix styles with a+b)")

    # ---------------------------------------------------------------------------------------- arithmetic
    def blend(self, a: str, b: str, w: float) -> np.ndarray:
        """(1-w)·code(a) + w·code(b), w in [0, 1]."""
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {w}")
        return lerp(self.get(a), self.get(b), w)

    def intensity(self, name: str, k: float) -> np.ndarray:
        """Interpolate with the neutral style: neutral + k·(code - neutral); 0 = neutral, 1 = as encoded, ≤ 2."""
        if not 0.0 <= k <= MAX_INTENSITY:
            raise ValueError(f"intensity must be in [0, {MAX_INTENSITY}], got {k}")
        code = self.get(name)
        if k == 1.0:
            return code
        neutral = self.get(self.neutral) if self.neutral in self._codes else np.zeros_like(code)
        return (neutral + np.float32(k) * (code - neutral)).astype(np.float32)

    def styled(self, name: str, k: float, space: str = "hybrid") -> np.ndarray:
        """The style vector the decoder gets for style ``name`` at intensity ``k``.

        ``space="code"``: :meth:`intensity` (the paper's line through neutral in code space; a ``(C,)`` code;
        the decoder saturates along it: d(2)/d(1) = 1.41 on the built-in checkpoint).
        ``space="hybrid"``: the packed ``[code, neutral, k]`` ``(2C+1,)`` that ``ExpressionDecoder`` decodes
        as code-space motion around a rest face moved linearly in output space (engine/decoder.py). Every
        vector of one session must come from the same space (they are crossfaded elementwise).
        """
        if space == "code":
            return self.intensity(name, k)
        if space != "hybrid":
            raise ValueError(f"intensity space must be 'hybrid' or 'code', got {space!r}")
        if not 0.0 <= k <= MAX_INTENSITY:
            raise ValueError(f"intensity must be in [0, {MAX_INTENSITY}], got {k}")
        code = self.get(name)
        neutral = self.get(self.neutral) if self.neutral in self._codes else np.zeros_like(code)
        packed = np.concatenate([code, neutral, np.array([k], np.float32)]).astype(np.float32)
        packed.setflags(write=False)
        return packed


def rest_expression(
    bank: StyleBank, idle: Callable[[np.ndarray], np.ndarray], name: str, k: float, space: str, rest: str,
    lip_dirs: np.ndarray | None = None, lid_dirs: np.ndarray | None = None, lid_keep: float = 1.0,
    spread: np.ndarray | None = None,
) -> np.ndarray:
    """The rest expression (64,) a rest-aware renderer draws as the photo itself, for style ``name`` at ``k``.

    ``rest="style"``: the style's own silence (silence = the photo; only motion shows the style).
    ``rest="neutral"``: the neutral style's silence, so a style's static pose (smile width, brows, eyes) shows as
    a change of the photo; but its *lip opening* in silence is the style's own: the rest is moved along
    ``lip_dirs`` (64, m) (the renderer's lip-gap directions) until the style's silence opens the lips by exactly
    nothing. Why: strong styles' silences part the lips (surprised, spata at k=2); drawn on a photo whose mouth is
    closed that is a dark hole in silence, the defect a viewer notices first.
    The eyelids likewise, along ``lid_dirs`` (64, e), but only in part: the style's silence closes (or widens) the
    photo's eyes by ``lid_keep`` × as much as it closes them relative to the neutral silence. Why: the sample
    speakers' expression coefficients carry their own eye shape; drawn in full, 8 of 11 styles closed a photo's
    eyes by 26–52 % in speech (happy: the lids half down, a sleepy face), where the style videos show their
    speakers' eyes at most 18 % less open than read speech does (benchmarks/style_eyes.py).
    The rest moves the fewest ``spread`` units (64,) (the renderer's coefficient spreads; None: plain units): a
    plain least-norm move pushed coefficients with a narrow spread past the range the renderer follows (it clamps
    there), and the clamped rest left KristiNoem's lips 0.7 px apart in silence (1.3 px with the eyelids moved too).
    Shapes: idle(code (D,)) -> (64,); G = [lip_dirs, lid_dirs] (64, m + e), W = diag(spread²): rest = n + W G a
    with Gᵀ(s - rest) = [0, lid_keep · lid_dirsᵀ(s - n)].
    """
    style_idle = np.array(idle(bank.styled(name, k, space)), np.float32).reshape(-1)  # a copy: idle() caches
    if rest != "neutral" or bank.neutral not in bank:
        return style_idle
    neutral_idle = np.asarray(idle(bank.styled(bank.neutral, 1.0, space)), np.float32).reshape(-1)
    d = (style_idle - neutral_idle).astype(np.float64)
    blocks = [(np.asarray(g, np.float64), 1.0) for g in (lip_dirs,) if g is not None]
    if lid_dirs is not None:
        blocks.append((np.asarray(lid_dirs, np.float64), 1.0 - float(lid_keep)))
    if not blocks:
        return neutral_idle
    g = np.concatenate([b for b, _ in blocks], 1)
    wg = g if spread is None else np.square(np.asarray(spread, np.float64))[:, None] * g  # (64, m + e)
    rhs = np.concatenate([share * (b.T @ d) for b, share in blocks])
    a, *_ = np.linalg.lstsq(g.T @ wg, rhs, rcond=None)
    return (neutral_idle + wg @ a).astype(np.float32)


def renderer_rest(renderer: RestAware, bank: StyleBank, idle: Callable[[np.ndarray], np.ndarray], name: str,
                  k: float, style: StyleConfig) -> np.ndarray:
    """:func:`rest_expression` with a rest-aware renderer's lip and eyelid directions and the ``style`` config's
    rest choice, intensity space and ``lid_keep``, moving in the renderer's coefficient spreads: what every caller
    that sets a renderer's rest computes."""
    return rest_expression(bank, idle, name, k, style.intensity_space, style.rest, renderer.lip_gap_directions(),
                           renderer.lid_gap_directions(), style.lid_keep, renderer.expression_spread())


def lerp(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """Linear interpolation in float32; exact endpoints (w=0 -> a, w=1 -> b bit for bit)."""
    if w <= 0.0:
        return np.asarray(a, np.float32)
    if w >= 1.0:
        return np.asarray(b, np.float32)
    return (np.asarray(a, np.float32) * np.float32(1.0 - w) + np.asarray(b, np.float32) * np.float32(w)).astype(
        np.float32
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 64 or not name.isprintable():
        raise StyleError(f"style name must be 1..64 printable characters, got {name!r}")
    if MIX_SEPARATOR in name:
        raise StyleError(f"style name {name!r} may not contain {MIX_SEPARATOR!r} (it names a mix of styles)")


@dataclass(frozen=True)
class _Switch:
    start: int  # first frame that differs from the previous code
    frames: int  # crossfade length (>= 1)
    source: np.ndarray  # code at start - 1
    target: np.ndarray


class StyleSchedule:
    """Per-session, frame-indexed style code with crossfaded switches (sans-I/O; see module docstring)."""

    def __init__(self, code: np.ndarray, crossfade_frames: int = 8) -> None:
        if crossfade_frames < 0:
            raise ValueError(f"crossfade_frames must be >= 0, got {crossfade_frames}")
        self.crossfade_frames = crossfade_frames
        self._base = np.asarray(code, np.float32)
        self._switches: list[_Switch] = []

    def switch(self, code: np.ndarray, at_frame: int, crossfade_frames: int | None = None) -> int:
        """Crossfade to ``code`` starting at ``at_frame``; returns the landing frame (= ``at_frame``).

        A later request replaces any switch scheduled at or after ``at_frame`` (the newest command wins); a
        switch during a running crossfade starts from the blended code of frame ``at_frame - 1``.
        """
        at_frame = int(at_frame)
        n = self.crossfade_frames if crossfade_frames is None else int(crossfade_frames)
        self._switches = [s for s in self._switches if s.start < at_frame]
        source = self.code_at(at_frame - 1)
        self._switches.append(_Switch(at_frame, max(1, n), source, np.asarray(code, np.float32)))
        return at_frame

    def code_at(self, frame: int) -> np.ndarray:
        """Style code ``(C,)`` for frame ``frame``."""
        current = self._base
        for s in self._switches:
            if frame < s.start:
                break
            w = (frame - s.start + 1) / s.frames
            current = lerp(s.source, s.target, w)
        return current

    def codes(self, frames: Iterable[int]) -> np.ndarray:
        """Codes for several frames, ``(N, C)`` float32."""
        return np.stack([self.code_at(int(f)) for f in frames]).astype(np.float32, copy=False)

    def is_constant(self, first: int, last: int) -> bool:
        """True when frames ``first..last`` all use the same code (the decoder can then batch them as one clip)."""
        for s in self._switches:
            if s.start > last:
                break
            if s.start + s.frames - 1 >= first:
                return False
        return True

    def target(self) -> np.ndarray:
        """The code the schedule ends up at (after all scheduled switches)."""
        return self._switches[-1].target if self._switches else self._base

    def prune(self, before: int) -> None:
        """Forget switches fully applied before frame ``before`` (keeps memory bounded)."""
        while self._switches and self._switches[0].start + self._switches[0].frames <= before:
            s = self._switches.pop(0)
            self._base = s.target
