"""engine/model_template.py: model workers forked from a template process that imported torch once.

Real processes throughout (the template, its forked workers, a fresh-interpreter fallback); small random-weight
models at 64² keep them quick.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.config import load_config
from engine.model_pool import ModelWorkers
from engine.model_process import ModelProcess
from engine.model_template import ForkedChild, ModelTemplate


def _config():  # noqa: ANN202 - engine.config.Config
    return load_config(None, {"decoder.checkpoint": "random", "renderer.size": "64"})


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """The process ended and was reaped (no zombie left behind either)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_workers_are_forked_by_the_template_replaced_by_new_forks_and_end_with_the_pool() -> None:
    pool = ModelWorkers(_config(), 2)
    try:
        procs = [p for p in pool.processes if p is not None]
        pids = [p.ready.result(timeout=120) for p in procs]
        template = pool.template.pid
        assert [_parent(pid) for pid in pids] == [template, template]  # forked, not fresh interpreters
        assert all(p.alive for p in procs)
        # one thread in the template when it forks: nothing half-held is inherited
        assert len(os.listdir(f"/proc/{template}/task")) == 1

        # a killed worker: its reader sees EOF, the pool forks a replacement, the template reaps the dead one
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while pool.replaced == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.replaced == 1 and not procs[0].alive and procs[1].alive
        assert procs[0].failure is not None and "exit code" not in procs[0].failure  # the status is the template's
        fresh = pool.processes[0]
        assert fresh is not None and fresh is not procs[0]
        pids.append(fresh.ready.result(timeout=120))
        assert _parent(pids[-1]) == template and _gone(pids[0])
    finally:
        pool.close()
    assert _gone(template) and all(_gone(pid) for pid in pids)


def test_forked_child_kill_and_wait_through_the_pidfd() -> None:
    template = ModelTemplate()
    a, b = os.pipe()
    r, w = os.pipe()
    try:
        # a fork whose worker blocks reading its (silent) socket: killed through the pidfd
        child = template.fork(a, r, 4)
        assert isinstance(child, ForkedChild) and child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.2)
        child.kill()
        assert child.wait(timeout=10) is None and child.poll() == -1
        assert _gone(child.pid)
    finally:
        for fd in (a, b, r, w):
            os.close(fd)
        template.close()


def test_a_dead_template_falls_back_to_a_fresh_interpreter(caplog) -> None:  # noqa: ANN001
    template = ModelTemplate()
    template._proc.kill()  # the template dies before its first fork
    template._proc.wait()
    try:
        with caplog.at_level(logging.WARNING, logger="engine.model_process"):
            proc = ModelProcess(_config(), template=template)
        try:
            pid = proc.ready.result(timeout=120)
            assert _parent(pid) == os.getpid() and proc.alive  # a fresh interpreter of ours
            assert any("starting a fresh interpreter instead" in r.message for r in caplog.records)
        finally:
            proc.close()
    finally:
        template.close()
