"""Shared pytest fixtures. Keep each block small; append new fixtures below."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The streaming fixtures (``live_runtime``: the real engine, loaded once per test run) are registered here, once for
# the whole session. Test modules name them as parameters and must not import them: a fixture imported into a
# module is that module's own fixture, so a session-scoped engine would be loaded (and kept) once per module.
pytest_plugins = ["tests.streaming_fixtures"]


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The StyleTalk sample data shipped in the checkout (``data/styletalk-samples``, MIT)."""
    from models.dataset import default_data_dir

    root = default_data_dir()
    assert root.is_dir(), f"sample data missing at {root}: the checkout ships it under data/"
    return root


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Parity fixtures for the official network layouts (``tests/fixtures/parity``, see its README)."""
    root = REPO_ROOT / "tests" / "fixtures" / "parity"
    assert root.is_dir(), f"parity fixtures missing at {root}"
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


@pytest.fixture(autouse=True, scope="session")
def isolated_user_styles(tmp_path_factory):
    """User styles (`styles add`) default to $XDG_DATA_HOME: point it at a temporary directory so the tests
    neither see nor write the developer's own styles."""
    import os

    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg_data"))
    yield
    if before is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = before
