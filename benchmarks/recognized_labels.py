"""Streaming recognizer labels of the sample source clips, cached once in a JSON file.

The decoder is trained on the reference phoneme labels, but at run time it reads the recognizer's labels,
which differ mostly at phoneme boundaries. This writes what the default recognizer (``allphone``, default
lookahead, fed in 20 ms chunks as a live session would) labels for every ``source/wav/*.wav``: one id per
30 fps frame, as many frames as the clip's reference label file (frames the recognizer never labelled are
SIL). ``models.train --recognized-labels <file>`` and ``benchmarks.styles`` read the file.

    .venv/bin/python -m benchmarks.recognized_labels [--out runs/recognized_labels.json]

The allphone label rescorer was fitted on these same clips (``engine/recognizer/assets/rescorer.md``), so
the labels are somewhat better than on unseen speech.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.results_io import write_results
from engine.recognizer import make_recognizer
from engine.recognizer.fit_rescorer import load_clip
from models.dataset import default_data_dir, list_clips
from models.phonemes import SIL

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "recognized_labels.json"
RATE = 16000
CHUNK_MS = 20


def recognize(pcm: np.ndarray, n_frames: int, backend: str = "allphone") -> np.ndarray:
    """Labels ``(n_frames,)`` of one clip, streamed in ``CHUNK_MS`` chunks."""
    rec = make_recognizer(backend)
    chunk = RATE * CHUNK_MS // 1000
    events: list[Any] = []
    for start in range(0, pcm.size, chunk):
        events.extend(rec.feed(pcm[start : start + chunk]))
    events.extend(rec.flush())
    out = np.full(n_frames, SIL, np.int64)
    for ev in events:
        if ev.frame < n_frames:
            out[ev.frame] = ev.phoneme
    return out


def build(data_dir: Path | None = None, backend: str = "allphone") -> dict[str, Any]:
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    clips = list_clips(data, "source")
    labels: dict[str, list[int]] = {}
    agree: dict[str, float] = {}
    t0 = time.perf_counter()
    for name in tqdm(clips, desc="recognizing", unit="clip"):
        pcm, ref = load_clip(data, name)
        lab = recognize(pcm, len(ref), backend)
        labels[name] = [int(x) for x in lab]
        agree[name] = float((lab == ref).mean())
    return {
        "backend": backend,
        "options": "defaults",
        "chunk_ms": CHUNK_MS,
        "fps": 30,
        "frame_agreement_with_reference": agree,
        "seconds": round(time.perf_counter() - t0, 1),
        "labels": labels,
    }


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Clip name -> label ids ``(T,)`` int64 from a file written by :func:`build`."""
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    return {k: np.asarray(v, np.int64) for k, v in raw["labels"].items()}


def ensure(path: str | Path = DEFAULT_OUT, data_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Read the cache, building it first if it does not exist."""
    path = Path(path)
    if not path.is_file():
        res = build(data_dir)
        write_results(path, res, indent=None)
    return load(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--backend", default="allphone")
    args = p.parse_args(argv)
    res = build(args.data, args.backend)
    for k, v in res["frame_agreement_with_reference"].items():
        print(f"{k:<22} frame agreement {v:.3f}")
    write_results(args.out, res, indent=None, note=f"({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
