"""Idle life of the avatar: blinks and (optional) slow head motion, as deterministic functions of the frame.

StyleTalk drives the mouth and brows from phonemes; during silence its output is constant, which looks
frozen. A person at rest blinks every 2-6 s (about 200 ms per blink) and sways a little. Both are generated
here per frame index from a seeded schedule, so:
- the same frame always gets the same value (a re-rendered or rewound frame does not jump),
- nothing depends on wall time (no jitter when the machine is busy),
- tests can predict exactly which frames blink.

How a blink reaches the picture depends on the renderer; :func:`blink_amounts` gives the eyelid closure in
[0, 1] per frame and the session hands it to a renderer that accepts it (``render(..., blink=...)``) or, for
renderers driven purely by expression coefficients, adds ``closure * blink_direction`` to the expression.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BLINK_FRAMES = 7  # ~233 ms at 30 fps: close in 3 frames, hold 1, open in 3
_PROFILE = np.array([0.35, 0.75, 1.0, 1.0, 0.7, 0.35, 0.1], np.float32)


# Head motion of the sample speakers (data/styletalk-samples, all 25 .mat files; benchmarks/renderer.py
# `head_motion` re-measures it): per-clip standard deviation of the 9 pose parameters, averaged over clips —
# angles (pitch, yaw, roll; here in radians from 2.99°, 4.60°, 2.89°), 3DMM translation, crop scale/tx/ty — and
# how the angle power spreads over frequency bands (pooled spectrum of the 8 source clips).
HEAD_STD = np.array([np.radians(2.99), np.radians(4.60), np.radians(2.89), 0.012, 0.016, 0.149, 0.029, 10.13, 6.54],
                    np.float64)
# The crop shift (tx, ty) is generated at 0.6 of the speakers' spread: their crops also follow camera motion,
# and shifts beyond ≈ 0.3 IOD tear a single-photo warp (models/warp/config.py head_max_shift).
HEAD_GAIN = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6])
HEAD_BANDS_HZ = ((0.08, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0))
HEAD_BAND_SHARE = np.array([0.52, 0.26, 0.15, 0.05, 0.02])


class IdleMotion:
    """Blink schedule and head motion for one session (deterministic in the frame index).

    ``head`` scales a natural head motion whose spread (per pose parameter) and rhythm (power per frequency
    band) match the sample speakers' (1.0 = theirs; 0 = a still head): a sum of one sinusoid per band and
    parameter, with seeded frequencies and phases. ``sway`` adds the older slow sinusoidal sway of the angles.
    """

    def __init__(self, seed: int = 0, min_gap_s: float = 2.0, max_gap_s: float = 6.0, fps: int = 30,
                 sway: float = 0.0, base_pose: np.ndarray | None = None, head: float = 1.0) -> None:
        self.fps = fps
        self.sway = float(sway)
        self.head = float(head)
        self.base_pose = np.zeros(9, np.float32) if base_pose is None else np.asarray(base_pose, np.float32)
        rng = np.random.default_rng(seed)
        self._min_gap = int(min_gap_s * fps)
        self._max_gap = int(max_gap_s * fps)
        self._rng = rng
        self._starts: list[int] = [int(1.0 * fps)]  # first blink ~1 s in; later ones drawn on demand
        self._phase = rng.uniform(0, 2 * np.pi, size=3)
        head_rng = np.random.default_rng([seed, 1])  # its own stream: the blink schedule stays as it was
        self._freq = np.stack([head_rng.uniform(lo, hi, size=9) for lo, hi in HEAD_BANDS_HZ])  # (bands, 9)
        self._head_phase = head_rng.uniform(0, 2 * np.pi, size=self._freq.shape)
        # amplitude per band: a sinusoid of amplitude a has variance a²/2
        self._amp = np.sqrt(2.0 * HEAD_BAND_SHARE / HEAD_BAND_SHARE.sum())[:, None] * (HEAD_STD * HEAD_GAIN)[None, :]

    def _starts_until(self, frame: int) -> list[int]:
        while self._starts[-1] <= frame:
            gap = int(self._rng.integers(self._min_gap, self._max_gap + 1))
            self._starts.append(self._starts[-1] + gap)
        return self._starts

    def blink_amounts(self, frames: np.ndarray) -> np.ndarray:
        """Eyelid closure in [0, 1] for each frame index, float32 ``(N,)``."""
        frames = np.asarray(frames, np.int64)
        out = np.zeros(frames.shape[0], np.float32)
        if frames.size == 0:
            return out
        starts = np.asarray(self._starts_until(int(frames.max())), np.int64)
        # the latest blink start at or before each frame
        idx = np.searchsorted(starts, frames, side="right") - 1
        valid = idx >= 0
        offset = np.where(valid, frames - starts[np.maximum(idx, 0)], BLINK_FRAMES)
        inside = valid & (offset >= 0) & (offset < BLINK_FRAMES)
        out[inside] = _PROFILE[offset[inside]]
        return out

    def poses(self, frames: np.ndarray) -> np.ndarray:
        """Head pose ``(N, 9)`` per frame: the base pose plus the natural head motion (and sway)."""
        frames = np.asarray(frames, np.float64)
        pose = np.repeat(self.base_pose[None], frames.shape[0], axis=0).astype(np.float64)
        if self.head:
            t = frames[:, None, None] / self.fps  # (N, 1, 1)
            wave = np.sin(2 * np.pi * self._freq[None] * t + self._head_phase[None])  # (N, bands, 9)
            pose += self.head * (wave * self._amp[None]).sum(1)
        if self.sway:
            t = frames / self.fps
            periods = np.array([7.3, 9.1, 11.7])
            pose[:, :3] += (self.sway * np.sin(2 * np.pi * t[:, None] / periods + self._phase)).astype(np.float32)
        return pose.astype(np.float32)


def renderer_accepts_blink(renderer: Any) -> bool:
    """Whether ``renderer.render`` takes a ``blink=`` closure array (``supports_blink = True``)."""
    return bool(getattr(renderer, "supports_blink", False))


def apply_blink(renderer: Any, exp: np.ndarray, blink: np.ndarray) -> np.ndarray:
    """Blinks for renderers driven only by expression: exp + closure x the renderer's ``blink_direction``."""
    direction = getattr(renderer, "blink_direction", None)
    if direction is None or renderer_accepts_blink(renderer) or not np.any(blink):
        return exp
    return (exp + blink[:, None] * np.asarray(direction, np.float32)[None, :]).astype(np.float32)


def render_with_blink(renderer: Any, state: Any, exp: np.ndarray, pose: np.ndarray, blink: np.ndarray) -> np.ndarray:
    """``renderer.render`` with the idle blinks applied the way this renderer supports them."""
    if renderer_accepts_blink(renderer):
        return renderer.render(state, exp, pose, blink=blink)
    return renderer.render(state, apply_blink(renderer, exp, blink), pose)
