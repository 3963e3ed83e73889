"""Idle life of the avatar: blinks and head motion, as deterministic functions of the frame (and its phonemes).

StyleTalk drives the mouth and brows from phonemes; the head pose and the eyelids are left to us, and a face
whose head and lids never move looks frozen. A person blinks every 2-6 s (about 200 ms per blink) and moves
the head, more while talking than in pauses. Both are generated here per frame index from a seeded schedule,
the head's speed scaled by the speech in the frame's own phoneme window (the labels a session already has), so:
- the same frame always gets the same value (a re-rendered or rewound frame does not jump),
- nothing depends on wall time (no jitter when the machine is busy),
- tests can predict exactly which frames blink and how the head moves.

How a blink reaches the picture depends on the renderer; :func:`blink_amounts` gives the eyelid closure in
[0, 1] per frame and the session hands it to a renderer that accepts it (``render(..., blink=...)``: the warp
renderer slides the lid down, models/warp/eyes.py) or, for renderers driven purely by expression
coefficients, adds ``closure * blink_direction`` to the expression.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.phonemes import NSN, SIL, WINDOW_LENGTH

BLINK_FRAMES = 7  # ~233 ms at 30 fps: close in 3 frames, hold 1, open in 3
_PROFILE = np.array([0.35, 0.75, 1.0, 1.0, 0.7, 0.35, 0.1], np.float32)


# Head motion of the sample speakers (data/styletalk-samples, all 25 .mat files; benchmarks/renderer.py
# `head_motion` re-measures it): per-clip standard deviation of the 9 pose parameters, averaged over clips —
# angles (pitch, yaw, roll; here in radians from 2.99°, 4.60°, 2.89°), 3DMM translation, crop scale/tx/ty — and
# how the angle power spreads over frequency bands (pooled spectrum of the 8 source clips; generated at
# HEAD_TEMPO times these frequencies). These amplitudes hold at unit gain; the speech gain below scales the bands
# from FAST_FROM_HZ (48 % of the variance), so a silent head moves about 0.7x as far as the speakers' and a
# talking one about 0.95x.
HEAD_STD = np.array([np.radians(2.99), np.radians(4.60), np.radians(2.89), 0.012, 0.016, 0.149, 0.029, 10.13, 6.54],
                    np.float64)
# The crop shift (tx, ty) is generated at 0.6 of the speakers' spread: their crops also follow camera motion,
# and a single-photo warp can only uncover as much background beside the face as the photo has
# (models/warp/config.py head_max_shift, head_room_factor).
HEAD_GAIN = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6])
HEAD_BANDS_HZ = ((0.08, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0))
HEAD_BAND_SHARE = np.array([0.52, 0.26, 0.15, 0.05, 0.02])
# Gain of the bands from FAST_FROM_HZ in silence, in speech and at a phrase onset, and a scale of all band
# frequencies (HEAD_TEMPO: the measured spectrum's fast bands hold part of the 3DMM fits' frame-to-frame jitter,
# which a generated head turned into real, too fast, motion), fitted together on a grid (benchmarks/renderer.py
# speech_driven_motion) to the 8 labelled source clips: median head speed 7-15 °/s while speaking and 4-8 in pauses
# on 7 of them (KristiNoem: 4 and 13), highest around phrase onsets, and the clips' angle spread. At unit gain and
# tempo the generated head moved ~18 °/s, talking or not.
SPEECH_GAIN = (0.0, 0.9, 0.5)
HEAD_TEMPO = 0.5
FAST_FROM_HZ = 0.25
_HANN = np.hanning(13)[1:-1] / np.hanning(13)[1:-1].sum()  # (11,) weights of a phoneme window


def speech_activity(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, from its phoneme window (N, 11) (the frame's label in the middle, 5 before and 5 after):
    ``activity`` (N,) in [0, 1], the Hann-weighted share of speech labels (not SIL/NSN), and ``onset`` (N,) in
    [0, 1], large where the window's past is silent and its future speech (a phrase starts within ±5 frames).

    Both change by at most a fraction per frame (the window slides by one label), so motion driven by them
    stays smooth; both depend only on the frame's own window, so a frame renders the same whenever it is
    rendered.
    """
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] != WINDOW_LENGTH:
        raise ValueError(f"phoneme windows must be (N, {WINDOW_LENGTH}), got {w.shape}")
    speech = ~np.isin(w, (SIL, NSN))
    activity = speech @ _HANN
    half = WINDOW_LENGTH // 2
    onset = speech[:, half + 1:].mean(1) * (1.0 - speech[:, :half].mean(1))
    return activity.astype(np.float64), onset.astype(np.float64)


