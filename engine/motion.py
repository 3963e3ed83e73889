"""Idle life of the avatar: blinks and head motion, as deterministic functions of the frame (and its phonemes).

StyleTalk drives the mouth and brows from phonemes; the head pose and the eyelids are left to us, and a face
whose head and lids never move looks frozen. A person blinks every 2-6 s (about 200 ms per blink) and moves
the head, faster while talking than in pauses. Both are generated here per frame index from a seeded schedule,
the head's speed set by the speech in each frame's own phoneme window (the labels a session already has), so:
- the same frame always gets the same value within a session (a re-rendered or rewound frame does not jump),
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
# how the angle power spreads over frequency bands (pooled spectrum of the 8 source clips). The motion is a fixed
# path through these (a sum of sinusoids); speech sets how fast the head travels along it (HEAD_RATE), so the
# spread holds whatever the speech and only the speed follows it.
HEAD_STD = np.array([np.radians(2.99), np.radians(4.60), np.radians(2.89), 0.012, 0.016, 0.149, 0.029, 10.13, 6.54],
                    np.float64)
# The crop shift (tx, ty) is generated at 0.6 of the speakers' spread: their crops also follow camera motion,
# and a single-photo warp can only stretch the background the photo has beside the face over what the head
# uncovers (models/warp/config.py head_max_shift, edge_room_min).
# The angles at 0.8: the fit below (angle spread of the 8 labelled clips, the median clip's) asks for 0.8 of the
# 25-clip mean.
HEAD_GAIN = np.array([0.8, 0.8, 0.8, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6])
HEAD_BANDS_HZ = ((0.08, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0))
HEAD_BAND_SHARE = np.array([0.52, 0.26, 0.15, 0.05, 0.02])
# The head's clock: seconds of motion (along the path above) per second, in silence, in speech, and added at a
# phrase onset (per frame from :func:`head_rates`). Fitted on a grid (benchmarks/renderer.py
# speech_driven_motion) to the 8 labelled source clips: the median clip's head speed in speech and in pauses,
# their ratio, the speed around phrase onsets and the angle spread; leave-one-clip-out there, the held-out
# clips' median speech/pause speed ratio is 1.61 (real 1.52; the amplitude-gain motion this replaced: 1.20).
# Rates below 1 also slow the measured spectrum, whose fast bands hold part of the 3DMM fits' frame-to-frame
# jitter (at rate 1 the head moved ~18 °/s, talking or not; the speakers ~5-6 in pauses and ~10 talking).
HEAD_RATE = (0.3, 0.6, 2.0)
HEAD_RATE_WIDTH = 2
HEAD_ONSET_WIDTH = 3


def _hann(width: int) -> np.ndarray:
    """(2·width + 1,) Hann weights summing to 1 (width 0: the frame's own label)."""
    w = np.hanning(2 * width + 3)[1:-1]
    return w / w.sum()


CLOCK_MEMORY = 30 * 60 * 10  # frames of head clock a session keeps (10 min at 30 fps) for re-rendered frames


def speech_activity(windows: np.ndarray, width: int = WINDOW_LENGTH // 2, onset_width: int = WINDOW_LENGTH // 2
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, from its phoneme window (N, 11) (the frame's label in the middle, 5 before and 5 after):
    ``activity`` (N,) in [0, 1], the Hann-weighted share of speech labels (not SIL/NSN) within ±``width``
    frames, and ``onset`` (N,) in [0, 1], large where the window's past ``onset_width`` frames are silent and its
    next ``onset_width`` frames speech (a phrase starts within ±onset_width frames). Both depend only on the
    frame's own window.
    """
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] != WINDOW_LENGTH:
        raise ValueError(f"phoneme windows must be (N, {WINDOW_LENGTH}), got {w.shape}")
    speech = ~np.isin(w, (SIL, NSN))
    half = WINDOW_LENGTH // 2
    activity = speech[:, half - width:half + width + 1] @ _hann(width)
    onset = speech[:, half + 1:half + 1 + onset_width].mean(1) * (1.0 - speech[:, half - onset_width:half].mean(1))
    return activity.astype(np.float64), onset.astype(np.float64)


def head_rates(windows: np.ndarray | None, n: int, rates: tuple[float, float, float] = HEAD_RATE) -> np.ndarray:
    """Per frame the head clock's rate (N,) (seconds of motion per second) from the frames' phoneme windows
    (N, 11): ``rates`` = (silence, speech, added at a phrase onset); None = silence. The speech share is taken
    over ±``HEAD_RATE_WIDTH`` frames: the clock can change its rate from one frame to the next without a jump in
    the pose, and a wider share ran pause frames next to speech at nearly the speech rate."""
    r_sil, r_speech, r_onset = rates
    if windows is None:
        return np.full(n, r_sil)
    activity, onset = speech_activity(windows, HEAD_RATE_WIDTH, HEAD_ONSET_WIDTH)
    return r_sil + (r_speech - r_sil) * activity + r_onset * onset


class IdleMotion:
    """Blink schedule and head motion for one session (deterministic in the frame index and its phonemes).

    ``head`` scales a natural head motion whose spread (per pose parameter) and rhythm (power per frequency
    band) match the sample speakers' (1.0 = theirs; 0 = a still head): a fixed path, a sum of one sinusoid per
    band and parameter with seeded frequencies and phases, travelled at a speed the speech sets. The head has
    its own clock: each frame advances it by ``rates`` (silence, speech, phrase onset; :func:`head_rates`) over
    one frame period, so the head moves faster while talking and most at the start of a phrase, as the sample
    speakers' do (benchmarks/renderer.py ``speech_driven_motion`` fits and scores it leave-one-clip-out), and
    its spread is the same talking or not. A faster clock only speeds the travel along the path: no pose jumps
    when speech starts or stops (an amplitude gain on the fast bands did: the gain's own change moved the head
    at each pause's edges, and the pauses came out nearly as lively as the speech).

    The clock integrates over the frames, so a session's poses depend on its frames in the order it asks for
    them: each frame's clock is kept (``CLOCK_MEMORY`` frames), and a frame asked for again (re-rendered,
    rewound) gets the same pose. Frames skipped between two requests advance the clock at the later frame's
    rate; frames before the first request count as silence. Without phoneme windows every frame is silence and
    the pose is a pure function of the frame index. ``sway`` adds the older slow sinusoidal sway of the angles.
    """

    def __init__(self, seed: int = 0, min_gap_s: float = 2.0, max_gap_s: float = 6.0, fps: int = 30,
                 sway: float = 0.0, base_pose: np.ndarray | None = None, head: float = 1.0,
                 rates: tuple[float, float, float] | None = None) -> None:
        self.fps = fps
        self.sway = float(sway)
        self.head = float(head)
        self.rates = HEAD_RATE if rates is None else (float(rates[0]), float(rates[1]), float(rates[2]))
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
        self._clock: dict[int, float] = {}  # frame index → head clock (s of motion) of the frames seen
        self._last = -1  # newest frame with a clock ...
        self._next = 0.0  # ... and the clock of the frame after it (its own rate applied)

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

    def head_path(self, clock: np.ndarray) -> np.ndarray:
        """The head motion (N, 9) at unit gain at clock times (N,) (seconds of motion)."""
        t = np.asarray(clock, np.float64)[:, None, None]  # (N, 1, 1)
        return (np.sin(2 * np.pi * self._freq[None] * t + self._head_phase[None]) * self._amp[None]).sum(1)

    def head_clock(self, frames: np.ndarray, rates: np.ndarray) -> np.ndarray:
        """The head clock (N,) at frames (N,) whose own rates are ``rates`` (N,): a frame's clock is the previous
        frame's plus that frame's rate over one frame period (frames before the first request: silence)."""
        frames = np.asarray(frames, np.int64)
        rates = np.asarray(rates, np.float64)
        n, dt = frames.shape[0], 1.0 / self.fps
        if n and frames[0] > self._last and np.all(np.diff(frames) == 1):  # the usual case: the next frames
            start = frames[0] * self.rates[0] * dt if self._last < 0 else \
                self._next + (frames[0] - self._last - 1) * rates[0] * dt
            out = start + np.concatenate([[0.0], np.cumsum(rates[:-1])]) * dt
            self._clock.update(zip(frames.tolist(), out.tolist(), strict=True))
            self._last, self._next = int(frames[-1]), float(out[-1] + rates[-1] * dt)
        else:
            out = np.empty(n)
            for i, (f, r) in enumerate(zip(frames.tolist(), rates.tolist(), strict=True)):
                c = self._clock.get(f)
                if c is None:
                    if self._last < 0:
                        c = f * self.rates[0] * dt
                    elif f > self._last:
                        c = self._next + (f - self._last - 1) * r * dt
                    else:  # a frame older than those seen, or one skipped before: from its nearest known one
                        k = min(self._clock, key=lambda j: abs(j - f))
                        c = self._clock[k] + (f - k) * r * dt
                    self._clock[f] = c
                    if f > self._last:
                        self._last, self._next = f, c + r * dt
                out[i] = c
        if len(self._clock) > 2 * CLOCK_MEMORY:
            self._clock = {f: c for f, c in self._clock.items() if f > self._last - CLOCK_MEMORY}
        return out

    def poses(self, frames: np.ndarray, windows: np.ndarray | None = None) -> np.ndarray:
        """Head pose ``(N, 9)`` per frame: the base pose plus the natural head motion (and sway).

        ``windows`` (N, 11): each frame's phoneme window (``models.phonemes.phoneme_windows``; a session's
        ``DecodeJob.windows``), which drives the speed of the head; None = silence.
        """
        frames = np.asarray(frames, np.float64)
        pose = np.repeat(self.base_pose[None], frames.shape[0], axis=0).astype(np.float64)
        if self.head:
            if windows is None:  # silence: a pure function of the frame index (no clock kept)
                clock = frames * (self.rates[0] / self.fps)
            else:
                clock = self.head_clock(frames.astype(np.int64), head_rates(windows, frames.shape[0], self.rates))
            pose += self.head * self.head_path(clock)
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
