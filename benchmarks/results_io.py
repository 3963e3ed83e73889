"""Saving a benchmark's result: one JSON file under ``benchmarks/results/`` (or where ``--out`` says).

Every benchmark ends the same way - make the folder, write the JSON, say where - so it is done here, with one
encoder for what the results hold besides plain JSON (numpy scalars and arrays, paths, counters, argparse
values).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def run_header(benchmark: str, started: float, load_at_start: Any) -> dict[str, Any]:
    """The record every result starts with: which benchmark, when, how long (``started`` = ``time.time()`` at
    its start), and the machine with its load average at the start and now (figures under load are ratios only)."""
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "duration_s": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
    }


def write_results(out: str | Path, result: Any, indent: int | None = 2, note: str = "") -> Path:
    """Write ``result`` as JSON to ``out`` (folders made as needed) and print ``wrote <out>[ note]``."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=_jsonable) + "\n", encoding="utf-8")
    print(f"wrote {path}{' ' + note if note else ''}", flush=True)
    return path
