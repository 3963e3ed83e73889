"""Saving a benchmark's result: one JSON file under ``benchmarks/results/`` (or where ``--out`` says).

Every benchmark ends the same way - make the folder, write the JSON, say where - so it is done here, with one
encoder for what the results hold besides plain JSON (numpy scalars and arrays, paths, counters, argparse
values).
"""

from __future__ import annotations

import json
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


def write_results(out: str | Path, result: Any, indent: int | None = 2, note: str = "") -> Path:
    """Write ``result`` as JSON to ``out`` (folders made as needed) and print ``wrote <out>[ note]``."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=_jsonable) + "\n", encoding="utf-8")
    print(f"wrote {path}{' ' + note if note else ''}", flush=True)
    return path
