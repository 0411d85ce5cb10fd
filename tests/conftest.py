"""Fixtures every test gets: no process may outlive the test that started it."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # `import tasks` from tests and from workers

from helpers import SERVICES


def _is_service(p: psutil.Process) -> bool:
    """The fork server or resource tracker itself (a direct child), not what it forks.

    Workers forked by the fork server inherit its command line, so the
    command line alone cannot tell them apart: the parent does.
    """
    try:
        cmd = " ".join(p.cmdline())
        parent = p.ppid()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    if parent == os.getpid() and any(s in cmd for s in SERVICES):
        return True
    return os.environ.get("ANYPOOL_TEST_SERVICE", "\0") in cmd


def _ours(before: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before or _is_service(p):
            continue
        try:
            if p.is_running():
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if a process it started is still there 5 s after it ends."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    left = _ours(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _ours(before)
    if left:
        desc = []
        for p in left:
            try:
                desc.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                desc.append(str(p.pid))
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail("processes left behind:\n  " + "\n  ".join(desc), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_pool_threads() -> Iterator[None]:
    """Fail the test if a pool's manager or loop thread outlives the test."""
    yield
    deadline = time.monotonic() + 5.0
    watched = ("anypool-process-manager", "anypool-async-loop")
    while True:
        left = [t.name for t in threading.enumerate() if t.name in watched]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"pool threads left running: {left}"
