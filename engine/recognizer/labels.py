"""Labels-file "recognizer": replays reference phoneme labels paced by the audio fed.

For offline rendering with known labels and for tests: the official ``*_seq.json`` is a JSON list of phoneme
ids, one per 30 fps frame. Frame ``t`` is emitted once the audio up to its end has been fed (so it behaves
like a zero-lag recognizer in the live pipeline); frames beyond the file are SIL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.recognizer.base import PhonemeEvent, Recognizer
from models.phonemes import NUM_PHONEMES, PHONEME_INDEX, SIL


class LabelsFileError(ValueError):
    """A labels file is missing or not a list of phoneme ids/names."""


def read_labels(source: str | Path | Sequence[int | str]) -> np.ndarray:
    """Phoneme ids (int64) from a ``*_seq.json`` path, or a sequence of ids / names."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise LabelsFileError(f"labels file {path} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise LabelsFileError(f"{path} is not JSON: {exc}") from None
        where = str(path)
    else:
        data, where = list(source), "labels"
    if not isinstance(data, list):
        raise LabelsFileError(f"{where}: expected a JSON list of phoneme ids, got {type(data).__name__}")
    ids = []
    for i, v in enumerate(data):
        if isinstance(v, str) and v.upper() in PHONEME_INDEX:
            ids.append(PHONEME_INDEX[v.upper()])
        elif isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= int(v) < NUM_PHONEMES:
            ids.append(int(v))
        else:
            raise LabelsFileError(f"{where}: entry {i} ({v!r}) is not a phoneme id 0..{NUM_PHONEMES - 1} or name")
    return np.asarray(ids, dtype=np.int64)


class LabelsRecognizer(Recognizer):
    """Emit the given labels, frame ``t`` once ``t``'s last sample has been fed (lag 0)."""

    def __init__(self, labels: str | Path | Sequence[int | str]) -> None:
        super().__init__()
        self.labels = read_labels(labels)

    def _label(self, frame: int) -> int:
        return int(self.labels[frame]) if frame < self.labels.size else SIL

    def _emit_until(self, n_frames: int) -> list[PhonemeEvent]:
        # labels index the whole session timeline (absolute frame numbers), whatever the streams
        return [PhonemeEvent(t, self._label(t)) for t in range(self._next_frame, self._stream_first_frame + n_frames)]

    def _feed(self, pcm: np.ndarray) -> list[PhonemeEvent]:
        return self._emit_until(self.frames_complete(self._stream_samples))

    def _flush(self) -> list[PhonemeEvent]:
        return self._emit_until(self.frames_with_centre(self._stream_samples))

    def _reset_stream(self) -> None:
        pass

    def _lag_seconds(self) -> float:
        return 0.0
