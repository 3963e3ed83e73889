"""Frame-indexed phoneme ring buffer between the recognizer and the decoder scheduler.

The recognizer emits stable ``(frame, phoneme)`` events in roughly increasing frame order; the scheduler reads
11-frame windows around the frames it decodes. The ring keeps a fixed number of recent frames (memory stays
bounded however long a session runs) and answers every read with a defined phoneme:

- frames before 0 (before the session) and at/after a closed stream's end are SIL - the offline decoder pads
  both ends of a clip with SIL, so streaming and offline windows agree there;
- frames not yet known (past :attr:`PhonemeRing.stable_end`) are padded by the caller's choice (SIL or repeat
  of the last stable phoneme, see :meth:`window`);
- a recognizer that skips a frame (event for 12 after 10) has the hole filled with the previous phoneme
  ("hold"), so one missing label never stalls the stream; a later event for the hole overwrites the guess.

Overrun policy (explicit): the ring retains ``capacity`` frames. A write more than ``capacity`` frames ahead of
the reader's cursor (:meth:`consume`) would evict frames the reader still needs. With ``overrun="drop"``
(default; live sessions prefer skipping stale frames to stalling) the oldest frames are evicted, the
overrun is counted and :attr:`low` tells the reader where the retained data starts. With ``overrun="raise"``
the write raises :class:`RingOverrun` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from models.phonemes import NUM_PHONEMES, SIL, WIN_SIZE

OVERRUN_POLICIES = ("drop", "raise")
PAD_MODES = ("sil", "repeat", "hold")
HOLD_FRAMES = 2  # pad "hold": the last stable phoneme continues this many frames, then SIL (median run: 2)


class RingOverrun(RuntimeError):
    """A write would evict frames the reader has not consumed yet (policy "raise"), or a read hit them."""


class PhonemeRing:
    """Fixed-capacity, frame-indexed store of stable phoneme ids (see module docstring for the policies)."""

    def __init__(self, capacity: int = 256, overrun: str = "drop") -> None:
        if capacity < 2 * WIN_SIZE + 2:
            raise ValueError(f"capacity must be >= {2 * WIN_SIZE + 2} frames, got {capacity}")
        if overrun not in OVERRUN_POLICIES:
            raise ValueError(f"overrun must be one of {OVERRUN_POLICIES}, got {overrun!r}")
        self.capacity = capacity
        self.overrun = overrun
        self._ids = np.full(capacity, SIL, np.int64)
        self._stable_end = 0  # frames [low, stable_end) are known
        self._low = 0  # oldest retained frame
        self._cursor = 0  # the reader still needs frames >= cursor
        self._end: int | None = None  # stream closed: frames >= end are SIL
        self._mute: tuple[int, int] | None = None  # frames in [a, b) read as SIL whatever is written
        self.overruns = 0  # frames evicted before the reader consumed them
        self.late_writes = 0  # events for frames already evicted (ignored)
        self.revisions = 0  # events overwriting a known frame (hole guesses or recognizer corrections)

    # ------------------------------------------------------------------------------------------------ state
    @property
    def stable_end(self) -> int:
        """One past the newest known frame: frames ``< stable_end`` have a phoneme (or are SIL-padded ends)."""
        return self._stable_end

    @property
    def low(self) -> int:
        """Oldest frame still retained (reads of older frames >= 0 raise)."""
        return self._low

    @property
    def end(self) -> int | None:
        """Frame where a closed stream ended, else None."""
        return self._end

    @property
    def cursor(self) -> int:
        return self._cursor

    # ----------------------------------------------------------------------------------------------- writes
    def write(self, frame: int, phoneme: int) -> None:
        """Store the stable phoneme of ``frame`` (see module docstring for holes, late writes and overruns)."""
        frame = int(frame)
        phoneme = int(phoneme)
        if not 0 <= phoneme < NUM_PHONEMES:
            raise ValueError(f"phoneme id must be in [0, {NUM_PHONEMES}), got {phoneme}")
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        if self._end is not None and frame >= self._end:
            self.late_writes += 1
            return
        if frame < self._low:
            self.late_writes += 1
            return
        new_low = frame - self.capacity + 1
        if new_low > self._low:
            lost = max(0, new_low - max(self._low, self._cursor))  # unconsumed frames made unreadable
            if lost > 0 and self.overrun == "raise":
                raise RingOverrun(
                    f"writing frame {frame} would evict {lost} unconsumed frame(s) from {self._cursor} "
                    f"(capacity {self.capacity})"
                )
            self.overruns += lost
            self._low = new_low
            if self._stable_end < new_low:  # everything retained is new: nothing to hold from
                self._stable_end = new_low
        if frame < self._stable_end:
            if self._ids[frame % self.capacity] != phoneme:
                self.revisions += 1
            self._ids[frame % self.capacity] = phoneme
            return
        # fill a hole [stable_end, frame) with the last known phoneme ("hold")
        hold = self._ids[(self._stable_end - 1) % self.capacity] if self._stable_end > self._low else SIL
        for f in range(self._stable_end, frame):
            self._ids[f % self.capacity] = hold
        self._ids[frame % self.capacity] = phoneme
        self._stable_end = frame + 1

    def extend(self, events: Iterable[object]) -> int:
        """Write recognizer events (objects with ``.frame`` and ``.phoneme``, or ``(frame, phoneme)`` pairs).

        Returns how many were written.
        """
        n = 0
        for ev in events:
            if isinstance(ev, tuple):
                frame, phoneme = ev
            else:
                frame, phoneme = ev.frame, ev.phoneme  # type: ignore[attr-defined]
            self.write(frame, phoneme)
            n += 1
        return n

    def close(self, end: int | None = None) -> None:
        """The stream ended at frame ``end`` (default: :attr:`stable_end`): later frames are SIL, all known."""
        end = self._stable_end if end is None else int(end)
        if end < self._low:
            raise ValueError(f"cannot close at {end}: frames from {self._low} are retained")
        if end > self._stable_end:  # frames up to the end that never got a label: hold the last one
            self.write(end - 1, self.last_stable())
        self._end = end
        self._stable_end = max(self._stable_end, end)

    def mute(self, start: int, stop: int) -> None:
        """Frames ``[start, stop)`` read as SIL whatever the recognizer says (interrupt / pause).

        Why not just write SIL: the recognizer keeps delivering events for the discarded audio afterwards and
        would overwrite the silence; the mute range wins over those late events.
        """
        self._mute = (int(start), int(stop))

    def consume(self, frame: int) -> None:
        """The reader no longer needs frames ``< frame`` (they may be evicted without counting an overrun)."""
        self._cursor = max(self._cursor, int(frame))

    # ------------------------------------------------------------------------------------------------ reads
    def get(self, frame: int) -> int:
        """Phoneme of a known frame; SIL before 0, after a closed end and inside a mute range.

        Raises ``KeyError`` for frames not known yet and :class:`RingOverrun` for evicted frames.
        """
        frame = int(frame)
        if frame < 0 or (self._end is not None and frame >= self._end):
            return SIL
        if self._mute is not None and self._mute[0] <= frame < self._mute[1]:
            return SIL
        if frame < self._low:
            raise RingOverrun(f"frame {frame} was evicted (oldest retained frame is {self._low})")
        if frame >= self._stable_end:
            raise KeyError(f"frame {frame} is not known yet (stable up to {self._stable_end - 1})")
        return int(self._ids[frame % self.capacity])

    def last_stable(self) -> int:
        """Phoneme of the newest known frame (SIL if none)."""
        if self._stable_end <= max(self._low, 0):
            return SIL
        return self.get(self._stable_end - 1)

    def window(self, frame: int, known_end: int | None = None, pad: str = "sil", radius: int = WIN_SIZE) -> np.ndarray:
        """Phoneme ids of frames ``frame-radius .. frame+radius`` as int64 ``(2*radius+1,)``.

        Frames ``>= known_end`` (default :attr:`stable_end`) count as unknown and are padded with SIL
        (``pad="sil"``), with the phoneme of frame ``known_end - 1`` (``pad="repeat"``), or with that phoneme
        for ``HOLD_FRAMES`` frames and SIL after (``pad="hold"``: the phoneme being spoken probably goes on a
        little; measured best in benchmarks/latency.py). ``known_end`` lets a caller emulate a smaller
        lookahead than the ring currently has (benchmarks, deterministic tests).
        """
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        known = self._stable_end if known_end is None else min(int(known_end), self._stable_end)
        if self._end is not None and known >= self._end:
            known = max(known, frame + radius + 1)  # past the end everything is known SIL
        last = self.get(known - 1) if pad != "sil" and known - 1 >= self._low else SIL
        hold = 2 * radius + 1 if pad == "repeat" else HOLD_FRAMES if pad == "hold" else 0
        out = np.empty(2 * radius + 1, np.int64)
        for i, f in enumerate(range(frame - radius, frame + radius + 1)):
            out[i] = self.get(f) if f < known else (last if f - known < hold else SIL)
        return out
