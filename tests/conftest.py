"""Shared pytest fixtures. Keep each block small; append new fixtures below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Root of the read-only shared data (`fixtures/`, `data/styletalk-samples/`).

    Located via the env var ``STYLETALK_SHARED`` (default ``<repo>/../shared``); tests that need it are
    skipped, with the reason, on machines that do not have it.
    """
    root = Path(os.environ.get("STYLETALK_SHARED", REPO_ROOT.parent / "shared"))
    if not root.is_dir():
        pytest.skip(f"shared data directory {root} not found (set STYLETALK_SHARED to its location)")
    return root
