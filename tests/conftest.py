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


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's small-tensor tests on one intra-op thread.

    On the shared 2-core machine OpenMP barriers of tiny ops stall for a scheduler time slice when other
    processes are busy (a 3-ms decode took 1.8 s); one thread is faster and deterministic for small models.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
