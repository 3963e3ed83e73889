"""The docs stand alone and keep up with the code: every module is on the map; no citation of documents that are
not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["models", "engine", "streaming", "clients"]


def test_architecture_maps_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            if f"`{path.name}`" not in text and f"{path.stem}.py" not in text:
                missing.append(str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name != "__init__.py" and f"`{path.stem}`" not in text:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"docs/architecture.md does not map: {missing}"


def test_no_citation_of_documents_outside_the_repository() -> None:
    pattern = re.compile(r"DESIGN\.md|\.\./shared/|shared/DESIGN")
    offenders = []
    sources = [p for pkg in [*PACKAGES, "benchmarks"] for p in (ROOT / pkg).rglob("*") if p.suffix in (".py", ".md")]
    for path in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *sources]:
        if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