class IdleMotion:
    """Blink schedule and head motion for one session (deterministic in the frame index and its phonemes).

    ``head`` scales a natural head motion whose spread (per pose parameter) and rhythm (power per frequency
    band) match the sample speakers' (1.0 = theirs; 0 = a still head): a sum of one sinusoid per band and
    parameter, with seeded frequencies (``tempo`` times the band's) and phases. The bands from
    ``FAST_FROM_HZ``, which carry most of the angular speed, are scaled per frame by the speech around it
    (:func:`speech_activity`): ``SPEECH_GAIN`` = (silence, speech, phrase onset), so the head moves faster while
    talking and most at the start of a phrase, as the sample speakers' do (benchmarks/renderer.py
    ``speech_driven_motion`` fits and scores it leave-one-clip-out). Without phoneme windows a frame counts as
    silence. ``sway`` adds the older slow sinusoidal sway of the angles.
    """

    def __init__(self, seed: int = 0, min_gap_s: float = 2.0, max_gap_s: float = 6.0, fps: int = 30,
                 sway: float = 0.0, base_pose: np.ndarray | None = None, head: float = 1.0,
                 speech_gain: tuple[float, float, float] | None = None, tempo: float = HEAD_TEMPO) -> None:
        self.fps = fps
        self.sway = float(sway)
        self.head = float(head)
        self.speech_gain = SPEECH_GAIN if speech_gain is None else tuple(float(g) for g in speech_gain)
        self.base_pose = np.zeros(9, np.float32) if base_pose is None else np.asarray(base_pose, np.float32)
        rng = np.random.default_rng(seed)
        self._min_gap = int(min_gap_s * fps)
        self._max_gap = int(max_gap_s * fps)
        self._rng = rng
        self._starts: list[int] = [int(1.0 * fps)]  # first blink ~1 s in; later ones drawn on demand
        self._phase = rng.uniform(0, 2 * np.pi, size=3)
        head_rng = np.random.default_rng([seed, 1])  # its own stream: the blink schedule stays as it was
        self._freq = tempo * np.stack([head_rng.uniform(lo, hi, size=9) for lo, hi in HEAD_BANDS_HZ])  # (bands, 9)
        self._head_phase = head_rng.uniform(0, 2 * np.pi, size=self._freq.shape)
        # amplitude per band: a sinusoid of amplitude a has variance a²/2
        self._amp = np.sqrt(2.0 * HEAD_BAND_SHARE / HEAD_BAND_SHARE.sum())[:, None] * (HEAD_STD * HEAD_GAIN)[None, :]
        self._fast = np.array([lo >= FAST_FROM_HZ for lo, _ in HEAD_BANDS_HZ])

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

    def head_parts(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head motion's two parts (N, 9) at unit gain: the slow drift (bands below ``FAST_FROM_HZ``) and
        the bands the speech modulates."""
        t = np.asarray(frames, np.float64)[:, None, None] / self.fps  # (N, 1, 1)
        wave = np.sin(2 * np.pi * self._freq[None] * t + self._head_phase[None]) * self._amp[None]  # (N, bands, 9)
        return wave[:, ~self._fast].sum(1), wave[:, self._fast].sum(1)

    def poses(self, frames: np.ndarray, windows: np.ndarray | None = None) -> np.ndarray:
        """Head pose ``(N, 9)`` per frame: the base pose plus the natural head motion (and sway).

        ``windows`` (N, 11): each frame's phoneme window (``models.phonemes.phoneme_windows``; a session's
        ``DecodeJob.windows``), which drives the speed of the head; None = silence.
        """
        frames = np.asarray(frames, np.float64)
        pose = np.repeat(self.base_pose[None], frames.shape[0], axis=0).astype(np.float64)
        if self.head:
            slow, modulated = self.head_parts(frames)
            g_sil, g_speech, g_onset = self.speech_gain
            if windows is None:
                gain = np.full(frames.shape[0], g_sil)
            else:
                activity, onset = speech_activity(windows)
                gain = g_sil + (g_speech - g_sil) * activity + g_onset * onset  # (N,)
            pose += self.head * (slow + gain[:, None] * modulated)
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
